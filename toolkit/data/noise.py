"""Noise for denoising: pure functions of (clean batch, sigma, generator), run on the device.

Images are float in [0, 1]; sigma is on that scale (the study's 0.3 = 76.5 on the 0-255 scale).
Training draws fresh noise every batch from a generator seeded by (seed, step); evaluation
seeds by (noise_seed, batch index) so every model is scored on the very same noisy images.
"""

from __future__ import annotations

import torch
from einops import rearrange


def sigma_from_255(sigma_255: float) -> float:
    """A noise level on the 0-255 scale (the published tables) on the [0, 1] scale."""
    return sigma_255 / 255.0


def draw_sigmas(batch: int, sigma_min: float, sigma_max: float, generator: torch.Generator,
                device: torch.device) -> torch.Tensor:
    """One sigma per image, uniform in [sigma_min, sigma_max] (blind denoising); (B,)."""
    if sigma_min == sigma_max:
        return torch.full((batch,), float(sigma_min), device=device)
    return sigma_min + (sigma_max - sigma_min) * torch.rand(batch, device=device, generator=generator)


def draw_sigmas_favouring_light(batch: int, sigma_max: float, light_share: float, light_max: float,
                                generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """One sigma per image, uniform in [0, sigma_max], except that each image, with probability `light_share`,
    is given one uniform in [0, light_max] instead (more light noise than a uniform draw holds); (B,).

    With light_share 0 it draws exactly what draw_sigmas(batch, 0, sigma_max, ...) draws, so runs without it
    replay the same noise; otherwise a second uniform per image picks which images are light."""
    if not 0.0 <= light_share <= 1.0:
        raise ValueError(f"the share of light-noise images must be in [0, 1], not {light_share}")
    if not 0.0 < light_max <= sigma_max:
        raise ValueError(f"the light-noise ceiling must be in (0, sigma_max={sigma_max}], not {light_max}")
    unit = torch.rand(batch, device=device, generator=generator)
    if not light_share:
        return sigma_max * unit
    light = torch.rand(batch, device=device, generator=generator) < light_share
    return torch.where(light, light_max * unit, sigma_max * unit)


def noise_level_weights(sigmas: torch.Tensor, floor: float) -> torch.Tensor:
    """Loss weights per image, sqrt(floor / max(sigma, floor)): 1 up to `floor`, less above it; (B,).

    A trained denoiser's error grows about as the square root of sigma, so a plain loss counts a noisier
    image's errors more than a mean PSNR over noise levels does; these weights even that out above `floor`.
    """
    if floor <= 0:
        raise ValueError(f"the weights' floor must be positive, not {floor}")
    return (floor / sigmas.float().clamp(min=floor)).sqrt()


def add_gaussian_noise(clean: torch.Tensor, sigmas: torch.Tensor, generator: torch.Generator,
                       clip: bool = True) -> torch.Tensor:
    """clean (B, C, H, W) in [0, 1] plus sigma_b * N(0, 1) per image, clipped to [0, 1] if `clip`.

    clip=True is the study's protocol; clip=False is the published benchmarks' (AWGN, no clipping).
    """
    noise = torch.randn(clean.shape, device=clean.device, generator=generator, dtype=torch.float32)
    noisy = clean.float() + rearrange(sigmas.float(), "b -> b 1 1 1") * noise
    return noisy.clamp_(0.0, 1.0) if clip else noisy


def random_crop(images: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """One random size x size window for the whole batch (cheap; a new window every batch)."""
    height, width = images.shape[-2:]
    if size <= 0 or (size >= height and size >= width):
        return images
    top = int(torch.randint(0, height - size + 1, (1,), generator=generator, device=generator.device))
    left = int(torch.randint(0, width - size + 1, (1,), generator=generator, device=generator.device))
    return images[..., top:top + size, left:left + size]
