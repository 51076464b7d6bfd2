"""Model files: pinned URL and digest, a local override folder, a download cache, atomic downloads.

Lookup order for a file: the models folder (``EXPR_MODELS_DIR``), then the cache, then a download
into the cache. Every file is verified against its pinned digest wherever it came from, so a
truncated or substituted file is refused with a message saying what to do.

Why not pooch: it downloads, verifies and caches as well, but it knows only its own cache. What this
module adds is the order above (a user's own file is checked and refused with a message, never replaced;
a corrupt cache copy is fetched again), ``EXPR_DOWNLOADS=0``, and errors that name the file, the folder
and the URL; with pooch those would be the same code wrapped around one call, plus a dependency.
"""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from expr_core.atomic import atomic_writer
from expr_core.errors import ModelFileError
from expr_core.settings import Settings

DOWNLOAD_TIMEOUT_S = 30


@dataclass(frozen=True)
class Asset:
    """One model file. ``digest`` is ``"algo:hex"``; ``None`` means no published digest exists."""

    filename: str
    url: str
    digest: str | None
    description: str


YUNET = Asset(
    filename="face_detection_yunet_2026may.onnx",
    url=(
        "https://media.githubusercontent.com/media/opencv/opencv_zoo/26cc381e4d2594bb9f47a26eb8fd96c94a13660d/"
        "models/face_detection_yunet/face_detection_yunet_2026may.onnx"
    ),
    digest="sha256:ebafce4e3c118d6554634be5c27ab333b4c047a9a8c3faf1d7cf93101c22f0f0",
    description="YuNet face detector (OpenCV Zoo, MIT licence)",
)
# The original project's SSD detector. OpenCV publishes only a SHA-1 for the weights (samples/dnn/models.yml);
# the prototxt has no published digest and is checked by OpenCV when it parses it.
SSD_CAFFEMODEL = Asset(
    filename="res10_300x300_ssd_iter_140000.caffemodel",
    url=(
        "https://raw.githubusercontent.com/opencv/opencv_3rdparty/dnn_samples_face_detector_20170830/"
        "res10_300x300_ssd_iter_140000.caffemodel"
    ),
    digest="sha1:15aa726b4d46d9f023526d85537db81cbc8dd566",
    description="SSD res10 face detector weights (OpenCV)",
)
SSD_PROTOTXT = Asset(
    filename="deploy.prototxt",
    url="https://raw.githubusercontent.com/opencv/opencv/4.x/samples/dnn/face_detector/deploy.prototxt",
    digest=None,
    description="SSD res10 face detector network description (OpenCV)",
)


def file_digest(path: Path, algo: str) -> str:
    """Hex digest of a file, read in chunks so large weights do not load into memory."""
    hasher = hashlib.new(algo)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            hasher.update(chunk)
    return hasher.hexdigest()


def _check_digest(asset: Asset, actual: str, where: str) -> None:
    algo, expected = asset.digest.split(":", 1) if asset.digest else ("", "")
    if asset.digest and actual != expected:
        raise ModelFileError(
            f"{where} is not the expected {asset.description}: its {algo.upper()} is {actual[:12]}..., "
            f"expected {expected[:12]}.... The file is corrupt or a different version; delete it and put the "
            f"right file there (download: {asset.url})."
        )


def _verify(asset: Asset, path: Path) -> None:
    if asset.digest:
        _check_digest(asset, file_digest(path, asset.digest.split(":", 1)[0]), str(path))


def _download(asset: Asset, target: Path) -> None:
    """Download into ``target`` atomically; the digest is checked before the file becomes visible."""
    hasher = hashlib.new(asset.digest.split(":", 1)[0] if asset.digest else "sha256")
    try:
        with urllib.request.urlopen(asset.url, timeout=DOWNLOAD_TIMEOUT_S) as response, atomic_writer(target) as out:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                hasher.update(chunk)
                out.write(chunk)
            _check_digest(asset, hasher.hexdigest(), f"The download of {asset.url}")
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise ModelFileError(
            f"Could not download the {asset.description} ({exc}). Download {asset.url} on a machine with "
            f"internet access and put it in the models folder as {asset.filename} "
            "(set EXPR_MODELS_DIR to choose the folder)."
        ) from exc


def locate(asset: Asset, settings: Settings) -> Path:
    """Return a verified local path for ``asset``, downloading it into the cache if allowed."""
    local = Path(settings.models_dir) / asset.filename
    if local.is_file():
        _verify(asset, local)  # the user's own file: refuse it with a message, never replace it
        return local
    target = Path(settings.cache_dir) / asset.filename
    if target.is_file():
        try:
            _verify(asset, target)
            return target
        except ModelFileError:
            if not settings.allow_downloads:
                raise
            target.unlink()  # our own cache copy is corrupt: fetch it again
    if not settings.allow_downloads:
        raise ModelFileError(
            f"The {asset.description} was not found: put {asset.filename} in {settings.models_dir} "
            f"(EXPR_MODELS_DIR) or allow downloads (EXPR_DOWNLOADS=1) to fetch it from {asset.url}."
        )
    _download(asset, target)
    return target
