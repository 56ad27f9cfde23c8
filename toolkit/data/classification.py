"""From a data folder to stored train / validation / test sets for a classifier.

    data root (Intel layout or any ImageFolder)
      seg_train -> .beton -> held-out test (when there is no test split) | train | validation
      seg_test  -> .beton -> test (when present)

The held-out split is drawn with a fixed seed, independent of the run's seed, so every
recipe and every seed is scored on the same held-out images; validation is drawn from what
remains with the run's seed. Both are stratified and keep identical images (same decoded
pixels) together, so no held-out image has a copy in training.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from toolkit.data.beton import StoredImages, cache_folder, cached_beton, conflicting_duplicates
from toolkit.data.folders import INTEL_DOWNLOAD_HINT, find_classification_splits, scan_labeled_folder
from toolkit.data.images import DIGEST_CHARS
from toolkit.data.settings import DEFAULT_DATA, ClassificationDataSettings, check_data_folder, check_split_settings
from toolkit.data.split import duplicate_groups, stratified_split
from toolkit.data.synthetic import is_synthetic, write_synthetic_scenes
from toolkit.errors import DataError

HOLDOUT_SEED = 20_240_601  # fixed: the held-out images never depend on a run's seed

SYNTHETIC_BANNER = """
################################################################################
#  DATA: {requested} was not found, so this run uses the built-in SYNTHETIC
#  scene dataset at {root}.
#  Its numbers say nothing about real photos. For the real Intel data:
#  {hint}
################################################################################"""


def find_data_root(data: str, cache_dir: Path | None = None, log=print) -> tuple[Path, bool]:
    """The data folder to use and whether it is synthetic.

    `data="synthetic"` asks for the built-in dataset; the default path falls back to it,
    loudly, when absent; any other missing path is an error (a typo should not train on
    made-up images).
    """
    cache_dir = cache_folder(cache_dir)
    check_data_folder(data, INTEL_DOWNLOAD_HINT, falls_back=data == DEFAULT_DATA)
    if data != "synthetic" and Path(data).exists():
        root = Path(data)
        return root, is_synthetic(root)
    root = write_synthetic_scenes(cache_dir / "synthetic-scenes")
    if data == DEFAULT_DATA:
        log(SYNTHETIC_BANNER.format(requested=data, root=root, hint=INTEL_DOWNLOAD_HINT))
    else:
        log(f"[data] using the built-in SYNTHETIC scene dataset at {root}")
    return root, True


@dataclass(frozen=True)
class ClassificationData:
    root: Path
    synthetic: bool
    classes: list[str]
    train_set: StoredImages  # the stored training folder: train, val and held-out indices point into it
    train_indices: np.ndarray
    val_indices: np.ndarray
    test_set: StoredImages | None  # the stored test folder, or train_set when the test is held out
    test_indices: np.ndarray
    test_name: str  # "seg_test" (a real test split), "holdout" (carved from training) or "none"

    def counts(self, stored: StoredImages, indices: np.ndarray) -> dict[str, int]:
        labels = stored.labels[indices]
        return {name: int((labels == label).sum()) for label, name in enumerate(self.classes)}

    def describe(self) -> str:
        kind = "SYNTHETIC" if self.synthetic else "real"
        return (f"{kind} data at {self.root}: {len(self.classes)} classes, train {len(self.train_indices)}, "
                f"validation {len(self.val_indices)}, test {len(self.test_indices)} ({self.test_name})")

    def fingerprint(self) -> str:
        """A hash of which images (by decoded pixels) and labels went to train, validation and test: two runs
        with the same fingerprint saw the same data, whatever the path or the stored size."""
        def side(stored, indices):
            return sorted(f"{stored.pixel_hashes[i]}:{stored.labels[i]}" for i in indices)

        content = {"classes": self.classes, "train": side(self.train_set, self.train_indices),
                   "val": side(self.train_set, self.val_indices),
                   "test": side(self.test_set, self.test_indices) if self.test_set is not None else []}
        return hashlib.sha256(json.dumps(content).encode()).hexdigest()[:16]

    def split_record(self) -> dict:
        """What a checkpoint keeps of the split: the fingerprint, the held-out files (relative to the data
        root's training folder) with their pixel hashes, and the training images' pixel hashes, so that
        `toolkit evaluate` scores exactly the held-out images and can tell training images apart."""
        held_out = []
        if self.test_name == "holdout":
            held_out = [{"file": self.train_set.files[i], "pixels": self.train_set.pixel_hashes[i][:DIGEST_CHARS],
                         "label": int(self.train_set.labels[i])} for i in self.test_indices]
        return {"fingerprint": self.fingerprint(), "test_name": self.test_name, "held_out": held_out,
                "train_pixels": sorted(self.train_set.pixel_hashes[i][:DIGEST_CHARS] for i in self.train_indices)}


