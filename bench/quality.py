"""Model quality, side by side in one run: does a model read expressions on people it was not trained on?

JSON on stdout, progress on stderr. Everything goes through the command line (``python -m expr_core``, the
same code as the app's workers) in subprocesses; the training worker's peak memory is sampled with psutil.

``starter``  the starter model (FER2013 mini-Xception restricted to happy/sad), zero-shot: FER2013's test
    split (48x48 crops, ``evaluate --cropped``) and the LFW photos (faces found by YuNet, ``evaluate``).
``people``   a new person, on CK+ (ckplus48): group k-fold over the people who have happy or sad crops. Per
    fold a workspace is built from the training people's crops (``dataset import --from-folder --cropped``,
    with a labels.csv naming each crop's person) and trained, then ``evaluate --cropped`` runs on the
    held-out people. Compared: mini-Xception transfer (its defaults), DenseNet201 through the weights-file
    path (a no-top file saved from a *random* network: the same FLOPs and code path as ImageNet weights, but
    random values, because ImageNet weights cannot be downloaded here), and the starter alone. Every fold
    model is also evaluated on other people entirely (FER2013's test split, the LFW photos).
``few``      a few crops of the same person: per fold, the training people plus the first k frames per label
    of each held-out person who has both labels; evaluated on that person's remaining frames, next to the
    fold's k = 0 models on exactly those frames. What k the data allows is worked out from the data.
``speed``    start -> published and the worker's peak memory, per backbone, on the same CK+ fold (fold 1).

``python -m bench.quality [--only starter,people,few,speed] [--folds 5] [--densenet-folds 2]``
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

from bench.common import ROOT, densenet_weights_file, machine, require_shared
from bench.train import PeakMemory

LABELS = ("happy", "sad")
SECTIONS = ("starter", "people", "few", "speed")
MINI, DENSE = "mini-xception", "densenet201"
REQUESTED_KS = (3, 10, 30)
FRAMES_PER_SEQUENCE = 3  # CK+48 keeps the last three frames of each posed sequence


def log(message: str) -> None:
    print(f"[quality {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- machine ---------------------------------------------------------------------------------------
def cpu_facts() -> dict[str, Any]:
    """CPU model and the SIMD flags that matter for TensorFlow / LiteRT kernels (from /proc/cpuinfo)."""
    model, flags = platform_model(), set[str]()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:
        pass
    wanted = [
        *("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni"),
        *("avx512_bf16", "amx_tile", "amx_int8", "amx_bf16"),
    ]
    simd = sorted(f for f in flags if f.startswith(("avx", "amx", "fma", "sse4", "f16c")))
    return {
        "cpu_model": model,
        "cpu_flags": {name: name in flags for name in wanted},
        "avx512": "avx512f" in flags,
        "vnni": bool({"avx512_vnni", "avx_vnni"} & flags),
        "simd_flags_all": simd,
    }


def platform_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def versions() -> dict[str, str]:
    found = {}
    for name in ("tensorflow-cpu", "tensorflow", "keras", "ai-edge-litert", "opencv-python-headless", "numpy"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# -- running the command line ------------------------------------------------------------------------
@dataclass
class Bench:
    root: Path
    models_dir: Path
    cache_dir: Path
    logs: Path = field(init=False)
    counter: int = 0

    def __post_init__(self) -> None:
        self.logs = self.root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)

    def cli(self, name: str, *args: str, memory: bool = False) -> dict[str, Any]:
        """Run ``python -m expr_core ARGS --json``; its stdout parsed as JSON, stderr kept in a log file."""
        self.counter += 1
        log_path = self.logs / f"{self.counter:03d}-{name}.log"
        cmd = [sys.executable, "-m", "expr_core", *args, "--json"]
        env = {**os.environ, "EXPR_DOWNLOADS": "0"}
        start = time.perf_counter()
        with open(log_path, "w") as err:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT, env=env)
            peak = PeakMemory(proc.pid) if memory else None
            out, _ = proc.communicate()
        seconds = time.perf_counter() - start
        peak_mb = peak.stop() if peak else None
        if proc.returncode not in (0, 1):
            tail = log_path.read_text()[-3000:]
            raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}; log {log_path}:\n{tail}")
        try:
            result = json.loads(out)
        except json.JSONDecodeError as exc:
            raise RuntimeError(f"{' '.join(cmd)}: no JSON on stdout ({exc}); log {log_path}") from exc
        return {"result": result, "seconds": round(seconds, 1), "peak_rss_mb": peak_mb, "log": str(log_path)}

    def other_sets(self) -> tuple[Path, Path]:
        """Happy/sad copies of FER2013's test split (crops) and of the LFW photos, made once."""
        fer, lfw = self.root / "fer-test", self.root / "lfw"
        if not fer.is_dir():
            copy_labels(require_shared("data/fer2013") / "test", fer)
            copy_labels(require_shared("data/lfw-expressions"), lfw)
        return fer, lfw

    def common(self) -> list[str]:
        return ["--models-dir", str(self.models_dir), "--cache-dir", str(self.cache_dir)]

    def evaluate(self, model: str, data: Path, cropped: bool, name: str) -> dict[str, Any]:
        args = ["evaluate", "--model", model, "--data", str(data), *self.common()]
        if model == "starter":
            args += ["--labels", ",".join(LABELS)]
        if cropped:
            args.append("--cropped")
        run = self.cli(name, *args)
        report = run["result"]
        return {**summarise(report), "skipped": len(report.get("skipped", [])), "seconds": run["seconds"]}

    def train(self, workspace: Path, backbone: str, extra: list[str], name: str) -> dict[str, Any]:
        args = ["train", "--workspace", str(workspace), "--backbone", backbone, *extra, *self.common()]
        run = self.cli(name, *args, memory=True)
        result = run["result"]
        if result.get("state") != "done":
            raise RuntimeError(f"training {name} ended {result.get('state')}: {result.get('error')} (log {run['log']})")
        model_dir = Path(result["tflite_path"]).parent
        metrics = json.loads((model_dir / "metrics.json").read_text())
        return {
            "model_dir": str(model_dir),
            "cli_wall_s": run["seconds"],
            "worker_seconds": result.get("seconds"),
            "worker_peak_rss_mb": run["peak_rss_mb"],
            "phase_seconds": phase_seconds(workspace / "runs" / result["run_id"]),
            "config": json.loads((model_dir / "config.json").read_text()),
            "worker_validation": {
                "balanced_accuracy": result.get("balanced_accuracy"),
                "accuracy": result.get("val_accuracy"),
                "n": metrics.get("n"),
                "split_mode": metrics.get("split", {}).get("mode"),
                "val_persons": len(metrics.get("split", {}).get("val_persons", [])),
                "train_persons": len(metrics.get("split", {}).get("train_persons", [])),
            },
            "usable": result.get("usable"),
            "warnings": result.get("warnings"),
        }

    def import_folder(self, workspace: Path, folder: Path, name: str) -> dict[str, int]:
        args = ["dataset", "import", "--from-folder", str(folder), "--cropped", "--workspace", str(workspace)]
        run = self.cli(name, *args, *self.common())
        return run["result"]["added"]


