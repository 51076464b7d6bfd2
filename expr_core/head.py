"""The classifier head in plain NumPy: trained on cached features, served, and handed to Keras unchanged.

Phase 1 of training fits only the head, ``Dense(512, relu) -> Dropout(0.3) -> Dense(n, softmax)``, on the frozen
base's pooled features. Doing that in a TensorFlow process costs 0.8-3 GB; here it costs NumPy and a few MB of
weights, so a 1 GB instance can train it and a first model exists seconds after pressing Train. The Streamlit
server (which must never import TensorFlow, see docs/architecture.md) can serve the same head, and the worker
later puts it into the full Keras model: :class:`HeadWeights` keeps Keras' ``Dense`` layout (kernel
``(inputs, units)``, bias ``(units,)``), so ``layer.set_weights([w1, b1])`` takes it as it is.

The recipe is the original's phase 1 as Keras runs it, step for step: Glorot-uniform
kernels and zero biases; sparse categorical cross-entropy weighted by balanced class weights and averaged over
the batch size (Keras' ``sum_over_batch_size``); Adam in Keras' form; minibatches reshuffled every epoch; early
stopping on the selection score (validation balanced accuracy, ties by the lower loss) that restores the best
epoch; ReduceLROnPlateau on validation loss.
The logs follow Keras too: training ``loss`` (class-weighted) and ``accuracy`` (plain) are running values
over the epoch's batches, with dropout on.

Imports NumPy and two small project modules only: no TensorFlow or Keras, ever.
"""

from __future__ import annotations

import math
import time
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from expr_core.atomic import atomic_writer
from expr_core.errors import ModelFileError

HIDDEN_UNITS = 512  # as expr_core.worker.model.HEAD_UNITS: the Keras model the head is put into
DROPOUT = 0.3  # as expr_core.worker.model.HEAD_DROPOUT
MONITOR = "val_balanced_accuracy"  # the measure of a model: mean recall over the labels on validation faces
# What early stopping, checkpoints and the phase choice keep the best of: balanced accuracy, ties broken by the
# lower validation loss (a team's few bursts often reach 100 % in the first epoch; the later, more confident
# epochs must still count as better). The loss term is far below one validation face's worth of accuracy.
SELECTION = "val_selection_score"
LOSS_TIEBREAK = 1e-4
TRAIN_MONITOR = "balanced_accuracy"  # what is monitored instead when there are no validation vectors
EVAL_CHUNK = 2048  # rows per forward pass outside training: bounds the hidden activations' memory
WEIGHT_KEYS = ("w1", "b1", "w2", "b2")
FILE_FORMAT = 1
RETRAIN = "Train the model again to write a new one."

OnEpoch = Callable[[int, int, dict[str, float]], None]
ShouldStop = Callable[[], bool]


