"""The review queue: faces the model was unsure about, kept (only when the user asks) for labelling.

Closing the loop: in live Detect mode the user may tick "keep uncertain faces"; crops whose top
probability is under a threshold land here (``<workspace>/review/<id>.jpg`` + ``<id>.json``, both
written atomically, the JSON last so a listed item always has its image). On the Capture page the
user labels them (they join the dataset with source ``review``) or discards them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from expr_core import atomic
from expr_core.data.store import JPEG_QUALITY, SAMPLE_ID, DatasetStore, NewSample, new_id
from expr_core.errors import CorruptFile, DatasetError, UserError
from expr_core.live.pipeline import FaceReading
from expr_core.vision.faces import Face, crop_face

MAX_ITEMS = 500  # a forgotten checkbox must not fill the disk
WRITER_BACKLOG = 64
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReviewItem:
    id: str
    predicted: str
    confidence: float
    probs: dict[str, float]
    created: float
    captured_by: str


class ReviewQueue:
    def __init__(self, workspace: Path) -> None:
        self.root = Path(workspace) / "review"

    def image_path(self, item_id: str) -> Path:
        return self.root / f"{item_id}.jpg"

    def count(self) -> int:
        """How many items are kept (their metadata files counted, not read)."""
        if not self.root.is_dir():
            return 0
        with os.scandir(self.root) as entries:
            return sum(1 for entry in entries if entry.name.endswith(".json"))

    def add(self, crop: np.ndarray, reading: FaceReading, captured_by: str) -> str | None:
        """Keep one crop; ``None`` when the queue is full. Writes to disk: never call it on a frame thread."""
        if self.count() >= MAX_ITEMS:
            return None
        item_id = new_id()
        ok, encoded = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            return None
        atomic.write_bytes(self.image_path(item_id), encoded.tobytes())
        atomic.write_json(
            self.root / f"{item_id}.json",
            {
                "id": item_id,
                "predicted": reading.label,
                "confidence": round(reading.confidence, 4),
                "probs": reading.probs,
                "created": time.time(),
                "captured_by": captured_by,
            },
        )
        return item_id

    def items(self) -> list[ReviewItem]:
        if not self.root.is_dir():
            return []
        found = []
        for meta in sorted(self.root.glob("*.json")):
            try:  # a damaged item is left out (its crop stays on disk), the others are listed
                data = atomic.read_json(meta)
                item = ReviewItem(**data) if isinstance(data, dict) else None
            except (CorruptFile, TypeError):
                continue
            if item is not None and SAMPLE_ID.fullmatch(str(item.id)) and self.image_path(item.id).exists():
                found.append(item)
        return found

    def accept(self, ids: list[str], label: str, store: DatasetStore, captured_by: str) -> int:
        """Move items into the dataset under ``label`` (source ``review``); the dataset write comes first."""
        items = [i for i in self.items() if i.id in set(ids)]
        if label not in store.labels():
            raise DatasetError(f"There is no label {label!r}.")
        samples = []
        for item in items:
            image = cv2.imread(str(self.image_path(item.id)), cv2.IMREAD_COLOR)
            if image is not None:
                samples.append(
                    NewSample(
                        label,
                        "review",
                        session=f"review-{item.id}",
                        score=item.confidence,
                        captured_by=captured_by,
                        image=image,
                    )
                )
        store.add_samples(samples)
        self.discard([i.id for i in items])
        return len(samples)

    def discard(self, ids: list[str]) -> None:
        for item_id in ids:
            for path in (self.root / f"{item_id}.json", self.image_path(item_id)):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()


class _Writer:
    """The process's one background thread that stores kept faces: frames never wait for the disk."""

    def __init__(self) -> None:
        self.pending: queue.Queue[tuple[UncertainFaceKeeper, np.ndarray, FaceReading] | threading.Event] = queue.Queue(
            maxsize=WRITER_BACKLOG
        )
        threading.Thread(target=self._run, name="review-writer", daemon=True).start()

    def _run(self) -> None:
        while True:
            work = self.pending.get()
            if isinstance(work, threading.Event):
                work.set()
                continue
            keeper, crop, reading = work
            try:
                if keeper.queue.add(crop, reading, keeper.captured_by):
                    keeper.kept += 1
            except (UserError, OSError) as exc:  # a full disk: the face is not kept, the stream goes on
                log.warning("could not keep an uncertain face for review: %s", exc)


_writer: _Writer | None = None
_writer_lock = threading.Lock()


def _background() -> _Writer:
    global _writer
    with _writer_lock:
        if _writer is None:
            _writer = _Writer()
        return _writer


class UncertainFaceKeeper:
    """Pipeline hook: saves faces under ``threshold`` confidence, at most one per face per ``every_s``.

    Called on the frame thread; it only cuts the crop and hands it to a background writer (dropped when
    that has :data:`WRITER_BACKLOG` faces waiting), so encoding, fsync and the queue's count never delay a frame.
    """

    def __init__(
        self,
        queue: ReviewQueue,
        threshold: float,
        margin: float,
        crop_size: int,
        captured_by: str,
        every_s: float = 1.0,
    ) -> None:
        self.queue, self.threshold, self.every_s = queue, threshold, every_s
        self.margin, self.crop_size, self.captured_by = margin, crop_size, captured_by
        self.kept = 0
        self._last: dict[int, float] = {}
        self._lock = threading.Lock()

    def __call__(self, frame: np.ndarray, readings: list[FaceReading]) -> None:
        now = time.monotonic()
        for reading in readings:
            with self._lock:
                if reading.confidence >= self.threshold or now - self._last.get(reading.track_id, -1e9) < self.every_s:
                    continue
                self._last[reading.track_id] = now
            crop = crop_face(frame, Face(reading.box, reading.confidence), self.margin, self.crop_size)
            with contextlib.suppress(queue.Full):
                _background().pending.put_nowait((self, crop, reading))

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until the faces handed over so far are stored (tests, shutdown)."""
        done = threading.Event()
        _background().pending.put(done, timeout=timeout)
        done.wait(timeout)
