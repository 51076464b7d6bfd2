"""Training runs (and model imports) as job folders, and the one-training-run-per-workspace lock.

Every run has a folder ``<workspace>/runs/<run_id>/`` with the job files of :mod:`expr_core.jobs.folder`,
``config.json`` (the :class:`~expr_core.train_config.TrainConfig` it was started with, or an import's
origin) and, once done, ``model/`` (see :mod:`expr_core.registry`).

One training run per workspace: the worker holds an exclusive ``fcntl`` lock on ``runs/.train.lock``
for its whole life (the kernel drops it when the process dies, however it dies). :func:`start_training`
takes the lock itself and hands it to the child, so two quick clicks cannot start two jobs.

This module never imports TensorFlow: the Streamlit server uses it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import time
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Any

from expr_core import atomic
from expr_core.jobs import folder as job
from expr_core.settings import Settings
from expr_core.train_config import TrainConfig

LOCK_NAME = ".train.lock"
LOCK_SETTLE_S = 5.0  # how long a start waits for a lock that no active run explains (see acquire_lock)


class Phase(StrEnum):
    """The steps of a training run, in order (the ``phase`` of ``phase``, ``batch`` and ``epoch`` events)."""

    PREPARE = "prepare"
    BASE = "base"
    FEATURES = "features"
    HEAD = "head"
    FINETUNE = "finetune"
    CONVERT = "convert"
    EVALUATE = "evaluate"
    PUBLISH = "publish"


class JobRunning(job.JobError):
    """Another training run holds the workspace's training lock."""


def runs_dir(workspace: Path) -> Path:
    return Path(workspace) / "runs"


def run_dir(workspace: Path, run_id: str) -> Path:
    """The folder of ``run_id``; refuses ids that are not ours."""
    return runs_dir(workspace) / job.checked_job_id(run_id, "run")


def run_ids(workspace: Path) -> list[str]:
    """All run ids in the workspace, newest first."""
    return job.job_ids(runs_dir(workspace))


def create_run(workspace: Path, config: dict[str, Any], kind: str = "train") -> tuple[str, Path]:
    """A fresh, queued run folder with its config; returns its id and folder."""
    folder = job.create_job(runs_dir(workspace), kind, config)
    return folder.name, folder


def run_config(workspace: Path, run_id: str) -> dict[str, Any]:
    """The config a run was created with (``{}`` if it has none)."""
    return atomic.read_json(run_dir(workspace, run_id) / job.CONFIG_FILE, {}) or {}


def run_status(workspace: Path, run_id: str) -> dict[str, Any]:
    """The run's status dict (see :func:`expr_core.jobs.folder.folder_status`)."""
    folder = run_dir(workspace, run_id)
    if not folder.is_dir():
        raise job.JobError(f"There is no run {run_id}.")
    return job.folder_status(folder)


def has_model(status: dict[str, Any]) -> bool:
    """Whether a run's status says it published a model: a first version (even while fine-tuning goes on, or
    after it died) or, for runs from before versions, being done."""
    return bool(status.get("version")) or status.get("state") == job.JobState.DONE


def active_run(workspace: Path) -> str | None:
    """The id of the run currently queued or running in the workspace, if any."""
    for run_id in run_ids(workspace):
        if run_status(workspace, run_id).get("state") in job.ACTIVE_STATES:
            return run_id
    return None


# -- the lock ------------------------------------------------------------------------------------
def acquire_lock(workspace: Path) -> int:
    """An fd holding the exclusive training lock, or :class:`JobRunning` naming the run that holds it."""
    folder = runs_dir(workspace)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + LOCK_SETTLE_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            running = active_run(workspace)
            # No active run but the lock is busy: a worker that just ended (or was killed: its main thread is
            # already a zombie while its other threads still tear down its memory) or one being launched.
            # Either settles within moments, so wait a little before refusing.
            if running is None and time.monotonic() < deadline:
                time.sleep(0.05)
                continue
            os.close(fd)
            raise JobRunning(
                f"A training run is already going on in this workspace ({running or 'starting'}); "
                "wait for it to finish or cancel it first."
            ) from None


@contextlib.contextmanager
def training_lock(workspace: Path, inherited_fd: int | None = None) -> Iterator[None]:
    """Hold the workspace's training lock for the block (reusing a lock handed over by :func:`start_training`)."""
    fd = inherited_fd if inherited_fd is not None else acquire_lock(workspace)
    try:
        yield
    finally:
        os.close(fd)


# -- starting and cancelling ---------------------------------------------------------------------
def worker_command(settings: Settings, run_id: str, lock_fd: int) -> list[str]:
    """The command line of a training worker: the CLI's ``train`` on an existing run, with the server's places
    for model files (a base prepared in its cache is the worker's too) and job backend (with ``ray`` the worker
    is the run's supervisor here, see :mod:`expr_core.jobs.ray_backend`)."""
    places = ["--models-dir", str(settings.models_dir), "--cache-dir", str(settings.cache_dir)]
    run = ["--run-id", run_id, "--lock-fd", str(lock_fd)]
    train = [sys.executable, "-m", "expr_core", "train", "--workspace", str(settings.workspace)]
    return [*train, *places, *run, *settings.backend_args()]


def start_training(settings: Settings, config: TrainConfig) -> str:
    """Start training in a new process and return its run id at once (:class:`JobRunning` if one is going on).

    The child inherits the training lock, so a second start sees the workspace busy immediately, even
    before the child has printed a line.
    """
    config = config.validated()
    fd = acquire_lock(settings.workspace)
    try:
        run_id, folder = create_run(settings.workspace, config.to_dict())
        job.launch(folder, worker_command(settings, run_id, fd), pass_fds=(fd,))
    finally:
        os.close(fd)  # the child holds its own copy of the locked file description
    return run_id


def cancel(workspace: Path, run_id: str) -> bool:
    """Ask a run to stop; ``False`` if it was not running. The worker notices within a batch or a few seconds."""
    return job.request_cancel(run_dir(workspace, run_id))
