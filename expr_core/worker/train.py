"""Phase 2 of a training run: the whole network fine-tuned at a very low learning rate, in TensorFlow.

A run's first model (phase 1, prepared base + head) is already out when this starts (see
:mod:`expr_core.training`): the network is built from the same base weights with that head put in, fine-tuned
on augmented images, converted, and published as the run's second version only if it beats the first on the
same validation faces (balanced accuracy, ties by the lower loss).

Imports TensorFlow: never import this from the Streamlit server.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import keras
import numpy as np
import tensorflow as tf

from expr_core import atomic, bases
from expr_core.evaluate import classification_report
from expr_core.head import MONITOR, SELECTION, HeadWeights, selection_score
from expr_core.jobs.folder import EventType, JobWriter
from expr_core.jobs.runs import Phase
from expr_core.registry import HISTORY_FILE, KERAS_FILE, TFLITE_DYNAMIC_FILE, TFLITE_FILE, ModelFiles
from expr_core.serving import Classifier
from expr_core.training import Arrays, CancelGuard, Published, phase, publish_version, split_arrays, validation_report
from expr_core.worker.base import base_network
from expr_core.worker.convert import export_tflite
from expr_core.worker.model import Network, augmentation, inference_copy, set_phase

if TYPE_CHECKING:
    from expr_core.training import RunContext

BATCH_EVENT_EVERY_S = 0.5  # per-batch events are throttled
STATUS_EVERY_S = 1.0
LOSS = "sparse_categorical_crossentropy"


# -- progress ------------------------------------------------------------------------------------
class Progress(keras.callbacks.Callback):
    """Batch and epoch events plus status updates for one phase; also the per-batch cancel check."""

    def __init__(
        self,
        writer: JobWriter,
        guard: CancelGuard,
        phase: str,
        epochs: int,
        batches: int,
        on_first_batch: Callable[[float], None] | None = None,
    ) -> None:
        super().__init__()
        self.writer, self.guard, self.phase = writer, guard, phase
        self.on_first_batch = on_first_batch  # told how long the first batch took (graph building included)
        self._started = time.perf_counter()
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
        if self._first_batch_done is None and self.on_first_batch is not None:
            self.on_first_batch(now - self._started)
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
            logs[SELECTION] = selection_score(logs[MONITOR], float(logs.get("val_loss", 0.0)))


def class_weights(y: np.ndarray, n_labels: int) -> dict[int, float]:
    """Balanced class weights ``n / (k * count)``: each label weighs the same in the loss however many
    samples it has, so a label with few faces is not simply outvoted. Every label has training samples."""
    counts = np.bincount(y, minlength=n_labels)
    return {i: float(len(y) / (n_labels * count)) for i, count in enumerate(counts)}


def _batches(n: int, batch_size: int) -> int:
    return math.ceil(n / batch_size)


def _compile(model: keras.Model, lr: float) -> None:
    """Adam and accuracy, without XLA: Keras' default ("auto") spent 2m20s compiling DenseNet201's training
    step on this 2-core machine, and the compiled step was no faster than the plain graph (2.3 s per batch)."""
    model.compile(optimizer=keras.optimizers.Adam(lr), loss=LOSS, metrics=["accuracy"], jit_compile=False)


def fine_tune(context: RunContext, net: Network, train: Arrays, val: Arrays) -> dict[str, list[float]]:
    """Phase 2: the whole network (BatchNorm frozen) on augmented images at a very low learning rate; the
    epoch with the best selection score is kept (early stopping restores it)."""
    config, writer, labels = context.config, context.writer, context.split.labels
    phase(writer, Phase.FINETUNE, "Phase 2: fine-tuning the whole network (the first batch builds the graph)")
    expected = bases.first_batch_seconds(context.settings, context.key, config.batch_size)
    writer.status(first_batch_expected_s=expected)  # the page shows progress through the first batch with it
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
        Progress(
            writer,
            context.guard,
            Phase.FINETUNE,
            config.epochs_2,
            _batches(len(train.x), config.batch_size),
            lambda s: bases.record_first_batch(context.settings, context.key, config.batch_size, s),
        ),
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
    return _history(history)


def _history(history: keras.callbacks.History) -> dict[str, list[float]]:
    """Per-epoch metrics, rounded for the report (8 places: the selection score's loss tie-break survives)."""
    return {k: [round(float(v), 8) for v in values] for k, values in history.history.items()}


def distribution() -> tf.distribute.Strategy:
    """All the worker's GPUs when it has several (a multi-GPU Ray worker): one replica per GPU, gradients
    averaged (MirroredStrategy); otherwise TensorFlow's default, one device."""
    gpus = tf.config.list_logical_devices("GPU")
    return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()


def fine_tune_run(context: RunContext, first: Published | None) -> Published | None:
    """Fine-tune from the first model's head (or a fresh one when phase 1 is off) and publish the result as
    the run's next version if it beats the first; ``None`` when it does not (the first model stays)."""
    config, writer, split, registry = context.config, context.writer, context.split, context.registry
    labels = split.labels
    phase(writer, Phase.FINETUNE, "Phase 2: loading the images and building the whole network")
    train, val = split_arrays(context.store, split, config.image_size)
    strategy = distribution()
    if strategy.num_replicas_in_sync > 1:
        writer.event(EventType.INFO, message=f"Fine-tuning on {strategy.num_replicas_in_sync} GPUs (mirrored).")
    with strategy.scope():  # the network, its optimizer and its metrics live on every replica
        net = base_network(context.settings, context.key, len(labels))
        head_history = {}
        if first is not None:
            first_files = ModelFiles(registry.version_dir(context.run_id, first.version))
            net.head.set_weights(HeadWeights.load(first_files.head).as_list())
            head_history = (atomic.read_json(first_files.folder / HISTORY_FILE, {}) or {}).get("head", {})
        history = fine_tune(context, net, train, val)
    best = max(history[SELECTION])
    if first is not None and not best > first.score:
        writer.event(
            EventType.INFO,
            message=f"Phase 2 did not beat phase 1 on validation (balanced accuracy, then loss: {best:.4f}, "
            f"phase 1 {first.score:.4f}), so the first model stays.",
        )
        return None
    phase(writer, Phase.CONVERT, "Saving the fine-tuned model and converting it for serving")
    staged = registry.staging_dir(context.run_id)
    inference_copy(net).save(staged / KERAS_FILE)
    conversion = export_tflite(net.model, staged, config.quantize)
    writer.event(EventType.INFO, message=f"Conversion times (s): {conversion}")
    phase(writer, Phase.EVALUATE, "Measuring the fine-tuned model on the validation faces")
    report = served_report(staged, val, context)
    version = first.version + 1 if first is not None else 1
    full_history = {"head": head_history, "finetune": history} if head_history else {"finetune": history}
    return publish_version(context, version, staged, report, full_history, best)


def served_report(staged: Path, val: Arrays, context: RunContext) -> dict[str, Any]:
    """The validation report of the converted LiteRT file (which also proves the conversion kept the model),
    with the quantised variant's accuracy and agreement when it exists."""
    labels = context.split.labels
    probs = Classifier(staged / TFLITE_FILE, labels).predict_many(val.x, bgr=False)
    report = validation_report(probs, val.samples, val.y, context.split)
    if (staged / TFLITE_DYNAMIC_FILE).is_file():
        q_probs = Classifier(staged / TFLITE_DYNAMIC_FILE, labels).predict_many(val.x, bgr=False)
        report["quantized"] = {
            "accuracy": classification_report(val.y, q_probs, labels)["accuracy"],
            "agreement": round(float(np.mean(q_probs.argmax(axis=1) == probs.argmax(axis=1))), 4),
        }
    return report
