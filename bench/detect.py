"""Face detection on real head-and-shoulders photos: how often a face is found, and how fast.

Runs each available detector over ../shared/data/lfw-expressions (LFW, 350x350) through the same
decode and detect functions the CLI and the app use. Prints JSON.

    python bench/detect.py [--limit N]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine, require_shared, summary_ms
from expr_core.errors import ModelFileError
from expr_core.settings import load_settings
from expr_core.vision.faces import make_detector
from expr_core.vision.images import decode_image


def run(detector_name: str, images: list[Path], settings) -> dict:
    try:
        detector = make_detector(detector_name, settings)
    except ModelFileError as exc:
        return {"detector": detector_name, "error": str(exc)}
    found, times, misses = 0, [], []
    for path in images:
        image = decode_image(path.read_bytes(), str(path))
        start = time.perf_counter()
        faces = detector.detect(image)
        times.append(time.perf_counter() - start)
        found += bool(faces)
        if not faces:
            misses.append(path.name)
    return {
        "detector": detector_name,
        "images": len(images),
        "found": found,
        "detection_rate": round(found / len(images), 4),
        "ms_per_image": summary_ms(times),
        "missed": misses[:20],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=0)
    args = parser.parse_args()
    root = require_shared("data/lfw-expressions")
    images = sorted(root.glob("*/*.jpg"))[: args.limit or None]
    settings = load_settings().with_(models_dir=root.parents[1] / "models", allow_downloads=False)
    results = [run(name, images, settings) for name in ("yunet", "haar", "ssd")]
    print(json.dumps({"benchmark": "detect", "dataset": str(root), "machine": machine(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
