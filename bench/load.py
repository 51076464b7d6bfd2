"""Several people streaming at once: how many 15 fps webcam streams this machine keeps up with.

Each stream is a thread that behaves like a streamlit-webrtc frame callback: a new 640x480 frame of
real faces (1 face, as at a desk) arrives every 1/15 s; when the previous frame is still being
processed, the new one is dropped (as aiortc does with async processing), so an overloaded server
shows up as a lower delivered frame rate per stream, not as a growing queue. Every stream has its
own ExpressionPipeline (tracks, smoothing) and shares the process's detector and classifier, as the
app does. Memory (RSS) is sampled every second to show it does not grow. Prints JSON.

    python bench/load.py [--streams 1 2 3 4] [--seconds 60] [--fps 15]
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine, summary_ms
from bench.scene import compose, lfw_detector, load_photos, served_model_folder
from expr_core.live.pipeline import ExpressionPipeline
from expr_core.serving import open_model
from expr_core.settings import load_settings


def stream(pipeline: ExpressionPipeline, frames: list[np.ndarray], fps: float, seconds: float, out: dict) -> None:
    """Offer a frame every 1/fps s; process it unless still busy with the previous one (then it is dropped)."""
    period, start = 1.0 / fps, time.perf_counter()
    offered = processed = 0
    latencies = []
    next_at = start
    while time.perf_counter() - start < seconds:
        now = time.perf_counter()
        if now < next_at:
            time.sleep(next_at - now)
        behind = int((time.perf_counter() - next_at) // period)  # frames that arrived while we were busy
        offered += 1 + behind
        next_at += period * (1 + behind)
        t0 = time.perf_counter()
        pipeline.process(frames[processed % len(frames)].copy())
        latencies.append(time.perf_counter() - t0)
        processed += 1
    elapsed = time.perf_counter() - start
    out.update(
        offered=offered,
        processed=processed,
        delivered_fps=round(processed / elapsed, 2),
        latency_ms=summary_ms(latencies),
    )


def run_level(n: int, detector, classifier, frames, fps: float, seconds: float) -> dict:
    results: list[dict] = [{} for _ in range(n)]
    threads = [
        threading.Thread(target=stream, args=(ExpressionPipeline(detector, classifier), frames, fps, seconds, r))
        for r in results
    ]
    process = psutil.Process()
    rss = []
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads):
        rss.append(process.memory_info().rss / 2**20)
        time.sleep(1.0)
    for thread in threads:
        thread.join()
    delivered = [r["delivered_fps"] for r in results]
    third = max(1, len(rss) // 3)
    return {
        "streams": n,
        "delivered_fps_per_stream": delivered,
        "min_fps": min(delivered),
        "holds_target": min(delivered) >= 0.95 * fps,
        "latency_ms_p95_worst": max(r["latency_ms"]["p95"] for r in results),
        "rss_mb": {
            "first_third_mean": round(float(np.mean(rss[:third])), 1),
            "last_third_mean": round(float(np.mean(rss[-third:])), 1),
            "max": round(max(rss), 1),
        },
        "per_stream": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 2, 3, 4])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--fps", type=float, default=15)
    args = parser.parse_args()
    root, detector = lfw_detector()
    quantized = load_settings().quantized_serving
    frames = [compose(load_photos(root, 60), 1, i) for i in range(60)]
    classifier = open_model(served_model_folder(), quantized=quantized)
    levels = [run_level(n, detector, classifier, frames, args.fps, args.seconds) for n in args.streams]
    held = [level["streams"] for level in levels if level["holds_target"]]
    print(
        json.dumps(
            {
                "benchmark": "load",
                "machine": machine(),
                "target_fps": args.fps,
                "seconds_per_level": args.seconds,
                "model": "densenet201 96px, " + ("dynamic-range" if quantized else "float32"),
                "max_streams_at_target": max(held, default=0),
                "levels": levels,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
