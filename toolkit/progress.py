"""Progress bars for work that takes more than a few seconds, the way tqdm-based tools show them.

A bar appears only on the main process and only when the stream is a terminal: CI logs and
redirected output keep their plain lines. SCENE_TOOLKIT_PROGRESS=1 forces bars on, 0 off.
"""

from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm


def bars_enabled(stream=None, main_process: bool = True) -> bool:
    forced = os.environ.get("SCENE_TOOLKIT_PROGRESS", "").strip()
    if forced in ("0", "1"):
        return forced == "1" and main_process
    stream = stream if stream is not None else sys.stderr
    return main_process and hasattr(stream, "isatty") and stream.isatty()


def progress_bar(total: int | None, description: str, unit: str = "it", initial: int = 0,
                 main_process: bool = True, **options) -> tqdm:
    """A tqdm bar on stderr (rate, elapsed and ETA included), disabled where bars are off (or disable=True). leave:
    False for a bar inside another's step (it is cleared when done)."""
    options.setdefault("leave", True)
    disable = options.pop("disable", False) or not bars_enabled(sys.stderr, main_process)
    return tqdm(total=total, initial=initial, desc=description, unit=unit, file=sys.stderr, dynamic_ncols=True,
                disable=disable, **options)


def tracked(iterable, total: int | None, description: str, unit: str = "it", main_process: bool = True):
    """Iterate with a bar (see progress_bar)."""
    with progress_bar(total, description, unit, main_process=main_process) as bar:
        for item in iterable:
            yield item
            bar.update(1)


def say(message: str, main_process: bool = True) -> None:
    """Print a line without breaking an open bar (tqdm.write moves it out of the way)."""
    if main_process:
        tqdm.write(message, file=sys.stdout)
        sys.stdout.flush()
