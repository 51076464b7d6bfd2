"""The training worker: dataset snapshot -> split -> two phases -> LiteRT -> validation report -> publish.

Phase 1 trains only the head, so the frozen base would compute the same features every epoch: they
are computed once (for the clean training images, ``feature_copies`` augmented copies of them, and the
validation images) and the head trains on the cached features, about a hundred times faster per epoch.
Phase 2 fine-tunes the whole network at a very low learning rate on augmented images.

Runs in its own process (``python -m expr_core train``); progress goes to the run's files through
:class:`expr_core.jobs.folder.JobWriter`. Imports TensorFlow: never import this from the Streamlit server.
"""

from __future__ import annotations

import _thread
import gc
import math
import os
import shutil
import signal
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import keras
import numpy as np
import tensorflow as tf

from expr_core import atomic
from expr_core.data.split import Split, person_of, split_samples
from expr_core.data.store import DatasetStore, Sample
from expr_core.errors import DatasetError, UserError, disk_full, is_disk_full
from expr_core.evaluate import classification_report
from expr_core.jobs import runs
from expr_core.jobs.folder import CANCEL_FILE, CONFIG_FILE, EventType, JobState, JobWriter
from expr_core.jobs.runs import Phase
from expr_core.quality import assess
from expr_core.registry import (
    DATASET_FILE,
    HISTORY_FILE,
    KERAS_FILE,
    LABELS_FILE,
    METRICS_FILE,
    STAGING_DIR,
    TFLITE_DYNAMIC_FILE,
    TFLITE_FILE,
    Registry,
)
from expr_core.serving import Classifier
from expr_core.settings import Settings
from expr_core.train_config import TrainConfig
from expr_core.worker.convert import export_tflite
from expr_core.worker.model import (
    Network,
    augmentation,
    build_network,
    inference_copy,
    resolve_weights,
    set_phase,
)

BATCH_EVENT_EVERY_S = 0.5  # per-batch events are throttled: the head phase runs hundreds of batches a second
STATUS_EVERY_S = 1.0
CANCEL_GRACE_S = 3.0  # how long a cancel request may wait for a batch boundary before the worker interrupts itself
WORK_DIR = "work"
LOSS = "sparse_categorical_crossentropy"
MONITOR = "val_balanced_accuracy"  # the measure of a model: mean recall over the labels on validation faces
# What early stopping, checkpoints and the phase choice keep the best of: balanced accuracy, ties broken by the
# lower validation loss (a team's few bursts often reach 100 % in the first epoch; the later, more confident
# epochs must still count as better). The loss term is far below one validation face's worth of accuracy.
SELECTION = "val_selection_score"
LOSS_TIEBREAK = 1e-4


class Cancelled(Exception):
    """The user asked the run to stop."""


