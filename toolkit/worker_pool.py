"""Forked worker pools for decoding images (the data doctor, predict).

A forked worker inherits its parent's signal handlers. A training run in the same process sets a SIGTERM
handler that only asks the loop to stop (toolkit.run.install_stop_handler); a worker carrying it survives the
SIGTERM that Pool.terminate sends, and the pool then waits for it forever (a hang seen in CI). So here:
- the workers are forked with SIGTERM blocked and unblock it only once its handler is the default one: a
  SIGTERM that arrives before a worker has started is kept pending, then ends it;
- a pool whose work is done is closed and joined (every worker reads its end-of-work marker and leaves);
  only a pool left by an exception is terminated.
"""

from __future__ import annotations

import multiprocessing
import signal
from contextlib import contextmanager


def default_sigterm() -> None:
    """A forked worker's first act: SIGTERM ends it (its parent's handler, if any, is not its own)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


@contextmanager
def forked_pool(workers: int):
    """A fork-context Pool of max(1, workers) processes whose SIGTERM is the default one, ended cleanly."""
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # the workers are born with it blocked
    try:
        pool = multiprocessing.get_context("fork").Pool(max(1, workers), initializer=default_sigterm)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)  # a SIGTERM meanwhile reaches this process now
    try:
        yield pool
    except BaseException:
        pool.terminate()
        raise
    else:
        pool.close()
    finally:
        pool.join()
