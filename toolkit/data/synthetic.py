"""A small procedural stand-in for the Intel scene dataset, so every command runs anywhere.

Six classes with the Intel names, each drawn from its own random recipe (sky and peaks for
mountains, waves for sea, trunks for forest, ...), with enough variation that a model has to
learn something, and written in the Intel layout (seg_train/, seg_test/, seg_pred/).
It is for smoke tests and demos: accuracy on it says nothing about real scenes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from toolkit.runs import write_text_whole

SYNTHETIC_CLASSES = ("buildings", "forest", "glacier", "mountain", "sea", "street")
SYNTHETIC_VERSION = 1
MARKER = "SYNTHETIC_DATA.txt"


def _sky(rng, size, horizon):
    top = rng.uniform([90, 140, 200], [140, 190, 250])
    rows = np.linspace(0, 1, horizon)[:, None, None]
    band = top * (1 - 0.4 * rows) + 255 * 0.4 * rows
    return np.broadcast_to(band, (horizon, size, 3))


def draw_scene(name: str, rng: np.random.Generator, size: int = 150) -> np.ndarray:
    """One (size, size, 3) uint8 image of the named class."""
    image = np.zeros((size, size, 3))
    ys, xs = np.mgrid[0:size, 0:size]
    if name == "buildings":
        image[:] = rng.uniform(60, 110, 3)
        for _ in range(rng.integers(3, 7)):  # facades with window grids
            x0, w = rng.integers(0, size - 20), rng.integers(20, 60)
            y0 = rng.integers(0, size // 2)
            image[y0:, x0:x0 + w] = rng.uniform(90, 200, 3)
            step = rng.integers(6, 12)
            window = (((ys - y0) % step) < step // 2) & (((xs - x0) % step) < step // 2)
            region = (ys >= y0) & (xs >= x0) & (xs < x0 + w) & window
            image[region] = rng.uniform(20, 80, 3)
    elif name == "forest":
        image[:] = rng.uniform([10, 50, 10], [50, 110, 40])
        for _ in range(rng.integers(8, 16)):  # trunks
            x0, w = rng.integers(0, size), rng.integers(2, 8)
            image[:, x0:x0 + w] = rng.uniform([50, 30, 10], [100, 70, 40])
        image += rng.normal(0, 18, image.shape) * np.array([0.5, 1.0, 0.5])
    elif name == "glacier":
        image[:] = rng.uniform([200, 220, 235], [240, 250, 255])
        for _ in range(rng.integers(4, 10)):  # blue crevasses
            slope, offset = rng.uniform(-1.5, 1.5), rng.uniform(0, size)
            crack = np.abs(ys - (slope * xs + offset)) < rng.uniform(1, 3)
            image[crack] = rng.uniform([60, 120, 170], [120, 170, 220])
    elif name == "mountain":
        horizon = size
        image[:] = _sky(rng, size, horizon)
        for _ in range(rng.integers(1, 4)):  # peaks
            peak_x, peak_y = rng.uniform(0, size), rng.uniform(size * 0.15, size * 0.5)
            slope = rng.uniform(0.6, 1.6)
            inside = ys > peak_y + slope * np.abs(xs - peak_x)
            image[inside] = rng.uniform([80, 70, 60], [140, 120, 100])
            snow = inside & (ys < peak_y + size * 0.08 + slope * np.abs(xs - peak_x))
            image[snow] = 235
    elif name == "sea":
        horizon = int(rng.uniform(0.3, 0.55) * size)
        image[:horizon] = _sky(rng, size, horizon)
        phase, frequency = rng.uniform(0, 6.3), rng.uniform(0.15, 0.4)
        waves = 0.5 + 0.5 * np.sin(frequency * ys + 0.05 * xs + phase)
        water = rng.uniform([10, 60, 110], [40, 110, 170])
        image[horizon:] = (water * (0.7 + 0.3 * waves[..., None]))[horizon:]
    elif name == "street":
        image[:] = _sky(rng, size, size)
        vanish_x = rng.uniform(0.3, 0.7) * size
        vanish_y = rng.uniform(0.3, 0.5) * size
        road = (ys > vanish_y) & (np.abs(xs - vanish_x) < (ys - vanish_y) * rng.uniform(0.8, 1.4))
        image[ys > vanish_y] = rng.uniform(90, 150, 3)  # pavements and facades
        image[road] = rng.uniform(40, 80)
        lane = road & (np.abs(xs - vanish_x) < (ys - vanish_y) * 0.04) & ((ys // 8) % 2 == 0)
        image[lane] = 230
    else:
        raise ValueError(f"no synthetic recipe for class {name!r}")
    image *= rng.uniform(0.75, 1.2)  # exposure
    image += rng.normal(0, 6, image.shape)  # sensor noise
    return np.clip(image, 0, 255).astype(np.uint8)


def write_synthetic_scenes(root: Path | str, train_per_class: int = 60, test_per_class: int = 20,
                           pred_images: int = 30, size: int = 150, seed: int = 0) -> Path:
    """Write the synthetic dataset in the Intel layout under `root` (once; reused if complete)."""
    root = Path(root)
    marker = root / MARKER
    wanted = f"version={SYNTHETIC_VERSION} train={train_per_class} test={test_per_class} pred={pred_images} " \
             f"size={size} seed={seed}\n"
    if marker.is_file() and marker.read_text() == wanted:
        return root
    rng = np.random.default_rng(seed)
    for split, per_class in (("seg_train", train_per_class), ("seg_test", test_per_class)):
        for name in SYNTHETIC_CLASSES:
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(per_class):
                Image.fromarray(draw_scene(name, rng, size)).save(folder / f"{index}.jpg", quality=92)
    pool = root / "seg_pred"
    pool.mkdir(parents=True, exist_ok=True)
    for index in range(pred_images):
        name = SYNTHETIC_CLASSES[index % len(SYNTHETIC_CLASSES)]
        Image.fromarray(draw_scene(name, rng, size)).save(pool / f"{index}.jpg", quality=92)
    write_text_whole(marker, wanted)  # the marker appears last: a half-written set is regenerated
    return root


def is_synthetic(data_root: Path | str) -> bool:
    return (Path(data_root) / MARKER).is_file()
