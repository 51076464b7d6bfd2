"""Live frame processing speed: the Detect page's pipeline against the original per-face predict.

Frames are 640x480 composites of real LFW photos (../shared/data/lfw-expressions) with 1 or 3 faces.
The model is DenseNet201 at 96x96 with the original head (weights none: same FLOPs as ImageNet ones),
served exactly as the app serves it (expr_core.live.pipeline.ExpressionPipeline + expr_core.serving.Classifier,
LiteRT, one batched call per frame). Rows: detection alone (at full 640 px and at the app's
``STREAM_DETECT_SIDE``); detection plus classification of every face in every frame; and the app's
defaults (``ClassifySchedule``: faces take turns for the classifier, each read at most 15 times a
second). The baseline is the original script's way in the same run: detection, then ``model.predict``
once per face. Prints JSON.

    python bench/live.py [--frames 150] [--baseline-frames 40]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine, peak_rss_mb, summary_ms
from bench.scene import LABELS, SIZE, compose, lfw_detector, load_photos, served_model_folder
from expr_core.live.pipeline import EVERY_FACE, STREAM_DETECT_SIDE, ClassifySchedule, ExpressionPipeline
from expr_core.serving import Predictor, open_model
from expr_core.vision.faces import crop_face, detect_downscaled

STREAM_FPS = 30


def time_pipeline(pipeline: ExpressionPipeline, frames: list[np.ndarray]) -> dict:
    """Per-frame times; each frame is stamped as if it came from a 30 fps camera (what the schedule sees)."""
    pipeline.process(frames[0].copy(), now=-1.0)  # warm-up (allocations, first-call costs)
    times = []
    for i, frame in enumerate(frames):
        start = time.perf_counter()
        pipeline.process(frame.copy(), now=i / STREAM_FPS)
        times.append(time.perf_counter() - start)
    return {"ms": summary_ms(times), "fps": round(len(times) / sum(times), 1)}


def time_original(detector, model, frames: list[np.ndarray], margin: float) -> dict:
    """The original script: detect, then one ``model.predict`` per face on 0..1-scaled pixels.

    Warmed up like the served path: the first ``predict`` builds its graph (seconds), which would
    otherwise inflate the speed-up.
    """
    model.predict(np.zeros((1, SIZE, SIZE, 3), "float32"), verbose=0)
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
    found = {
        n: float(np.mean([len(detect_downscaled(detector, f, STREAM_DETECT_SIDE)) for f in clips[n]])) for n in (1, 3)
    }

    from expr_core.worker.model import build_network, inference_copy

    model = inference_copy(build_network("densenet201", len(LABELS), SIZE, "none"))  # the original's predict path
    folder = served_model_folder()
    served = {"float32": open_model(folder), "dynamic": open_model(folder, quantized=True)}

    def run(frames: list[np.ndarray], classifier: Predictor | None, **options) -> dict:
        return time_pipeline(ExpressionPipeline(detector, classifier, **options), frames)

    results: dict[str, dict[str, Any]] = {}
    for n in (1, 3):
        frames = clips[n]
        results[f"{n}_face"] = {
            "faces_detected_per_frame_at_app_detect_side": found[n],
            "detect_only_full_640": run(frames, None, detect_side=None),
            "detect_only": run(frames, None),
            **{
                f"detect_classify_{name}_every_face": run(frames, clf, schedule=EVERY_FACE)
                for name, clf in served.items()
            },
            **{f"detect_classify_{name}_app_default": run(frames, clf) for name, clf in served.items()},
            "original_per_face_predict": time_original(detector, model, clips[n][: args.baseline_frames], 0.2),
        }
        row = results[f"{n}_face"]
        for name in list(row):
            if name.startswith("detect_classify_"):
                row[f"speedup_{name[16:]}_vs_original"] = round(
                    row[name]["fps"] / row["original_per_face_predict"]["fps"], 1
                )
    print(
        json.dumps(
            {
                "benchmark": "live",
                "machine": machine(),
                "frame": "640x480",
                "app_defaults": {"detect_side": STREAM_DETECT_SIDE, **asdict(ClassifySchedule())},
                "model": f"densenet201 {SIZE}px weights none",
                "frames": args.frames,
                "baseline_frames": args.baseline_frames,
                "peak_rss_mb": peak_rss_mb(),
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
