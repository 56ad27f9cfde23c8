"""Training on cached features: a loader over tensors held in memory that behaves like our FFCV
loaders (`next_epoch`, `len`, order seeded by (seed, epoch), split across processes), so the
resumable loop and exact resume work unchanged."""

from __future__ import annotations

import numpy as np
import torch


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
