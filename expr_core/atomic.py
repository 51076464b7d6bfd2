"""Crash-safe file writes: write a temporary file beside the target, fsync it, then rename.

A reader therefore sees either the old file or the complete new one, never a half-written file,
even if the process is killed mid-write. Temporary files start with ``.tmp-`` so that directory
listings can ignore them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from expr_core.errors import CorruptFile, DiskFull, UserError, disk_full, is_disk_full

TMP_PREFIX = ".tmp-"


@contextlib.contextmanager
def atomic_writer(path: Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Yield a file object whose content replaces ``path`` only if the block completes.

    A full disk (in the block or while saving) raises :class:`~expr_core.errors.DiskFull`, a message for the user.
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a folder; name a file to write.")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a file should get what open() gives it
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if is_disk_full(exc) and not isinstance(exc, DiskFull):
            raise disk_full(path) from exc
        raise


def _umask() -> int:
    """The process' umask (reading it means setting it: set back at once). A group-shared workspace (umask 002)
    gets group-writable files, as with any other program."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_bytes(path: Path, data: bytes) -> None:
    """Atomically replace ``path`` with ``data``."""
    with atomic_writer(path, "wb") as handle:
        handle.write(data)


def write_json(path: Path, obj: Any) -> None:
    """Atomically replace ``path`` with ``obj`` as indented JSON."""
    with atomic_writer(path, "w") as handle:
        json.dump(obj, handle, indent=2, ensure_ascii=False)


def read_json(path: Path, default: Any = None) -> Any:
    """Read a JSON file written by :func:`write_json`; ``default`` when it does not exist.

    A file that is not valid JSON (edited by hand, or damaged) raises :class:`~expr_core.errors.CorruptFile`
    naming it: the app never writes one (every write is atomic).
    """
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return default
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptFile(f"{path}: not valid JSON ({exc}); restore it from a backup or delete it.") from exc


def fill_folder(target: Path, fill: Callable[[Path], None], ready: Callable[[Path], bool]) -> Path:
    """Make ``target`` by filling a fresh folder beside it and renaming it into place; returns ``target``.

    Readers see no folder or a complete one. ``ready(target)`` says whether a complete one is already
    there (another process may finish first: then its folder is kept and ours is dropped).
    """
    if ready(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=target.parent))
    try:
        fill(staging)
        if not ready(target):
            shutil.rmtree(target, ignore_errors=True)  # a leftover that is not complete
            os.rename(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
