"""Forked worker pools for decoding images (the data doctor, predict).

A worker inherits its parent's signal handlers. A training run in the same process sets a SIGTERM handler
that only asks the loop to stop (toolkit.run.install_stop_handler); a worker carrying it would survive the
SIGTERM its pool sends on exit, and the pool would wait for it forever. Every worker here starts with the
default SIGTERM (end the process) instead, whatever the parent had.
"""

from __future__ import annotations

import multiprocessing
import signal


def default_sigterm() -> None:
    """A forked worker's first act: SIGTERM ends it (its parent's handler, if any, is not its own)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def forked_pool(workers: int):
    """A fork-context Pool of max(1, workers) processes whose SIGTERM is the default one."""
    return multiprocessing.get_context("fork").Pool(max(1, workers), initializer=default_sigterm)