def phase_seconds(run_dir: Path) -> dict[str, float]:
    """Seconds per phase of a run, from its events file (phase start to the next phase's start)."""
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines() if line.strip()]
    marks = [(e["phase"], e["elapsed"]) for e in events if e.get("type") == "phase"]
    end = events[-1]["elapsed"] if events else 0.0
    return {
        name: round(stop - begin, 1) for (name, begin), (_, stop) in zip(marks, [*marks[1:], ("end", end)], strict=True)
    }


# -- numbers -------------------------------------------------------------------------------------------
def summarise(report: dict[str, Any]) -> dict[str, Any]:
    """The compact part of an evaluate report, with the confusion matrix (rows true, columns predicted)."""
    return {
        "n": report["n"],
        "accuracy": report["accuracy"],
        "balanced_accuracy": report["balanced_accuracy"],
        "recall": {label: c["recall"] for label, c in report["per_class"].items()},
        "support": {label: c["support"] for label, c in report["per_class"].items()},
        "confusion_matrix": report["confusion_matrix"],
    }


def pooled(matrices: list[list[list[int]]], cluster: int = 1) -> dict[str, Any]:
    """Balanced accuracy of summed confusion matrices, and its standard error (binomial per label).

    ``cluster``: how many near-duplicate images make one independent observation (3 frames of one CK+
    sequence): the standard error is then computed on n / cluster per label.
    """
    if not matrices:
        return {}
    size = len(matrices[0])
    total = [[sum(m[i][j] for m in matrices) for j in range(size)] for i in range(size)]
    recalls, variance, intervals = [], 0.0, []
    for i in range(size):
        support = sum(total[i])
        if support:
            r = total[i][i] / support
            recalls.append(r)
            variance += r * (1 - r) / max(1.0, support / cluster)
            intervals.append(wilson(r, support / cluster))
    n = sum(map(sum, total))
    return {
        "n": n,
        "accuracy": round(sum(total[i][i] for i in range(size)) / n, 4) if n else None,
        "balanced_accuracy": round(sum(recalls) / len(recalls), 4) if recalls else None,
        "balanced_accuracy_se": round(math.sqrt(variance) / len(recalls), 4) if recalls else None,
        "recall_wilson95_per_label": intervals,
        "confusion_matrix": total,
    }


