"""What a training run should do: one frozen, JSON-friendly object shared by the page, the CLI and the worker.

It lives apart from :mod:`expr_core.worker.train` because the Streamlit server builds and validates it, and the
server must never import TensorFlow; this module imports nothing heavy.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from expr_core.errors import UserError

# Backbones the model builder knows. DenseNet201 is the original project's network; MobileNetV3Small is a
# much cheaper option (about 40x faster to serve, seconds to convert) for small machines and for tests.
BACKBONES = ("densenet201", "mobilenetv3small")
NAMED_WEIGHTS = ("imagenet", "none")
MIN_IMAGE_SIZE = 32  # the smallest input Keras' DenseNet and MobileNet builders accept


class ConfigError(UserError):
    """A training setting that cannot work."""


@dataclass(frozen=True)
class TrainConfig:
    """Training settings with the issue's defaults. ``epochs_1 = 0`` or ``epochs_2 = 0`` switches a phase off.

    ``weights`` is ``"imagenet"`` (downloaded once into the Keras cache), ``"none"`` (random start, much less
    accurate) or the path of a weights file for the backbone without its top (``*_notop.h5``).
    ``feature_copies`` is how many augmented copies of each training image get their frozen-base features
    cached for phase 1, on top of the clean image: the head then sees augmentation without the base
    being run every epoch.
    """

    backbone: str = "densenet201"
    weights: str = "imagenet"
    image_size: int = 96
    batch_size: int = 32
    epochs_1: int = 30
    epochs_2: int = 10
    lr_1: float = 1e-3
    lr_2: float = 2e-5
    feature_copies: int = 2
    val_fraction: float = 0.2
    seed: int = 0
    quantize: bool = True

    def validated(self) -> TrainConfig:
        """``self`` if every setting is usable, else :class:`ConfigError` naming the first bad one."""
        if self.backbone not in BACKBONES:
            raise ConfigError(f"Unknown backbone {self.backbone!r}; choose one of {', '.join(BACKBONES)}.")
        if self.weights not in NAMED_WEIGHTS and not Path(self.weights).is_file():
            raise ConfigError(
                f"Weights {self.weights!r}: use 'imagenet', 'none' or the path of an existing weights file."
            )
        if not MIN_IMAGE_SIZE <= self.image_size <= 512:
            raise ConfigError(f"Image size must be between {MIN_IMAGE_SIZE} and 512 pixels, not {self.image_size}.")
        if self.batch_size < 1 or self.epochs_1 < 0 or self.epochs_2 < 0 or self.feature_copies < 0:
            raise ConfigError("Batch size must be at least 1; epochs and feature copies cannot be negative.")
        if self.epochs_1 == 0 and self.epochs_2 == 0:
            raise ConfigError("Both phases are switched off (0 epochs each); give at least one phase some epochs.")
        if not (self.lr_1 > 0 and self.lr_2 > 0):
            raise ConfigError("Learning rates must be positive.")
        if not 0.05 <= self.val_fraction <= 0.5:
            raise ConfigError(f"The validation fraction must be between 0.05 and 0.5, not {self.val_fraction}.")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a dict, ignoring unknown keys so configs written by newer versions still load."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
