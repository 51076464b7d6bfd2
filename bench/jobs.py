"""The same small training through the ``local`` and the ``ray`` job backend on this machine; JSON on stdout.

``python -m bench.jobs``: 2 x ``--per-label`` LFW face crops (happy, neutral; YuNet crops, grouped by person),
mini-Xception with its FER2013 weights, its base prepared once beforehand (both backends use it: the Ray job
gets it shipped). A real one-node Ray cluster is started here (``ray start --head``, as the tests do). Each
backend trains ``--rounds`` times, alternating (local, ray, local, ray, ...) so that a machine getting busier
hurts both alike, through the job path the Train page uses (``runs.start_training``), with phase 2 for
``--epochs-2`` epochs. The Ray path's overhead (median start -> end, ray minus local) must be at most 10 s.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import machine, require_shared
from bench.train import import_folder, lfw_subset, log, prepare_base, run_job
from expr_core import bases
from expr_core.bases import BaseKey
from expr_core.settings import Settings
from expr_core.train_config import TrainConfig
from tests.ray_cluster import local_ray_cluster

OVERHEAD_LIMIT_S = 10.0


def median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(statistics.median(known), 2) if known else None


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--per-label", type=int, default=60)
    parser.add_argument("--epochs-2", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-jobs-"))
    local = Settings(
        workspace=root / "ws", models_dir=require_shared("models"), allow_downloads=False, cache_dir=root / "cache"
    )
    config = TrainConfig.for_backbone("mini-xception", epochs_2=args.epochs_2)
    key = BaseKey.of(config)
    result: dict = {"machine": machine(), "config": config.to_dict(), "base_prepare_once_s": prepare_base(local, key)}
    bases.remember(local, key)
    added = import_folder(local, lfw_subset(args.per_label, ("happy", "neutral"), root / "lfw"), cropped=False)
    result["dataset"] = {"source": "lfw-expressions happy+neutral, YuNet crops", "added": added}
    started = time.perf_counter()
    with local_ray_cluster() as address:
        result["ray_cluster_start_s"] = round(time.perf_counter() - started, 1)
        ray = local.with_(job_backend="ray", ray_address=address)
        runs_by_backend: dict[str, list[dict]] = {"local": [], "ray": []}
        for round_ in range(args.rounds):
            for name, settings in (("local", local), ("ray", ray)):
                log(f"round {round_ + 1}: {name}")
                outcome = run_job(settings, config)
                if outcome["state"] != "done":
                    raise SystemExit(f"{name} run failed: {outcome['error']}")
                runs_by_backend[name].append(outcome)
    for name, outcomes in runs_by_backend.items():
        result[name] = {
            "start_to_first_model_s": [o["start_to_first_model_s"] for o in outcomes],
            "start_to_end_s": [o["start_to_end_s"] for o in outcomes],
            "median_start_to_first_model_s": median([o["start_to_first_model_s"] for o in outcomes]),
            "median_start_to_end_s": median([o["start_to_end_s"] for o in outcomes]),
            "val_accuracy": [o["val_accuracy"] for o in outcomes],
        }
    overhead = result["ray"]["median_start_to_end_s"] - result["local"]["median_start_to_end_s"]
    first = result["ray"]["median_start_to_first_model_s"] - result["local"]["median_start_to_first_model_s"]
    result["ray_overhead_s"] = {"start_to_end": round(overhead, 2), "start_to_first_model": round(first, 2)}
    result["ray_overhead_within_limit"] = overhead <= OVERHEAD_LIMIT_S
    shutil.rmtree(root, ignore_errors=True)
    return result


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
