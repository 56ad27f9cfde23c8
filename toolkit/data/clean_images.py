"""A folder of clean photographs (CBSD432, or any) as tiles for training a denoiser, stored once.

Each image is cut into tile x tile squares that cover it (neighbours overlap by the remainder) and
stored as they are, never resampled: resizing would smooth the very texture a denoiser must keep.
With reductions (e.g. "1,2"), each image is also tiled reduced by those whole factors, each
reduction x reduction block averaged (a box filter): a JPEG whose colour is stored at half resolution
(4:2:0, as all of CBSD432) has full-resolution colour, and no block artefacts, once halved.
Training then crops patches from random tiles on the device. The split is by image, not by tile:
no validation tile shares a photograph with a training tile.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from toolkit.data.beton import StoredImages, cache_folder, cached_beton
from toolkit.data.folders import list_image_files
from toolkit.data.images import box_reduction, reduced_size
from toolkit.data.settings import CleanImageSettings
from toolkit.data.synthetic import write_synthetic_scenes
from toolkit.errors import DataError

SPLIT_SEED = 20_241_129  # fixed: the validation images never depend on a run's seed


def tile_offsets(length: int, tile: int) -> list[int]:
    """Start positions of the fewest tiles of `tile` pixels that cover `length` (evenly spread)."""
    if length < tile:
        return []
    count = length // tile
    if length % tile > tile // 2:  # more than half a tile left over: one more, overlapping its neighbours
        count += 1
    if count == 1:
        return [(length - tile) // 2]
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


@dataclass(frozen=True)
class CleanImages:
    root: Path
    synthetic: bool
    stored: StoredImages  # the tiles
    source: np.ndarray  # (tiles,) which image each tile was cut from
    train_indices: np.ndarray  # tiles of the training images
    val_indices: np.ndarray  # tiles of the validation images
    images: int  # images stored (unreadable and too small ones left out)

    def describe(self) -> str:
        kind = "SYNTHETIC" if self.synthetic else "real"
        val_images = len(set(self.source[self.val_indices].tolist()))
        return (f"{kind} clean images at {self.root}: {self.images} images cut into {self.stored.num_samples} tiles "
                f"of {self.stored.store_size}px; train {len(self.train_indices)} tiles, validation "
                f"{len(self.val_indices)} tiles of {val_images} other images")

    def tile_reductions(self) -> np.ndarray:
        """(tiles,) the factor each tile was reduced by before it was cut (1: the image as it is)."""
        return np.array([box_reduction(box) for box in self.stored.manifest["boxes"]], dtype=np.int64)

    def val_indices_by_reduction(self) -> dict[int, np.ndarray]:
        """The validation tiles of each reduction they were cut at (1: the images as they are), smallest first: a
        run validates on the first alone, so that its score compares with a run's without --reductions."""
        reductions = self.tile_reductions()
        return {int(reduction): self.val_indices[reductions[self.val_indices] == reduction]
                for reduction in sorted(set(reductions[self.val_indices].tolist()))}

    def train_indices_with_repeats(self, reduced_tile_repeats: int) -> np.ndarray:
        """The training tiles, each reduced one (reduction above 1) listed `reduced_tile_repeats` times: an
        epoch then visits it that often, raising the reduced tiles' share of the patches without storing more."""
        if reduced_tile_repeats < 1:
            raise ValueError(f"reduced_tile_repeats must be at least 1, got {reduced_tile_repeats}")
        reduced = self.tile_reductions()[self.train_indices] > 1
        return np.concatenate([self.train_indices] + [self.train_indices[reduced]] * (reduced_tile_repeats - 1))

    def fingerprint(self) -> str:
        hashes = self.stored.pixel_hashes
        content = [sorted(hashes[i] for i in part) for part in (self.train_indices, self.val_indices)]
        return hashlib.sha256(json.dumps(content).encode()).hexdigest()[:16]


def load_clean_images(settings: CleanImageSettings, cache_dir: Path | str | None = None, num_workers: int = 2,
                      log=print) -> CleanImages:
    """Find the folder (or, for data='synthetic', generate one), store its tiles once, split by image."""
    settings.check_data_settings()
    cache_dir = cache_folder(cache_dir)
    synthetic = settings.data == "synthetic"
    root = write_synthetic_scenes(cache_dir / "synthetic-scenes") / "seg_pred" if synthetic else Path(settings.data)
    files = list_image_files(root)  # two or more: settings.check_data_settings
    tile = settings.tile_size
    reductions = settings.reduction_factors()
    tiles, boxes = [], []
    for file in files:
        try:
            with Image.open(file) as image:  # the header only: sizes without decoding
                width, height = image.size
        except (OSError, SyntaxError):  # unreadable: let the writer record why
            width = height = tile
        for reduction in reductions:
            reduced_height, reduced_width = reduced_size(height, reduction), reduced_size(width, reduction)
            tops, lefts = tile_offsets(reduced_height, tile), tile_offsets(reduced_width, tile)
            if reduction > min(reductions) and not (tops and lefts):
                continue  # too small for a tile once reduced further: left out (the writer says why at the least)
            for top in tops or [0]:
                for left in lefts or [0]:
                    tiles.append(file)
                    boxes.append((top, left) if reduction == 1 else (top, left, reduction))
    slug = "".join(ch if ch.isalnum() else "-" for ch in root.resolve().name)[:40] or "images"
    stored = cached_beton(f"{slug}-tiles", root, tiles, None, None, tile, "raw", cache_dir=cache_dir,
                          num_workers=num_workers, log=log, boxes=boxes)
    names = sorted(set(stored.files))
    source = np.array([names.index(name) for name in stored.files])
    rng = np.random.default_rng(SPLIT_SEED)
    val_images = max(1, round(settings.val_fraction * len(names)))
    if len(names) < 2:
        raise DataError(f"{root} has {len(names)} usable image(s) of at least {tile}px: a validation split needs "
                        "two or more (lower --tile_size or add images)")
    held = set(rng.permutation(len(names))[:min(val_images, len(names) - 1)].tolist())
    is_val = np.array([s in held for s in source])
    train = np.flatnonzero(~is_val)
    if settings.max_train_images:
        keep_images = set(sorted(set(source[train].tolist()))[:settings.max_train_images])
        train = np.array([i for i in train if source[i] in keep_images])
    return CleanImages(root=root, synthetic=synthetic, stored=stored, source=source, train_indices=train,
                       val_indices=np.flatnonzero(is_val), images=len(names))
