"""Training benchmarks, JSON on stdout (progress on stderr). ImageNet weights cannot be fetched here.

``python -m bench.train speed``  2 x ``--per-label`` LFW face crops (happy, neutral; YuNet crops, split by person):
    1. the backbone's base prepared once (``python -m expr_core base prepare``, a child process);
    2. the crops imported with features computed at import (the app's and the CLI's store do that);
    3. Start -> first published model through the real job runner (``runs.start_training``, a separate
       process, as from the Train page), phase 2 off, and the worker's peak memory (process tree, psutil);
    4. the same training the way it ran before prepared bases ("legacy": a TensorFlow process that builds the
       network, computes the frozen base's features of every crop, trains the head in Keras and converts the
       whole network), in the same run, as the baseline;
    5. how often the first model ("prepared base + head") agrees with the whole Keras network assembled from it
       (``python -m expr_core models assemble``) on the validation faces.
    DenseNet201 starts from a weights file saved from a random network: the same code path and FLOPs as ImageNet
    weights. ``--backbone mini-xception`` uses its FER2013 file.
``python -m bench.train fer``  the FER2013 sanity run: train on N happy/sad train images, evaluate on the test split
    (with ``--quantize`` also the dynamic-range file, and how often it agrees with float32).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

from bench.common import densenet_weights_file, machine, peak_rss_mb, require_shared
from expr_core import bases
from expr_core.backbones import BACKBONES, prepare_tensorflow
from expr_core.bases import BaseKey
from expr_core.data.features import FeatureStore, Featurizer
from expr_core.data.split import split_samples
from expr_core.data.store import DatasetStore
from expr_core.data.transfer import ImportOptions, import_paths
from expr_core.evaluate import classification_report, load_labelled_folder
from expr_core.jobs import folder as job
from expr_core.jobs import prepare, runs
from expr_core.registry import ModelFiles, Registry
from expr_core.serving import open_model
from expr_core.settings import Settings
from expr_core.train_config import TrainConfig
from expr_core.training import split_arrays
from expr_core.vision.faces import open_detector


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


class PeakMemory:
    """Peak resident memory of a process and its children, sampled every 0.2 s in a thread."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak_mb = pid, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            try:
                root = psutil.Process(self.pid)
                rss = sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
            except psutil.Error:
                continue
            self.peak_mb = max(self.peak_mb, rss / 2**20)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return round(self.peak_mb, 1)


