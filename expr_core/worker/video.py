"""The video worker: annotate a video file, reporting progress and the outcome to its job folder.

Runs as ``python -m expr_core video IN OUT --job-dir DIR`` when the Detect page starts a video job
(:mod:`expr_core.jobs.video`), or in the foreground from the CLI (no job folder: progress on stderr).
Needs no TensorFlow: the classifier is LiteRT, like the live pipeline's.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from expr_core.jobs.folder import EventType, JobState, JobWriter
from expr_core.live.pipeline import ExpressionPipeline
from expr_core.live.video_file import process_video

PROGRESS_EVERY_S = 0.5


def annotate_video(src: Path, dst: Path, pipeline: ExpressionPipeline, writer: JobWriter | None) -> dict[str, Any]:
    """Annotate ``src`` into ``dst`` (+ CSV); the summary dict is also the job's final status."""

    def progress(done: int, total: int) -> None:
        if writer:
            writer.status(throttle_s=PROGRESS_EVERY_S, frames=done, total_frames=total)
            writer.event(EventType.PROGRESS, frames=done, total_frames=total)
        else:
            print(f"\r{done}/{total or '?'} frames", end="", file=sys.stderr)

    started = time.monotonic()
    result = process_video(src, dst, pipeline, progress, should_stop=lambda: bool(writer and writer.cancel_requested()))
    if writer is None:
        print(file=sys.stderr)  # end the "\rN/M frames" line, or the next output is glued onto it
    summary: dict[str, Any] = {
        "frames": result.frames,
        "frames_with_faces": result.frames_with_faces,
        "duration_s": round(result.duration_s, 2),
        "video": str(result.video_path),
        "csv": str(result.csv_path),
        "cancelled": result.cancelled,
        "warning": result.warning,
        "seconds": round(time.monotonic() - started, 2),
    }
    if writer:
        writer.status(state=JobState.CANCELLED if result.cancelled else JobState.DONE, finished=time.time(), **summary)
    return summary
