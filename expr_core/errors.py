"""The errors a user can cause, with messages written for that user.

The CLI maps them to exit status 2 and prints the message; the pages show it with ``st.error``.
Anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class UserError(Exception):
    """Something the user can fix; ``str(error)`` says what happened and what to do."""


class InvalidLabel(UserError):
    """A label name that cannot be used."""


class BadInput(UserError):
    """An input file, folder or archive that cannot be read or is unsafe."""


class ModelFileError(UserError):
    """A model file that is missing, corrupt or cannot be downloaded."""


class DatasetError(UserError):
    """The dataset cannot serve the request (unknown label, missing samples, ...)."""


class DiskFull(UserError):
    """A write failed because the disk (or the user's quota) is full."""


class CorruptFile(UserError, ValueError):
    """A state file of the app (labels, status, active model, review item, ...) that is not valid JSON.

    Also a ValueError, as the JSON error it replaces was: code that tolerates a damaged cache file still does."""


def os_problem(exc: OSError) -> UserError:
    """An OS error (no permission, a file where a folder should be, ...) as ``FILE: reason`` for users."""
    where = exc.filename if exc.filename is not None else "a file"
    return UserError(f"{where}: {exc.strerror or exc}.")


def disk_full(where: object) -> DiskFull:
    """The message for a full disk while writing to ``where`` (a file or folder)."""
    return DiskFull(
        f"The disk is full: could not write to {where}. Free some space (for example delete models "
        "or video jobs you no longer need) and try again."
    )


def is_disk_full(exc: BaseException | None) -> bool:
    """Whether ``exc``, or an error it was raised from or while handling, is a full disk or quota."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, DiskFull) or (isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False