# -- the weights -----------------------------------------------------------------------------------
@dataclass(eq=False)
class HeadWeights:
    """The head's parameters in Keras' ``Dense`` layout: ``w1 (d, units)``, ``b1 (units,)``, ``w2 (units, n)``,
    ``b2 (n,)``, all float32 and C-contiguous.

    ``[w1, b1]`` is what ``model.get_layer("head_dense").set_weights`` takes and ``[w2, b2]`` what
    ``"probabilities"`` takes; :meth:`as_list` is the order ``head_model.set_weights`` expects.
    """

    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    b2: np.ndarray

    def __post_init__(self) -> None:
        for key in WEIGHT_KEYS:
            setattr(self, key, np.ascontiguousarray(getattr(self, key), dtype=np.float32))
        problem = _shape_problem(self.w1, self.b1, self.w2, self.b2)
        if problem:
            raise ValueError(f"Inconsistent head weights: {problem}.")

    @property
    def n_features(self) -> int:
        return int(self.w1.shape[0])

    @property
    def units(self) -> int:
        return int(self.w1.shape[1])

    @property
    def n_labels(self) -> int:
        return int(self.w2.shape[1])

    def as_list(self) -> list[np.ndarray]:
        """``[w1, b1, w2, b2]``: Keras' ``get_weights()``/``set_weights()`` order for the head (Dropout has none)."""
        return [self.w1, self.b1, self.w2, self.b2]

    @classmethod
    def from_list(cls, weights: list[np.ndarray]) -> HeadWeights:
        """From Keras' ``head_model.get_weights()`` (or :meth:`as_list`)."""
        if len(weights) != len(WEIGHT_KEYS):
            raise ValueError(f"Expected {len(WEIGHT_KEYS)} arrays (w1, b1, w2, b2), got {len(weights)}.")
        return cls(*weights)

    def copy(self) -> HeadWeights:
        return HeadWeights(*(array.copy() for array in self.as_list()))

    def is_finite(self) -> bool:
        return all(bool(np.isfinite(array).all()) for array in self.as_list())

    def predict(self, features: np.ndarray, batch_size: int = EVAL_CHUNK) -> np.ndarray:
        """Probabilities ``(m, n)`` float32 for pooled features ``(m, d)``, as Keras' ``predict`` gives them.

        Dropout is off (inference). Rows are processed ``batch_size`` at a time, so a large input never
        needs a ``(m, 512)`` hidden array at once. Non-finite features give non-finite rows, which the
        validation report counts (the quality gate refuses such a model) rather than hiding them.
        """
        x = _features(features, self.n_features)
        out = np.empty((len(x), self.n_labels), np.float32)
        for start in range(0, len(x), batch_size):
            out[start : start + batch_size] = _softmax(self.logits(x[start : start + batch_size]))
        return out

    def logits(self, x: np.ndarray) -> np.ndarray:
        """The second Dense layer's output before softmax, dropout off; ``x`` is float32 ``(m, d)``."""
        hidden = x @ self.w1
        hidden += self.b1
        np.maximum(hidden, 0, out=hidden)
        logits = hidden @ self.w2
        logits += self.b2
        return logits

    def save(self, path: Path) -> None:
        """Write the weights to ``path`` (``.npz``) atomically: a reader sees the old file or the whole new one."""
        with atomic_writer(Path(path), "wb") as handle:
            np.savez(handle, format=np.array(FILE_FORMAT), w1=self.w1, b1=self.b1, w2=self.w2, b2=self.b2)

    @classmethod
    def load(cls, path: Path, n_features: int | None = None, n_labels: int | None = None) -> HeadWeights:
        """Read weights written by :meth:`save`; :class:`ModelFileError` says what is wrong with a bad file.

        ``n_features``/``n_labels``, when given, are what the caller's model needs (its backbone's pooled size,
        its number of labels): a head trained for another backbone or label set is refused here, with a
        message, instead of failing later inside a matrix product.
        """
        path = Path(path)
        if not path.is_file():
            raise ModelFileError(f"The head weights file {path} does not exist. {RETRAIN}")
        arrays = _read_npz(path)
        problem = _shape_problem(*(arrays[key] for key in WEIGHT_KEYS))
        if not problem:
            problem = _mismatch(arrays["w1"].shape[0], n_features, "features") or _mismatch(
                arrays["w2"].shape[1], n_labels, "labels"
            )
        if problem:
            raise ModelFileError(f"The head weights file {path} does not fit: {problem}. {RETRAIN}")
        return cls(*(arrays[key] for key in WEIGHT_KEYS))


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """The four arrays of a head file; anything unreadable becomes a :class:`ModelFileError`."""
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ModelFileError(f"The head weights file {path} holds a single array, not a head's weights. {RETRAIN}")
        with loaded as data:
            missing = [key for key in WEIGHT_KEYS if key not in data.files]
            if missing:
                raise ModelFileError(
                    f"The head weights file {path} lacks {', '.join(missing)}: it is not a head's weights. {RETRAIN}"
                )
            return {key: data[key] for key in WEIGHT_KEYS}
    except ModelFileError:
        raise
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
        raise ModelFileError(
            f"The head weights file {path} is damaged or not a weights file ({type(exc).__name__}: {exc}). {RETRAIN}"
        ) from exc


