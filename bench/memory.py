"""Memory each task needs, for the hosting guide: serving, capture, and training at each input size.

- capture: the server process with the face detector, processing frames (what Capture needs);
- serving: the same plus the DenseNet201 LiteRT classifier (what Detect needs, per process);
- training: peak RSS of the real training worker (``python -m expr_core train``) at each input size,
  on real LFW face crops, one epoch per phase (peak memory is reached in the first steps of phase 2;
  more epochs do not raise it). The weights are a local file saved from a random DenseNet201: the
  ImageNet file cannot be fetched here, and a weights file takes the same path as ImageNet weights
  (BatchNorm frozen in phase 2), which is what a real deployment trains with. ``--scratch`` measures
  weights none instead (BatchNorm trains in phase 2, which keeps more activations).

Prints JSON. ``python bench/memory.py [--sizes 48 96 160 224] [--per-label 40]``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import densenet_weights_file, machine, require_shared

SERVER_PROBE = """
import sys, json, resource, cv2, numpy as np
from pathlib import Path
from expr_core.vision.faces import make_detector
from expr_core.live.pipeline import ExpressionPipeline
from expr_core.settings import load_settings
from bench.scene import compose, load_photos
root = Path(sys.argv[1]); model = sys.argv[2]
settings = load_settings().with_(models_dir=root.parents[1] / "models", allow_downloads=False)
detector = make_detector("yunet", settings)
classifier = None
if model != "-":
    from expr_core.serving import Classifier, open_model
    classifier = open_model(Path(model), quantized=True)
photos = load_photos(root, 30)
pipeline = ExpressionPipeline(detector, classifier)
for i in range(100):
    pipeline.process(compose(photos, 3, i))
print(json.dumps({"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))
"""


def server_peak(root: Path, model: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", SERVER_PROBE, str(root), model],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_mb"]


def training_peak(workspace: Path, size: int, weights: str) -> dict:
    """Peak RSS of the training worker, sampled every 0.2 s, and its wall time."""
    cmd = [
        sys.executable,
        "-m",
        "expr_core",
        "train",
        "--workspace",
        str(workspace),
        "--weights",
        weights,
        "--image-size",
        str(size),
        "--epochs-1",
        "1",
        "--epochs-2",
        "1",
        "--no-quantize",
        "--json",
    ]
    start, peak = time.perf_counter(), 0
    log = tempfile.TemporaryFile("w+")  # noqa: SIM115 (read back after the process ends, then closed)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, cwd=Path(__file__).resolve().parents[1])
    handle = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            peak = max(peak, handle.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.2)
    out = proc.stdout.read().strip() if proc.stdout else ""
    if proc.returncode != 0 or not out:
        log.seek(0)
        raise RuntimeError(f"training at {size} px failed (exit {proc.returncode}):\n{log.read()[-3000:]}")
    result = json.loads(out[out.index("{") :])  # the CLI prints one indented JSON document
    return {
        "image_size": size,
        "peak_rss_mb": round(peak / 2**20),
        "seconds": round(time.perf_counter() - start),
        "state": result.get("state", "done"),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="*", default=[48, 96, 160, 224])
    parser.add_argument("--per-label", type=int, default=40)
    parser.add_argument("--scratch", action="store_true", help="train with weights none instead of a weights file")
    args = parser.parse_args()
    root = require_shared("data/lfw-expressions")
    from bench.scene import served_model_folder

    result: dict[str, Any] = {
        "capture_server_peak_rss_mb": server_peak(root, "-"),
        "serving_server_peak_rss_mb": server_peak(root, str(served_model_folder())),
    }
    with tempfile.TemporaryDirectory() as tmp:
        workspace = Path(tmp) / "ws"
        for label in ("happy", "sad"):
            photos = sorted((root / label).glob("*.jpg"))[: args.per_label]
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "expr_core",
                    "dataset",
                    "import",
                    "--workspace",
                    str(workspace),
                    "--label",
                    label,
                    "--models-dir",
                    str(root.parents[1] / "models"),
                    *map(str, photos),
                ],
                check=False,
                capture_output=True,
                cwd=Path(__file__).resolve().parents[1],
            )
        weights = "none" if args.scratch else str(densenet_weights_file(Path(tmp)))
        result["training_weights"] = "none" if args.scratch else "local file (the ImageNet code path)"
        result["training"] = [training_peak(workspace, size, weights) for size in args.sizes]
    print(json.dumps({"benchmark": "memory", "machine": machine(), **result}, indent=2))


if __name__ == "__main__":
    main()
