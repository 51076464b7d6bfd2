"""The starter model: the FER2013-pretrained classifier, restricted to the workspace's labels it knows.

A workspace without a trained model still gets a working Detect page: mini-Xception reads seven
expressions (angry, disgust, fear, happy, sad, surprise, neutral); the starter keeps the ones the workspace
has labels for, renormalises their probabilities over those, and says which labels it cannot read. It is
not trained on the team: the page says so.

Serving needs no TensorFlow: a worker converts the pretrained file to LiteRT once
(``python -m expr_core starter prepare``, see :mod:`expr_core.worker.starter`) into the cache folder,
keyed by the pretrained file's digest, with RGB 0..255 input like every model of this app.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from expr_core import assets
from expr_core.errors import ModelFileError
from expr_core.registry import ModelFiles
from expr_core.serving import DEFAULT_THREADS, Classifier
from expr_core.settings import Settings

NAME = "starter"
# The pretrained model's outputs, in order (see ../shared/models/README.md and the fer package).
EMOTIONS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
INPUT_SIZE = 64
# Other words people use for the same expressions (labels are compared case- and accent-insensitively).
ALIASES = {
    "angry": ("anger", "mad", "annoyed"),
    "disgust": ("disgusted",),
    "fear": ("afraid", "scared", "fearful"),
    "happy": ("happiness", "smile", "smiling", "joy"),
    "sad": ("sadness", "unhappy"),
    "surprise": ("surprised",),
    "neutral": ("calm", "none", "blank"),
}


def _key(label: str) -> str:
    return unicodedata.normalize("NFKD", label).encode("ascii", "ignore").decode().strip().lower()


def emotion_of(label: str) -> str | None:
    """The pretrained output a workspace label means, if any (``"Smiling"`` -> ``"happy"``)."""
    key = _key(label)
    for emotion in EMOTIONS:
        if key == emotion or key in ALIASES[emotion]:
            return emotion
    return None


def folder(settings: Settings) -> Path:
    """Where the prepared starter lives: the cache, keyed by the pretrained file's digest."""
    digest = str(assets.FER_MINI_XCEPTION.digest).split(":", 1)[1][:12]
    return Path(settings.cache_dir) / f"starter-{digest}"


def is_prepared(settings: Settings) -> bool:
    return ModelFiles(folder(settings)).tflite.is_file()


@dataclass(frozen=True)
class LabelMatch:
    """Which workspace labels the starter can read (with their pretrained output), and which it cannot."""

    readable: list[str]
    outputs: list[int]
    unreadable: list[str]

    @classmethod
    def of(cls, labels: Sequence[str]) -> LabelMatch:
        readable, outputs, unreadable = [], [], []
        for label in labels:
            emotion = emotion_of(label)
            if emotion is None or EMOTIONS.index(emotion) in outputs:
                unreadable.append(label)
            else:
                readable.append(label)
                outputs.append(EMOTIONS.index(emotion))
        return cls(readable, outputs, unreadable)


class StarterClassifier:
    """The pretrained classifier as a served model with the workspace's labels (the live pipeline's Predictor)."""

    def __init__(self, settings: Settings, labels: Sequence[str], num_threads: int = DEFAULT_THREADS) -> None:
        self.match = LabelMatch.of(labels)
        if len(self.match.readable) < 2:
            raise ModelFileError(
                "The starter model reads only angry, disgust, fear, happy, sad, surprise and neutral; it needs at "
                f"least two of them among the labels ({', '.join(labels) or 'none'}). Train a model instead."
            )
        files = ModelFiles(folder(settings))
        if not files.tflite.is_file():
            raise ModelFileError("The starter model is not prepared yet (python -m expr_core starter prepare).")
        self._model = Classifier(files.tflite, list(EMOTIONS), num_threads)
        self.labels = list(self.match.readable)
        self.input_size = self._model.input_size
        self.path = files.tflite

    def _restrict(self, probs: np.ndarray) -> np.ndarray:
        kept = probs[:, self.match.outputs]
        return kept / np.maximum(kept.sum(axis=1, keepdims=True), 1e-12)

    def predict(self, crops: Sequence[np.ndarray] | np.ndarray, bgr: bool = True) -> np.ndarray:
        """Probabilities over the readable labels for face crops, in one interpreter call."""
        return self._restrict(self._model.predict(crops, bgr))

    def predict_many(self, crops: Sequence[np.ndarray] | np.ndarray, bgr: bool = True) -> np.ndarray:
        return self._restrict(self._model.predict_many(crops, bgr))

    def note(self) -> str:
        """What the page says about it."""
        text = "Starter model: not trained on your team (FER2013 mini-Xception); reads " + ", ".join(self.labels)
        if self.match.unreadable:
            text += f"; cannot read {', '.join(repr(x) for x in self.match.unreadable)}"
        return text + ". Train a model on your own faces to read them better."
