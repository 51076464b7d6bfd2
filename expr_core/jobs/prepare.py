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


def _command(settings: Settings, *args: str) -> list[str]:
    """``python -m expr_core ARGS`` with the settings' model and cache folders."""
    places = ["--models-dir", str(settings.models_dir), "--cache-dir", str(settings.cache_dir)]
    return [sys.executable, "-m", "expr_core", *args, *places]


def base_command(settings: Settings, key: BaseKey) -> list[str]:
    """The command line that prepares a base (the background job's; the benchmarks run it too)."""
    weights = ["--weights", key.weights, "--image-size", str(key.image_size)]
    return _command(settings, "base", "prepare", "--backbone", key.backbone, *weights)


def _start(settings: Settings, name: str, command: list[str]) -> Path:
    running = active_job(settings.workspace, name)
    if running is not None:
        return running
    folder = job.create_job(prepare_dir(settings.workspace), "prepare", name=name)
    job.launch(folder, [*command, "--job-dir", str(folder)])
    return folder


def start_preparing(settings: Settings) -> Path:
    """The running preparation of the starter model, started now if none runs."""
    return _start(settings, STARTER, _command(settings, "starter", "prepare"))


def start_preparing_base(settings: Settings, key: BaseKey) -> Path:
    """The running preparation of a backbone's frozen base (about a minute for DenseNet201), started if none runs."""
    return _start(settings, key.slug(), base_command(settings, key))
