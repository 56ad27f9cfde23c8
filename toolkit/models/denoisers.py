"""Denoisers that beat the study's autoencoders: they keep full resolution paths and predict the noise.

Both are residual: the network estimates the noise and the output is noisy - noise, so an
untrained network starts as the identity (the noisy input) instead of a grey blur. Both can
take the noise level as an extra input channel (as FFDNet does), so one network serves every
sigma of a blind training range.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import repeat
from torch import nn


def _conv(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1), nn.ReLU(inplace=True))


def pad_edges(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, C, H, W) padded at the bottom and right to at least height x width: mirrored (reflect) where the image is
    larger than the padding, its edge pixels repeated where it is not (reflection needs more pixels than it pads:
    a 1-pixel-high strip has none to mirror)."""
    pad_h, pad_w = max(0, height - images.shape[-2]), max(0, width - images.shape[-1])
    if not pad_h and not pad_w:
        return images
    mirrorable = pad_h < images.shape[-2] and pad_w < images.shape[-1]
    return F.pad(images, (0, pad_w, 0, pad_h), mode="reflect" if mirrorable else "replicate")


def padded_to_multiple(images: torch.Tensor, multiple: int) -> torch.Tensor:
    """pad_edges to the next multiple of `multiple` each way (what a U-Net's down-sampling levels need)."""
    height, width = images.shape[-2:]
    return pad_edges(images, height + (-height) % multiple, width + (-width) % multiple)


def _with_noise_level(noisy: torch.Tensor, sigmas: torch.Tensor | None, conditioned: bool) -> torch.Tensor:
    if not conditioned:
        return noisy
    if sigmas is None:
        raise ValueError("this denoiser is conditioned on the noise level: pass sigmas (B,)")
    level = repeat(sigmas.to(noisy.dtype), "b -> b 1 h w", h=noisy.shape[-2], w=noisy.shape[-1])
    return torch.cat([noisy, level], dim=1)  # (B, 3 + 1, H, W)


class UNetDenoiser(nn.Module):
    """A small U-Net: `levels` resolutions with `width` * 2^level channels, skip connections, residual output.

    Inputs of any size: they are padded (pad_edges) to a multiple of 2^(levels-1) and cropped back.
    """

    def __init__(self, width: int = 32, levels: int = 3, conditioned: bool = False):
        super().__init__()
        self.conditioned = conditioned
        self.multiple = 2 ** (levels - 1)
        channels = [width * 2**level for level in range(levels)]
        self.stem = nn.Sequential(_conv(3 + conditioned, channels[0]), _conv(channels[0], channels[0]))
        self.down = nn.ModuleList(nn.Sequential(_conv(channels[i], channels[i + 1], stride=2),
                                                _conv(channels[i + 1], channels[i + 1]))
                                  for i in range(levels - 1))
        self.up = nn.ModuleList(nn.ConvTranspose2d(channels[i + 1], channels[i], 2, stride=2)
                                for i in reversed(range(levels - 1)))
        self.merge = nn.ModuleList(nn.Sequential(_conv(2 * channels[i], channels[i]), _conv(channels[i], channels[i]))
                                   for i in reversed(range(levels - 1)))
        self.head = nn.Conv2d(channels[0], 3, 1)

    def forward(self, noisy: torch.Tensor, sigmas: torch.Tensor | None = None) -> torch.Tensor:
        height, width = noisy.shape[-2:]
        padded = padded_to_multiple(noisy, self.multiple)
        features = self.stem(_with_noise_level(padded, sigmas, self.conditioned))
        skips = []
        for down in self.down:
            skips.append(features)
            features = down(features)  # half the resolution, twice the channels
        for up, merge in zip(self.up, self.merge):
            features = merge(torch.cat([up(features), skips.pop()], dim=1))
        noise = self.head(features)
        return (padded - noise)[..., :height, :width]


