"""Preparing a model once, in the background: the starter model's LiteRT file for now.

A page that needs a prepared model and finds none calls :func:`start_preparing`; it returns at once with a
job folder (``<workspace>/prepare/<job_id>/``, the files of :mod:`expr_core.jobs.folder`) that the page
follows, and a second caller gets the same job while it runs. The worker is
``python -m expr_core starter prepare --job-dir DIR``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from expr_core.jobs import folder as job
from expr_core.settings import Settings


def prepare_dir(workspace: Path) -> Path:
    return Path(workspace) / "prepare"


def active_job(workspace: Path) -> Path | None:
    """The folder of a preparation still running, if any."""
    parent = prepare_dir(workspace)
    for job_id in job.job_ids(parent):
        if job.is_active(parent / job_id):
            return parent / job_id
    return None


def latest_job(workspace: Path) -> Path | None:
    """The newest preparation's folder (to show why it failed), if any."""
    ids = job.job_ids(prepare_dir(workspace))
    return prepare_dir(workspace) / ids[0] if ids else None


def start_preparing(settings: Settings) -> Path:
    """The running preparation of the starter model, started now if none runs."""
    running = active_job(settings.workspace)
    if running is not None:
        return running
    folder = job.create_job(prepare_dir(settings.workspace), "prepare", name="starter")
    job.launch(
        folder,
        [
            sys.executable,
            "-m",
            "expr_core",
            "starter",
            "prepare",
            "--job-dir",
            str(folder),
            "--models-dir",
            str(settings.models_dir),
            "--cache-dir",
            str(settings.cache_dir),
        ],
    )
    return folder
