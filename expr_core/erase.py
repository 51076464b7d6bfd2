"""Deleting everything a workspace holds about the people in it: "Delete all data" on the Home page.

Samples (and their features), labels, the review queue, every run with its models (they were learnt from
the faces) and every video job (uploaded videos show faces). Nothing starts while it runs: a training run or
video job in progress is refused first, so nothing is half deleted by a worker still writing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from expr_core.data.review import ReviewQueue
from expr_core.data.store import DatasetStore
from expr_core.errors import UserError
from expr_core.jobs import folder as job
from expr_core.jobs import runs, video
from expr_core.registry import Registry


@dataclass(frozen=True)
class Erased:
    samples: int
    review_items: int
    runs: int
    videos: int


def erase_workspace(store: DatasetStore, workspace: Path) -> Erased:
    """Delete every sample, label, review item, run (model) and video job; :class:`UserError` if work is going on."""
    running = runs.active_run(workspace)
    videos = video.video_jobs(workspace)
    busy = [job_id for job_id, status in videos if status.get("state") in job.ACTIVE_STATES]
    if running or busy:
        raise UserError(
            f"Nothing deleted: {'training run ' + running if running else 'a video job'} is still going on. "
            "Cancel it (Train or Detect page) and try again."
        )
    queue = ReviewQueue(workspace)
    items = [item.id for item in queue.items()]
    queue.discard(items)
    samples = len(store.samples())
    store.delete_all()
    registry = Registry(workspace)
    run_ids = runs.run_ids(workspace)
    for run_id in run_ids:
        registry.delete(run_id, force=True)
    for job_id, _ in videos:
        video.delete_video_job(workspace, job_id)
    return Erased(samples, len(items), len(run_ids), len(videos))
