"""FFCV loaders over stored images, with the pipeline for each field written out as a list.

Loaders yield uint8 image batches (B, 3, H, W) in channels_last memory, already on the
training device, and int64 labels. Turning pixels into model inputs (flip, normalise)
happens on the device in `toolkit.data.augment`, batch by batch: cheap there, and seeded by
the step so that a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from toolkit.data.beton import StoredImages
from toolkit.data.ffcv_parts import (
    CenterCropRGBImageDecoder,
    IntDecoder,
    Loader,
    OrderOption,
    SimpleRGBImageDecoder,
    Squeeze,
    ToDevice,
    ToTensor,
    ToTorchImage,
)
from toolkit.errors import DataError

_default_unraisable_hook = sys.unraisablehook


def _ignore_numba_finalizer_noise(unraisable) -> None:
    """numba's dispatcher finalizer raises a harmless KeyError when an FFCV loader's compiled
    pipeline is garbage-collected; it would print a traceback for every discarded loader."""
    frame = unraisable.exc_traceback
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    where = frame.tb_frame.f_code.co_filename if frame is not None else ""
    if isinstance(unraisable.exc_value, KeyError) and where.endswith(("numba/core/dispatcher.py",)):
        return
    _default_unraisable_hook(unraisable)


sys.unraisablehook = _ignore_numba_finalizer_noise


def image_pipeline(store_size: int, image_size: int, device: torch.device) -> list:
    """decode (resizing only if stored at another size) -> tensor -> device -> (B, C, H, W) view."""
    if store_size == image_size:
        decode = SimpleRGBImageDecoder()
    else:  # a square crop of a square image is the whole image: this is a plain resize
        decode = CenterCropRGBImageDecoder((image_size, image_size), ratio=1.0)
    return [decode, ToTensor(), *_to_device(device), ToTorchImage(channels_last=True)]


def label_pipeline(device: torch.device) -> list:
    return [IntDecoder(), ToTensor(), Squeeze(1), *_to_device(device)]  # (B, 1) -> (B,), also when B == 1


def _to_device(device: torch.device) -> list:
    # On the CPU the batch already is where it is needed: a copy would only cost time.
    return [ToDevice(device, non_blocking=True)] if device.type == "cuda" else []


def stand_in_batch(batch_size: int, size: int, seed: int, device: torch.device) -> torch.Tensor:
    """Random uint8 images laid out as a training loader's batches, (B, 3, size, size) channels_last on
    `device`: what a recipe times its step on before training (TrainingLoop.epochs_within_minutes)."""
    images = torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(seed))
    return images.to(device, memory_format=torch.channels_last)


def stand_in_labels(batch_size: int, num_classes: int, device: torch.device) -> torch.Tensor:
    """(B,) int64 class indices cycling through the classes: the labels of a classifier's stand-in batch."""
    return torch.arange(batch_size, device=device) % num_classes


def make_loader(
    stored: StoredImages,
    indices: Sequence[int],
    batch_size: int,
    train: bool,
    image_size: int,
    device: torch.device,
    seed: int = 0,
    num_processes: int = 1,
    num_workers: int = 2,
    drop_last: bool | None = None,
) -> Loader:
    """A loader over `indices` of a stored dataset.

    train=True: random order reshuffled every epoch from (seed, epoch), dropping the last partial
    batch, each of `num_processes` processes taking its share. train=False: the given order, every
    sample once, never split (evaluation shards with `shard_loader` instead, so no sample is padded
    in twice).
    """
    indices = np.asarray(indices, dtype=np.uint64)
    if len(indices) == 0:
        raise ValueError("a loader needs at least one sample")
    processes = num_processes if train else 1
    if train and (drop_last is None or drop_last) and len(indices) < batch_size * processes:
        raise DataError(f"batch size {batch_size} x {processes} process(es) is more than the {len(indices)} "
                        "training images: no full batch to train on. Lower --batch_size or add images")
    pipelines = {"image": image_pipeline(stored.store_size, image_size, device)}
    if stored.labels is not None:
        pipelines["label"] = label_pipeline(device)
    return Loader(
        str(stored.beton),
        batch_size=batch_size,
        num_workers=num_workers,
        order=OrderOption.RANDOM if train else OrderOption.SEQUENTIAL,
        distributed=processes > 1,
        seed=seed,
        indices=indices,
        pipelines=pipelines,
        drop_last=train if drop_last is None else drop_last,
        os_cache=True,  # the page cache serves repeated epochs and several processes at once
    )


def shard_indices(indices: Sequence[int], rank: int, world_size: int) -> np.ndarray:
    """This process's share of an evaluation set: disjoint, together exactly the whole set."""
    return np.asarray(indices)[rank::world_size]


@dataclass(frozen=True)
class Shard:
    """One process's share of an evaluation set: its loader (empty when there are more processes than
    images), the dataset indices it holds and their positions in the whole set (to restore the order)."""

    loader: object
    indices: np.ndarray
    positions: np.ndarray
    total: int  # images in the whole set


def shard_loader(stored: StoredImages, indices: Sequence[int], rank: int, world_size: int, batch_size: int,
                 image_size: int, device: torch.device, num_workers: int = 2) -> Shard:
    """An evaluation loader over this process's strided share of `indices` (see Shard)."""
    indices = np.asarray(indices)
    positions = np.arange(len(indices))[rank::world_size]
    mine = indices[positions]
    loader = make_loader(stored, mine, batch_size, train=False, image_size=image_size, device=device,
                         num_workers=num_workers) if len(mine) else []
    return Shard(loader=loader, indices=mine, positions=positions, total=len(indices))
