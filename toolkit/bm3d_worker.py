"""CBM3D on one image, in a worker process of its own.

Kept free of torch: the pool that runs it starts its workers fresh ('spawn'), because forking a process
whose OpenMP runtime torch has started can deadlock the child, and a light module starts in a moment.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np


def bm3d_one(job: tuple[np.ndarray, float]) -> np.ndarray:
    """job: ((H, W, 3) float32 image, noise std on the image's scale) -> the denoised (H, W, 3) image."""
    import bm3d

    image, sigma = job
    return np.asarray(bm3d.bm3d_rgb(image, sigma_psd=sigma), dtype=np.float32)


@contextmanager
def bm3d_pool(workers: int):
    """A function jobs -> [bm3d_one(job) for job in jobs], one image per core on `workers` processes started once
    for the whole `with` block (each imports the library once, however many calls follow); in this process when
    workers <= 1."""
    import multiprocessing

    if workers <= 1:
        yield lambda jobs: [bm3d_one(job) for job in jobs]
        return
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        yield lambda jobs: pool.map(bm3d_one, jobs, chunksize=1)
