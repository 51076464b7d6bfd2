"""Live frame processing speed: the Detect page's pipeline against the original per-face predict.

Frames are 640x480 composites of real LFW photos (../shared/data/lfw-expressions) with 1 or 3 faces.
The model is DenseNet201 at 96x96 with the original head (weights none: same FLOPs as ImageNet ones),
served exactly as the app serves it (expr_core.live.ExpressionPipeline + expr_core.serving.Classifier,
LiteRT, one batched call per frame). The baseline is the original script's way in the same run:
detection, then ``model.predict`` once per face. Prints JSON.

    python bench/live.py [--frames 150] [--baseline-frames 40]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine, peak_rss_mb, summary_ms  # noqa: E402
from bench.scene import LABELS, SIZE, compose, lfw_detector, load_photos, served_model_folder  # noqa: E402
from expr_core.faces import crop_face  # noqa: E402
from expr_core.live import ExpressionPipeline  # noqa: E402
from expr_core.serving import Classifier  # noqa: E402

def time_pipeline(pipeline: ExpressionPipeline, frames: list[np.ndarray]) -> dict:
    pipeline.process(frames[0].copy())  # warm-up (allocations, first-call costs)
    times = []
    for frame in frames:
        start = time.perf_counter()
        pipeline.process(frame.copy())
        times.append(time.perf_counter() - start)
    return {"ms": summary_ms(times), "fps": round(len(times) / sum(times), 1)}


def time_original(detector, model, frames: list[np.ndarray], margin: float) -> dict:
    """The original script: detect, then one ``model.predict`` per face on 0..1-scaled pixels."""
    times = []
    for frame in frames:
        start = time.perf_counter()
        for face in detector.detect(frame):
            crop = cv2.cvtColor(crop_face(frame, face, margin, SIZE), cv2.COLOR_BGR2RGB)
            model.predict(crop[None].astype("float32"), verbose=0)
        times.append(time.perf_counter() - start)
    return {"ms": summary_ms(times), "fps": round(len(times) / sum(times), 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--baseline-frames", type=int, default=40)
    args = parser.parse_args()
    root, detector = lfw_detector()
    photos = load_photos(root, 120)
    clips = {n: [compose(photos, n, i) for i in range(args.frames)] for n in (1, 3)}
    found = {n: float(np.mean([len(detector.detect(f)) for f in clips[n][:30]])) for n in (1, 3)}

    from expr_core.model import build_network, inference_copy

    model = inference_copy(build_network("densenet201", len(LABELS), SIZE, "none"))  # the original's predict path
    folder = served_model_folder()
    served = {"float32": Classifier.from_path(folder), "dynamic": Classifier.from_path(folder, quantized=True)}
    results = {}
    for n in (1, 3):
        results[f"{n}_face"] = {
            "faces_detected_per_frame": found[n],
            "detect_only": time_pipeline(ExpressionPipeline(detector, None), clips[n]),
            **{f"detect_classify_{name}": time_pipeline(ExpressionPipeline(detector, clf), clips[n])
               for name, clf in served.items()},
            "original_per_face_predict": time_original(detector, model, clips[n][: args.baseline_frames], 0.2),
        }
        row = results[f"{n}_face"]
        for name in served:
            row[f"speedup_{name}_vs_original"] = round(
                row[f"detect_classify_{name}"]["fps"] / row["original_per_face_predict"]["fps"], 1)
    print(json.dumps({"benchmark": "live", "machine": machine(), "frame": "640x480", "model": f"densenet201 {SIZE}px weights none",
                      "frames": args.frames, "baseline_frames": args.baseline_frames,
                      "peak_rss_mb": peak_rss_mb(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
