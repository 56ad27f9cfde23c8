"""Keeping freed memory in the process (Linux, glibc) instead of handing it back to the system after every batch.

glibc serves large blocks (from 128 KB, growing to 32 MB as they are freed) with their own mappings and trims its
heap once 128 KB lie free at its top, so a batch's activations come back from the system as fresh pages at every
batch: on 2 cores of an AMD EPYC, `toolkit evaluate` of EfficientNet-Lite0 in batches of 64 spent 14 ms of system
time per image beside 20 of its own (page faults). keep_freed_memory serves blocks up to 32 MB from the heap and
keeps up to 512 MB of it free: the same scoring then took 8.1 ms per image in batches of 8 against 17.6 in batches
of 64 as before (`python scripts/inference_memory.py RUN`; predict_files keeps it). Every training run keeps it
too (start_run): the classifiers' first training steps ran 1.12-1.19x faster so (`toolkit benchmark`'s step table, 6
steps each, in two processes), the blind denoiser's, whose patches are small, level; whole runs were level
(EfficientNet-Lite0 and -Lite2, top mode: glibc raises its own thresholds as a run frees large blocks).
"""

from __future__ import annotations

import ctypes
import platform

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def keep_freed_memory(mmap_threshold: int = 32 * 2**20, trim_threshold: int = 512 * 2**20) -> bool:
    """Ask glibc to serve blocks up to `mmap_threshold` bytes from its heap and to keep up to `trim_threshold` bytes
    of it free for the next batch. True when it took both; False where there is no glibc (macOS, musl): nothing
    changes there."""
    if platform.system() != "Linux":
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(M_TRIM_THRESHOLD, trim_threshold))
