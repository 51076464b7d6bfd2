"""What the live and load benchmarks feed the pipeline: frames of real faces and the served model.

Frames are 640x480 composites of real LFW photos with 1 or 3 faces, moving slightly between frames.
The model is DenseNet201 at 96x96 with the original head, weights none (same FLOPs as ImageNet
weights, which cannot be fetched here), exported exactly as a training run publishes it.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from expr_core.vision.faces import FaceDetector

SIZE = 96
LABELS = ["happy", "sad", "neutral"]


def compose(photos: list[np.ndarray], n_faces: int, index: int) -> np.ndarray:
    """A 640x480 frame with ``n_faces`` different real photos side by side, slightly moving."""
    frame = np.full((480, 640, 3), 90, np.uint8)
    side = 300 if n_faces == 1 else 190
    gap = (640 - n_faces * side) // (n_faces + 1)
    for k in range(n_faces):
        photo = cv2.resize(photos[(index * n_faces + k) % len(photos)], (side, side))
        x = gap + k * (side + gap) + int(4 * np.sin(index / 5 + k))
        y = (480 - side) // 2 + int(4 * np.cos(index / 7 + k))
        frame[y : y + side, x : x + side] = photo
    return frame


def lfw_detector() -> tuple[Path, FaceDetector]:
    """The LFW photo folder and the YuNet detector from the shared model folder (no downloads)."""
    from bench.common import require_shared
    from expr_core.settings import load_settings
    from expr_core.vision.faces import make_detector

    root = require_shared("data/lfw-expressions")
    settings = load_settings().with_(models_dir=root.parents[1] / "models", allow_downloads=False)
    return root, make_detector("yunet", settings)


def load_photos(root: Path, limit: int) -> list[np.ndarray]:
    paths = sorted(root.glob("*/*.jpg"))[:limit]
    return [image for p in paths if (image := cv2.imread(str(p), cv2.IMREAD_COLOR)) is not None]


def build_served_models(folder: Path):
    """DenseNet201 (weights none) exported the way training publishes it: float32 and dynamic-range."""
    from expr_core import atomic
    from expr_core.registry import LABELS_FILE
    from expr_core.worker.convert import export_tflite
    from expr_core.worker.model import build_network, inference_copy

    network = build_network("densenet201", len(LABELS), SIZE, "none")
    model = inference_copy(network)
    timings = export_tflite(model, folder, quantize=True)
    atomic.write_json(folder / LABELS_FILE, LABELS)
    return model, timings


def served_model_folder() -> Path:
    """The served DenseNet201 files, converted once and kept in a cache (conversion takes minutes)."""
    import os

    from expr_core.registry import TFLITE_DYNAMIC_FILE

    folder = Path(os.environ.get("EXPR_BENCH_CACHE", Path.home() / ".cache" / "expr-bench")) / f"densenet201-{SIZE}"
    if not (folder / TFLITE_DYNAMIC_FILE).is_file():
        build_served_models(folder)
    return folder
