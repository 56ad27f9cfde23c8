"""Training on cached features: a loader over tensors held in memory that behaves like our FFCV
loaders (`next_epoch`, `len`, order seeded by (seed, epoch), split across processes), so the
resumable loop and exact resume work unchanged; and a file cache for features of a frozen network,
so that other seeds and resumes read them instead of running the frozen network again."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from toolkit.progress import say
from toolkit.runs import written_whole


class CachedFeatureLoader:
    """Batches of (features, labels) from `features` (N, V, ...) holding V views per sample (e.g. an
    image and its mirror); each sample shows one view per epoch, chosen at random."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, batch_size: int, seed: int,
                 rank: int = 0, world_size: int = 1):
        if len(features) < batch_size * world_size:
            raise ValueError("fewer cached samples than one batch per process")
        self.features, self.labels = features, labels
        self.batch_size, self.seed = batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.next_epoch = 0

    def __len__(self) -> int:
        return len(self.features) // self.world_size // self.batch_size

    def __iter__(self):
        rng = np.random.default_rng(self.seed + self.next_epoch)  # the same order in every process
        self.next_epoch += 1
        order = rng.permutation(len(self.features))[self.rank::self.world_size]
        views = rng.integers(0, self.features.shape[1], len(self.features))
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            chosen = torch.from_numpy(order[start:start + self.batch_size])
            picked = torch.from_numpy(views[order[start:start + self.batch_size]])
            batch = self.features[chosen, picked].float().contiguous(memory_format=torch.channels_last)
            yield batch, self.labels[chosen]


def weights_digest(modules) -> str:
    """A hash of the parameters and buffers of `modules` (names, dtypes, shapes and values)."""
    digest = hashlib.sha256()
    for index, module in enumerate(modules):
        for name, tensor in module.state_dict().items():
            digest.update(f"{index}.{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def features_cache_file(cache_dir: Path, name: str, key: dict) -> Path:
    """Where the features described by `key` (everything they depend on, JSON-able) are kept."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(cache_dir) / "features" / f"{name}-{digest}.pt"


def cached_rows(file: Path | None, wanted: np.ndarray, compute, write: bool, is_main: bool = True,
                ) -> tuple[torch.Tensor, int]:
    """Features of the stored samples `wanted` (indices into one stored image set), in that order: the rows
    `file` already holds are read, the others computed by compute(sorted indices) -> tensor on the CPU and,
    when `write`, added to `file`. Another seed's split needs only the images the first one did not train on.
    Returns the features and how many rows were computed."""
    wanted = np.asarray(wanted, dtype=np.int64)
    kept = read_cached_features(file, is_main) if file is not None else None
    indices = kept["indices"].numpy() if kept is not None else np.empty(0, np.int64)
    missing = np.setdiff1d(wanted, indices)
    if len(missing):
        computed = compute(missing).cpu()
        if kept is None:
            indices, features = missing, computed
        else:
            indices = np.concatenate([indices, missing])
            features = torch.cat([kept["features"], computed.to(kept["features"].dtype)])
            order = np.argsort(indices, kind="stable")
            indices, features = indices[order], features[torch.from_numpy(order)]
        kept = {"indices": torch.from_numpy(indices), "features": features}
        if write and file is not None:
            write_cached_features(file, kept)
    rows = np.searchsorted(kept["indices"].numpy(), wanted)
    return kept["features"][torch.from_numpy(rows)], len(missing)


def read_cached_features(file: Path, is_main: bool = True) -> dict | None:
    """The cache entry {'indices', 'features'} in `file`, or None when there is none or it cannot be
    used (unreadable, cut short, inconsistent: then it is said, and its rows are computed again)."""
    if not file.exists():
        return None
    try:
        entry = torch.load(file, map_location="cpu", weights_only=True)
        indices, features = entry["indices"], entry["features"]
        if len(indices) != len(features) or (len(indices) > 1 and not bool((indices[1:] > indices[:-1]).all())):
            raise ValueError("its indices and rows do not match")
        return entry
    except Exception as error:  # a damaged cache costs a recomputation, never the run
        say(f"[cache] ignoring the damaged feature cache {file} ({type(error).__name__}: {error}); "
            f"computing the features again", is_main)
        return None


def write_cached_features(file: Path, entry: dict) -> None:
    """Keep `entry` in `file`, atomically: a killed write leaves the previous entry (or none), never half of one."""
    with written_whole(file) as partial:
        torch.save(entry, partial)
