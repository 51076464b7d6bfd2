"""Reading untrusted image files, folders and zip archives without surprises.

Every way an upload can be bad ends in :class:`BadInput` with a message naming the file: empty,
not an image, truncated, too many pixels, an archive that would expand too far (zip bomb), or an
archive member that tries to escape with ``../``, an absolute path or a link.
"""

from __future__ import annotations

import functools
import io
import stat
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from expr_core.errors import BadInput

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}
MAX_PIXELS = 40_000_000  # a 40-megapixel photo is plenty; more is almost surely an attack or a mistake
MAX_FILE_BYTES = 50 * 1024 * 1024
MAX_ZIP_MEMBERS = 50_000
MAX_ZIP_TOTAL_BYTES = 2 * 1024**3
MAX_ZIP_RATIO = 200  # uncompressed/compressed; images barely compress, bombs compress a thousandfold


@dataclass(frozen=True)
class RawImage:
    """One image file before decoding: its name, its parent folder's name (a label hint), and how to read its
    bytes. They are read only when the image is decoded, so an import holds one file's bytes at a time
    however much a folder or an archive holds (a 3.5 MB zip of compressible members once took 520 MB)."""

    name: str
    folder: str | None
    read: Callable[[], bytes]

    @classmethod
    def of(cls, name: str, data: bytes, folder: str | None = None) -> RawImage:
        """An image whose bytes are already here (a browser upload)."""
        return cls(name, folder, lambda: data)


def _rgb8(img: Image.Image) -> np.ndarray:
    """8-bit RGB of any mode. Pillow's own conversion clips 16-bit grayscale (PNG, TIFF: mode I or I;16) and
    float images at 255, so a scan or a camera's raw export came out all white; those are scaled instead."""
    if img.mode not in ("I", "F") and not img.mode.startswith("I;16"):
        return np.asarray(img.convert("RGB"))
    values = np.asarray(img, dtype=np.float64)
    if img.mode == "F":  # floats: 0..1 when they fit there, else whatever range they have
        top = 1.0 if values.max(initial=0) <= 1.0 else max(values.max(initial=0), 1.0)
    else:  # 16-bit samples (mode I holds them as 32-bit integers)
        top = 65535.0 if values.max(initial=0) <= 65535 else float(values.max())
    gray = np.clip(np.rint(values / top * 255), 0, 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=2)


def decode_image(data: bytes, name: str) -> np.ndarray:
    """Decode image bytes to a BGR uint8 array, refusing empty, corrupt, truncated or huge images."""
    if not data:
        raise BadInput(f"{name}: the file is empty (0 bytes).")
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > MAX_PIXELS:
                raise BadInput(
                    f"{name}: {img.width}x{img.height} pixels is larger than the {MAX_PIXELS // 1_000_000} "
                    "megapixel limit; scale it down first."
                )
            img.load()
            # Phone photos store "rotate me" in EXIF; without this a portrait selfie is decoded sideways.
            rgb = _rgb8(ImageOps.exif_transpose(img))
    except BadInput:
        raise
    except Image.DecompressionBombError as exc:  # Pillow refuses far larger images itself, in Image.open
        raise BadInput(
            f"{name}: larger than the {MAX_PIXELS // 1_000_000} megapixel limit ({exc}); scale it down first."
        ) from exc
    except UnidentifiedImageError as exc:
        raise BadInput(f"{name}: not an image file this app can read (JPEG, PNG, BMP, WebP, TIFF, GIF).") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadInput(f"{name}: the image is truncated or corrupt ({exc}).") from exc
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)


def is_image_name(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES


READABLE_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)


