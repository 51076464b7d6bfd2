"""The errors a user can cause, with messages written for that user.

The CLI maps them to exit status 2 and prints the message; the pages show it with ``st.error``.
Anything else that escapes is a bug and keeps its traceback.
"""


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
