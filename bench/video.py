"""Video files: is a 30-second 640x480 video annotated faster than real time?

The clip is built from real LFW photos (one face, moving slightly), encoded with libx264 at 30 fps,
then processed by the same function the Detect page's video job runs (expr_core.live.video_file.process_video
with the served DenseNet201 at 96x96, dynamic-range). Prints JSON.

    python bench/video.py [--seconds 30]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import av

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine
from bench.scene import compose, lfw_detector, load_photos, served_model_folder
from expr_core.live.pipeline import ExpressionPipeline
from expr_core.live.video_file import process_video
from expr_core.serving import open_model

FPS = 30


def write_clip(path: Path, seconds: float, photos) -> None:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 640, 480, "yuv420p"
        for i in range(int(seconds * FPS)):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(compose(photos, 1, i // 15), format="bgr24")))
        out.mux(stream.encode(None))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=30)
    args = parser.parse_args()
    root, detector = lfw_detector()
    classifier = open_model(served_model_folder(), quantized=True)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "clip.mp4"
        write_clip(src, args.seconds, load_photos(root, 60))
        start = time.perf_counter()
        result = process_video(src, Path(tmp) / "out.mp4", ExpressionPipeline(detector, classifier))
        took = time.perf_counter() - start
    print(
        json.dumps(
            {
                "benchmark": "video",
                "machine": machine(),
                "video_seconds": result.duration_s,
                "frames": result.frames,
                "frames_with_faces": result.frames_with_faces,
                "processing_seconds": round(took, 1),
                "realtime_factor": round(result.duration_s / took, 2),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
