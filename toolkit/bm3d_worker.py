"""CBM3D on one image, in a worker process of its own.

Kept free of torch: the pool that runs it starts its workers fresh ('spawn'), because forking a process
whose OpenMP runtime torch has started can deadlock the child, and a light module starts in a moment.
"""

from __future__ import annotations

import numpy as np


def bm3d_one(job: tuple[np.ndarray, float]) -> np.ndarray:
    """job: ((H, W, 3) float32 image, noise std on the image's scale) -> the denoised (H, W, 3) image."""
    import bm3d

    image, sigma = job
    return np.asarray(bm3d.bm3d_rgb(image, sigma_psd=sigma), dtype=np.float32)


def bm3d_many(jobs: list[tuple[np.ndarray, float]], workers: int) -> list[np.ndarray]:
    """bm3d_one over jobs, one image per core (the library itself runs on one)."""
    import multiprocessing

    if workers <= 1 or len(jobs) <= 1:
        return [bm3d_one(job) for job in jobs]
    with multiprocessing.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
        return pool.map(bm3d_one, jobs, chunksize=1)
