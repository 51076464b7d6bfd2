"""Training benchmarks, JSON on stdout (progress on stderr). ImageNet weights cannot be fetched here.

``python -m bench.train speed``  on 150 LFW face crops per label (happy, neutral; YuNet crops, split by person):
    1. phase 1, in the same process: one epoch the original way (full forward pass through the frozen base
       every epoch) against one head epoch on cached features, plus the one-off feature extraction;
    2. Start -> published model through the real job runner (a separate process, as from the Train page),
       with phase 2 at a few epochs, and the worker's peak memory (whole process tree, psutil). The job
       starts from a DenseNet201 weights file saved from a random network: the same code path and FLOPs as
       ImageNet weights (BatchNorm frozen in phase 2); ``--scratch`` trains with weights none instead.
``python -m bench.train fer``  the FER2013 sanity run: train on N happy/sad train images, evaluate on the test split
    (with ``--quantize`` also the dynamic-range file, and how often it agrees with float32).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

from bench.common import densenet_weights_file, machine, require_shared
from expr_core.data.store import DatasetStore
from expr_core.data.transfer import ImportOptions, import_paths
from expr_core.evaluate import classification_report, load_labelled_folder
from expr_core.jobs import folder as job
from expr_core.jobs import runs
from expr_core.registry import Registry
from expr_core.serving import Classifier
from expr_core.settings import Settings
from expr_core.train_config import TrainConfig
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
    detector = None if cropped else open_detector(settings)[0]
    report = import_paths(
        DatasetStore(settings.workspace), [folder], detector, settings, ImportOptions(cropped=cropped)
    )
    return report.added


def run_job(settings: Settings, config: TrainConfig) -> dict:
    """Start training like the Train page does, wait, and time it from the click to the published model."""
    start = time.perf_counter()
    run_id = runs.start_training(settings, config)
    identity = job.worker_identity(runs.run_dir(settings.workspace, run_id))
    assert identity, "the worker was not recorded"
    memory = PeakMemory(int(identity.split(":")[0]))
    status = job.wait(runs.run_dir(settings.workspace, run_id), timeout_s=3600, poll_s=0.2)
    seconds = time.perf_counter() - start
    events = job.read_events(runs.run_dir(settings.workspace, run_id))[0]
    phases = [(e["phase"], e["elapsed"]) for e in events if e["type"] == "phase"]
    durations = {
        name: round(end - begin, 1)
        for (name, begin), (_, end) in zip(phases, [*phases[1:], ("end", events[-1]["elapsed"])], strict=True)
    }
    return {
        "run_id": run_id,
        "state": status["state"],
        "error": status.get("error"),
        "start_to_published_s": round(seconds, 1),
        "worker_peak_rss_mb": memory.stop(),
        "phase_seconds": durations,
        "val_accuracy": status.get("val_accuracy"),
        "epochs_run": {
            p: sum(1 for e in events if e["type"] == "epoch" and e["phase"] == p) for p in ("head", "finetune")
        },
        "info": [e["message"] for e in events if e["type"] == "info"],
    }


def phase1_comparison(settings: Settings, size: int, batch: int) -> dict:
    """Seconds per phase-1 epoch: full forward pass through the frozen base vs the head on cached features."""
    import keras

    from expr_core.data.split import split_samples
    from expr_core.worker.model import build_network
    from expr_core.worker.train import load_arrays

    store = DatasetStore(settings.workspace)
    samples = store.samples()
    split = split_samples(samples, [label for label in store.labels() if any(s.label == label for s in samples)])
    train = load_arrays(store, split.train, split.labels, size)
    x, y = train.x.astype("float32"), train.y
    net = build_network("densenet201", len(split.labels), size, "none")

    def epoch_times(model: keras.Model, inputs: np.ndarray) -> list[float]:
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy", jit_compile=False)
        times = []
        for _ in range(3):  # the first epoch includes graph building; the later ones are the steady state
            start = time.perf_counter()
            model.fit(inputs, y, batch_size=batch, epochs=1, verbose=0)
            times.append(time.perf_counter() - start)
        return times

    log("phase 1 the original way: full model, base frozen")
    full = epoch_times(net.model, x)
    log("phase 1 with cached features")
    net.extractor.compile(jit_compile=False)
    start = time.perf_counter()
    features = net.extractor.predict(x, batch_size=batch, verbose=0)
    extraction = time.perf_counter() - start
    head = epoch_times(net.head, features)
    return {
        "train_images": len(x),
        "full_forward_epoch_s": [round(t, 2) for t in full],
        "feature_extraction_once_s": round(extraction, 2),
        "cached_head_epoch_s": [round(t, 3) for t in head],
        "speedup_steady_epoch": round(min(full[1:]) / min(head[1:]), 1),
    }


def cmd_speed(args: argparse.Namespace) -> dict:
    root = Path(tempfile.mkdtemp(prefix="bench-train-"))
    settings = Settings(
        workspace=root / "ws", models_dir=require_shared("models"), allow_downloads=False, cache_dir=root / "cache"
    )
    added = import_folder(settings, lfw_subset(args.per_label, ("happy", "neutral"), root / "lfw"), cropped=False)
    log(f"imported {added}")
    result = {"dataset": {"source": "lfw-expressions happy+neutral, YuNet crops, grouped by subject", "added": added}}
    if not args.skip_phase1:
        result["phase1"] = phase1_comparison(settings, args.image_size, args.batch_size)
    weights = "none" if args.scratch or args.backbone != "densenet201" else str(densenet_weights_file(root))
    config = TrainConfig(
        backbone=args.backbone,
        weights=weights,
        image_size=args.image_size,
        epochs_2=args.epochs_2,
        batch_size=args.batch_size,
        quantize=args.quantize,
    )
    log(f"start -> published: {config}")
    result["job"] = {"config": config.to_dict(), **run_job(settings, config)}
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
    served = {"float32": Classifier.from_path(model_dir)}
    if args.quantize:
        served["dynamic"] = Classifier.from_path(model_dir, quantized=True)
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
    speed.add_argument("--epochs-2", type=int, default=3)
    speed.add_argument("--skip-phase1", action="store_true")
    speed.add_argument("--scratch", action="store_true", help="weights none (BatchNorm trains in phase 2)")
    fer = sub.add_parser("fer")
    fer.add_argument("--per-label", type=int, default=1500)
    fer.add_argument("--epochs-2", type=int, default=3)
    fer.add_argument("--lr-2", type=float, default=TrainConfig.lr_2)
    for p in (speed, fer):
        p.add_argument(
            "--quantize", action="store_true", help="also make (and for fer: evaluate) the dynamic-range file"
        )
        p.add_argument("--backbone", default="densenet201")
        p.add_argument("--image-size", type=int, default=96)
        p.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    load_before = psutil.getloadavg()
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
