"""Fast inference on a published model with LiteRT: one batched call for all faces of a frame.

LiteRT with two threads classified a 96x96 face about 10x faster than Keras ``predict`` on this machine
(docs/stack-notes), and it does not load TensorFlow, which the Streamlit server must never import.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from expr_core.errors import ModelFileError
from expr_core.registry import ModelFiles

DEFAULT_THREADS = 2


def resolve_model(path: Path, quantized: bool = False) -> tuple[Path, list[str]]:
    """The ``.tflite`` file and labels for a run folder, its ``model/`` folder or a ``.tflite`` file.

    A ``.keras`` file must first be converted (``python -m expr_core models import``, or the CLI does it
    on the fly).
    """
    path = Path(path)
    if path.suffix == ".keras":
        raise ModelFileError(
            f"{path}: a .keras model must be converted before serving; import it on the Models page "
            "or with `python -m expr_core models import`."
        )
    files = ModelFiles.locate(path)
    served = path if path.suffix == ".tflite" else files.served(quantized)
    if not served.is_file():
        raise ModelFileError(f"{served}: no such model file (expected a run folder or a .tflite file).")
    return served, files.labels()


class Predictor(Protocol):
    """What serving a model means to its users (live pipeline, video, evaluation): a trained run's
    :class:`Classifier` or the starter model (:class:`expr_core.starter.StarterClassifier`)."""

    labels: list[str]
    input_size: int

    def predict(self, crops: Sequence[np.ndarray] | np.ndarray, bgr: bool = True) -> np.ndarray:
        """Probabilities ``(len(crops), len(labels))`` for face crops, in one call."""

    def predict_many(self, crops: Sequence[np.ndarray] | np.ndarray, bgr: bool = True) -> np.ndarray:
        """Probabilities for any number of crops, in batches."""


class LiteRTModel:
    """A LiteRT model on face crops: ``run(crops) -> outputs``, one invoke per batch.

    Thread-safe: a LiteRT interpreter is not, so every call holds the instance's lock. One instance can
    be shared by all sessions of a process (frames are classified one batch at a time anyway: the two
    LiteRT threads already use both cores). Its input is RGB 0..255 at ``input_size``, like every model here.
    """

    def __init__(self, tflite_path: Path, num_threads: int = DEFAULT_THREADS) -> None:
        from ai_edge_litert.interpreter import Interpreter

        try:
            self._interpreter = Interpreter(model_path=str(tflite_path), num_threads=num_threads)
        except (ValueError, RuntimeError) as exc:
            raise ModelFileError(f"{tflite_path}: not a usable LiteRT model ({exc}).") from exc
        self.path = Path(tflite_path)
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]
        self.input_size = int(self._input["shape"][1])
        self.outputs = int(self._output["shape"][-1])
        self._batch: int | None = None
        self._lock = threading.Lock()

    def prepare(self, crops: Sequence[np.ndarray] | np.ndarray, bgr: bool = True) -> np.ndarray:
        """Crops of any size (BGR from OpenCV, or RGB) as the model's float32 RGB 0..255 batch."""
        size = self.input_size
        batch = np.empty((len(crops), size, size, 3), np.float32)
        for i, crop in enumerate(crops):
            if crop.ndim == 2:
                crop = cv2.cvtColor(crop, cv2.COLOR_GRAY2BGR if bgr else cv2.COLOR_GRAY2RGB)
            if crop.shape[:2] != (size, size):
                crop = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)
            batch[i] = crop[..., ::-1] if bgr else crop
        return batch

    def run(self, crops: Sequence[np.ndarray] | np.ndarray, bgr: bool = True) -> np.ndarray:
        """Outputs ``(len(crops), outputs)`` for face crops, in one interpreter call.

        The input tensor is resized only when the batch size differs from the previous call, because
        resizing reallocates the interpreter's buffers.
        """
        if len(crops) == 0:
            return np.zeros((0, self.outputs), np.float32)
        batch = self.prepare(crops, bgr)
        with self._lock:
            if self._batch != len(batch):
                self._interpreter.resize_tensor_input(self._input["index"], batch.shape)
                self._interpreter.allocate_tensors()
                self._batch = len(batch)
            self._interpreter.set_tensor(self._input["index"], batch)
            self._interpreter.invoke()
            return self._interpreter.get_tensor(self._output["index"]).copy()

    def run_many(self, crops: Sequence[np.ndarray] | np.ndarray, bgr: bool = True, batch_size: int = 32) -> np.ndarray:
        """Outputs for any number of crops, in fixed-size batches (for evaluation and features, not live video)."""
        parts = [self.run(crops[i : i + batch_size], bgr) for i in range(0, len(crops), batch_size)]
        return np.concatenate(parts) if parts else np.zeros((0, self.outputs), np.float32)


class Classifier(LiteRTModel):
    """A LiteRT model with its labels: ``predict(crops) -> probabilities``, one invoke per batch."""

    def __init__(self, tflite_path: Path, labels: Sequence[str], num_threads: int = DEFAULT_THREADS) -> None:
        super().__init__(tflite_path, num_threads)
        self.labels = list(labels)
        if self.outputs != len(self.labels):
            raise ModelFileError(f"{tflite_path}: the model has {self.outputs} outputs but {len(self.labels)} labels.")

    def predict(self, crops: Sequence[np.ndarray] | np.ndarray, bgr: bool = True) -> np.ndarray:
        """Probabilities ``(len(crops), len(labels))`` for face crops, in one interpreter call."""
        return self.run(crops, bgr)

    def predict_many(self, crops: Sequence[np.ndarray] | np.ndarray, bgr: bool = True) -> np.ndarray:
        """Probabilities for any number of crops, in fixed-size batches (for evaluation, not live video)."""
        return self.run_many(crops, bgr)


class HeadClassifier:
    """A first model served as "prepared base + head": one LiteRT run of the base per batch, then the head in
    NumPy. No conversion per run: the base is the one prepared once for its backbone (see expr_core.bases)."""

    def __init__(self, files: ModelFiles, quantized: bool = False, num_threads: int = DEFAULT_THREADS) -> None:
        from expr_core.head import HeadWeights

        self.path = files.served(quantized)
        self._base = LiteRTModel(self.path, num_threads)
        self.labels = files.labels()
        self._head = HeadWeights.load(files.head, n_features=self._base.outputs, n_labels=len(self.labels))
        self.input_size = self._base.input_size

    def predict(self, crops: Sequence[np.ndarray] | np.ndarray, bgr: bool = True) -> np.ndarray:
        return self._head.predict(self._base.run(crops, bgr))

    def predict_many(self, crops: Sequence[np.ndarray] | np.ndarray, bgr: bool = True) -> np.ndarray:
        return self._head.predict(self._base.run_many(crops, bgr))


def open_model(path: Path, quantized: bool = False, num_threads: int = DEFAULT_THREADS) -> Classifier | HeadClassifier:
    """The served model of a run folder, a model folder or a ``.tflite`` file, whichever kind it is
    (see :func:`resolve_model`; a head model's base needs its head, so only its folder opens it)."""
    path = Path(path)
    files = ModelFiles.locate(path)
    if path.suffix != ".tflite" and files.is_head_model:
        return HeadClassifier(files, quantized, num_threads)
    tflite, labels = resolve_model(path, quantized)
    return Classifier(tflite, labels, num_threads)
