"""Errors meant for the person running the toolkit.

A `UserError` says what is wrong and how to fix it in one or two lines; entry points
print it without a stack trace and exit with status 2, as they do a file system's refusal
(`file_system_refusal`). Everything else is a bug.
"""

import contextlib
import errno
import hashlib
import os
import select
import sys
import tempfile
import time
import traceback
from pathlib import Path

# what a file system refuses (a full disk, no permission, a file where a folder must go, a vanished file)
_FILE_SYSTEM_REFUSALS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EEXIST,
                         errno.EISDIR, errno.ENOTDIR, errno.ENOENT}


def file_system_refusal(error: OSError) -> str | None:
    """One line saying what a file system refused and where ('PATH: No space left on device'), or None when the
    error is not such a refusal (a bug, whose traceback is wanted)."""
    if error.errno not in _FILE_SYSTEM_REFUSALS or not error.filename:
        return None
    return f"{error.filename2 or error.filename}: {error.strerror}"


# the exit status of a shell pipeline's writer whose reader went away (128 + SIGPIPE), as `yes | head` leaves it
STDOUT_CLOSED = 141


def reader_of_stdout_gone() -> bool:
    """Whether standard output is a pipe or socket whose reader has gone (`toolkit ... | head` after head
    exits). If so, standard output is pointed at /dev/null, so that Python's last flush at exit does not raise
    again, and the caller should stop quietly with STDOUT_CLOSED, as Unix tools do; a broken pipe elsewhere (a
    worker's) is a bug, whose traceback is wanted."""
    try:
        descriptor = sys.stdout.fileno()
        poller = select.poll()
        poller.register(descriptor, select.POLLOUT)
        gone = any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no real stdout (captured, closed): not this case
        return False
    if gone:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, descriptor)
        os.close(devnull)
    return gone


def report_failure(error: Exception) -> int:
    """What an entry point (the toolkit command, a recipe) says about an exception it did not expect, and the exit
    status it then returns: nothing and STDOUT_CLOSED when the reader of its output has gone; one line and 2 for a
    file system's refusal; the traceback and 1 for anything else, a bug. Call it inside the `except` block."""
    if isinstance(error, BrokenPipeError) and reader_of_stdout_gone():
        return STDOUT_CLOSED
    refusal = file_system_refusal(error) if isinstance(error, OSError) else None
    if refusal is not None:
        print(f"error: {refusal}", file=sys.stderr, flush=True)
        return 2
    traceback.print_exc()
    return 1


def say_once_per_machine(line: str) -> None:
    """Print a line to standard error; with several processes (WORLD_SIZE > 1), once per launch on this machine: a
    user error every process finds alike (a batch larger than the data) is said once, not once per process, and a
    line that one process alone has is said by it. A launch's processes on one machine share their parent (torchrun's
    or accelerate's agent, SLURM's step daemon); the first to create the line's marker file in the temporary folder
    says it, and the others, finding it made moments before, say nothing."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not _first_to_say(line):
        return
    print(line, file=sys.stderr, flush=True)


# a launch's processes find the same error within moments of each other; a marker older than this is another
# launch's (a rerun from the same parent, such as a shell that sets RANK itself), so its line is said again
MARKER_FRESH_S = 120


def _first_to_say(line: str) -> bool:
    folder = Path(tempfile.gettempdir()) / f"scene-toolkit-said-{os.getuid()}"
    launch = "-".join([str(os.getppid()), os.environ.get("MASTER_PORT", ""), os.environ.get("TORCHELASTIC_RUN_ID", "")])
    marker = folder / f"{launch}-{hashlib.sha256(line.encode()).hexdigest()[:16]}"
    try:
        folder.mkdir(exist_ok=True)
        for old in folder.iterdir():
            with contextlib.suppress(OSError):  # another process may remove it first
                if old.stat().st_mtime < time.time() - MARKER_FRESH_S:
                    old.unlink()
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    except OSError:  # no temporary folder this user can write in: say it
        return True
    return True


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