def wilson(p: float, n: float, z: float = 1.96) -> list[float]:
    """95 % Wilson score interval of a proportion ``p`` seen on ``n`` observations (sane at p = 0 or 1)."""
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(max(0.0, centre - half), 3), round(min(1.0, centre + half), 3)]


# -- data ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Crop:
    path: str  # relative to the CK+ folder, e.g. happy/S010_006_00000013.png
    label: str
    subject: str

    @property
    def sequence(self) -> str:
        return "_".join(Path(self.path).name.split("_")[:2])


def read_ckplus(folder: Path) -> list[Crop]:
    with open(folder / "labels.csv", newline="") as handle:
        return [Crop(r["path"], r["label"], r["subject"]) for r in csv.DictReader(handle) if r["label"] in LABELS]


def people_folds(crops: list[Crop], folds: int, seed: int) -> list[list[str]]:
    """Group k-fold over subjects: people with both labels dealt first, then sad-only, then happy-only, so
    every fold holds some of each (seeded shuffle within each kind)."""
    labels_of: dict[str, set[str]] = defaultdict(set)
    for crop in crops:
        labels_of[crop.subject].add(crop.label)
    kinds = [
        sorted(s for s, ls in labels_of.items() if ls == set(LABELS)),
        sorted(s for s, ls in labels_of.items() if ls == {"sad"}),
        sorted(s for s, ls in labels_of.items() if ls == {"happy"}),
    ]
    out: list[list[str]] = [[] for _ in range(folds)]
    rng, turn = random.Random(seed), 0
    for kind in kinds:
        rng.shuffle(kind)
        for subject in kind:
            out[turn % folds].append(subject)
            turn += 1
    return [sorted(f) for f in out]


