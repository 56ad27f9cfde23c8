"""From a folder of images (labels ignored) to stored train / validation / held-out test sets.

The pool is the Intel `seg_pred` split (7,301 unlabeled images) when present; otherwise, as the
data README suggests, the images of `seg_train` with their labels ignored. The held-out test
set is drawn with a fixed seed and byte-identical files kept together, as for classification.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from toolkit.data.beton import StoredImages, cached_beton
from toolkit.data.classification import HOLDOUT_SEED, _slug, find_data_root
from toolkit.data.folders import find_pool_folder, scan_unlabeled_folder
from toolkit.data.settings import DenoisingDataSettings, check_split_settings
from toolkit.data.split import duplicate_groups, stratified_split
from toolkit.errors import DataError


@dataclass(frozen=True)
class DenoisingData:
    root: Path
    synthetic: bool
    pool: str  # which folder the images came from
    stored: StoredImages
    train_indices: np.ndarray
    val_indices: np.ndarray
    test_indices: np.ndarray

    def describe(self) -> str:
        kind = "SYNTHETIC" if self.synthetic else "real"
        return (f"{kind} images from {self.root} ({self.pool}, labels ignored): train {len(self.train_indices)}, "
                f"validation {len(self.val_indices)}, held-out test {len(self.test_indices)}")

    def fingerprint(self) -> str:
        """A hash of which images (by decoded pixels) went to train, validation and held-out test."""
        hashes = self.stored.pixel_hashes
        content = [sorted(hashes[i] for i in part) for part in (self.train_indices, self.val_indices,
                                                                 self.test_indices)]
        return hashlib.sha256(json.dumps(content).encode()).hexdigest()[:16]


def load_denoising_data(settings: DenoisingDataSettings, seed: int, cache_dir: Path | str | None = None,
                        num_workers: int = 2, log=print) -> DenoisingData:
    """Find, store once (squashed to settings.image_size) and split an unlabeled pool of images."""
    check_split_settings(settings)  # and the folder's layout as it is found: settings.check_data_settings, once
    pool_split, image_size = settings.pool_split, settings.image_size
    cache_dir = Path(cache_dir) if cache_dir else None
    root, synthetic = find_data_root(settings.data, cache_dir, log)
    folder, pool = find_pool_folder(root, pool_split)
    if pool != pool_split:
        log(f"[data] no {pool_split} under {root}: using the {pool} images as the unlabeled pool")
    files = scan_unlabeled_folder(folder)
    stored = cached_beton(f"{_slug(root)}-{pool}-unlabeled", folder, files, None, None, image_size,
                          settings.storage, cache_dir=cache_dir, num_workers=num_workers, log=log)
    same_class = np.zeros(stored.num_samples, dtype=np.int64)  # no labels: a plain random split
    groups = duplicate_groups(stored.pixel_hashes, stored.digests)  # identical images stay on one side of every split
    kept, test = stratified_split(same_class, settings.holdout_fraction, HOLDOUT_SEED, groups)
    keep, val = stratified_split(same_class[kept], settings.val_fraction, seed, [groups[i] for i in kept])
    train, val = kept[keep], kept[val]
    if settings.max_train_images and settings.max_train_images < len(train):
        train = np.sort(np.random.default_rng(seed).permutation(train)[:settings.max_train_images])
    if len(train) == 0 or len(val) == 0:
        raise DataError(f"{folder} has too few images ({stored.num_samples}) for train and validation sets")
    return DenoisingData(root=root, synthetic=synthetic, pool=pool, stored=stored, train_indices=train,
                         val_indices=val, test_indices=test)