def _check_member(info: zipfile.ZipInfo, archive: str) -> None:
    path = PurePosixPath(info.filename)
    if not path.parts or info.filename.startswith(("/", "\\")) or ".." in path.parts or ":" in path.parts[0]:
        raise BadInput(f"{archive}: member {info.filename!r} points outside the archive; refusing the whole archive.")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise BadInput(f"{archive}: member {info.filename!r} is a link; refusing the whole archive.")
    if info.flag_bits & 0x1:
        raise BadInput(
            f"{archive}: member {info.filename!r} is encrypted (password-protected); zip it without a password."
        )
    if info.compress_type not in READABLE_METHODS:
        raise BadInput(
            f"{archive}: member {info.filename!r} uses compression method {info.compress_type}, which this app cannot "
            "read; zip it again with the usual method (deflate)."
        )
    if info.file_size > MAX_FILE_BYTES:
        raise BadInput(f"{archive}: member {info.filename!r} is {info.file_size:,} bytes, over the per-file limit.")
    if info.compress_size and info.file_size / info.compress_size > MAX_ZIP_RATIO:
        raise BadInput(
            f"{archive}: member {info.filename!r} expands {info.file_size // info.compress_size}x; "
            "this looks like a zip bomb."
        )


def open_zip(data: bytes, archive: str) -> zipfile.ZipFile:
    """Open an archive after checking every member, so a bad archive is refused before anything is read."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise BadInput(f"{archive}: not a readable zip archive ({exc}).") from exc
    if len(infos) > MAX_ZIP_MEMBERS:
        raise BadInput(f"{archive}: {len(infos):,} members is more than the {MAX_ZIP_MEMBERS:,} allowed.")
    total = 0
    for info in infos:
        _check_member(info, archive)
        total += info.file_size
    if total > MAX_ZIP_TOTAL_BYTES:
        raise BadInput(f"{archive}: would expand to {total:,} bytes, over the {MAX_ZIP_TOTAL_BYTES:,} limit.")
    return zf


def iter_zip_images(data: bytes, archive: str) -> Iterator[RawImage]:
    """Image members of a checked archive (other members are ignored), with their folder names."""
    zf = open_zip(data, archive)
    for info in zf.infolist():
        if info.is_dir() or not is_image_name(info.filename) or PurePosixPath(info.filename).name.startswith("."):
            continue
        parent = PurePosixPath(info.filename).parent.name or None
        yield RawImage(f"{archive}/{info.filename}", parent, functools.partial(_read_member, zf, info, archive))


_UNREADABLE = (zipfile.BadZipFile, OSError, ValueError, EOFError, RuntimeError, NotImplementedError, zlib.error)


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, archive: str) -> bytes:
    try:
        return zf.read(info)
    except _UNREADABLE as exc:  # corrupt data (a bad CRC, a broken deflate stream), or what the checks missed
        raise BadInput(f"{archive}: member {info.filename!r} cannot be read ({exc}).") from exc


def read_file(path: Path) -> bytes:
    """Bytes of a user-named file, with messages for the usual mistakes."""
    if not path.exists():
        raise BadInput(f"{path}: no such file or folder.")
    if path.is_symlink() and not path.resolve().exists():
        raise BadInput(f"{path}: a broken link.")
    if path.is_dir():
        raise BadInput(f"{path}: a folder, not an image file.")
    limit = MAX_ZIP_TOTAL_BYTES if path.suffix.lower() == ".zip" else MAX_FILE_BYTES
    try:
        # A FIFO would block the read forever and /dev/zero never ends: regular files only, and never more
        # than the limit, whatever the size the file system reports.
        if not stat.S_ISREG(path.stat().st_mode):
            raise BadInput(f"{path}: not a regular file (a device, pipe or socket); name an image file.")
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise BadInput(f"{path}: cannot be read ({exc.strerror or exc}).") from exc
    if len(data) > limit:
        raise BadInput(
            f"{path}: more than the {limit:,}-byte limit for one {'archive' if limit != MAX_FILE_BYTES else 'image'}."
        )
    return data


def iter_path_images(path: Path) -> Iterator[RawImage]:
    """Images in a file, a folder (recursively; labels from folder names) or a zip archive."""
    if path.is_dir():
        for child in sorted(p for p in path.rglob("*") if p.is_file() and is_image_name(p.name)):
            if not any(part.startswith(".") for part in child.relative_to(path).parts):
                folder = child.parent.name if child.parent != path else None
                yield RawImage(str(child), folder, functools.partial(read_file, child))
        return
    data = read_file(path)
    if path.suffix.lower() == ".zip" or data[:4] == b"PK\x03\x04":
        yield from iter_zip_images(data, str(path))
    else:
        yield RawImage.of(str(path), data)
