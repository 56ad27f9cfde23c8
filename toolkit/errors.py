"""Errors meant for the person running the toolkit.

A `UserError` says what is wrong and how to fix it in one or two lines; entry points
print it without a stack trace and exit with status 2, as they do a file system's refusal
(`file_system_refusal`). Everything else is a bug.
"""

import errno

# what a file system refuses (a full disk, no permission, a file where a folder must go, a vanished file)
_FILE_SYSTEM_REFUSALS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EEXIST,
                         errno.EISDIR, errno.ENOTDIR, errno.ENOENT}


def file_system_refusal(error: OSError) -> str | None:
    """One line saying what a file system refused and where ('PATH: No space left on device'), or None when the
    error is not such a refusal (a bug, whose traceback is wanted)."""
    if error.errno not in _FILE_SYSTEM_REFUSALS or not error.filename:
        return None
    return f"{error.filename2 or error.filename}: {error.strerror}"


class UserError(Exception):
    """Bad input from the user: a config key, a data folder, a checkpoint, a file."""


class ConfigError(UserError):
    """An unknown key, a value of the wrong type or out of range."""


class DataError(UserError):
    """A data folder or image that cannot be used as asked."""


class CheckpointError(UserError):
    """A checkpoint that is missing, incomplete or from another model or class list."""


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""