def _shape_problem(w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray) -> str | None:
    """What makes four arrays not a ``Dense -> Dense`` head, or None."""
    arrays = dict(zip(WEIGHT_KEYS, (w1, b1, w2, b2), strict=True))
    for key, array in arrays.items():
        if array.dtype.kind != "f":
            return f"{key} holds {array.dtype} values, not floating-point numbers"
    if w1.ndim != 2 or w2.ndim != 2 or b1.ndim != 1 or b2.ndim != 1:
        shapes = ", ".join(f"{key} {array.shape}" for key, array in arrays.items())
        return f"expected two matrices and two vectors, got {shapes}"
    if b1.shape[0] != w1.shape[1] or w2.shape[0] != w1.shape[1] or b2.shape[0] != w2.shape[1]:
        shapes = ", ".join(f"{key} {array.shape}" for key, array in arrays.items())
        return f"the shapes do not chain ({shapes})"
    if w1.shape[0] == 0 or w1.shape[1] == 0 or w2.shape[1] == 0:
        return f"empty layers (w1 {w1.shape}, w2 {w2.shape})"
    return None


def _mismatch(actual: int, expected: int | None, what: str) -> str | None:
    if expected is None or actual == expected:
        return None
    return f"it is for {actual} {what}, this model has {expected}"


def _features(features: np.ndarray, n_features: int) -> np.ndarray:
    """``features`` as float32 ``(m, n_features)`` (no copy when it already is); ValueError otherwise."""
    x = np.asarray(features, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != n_features:
        raise ValueError(f"Expected features of shape (m, {n_features}), got {x.shape}.")
    return x


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    """Stable log-softmax over the last axis (the max is subtracted first, so exp never overflows)."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    shifted -= np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return shifted


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    shifted /= shifted.sum(axis=1, keepdims=True)
    return shifted


def glorot_uniform(rng: np.random.Generator, fan_in: int, fan_out: int) -> np.ndarray:
    """Keras' default Dense kernel initialiser: U(-l, l), ``l = sqrt(6 / (fan_in + fan_out))``."""
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, (fan_in, fan_out)).astype(np.float32)


def initial_weights(n_features: int, n_labels: int, units: int = HIDDEN_UNITS, seed: int = 0) -> HeadWeights:
    """A fresh head as Keras builds one (Glorot-uniform kernels, zero biases), reproducible from ``seed``: it is the
    start :class:`HeadTrainer` uses for the same seed, so another implementation can be started from it too."""
    rng = np.random.default_rng(seed)
    return HeadWeights(
        glorot_uniform(rng, n_features, units),
        np.zeros(units, np.float32),
        glorot_uniform(rng, units, n_labels),
        np.zeros(n_labels, np.float32),
    )


# -- metrics ---------------------------------------------------------------------------------------
def class_weights(y: np.ndarray, n_labels: int) -> np.ndarray:
    """Balanced class weights ``n / (k * count)`` per label (0 for a label without samples): each label weighs the
    same in the loss however many samples it has, so a label with few faces is not simply outvoted."""
    counts = np.bincount(y, minlength=n_labels).astype(np.float64)
    weights = np.zeros(n_labels, np.float64)
    present = counts > 0
    weights[present] = len(y) / (n_labels * counts[present])
    return weights.astype(np.float32)


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray, n_labels: int) -> float:
    """Mean recall over the labels present in ``y_true`` (NaN when it is empty): a model that calls every face
    the majority label scores chance, where plain accuracy would flatter it."""
    support = np.bincount(y_true, minlength=n_labels)
    hits = np.bincount(y_true[y_pred == y_true], minlength=n_labels)
    present = support > 0
    return float(np.mean(hits[present] / support[present])) if present.any() else math.nan


@dataclass(frozen=True)
class Scores:
    """Loss (mean cross-entropy, unweighted as Keras' validation is), accuracy and balanced accuracy of a set."""

    loss: float
    accuracy: float
    balanced_accuracy: float


def evaluate(weights: HeadWeights, x: np.ndarray, y: np.ndarray) -> Scores:
    """:class:`Scores` with dropout off, :data:`EVAL_CHUNK` rows at a time (memory stays small for any ``len(x)``)."""
    loss_sum, predicted = 0.0, np.empty(len(y), np.int64)
    for start in range(0, len(x), EVAL_CHUNK):
        logp = _log_softmax(weights.logits(x[start : start + EVAL_CHUNK]))
        labels = y[start : start + EVAL_CHUNK]
        loss_sum -= float(logp[np.arange(len(labels)), labels].sum(dtype=np.float64))
        predicted[start : start + EVAL_CHUNK] = logp.argmax(axis=1)
    return Scores(
        loss=loss_sum / len(y),
        accuracy=float(np.mean(predicted == y)),
        balanced_accuracy=balanced_accuracy(y, predicted, weights.n_labels),
    )


