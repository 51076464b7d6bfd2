"""Does computing features at capture time slow the live stream? Capture's frame path while a burst records.

The Capture page's frame callback (YuNet detection, the recorder, drawing) runs on 640x480 frames of a real
LFW face as fast as it can while a 30-crop burst records (one crop every 0.2 s); its writer thread stores each
crop and, with a prepared base, computes the crop's features (:class:`expr_core.data.features.Featurizer`,
one LiteRT thread). Measured in the same run: frames per second without features (the baseline: how capture
worked before), with the mini-Xception base and with the DenseNet201 base (96 px, a weights file saved from a
random network: the same FLOPs). The goal: within 10 % of the baseline. Prints JSON.

    python -m bench.recording [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from bench.common import densenet_weights_file, machine, require_shared
from bench.scene import compose, lfw_detector, load_photos
from expr_core import bases
from expr_core.bases import BaseKey
from expr_core.data.features import FeatureStore, Featurizer
from expr_core.data.store import DatasetStore
from expr_core.jobs import prepare
from expr_core.live.capture import BurstRequest, Recorder, SampleWriter, annotate_capture_frame
from expr_core.settings import Settings
from expr_core.train_config import TrainConfig

BURST = BurstRequest("happy", count=30, interval_s=0.2, countdown_s=0)


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def record(settings: Settings, key: BaseKey | None, frames: list, detector, workspace: Path, fps: float | None) -> dict:
    """Frames per second of the capture callback during one burst (and until its last crop is stored): frames as
    fast as it can take them (``fps`` None: its capacity), or arriving at a camera's ``fps`` (what a user sees;
    a frame that is late is not made up for)."""
    if key is not None:
        bases.remember(settings.with_(workspace=workspace), key)
    featurizer = Featurizer(settings.with_(workspace=workspace)) if key is not None else None
    store = DatasetStore(workspace, featurizer)
    recorder = Recorder(SampleWriter(store), margin=0.2, crop_size=224)
    recorder.start(BURST)
    start, n, late = time.perf_counter(), 0, []
    while recorder.status().phase != "idle" or sum(recorder.status().saved.values()) < BURST.count:
        if fps:
            due = start + n / fps
            time.sleep(max(0.0, due - time.perf_counter()))
        frame = frames[n % len(frames)].copy()
        annotate_capture_frame(frame, detector.detect(frame), recorder)
        n += 1
        if fps and time.perf_counter() > start + n / fps:  # this frame took longer than a camera frame: skip one
            late.append(n)
            n += 1
    seconds = time.perf_counter() - start
    saved = store.samples()
    with_features = 0
    if key is not None:
        with_features = len(saved) - len(FeatureStore(store.root, key.slug()).missing(s.id for s in saved))
    shown = (n - len(late)) / seconds
    return {"fps": shown, "seconds": seconds, "saved": len(saved), "with_features": with_features}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="bursts per mode, interleaved")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-recording-"))
    settings = Settings(
        workspace=root / "ws", models_dir=require_shared("models"), cache_dir=root / "cache", allow_downloads=False
    )
    photos_root, detector = lfw_detector()
    frames = [compose(load_photos(photos_root, 1), 1, i) for i in range(60)]
    modes: dict[str, BaseKey | None] = {
        "no features (baseline)": None,
        "mini-xception features": BaseKey.of(TrainConfig.for_backbone("mini-xception")),
        "densenet201 features": BaseKey.of(
            TrainConfig.for_backbone("densenet201", weights=str(densenet_weights_file(root)))
        ),
    }
    for base in filter(None, modes.values()):
        log(f"preparing {base.slug()}")
        subprocess.run(prepare.base_command(settings, base), check=True, capture_output=True)
    result: dict = {"burst": {"crops": BURST.count, "interval_s": BURST.interval_s}}
    for pace, fps in (("camera_30fps", 30.0), ("capacity", None)):
        runs: dict[str, list[dict]] = {name: [] for name in modes}
        for repeat in range(args.repeats):  # interleaved, so a change in machine load hits every mode alike
            for name, key in modes.items():
                log(f"{pace} burst {repeat + 1}: {name}")
                workspace = root / f"ws-{pace}-{repeat}-{list(modes).index(name)}"
                runs[name].append(record(settings, key, frames, detector, workspace, fps))
        baseline = statistics.median(r["fps"] for r in runs["no features (baseline)"])
        result[pace] = {
            name: {
                "fps_median": round(statistics.median(r["fps"] for r in found), 1),
                "fps_vs_baseline": round(statistics.median(r["fps"] for r in found) / baseline, 3),
                "with_features": [r["with_features"] for r in found],
            }
            for name, found in runs.items()
        }
    result["machine"] = {**machine(), "load_avg_1_5_15": [round(x, 2) for x in psutil.getloadavg()]}
    result["command"] = "python -m bench.recording " + " ".join(sys.argv[1:])
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
