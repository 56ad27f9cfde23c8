"""Errors meant for the person running the toolkit.

A `UserError` says what is wrong and how to fix it in one or two lines; entry points
print it without a stack trace and exit with status 2. Everything else is a bug.
"""


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
