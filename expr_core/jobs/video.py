"""Video files processed in a background worker, followed through files like training runs.

Each job has a folder ``<workspace>/videos/<job_id>/`` holding ``input.<ext>`` (the upload),
``annotated.mp4`` and ``annotated.csv`` (when done) and the job files of :mod:`expr_core.jobs.folder`
(``status.json``, ``events.jsonl``, ``worker.log``, ``cancel``). The worker is the CLI's ``video``
command, so the server never decodes video on its script thread and a reload reattaches by reading
the folder. Uploads are deleted with their job; nothing is kept unless the user keeps the job.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

from expr_core import atomic
from expr_core.errors import BadInput
from expr_core.jobs import folder as job
from expr_core.settings import Settings

VIDEO_SUFFIXES = {".mp4", ".mov", ".webm", ".mkv", ".avi", ".m4v"}
OUTPUT_NAME = "annotated.mp4"
MAX_VIDEO_BYTES = 500 * 1024 * 1024


def videos_dir(workspace: Path) -> Path:
    return Path(workspace) / "videos"


def job_dir(workspace: Path, job_id: str) -> Path:
    return videos_dir(workspace) / job.checked_job_id(job_id, "video job")


def output_paths(folder: Path) -> tuple[Path, Path]:
    """The annotated video and its CSV table."""
    video = folder / OUTPUT_NAME
    return video, video.with_suffix(".csv")


def start_video_job(settings: Settings, name: str, data: bytes, model: str, labels: list[str]) -> str:
    """Store the upload and start annotating it in a worker process; returns the job id at once.

    ``model`` is a run's model folder or ``starter``; ``labels`` are the served model's labels.
    """
    suffix = Path(name).suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise BadInput(f"{name}: not a video file ({', '.join(sorted(VIDEO_SUFFIXES))}).")
    if not data:
        raise BadInput(f"{name}: the file is empty (0 bytes).")
    if len(data) > MAX_VIDEO_BYTES:
        raise BadInput(f"{name}: {len(data):,} bytes is over the {MAX_VIDEO_BYTES:,}-byte limit.")
    folder = job.create_job(videos_dir(settings.workspace), "video", name=name)
    source = folder / f"input{suffix}"
    atomic.write_bytes(source, data)
    video, _ = output_paths(folder)
    job.launch(
        folder,
        [
            sys.executable,
            "-m",
            "expr_core",
            "video",
            str(source),
            str(video),
            "--model",
            model,
            "--labels",
            ",".join(labels),
            "--job-dir",
            str(folder),
            "--cache-dir",
            str(settings.cache_dir),
            "--models-dir",
            str(settings.models_dir),
            "--detector",
            settings.detector,
            *settings.backend_args(),
        ],
    )
    return folder.name


def video_jobs(workspace: Path) -> list[tuple[str, dict[str, Any]]]:
    """Every video job, newest first, with its status."""
    folder = videos_dir(workspace)
    return [(job_id, job.folder_status(folder / job_id)) for job_id in job.job_ids(folder)]


def delete_video_job(workspace: Path, job_id: str) -> None:
    """Remove a finished job and all its files (a running one is cancelled first by the caller)."""
    folder = job_dir(workspace, job_id)
    if job.is_active(folder):
        raise BadInput("The video is still being processed; cancel it first.")
    shutil.rmtree(folder)
