"""What a training run should do: one frozen, JSON-friendly object shared by the page, the CLI and the worker.

It lives apart from :mod:`expr_core.worker.train` because the Streamlit server builds and validates it, and the
server must never import TensorFlow; this module imports nothing heavy.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from expr_core.backbones import BACKBONES, FER2013, IMAGENET, NAMED_WEIGHTS, NO_WEIGHTS
from expr_core.errors import UserError

MIN_IMAGE_SIZE = 32  # the smallest input Keras' DenseNet and MobileNet builders accept
MAX_LEARNING_RATE = 1.0
MAX_BATCH_SIZE, MAX_EPOCHS = 1024, 1000


class ConfigError(UserError):
    """A training setting that cannot work."""


@dataclass(frozen=True)
class TrainConfig:
    """Training settings with the issue's defaults. ``epochs_1 = 0`` or ``epochs_2 = 0`` switches a phase off.

    ``weights`` is ``"imagenet"`` (DenseNet201 and MobileNetV3Small: downloaded once into the Keras cache),
    ``"fer2013"`` (mini-Xception: the pinned FER2013 model file), ``"none"`` (random start, much less
    accurate) or the path of a weights file (DenseNet/MobileNet without its top, ``*_notop.h5``; for
    mini-Xception, a model file of the same architecture).
    Phase 1's augmentation is fixed: each sample's features are kept for its clean, mirrored and jittered
    crop (:mod:`expr_core.data.features`), computed once when it is saved.
    """

    backbone: str = "densenet201"
    weights: str = "imagenet"
    image_size: int = 96
    batch_size: int = 32
    epochs_1: int = 30
    epochs_2: int = 10
    lr_1: float = 1e-3
    lr_2: float = 2e-5
    val_fraction: float = 0.2
    seed: int = 0
    quantize: bool = True

    def validated(self) -> TrainConfig:
        """``self`` if every setting is usable, else :class:`ConfigError` naming the first bad one."""
        if self.backbone not in BACKBONES:
            raise ConfigError(f"Unknown backbone {self.backbone!r}; choose one of {', '.join(BACKBONES)}.")
        if self.weights not in NAMED_WEIGHTS and not Path(self.weights).is_file():
            raise ConfigError(
                f"Weights {self.weights!r}: use 'imagenet', 'fer2013', 'none' or the path of an existing weights file."
            )
        native = BACKBONES[self.backbone].weights
        if self.weights == NO_WEIGHTS and native == FER2013:
            raise ConfigError(f"{self.backbone} is built from its pretrained file: use {native!r} or a model file.")
        if self.weights in (IMAGENET, FER2013) and self.weights != native:
            raise ConfigError(f"{self.backbone} has no {self.weights!r} weights; use {native!r}, 'none' or a file.")
        whole = {
            "image size": self.image_size,
            "batch size": self.batch_size,
            "phase 1 epochs": self.epochs_1,
            "phase 2 epochs": self.epochs_2,
            "seed": self.seed,
        }
        for name, value in whole.items():
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"The {name} must be a whole number, not {value!r}.")
        if not MIN_IMAGE_SIZE <= self.image_size <= 512:
            raise ConfigError(f"Image size must be between {MIN_IMAGE_SIZE} and 512 pixels, not {self.image_size}.")
        if self.batch_size < 1 or self.epochs_1 < 0 or self.epochs_2 < 0:
            raise ConfigError("Batch size must be at least 1; epochs cannot be negative.")
        if self.batch_size > MAX_BATCH_SIZE or max(self.epochs_1, self.epochs_2) > MAX_EPOCHS:
            raise ConfigError(f"Batch size can be at most {MAX_BATCH_SIZE} and epochs at most {MAX_EPOCHS} per phase.")
        if self.epochs_1 == 0 and self.epochs_2 == 0:
            raise ConfigError("Both phases are switched off (0 epochs each); give at least one phase some epochs.")
        for name, rate in (("phase 1", self.lr_1), ("phase 2", self.lr_2)):
            if not (isinstance(rate, (int, float)) and math.isfinite(rate) and 0 < rate <= MAX_LEARNING_RATE):
                raise ConfigError(
                    f"The {name} learning rate must be a number above 0 and at most {MAX_LEARNING_RATE:g}, not {rate}."
                )
        if not 0.05 <= self.val_fraction <= 0.5:
            raise ConfigError(f"The validation fraction must be between 0.05 and 0.5, not {self.val_fraction}.")
        return self

    @classmethod
    def for_backbone(cls, backbone: str, **settings: Any) -> TrainConfig:
        """The defaults for ``backbone`` (its pretrained weights, input size, fine-tuning rate), then ``settings``."""
        if backbone not in BACKBONES:
            raise ConfigError(f"Unknown backbone {backbone!r}; choose one of {', '.join(BACKBONES)}.")
        spec = BACKBONES[backbone]
        defaults = {"backbone": backbone, "weights": spec.weights, "image_size": spec.image_size, "lr_2": spec.lr_2}
        return cls(**{**defaults, **{k: v for k, v in settings.items() if v is not None}})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a dict, ignoring unknown keys so configs written by newer versions still load."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
