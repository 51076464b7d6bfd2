"""A training run without TensorFlow until its first model is published.

Phase 1 never changes the backbone, so a run does not need TensorFlow for it: the frozen base is prepared
once per backbone, size and weights (:mod:`expr_core.bases`), each sample's base features were computed
when it was saved (:mod:`expr_core.data.features`; the run fills in the missing ones with LiteRT), and
the head trains on them in NumPy (:mod:`expr_core.head`). The first model, "prepared base + head", is
published and can go live seconds after Start, in a process of a few hundred MB.

Only then, when phase 2 is on, TensorFlow is imported (:mod:`expr_core.worker.train`) to fine-tune the
whole network; its model becomes the run's second version only if it beats the first on the same
validation faces. A cancel, crash or full disk during fine-tuning leaves the first version in place.

Runs in a worker process (``python -m expr_core train``); progress goes to the run's files through
:class:`expr_core.jobs.folder.JobWriter`. The Streamlit server never runs this.
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from expr_core import atomic, bases
from expr_core.backbones import NO_WEIGHTS
from expr_core.bases import BaseKey
from expr_core.data.features import VIEWS, FeatureStore
from expr_core.data.split import Split, person_of, split_samples
from expr_core.data.store import DatasetStore, Sample
from expr_core.errors import DatasetError, UserError, disk_full, is_disk_full
from expr_core.evaluate import classification_report
from expr_core.head import SELECTION, HeadConfig, HeadResult, train_head
from expr_core.jobs import runs
from expr_core.jobs.folder import CANCEL_FILE, CONFIG_FILE, EventType, JobState, JobWriter
from expr_core.jobs.runs import Phase
from expr_core.quality import Quality, assess
from expr_core.registry import (
    BASE_DYNAMIC_FILE,
    BASE_FILE,
    DATASET_FILE,
    HISTORY_FILE,
    LABELS_FILE,
    METRICS_FILE,
    STAGING_DIR,
    ModelFiles,
    Registry,
)
from expr_core.serving import LiteRTModel
from expr_core.settings import Settings
from expr_core.train_config import TrainConfig

STATUS_EVERY_S = 1.0
EVENT_EVERY_S = 0.5
CANCEL_GRACE_S = 3.0  # how long a cancel request may wait for a batch boundary before the worker interrupts itself
WORK_DIR = "work"


class Cancelled(Exception):
    """The user asked the run to stop."""


# -- cancellation --------------------------------------------------------------------------------
class CancelGuard:
    """Turns a cancel request (the run's ``cancel`` file, or SIGTERM) into :class:`Cancelled` in the main thread.

    Training checks :meth:`check` after every batch. When the worker is busy elsewhere (tracing the
    graph, converting), a watcher thread interrupts the main thread after :data:`CANCEL_GRACE_S`. While
    publishing, requests are ignored: the rename is quicker than the cleanup would be.
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
                seen = None
                continue
            seen = seen or time.monotonic()
            if time.monotonic() - seen > CANCEL_GRACE_S and not self.publishing:
                _thread.interrupt_main(signal.SIGTERM)
                return

    def requested(self) -> bool:
        return not self.publishing and self.cancel_file.exists()

    def check(self) -> None:
        if self.requested():
            raise Cancelled()


def phase(writer: JobWriter, step: Phase, title: str) -> None:
    writer.event(EventType.PHASE, phase=step, title=title)
    writer.status(phase=step, epoch=None, epochs=None, batch=None, batches=None, eta_s=None, message=title)


# -- data ----------------------------------------------------------------------------------------
@dataclass
class Arrays:
    """Images as RGB uint8 ``(n, size, size, 3)`` (uint8 keeps a few thousand images in little memory)."""

    x: np.ndarray
    y: np.ndarray
    samples: list[Sample]


def _unreadable(broken: list[str]) -> DatasetError:
    more = f" (and {len(broken) - 5} more)" if len(broken) > 5 else ""
    return DatasetError(
        f"{len(broken)} sample(s) cannot be read, so nothing was trained: "
        + " ".join(broken[:5])
        + more
        + " Delete these samples (or restore their files) and train again."
    )


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
        raise _unreadable(broken)
    return Arrays(x, np.array([index[s.label] for s in samples], np.int32), samples)


def check_readable(store: DatasetStore, samples: list[Sample]) -> None:
    """Refuse, before any work, a dataset with image files that cannot be read, naming every such sample."""
    broken = []
    for sample in samples:
        try:
            store.load_image(sample)
        except DatasetError as exc:
            broken.append(str(exc))
    if broken:
        raise _unreadable(broken)


def split_arrays(store: DatasetStore, split: Split, size: int) -> tuple[Arrays, Arrays]:
    """The training and validation images of a split (one pass: names every unreadable sample)."""
    both = load_arrays(store, split.train + split.val, split.labels, size)
    n = len(split.train)
    return Arrays(both.x[:n], both.y[:n], split.train), Arrays(both.x[n:], both.y[n:], split.val)


def snapshot(store: DatasetStore, config: TrainConfig, writer: JobWriter) -> tuple[Split, list[str]]:
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


# -- the prepared base and the features ------------------------------------------------------------
def ensure_base(settings: Settings, key: BaseKey, writer: JobWriter) -> Path:
    """The prepared base's folder, preparing it first if this is the first run with it (TensorFlow, once)."""
    if not bases.is_prepared(settings, key):
        about = f"{key.title()} at {key.image_size} px, once for every later run (about a minute)"
        phase(writer, Phase.BASE, f"Preparing {about}")
        from expr_core.worker.base import prepare_base  # TensorFlow loads here, only this once

        prepare_base(settings, key)
    return bases.folder(settings, key)


def fill_features(
    store: DatasetStore, samples: list[Sample], key: BaseKey, base_dir: Path, writer: JobWriter, guard: CancelGuard
) -> FeatureStore:
    """Compute the features of every sample that has none for this base (most were made when they were saved);
    the base is loaded only then."""
    features = FeatureStore(store.root, key.slug())
    missing = set(features.missing(s.id for s in samples))
    if not missing:
        return features
    todo = [s for s in samples if s.id in missing]
    phase(writer, Phase.FEATURES, f"Computing the base's features of {len(todo)} sample(s) saved without them")
    last = 0.0

    def images() -> Iterator[tuple[str, np.ndarray]]:
        for sample in todo:
            guard.check()
            yield sample.id, store.load_image(sample)

    def progress(done: int) -> None:
        nonlocal last
        if time.monotonic() - last >= EVENT_EVERY_S or done == len(todo):
            last = time.monotonic()
            fields = {"epoch": 1, "epochs": 1, "batch": done, "batches": len(todo)}
            writer.event(EventType.BATCH, phase=Phase.FEATURES, **fields)
            writer.status(throttle_s=STATUS_EVERY_S, **fields)

    try:
        features.compute(LiteRTModel(ModelFiles(base_dir).tflite), images(), progress)
    except Exception as exc:
        if is_disk_full(exc):  # what this run computed is given back, so the run can still record its failure
            features.discard(s.id for s in todo)
        raise
    return features


@dataclass
class HeadData:
    """Phase 1's inputs: every view of the training samples, the clean view of the validation samples."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray

    @classmethod
    def of(cls, features: FeatureStore, split: Split) -> HeadData:
        index = {label: i for i, label in enumerate(split.labels)}
        train = features.matrix([s.id for s in split.train])
        val = features.matrix([s.id for s in split.val])
        y_train = np.array([index[s.label] for s in split.train], np.int64)
        y_val = np.array([index[s.label] for s in split.val], np.int64)
        return cls(
            x_train=train.reshape(-1, train.shape[-1]),
            y_train=np.repeat(y_train, VIEWS),
            x_val=val[:, 0] if len(val) else np.zeros((0, train.shape[-1]), np.float32),
            y_val=y_val,
        )


def train_first_head(
    data: HeadData, labels: list[str], config: TrainConfig, writer: JobWriter, guard: CancelGuard
) -> HeadResult:
    """Phase 1: the head on the cached features, with early stopping, best checkpoint and LR reduction."""
    phase(writer, Phase.HEAD, "Phase 1: training the head on the frozen base's features")
    started = time.monotonic()

    def on_epoch(epoch: int, epochs: int, logs: dict[str, float]) -> None:
        seconds = time.monotonic() - started
        eta = round(seconds / epoch * (epochs - epoch), 1)
        writer.event(EventType.EPOCH, phase=Phase.HEAD, epoch=epoch, epochs=epochs, **_rounded(logs))
        writer.status(throttle_s=STATUS_EVERY_S, epoch=epoch, epochs=epochs, eta_s=eta)

    result = train_head(
        data.x_train,
        data.y_train,
        data.x_val,
        data.y_val,
        len(labels),
        HeadConfig.from_train_config(config),
        on_epoch=on_epoch,
        should_stop=guard.requested,
    )
    if result.stopped:
        raise Cancelled()
    return result


def _rounded(logs: dict[str, float]) -> dict[str, float]:
    return {k: round(float(v), 8) for k, v in logs.items()}


# -- report and publish --------------------------------------------------------------------------
def validation_report(probs: np.ndarray, samples: list[Sample], y: np.ndarray, split: Split) -> dict[str, Any]:
    """The report of the *served* model's probabilities on the validation faces, plus the misclassified ones.

    Also: how the split was made, accuracy per person (is anyone read badly?), the training imbalance between
    labels, and how many faces got a non-finite answer (for :func:`expr_core.quality.assess`).
    """
    labels = split.labels
    report = classification_report(y, probs, labels)
    report["non_finite_faces"] = int((~np.isfinite(probs)).any(axis=1).sum())
    report["per_person"] = _per_person(samples, y, probs, labels)
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
        for i, (s, p) in enumerate(zip(samples, predicted, strict=True))
        if p != y[i]
    ]
    report["misclassified"] = sorted(wrong, key=lambda w: -w["confidence"])
    return report


def _per_person(
    samples: list[Sample], y: np.ndarray, probs: np.ndarray, labels: list[str]
) -> dict[str, dict[str, Any]]:
    """``{person: {"n", "accuracy", "balanced_accuracy"}}`` over the validation faces."""
    persons = np.array([person_of(s) for s in samples])
    result = {}
    for person in sorted(set(persons)):
        mine = persons == person
        report = classification_report(y[mine], probs[mine], labels)
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


@dataclass
class Published:
    """One published version of a run, as the status, the CLI and phase 2 need it."""

    version: int
    report: dict[str, Any]
    quality: Quality
    score: float  # the selection score on validation (balanced accuracy, ties by loss): what phase 2 must beat


def publish_version(
    context: RunContext, version: int, staged: Path, report: dict[str, Any], history: dict[str, Any], score: float
) -> Published:
    """Write the report files into ``staged``, publish it as ``version`` and record it in the run's status.

    The first usable version goes live when no model is active yet; a later usable one replaces it live when
    this run is the active one (Detect follows the run's newest version).
    """
    split, config, writer = context.split, context.config, context.writer
    quality = assess(report, history)
    for name, content in (
        (LABELS_FILE, split.labels),
        (METRICS_FILE, {**report, "quality": quality.to_dict(), "version": version}),
        (HISTORY_FILE, history),
        (DATASET_FILE, dataset_summary(split, context.excluded)),
        (CONFIG_FILE, config.to_dict()),
    ):
        atomic.write_json(staged / name, content)
    phase(writer, Phase.PUBLISH, "Publishing the model" if version == 1 else "Publishing the fine-tuned model")
    context.guard.publishing = True
    context.registry.publish(context.run_id, version)
    context.guard.publishing = False
    writer.status(
        version=version,
        val_accuracy=report["accuracy"],
        labels=split.labels,
        usable=quality.usable,
        warnings=quality.warnings,
        published=time.time(),
    )
    activated = quality.usable and context.registry.activate_if_none(context.run_id)
    for warning in (w for w in quality.warnings if w not in split.warnings):  # the split's were said at the start
        writer.event(EventType.WARNING, message=warning)
    if not quality.usable:
        writer.event(EventType.WARNING, message="This model is not usable, so it was not made active.")
    writer.event(
        EventType.PUBLISHED,
        version=version,
        val_accuracy=report["accuracy"],
        usable=quality.usable,
        activated=activated,
    )
    return Published(version, report, quality, score)


@dataclass
class RunContext:
    """What every step of a run works with: where, on what data, with which settings, reporting to whom."""

    settings: Settings
    config: TrainConfig
    run_id: str
    registry: Registry
    store: DatasetStore
    split: Split
    excluded: list[str]
    key: BaseKey
    writer: JobWriter
    guard: CancelGuard

    @property
    def folder(self) -> Path:
        return runs.run_dir(self.settings.workspace, self.run_id)


def _link_or_copy(source: Path, target: Path) -> None:
    """The prepared base's file in a model folder: a hard link when the cache is on the same disk, else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def stage_first_model(context: RunContext, base_dir: Path, result: HeadResult) -> Path:
    """A model folder with the prepared base's LiteRT files and the trained head."""
    staged = context.registry.staging_dir(context.run_id)
    prepared = ModelFiles(base_dir)
    _link_or_copy(prepared.tflite, staged / BASE_FILE)
    if prepared.tflite_dynamic.is_file():
        _link_or_copy(prepared.tflite_dynamic, staged / BASE_DYNAMIC_FILE)
    result.weights.save(ModelFiles(staged).head)
    atomic.write_json(staged / bases.META_FILE, context.key.to_dict())
    return staged


def first_model(context: RunContext) -> Published:
    """Everything up to the published phase-1 model, without TensorFlow (unless the base is new)."""
    if context.config.weights == NO_WEIGHTS:
        context.writer.event(
            EventType.WARNING,
            message="Training without pretrained weights (weights 'none'): the base starts "
            "from random values, so accuracy will be much lower than with pretrained weights.",
        )
    base_dir = ensure_base(context.settings, context.key, context.writer)
    samples = context.split.train + context.split.val
    features = fill_features(context.store, samples, context.key, base_dir, context.writer, context.guard)
    data = HeadData.of(features, context.split)
    result = train_first_head(data, context.split.labels, context.config, context.writer, context.guard)
    phase(context.writer, Phase.EVALUATE, "Measuring the model on the validation faces")
    staged = stage_first_model(context, base_dir, result)
    probs = result.weights.predict(data.x_val)  # exactly what serving computes: the same base file, then the head
    report = validation_report(probs, context.split.val, data.y_val, context.split)
    history = {"head": result.history}
    score = result.best if result.best is not None and result.monitor == SELECTION else -math.inf
    return publish_version(context, 1, staged, report, history, score)


def train_run(
    settings: Settings, config: TrainConfig, run_id: str, writer: JobWriter, guard: CancelGuard
) -> dict[str, Any]:
    """Everything from the dataset snapshot to the published model(s); returns the CLI's result dict."""
    store = DatasetStore(settings.workspace)
    phase(writer, Phase.PREPARE, "Reading the dataset")
    split, excluded = snapshot(store, config, writer)
    check_readable(store, split.train + split.val)
    key = BaseKey.of(config)
    bases.remember(settings, key)  # samples saved from now on get this base's features
    registry = Registry(settings.workspace)
    context = RunContext(settings, config, run_id, registry, store, split, excluded, key, writer, guard)
    published = first_model(context) if config.epochs_1 else None
    if config.epochs_2:
        published = _fine_tuned(context, published)
    assert published is not None  # the config refuses both phases off; phase 2 alone raises when it fails
    writer.status(state=JobState.DONE, finished=time.time(), eta_s=None)
    writer.event(EventType.END, state=JobState.DONE, error=None, val_accuracy=published.report["accuracy"])
    return _result(context, published)


def _fine_tuned(context: RunContext, first: Published | None) -> Published | None:
    """Phase 2 in the same run, after the first model is out; the first model stays whatever happens here.
    With phase 1 off there is no first model: then phase 2's failures are the run's."""
    writer = context.writer
    if first is None:
        from expr_core.worker.train import fine_tune_run

        return fine_tune_run(context, None)
    try:
        from expr_core.worker.train import fine_tune_run  # TensorFlow loads here, after the first model is out

        return fine_tune_run(context, first) or first
    except (Cancelled, KeyboardInterrupt):
        writer.event(EventType.INFO, message="Fine-tuning was cancelled; the first model stays.")
    except UserError as exc:
        writer.event(EventType.WARNING, message=f"Fine-tuning stopped: {exc} The first model stays.")
    except Exception as exc:
        if is_disk_full(exc):
            gc.collect()
            message = str(disk_full(context.folder))
        else:
            traceback.print_exc(file=sys.stderr)
            message = f"Fine-tuning crashed: {type(exc).__name__}: {exc}"
        writer.event(EventType.WARNING, message=f"{message} The first model stays.")
    _clean(context.folder)
    return first


def _result(context: RunContext, published: Published) -> dict[str, Any]:
    report, quality = published.report, published.quality
    files = ModelFiles(context.registry.model_dir(context.run_id))
    return {
        "run_id": context.run_id,
        "state": JobState.DONE,
        "version": published.version,
        "model_path": str(files.folder),  # what --model takes
        "keras_path": str(files.keras) if files.keras.is_file() else None,  # a first model's is made on request
        "tflite_path": str(files.tflite) if files.tflite.is_file() else None,
        "labels": context.split.labels,
        "val_accuracy": report["accuracy"],
        "balanced_accuracy": report["balanced_accuracy"],
        "confusion_matrix": report["confusion_matrix"],
        "per_class": report["per_class"],
        "quantized": report.get("quantized"),
        "usable": quality.usable,
        "activated": context.registry.active_id() == context.run_id,
        "warnings": quality.warnings,
        "seconds": round(context.writer.elapsed(), 1),
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
            if (folder / CANCEL_FILE).exists():
                # The cancel's interrupt landed inside TensorFlow's C code, which turns it into any exception
                # (a SystemError from listobject.c was seen): the user asked to stop, and it stopped.
                return _finish(writer, JobState.CANCELLED, None)
            return _finish(writer, JobState.FAILED, f"Training crashed: {type(exc).__name__}: {exc}")
        finally:
            _clean(folder)
            writer.close()