def selection_score(balanced: float, loss: float) -> float:
    """Balanced accuracy with the loss as tie-break (see :data:`SELECTION`); a non-finite loss scores lowest."""
    return balanced - LOSS_TIEBREAK * min(loss, 100.0) if math.isfinite(loss) else -math.inf


# -- training --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HeadConfig:
    """Phase-1 settings. The defaults are worker/train.py's: early-stopping patience 4, ReduceLROnPlateau
    patience 3 and factor 0.5 (Keras' min_delta 1e-4), dropout 0.3, 512 units, balanced class weights.
    ``class_weighted=False`` exists to show what the weights are for (tests) and for unusual data."""

    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    seed: int = 0
    patience: int = 4
    lr_patience: int = 3
    lr_factor: float = 0.5
    lr_min_delta: float = 1e-4
    dropout: float = DROPOUT
    units: int = HIDDEN_UNITS
    class_weighted: bool = True
    beta_1: float = 0.9
    beta_2: float = 0.999
    epsilon: float = 1e-7

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.batch_size < 1 or self.units < 1 or self.patience < 0 or self.lr_patience < 0:
            raise ValueError("Epochs and patiences cannot be negative; batch size and units must be at least 1.")
        if not (math.isfinite(self.lr) and self.lr > 0) or not 0 < self.lr_factor < 1:
            raise ValueError(
                f"Learning rate must be above 0 and the factor in (0, 1), not {self.lr}, {self.lr_factor}."
            )
        if not 0 <= self.dropout < 1:
            raise ValueError(f"Dropout must be in [0, 1), not {self.dropout}.")

    @classmethod
    def from_train_config(cls, config: Any, **overrides: Any) -> HeadConfig:
        """Phase 1's settings from a :class:`expr_core.train_config.TrainConfig` (``epochs_1``, ``lr_1``, ...)."""
        base = {"epochs": config.epochs_1, "batch_size": config.batch_size, "lr": config.lr_1, "seed": config.seed}
        return cls(**{**base, **overrides})


@dataclass
class HeadResult:
    """What :func:`train_head` returns.

    ``weights`` are those of ``best_epoch`` (0-based), the "best checkpoint"; when no epoch finished (-1), the
    last ones (the start after an immediate stop; possibly non-finite after a non-finite first epoch).
    ``history`` holds one value per finished epoch under Keras' keys (``loss``, ``accuracy``, ``val_loss``,
    ``val_accuracy``) plus ``val_balanced_accuracy`` and ``lr`` (the rate used in that epoch). ``monitor`` is the
    key early stopping watched: :data:`SELECTION`, or :data:`TRAIN_MONITOR` when there were no validation vectors.
    ``stopped``: ``should_stop()`` said so and training ended early (the last, unfinished epoch is not in the
    history). ``non_finite``: the loss became NaN or infinite; that epoch is in the history with its non-finite
    loss, so the quality gate refuses the model.
    """

    weights: HeadWeights
    history: dict[str, list[float]]
    monitor: str
    best_epoch: int
    stopped: bool = False
    non_finite: bool = False
    seconds: float = 0.0

    @property
    def best(self) -> float | None:
        """The monitored value of the best epoch, or None when no epoch finished."""
        return self.history[self.monitor][self.best_epoch] if self.best_epoch >= 0 else None


class Adam:
    """Keras 3's Adam update, in place on float32 arrays with preallocated scratch (no per-step allocations):
    ``m += (g - m)(1 - b1)``, ``v += (g^2 - v)(1 - b2)``, ``w -= m * lr_t / (sqrt(v) + eps)`` with
    ``lr_t = lr * sqrt(1 - b2^t) / (1 - b1^t)``; epsilon is added outside the bias correction, as Keras does."""

    def __init__(self, params: list[np.ndarray], lr: float, beta_1: float, beta_2: float, epsilon: float) -> None:
        self.lr, self.beta_1, self.beta_2, self.epsilon = lr, beta_1, beta_2, epsilon
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]
        self._scratch = [(np.empty_like(p), np.empty_like(p)) for p in params]
        self.iterations = 0

    def step(self, params: list[np.ndarray], grads: list[np.ndarray]) -> None:
        self.iterations += 1
        t = self.iterations
        alpha = self.lr * math.sqrt(1 - self.beta_2**t) / (1 - self.beta_1**t)
        for p, g, m, v, (a, b) in zip(params, grads, self.m, self.v, self._scratch, strict=True):
            np.subtract(g, m, out=a)
            a *= 1 - self.beta_1
            m += a
            np.multiply(g, g, out=a)
            a -= v
            a *= 1 - self.beta_2
            v += a
            np.sqrt(v, out=a)
            a += self.epsilon
            np.multiply(m, alpha, out=b)
            b /= a
            p -= b


