"""Denoising evaluation: per-image MSE, PSNR and SSIM for a model and for baselines, on the same noise.

Evaluation noise depends only on (noise seed, image id), never on batch size, process count
or the model, so every model and every baseline is scored on exactly the same noisy images.
Metrics are computed per image on outputs clamped to [0, 1], then averaged over images.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from toolkit.data.augment import DIHEDRAL, dihedral, to_unit_range, undo_dihedral
from toolkit.data.noise import add_gaussian_noise, draw_sigmas
from toolkit.errors import UserError
from toolkit.models.denoisers import pad_edges
from toolkit.progress import tracked
from toolkit.train.evaluate import share_buffers
from toolkit.train.precision import autocast_dtype

if TYPE_CHECKING:  # the loaders import FFCV, seconds of numba compiling that inference never needs
    from toolkit.data.loaders import Shard

METRICS = ("mse", "psnr", "ssim")
SSIM_WINDOW = 11  # image_quality's SSIM: an 11x11 Gaussian window (sigma 1.5), as the published tables'
SMALLEST_SIDE = 16  # what denoise gives every model at least (the study's AE71 needs 9 pixels: unpadded 5x5 convs)
# pixels of context around each tile of denoise_in_tiles: the blind denoiser's output then differs from one whole-image
# pass by at most one 8-bit level, in 0.01% of the values (32 held-out CBSD432 images; 32 px: 2 levels in 1.8%; 0 px:
# 77 levels and -0.09 dB at sigma 50; scripts/tile_seams.py, docs/results.md)
TILE_MARGIN = 64
# toolkit denoise's and benchmark-denoiser's tiles: the blind denoiser denoises 12 megapixels in 1.8 GB instead of 8.2
# and 24 in 2.5 GB, at the whole pass' speed (fp32, 2 CPU cores; scripts/denoise_memory.py, docs/results.md)
TILE_SIZE = 1024


@dataclass(frozen=True)
class NoiseSpec:
    sigma_min: float  # on the [0, 1] scale
    sigma_max: float
    clip: bool
    seed: int = 1234  # evaluation noise seed

    def describe(self) -> str:
        level = f"sigma {self.sigma_min:g}" if self.sigma_min == self.sigma_max else \
            f"sigma {self.sigma_min:g}-{self.sigma_max:g}"
        return f"{level} ({self.sigma_min * 255:.1f}/255), {'clipped' if self.clip else 'unclipped'}"

    def as_dict(self) -> dict:
        return asdict(self)


def denoise(model, noisy: torch.Tensor, sigmas: torch.Tensor, conditioned: bool,
            self_ensemble: bool = False, precision: str = "no") -> torch.Tensor:
    """Run a denoiser: noise-level-conditioned models also receive sigma per image. With self_ensemble, the
    mean of its outputs on the 8 rotations and mirror images of the input, each turned back (the self-ensemble of
    the "+" rows in restoration tables, e.g. EDSR+): 8 times the compute, no training. precision 'bf16'/'fp16':
    the model runs under that autocast (the output comes back fp32); 'no' leaves the caller's setting alone.
    Images under SMALLEST_SIDE either way (a thumbnail, a strip) are padded to it (pad_edges) and cropped back."""
    height, width = noisy.shape[-2:]
    if height < SMALLEST_SIDE or width < SMALLEST_SIDE:
        padded = pad_edges(noisy, max(height, SMALLEST_SIDE), max(width, SMALLEST_SIDE))
        return denoise(model, padded, sigmas, conditioned, self_ensemble, precision)[..., :height, :width]
    if not self_ensemble:
        dtype = autocast_dtype(precision)
        with torch.autocast(noisy.device.type, dtype=dtype) if dtype else contextlib.nullcontext():
            output = model(noisy, sigmas) if conditioned else model(noisy)
        return output.float() if dtype else output
    total = None
    for turns, mirrored in DIHEDRAL:
        output = denoise(model, dihedral(noisy, turns, mirrored), sigmas, conditioned, precision=precision)
        output = undo_dihedral(output.float(), turns, mirrored)
        total = output if total is None else total + output
    return total / len(DIHEDRAL)


def tile_boxes(height: int, width: int, tile_size: int, margin: int, multiple: int = 1) -> list[tuple]:
    """The tiles denoise_in_tiles cuts an image of height x width into: ((top, bottom, left, right) of the part it
    keeps, (top, bottom, left, right) of the part the model sees: that plus `margin` pixels of its neighbours each
    way, as far as the image goes). The tiles of a row (column) are of one size, at most tile_size, so that none is a
    sliver. Sizes and margin are multiples of `multiple` (a U-Net's down-sampling multiple; rounded up), so every piece
    starts where the whole image's down-sampled grid has a corner. One tile, the whole image, when it fits in
    tile_size plus its margins (tile_size 0: always)."""
    tile = -(-tile_size // multiple) * multiple
    margin = -(-margin // multiple) * multiple
    if not tile or (height <= tile + 2 * margin and width <= tile + 2 * margin):
        return [((0, height, 0, width), (0, height, 0, width))]

    def spans(length: int) -> list[tuple[int, int, int, int]]:  # (start, end, seen start, seen end) along one side
        count = -(-length // tile)  # the tiles this side needs
        size = -(-length // count)  # the side shared out evenly among them
        size = -(-size // multiple) * multiple  # on the model's grid
        return [(start, min(start + size, length), max(start - margin, 0), min(start + size + margin, length))
                for start in range(0, length, size)]

    return [((top, bottom, left, right), (seen_top, seen_bottom, seen_left, seen_right))
            for top, bottom, seen_top, seen_bottom in spans(height)
            for left, right, seen_left, seen_right in spans(width)]


def check_tile_size(tile_size: int, margin: int = TILE_MARGIN) -> None:
    """A tile size and margin as toolkit denoise and benchmark-denoiser take them: a side in pixels, or 0 for whole
    images; pixels of context, 0 or more."""
    if tile_size < 0:
        raise UserError(f"--tile_size takes a side in pixels, or 0 for whole images; got {tile_size}")
    if margin < 0:
        raise UserError(f"--tile_margin takes the pixels of context around each tile, 0 or more; got {margin}")


def model_tiles(model, images: torch.Tensor, tile_size: int, margin: int = TILE_MARGIN) -> list[tuple]:
    """tile_boxes of (..., H, W) images on `model`'s down-sampling grid (its `multiple`; none: 1)."""
    return tile_boxes(*images.shape[-2:], tile_size, margin, getattr(model, "multiple", 1))


def denoise_in_tiles(model, noisy: torch.Tensor, sigmas: torch.Tensor, conditioned: bool, tile_size: int,
                     margin: int = TILE_MARGIN, self_ensemble: bool = False, precision: str = "no",
                     on_tile=None) -> torch.Tensor:
    """denoise, one tile at a time (tile_boxes), so that memory is a tile's whatever the image's size: each tile
    is denoised with `margin` pixels of its neighbours around it, which are then cropped off, so every output pixel
    comes from a piece in which it had that much context (the image's own edges as in a whole-image pass).
    on_tile: called after each tile (a progress bar's update). (B, 3, H, W) in, the same out, in fp32."""
    boxes = model_tiles(model, noisy, tile_size, margin)
    if len(boxes) == 1:
        output = denoise(model, noisy, sigmas, conditioned, self_ensemble, precision).float()
        if on_tile:
            on_tile()
        return output
    output = torch.empty(noisy.shape, dtype=torch.float32, device=noisy.device)
    for (top, bottom, left, right), (seen_top, seen_bottom, seen_left, seen_right) in boxes:
        piece = denoise(model, noisy[..., seen_top:seen_bottom, seen_left:seen_right], sigmas, conditioned,
                        self_ensemble, precision)
        output[..., top:bottom, left:right] = piece[..., top - seen_top:bottom - seen_top,
                                                    left - seen_left:right - seen_left]
        if on_tile:
            on_tile()
    return output


def seeded_noisy(clean: torch.Tensor, image_ids, noise: NoiseSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """(noisy, sigmas) where image i's noise depends only on (noise.seed, image_ids[i]), not on the device: it is
    drawn on the CPU (a CUDA generator draws other numbers from the same seed), so a run validated on a GPU and
    one validated on a CPU score the same noisy images."""
    noisy, sigmas = [], []
    for image, image_id in zip(clean, image_ids):
        generator = torch.Generator().manual_seed(noise.seed * 1_000_003 + int(image_id))
        sigma = draw_sigmas(1, noise.sigma_min, noise.sigma_max, generator, torch.device("cpu"))
        noisy.append(add_gaussian_noise(image[None].cpu(), sigma, generator, noise.clip))
        sigmas.append(sigma)
    return torch.cat(noisy).to(clean.device), torch.cat(sigmas).to(clean.device)


def image_quality(output: torch.Tensor, clean: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image MSE, PSNR (dB, data range 1) and SSIM (SSIM_WINDOW: 11x11 Gaussian window, sigma 1.5); (B,) each.
    Images under the window either way have no SSIM: the caller refuses them."""
    # imported here: torchmetrics' image package imports torchvision (2 s), which `toolkit denoise` never needs
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    output = output.float().clamp(0, 1)
    clean = clean.float()
    return {
        "mse": ((output - clean) ** 2).mean(dim=(1, 2, 3)),
        "psnr": peak_signal_noise_ratio(output, clean, data_range=1.0, reduction="none", dim=(1, 2, 3)),
        "ssim": structural_similarity_index_measure(output, clean, data_range=1.0, reduction="none",
                                                    gaussian_kernel=True, kernel_size=SSIM_WINDOW, sigma=1.5),
    }


def nlm_denoise(noisy: torch.Tensor, sigmas: torch.Tensor, h_factor: float = 0.8) -> torch.Tensor:
    """scikit-image's non-local means per image (fast mode, 5x5 patches, 13x13 search), h = h_factor * sigma."""
    from skimage.restoration import denoise_nl_means

    out = []
    for image, sigma in zip(noisy.float().cpu().numpy(), sigmas.cpu().numpy()):
        hwc = np.ascontiguousarray(image.transpose(1, 2, 0), dtype=np.float64)
        result = denoise_nl_means(hwc, h=h_factor * float(sigma), sigma=float(sigma), fast_mode=True,
                                  patch_size=5, patch_distance=6, channel_axis=-1)
        out.append(torch.from_numpy(result.transpose(2, 0, 1).astype(np.float32)))
    return torch.stack(out).to(noisy.device)


@contextlib.contextmanager
def bm3d_denoiser(workers: int | None = None):
    """A function ([(3, H, W) images of any sizes], [each one's noise std]) -> their CBM3D outputs (colour BM3D,
    Dabov et al. 2007; the `bm3d` package of Tampere University, licensed for non-commercial use only: never a hard
    dependency) as CPU tensors, one image per core, on worker processes (one per core, or `workers`) started once
    for the `with` block: a loop that hands CBM3D a few images at a time (to hold only those
    in memory) does not pay for starting them, and the library's import, at every call."""
    from toolkit.bm3d_worker import bm3d_pool

    with bm3d_pool(workers or os.cpu_count() or 1) as run_jobs:
        def denoise_each(images: list[torch.Tensor], sigmas: list[float]) -> list[torch.Tensor]:
            jobs = [(np.ascontiguousarray(image.float().cpu().numpy().transpose(1, 2, 0)), sigma)
                    for image, sigma in zip(images, sigmas)]
            return [torch.from_numpy(result.transpose(2, 0, 1)) for result in run_jobs(jobs)]

        yield denoise_each


def bm3d_available() -> bool:
    try:
        import bm3d  # noqa: F401
    except ImportError:
        return False
    return True


@torch.no_grad()
def evaluate_denoiser(model, shard: Shard, accelerator, noise: NoiseSpec, conditioned: bool = False,
                      baselines: tuple[str, ...] = ("noisy",), nlm_h_factor: float = 0.8,
                      keep_examples: int = 0, progress: str = "") -> dict:
    """Average per-image metrics of `model` (None: baselines only) and of each baseline
    ('noisy': the noisy input itself, 'nlm', 'bm3d') over every image of the set `shard` is part of.

    Each image's noise is seeded by its dataset index (shard.indices), so every model and baseline
    sees the same noisy images whatever the batch or process count. With keep_examples=k, the first
    k (clean, noisy, output) images of this process come back as 'examples'. `progress`: a bar's title.
    """
    if model is not None:
        model = accelerator.unwrap_model(model)  # DDP's forward would sync buffers: unequal shards would deadlock
        share_buffers(model, accelerator)
    was_training = model.training if model is not None else False
    if model is not None:
        model.eval()
    methods = (["model"] if model is not None else []) + list(baselines)
    device = accelerator.device
    sums = {method: torch.zeros(len(METRICS), dtype=torch.float64, device=device) for method in methods}
    count = torch.zeros((), dtype=torch.int64, device=device)
    examples: dict[str, list] = {"clean": [], "noisy": [], "model": []}
    position = 0
    batches = shard.loader
    if progress:
        batches = tracked(batches, len(batches), progress, "batch", accelerator.is_main_process)
    # CBM3D's worker processes start once for the whole set, not at every batch; the cores shared among the processes
    workers = max(1, (os.cpu_count() or 1) // accelerator.num_processes)
    with bm3d_denoiser(workers) if "bm3d" in methods else contextlib.nullcontext() as run_bm3d:
        for (images,) in batches:
            clean = to_unit_range(images.to(device))
            ids = shard.indices[position:position + len(clean)]
            position += len(clean)
            noisy, sigmas = seeded_noisy(clean, ids, noise)
            outputs = {}
            if model is not None:
                with accelerator.autocast():
                    outputs["model"] = denoise(model, noisy, sigmas, conditioned).float()
            if "noisy" in methods:
                outputs["noisy"] = noisy
            if "nlm" in methods:
                outputs["nlm"] = nlm_denoise(noisy, sigmas, nlm_h_factor)
            if "bm3d" in methods:
                outputs["bm3d"] = torch.stack(run_bm3d(list(noisy), sigmas.tolist())).to(device)
            for method, output in outputs.items():
                quality = image_quality(output, clean)
                sums[method] += torch.stack([quality[m].double().sum() for m in METRICS])
            count += len(clean)
            if keep_examples and len(examples["clean"]) < keep_examples:
                take = keep_examples - len(examples["clean"])
                examples["clean"] += list(clean[:take].cpu())
                examples["noisy"] += list(noisy[:take].clamp(0, 1).cpu())
                if model is not None:
                    examples["model"] += list(outputs["model"][:take].clamp(0, 1).cpu())
    total = int(accelerator.reduce(count, reduction="sum"))
    result = {"n": total, "noise": noise.as_dict()}
    for method in methods:
        means = (accelerator.reduce(sums[method], reduction="sum") / max(total, 1)).tolist()
        result[method] = dict(zip(METRICS, means))
    if model is not None:
        model.train(was_training)
    if keep_examples:
        result["examples"] = examples
    return result


def to_hwc_uint8(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) float in [0, 1] -> (H, W, 3) uint8 for figures and files."""
    return (image.float().clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
