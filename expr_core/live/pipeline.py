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

import numpy as np

from expr_core.serving import Predictor
from expr_core.vision.faces import Face, FaceDetector, crop_face, detect_downscaled
from expr_core.vision.overlay import UNCLASSIFIED, banner_height, draw_banner, draw_face

# Live streams and video files: detect on at most this long side (a 640x480 webcam frame: 480x360) ...
STREAM_DETECT_SIDE = 480
# ... and classify at most this many faces per frame, taking turns, each at most this often (bench/live.py).
FACES_PER_FRAME = 1
MAX_READS_PER_S = 15.0


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
    """One face followed across frames, with its smoothed class probabilities (``None`` until classified)."""

    id: int
    face: Face
    last_seen: float
    probs: np.ndarray | None = None
    classified_at: float = -math.inf
    reads: int = 0


class FaceTracker:
    """Greedy IoU matching of this frame's faces to the previous tracks, and per-track smoothing."""

    def __init__(self, smoothing_s: float = 0.15, min_iou: float = 0.3, forget_after_s: float = 0.5) -> None:
        self.smoothing_s = smoothing_s
        self.min_iou = min_iou
        self.forget_after_s = forget_after_s
        self._tracks: list[Track] = []
        self._next_id = 1

    def match(self, faces: list[Face], now: float) -> list[Track]:
        """Tracks for this frame's faces, in the order of ``faces``; unseen faces start new tracks."""
        # A face unseen for longer than forget_after_s is gone: it must not come back as the same track.
        unmatched = [t for t in self._tracks if now - t.last_seen <= self.forget_after_s]
        result = []
        for face in faces:
            best = max(unmatched, key=lambda t: iou(t.face.box, face.box), default=None)
            if best is not None and iou(best.face.box, face.box) >= self.min_iou:
                unmatched.remove(best)
                best.face, best.last_seen = face, now
                result.append(best)
            else:
                result.append(Track(self._next_id, face, now))
                self._next_id += 1
        self._tracks = result + [t for t in unmatched if now - t.last_seen <= self.forget_after_s]
        return result

    def reset(self) -> None:
        """Forget every track (their probabilities belong to a model that is no longer served)."""
        self._tracks = []

    def observe(self, track: Track, probs: np.ndarray, now: float) -> None:
        """Blend a new classification into the track, weighted by the time since its previous one."""
        probs = np.asarray(probs, dtype=np.float64)
        if track.probs is None or self.smoothing_s <= 0:
            track.probs = probs
        else:
            alpha = 1 - math.exp(-(now - track.classified_at) / self.smoothing_s)
            track.probs = (1 - alpha) * track.probs + alpha * probs
        track.classified_at, track.reads = now, track.reads + 1


@dataclass(frozen=True)
class ClassifySchedule:
    """Which faces to classify in a frame: at most ``faces_per_frame`` (0: no limit), each face at most
    ``max_hz`` times a second (0: no limit), new faces first, then the longest-waiting (the least-read
    among faces read in the same frame).

    Why: detection and tracking run on every frame, but DenseNet201 costs 12-15 ms per face on two cores.
    Expressions change over hundreds of milliseconds and smoothing averages over about 0.15 s anyway, so
    re-reading each face 10-15 times a second shows the same labels while the frame rate holds with
    several faces, and video files are processed faster than they play.
    """

    faces_per_frame: int = FACES_PER_FRAME
    max_hz: float = MAX_READS_PER_S

    def due(self, tracks: list[Track], now: float) -> list[Track]:
        """The tracks to classify in the frame at time ``now``."""
        # 10% slack: a webcam frame arriving a few ms early must not push a face to the frame after.
        gap = 0.9 / self.max_hz if self.max_hz > 0 else 0.0
        waiting = sorted((t for t in tracks if now - t.classified_at >= gap), key=lambda t: (t.classified_at, t.reads))
        return waiting[: self.faces_per_frame] if self.faces_per_frame > 0 else waiting


EVERY_FACE = ClassifySchedule(faces_per_frame=0, max_hz=0)  # every face in every frame (single images, "all")


@dataclass
class FrameStats:
    """Frame rate and processing latency over the last frames, for the on-screen meter."""

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


def _reading(track: Track, probs: np.ndarray, labels: list[str]) -> FaceReading:
    top = int(np.argmax(probs))
    named = {label: round(float(v), 4) for label, v in zip(labels, probs, strict=True)}
    return FaceReading(track.id, track.face.box, labels[top], float(probs[top]), named)


def banner_text(stats: FrameStats) -> str:
    """The on-video meter; dashes until two frames give a rate (a first frame would claim "0.0 fps")."""
    if not stats.fps:
        return "-- fps  -- ms"
    return f"{stats.fps:4.1f} fps  {stats.latency_ms:4.0f} ms"