class EarlyStopping:
    """Keras' ``EarlyStopping(mode="max", patience, restore_best_weights=True)``: strictly better epochs replace
    the kept copy (so a tie keeps the earlier one), and training stops after ``patience`` epochs without one."""

    def __init__(self, patience: int) -> None:
        self.patience, self.wait = patience, 0
        self.best, self.best_epoch = -math.inf, -1
        self.best_weights: HeadWeights | None = None

    def update(self, epoch: int, value: float, weights: HeadWeights) -> bool:
        """Record epoch ``epoch``'s monitored value; True when training should stop."""
        self.wait += 1
        if value > self.best:
            self.best, self.best_epoch, self.wait = value, epoch, 0
            self.best_weights = weights.copy()
            return False
        return self.wait >= self.patience and epoch > 0


class ReduceLROnPlateau:
    """Keras' ``ReduceLROnPlateau(mode="min", patience, factor, min_delta, cooldown=0, min_lr=0)``."""

    def __init__(self, patience: int, factor: float, min_delta: float) -> None:
        self.patience, self.factor, self.min_delta = patience, factor, min_delta
        self.best, self.wait = math.inf, 0

    def update(self, value: float, lr: float) -> float:
        """The learning rate for the next epoch, given this epoch's monitored value and rate."""
        if value + self.min_delta < self.best:
            self.best, self.wait = value, 0
            return lr
        self.wait += 1
        if self.wait >= self.patience and lr > 0:
            self.wait = 0
            return lr * self.factor
        return lr


@dataclass
class _Running:
    """An epoch's running training metrics as Keras reports them: the (class-weighted) loss averaged over batches
    weighted by batch size, and plain accuracy (Keras weights only ``weighted_metrics``, not ``metrics``)."""

    loss_sum: float = 0.0
    seen: int = 0
    correct: int = 0

    def add(self, batch_loss: float, correct: np.ndarray) -> None:
        self.loss_sum += batch_loss * len(correct)
        self.seen += len(correct)
        self.correct += int(correct.sum())

    def logs(self) -> dict[str, float]:
        if not self.seen:
            return {"loss": math.nan, "accuracy": math.nan}
        return {"loss": self.loss_sum / self.seen, "accuracy": self.correct / self.seen}


