"""The per-frame expression pipeline, as plain functions on arrays (the Detect page, video files and
the live benchmark all run this same code).

    frame → detect faces → crop each at the model's input size → ONE batched classify call
          → track faces between frames and smooth their probabilities → draw → frame

Smoothing is an exponential moving average per tracked face with a time constant in seconds, so it
behaves the same at 10 or 30 frames per second: with the default 0.15 s a changed expression wins
within about half a second, while single-frame flickers are damped.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from .faces import Face, FaceDetector, crop_face
from .overlay import GREEN, draw_banner, draw_face


class Classifier(Protocol):
    """What the pipeline needs from a served model (see :mod:`expr_core.serving`)."""

    labels: list[str]
    input_size: int

    def predict(self, batch_bgr: np.ndarray) -> np.ndarray:
        """Probabilities ``(n, len(labels))`` for a uint8 BGR batch ``(n, size, size, 3)``."""


def iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    ix = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    iy = max(0, min(ay + ah, by + bh) - max(ay, by))
    inter = ix * iy
    union = aw * ah + bw * bh - inter
    return inter / union if union else 0.0


@dataclass
class Track:
    """One face followed across frames, with its smoothed class probabilities."""

    id: int
    face: Face
    probs: np.ndarray
    last_seen: float
    hits: int = 1


class FaceTracker:
    """Greedy IoU matching of this frame's faces to the previous tracks, then per-track smoothing."""

    def __init__(self, smoothing_s: float = 0.15, min_iou: float = 0.3, forget_after_s: float = 0.5) -> None:
        self.smoothing_s = smoothing_s
        self.min_iou = min_iou
        self.forget_after_s = forget_after_s
        self._tracks: list[Track] = []
        self._next_id = 1

    def update(self, faces: list[Face], probs: np.ndarray, now: float) -> list[Track]:
        """Tracks for this frame's faces, in the order of ``faces``."""
        unmatched = list(self._tracks)
        result = []
        for face, p in zip(faces, probs):
            best = max(unmatched, key=lambda t: iou(t.face.box, face.box), default=None)
            if best is not None and iou(best.face.box, face.box) >= self.min_iou:
                unmatched.remove(best)
                alpha = 1.0 if self.smoothing_s <= 0 else 1 - math.exp(-(now - best.last_seen) / self.smoothing_s)
                best.probs = (1 - alpha) * best.probs + alpha * p
                best.face, best.last_seen, best.hits = face, now, best.hits + 1
                result.append(best)
            else:
                result.append(Track(self._next_id, face, np.asarray(p, dtype=np.float64), now))
                self._next_id += 1
        kept = [t for t in unmatched if now - t.last_seen <= self.forget_after_s]
        self._tracks = result + kept
        return result


@dataclass
class FrameStats:
    """Frame rate and processing latency over the last frames, for the on-screen meter."""

    window: int = 60
    latencies: deque = field(default_factory=lambda: deque(maxlen=60))
    arrivals: deque = field(default_factory=lambda: deque(maxlen=60))

    def add(self, arrived: float, latency_s: float) -> None:
        self.arrivals.append(arrived)
        self.latencies.append(latency_s)

    @property
    def fps(self) -> float:
        if len(self.arrivals) < 2:
            return 0.0
        span = self.arrivals[-1] - self.arrivals[0]
        return (len(self.arrivals) - 1) / span if span > 0 else 0.0

    @property
    def latency_ms(self) -> float:
        return float(np.median(self.latencies) * 1000) if self.latencies else 0.0


@dataclass
class FaceReading:
    """One face's result in one frame."""

    track_id: int
    box: tuple[int, int, int, int]
    label: str
    confidence: float
    probs: dict[str, float]


def caption(label: str, confidence: float) -> str:
    """``happy 87% ████░`` — a label with a small text bar, readable at a glance on video."""
    filled = int(round(confidence * 5))
    return f"{label} {confidence:.0%} " + "#" * filled + "-" * (5 - filled)


class ExpressionPipeline:
    """Detect, classify (batched), track, smooth and draw; one instance per stream (it holds tracks)."""

    def __init__(self, detector: FaceDetector, classifier: Classifier | None, margin: float = 0.2,
                 smoothing_s: float = 0.15, clock: Callable[[], float] = time.monotonic) -> None:
        self.detector = detector
        self.classifier = classifier
        self.margin = margin
        self.tracker = FaceTracker(smoothing_s)
        self.stats = FrameStats()
        # Called with the clean frame (before drawing) and its readings, e.g. to keep uncertain faces.
        self.on_readings: Callable[[np.ndarray, list[FaceReading]], None] | None = None
        self._clock = clock
        self._lock = threading.Lock()

    def set_smoothing(self, seconds: float) -> None:
        self.tracker.smoothing_s = max(0.0, seconds)

    def classify(self, frame: np.ndarray, faces: list[Face]) -> np.ndarray:
        """Probabilities for all faces of a frame in one batched call."""
        if self.classifier is None or not faces:
            return np.zeros((len(faces), 0))
        size = self.classifier.input_size
        return self.classifier.predict(np.stack([crop_face(frame, face, self.margin, size) for face in faces]))

    def process(self, frame: np.ndarray, draw: bool = True, now: float | None = None) -> list[FaceReading]:
        """Run the whole pipeline on a BGR frame (annotated in place when ``draw``).

        ``now`` is the frame's time in seconds (a video file's timestamp); live streams use the clock.
        """
        start = time.perf_counter()
        stamp = self._clock() if now is None else now
        with self._lock:
            faces = self.detector.detect(frame)
            probs = self.classify(frame, faces)
            readings = self._readings(faces, probs, stamp)
            if self.on_readings is not None and readings:
                self.on_readings(frame, readings)
            if draw:
                self._draw(frame, faces, readings)
            self.stats.add(stamp, time.perf_counter() - start)
        return readings

    def _readings(self, faces: list[Face], probs: np.ndarray, now: float) -> list[FaceReading]:
        if self.classifier is None:
            return []
        labels = self.classifier.labels
        readings = []
        for track in self.tracker.update(faces, probs, now):
            top = int(np.argmax(track.probs))
            readings.append(FaceReading(track.id, track.face.box, labels[top], float(track.probs[top]),
                                        {label: round(float(v), 4) for label, v in zip(labels, track.probs)}))
        return readings

    def _draw(self, frame: np.ndarray, faces: list[Face], readings: list[FaceReading]) -> None:
        if readings:
            for face, reading in zip(faces, readings):
                draw_face(frame, face, label_color(reading.label, self.classifier.labels),
                          caption(reading.label, reading.confidence))
        else:
            for face in faces:
                draw_face(frame, face, GREEN)
        draw_banner(frame, f"{self.stats.fps:4.1f} fps  {self.stats.latency_ms:4.0f} ms", (60, 60, 60))


_PALETTE = [(60, 180, 75), (200, 130, 0), (48, 48, 230), (180, 30, 145), (0, 190, 255), (128, 128, 0)]


def label_color(label: str, labels: list[str]) -> tuple[int, int, int]:
    """The BGR colour of a label: its position in the model's labels, so every label of a model differs."""
    return _PALETTE[labels.index(label) % len(_PALETTE)]
