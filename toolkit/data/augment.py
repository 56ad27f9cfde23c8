"""Batch transforms that run on the training device: pure functions of (batch, seed, step)."""

from __future__ import annotations

from itertools import permutations

import torch
from einops import rearrange

STUDY_MEAN = (0.5, 0.5, 0.5)  # the study's normalisation: inputs in [-1, 1]
STUDY_STD = (0.5, 0.5, 0.5)
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # for ImageNet-pretrained backbones
IMAGENET_STD = (0.229, 0.224, 0.225)


def step_generator(device: torch.device, seed: int, step: int, rank: int = 0) -> torch.Generator:
    """A generator that depends only on (seed, step, rank): augmentations replay exactly on resume."""
    generator = torch.Generator(device=device)
    generator.manual_seed((seed * 1_000_003 + step * 9_973 + rank * 7_919_111) % (2**63))
    return generator


def random_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Flip each image of a (B, C, H, W) batch left-right with probability 1/2 (a new tensor)."""
    flip = torch.rand(images.shape[0], device=images.device, generator=generator) < 0.5
    flipped = images.clone()
    flipped[flip] = images[flip].flip(3)
    return flipped


def normalize(images: torch.Tensor, mean=STUDY_MEAN, std=STUDY_STD) -> torch.Tensor:
    """uint8 (B, C, H, W) pixels -> float32 (x / 255 - mean) / std, keeping the memory format."""
    mean = torch.tensor(mean, device=images.device, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(std, device=images.device, dtype=torch.float32).view(1, -1, 1, 1)
    # one multiply and one add in place: half the memory traffic of (x / 255 - mean) / std
    return images.float().mul_(1.0 / (255.0 * std)).add_(-mean / std)


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 in [0, 1] (the denoising study's input scale)."""
    return images.float() / 255.0


def random_scale_translate(images: torch.Tensor, generator: torch.Generator, min_scale: float) -> torch.Tensor:
    """Per image, zoom in to a random window covering min_scale..1 of each side at a random position
    (a cheap random-resized-crop without changing the aspect ratio), by bilinear resampling; (B, C, H, W)."""
    if min_scale >= 1.0:
        return images
    batch = images.shape[0]
    scale = min_scale + (1 - min_scale) * torch.rand(batch, device=images.device, generator=generator)
    room = 1 - scale  # the window may move by up to the room it leaves, in [-1, 1] coordinates
    shift = room[:, None] * (2 * torch.rand(batch, 2, device=images.device, generator=generator) - 1)
    theta = torch.zeros(batch, 2, 3, device=images.device, dtype=images.dtype)
    theta[:, 0, 0] = scale
    theta[:, 1, 1] = scale
    theta[:, :, 2] = shift
    grid = torch.nn.functional.affine_grid(theta, list(images.shape), align_corners=False)
    return torch.nn.functional.grid_sample(images, grid, mode="bilinear", padding_mode="reflection",
                                           align_corners=False)


def random_patches(images: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """One random size x size window per image of a (B, C, H, W) batch (each at its own position), by
    gathering rows and columns: (B, C, size, size)."""
    batch, channels, height, width = images.shape
    if size > min(height, width):
        raise ValueError(f"patches of {size}px do not fit in {height}x{width} images")
    top = torch.randint(0, height - size + 1, (batch, 1), device=images.device, generator=generator)
    left = torch.randint(0, width - size + 1, (batch, 1), device=images.device, generator=generator)
    steps = torch.arange(size, device=images.device)
    rows = rearrange(top + steps, "b h -> b 1 h 1").expand(batch, channels, size, width)
    picked = images.gather(2, rows)  # (B, C, size, W)
    columns = rearrange(left + steps, "b w -> b 1 1 w").expand(batch, channels, size, size)
    return picked.gather(3, columns)  # (B, C, size, size)


DIHEDRAL = [(turns, mirrored) for mirrored in (False, True) for turns in range(4)]  # the square's 8 symmetries


def dihedral(images: torch.Tensor, turns: int, mirrored: bool) -> torch.Tensor:
    """(B, C, H, W) images turned by `turns` quarter turns, then mirrored left-right if `mirrored`."""
    turned = torch.rot90(images, turns, dims=(2, 3))
    return turned.flip(3) if mirrored else turned


def undo_dihedral(images: torch.Tensor, turns: int, mirrored: bool) -> torch.Tensor:
    """The inverse of dihedral(., turns, mirrored)."""
    return torch.rot90(images.flip(3) if mirrored else images, -turns, dims=(2, 3))


def random_dihedral(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image of a square (B, C, S, S) batch rotated by a random multiple of 90 degrees and mirrored with
    probability 1/2: the 8 symmetries of the square, the standard augmentation of denoising patches."""
    turns = torch.randint(0, 4, (images.shape[0],), device=images.device, generator=generator)
    mirror = torch.rand(images.shape[0], device=images.device, generator=generator) < 0.5
    out = images.clone()
    for k in range(1, 4):
        chosen = turns == k
        if chosen.any():
            out[chosen] = torch.rot90(images[chosen], k, dims=(2, 3))
    out[mirror] = out[mirror].flip(3)
    return out


CHANNEL_ORDERS = tuple(permutations(range(3)))  # the 6 orders of R, G, B


def random_channel_order(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image of a (B, 3, H, W) batch with its colour channels put in one of their 6 orders at random
    (RGB, RBG, GRB, ...): shapes and textures stay, the colours change (a red door can turn blue), so a
    denoiser cannot lean on the colour statistics of its few training photographs."""
    if images.shape[1] != 3:
        raise ValueError(f"random_channel_order needs 3 colour channels, not {images.shape[1]}")
    orders = torch.tensor(CHANNEL_ORDERS, device=images.device)  # (6, 3)
    chosen = orders[torch.randint(0, len(CHANNEL_ORDERS), (images.shape[0],), device=images.device,
                                  generator=generator)]  # (B, 3)
    reordered = images.gather(1, chosen[:, :, None, None].expand_as(images))
    if images.is_contiguous(memory_format=torch.channels_last):  # keep the layout the convolutions want
        return reordered.contiguous(memory_format=torch.channels_last)
    return reordered