def caption(label: str, confidence: float) -> str:
    """``happy 87%``: the label and its confidence (a drawn bar beside it shows the confidence at a glance)."""
    return f"{label} {confidence:.0%}"


class ExpressionPipeline:
    """Detect, classify (batched), track, smooth and draw; one instance per stream (it holds tracks).

    ``detect_side`` shrinks frames to at most that many pixels on their long side for detection only
    (``None``: full size); ``schedule`` says which faces are classified in each frame (see
    :class:`ClassifySchedule`). Single images use ``None`` and ``EVERY_FACE``.
    """

    def __init__(
        self,
        detector: FaceDetector,
        classifier: Predictor | None,
        margin: float = 0.2,
        smoothing_s: float = 0.15,
        clock: Callable[[], float] = time.monotonic,
        detect_side: int | None = STREAM_DETECT_SIDE,
        schedule: ClassifySchedule = ClassifySchedule(),
        meter: bool = True,
    ) -> None:
        self.meter = meter  # the fps/latency banner: for streams, not for still photos
        self.detector = detector
        self.classifier = classifier
        self.margin = margin
        self.detect_side = detect_side
        self.schedule = schedule
        self.tracker = FaceTracker(smoothing_s)
        self.stats = FrameStats()
        # Called with the clean frame (before drawing) and its readings, e.g. to keep uncertain faces.
        self.on_readings: Callable[[np.ndarray, list[FaceReading]], None] | None = None
        self._clock = clock
        self._lock = threading.Lock()

    def configure(
        self,
        classifier: Predictor | None,
        smoothing_s: float,
        schedule: ClassifySchedule,
        on_readings: Callable[[np.ndarray, list[FaceReading]], None] | None,
    ) -> None:
        """Change what the page controls, in one step under the frame lock (frames run on another thread).

        A classifier with other labels starts every track afresh: the old probabilities cannot be blended
        with the new model's.
        """
        with self._lock:
            old_labels = self.classifier.labels if self.classifier else None
            if classifier is None or old_labels != classifier.labels:
                self.tracker.reset()
            self.classifier = classifier
            self.tracker.smoothing_s = max(0.0, smoothing_s)
            self.schedule = schedule
            self.on_readings = on_readings

    def classify(self, frame: np.ndarray, faces: list[Face]) -> np.ndarray:
        """Probabilities for the given faces of a frame in one batched call."""
        if self.classifier is None or not faces:
            return np.zeros((len(faces), 0))
        size = self.classifier.input_size
        return self.classifier.predict(np.stack([crop_face(frame, face, self.margin, size) for face in faces]))

    def process(self, frame: np.ndarray, draw: bool = True, now: float | None = None) -> list[FaceReading]:
        """Run the whole pipeline on a BGR frame (annotated in place when ``draw``).

        ``now`` is the frame's time in seconds (a video file's timestamp); live streams use the clock.
        Returns a reading for every face that has been classified at least once.
        """
        start = time.perf_counter()
        stamp = self._clock() if now is None else now
        with self._lock:
            faces = detect_downscaled(self.detector, frame, self.detect_side)
            tracks = self.tracker.match(faces, stamp)
            if self.classifier is not None:
                due = self.schedule.due(tracks, stamp)
                for track, probs in zip(due, self.classify(frame, [t.face for t in due]), strict=True):
                    self.tracker.observe(track, probs, stamp)
            readings = self._readings(tracks)
            if self.on_readings is not None and readings:
                self.on_readings(frame, readings)
            if draw:
                self._draw(frame, tracks, readings)
            self.stats.add(stamp, time.perf_counter() - start)
        return readings

    def _readings(self, tracks: list[Track]) -> list[FaceReading]:
        if self.classifier is None:
            return []
        labels = self.classifier.labels
        return [_reading(t, t.probs, labels) for t in tracks if t.probs is not None]

    def _draw(self, frame: np.ndarray, tracks: list[Track], readings: list[FaceReading]) -> None:
        by_track = {reading.track_id: reading for reading in readings}
        banner = banner_text(self.stats)
        clear = banner_height(frame, banner) if self.meter else 0
        for track in tracks:
            reading = by_track.get(track.id)
            if reading is None:  # not classified yet (or no model): a plain box
                draw_face(frame, track.face, UNCLASSIFIED)
            else:
                color = label_color(reading.label, list(reading.probs))
                text = caption(reading.label, reading.confidence)
                draw_face(frame, track.face, color, text, reading.confidence, keep_clear=clear)
        if self.meter:
            draw_banner(frame, banner, (60, 60, 60))


_PALETTE = [(60, 180, 75), (200, 130, 0), (48, 48, 230), (180, 30, 145), (0, 190, 255), (128, 128, 0)]


def label_color(label: str, labels: list[str]) -> tuple[int, int, int]:
    """The BGR colour of a label: its position in the model's labels, so every label of a model differs."""
    return _PALETTE[labels.index(label) % len(_PALETTE)]