def lfw_subset(per_label: int, labels: tuple[str, ...], out: Path) -> Path:
    """Copy the first ``per_label`` photos of each label (and their subjects) into a class-folder tree."""
    source = require_shared("data/lfw-expressions")
    with open(source / "labels.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["label"] in labels]
    kept = []
    for label in labels:
        kept += [r for r in rows if r["label"] == label][:per_label]
    for row in kept:
        (out / row["label"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(source / row["path"], out / row["path"])
    with open(out / "labels.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "label", "subject"])
        writer.writeheader()
        writer.writerows(kept)
    return out


def import_folder(settings: Settings, folder: Path, cropped: bool) -> dict[str, int]:
    """Import as the CLI does: features are computed at import once the base is prepared."""
    detector = None if cropped else open_detector(settings)[0]
    store = DatasetStore(settings.workspace, Featurizer(settings))
    report = import_paths(store, [folder], detector, settings, ImportOptions(cropped=cropped))
    return report.added


def run_job(settings: Settings, config: TrainConfig) -> dict:
    """Start training like the Train page does, wait, and time it from the click to the first published model
    (the status names its version) and to the end of the run."""
    start = time.perf_counter()
    run_id = runs.start_training(settings, config)
    folder = runs.run_dir(settings.workspace, run_id)
    identity = job.worker_identity(folder)
    assert identity, "the worker was not recorded"
    memory = PeakMemory(int(identity.split(":")[0]))
    first = None
    while (status := job.folder_status(folder)).get("state") in job.ACTIVE_STATES or first is None:
        if first is None and status.get("version"):
            first = time.perf_counter() - start
        if status.get("state") not in job.ACTIVE_STATES:
            break
        time.sleep(0.02)
    seconds = time.perf_counter() - start
    events = job.read_events(folder)[0]
    phases = [(e["phase"], e["elapsed"]) for e in events if e["type"] == "phase"]
    durations = {
        name: round(end - begin, 2)
        for (name, begin), (_, end) in zip(phases, [*phases[1:], ("end", events[-1]["elapsed"])], strict=True)
    }
    return {
        "run_id": run_id,
        "state": status["state"],
        "error": status.get("error"),
        "start_to_first_model_s": None if first is None else round(first, 2),
        "start_to_end_s": round(seconds, 2),
        "worker_peak_rss_mb": memory.stop(),
        "phase_seconds": durations,
        "val_accuracy": status.get("val_accuracy"),
        "balanced_accuracy": Registry(settings.workspace).metrics(run_id).get("balanced_accuracy") if first else None,
        "epochs_run": {
            p: sum(1 for e in events if e["type"] == "epoch" and e["phase"] == p) for p in ("head", "finetune")
        },
        "info": [e["message"] for e in events if e["type"] == "info"],
    }


def cmd_legacy(args: argparse.Namespace) -> dict:
    """Phase 1 the way a run did it before prepared bases (commit 494dc31), in this (child) process, timed from
    before TensorFlow is imported: build the network, compute the frozen base's features of every crop (clean
    plus two augmented copies, and validation), fit the head in Keras, convert the whole network to LiteRT."""
    start = time.perf_counter()
    config = TrainConfig.from_dict(json.loads(args.config))
    settings = Settings(workspace=Path(args.workspace), models_dir=require_shared("models"), allow_downloads=False)
    prepare_tensorflow(config.backbone)
    import keras
    import tensorflow as tf

    from expr_core.worker.convert import export_tflite
    from expr_core.worker.model import augmentation, build_network, resolve_weights

    store = DatasetStore(settings.workspace)
    samples = store.samples()
    labels = [label for label in store.labels() if any(s.label == label for s in samples)]
    split = split_samples(samples, labels, config.val_fraction, config.seed)
    train, val = split_arrays(store, split, config.image_size)
    weights = resolve_weights(config.weights, settings)
    net = build_network(config.backbone, len(split.labels), config.image_size, weights)
    built = time.perf_counter()
    extract = tf.function(lambda batch: net.extractor(batch, training=False), jit_compile=False)
    augment = augmentation(config.seed)

    def features(x: np.ndarray, augmented: bool) -> np.ndarray:
        batches = tf.data.Dataset.from_tensor_slices(x).batch(config.batch_size).map(lambda b: tf.cast(b, tf.float32))
        if augmented:
            batches = batches.map(lambda b: augment(b, training=True))
        return np.concatenate([extract(b).numpy() for b in batches])

    f_train = np.concatenate([features(train.x, False), features(train.x, True), features(train.x, True)])
    y_train, f_val = np.tile(train.y, 3), features(val.x, False)
    featured = time.perf_counter()
    net.head.compile(optimizer=keras.optimizers.Adam(config.lr_1), loss="sparse_categorical_crossentropy")
    callbacks = [
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=4, restore_best_weights=True),
        keras.callbacks.ReduceLROnPlateau(monitor="val_loss", patience=3, factor=0.5),
    ]
    net.head.fit(
        f_train,
        y_train,
        validation_data=(f_val, val.y),
        epochs=config.epochs_1,
        verbose=0,
        batch_size=config.batch_size,
        callbacks=callbacks,
    )
    trained = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        export_tflite(net.model, Path(out), config.quantize)
    converted = time.perf_counter()
    return {
        "start_to_model_s": round(converted - start, 2),
        "seconds": {
            "import_and_build": round(built - start, 2),
            "features": round(featured - built, 2),
            "head": round(trained - featured, 2),
            "convert": round(converted - trained, 2),
        },
        "peak_rss_mb": peak_rss_mb(),
    }


def legacy_path(settings: Settings, config: TrainConfig) -> dict:
    """:func:`cmd_legacy` in a fresh process, as a training worker was."""
    command = [sys.executable, "-m", "bench.train", "legacy", "--workspace", str(settings.workspace)]
    done = subprocess.run([*command, "--config", json.dumps(config.to_dict())], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"the legacy path failed:\n{done.stderr[-3000:]}")
    result: dict = json.loads(done.stdout)
    return result


def prepare_base(settings: Settings, key: BaseKey) -> float:
    """Seconds to prepare the base once (the Train page starts this job when a backbone is chosen)."""
    start = time.perf_counter()
    subprocess.run(prepare.base_command(settings, key), check=True, capture_output=True)
    return round(time.perf_counter() - start, 1)


def agreement(settings: Settings, run_id: str, config: TrainConfig) -> dict:
    """How often base + head and the whole Keras network assembled from it give the same label (validation)."""
    subprocess.run(
        [sys.executable, "-m", "expr_core", "models", "assemble", run_id, "--workspace", str(settings.workspace)],
        check=True,
        capture_output=True,
        env={**os.environ, "EXPR_MODELS_DIR": str(settings.models_dir), "EXPR_CACHE_DIR": str(settings.cache_dir)},
    )
    store = DatasetStore(settings.workspace)
    registry = Registry(settings.workspace)
    val_ids = set(registry.dataset_summary(run_id)["val_ids"])
    split = split_samples(store.samples(), registry.labels(run_id), config.val_fraction, config.seed)
    assert {s.id for s in split.val} == val_ids, "the benchmark's split must be the run's"
    _, val = split_arrays(store, split, config.image_size)
    files = ModelFiles(registry.model_dir(run_id))
    served = open_model(files.folder).predict_many(val.x, bgr=False)
    prepare_tensorflow(config.backbone)
    import keras  # last: this process measured everything else without TensorFlow

    whole = keras.saving.load_model(files.keras, compile=False).predict(val.x.astype("float32"), verbose=0)
    return {
        "val_faces": len(val.x),
        "label_agreement": round(float(np.mean(served.argmax(axis=1) == whole.argmax(axis=1))), 4),
        "max_probability_difference": round(float(np.abs(served - whole).max()), 6),
    }


def cmd_speed(args: argparse.Namespace) -> dict:
    root = Path(tempfile.mkdtemp(prefix="bench-train-"))
    settings = Settings(
        workspace=root / "ws", models_dir=require_shared("models"), allow_downloads=False, cache_dir=root / "cache"
    )
    spec = BACKBONES[args.backbone]
    weights = spec.weights if args.backbone != "densenet201" else str(densenet_weights_file(root))
    config = TrainConfig.for_backbone(
        args.backbone, weights=weights, image_size=args.image_size, epochs_2=0, batch_size=args.batch_size
    )
    key = BaseKey.of(config)
    log(f"preparing the base once: {key.slug()}")
    result: dict = {"config": config.to_dict(), "base_prepare_once_s": prepare_base(settings, key)}
    bases.remember(settings, key)  # what choosing the backbone on the Train page does
    start = time.perf_counter()
    added = import_folder(settings, lfw_subset(args.per_label, ("happy", "neutral"), root / "lfw"), cropped=False)
    features = FeatureStore(DatasetStore(settings.workspace).root, key.slug())
    result["dataset"] = {
        "source": "lfw-expressions happy+neutral, YuNet crops, grouped by subject",
        "added": added,
        "import_with_features_s": round(time.perf_counter() - start, 1),
        "samples_with_features": sum(1 for _ in features.folder.glob("*.npy")),
    }
    log(f"imported {added}; start -> first model")
    result["first_model"] = run_job(settings, config)
    log("the legacy path (TensorFlow, features, Keras head, conversion)")
    result["legacy"] = legacy_path(settings, config)
    first, legacy = result["first_model"]["start_to_first_model_s"], result["legacy"]["start_to_model_s"]
    result["speedup_vs_legacy"] = round(legacy / first, 1) if first else None
    log("agreement with the whole Keras network")
    result["agreement"] = agreement(settings, result["first_model"]["run_id"], config)
    shutil.rmtree(root, ignore_errors=True)
    return result


def cmd_fer(args: argparse.Namespace) -> dict:
    source = require_shared("data/fer2013")
    root = Path(tempfile.mkdtemp(prefix="bench-fer-"))
    settings = Settings(workspace=root / "ws", allow_downloads=False, cache_dir=root / "cache")
    subset = root / "fer-train"
    for label in ("happy", "sad"):
        (subset / label).mkdir(parents=True)
        for path in sorted((source / "train" / label).glob("*.jpg"))[: args.per_label]:
            shutil.copy(path, subset / label / path.name)
    added = import_folder(settings, subset, cropped=True)
    log(f"imported {added}")
    config = TrainConfig(
        backbone=args.backbone,
        weights="none",
        image_size=args.image_size,
        epochs_2=args.epochs_2,
        lr_2=args.lr_2,
        batch_size=args.batch_size,
        quantize=args.quantize,
    )
    job = run_job(settings, config)
    model_dir = Registry(settings.workspace).model_dir(job["run_id"])
    served = {"float32": open_model(model_dir)}
    if args.quantize:
        served["dynamic"] = open_model(model_dir, quantized=True)
    test_dir = root / "fer-test"
    for label in ("happy", "sad"):
        shutil.copytree(source / "test" / label, test_dir / label)
    start = time.perf_counter()
    data = load_labelled_folder(test_dir, served["float32"].labels, settings, None, served["float32"].input_size)
    probs = {name: classifier.predict_many(data.crops) for name, classifier in served.items()}
    reports = {
        name: classification_report(data.y, p, classifier.labels)
        for (name, p), classifier in zip(probs.items(), served.values(), strict=True)
    }
    evaluation_s = time.perf_counter() - start
    report = reports["float32"]
    majority = max(report["per_class"].values(), key=lambda c: c["support"])["support"] / report["n"]
    shutil.rmtree(root, ignore_errors=True)
    keys = ("n", "accuracy", "balanced_accuracy", "per_class", "confusion_matrix")
    result = {
        "dataset": {"train": added, "test": {k: v["support"] for k, v in report["per_class"].items()}},
        "job": {"config": config.to_dict(), **job},
        "test": {k: report[k] for k in keys},
        "test_majority_class_rate": round(majority, 4),
        "evaluate_s": round(evaluation_s, 1),
    }
    if "dynamic" in reports:
        result["test_dynamic_range"] = {k: reports["dynamic"][k] for k in keys}
        result["dynamic_agrees_with_float32"] = round(
            float(np.mean(probs["dynamic"].argmax(axis=1) == probs["float32"].argmax(axis=1))), 4
        )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    speed = sub.add_parser("speed")
    speed.add_argument("--per-label", type=int, default=150)
    legacy = sub.add_parser("legacy", help="(internal) the pre-prepared-base phase 1, timed in this process")
    legacy.add_argument("--workspace", required=True)
    legacy.add_argument("--config", required=True)
    fer = sub.add_parser("fer")
    fer.add_argument("--per-label", type=int, default=1500)
    fer.add_argument("--epochs-2", type=int, default=3)
    fer.add_argument("--lr-2", type=float, default=TrainConfig.lr_2)
    for p in (speed, fer, legacy):
        p.add_argument(
            "--quantize", action="store_true", help="also make (and for fer: evaluate) the dynamic-range file"
        )
        p.add_argument("--backbone", default="densenet201")
        p.add_argument("--image-size", type=int, default=96)
        p.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    load_before = psutil.getloadavg()
    if args.command == "legacy":
        print(json.dumps(cmd_legacy(args)))
        return
    result = cmd_speed(args) if args.command == "speed" else cmd_fer(args)
    result["machine"] = {
        **machine(),
        "load_avg_1_5_15_at_start": [round(x, 2) for x in load_before],
        "load_avg_1_5_15_at_end": [round(x, 2) for x in psutil.getloadavg()],
    }
    result["command"] = "python -m bench.train " + " ".join(sys.argv[1:])
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
