"""Face detection behind one interface, and square face crops that stay inside the frame.

Three detectors:

- ``yunet``: OpenCV Zoo's YuNet via ``cv2.FaceDetectorYN`` (default; fast, five landmarks, a score).
- ``ssd``: the original project's SSD res10 Caffe detector, when its two files are available.
- ``haar``: OpenCV's frontal-face Haar cascade, shipped inside opencv-python-headless 4.x, needing no
  download. It has no calibrated confidence, so its faces carry score 1.0.

Detectors are safe to share between threads (each call holds the detector's lock), because the app
runs one frame callback thread per browser session against a single cached detector.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

from expr_core import assets
from expr_core.errors import ModelFileError
from expr_core.settings import Settings

# YuNet runs on images no larger than this on their long side (larger ones are shrunk; boxes scaled back).
YUNET_MAX_SIDE = 640


@dataclass(frozen=True)
class Face:
    """A detected face: box ``(x, y, w, h)`` in frame pixels, detector score, optional 5x2 landmarks."""

    box: tuple[int, int, int, int]
    score: float
    landmarks: tuple[tuple[float, float], ...] | None = None

    @property
    def area(self) -> int:
        return self.box[2] * self.box[3]

    def scaled(self, factor: float, width: int, height: int) -> Face | None:
        """This face in a frame ``factor`` times larger (``width`` x ``height``); ``None`` if it falls outside."""
        x, y, w, h = (v * factor for v in self.box)
        box = _clip_box(x, y, w, h, width, height)
        if box is None:
            return None
        marks = None if self.landmarks is None else tuple((x * factor, y * factor) for x, y in self.landmarks)
        return Face(box, self.score, marks)


class FaceDetector(Protocol):
    name: str

    def detect(self, bgr: np.ndarray) -> list[Face]:
        """Faces in a BGR uint8 frame, highest score first."""


def _clip_box(x: float, y: float, w: float, h: float, width: int, height: int) -> tuple[int, int, int, int] | None:
    x0, y0 = max(0, int(round(x))), max(0, int(round(y)))
    x1, y1 = min(width, int(round(x + w))), min(height, int(round(y + h)))
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    return (x0, y0, x1 - x0, y1 - y0)


class YuNetDetector:
    name = "yunet"

    def __init__(self, model_path: str, score_threshold: float = 0.6) -> None:
        self._net = cv2.FaceDetectorYN.create(model_path, "", (320, 320), score_threshold, 0.3, 50)
        self._lock = threading.Lock()

    def detect(self, bgr: np.ndarray) -> list[Face]:
        if max(bgr.shape[:2]) > YUNET_MAX_SIDE:
            return detect_downscaled(self, bgr, YUNET_MAX_SIDE)
        height, width = bgr.shape[:2]
        with self._lock:
            self._net.setInputSize((width, height))
            _, rows = self._net.detect(np.ascontiguousarray(bgr))
        faces = []
        for row in [] if rows is None else rows:
            if not np.isfinite(row[:15]).all():
                continue  # YuNet can emit garbage rows on degenerate (e.g. 1-pixel) inputs
            box = _clip_box(float(row[0]), float(row[1]), float(row[2]), float(row[3]), width, height)
            if box is not None:
                marks = tuple((float(row[4 + 2 * i]), float(row[5 + 2 * i])) for i in range(5))
                faces.append(Face(box, float(row[14]), marks))
        return sorted(faces, key=lambda f: -f.score)


class SsdDetector:
    name = "ssd"

    def __init__(self, prototxt: str, caffemodel: str, score_threshold: float = 0.5) -> None:
        try:
            self._net = cv2.dnn.readNetFromCaffe(prototxt, caffemodel)
        except cv2.error as exc:
            raise ModelFileError(f"OpenCV could not load the SSD detector files ({exc}).") from exc
        self._threshold = score_threshold
        self._lock = threading.Lock()

    def detect(self, bgr: np.ndarray) -> list[Face]:
        height, width = bgr.shape[:2]
        blob = cv2.dnn.blobFromImage(cv2.resize(bgr, (300, 300)), 1.0, (300, 300), (104.0, 177.0, 123.0))
        with self._lock:
            self._net.setInput(blob)
            out = self._net.forward()
        faces = []
        for det in out[0, 0]:
            score = float(det[2])
            if score < self._threshold:
                continue
            x0, y0, x1, y1 = det[3:7] * np.array([width, height, width, height])
            box = _clip_box(x0, y0, x1 - x0, y1 - y0, width, height)
            if box is not None:
                faces.append(Face(box, score))
        return sorted(faces, key=lambda f: -f.score)


class HaarDetector:
    name = "haar"

    def __init__(self) -> None:
        path = os.path.join(
            getattr(getattr(cv2, "data", None), "haarcascades", ""), "haarcascade_frontalface_default.xml"
        )
        if not hasattr(cv2, "CascadeClassifier") or not os.path.isfile(path):
            raise ModelFileError(
                "This OpenCV build ships no Haar cascades (opencv-python-headless 5.x dropped them); "
                "install the pinned opencv-python-headless 4.x from requirements.txt or use the YuNet detector."
            )
        self._cascade = cv2.CascadeClassifier(path)
        self._lock = threading.Lock()

    def detect(self, bgr: np.ndarray) -> list[Face]:
        gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY) if bgr.ndim == 3 else bgr
        min_side = max(24, min(gray.shape[:2]) // 10)
        with self._lock:
            boxes = self._cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=6, minSize=(min_side, min_side))
        faces = [Face((int(x), int(y), int(w), int(h)), 1.0) for x, y, w, h in boxes]
        return sorted(faces, key=lambda f: -f.area)


def detect_downscaled(detector: FaceDetector, bgr: np.ndarray, max_side: int | None) -> list[Face]:
    """Detect on a copy at most ``max_side`` pixels on its long side; faces come back in frame pixels.

    Detection cost grows with the pixel count while webcam faces are large, so live streams detect on a
    smaller copy (crops are still cut from the full frame). ``None`` detects at full size.
    """
    height, width = bgr.shape[:2]
    scale = 1.0 if max_side is None else min(1.0, max_side / max(height, width))
    if scale == 1.0:
        return detector.detect(bgr)
    small = cv2.resize(bgr, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
    faces = (face.scaled(1 / scale, width, height) for face in detector.detect(small))
    return [face for face in faces if face is not None]


def make_detector(name: str, settings: Settings) -> FaceDetector:
    """Build the named detector, locating (and if allowed downloading) its model files."""
    if name == "yunet":
        return YuNetDetector(str(assets.locate(assets.YUNET, settings)))
    if name == "ssd":
        prototxt = assets.locate(assets.SSD_PROTOTXT, settings)
        return SsdDetector(str(prototxt), str(assets.locate(assets.SSD_CAFFEMODEL, settings)))
    if name == "haar":
        return HaarDetector()
    raise ModelFileError(f"Unknown detector {name!r}; choose yunet, ssd or haar.")


def open_detector(settings: Settings, name: str | None = None) -> tuple[FaceDetector, str | None]:
    """The configured detector, or the Haar fallback with a warning saying why and how to fix it."""
    name = name or settings.detector
    try:
        return make_detector(name, settings), None
    except ModelFileError as exc:
        if name == "haar":
            raise
        return HaarDetector(), f"Using the Haar fallback detector (less accurate) because: {exc}"


def square_box(box: tuple[int, int, int, int], margin: float, width: int, height: int) -> tuple[int, int, int, int]:
    """A square around ``box`` grown by ``margin`` on each side, moved (and if needed shrunk) into the frame.

    The original script sliced ``frame[y-20:y+h+20]`` and got empty or wrapped crops near the border;
    here the square is shifted inward instead, so a face at the edge still gives a full, centred crop.
    """
    x, y, w, h = box
    side = int(round(max(w, h) * (1 + 2 * margin)))
    side = max(1, min(side, width, height))
    cx, cy = x + w / 2, y + h / 2
    x0 = int(round(min(max(cx - side / 2, 0), width - side)))
    y0 = int(round(min(max(cy - side / 2, 0), height - side)))
    return (x0, y0, side, side)


def crop_face(frame: np.ndarray, face: Face, margin: float, size: int) -> np.ndarray:
    """A ``size`` x ``size`` crop of ``face`` with ``margin``, always inside ``frame``."""
    height, width = frame.shape[:2]
    x, y, w, h = square_box(face.box, margin, width, height)
    crop = frame[y : y + h, x : x + w]
    interp = cv2.INTER_AREA if w > size else cv2.INTER_LINEAR
    return cv2.resize(crop, (size, size), interpolation=interp)


def pick_faces(faces: list[Face], largest_only: bool) -> list[Face]:
    """All faces, or only the largest one (the person in front of the camera)."""
    if largest_only and faces:
        return [max(faces, key=lambda f: f.area)]
    return faces


def detect_and_crop(
    detector: FaceDetector, frame: np.ndarray, margin: float, size: int, largest_only: bool
) -> list[tuple[Face, np.ndarray]]:
    """Detect faces and return ``(face, crop)`` pairs; the one path used by capture, import and CLI."""
    return [(face, crop_face(frame, face, margin, size)) for face in pick_faces(detector.detect(frame), largest_only)]