class DnCNN(nn.Module):
    """Zhang et al.'s DnCNN: conv-ReLU, (depth-2) x conv-BN-ReLU, conv; predicts the noise."""

    def __init__(self, depth: int = 17, width: int = 64, conditioned: bool = False):
        super().__init__()
        self.conditioned = conditioned
        layers: list[nn.Module] = [nn.Conv2d(3 + conditioned, width, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(width, 3, 3, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, noisy: torch.Tensor, sigmas: torch.Tensor | None = None) -> torch.Tensor:
        return noisy - self.body(_with_noise_level(noisy, sigmas, self.conditioned))


class ResBlock(nn.Module):
    """x + conv(relu(conv(x))): 3x3 convolutions without bias or normalisation (as in DRUNet)."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.ReLU(inplace=True),
                                  nn.Conv2d(channels, channels, 3, padding=1, bias=False))

    def forward(self, x):
        return x + self.body(x)


def blocks_per_level(blocks: int | tuple[int, ...], levels: int) -> tuple[int, ...]:
    """A ResUNet's `blocks` as one count per level, finest first: 2 -> (2, 2, 2, 2) for four levels; a tuple
    must name every level (the last is the coarsest level's body) and each count must be at least 1."""
    counts = (blocks,) * levels if isinstance(blocks, int) else tuple(blocks)
    if len(counts) != levels or not all(isinstance(count, int) and count >= 1 for count in counts):
        raise ValueError(f"blocks={blocks!r}: give one count of at least 1, or one per level ({levels} for "
                         f"{levels} widths), e.g. blocks=2 or blocks={(1,) + (2,) * (levels - 1)}")
    return counts


class ResUNet(nn.Module):
    """A DRUNet-style residual U-Net (Zhang et al., 2021), small enough to train on a CPU.

        head:  conv3x3(3 + 1 noise-level map -> w0)
        down:  `blocks` ResBlocks, then a 2x2 stride-2 conv to the next width      (per level)
        body:  `blocks` ResBlocks at the coarsest level
        up:    2x2 stride-2 transposed conv, add the same level's encoder output, `blocks` ResBlocks
        tail:  conv3x3(w0 -> 3): the noise estimate; the output is noisy - noise (residual learning)

    `blocks` is one count for every level or one per level, finest first (the last is the body's): a CPU
    computes the full-resolution level's few channels slowest, and (1, 2, 2, 2) spends less of the step
    there (an option, not the default: docs/results.md).

    Most of the arithmetic runs at 1/4, 1/16 ... of the pixels, which is what makes it cheap per pixel
    against a full-resolution network of the same depth. The noise level enters as a constant input
    map (FFDNet/DRUNet), so one network serves every sigma of its training range. Inputs of any size
    are padded (pad_edges) to a multiple of 2^(levels-1) and cropped back.

    `pixel_unshuffle=True` is FFDNet's reversible downsampling: the image's 2x2 pixel blocks become 12
    channels at half the resolution before the head, and the tail's 12 channels are shuffled back, so the
    first level already runs at a quarter of the pixels (a CPU computes its few channels slowly); inputs are
    then padded to a multiple of 2^levels. Tried for a 2-core CPU's hour: 0.1 dB below the default
    (docs/results.md), so it is off by default.
    """

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128, 256), blocks: int | tuple[int, ...] = 2,
                 conditioned: bool = True, pixel_unshuffle: bool = False):
        super().__init__()
        widths = list(widths)
        per_level = blocks_per_level(blocks, len(widths))
        self.conditioned = conditioned
        self.factor = 2 if pixel_unshuffle else 1  # pixels per side folded into channels
        self.multiple = 2 ** (len(widths) - 1) * self.factor
        colours = 3 * self.factor**2
        self.head = nn.Conv2d(colours + conditioned, widths[0], 3, padding=1, bias=False)
        self.down = nn.ModuleList(
            nn.Sequential(*[ResBlock(w) for _ in range(count)], nn.Conv2d(w, w_next, 2, stride=2, bias=False))
            for w, w_next, count in zip(widths, widths[1:], per_level))
        self.body = nn.Sequential(*[ResBlock(widths[-1]) for _ in range(per_level[-1])])
        self.up = nn.ModuleList(
            nn.Sequential(nn.ConvTranspose2d(w_next, w, 2, stride=2, bias=False), *[ResBlock(w) for _ in range(count)])
            for w, w_next, count in reversed(list(zip(widths, widths[1:], per_level))))
        self.tail = nn.Conv2d(widths[0], colours, 3, padding=1, bias=False)

    def forward(self, noisy: torch.Tensor, sigmas: torch.Tensor | None = None) -> torch.Tensor:
        height, width = noisy.shape[-2:]
        padded = padded_to_multiple(noisy, self.multiple)
        folded = F.pixel_unshuffle(padded, self.factor) if self.factor > 1 else padded  # (B, 3 f^2, H/f, W/f)
        x = self.head(_with_noise_level(folded, sigmas, self.conditioned))  # (B, w0, H/f, W/f)
        skips = [x]
        for down in self.down:
            x = down(x)  # half the resolution, the next width
            skips.append(x)
        x = self.body(x)
        for up in self.up:
            x = up(x + skips.pop())
        noise = self.tail(x + skips.pop())
        if self.factor > 1:
            noise = F.pixel_shuffle(noise, self.factor)  # back to (B, 3, H, W)
        return (padded - noise)[..., :height, :width]
