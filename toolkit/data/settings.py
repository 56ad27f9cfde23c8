"""The data keys a recipe's Config inherits, one class per kind of data, each checking itself.

    @dataclass
    class Config(ClassificationDataSettings, RunSettings):
        lr: float = 9e-4  # Adam learning rate

Each checks its folder's layout too (splits, class folders, images there), quickly, without listing every
image, so that `start_run` refuses a folder a run cannot use before the run's folder and W&B run are made.
The loaders take the settings object itself (`load_classification_data(cfg, ...)`), so a key is
defined, documented and validated in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from toolkit.config import check_fraction, check_non_negative, check_positive
from toolkit.data.folders import (
    IMAGE_EXTENSIONS,
    INTEL_DOWNLOAD_HINT,
    decodable_images,
    find_classification_splits,
    find_pool_folder,
)
from toolkit.errors import ConfigError, DataError

DEFAULT_DATA = "data/intel"
DEFAULT_TEST_SPLIT = "seg_test"  # scored when it is there; without it part of the training images is held out


@dataclass
class ClassificationDataSettings:
    data: str = DEFAULT_DATA  # a folder with seg_train[/seg_test] or <class>/<image>; 'synthetic' = built-in set
    train_split: str = "seg_train"  # training folder below --data
    test_split: str = DEFAULT_TEST_SPLIT  # test folder below --data, scored once at the end if present (none: hold out)
    holdout_fraction: float = 0.1  # without a test folder: share of training held out as the test set
    val_fraction: float = 0.1  # share of the remaining training images used for validation
    max_train_images: int = 0  # >0: a stratified subset of this many training images (0 = all)
    image_size: int = 80  # images are squashed to image_size x image_size pixels
    storage: Literal["raw", "jpg"] = "raw"  # .beton storage: raw pixels at the stored size, or JPEG
    drop_conflicting_duplicates: bool = False  # leave out identical images that carry different labels

    def check_data_settings(self) -> None:
        check_split_settings(self)
        if has_folder_of_its_own(self.data):
            find_classification_splits(Path(self.data), self.train_split, self.test_split, self.test_split_named())

    def test_split_named(self) -> bool:
        """Whether --test_split names a folder that must be there (the default is scored only when present)."""
        return self.test_split not in ("", "none", DEFAULT_TEST_SPLIT)


@dataclass
class DenoisingDataSettings:
    data: str = DEFAULT_DATA  # a folder of images; 'synthetic' = built-in set
    pool_split: str = "seg_pred"  # images below --data to denoise (labels ignored); falls back to seg_train
    image_size: int = 150  # images are squashed to image_size x image_size pixels
    holdout_fraction: float = 0.1  # share of the pool held out as the test set (fixed seed)
    val_fraction: float = 0.1  # share of the remaining images used for validation
    max_train_images: int = 0  # >0: a random subset of this many training images (0 = all)
    storage: Literal["raw", "jpg"] = "raw"  # .beton storage: raw pixels or JPEG

    def check_data_settings(self) -> None:
        check_split_settings(self)
        if has_folder_of_its_own(self.data):
            find_pool_folder(Path(self.data), self.pool_split)


def has_folder_of_its_own(data: str) -> bool:
    """Whether --data names a folder on disk, not the built-in set (asked for, or the default's fallback)."""
    return data != "synthetic" and Path(data).is_dir()


def check_data_folder(data: str, hint: str, falls_back: bool = False) -> None:
    """--data names a folder that is there, or 'synthetic' (the built-in set), or, with falls_back, the default
    that falls back to it when absent. Checked before a run starts (start_run), so that a typo stops the run
    before its folder and W&B run are made, and not after hours of a study's other runs."""
    if data == "synthetic" or Path(data).is_dir() or (falls_back and not Path(data).exists()):
        return
    if Path(data).exists():
        raise DataError(f"--data={data} is a file: pass the folder that holds the images")
    raise DataError(f"data folder {data} does not exist. {hint}")


def check_split_settings(settings) -> None:
    """The keys both image-folder settings share: the data folder (or the default, which falls back to the built-in
    set), fractions in [0, 1), a validation set, a positive size."""
    check_data_folder(settings.data, INTEL_DOWNLOAD_HINT, falls_back=settings.data == DEFAULT_DATA)
    check_fraction(settings, "val_fraction", "holdout_fraction")
    check_non_negative(settings, "max_train_images")
    check_positive(settings, "image_size")
    if settings.val_fraction == 0:
        raise ConfigError("--val_fraction must be above 0: validation drives the learning curves")


@dataclass
class CleanImageSettings:
    data: str = "data/denoise/CBSD432"  # a folder of clean photographs (any sizes, recursive); 'synthetic' = built in
    tile_size: int = 160  # images are cut into tile x tile squares once, stored without resampling
    val_fraction: float = 0.075  # share of the images (not tiles) held out for validation
    max_train_images: int = 0  # >0: only this many training images (0 = all)
    # CBSD432's JPEGs store colour at half resolution, full once halved: the 60-minute hour trains on "1,2"
    reductions: str = "1"  # the whole factors each image is tiled at, reduced by a box filter: "1,2" adds halves
    # 2 raised the halves from 25% to 40% of the hour's patches: +0.01 dB on held-out images whole and halved
    reduced_tile_repeats: int = 1  # each reduced training tile's turns per epoch (with --reductions)

    def check_data_settings(self) -> None:
        check_data_folder(self.data, "Pass --data=PATH to a folder of clean photographs (e.g. CBSD432: the 432 "
                          "colour BSD images that DnCNN, FFDNet and DRUNet train on)")
        if has_folder_of_its_own(self.data):
            decodable, tried, failure = decodable_images(Path(self.data), 2)
            if tried < 2:
                raise DataError(f"{self.data} holds {'one image file' if tried else 'no image files'} "
                                f"({', '.join(IMAGE_EXTENSIONS)}): a denoiser needs two or more, one to validate on")
            if len(decodable) < 2:
                raise DataError(f"{self.data}: {len(decodable) or 'none'} of its image files can be decoded (the "
                                f"first that cannot: {failure}); a denoiser needs two or more, one to validate on: "
                                f"replace them (`toolkit data check {self.data}` lists every unreadable file)")
        check_fraction(self, "val_fraction")
        check_non_negative(self, "max_train_images")
        check_positive(self, "reduced_tile_repeats")
        if max(self.reduction_factors()) == 1 and self.reduced_tile_repeats > 1:
            raise ConfigError(f"--reduced_tile_repeats={self.reduced_tile_repeats} repeats reduced tiles, and "
                              f"--reductions={self.reductions!r} makes none: add a factor (e.g. --reductions=1,2)")
        if self.tile_size < 16:
            raise ConfigError(f"--tile_size must be at least 16 pixels, got {self.tile_size}")
        if self.val_fraction == 0:
            raise ConfigError("--val_fraction must be above 0: validation chooses the model")

    def reduction_factors(self) -> tuple[int, ...]:
        """--reductions as whole factors of at least 1, each once, in the order given."""
        try:
            factors = tuple(dict.fromkeys(int(part) for part in self.reductions.split(",")))
        except ValueError:
            factors = ()
        if not factors or min(factors) < 1:
            raise ConfigError(f"--reductions takes comma-separated whole factors of at least 1 (1 = the images as "
                              f"they are, 2 = halved each way), got {self.reductions!r}")
        return factors
