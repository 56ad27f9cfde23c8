"""Seeded, stratified, duplicate-aware splits.

Identical images (the real Intel training split has 15 groups, 10 of them under conflicting
labels) always land on the same side of a split, so a held-out image never has a copy in training.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np


def stratified_split(
    labels: Sequence[int],
    fraction: float,
    seed: int,
    groups: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Split sample indices into (kept, split_off) with `fraction` of every class split off.

    Each class contributes round(fraction * class_count) samples to split_off. Samples sharing
    a group key (e.g. a content hash) are assigned together; a group is split off only if it
    fits in the quota of every class it touches, so quotas can fall a few samples short when
    groups are large. Both index arrays are sorted.
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"split fraction must lie in [0, 1), got {fraction}")
    labels = np.asarray(labels, dtype=np.int64)
    if groups is None:
        groups = [str(index) for index in range(len(labels))]
    if len(groups) != len(labels):
        raise ValueError("groups and labels must have the same length")

    members: dict[str, list[int]] = defaultdict(list)
    for index, group in enumerate(groups):
        members[group].append(index)
    group_keys = sorted(members)  # a stable order before shuffling: independent of input order

    classes, class_counts = np.unique(labels, return_counts=True)
    quota = {int(c): int(round(fraction * n)) for c, n in zip(classes, class_counts)}
    taken = defaultdict(int)

    rng = np.random.default_rng(seed)
    split_off: list[int] = []
    for position in rng.permutation(len(group_keys)):
        indices = members[group_keys[position]]
        need = defaultdict(int)
        for index in indices:
            need[int(labels[index])] += 1
        if all(taken[c] + n <= quota[c] for c, n in need.items()):
            for c, n in need.items():
                taken[c] += n
            split_off += indices
    split_mask = np.zeros(len(labels), dtype=bool)
    split_mask[split_off] = True
    return np.flatnonzero(~split_mask), np.flatnonzero(split_mask)


def duplicate_groups(pixel_hashes: Sequence[str], digests: Sequence[str]) -> list[str]:
    """A group key per sample for `stratified_split`: samples with identical decoded pixels share one.

    The key is the smallest file digest in the group: content-based, independent of file order,
    and equal to the file's own digest for an image without copies.
    """
    smallest: dict[str, str] = {}
    for pixels, digest in zip(pixel_hashes, digests):
        smallest[pixels] = min(smallest.get(pixels, digest), digest)
    return [smallest[pixels] for pixels in pixel_hashes]
