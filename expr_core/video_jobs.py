"""Video files processed in a background worker, followed through files like training runs.

Each job has a folder ``<workspace>/videos/<job_id>/`` holding ``input.<ext>`` (the upload),
``annotated.mp4`` and ``annotated.csv`` (when done) and the job files of :mod:`expr_core.jobs`
(``status.json``, ``events.jsonl``, ``worker.log``, ``cancel``). The worker is the CLI's ``video``
command, so the server never decodes video on its script thread and a reload reattaches by reading
the folder. Uploads are deleted with their job; nothing is kept unless the user keeps the job.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import Any

from . import atomic, jobs
from .errors import BadInput
from .settings import Settings

VIDEO_SUFFIXES = {".mp4", ".mov", ".webm", ".mkv", ".avi", ".m4v"}
OUTPUT_NAME = "annotated.mp4"
MAX_VIDEO_BYTES = 500 * 1024 * 1024


def videos_dir(workspace: Path) -> Path:
    return Path(workspace) / "videos"


def job_dir(workspace: Path, job_id: str) -> Path:
    if not jobs.RUN_ID_PATTERN.match(job_id):
        raise BadInput(f"{job_id!r} is not a video job id.")
    return videos_dir(workspace) / job_id


def output_paths(folder: Path) -> tuple[Path, Path]:
    """The annotated video and its CSV table."""
    video = folder / OUTPUT_NAME
    return video, video.with_suffix(".csv")


def start_video_job(settings: Settings, name: str, data: bytes, model_dir: Path) -> str:
    """Store the upload and start annotating it in a worker process; returns the job id at once."""
    suffix = Path(name).suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise BadInput(f"{name}: not a video file ({', '.join(sorted(VIDEO_SUFFIXES))}).")
    if not data:
        raise BadInput(f"{name}: the file is empty (0 bytes).")
    if len(data) > MAX_VIDEO_BYTES:
        raise BadInput(f"{name}: {len(data):,} bytes is over the {MAX_VIDEO_BYTES:,}-byte limit.")
    job_id = jobs.new_run_id()
    folder = videos_dir(settings.workspace) / job_id
    folder.mkdir(parents=True)
    source = folder / f"input{suffix}"
    atomic.write_bytes(source, data)
    atomic.write_json(folder / jobs.STATUS_FILE, {"run_id": job_id, "kind": "video", "state": "queued",
                                                   "created": time.time(), "name": name})
    video, _ = output_paths(folder)
    jobs.launch(folder, [sys.executable, "-m", "expr_core", "video", str(source), str(video), "--model", str(model_dir),
                         "--job-dir", str(folder), "--models-dir", str(settings.models_dir),
                         "--detector", settings.detector])
    return job_id


def video_jobs(workspace: Path) -> list[tuple[str, dict[str, Any]]]:
    """Every video job, newest first, with its status."""
    folder = videos_dir(workspace)
    if not folder.is_dir():
        return []
    ids = sorted((p.name for p in folder.iterdir() if p.is_dir() and jobs.RUN_ID_PATTERN.match(p.name)), reverse=True)
    return [(job_id, jobs.folder_status(folder / job_id)) for job_id in ids]


def delete_video_job(workspace: Path, job_id: str) -> None:
    """Remove a finished job and all its files (a running one is cancelled first by the caller)."""
    folder = job_dir(workspace, job_id)
    if jobs.folder_status(folder).get("state") in jobs.ACTIVE_STATES:
        raise BadInput("The video is still being processed; cancel it first.")
    shutil.rmtree(folder)