def load_classification_data(settings: ClassificationDataSettings, seed: int, image_size: int | None = None,
                             cache_dir: Path | str | None = None, num_workers: int = 2,
                             log=print) -> ClassificationData:
    """Find, store (once, at `image_size`, default settings.image_size) and split the data of a classifier run.

    settings.max_train_images > 0 keeps a stratified subset of that many training images (the study's
    tuning subset, quick experiments); validation and test are unaffected.
    """
    check_split_settings(settings)  # and the folders' layout as they are found: settings.check_data_settings, once
    data, train_split, test_split = settings.data, settings.train_split, settings.test_split
    cache_dir = Path(cache_dir) if cache_dir else None
    root, synthetic = find_data_root(data, cache_dir, log)
    train_folder, test_folder = find_classification_splits(root, train_split, test_split, settings.test_split_named())
    listing = scan_labeled_folder(train_folder)
    for name in listing.empty_classes:
        log(f"[data] warning: class folder {train_folder / name} holds no images")
    common = dict(store_size=image_size or settings.image_size, storage=settings.storage, cache_dir=cache_dir,
                  num_workers=num_workers, log=log)
    train_set = cached_beton(f"{_slug(root)}-{train_split}", listing.root, listing.files, listing.labels,
                             listing.classes, **common)
    labels = train_set.labels
    groups = duplicate_groups(train_set.pixel_hashes, train_set.digests)  # copies stay on one side of every split
    usable = np.arange(train_set.num_samples)
    if settings.drop_conflicting_duplicates:
        conflicting = conflicting_duplicates(groups, labels.tolist())
        usable = np.array([i for i in usable if i not in conflicting])
        log(f"[data] left out {len(conflicting)} identical images that carry different labels")

    if test_folder is not None:
        test_listing = scan_labeled_folder(test_folder, classes=listing.classes)
        test_set = cached_beton(f"{_slug(root)}-{test_split}", test_listing.root, test_listing.files,
                                test_listing.labels, test_listing.classes, **common)
        test_indices, test_name = np.arange(test_set.num_samples), test_split
        pool = usable
    elif settings.holdout_fraction > 0:
        keep, held = stratified_split(labels[usable], settings.holdout_fraction, HOLDOUT_SEED,
                                      [groups[i] for i in usable])
        pool, test_indices = usable[keep], usable[held]
        test_set, test_name = train_set, "holdout"
    else:
        pool, test_indices, test_set, test_name = usable, np.array([], int), None, "none"

    keep, val_positions = stratified_split(labels[pool], settings.val_fraction, seed, [groups[i] for i in pool])
    train_indices, val_indices = pool[keep], pool[val_positions]
    max_train_images = settings.max_train_images
    if max_train_images and max_train_images < len(train_indices):
        fraction = 1 - max_train_images / len(train_indices)
        subset, _ = stratified_split(labels[train_indices], fraction, seed, [groups[i] for i in train_indices])
        train_indices = train_indices[subset]
    if len(train_indices) == 0 and max_train_images:
        raise DataError(f"--max_train_images={max_train_images} leaves no training images (it takes the same share "
                        f"of each of the {len(listing.classes)} classes): ask for more")
    if len(train_indices) == 0 or len(val_indices) == 0:
        raise DataError(f"{train_folder} has too few images ({train_set.num_samples}) for a train/validation "
                        f"split with val_fraction={settings.val_fraction}; add images or raise --val_fraction")
    return ClassificationData(root=root, synthetic=synthetic, classes=listing.classes, train_set=train_set,
                              train_indices=train_indices, val_indices=val_indices, test_set=test_set,
                              test_indices=np.asarray(test_indices), test_name=test_name)


def _slug(root: Path) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in Path(root).resolve().name)[:40] or "data"
