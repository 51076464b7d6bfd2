"""Helpers shared by the benchmarks: where the shared data lives, timing summaries, peak memory."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EXPR_SHARED", ROOT.parent / "shared"))


def require_shared(sub: str) -> Path:
    path = SHARED / sub
    if not path.exists():
        raise SystemExit(f"benchmark needs {path} (set EXPR_SHARED to the shared folder)")
    return path


def summary_ms(seconds: list[float]) -> dict[str, float]:
    """min / p50 / p95 / mean of durations, in milliseconds."""
    ms = np.asarray(seconds) * 1000
    return {
        k: round(float(v), 2)
        for k, v in {
            "min": ms.min(),
            "p50": np.percentile(ms, 50),
            "p95": np.percentile(ms, 95),
            "mean": ms.mean(),
        }.items()
    }


SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8")


def cpu() -> dict[str, object]:
    """The CPU's model name and the vector extensions that change LiteRT and oneDNN speed (from /proc/cpuinfo):
    machines here differ (AVX-512 VNNI or only AVX2), so every result says which one measured it."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {"model": platform.processor() or platform.machine(), "flags": []}
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = set(fields.get("flags", "").split())
    return {"model": fields.get("model name", platform.machine()), "flags": [f for f in SIMD_FLAGS if f in flags]}


def machine() -> dict[str, object]:
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far."""
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


_SAVE_WEIGHTS = """
import sys, keras
keras.applications.DenseNet201(include_top=False, weights=None, input_shape=(96, 96, 3)).save_weights(sys.argv[1])
"""


def densenet_weights_file(folder: Path) -> Path:
    """A DenseNet201 no-top weights file saved from a random network, in a child process (keeps TensorFlow
    out of this one). Training from a weights file takes the ImageNet code path (BatchNorm frozen in phase
    2) with the same FLOPs, and ImageNet weights cannot be downloaded here."""
    path = Path(folder) / "densenet201-notop.weights.h5"
    subprocess.run([sys.executable, "-c", _SAVE_WEIGHTS, str(path)], check=True, capture_output=True)
    return path
