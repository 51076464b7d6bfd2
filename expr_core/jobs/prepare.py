"""Preparing a model once, in the background: the starter model, or a backbone's frozen base.

A page that needs a prepared model and finds none calls :func:`start_preparing` (or :func:`start_preparing_base`);
it returns at once with a job folder (``<workspace>/prepare/<job_id>/``, the files of
:mod:`expr_core.jobs.folder`) that the page follows, and a second caller gets the same job while it runs.
The workers are ``python -m expr_core starter prepare --job-dir DIR`` and ``python -m expr_core base prepare``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from expr_core.bases import BaseKey
from expr_core.jobs import folder as job
from expr_core.settings import Settings

STARTER = "starter"


def prepare_dir(workspace: Path) -> Path:
    return Path(workspace) / "prepare"


def _jobs(workspace: Path, name: str) -> list[Path]:
    """The preparations of ``name``, newest first."""
    parent = prepare_dir(workspace)
    folders = [parent / job_id for job_id in job.job_ids(parent)]
    return [f for f in folders if job.read_status(f).get("name", STARTER) == name]


def active_job(workspace: Path, name: str = STARTER) -> Path | None:
    """The folder of a preparation of ``name`` still running, if any."""
    return next((folder for folder in _jobs(workspace, name) if job.is_active(folder)), None)


def latest_job(workspace: Path, name: str = STARTER) -> Path | None:
    """The newest preparation of ``name`` (to show why it failed), if any."""
    return next(iter(_jobs(workspace, name)), None)


def _start(settings: Settings, name: str, command: list[str]) -> Path:
    running = active_job(settings.workspace, name)
    if running is not None:
        return running
    folder = job.create_job(prepare_dir(settings.workspace), "prepare", name=name)
    options = [
        "--job-dir",
        str(folder),
        "--models-dir",
        str(settings.models_dir),
        "--cache-dir",
        str(settings.cache_dir),
    ]
    job.launch(folder, [sys.executable, "-m", "expr_core", *command, *options])
    return folder


def start_preparing(settings: Settings) -> Path:
    """The running preparation of the starter model, started now if none runs."""
    return _start(settings, STARTER, ["starter", "prepare"])


def start_preparing_base(settings: Settings, key: BaseKey) -> Path:
    """The running preparation of a backbone's frozen base (about a minute for DenseNet201), started if none runs."""
    command = ["base", "prepare", "--backbone", key.backbone, "--weights", key.weights]
    return _start(settings, key.slug(), [*command, "--image-size", str(key.image_size)])
