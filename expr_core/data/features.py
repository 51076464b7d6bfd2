"""Base features of the dataset's samples, computed once per sample and prepared base, kept with the dataset.

``dataset/features/<base slug>/<sample id>.npy`` holds a ``(VIEWS, d)`` float32 array: the pooled
features of the clean crop, of its mirror image and of one small random change (rotation, shift,
brightness; seeded by the sample id), which is what phase 1's augmentation needs when the head trains on
features alone. The base slug (:meth:`expr_core.bases.BaseKey.slug`) keeps another backbone, size or
weights from ever reusing them; a deleted sample loses its features with its image
(:meth:`expr_core.data.store.DatasetStore.delete_samples`).

No TensorFlow: features come from a prepared base run by LiteRT (:class:`expr_core.serving.LiteRTModel`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import cv2
import numpy as np

from expr_core import atomic, bases
from expr_core.errors import UserError
from expr_core.registry import ModelFiles
from expr_core.serving import LiteRTModel
from expr_core.settings import Settings

log = logging.getLogger(__name__)

VIEWS = 3  # clean, mirrored, jittered
FEATURES_DIR = "features"
SAMPLES_PER_RUN = 8  # samples whose views go through the base in one interpreter call


def _jittered(crop: np.ndarray, seed: int) -> np.ndarray:
    """A small, label-preserving change of the crop (as the training augmentation does), reproducible per seed."""
    rng = np.random.default_rng(seed)
    h, w = crop.shape[:2]
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-14, 14), rng.uniform(0.92, 1.08)).astype(np.float64)
    matrix[:, 2] = matrix[:, 2] + rng.uniform(-0.06, 0.06, 2) * np.array([w, h])
    moved = cv2.warpAffine(crop, matrix, (w, h), borderMode=cv2.BORDER_REFLECT)
    return cv2.convertScaleAbs(moved, alpha=rng.uniform(0.85, 1.15), beta=rng.uniform(-20, 20))


def views(crop: np.ndarray, sample_id: str) -> list[np.ndarray]:
    """The crops whose features are kept for a sample: clean, mirrored and jittered."""
    seed = int.from_bytes(hashlib.sha256(sample_id.encode()).digest()[:4], "little")
    return [crop, cv2.flip(crop, 1), _jittered(crop, seed)]


class FeatureStore:
    """One prepared base's features for one workspace's samples."""

    def __init__(self, dataset_root: Path, slug: str) -> None:
        self.folder = Path(dataset_root) / FEATURES_DIR / slug

    def path(self, sample_id: str) -> Path:
        return self.folder / f"{sample_id}.npy"

    def load(self, sample_id: str) -> np.ndarray | None:
        """The sample's ``(VIEWS, d)`` features, or ``None`` if missing or unreadable (they are recomputed)."""
        try:
            features = np.load(self.path(sample_id), allow_pickle=False)
        except (OSError, ValueError):
            return None
        return features if features.ndim == 2 and features.shape[0] == VIEWS else None

    def save(self, sample_id: str, features: np.ndarray) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic.atomic_writer(self.path(sample_id)) as out:
            np.save(out, np.asarray(features, np.float32), allow_pickle=False)

    def discard(self, sample_ids: Iterable[str]) -> None:
        for sample_id in sample_ids:
            with contextlib.suppress(FileNotFoundError):
                self.path(sample_id).unlink()

    def missing(self, sample_ids: Iterable[str]) -> list[str]:
        """The ids among ``sample_ids`` without features (new, from before, or unreadable)."""
        return [sample_id for sample_id in sample_ids if self.load(sample_id) is None]

    def matrix(self, sample_ids: Sequence[str]) -> np.ndarray:
        """``(n, VIEWS, d)`` features of the samples, in order; ``KeyError`` names the first one missing."""
        rows = []
        for sample_id in sample_ids:
            features = self.load(sample_id)
            if features is None:
                raise KeyError(sample_id)
            rows.append(features)
        return np.stack(rows) if rows else np.zeros((0, VIEWS, 0), np.float32)

    def compute(
        self, base: LiteRTModel, items: Iterable[tuple[str, np.ndarray]], on_done: Callable[[int], None] | None = None
    ) -> int:
        """Compute and keep the features of ``(sample id, BGR crop)`` pairs; returns how many were computed.

        A few samples' views go through the base per call (one call per sample costs 2-3x more on DenseNet201).
        """
        done = 0
        pending: list[tuple[str, np.ndarray]] = []

        def run() -> None:
            nonlocal done
            crops = [view for sample_id, crop in pending for view in views(crop, sample_id)]
            outputs = base.run(crops).reshape(len(pending), VIEWS, -1)
            for (sample_id, _), features in zip(pending, outputs, strict=True):
                self.save(sample_id, features)
            done += len(pending)
            pending.clear()
            if on_done:
                on_done(done)

        for item in items:
            pending.append(item)
            if len(pending) == SAMPLES_PER_RUN:
                run()
        if pending:
            run()
        return done


def forget(dataset_root: Path, sample_ids: Iterable[str]) -> None:
    """Remove the samples' features for every base (their images are gone)."""
    root = Path(dataset_root) / FEATURES_DIR
    if not root.is_dir():
        return
    ids = list(sample_ids)
    for folder in root.iterdir():
        FeatureStore(dataset_root, folder.name).discard(ids)


class Featurizer:
    """Computes newly saved samples' features with the prepared base of the workspace's current backbone.

    Capture's writer thread, imports and review labelling call :meth:`add` right after storing samples, so
    a run finds them ready and trains its head in seconds. Nothing happens while that base is not prepared
    yet (the run prepares it and fills in what is missing). One instance per process: the base is loaded once.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._bases: dict[str, LiteRTModel] = {}
        self._lock = threading.Lock()

    def add(self, dataset_root: Path, items: Sequence[tuple[str, np.ndarray]]) -> int:
        """Compute the features of ``(sample id, BGR crop)`` pairs; how many were computed (0: no base yet).

        The samples are stored already, so no failure here may undo that: a problem is logged, and the run
        that needs the features computes them.
        """
        try:
            key = bases.current_key(self.settings)
            if not items or not bases.is_prepared(self.settings, key):
                return 0
            with self._lock:
                slug = key.slug()
                if slug not in self._bases:
                    # One thread: the frame callbacks of a recording stream keep the other core.
                    self._bases[slug] = LiteRTModel(ModelFiles(bases.folder(self.settings, key)).tflite, num_threads=1)
                base = self._bases[slug]
                return FeatureStore(dataset_root, slug).compute(base, items)
        except (UserError, OSError, ValueError, RuntimeError) as exc:
            log.warning("could not compute the features of %d new sample(s): %s", len(items), exc)
            return 0