# -- cancellation --------------------------------------------------------------------------------
class CancelGuard:
    """Turns a cancel request (the run's ``cancel`` file, or SIGTERM) into :class:`Cancelled` in the main thread.

    Training checks :meth:`check` after every batch. When the worker is busy elsewhere (tracing the
    graph, converting), a watcher thread interrupts the main thread after :data:`CANCEL_GRACE_S`. Once
    publishing has begun, requests are ignored: the rename is quicker than the cleanup would be.
    """

    def __init__(self, cancel_file: Path) -> None:
        self.cancel_file = cancel_file
        self.publishing = False
        self._stop = threading.Event()
        self._previous_handler: Any = None

    def __enter__(self) -> CancelGuard:
        self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
        threading.Thread(target=self._watch, name="cancel-watcher", daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        signal.signal(signal.SIGTERM, self._previous_handler)

    def _on_sigterm(self, signum: int, frame: object) -> None:
        if not self.publishing:
            raise Cancelled()

    def _watch(self) -> None:
        seen = None
        while not self._stop.wait(0.5):
            if not self.cancel_file.exists():
                continue
            seen = seen or time.monotonic()
            if time.monotonic() - seen > CANCEL_GRACE_S and not self.publishing:
                _thread.interrupt_main(signal.SIGTERM)
                return

    def check(self) -> None:
        if not self.publishing and self.cancel_file.exists():
            raise Cancelled()


# -- progress ------------------------------------------------------------------------------------
class Progress(keras.callbacks.Callback):
    """Batch and epoch events plus status updates for one phase; also the per-batch cancel check."""

    def __init__(self, writer: JobWriter, guard: CancelGuard, phase: str, epochs: int, batches: int) -> None:
        super().__init__()
        self.writer, self.guard, self.phase = writer, guard, phase
        self.epochs, self.batches = epochs, max(1, batches)
        self.epoch = 0
        self._first_batch_done: float | None = None
        self._done_batches = 0
        self._last_event = 0.0
        self._epoch_start = time.perf_counter()

    def _eta(self) -> float | None:
        """Seconds left if every epoch runs, timed from the end of the first batch (which includes tracing)."""
        if self._first_batch_done is None or self._done_batches < 2:
            return None
        rate = (time.perf_counter() - self._first_batch_done) / (self._done_batches - 1)
        return round(rate * (self.epochs * self.batches - self._done_batches), 1)

    def _batch(self, batch: int, logs: dict | None) -> None:
        self.guard.check()
        self._done_batches += 1
        now = time.perf_counter()
        self._first_batch_done = self._first_batch_done or now
        if now - self._last_event < BATCH_EVENT_EVERY_S and batch + 1 < self.batches:
            return
        self._last_event = now
        fields = {
            "phase": self.phase,
            "epoch": self.epoch + 1,
            "epochs": self.epochs,
            "batch": batch + 1,
            "batches": self.batches,
            "eta_s": self._eta(),
            **_rounded(logs),
        }
        self.writer.event(EventType.BATCH, **fields)
        self.writer.status(throttle_s=STATUS_EVERY_S, **{k: v for k, v in fields.items() if k != "phase"})

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self._batch(batch, logs)

    def on_predict_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self._batch(batch, {})

    def on_test_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.guard.check()

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch = epoch
        self._epoch_start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        self.writer.event(
            EventType.EPOCH,
            phase=self.phase,
            epoch=epoch + 1,
            epochs=self.epochs,
            lr=lr,
            seconds=round(time.perf_counter() - self._epoch_start, 2),
            **_rounded(logs),
        )
        self.writer.status(epoch=epoch + 1, epochs=self.epochs, eta_s=self._eta())


def _rounded(logs: dict | None) -> dict[str, float]:
    return {k: round(float(v), 5) for k, v in (logs or {}).items() if k != "learning_rate"}


def _phase(writer: JobWriter, phase: Phase, title: str) -> None:
    writer.event(EventType.PHASE, phase=phase, title=title)
    writer.status(phase=phase, epoch=None, epochs=None, batch=None, batches=None, eta_s=None, message=title)


class BalancedAccuracy(keras.callbacks.Callback):
    """Adds :data:`MONITOR` (the mean recall over labels on the validation data) to every epoch's logs.

    Plain accuracy rewards a model that calls every face the majority label (70.7 % on CK+'s 207 happy and
    84 sad faces); balanced accuracy puts that model at chance. Keras hands one logs dict to the callbacks
    in list order, so this one must come first for early stopping and checkpoints to see the value.
    """

    def __init__(self, x: np.ndarray | tf.data.Dataset, y: np.ndarray, labels: list[str], batch_size: int) -> None:
        super().__init__()
        self.x, self.y, self.labels, self.batch_size = x, y, labels, batch_size

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        probs = self.model.predict(self.x, batch_size=self.batch_size, verbose=0)
        if logs is not None:
            logs[MONITOR] = classification_report(self.y, probs, self.labels)["balanced_accuracy"]
            logs[SELECTION] = logs[MONITOR] - LOSS_TIEBREAK * min(float(logs.get("val_loss", 0.0)), 100.0)


def class_weights(y: np.ndarray, n_labels: int) -> dict[int, float]:
    """Balanced class weights ``n / (k * count)``: each label weighs the same in the loss however many
    samples it has, so a label with few faces is not simply outvoted. Every label has training samples."""
    counts = np.bincount(y, minlength=n_labels)
    return {i: float(len(y) / (n_labels * count)) for i, count in enumerate(counts)}


# -- data ----------------------------------------------------------------------------------------
@dataclass
class Arrays:
    """Images as RGB uint8 ``(n, size, size, 3)`` (uint8 keeps a few thousand images in little memory)."""

    x: np.ndarray
    y: np.ndarray
    samples: list[Sample]


def load_arrays(store: DatasetStore, samples: list[Sample], labels: list[str], size: int) -> Arrays:
    """The samples' images; one :class:`DatasetError` naming every sample whose file cannot be read."""
    index = {label: i for i, label in enumerate(labels)}
    x = np.empty((len(samples), size, size, 3), np.uint8)
    broken = []
    for i, sample in enumerate(samples):
        try:
            image = store.load_image(sample)
        except DatasetError as exc:
            broken.append(str(exc))
            continue
        interp = cv2.INTER_AREA if image.shape[0] > size else cv2.INTER_LINEAR
        x[i] = cv2.cvtColor(cv2.resize(image, (size, size), interpolation=interp), cv2.COLOR_BGR2RGB)
    if broken:
        more = f" (and {len(broken) - 5} more)" if len(broken) > 5 else ""
        raise DatasetError(
            f"{len(broken)} sample(s) cannot be read, so nothing was trained: "
            + " ".join(broken[:5])
            + more
            + " Delete these samples (or restore their files) and train again."
        )
    return Arrays(x, np.array([index[s.label] for s in samples], np.int32), samples)


def _images(x: np.ndarray, batch_size: int, augment: keras.Sequential | None = None) -> tf.data.Dataset:
    data = tf.data.Dataset.from_tensor_slices(x).batch(batch_size).map(lambda b: tf.cast(b, tf.float32))
    return data if augment is None else data.map(lambda b: augment(b, training=True))


def _batches(n: int, batch_size: int) -> int:
    return math.ceil(n / batch_size)


def _compile(model: keras.Model, lr: float) -> None:
    """Adam and accuracy, without XLA: Keras' default ("auto") spent 2m20s compiling DenseNet201's training
    step on this 2-core machine, and the compiled step was no faster than the plain graph (2.3 s per batch)."""
    model.compile(optimizer=keras.optimizers.Adam(lr), loss=LOSS, metrics=["accuracy"], jit_compile=False)


# -- the two phases ------------------------------------------------------------------------------
def cache_features(
    net: Network, train: Arrays, val: Arrays, config: TrainConfig, writer: JobWriter, guard: CancelGuard
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pooled base features of the training images (clean + augmented copies, labels repeated) and of val."""
    _phase(writer, Phase.FEATURES, "Computing the frozen base's features once")
    augment = augmentation(config.seed)
    parts = [_images(train.x, config.batch_size)]
    parts += [_images(train.x, config.batch_size, augment) for _ in range(config.feature_copies)]
    parts.append(_images(val.x, config.batch_size))
    data = parts[0]
    for part in parts[1:]:
        data = data.concatenate(part)
    steps = (1 + config.feature_copies) * _batches(len(train.x), config.batch_size) + _batches(
        len(val.x), config.batch_size
    )
    progress = Progress(writer, guard, Phase.FEATURES, 1, steps)
    size = config.image_size
    # A plain graph function, traced once for any batch size: faster here than predict(), which compiles with XLA.
    extract = tf.function(
        lambda batch: net.extractor(batch, training=False),
        jit_compile=False,
        input_signature=[tf.TensorSpec((None, size, size, 3), tf.float32)],
    )
    chunks = []
    for step, batch in enumerate(data):
        chunks.append(extract(batch).numpy())
        progress.on_predict_batch_end(step)
    features = np.concatenate(chunks)
    n_train = len(train.x) * (1 + config.feature_copies)
    return features[:n_train], np.tile(train.y, 1 + config.feature_copies), features[n_train:]


@dataclass
class PhaseInputs:
    """What both training phases work on: the network, the split's images, and the run's settings and files."""

    net: Network
    train: Arrays
    val: Arrays
    labels: list[str]
    config: TrainConfig
    writer: JobWriter
    guard: CancelGuard

    def unpack(self) -> tuple[Network, Arrays, Arrays, list[str], TrainConfig, JobWriter, CancelGuard]:
        return self.net, self.train, self.val, self.labels, self.config, self.writer, self.guard


def train_head(phase: PhaseInputs, work: Path) -> dict[str, list[float]]:
    """Phase 1: the head alone on cached features; the epoch with the best balanced accuracy is kept."""
    net, train, val, labels, config, writer, guard = phase.unpack()
    f_train, y_train, f_val = cache_features(net, train, val, config, writer, guard)
    _phase(writer, Phase.HEAD, "Phase 1: training the head (base frozen)")
    _compile(net.head, config.lr_1)
    callbacks = [
        BalancedAccuracy(f_val, val.y, labels, config.batch_size),
        keras.callbacks.EarlyStopping(monitor=SELECTION, mode="max", patience=4, restore_best_weights=True),
        keras.callbacks.ModelCheckpoint(
            str(work / "head.best.weights.h5"),
            monitor=SELECTION,
            mode="max",
            save_best_only=True,
            save_weights_only=True,
        ),
        keras.callbacks.ReduceLROnPlateau(monitor="val_loss", patience=3, factor=0.5),
        Progress(writer, guard, Phase.HEAD, config.epochs_1, _batches(len(f_train), config.batch_size)),
    ]
    history = net.head.fit(
        f_train,
        y_train,
        validation_data=(f_val, val.y),
        epochs=config.epochs_1,
        batch_size=config.batch_size,
        shuffle=True,
        verbose=0,
        callbacks=callbacks,
        class_weight=class_weights(y_train, len(labels)),
    )
    return _history(history)


def fine_tune(phase: PhaseInputs, baseline: float | None) -> dict[str, list[float]]:
    """Phase 2: the whole network (BatchNorm frozen) on augmented images at a very low learning rate.

    If no phase-2 epoch beats ``baseline`` (phase 1's best selection score), the phase-1 weights
    are put back: with little data, fine-tuning can overfit, and the user should not get a worse model.
    """
    net, train, val, labels, config, writer, guard = phase.unpack()
    _phase(writer, Phase.FINETUNE, "Phase 2: fine-tuning the whole network (the first batch builds the graph)")
    phase1_weights = net.model.get_weights() if baseline is not None else None
    set_phase(net, fine_tune=True)
    _compile(net.model, config.lr_2)
    augment = augmentation(config.seed + 100)
    train_data = (
        tf.data.Dataset.from_tensor_slices((train.x, train.y))
        .shuffle(len(train.x), seed=config.seed, reshuffle_each_iteration=True)
        .batch(config.batch_size)
        .map(lambda x, y: (augment(tf.cast(x, tf.float32), training=True), y))
        .prefetch(tf.data.AUTOTUNE)
    )
    val_data = (
        tf.data.Dataset.from_tensor_slices((val.x, val.y))
        .batch(config.batch_size)
        .map(lambda x, y: (tf.cast(x, tf.float32), y))
    )
    callbacks = [
        BalancedAccuracy(val_data, val.y, labels, config.batch_size),
        keras.callbacks.EarlyStopping(monitor=SELECTION, mode="max", patience=3, restore_best_weights=True),
        keras.callbacks.ReduceLROnPlateau(monitor="val_loss", patience=2, factor=0.5),
        Progress(writer, guard, Phase.FINETUNE, config.epochs_2, _batches(len(train.x), config.batch_size)),
    ]
    history = net.model.fit(
        train_data,
        validation_data=val_data,
        epochs=config.epochs_2,
        verbose=0,
        shuffle=False,  # the dataset reshuffles itself each epoch
        callbacks=callbacks,
        class_weight=class_weights(train.y, len(labels)),
    )
    best = max(history.history[SELECTION])
    # Only a fine-tuned model that scores *better* replaces phase 1's (balanced accuracy, ties by the lower
    # validation loss): fine-tuning a few bursts often reads as well but less confidently.
    if phase1_weights is not None and best <= baseline:
        net.model.set_weights(phase1_weights)
        writer.event(
            EventType.INFO,
            message=f"Phase 2 did not beat phase 1 on validation (balanced accuracy, then loss: {best:.4f}, "
            f"phase 1 {baseline:.4f}), so the phase-1 model is kept.",
        )
    return _history(history)


def _history(history: keras.callbacks.History) -> dict[str, list[float]]:
    """Per-epoch metrics, rounded for the report (8 places: the selection score's loss tie-break survives)."""
    return {k: [round(float(v), 8) for v in values] for k, values in history.history.items()}


# -- report and publish --------------------------------------------------------------------------
def validation_report(staged: Path, val: Arrays, split: Split) -> dict[str, Any]:
    """The report of the *served* LiteRT file on the validation images, plus the misclassified samples.

    Measuring the converted file (not the Keras model) also proves the conversion kept the model's
    behaviour. The quantised variant's accuracy and agreement are added when it exists. Also: how the
    split was made, accuracy per person (is anyone read badly?), the training imbalance between labels, and
    how many faces got a non-finite answer (for :func:`expr_core.quality.assess`).
    """
    labels = split.labels
    probs = Classifier(staged / TFLITE_FILE, labels).predict_many(val.x, bgr=False)
    report = classification_report(val.y, probs, labels)
    report["non_finite_faces"] = int((~np.isfinite(probs)).any(axis=1).sum())
    report["per_person"] = _per_person(val, probs, labels)
    report["split"] = {
        "mode": split.mode,
        "warnings": split.warnings,
        "identity_risks": [list(risk) for risk in split.identity_risks],
        "val_persons": split.persons("val"),
        "train_persons": split.persons("train"),
    }
    report["imbalance"] = split.imbalance()
    predicted = probs.argmax(axis=1)
    wrong = [
        {"id": s.id, "label": s.label, "predicted": labels[p], "confidence": round(float(probs[i, p]), 4)}
        for i, (s, p) in enumerate(zip(val.samples, predicted, strict=True))
        if p != val.y[i]
    ]
    report["misclassified"] = sorted(wrong, key=lambda w: -w["confidence"])
    if (staged / TFLITE_DYNAMIC_FILE).is_file():
        q_probs = Classifier(staged / TFLITE_DYNAMIC_FILE, labels).predict_many(val.x, bgr=False)
        report["quantized"] = {
            "accuracy": classification_report(val.y, q_probs, labels)["accuracy"],
            "agreement": round(float(np.mean(q_probs.argmax(axis=1) == predicted)), 4),
        }
    return report


def _per_person(val: Arrays, probs: np.ndarray, labels: list[str]) -> dict[str, dict[str, Any]]:
    """``{person: {"n", "accuracy", "balanced_accuracy"}}`` over the validation faces."""
    persons = np.array([person_of(s) for s in val.samples])
    result = {}
    for person in sorted(set(persons)):
        mine = persons == person
        report = classification_report(val.y[mine], probs[mine], labels)
        result[str(person)] = {key: report[key] for key in ("n", "accuracy", "balanced_accuracy")}
    return result


def dataset_summary(split: Split, excluded: list[str]) -> dict[str, Any]:
    return {
        "labels": split.labels,
        "counts": split.counts(),
        "excluded_labels": excluded,
        "groups": {"train": len({s.group for s in split.train}), "val": len({s.group for s in split.val})},
        "train_ids": [s.id for s in split.train],
        "val_ids": [s.id for s in split.val],
    }


def _snapshot(store: DatasetStore, config: TrainConfig, writer: JobWriter) -> tuple[Split, list[str]]:
    """Split the dataset as it is now; labels without samples are left out with a warning."""
    samples = store.samples()
    counts = Counter(s.label for s in samples)
    labels = [label for label in store.labels() if counts[label]]
    excluded = [label for label in store.labels() if not counts[label]]
    if excluded and len(labels) >= 2:
        writer.event(
            EventType.WARNING, message=f"Labels without samples are left out of this model: {', '.join(excluded)}."
        )
    split = split_samples(samples, labels, config.val_fraction, config.seed)
    writer.event(
        EventType.DATASET,
        labels=labels,
        counts=split.counts(),
        samples=len(split.train) + len(split.val),
        split=split.mode,
    )
    for warning in split.warnings:
        writer.event(EventType.WARNING, message=warning)
    return split, excluded


def train_run(
    settings: Settings, config: TrainConfig, run_id: str, writer: JobWriter, guard: CancelGuard
) -> dict[str, Any]:
    """Everything from the dataset snapshot to the published model; returns the CLI's result dict."""
    folder = runs.run_dir(settings.workspace, run_id)
    work = folder / WORK_DIR
    work.mkdir(exist_ok=True)
    registry = Registry(settings.workspace)
    store = DatasetStore(settings.workspace)
    _phase(writer, Phase.PREPARE, "Reading the dataset and building the network")
    split, excluded = _snapshot(store, config, writer)
    labels, size = split.labels, config.image_size
    both = load_arrays(store, split.train + split.val, labels, size)  # one pass: names every unreadable sample
    n = len(split.train)
    train, val = Arrays(both.x[:n], both.y[:n], split.train), Arrays(both.x[n:], both.y[n:], split.val)
    if config.weights == "none":
        writer.event(
            EventType.WARNING,
            message="Training without pretrained weights (weights 'none'): the base starts "
            "from random values, so accuracy will be much lower than with ImageNet weights.",
        )
    net = build_network(config.backbone, len(labels), size, resolve_weights(config.weights, settings))
    phases = PhaseInputs(net, train, val, labels, config, writer, guard)
    history = {}
    if config.epochs_1:
        history["head"] = train_head(phases, work)
    if config.epochs_2:
        baseline = max(history["head"][SELECTION]) if "head" in history else None
        history["finetune"] = fine_tune(phases, baseline)
    _phase(writer, Phase.CONVERT, "Saving the model and converting it for serving")
    staged = registry.staging_dir(run_id)
    inference_copy(net).save(staged / KERAS_FILE)
    conversion = export_tflite(net.model, staged, config.quantize)
    writer.event(EventType.INFO, message=f"Conversion times (s): {conversion}")
    _phase(writer, Phase.EVALUATE, "Measuring the served model on the validation set")
    report = validation_report(staged, val, split)
    quality = assess(report, history)
    for name, content in (
        (LABELS_FILE, labels),
        (METRICS_FILE, {**report, "quality": quality.to_dict()}),
        (HISTORY_FILE, history),
        (DATASET_FILE, dataset_summary(split, excluded)),
        (CONFIG_FILE, config.to_dict()),
    ):
        atomic.write_json(staged / name, content)
    _phase(writer, Phase.PUBLISH, "Publishing the model")
    guard.publishing = True
    registry.publish(run_id)
    writer.status(
        state=JobState.DONE,
        finished=time.time(),
        val_accuracy=report["accuracy"],
        labels=labels,
        usable=quality.usable,
        warnings=quality.warnings,
    )
    activated = quality.usable and registry.activate_if_none(run_id)
    for warning in (w for w in quality.warnings if w not in split.warnings):  # the split's were said at the start
        writer.event(EventType.WARNING, message=warning)
    if not quality.usable:
        writer.event(EventType.WARNING, message="This model is not usable, so it was not made active.")
    writer.event(EventType.END, state=JobState.DONE, error=None, val_accuracy=report["accuracy"])
    model_dir = registry.model_dir(run_id)
    return {
        "run_id": run_id,
        "state": JobState.DONE,
        "model_path": str(model_dir / KERAS_FILE),
        "tflite_path": str(model_dir / TFLITE_FILE),
        "labels": labels,
        "val_accuracy": report["accuracy"],
        "balanced_accuracy": report["balanced_accuracy"],
        "confusion_matrix": report["confusion_matrix"],
        "per_class": report["per_class"],
        "quantized": report.get("quantized"),
        "usable": quality.usable,
        "activated": activated,
        "warnings": quality.warnings,
        "seconds": round(writer.elapsed(), 1),
    }


def _clean(folder: Path) -> None:
    """Remove the run's scratch files and any half-staged model (after a publish there is none left to remove)."""
    for name in (WORK_DIR, STAGING_DIR):
        shutil.rmtree(folder / name, ignore_errors=True)


def _finish(writer: JobWriter, state: JobState, error: str | None) -> dict[str, Any]:
    _clean(writer.folder)  # first: on a full disk this frees the space the final status needs
    writer.status(state=state, error=error, finished=time.time(), eta_s=None)
    writer.event(EventType.END, state=state, error=error, val_accuracy=None)
    return {"run_id": writer.job_id, "state": state, "error": error}


def run_worker(
    settings: Settings, run_id: str, lock_fd: int | None = None, echo: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """Train the already created run ``run_id`` while holding the workspace's training lock.

    Never raises for a failed or cancelled run: the outcome is in the returned dict and the run's files.
    The lock is held until the final status is written, so the next run cannot start before that.
    """
    folder = runs.run_dir(settings.workspace, run_id)
    with runs.training_lock(settings.workspace, lock_fd):
        writer = JobWriter(folder, echo=echo)
        try:
            try:
                with CancelGuard(folder / CANCEL_FILE) as guard:
                    config = TrainConfig.from_dict(atomic.read_json(folder / CONFIG_FILE, {})).validated()
                    writer.event(EventType.START, run_id=run_id, pid=os.getpid(), config=config.to_dict())
                    return train_run(settings, config, run_id, writer, guard)
            except Exception as exc:
                if not is_disk_full(exc):  # an OSError from h5py, Keras or TensorFlow, or DiskFull from our writes
                    raise
            # The disk is full. Only out of the handler are the error's frames let go, and with them a file h5py
            # could not finish writing: while it is open its space stays in use, even once the file is deleted.
            gc.collect()
            return _finish(writer, JobState.FAILED, str(disk_full(folder)))
        except (Cancelled, KeyboardInterrupt):
            return _finish(writer, JobState.CANCELLED, None)
        except UserError as exc:
            return _finish(writer, JobState.FAILED, str(exc))
        except Exception as exc:  # a bug: keep the traceback in the log, tell the user what happened
            traceback.print_exc(file=sys.stderr)
            return _finish(writer, JobState.FAILED, f"Training crashed: {type(exc).__name__}: {exc}")
        finally:
            _clean(folder)
            writer.close()