class HeadTrainer:
    """Trains a :class:`HeadWeights` on cached features; one instance per training run.

    Memory: the weights, Adam's two moments, gradient and scratch buffers (about seven copies of the weights, ~27 MB
    for 1920 features) plus one batch's activations. The data are only indexed: per epoch the sole new array over
    the whole training set is the shuffled index.
    """

    def __init__(self, n_features: int, n_labels: int, config: HeadConfig, initial: HeadWeights | None = None) -> None:
        self.config = config
        self.n_labels = n_labels
        self.rng = np.random.default_rng([config.seed, 1])  # shuffling and dropout; the start has its own stream
        start = initial if initial is not None else initial_weights(n_features, n_labels, config.units, config.seed)
        self.weights = start.copy()
        if self.weights.n_features != n_features or self.weights.n_labels != n_labels:
            raise ValueError(
                f"Initial weights are for {self.weights.n_features} features and {self.weights.n_labels} labels, "
                f"not {n_features} and {n_labels}."
            )
        self.params = self.weights.as_list()  # the same arrays: the optimizer updates the weights in place
        self.grads = [np.empty_like(p) for p in self.params]
        self.adam = Adam(self.params, config.lr, config.beta_1, config.beta_2, config.epsilon)

    def fit(
        self,
        x_train: np.ndarray,
        y_train: np.ndarray,
        x_val: np.ndarray,
        y_val: np.ndarray,
        on_epoch: OnEpoch | None = None,
        should_stop: ShouldStop | None = None,
    ) -> HeadResult:
        """Train for up to ``config.epochs`` epochs; see :func:`train_head`."""
        started = time.perf_counter()
        x, y, xv, yv = self._inputs(x_train, y_train, x_val, y_val)
        validating = len(xv) > 0
        monitor = SELECTION if validating else TRAIN_MONITOR
        sample_weights = self._per_label_weights(y)[y]
        stopper = EarlyStopping(self.config.patience)
        plateau = ReduceLROnPlateau(self.config.lr_patience, self.config.lr_factor, self.config.lr_min_delta)
        history: dict[str, list[float]] = {}
        stopped = non_finite = False
        for epoch in range(self.config.epochs):
            running = self._epoch(x, y, sample_weights, should_stop)
            if running is None:
                stopped = True
                break
            logs = {**running.logs(), **(self._val_scores(xv, yv) if validating else self._train_scores(x, y))}
            logs["lr"] = self.adam.lr
            for key, value in logs.items():
                history.setdefault(key, []).append(value)
            # After a non-finite loss the weights mean nothing: neither early stopping nor the rate sees that epoch.
            non_finite = not all(math.isfinite(value) for key, value in logs.items() if "loss" in key)
            done = non_finite or stopper.update(epoch, logs[monitor], self.weights)
            if not non_finite:
                self.adam.lr = plateau.update(logs["val_loss" if validating else "loss"], self.adam.lr)
            _notify(on_epoch, epoch, self.config.epochs, logs)
            if done:
                break
        return HeadResult(
            weights=stopper.best_weights if stopper.best_weights is not None else self.weights.copy(),
            history=history,
            monitor=monitor,
            best_epoch=stopper.best_epoch,
            stopped=stopped,
            non_finite=non_finite,
            seconds=time.perf_counter() - started,
        )

    def _inputs(
        self, x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Checked float32 features and int64 labels (no copy when they already are); ValueError names the problem."""
        d = self.weights.n_features
        x, y = _features(x_train, d), _labels(y_train, len(x_train), self.n_labels)
        if not len(x):
            raise ValueError("No training vectors: the head needs at least one.")
        xv = _features(x_val, d) if np.size(x_val) else np.empty((0, d), np.float32)  # np.array([]) is empty too
        return x, y, xv, _labels(y_val, len(xv), self.n_labels)

    def _per_label_weights(self, y: np.ndarray) -> np.ndarray:
        if self.config.class_weighted:
            return class_weights(y, self.n_labels)
        return np.ones(self.n_labels, np.float32)

    def _epoch(
        self, x: np.ndarray, y: np.ndarray, sample_weights: np.ndarray, should_stop: ShouldStop | None
    ) -> _Running | None:
        """One pass over a fresh permutation; None when ``should_stop()`` asked to stop before a batch. A batch with
        a non-finite loss ends the epoch at once (its NaN is in the running loss), like Keras' TerminateOnNaN."""
        running = _Running()
        order = self.rng.permutation(len(x))
        for start in range(0, len(x), self.config.batch_size):
            if should_stop is not None and should_stop():
                return None
            batch = order[start : start + self.config.batch_size]
            loss, correct = self._step(x[batch], y[batch], sample_weights[batch])
            running.add(loss, correct)
            if not math.isfinite(loss):
                break
        return running

    def _step(self, xb: np.ndarray, yb: np.ndarray, wb: np.ndarray) -> tuple[float, np.ndarray]:
        """Forward, backward and one Adam update on a batch; returns the batch loss (Keras' ``sum_over_batch_size``
        of the weighted per-sample losses) and which samples were right (with dropout on, as Keras measures)."""
        w1, b1, w2, b2 = self.params
        g_w1, g_b1, g_w2, g_b2 = self.grads
        size, rows = len(yb), np.arange(len(yb))
        hidden = xb @ w1
        hidden += b1
        active = hidden > 0
        np.maximum(hidden, 0, out=hidden)
        keep_scaled = self._dropout_mask(hidden.shape)
        if keep_scaled is not None:
            hidden *= keep_scaled
        logp = _log_softmax(hidden @ w2 + b2)
        loss = -float(np.dot(wb.astype(np.float64), logp[rows, yb].astype(np.float64))) / size
        correct = logp.argmax(axis=1) == yb
        # d(loss)/d(logits) of softmax cross-entropy: (p - onehot) * w / batch size, as Keras differentiates it
        delta = np.exp(logp)
        delta[rows, yb] -= 1
        delta *= (wb / size)[:, None]
        np.matmul(hidden.T, delta, out=g_w2)
        np.sum(delta, axis=0, out=g_b2)
        d_hidden = delta @ w2.T
        if keep_scaled is not None:
            d_hidden *= keep_scaled
        d_hidden *= active
        np.matmul(xb.T, d_hidden, out=g_w1)
        np.sum(d_hidden, axis=0, out=g_b1)
        self.adam.step(self.params, self.grads)
        return loss, correct

    def _dropout_mask(self, shape: tuple[int, ...]) -> np.ndarray | None:
        """Inverted dropout as Keras does it: keep with probability ``1 - rate``, scale the kept by ``1/(1 - rate)``."""
        rate = self.config.dropout
        if rate == 0:
            return None
        keep = self.rng.random(shape, dtype=np.float32) >= rate
        return keep.astype(np.float32) * np.float32(1 / (1 - rate))

    def _val_scores(self, xv: np.ndarray, yv: np.ndarray) -> dict[str, float]:
        scores = evaluate(self.weights, xv, yv)
        return {
            "val_loss": scores.loss,
            "val_accuracy": scores.accuracy,
            MONITOR: scores.balanced_accuracy,
            SELECTION: selection_score(scores.balanced_accuracy, scores.loss),
        }

    def _train_scores(self, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """Without validation vectors: the training set's balanced accuracy after the epoch, dropout off."""
        return {TRAIN_MONITOR: evaluate(self.weights, x, y).balanced_accuracy}


def _labels(y: np.ndarray, n: int, n_labels: int) -> np.ndarray:
    """``y`` as an int64 vector of ``n`` label indices in ``[0, n_labels)``; ValueError otherwise."""
    labels = np.asarray(y)
    if labels.shape != (n,) or (n and labels.dtype.kind not in "iu"):
        raise ValueError(f"Expected {n} integer labels, got an array of shape {labels.shape} and type {labels.dtype}.")
    labels = labels.astype(np.int64, copy=False)
    if n and (labels.min() < 0 or labels.max() >= n_labels):
        raise ValueError(f"Labels must be in [0, {n_labels}), got {labels.min()}..{labels.max()}.")
    return labels


def _notify(on_epoch: OnEpoch | None, epoch: int, epochs: int, logs: dict[str, float]) -> None:
    if on_epoch is not None:
        on_epoch(epoch + 1, epochs, dict(logs))


def train_head(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    n_labels: int,
    config: HeadConfig | Any,
    *,
    on_epoch: OnEpoch | None = None,
    should_stop: ShouldStop | None = None,
    initial: HeadWeights | None = None,
) -> HeadResult:
    """Phase 1 on cached features ``(m, d)`` (float32 avoids a one-off converted copy) and labels ``(m,)``.

    ``config`` is a :class:`HeadConfig` or a ``TrainConfig`` (its ``epochs_1``, ``batch_size``, ``lr_1``, ``seed``).
    ``on_epoch(epoch, epochs, logs)`` is called after every epoch, ``epoch`` counting from 1 and ``logs`` being that
    epoch's history entry. ``should_stop()`` is asked before every batch (for cancel); when it returns True,
    training returns at once with ``stopped=True`` and the best weights so far. ``initial`` replaces the seeded
    Keras-like initialisation (to compare with Keras from the same start).

    With an empty validation set there is nothing to measure generalisation on: early stopping then monitors the
    training set's balanced accuracy (``history["balanced_accuracy"]``, dropout off) and the learning rate follows
    the training loss; the history has no ``val_*`` keys and ``result.monitor`` says which key was used.
    """
    head_config = config if isinstance(config, HeadConfig) else HeadConfig.from_train_config(config)
    n_features = int(np.shape(x_train)[1]) if np.ndim(x_train) == 2 else -1
    if n_features < 1:
        raise ValueError(f"Expected training features of shape (m, d), got {np.shape(x_train)}.")
    trainer = HeadTrainer(n_features, n_labels, head_config, initial)
    return trainer.fit(x_train, y_train, x_val, y_val, on_epoch=on_epoch, should_stop=should_stop)