def write_folder(source: Path, crops: list[Crop], out: Path, name_subjects: bool = True) -> Path:
    """``out/<label>/*.png`` copies plus a labels.csv (path,label,subject); an empty subject leaves the crop
    without a person (it then always stays in training: only named people are held out for validation)."""
    for label in LABELS:
        (out / label).mkdir(parents=True, exist_ok=True)
    rows = []
    for crop in crops:
        shutil.copy(source / crop.path, out / crop.path)
        rows.append({"path": crop.path, "label": crop.label, "subject": crop.subject if name_subjects else ""})
    with open(out / "labels.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "label", "subject"])
        writer.writeheader()
        writer.writerows(rows)
    return out


def copy_labels(source: Path, out: Path) -> Path:
    """``out/happy`` and ``out/sad`` from a class-folder dataset (so the evaluation skips nothing)."""
    for label in LABELS:
        shutil.copytree(source / label, out / label)
    return out


def few_feasibility(crops: list[Crop], lfw: Path | None) -> dict[str, Any]:
    """Which k (crops per label of one person in training, some left to evaluate) the shared data allows."""
    per: dict[tuple[str, str], list[Crop]] = defaultdict(list)
    for crop in crops:
        per[crop.subject, crop.label].append(crop)
    both = sorted({s for s, _ in per if all((s, label) in per for label in LABELS)})
    max_crops = max(len(v) for v in per.values())
    max_sequences = max(len({c.sequence for c in v}) for v in per.values())
    people_for = {
        k: sum(1 for s in both if all(len(per[s, label]) > k for label in LABELS)) for k in (1, 2, *REQUESTED_KS)
    }
    result: dict[str, Any] = {
        "ckplus": {
            "people_with_both_labels": len(both),
            "max_crops_per_person_and_label": max_crops,
            "max_sequences_per_person_and_label": max_sequences,
            "people_with_more_than_k_crops_of_each_label": people_for,
        }
    }
    if lfw is not None and (lfw / "labels.csv").is_file():
        with open(lfw / "labels.csv", newline="") as handle:
            counts: dict[str, Counter] = defaultdict(Counter)
            for row in csv.DictReader(handle):
                counts[row["subject"]][row["label"]] += 1
        result["lfw"] = {
            "max_happy_per_person": max(c["happy"] for c in counts.values()),
            "max_sad_per_person": max(c["sad"] for c in counts.values()),
            "people_with_more_than_k_of_each_label": {
                k: sum(1 for c in counts.values() if c["happy"] > k and c["sad"] > k) for k in (1, 2, *REQUESTED_KS)
            },
        }
    result["fer2013"] = "no subject ids: the same person cannot be found twice"
    result["verdict"] = (
        f"CK+ has one sequence ({FRAMES_PER_SEQUENCE} near-duplicate frames) per person and label, so k=3 leaves "
        "nothing of that person to evaluate and k=10/30 do not exist; LFW has at most "
        f"{result.get('lfw', {}).get('max_sad_per_person', '?')} sad photos of anyone and FER2013 names nobody. "
        "None of the requested k (3, 10, 30) is achievable. Measured instead: k=1 and k=2 frames per label with "
        "the remaining 2 or 1 frames of the same sequence evaluated: near-duplicates of the training frames, so "
        "this is an upper bound (the same burst seen again), not new sessions of a known person."
    )
    return result


# -- sections ----------------------------------------------------------------------------------------------
def section_starter(bench: Bench) -> dict[str, Any]:
    fer, lfw = bench.other_sets()
    log("starter on FER2013 test (cropped)")
    fer_result = bench.evaluate("starter", fer, cropped=True, name="starter-fer")
    log(f"  balanced accuracy {fer_result['balanced_accuracy']}; starter on LFW (YuNet)")
    lfw_result = bench.evaluate("starter", lfw, cropped=False, name="starter-lfw")
    log(f"  balanced accuracy {lfw_result['balanced_accuracy']}")
    return {
        "model": "starter (FER2013 mini-Xception, happy/sad renormalised), zero-shot",
        "fer2013_test_cropped": {**fer_result, **se_of(fer_result)},
        "lfw_yunet": {**lfw_result, **se_of(lfw_result)},
        "note": "FER2013's test split is from the same collection the starter was trained on (not its training "
        "images); LFW is another collection (different people, photos, labellers).",
    }


def se_of(result: dict[str, Any]) -> dict[str, Any]:
    stats = pooled([result["confusion_matrix"]])
    return {k: stats[k] for k in ("balanced_accuracy_se", "recall_wilson95_per_label")}


@dataclass
class Fold:
    index: int
    test_people: list[str]
    workspace: Path
    train_dir: Path
    test_dir: Path
    counts: dict[str, Any]


class PeopleBench:
    """The CK+ folds, built and trained once each per backbone (shared by the people, few and speed sections)."""

    def __init__(self, bench: Bench, root: Path, args: argparse.Namespace) -> None:
        self.bench, self.root, self.args = bench, root, args
        self.source = require_shared("data/ckplus48")
        self.crops = read_ckplus(self.source)
        self.folds = people_folds(self.crops, args.folds, args.seed)
        self._built: dict[int, Fold] = {}
        self._trained: dict[tuple[int, str], dict[str, Any]] = {}
        self._weights: Path | None = None

    def fold(self, i: int) -> Fold:
        if i not in self._built:
            test = set(self.folds[i])
            train_crops = [c for c in self.crops if c.subject not in test]
            test_crops = [c for c in self.crops if c.subject in test]
            base = self.root / f"fold{i + 1}"
            train_dir = write_folder(self.source, train_crops, base / "train")
            test_dir = write_folder(self.source, test_crops, base / "test")
            workspace = base / "ws"
            added = self.bench.import_folder(workspace, train_dir, f"fold{i + 1}-import")
            self._built[i] = Fold(
                i,
                sorted(test),
                workspace,
                train_dir,
                test_dir,
                {
                    "train_people": len({c.subject for c in train_crops}),
                    "test_people": len(test),
                    "train_crops": dict(Counter(c.label for c in train_crops)),
                    "imported": added,
                    "test_crops": dict(Counter(c.label for c in test_crops)),
                },
            )
        return self._built[i]

    def weights_file(self) -> Path:
        if self._weights is None:
            log("saving a random DenseNet201 no-top weights file (child process)")
            self._weights = densenet_weights_file(self.root)
        return self._weights

    def backbone_args(self, backbone: str) -> list[str]:
        if backbone == DENSE:
            return ["--weights", str(self.weights_file()), "--epochs-2", str(self.args.densenet_epochs_2)]
        return []

    def trained(self, i: int, backbone: str) -> dict[str, Any]:
        key = (i, backbone)
        if key not in self._trained:
            fold = self.fold(i)
            log(f"fold {i + 1}: training {backbone}")
            run = self.bench.train(fold.workspace, backbone, self.backbone_args(backbone), f"fold{i + 1}-{backbone}")
            log(
                f"  done in {run['cli_wall_s']} s, peak {run['worker_peak_rss_mb']} MB, worker validation "
                f"{run['worker_validation']['balanced_accuracy']}"
            )
            self._trained[key] = run
        return self._trained[key]


def section_people(people: PeopleBench) -> dict[str, Any]:
    args = people.args
    dense_folds = list(range(min(args.densenet_folds, args.folds)))
    per_fold = []
    for i in range(args.folds):
        fold = people.fold(i)
        entry: dict[str, Any] = {"fold": i + 1, **fold.counts}
        log(f"fold {i + 1}: starter on the held-out people")
        entry["starter"] = people.bench.evaluate("starter", fold.test_dir, cropped=True, name=f"fold{i + 1}-starter")
        for backbone in (MINI, DENSE):
            if backbone == DENSE and i not in dense_folds:
                continue
            run = people.trained(i, backbone)
            test = people.bench.evaluate(run["model_dir"], fold.test_dir, cropped=True, name=f"fold{i + 1}-{backbone}")
            log(f"  {backbone} on held-out people: balanced accuracy {test['balanced_accuracy']}")
            fer, lfw = people.bench.other_sets()
            entry[backbone] = {
                "test": test,
                "fer2013_test": compact(
                    people.bench.evaluate(run["model_dir"], fer, True, f"fold{i + 1}-{backbone}-fer")
                ),
                "lfw_yunet": compact(
                    people.bench.evaluate(run["model_dir"], lfw, False, f"fold{i + 1}-{backbone}-lfw")
                ),
                "worker_validation": run["worker_validation"],
                "train_s": run["cli_wall_s"],
                "usable": run["usable"],
            }
        per_fold.append(entry)
    summary: dict[str, Any] = {}
    for name in ("starter", MINI, DENSE):
        rows = [f for f in per_fold if name in f]
        matrices = [(f[name] if name == "starter" else f[name]["test"])["confusion_matrix"] for f in rows]
        if not matrices:
            continue
        balanced = [(f[name] if name == "starter" else f[name]["test"])["balanced_accuracy"] for f in rows]
        summary[name] = {
            "folds": [f["fold"] for f in rows],
            "per_fold_balanced_accuracy": balanced,
            "pooled": pooled(matrices, cluster=FRAMES_PER_SEQUENCE),
        }
    if DENSE in summary:
        same = [f for f in per_fold if DENSE in f]
        summary["on_densenet_folds_only"] = {
            name: pooled(
                [(f[name] if name == "starter" else f[name]["test"])["confusion_matrix"] for f in same],
                cluster=FRAMES_PER_SEQUENCE,
            )
            for name in ("starter", MINI, DENSE)
        }
    return {
        "data": "ckplus48 happy/sad, group k-fold by subject (people with both labels dealt across folds first)",
        "folds": args.folds,
        "seed": args.seed,
        "served_file_evaluated": "model.tflite (float32): what `evaluate --model RUN` loads",
        "configs": {
            MINI: "defaults: --backbone mini-xception (weights fer2013 from --models-dir, 64 px, epochs 30 + 10)",
            DENSE: f"--backbone densenet201 --weights FILE --epochs-2 {args.densenet_epochs_2} (96 px); FILE is a "
            "no-top weights file saved from a RANDOM DenseNet201 (bench.common.densenet_weights_file): the "
            "ImageNet code path and FLOPs, random values (ImageNet weights cannot be downloaded here)",
            "densenet_folds": [i + 1 for i in dense_folds],
        },
        "se_note": "balanced_accuracy_se counts the 3 frames of a CK+ sequence as one observation",
        "per_fold": per_fold,
        "summary": summary,
        "cross_dataset": cross_dataset(per_fold),
    }


def cross_dataset(per_fold: list[dict[str, Any]]) -> dict[str, Any]:
    """The CK+-trained fold models on other people entirely (FER2013 test crops, LFW photos)."""
    out: dict[str, Any] = {}
    for name in (MINI, DENSE):
        rows = [f[name] for f in per_fold if name in f]
        if rows:
            out[name] = {
                where: {
                    "per_fold_balanced_accuracy": [r[where]["balanced_accuracy"] for r in rows],
                    "mean_balanced_accuracy": round(sum(r[where]["balanced_accuracy"] for r in rows) / len(rows), 4),
                }
                for where in ("fer2013_test", "lfw_yunet")
            }
    out["note"] = "every fold model evaluated on the same whole sets; compare with the starter section"
    return out


def compact(result: dict[str, Any]) -> dict[str, Any]:
    return {k: result[k] for k in ("n", "accuracy", "balanced_accuracy", "recall", "confusion_matrix")}


def section_few(people: PeopleBench, ks: list[int]) -> dict[str, Any]:
    args = people.args
    lfw = require_shared("data/lfw-expressions")
    feasibility = few_feasibility(people.crops, lfw)
    folds = list(range(min(args.few_folds, args.folds)))
    per_k: dict[int, dict[str, Any]] = {}
    for k in ks:
        if k >= FRAMES_PER_SEQUENCE:
            per_k[k] = {"skipped": "not achievable (see feasibility)"}
            continue
        rows = []
        for i in folds:
            fold = people.fold(i)
            test = set(fold.test_people)
            held = [c for c in people.crops if c.subject in test]
            complete = sorted(
                s for s in test if all(any(c.subject == s and c.label == label for c in held) for label in LABELS)
            )
            shots, rest = [], []
            for s in complete:
                for label in LABELS:
                    mine = sorted((c for c in held if c.subject == s and c.label == label), key=lambda c: c.path)
                    shots += mine[:k]
                    rest += mine[k:]
            base = people.root / f"fold{i + 1}" / f"few-k{k}"
            train_dir = base / "train"
            write_folder(people.source, [c for c in people.crops if c.subject not in test], train_dir)
            shot_dir = write_folder(people.source, shots, base / "shots", name_subjects=False)
            eval_dir = write_folder(people.source, rest, base / "eval")
            workspace = base / "ws"
            people.bench.import_folder(workspace, train_dir, f"fold{i + 1}-few{k}-import")
            people.bench.import_folder(workspace, shot_dir, f"fold{i + 1}-few{k}-import-shots")
            log(f"fold {i + 1}, k={k}: training mini-xception with {len(shots)} frames of {len(complete)} people")
            run = people.bench.train(workspace, MINI, [], f"fold{i + 1}-few{k}")
            row = {
                "fold": i + 1,
                "people": len(complete),
                "shots_in_training": len(shots),
                "eval_frames": len(rest),
                "k_shot": people.bench.evaluate(run["model_dir"], eval_dir, True, f"fold{i + 1}-few{k}-eval"),
                "k0_mini_xception": people.bench.evaluate(
                    people.trained(i, MINI)["model_dir"], eval_dir, True, f"fold{i + 1}-few{k}-k0"
                ),
                "starter": people.bench.evaluate("starter", eval_dir, True, f"fold{i + 1}-few{k}-starter"),
                "train_s": run["cli_wall_s"],
            }
            log(f"  k={k}: {row['k_shot']['balanced_accuracy']} vs k=0 {row['k0_mini_xception']['balanced_accuracy']}")
            rows.append(row)
        per_k[k] = {
            "per_fold": rows,
            "pooled": {
                name: pooled([r[name]["confusion_matrix"] for r in rows], cluster=1)
                for name in ("k_shot", "k0_mini_xception", "starter")
            },
        }
    return {
        "feasibility": feasibility,
        "design": "per fold: training = the fold's training people (all happy/sad crops, named) + the first k "
        "frames (by frame number) per label of each held-out person with both labels, imported WITHOUT a "
        "subject so the worker's people-wise validation split cannot hold them out; evaluated (--cropped) on "
        "those people's remaining frames. k0_mini_xception = the same fold's people-section model on the same "
        "frames; mini-Xception defaults. Frames of a sequence are near-duplicates: an upper bound.",
        "se_note": "balanced_accuracy_se here counts frames (they are near-duplicates: true uncertainty is larger)",
        "folds": [i + 1 for i in folds],
        "ks_requested": list(REQUESTED_KS),
        "ks_run": [k for k in ks if k < FRAMES_PER_SEQUENCE],
        "per_k": per_k,
    }


def section_speed(people: PeopleBench) -> dict[str, Any]:
    out: dict[str, Any] = {"dataset": None}
    for backbone in (MINI, DENSE):
        run = people.trained(0, backbone)
        out["dataset"] = people.fold(0).counts
        out[backbone] = {
            "config": {k: run["config"][k] for k in ("weights", "image_size", "epochs_1", "epochs_2", "batch_size")},
            "start_to_published_s": run["worker_seconds"],
            "cli_process_wall_s": run["cli_wall_s"],
            "phase_seconds": run["phase_seconds"],
            "worker_peak_rss_mb": run["worker_peak_rss_mb"],
        }
    if out[DENSE]["config"]["weights"] not in ("imagenet", "none"):
        out[DENSE]["config"]["weights"] = "random DenseNet201 no-top weights file (ImageNet code path)"
    out["note"] = (
        "CK+ fold 1 (training people only) through `python -m expr_core train` in a subprocess. start_to_published_s"
        " is the worker's own clock (run start -> published, from its result); cli_process_wall_s adds Python and "
        "TensorFlow start-up and exit. Peak RSS of the process tree, sampled every 0.2 s."
    )
    return out


# -- main ----------------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated subset of " + ",".join(SECTIONS))
    parser.add_argument("--folds", type=int, default=5, help="people folds on CK+")
    parser.add_argument("--densenet-folds", type=int, default=2, help="run DenseNet201 on the first N folds")
    parser.add_argument("--densenet-epochs-2", type=int, default=0, help="DenseNet201 phase 2 epochs (0: head only)")
    parser.add_argument("--few-folds", type=int, default=5, help="folds used by the few-samples section")
    parser.add_argument("--few-ks", default="1,2", help="frames per label of a held-out person put in training")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (workspaces, logs)")
    args = parser.parse_args()
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(only) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")
    started, load_start = time.perf_counter(), load()
    root = Path(tempfile.mkdtemp(prefix="bench-quality-"))
    bench = Bench(root, require_shared("models"), root / "cache")
    log(f"working in {root}; load average {load_start}")
    result: dict[str, Any] = {"command": " ".join(["python -m bench.quality", *sys.argv[1:]])}
    timings: dict[str, float] = {}
    try:
        prep = bench.cli("starter-prepare", "starter", "prepare", *bench.common())
        result["starter_prepare_s"] = prep["seconds"]
        people = PeopleBench(bench, root, args)
        for name in only:
            begin = time.perf_counter()
            log(f"== {name}")
            if name == "starter":
                result["starter"] = section_starter(bench)
            elif name == "people":
                result["people"] = section_people(people)
            elif name == "few":
                result["few"] = section_few(people, [int(k) for k in args.few_ks.split(",") if k.strip()])
            elif name == "speed":
                result["speed"] = section_speed(people)
            timings[name] = round(time.perf_counter() - begin, 1)
    finally:
        if args.keep:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    result["section_seconds"] = timings
    result["total_seconds"] = round(time.perf_counter() - started, 1)
    result["machine"] = {
        **machine(),
        **cpu_facts(),
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "versions": versions(),
        "load_avg_1_5_15_at_start": load_start,
        "load_avg_1_5_15_at_end": load(),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
