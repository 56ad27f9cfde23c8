"""A blind colour denoiser trained the published way, on clean photographs (CBSD432 or any folder).

Protocol (DnCNN/FFDNet/DRUNet): clean images in [0, 1]; additive white Gaussian noise, NOT clipped, its
sigma drawn per patch from [0, --sigma_max]/255; the noise level given to the network as an input map,
so one model serves every sigma (toolkit denoise estimates it when it is not known); residual learning
(the network predicts the noise); patches cropped at random from tiles stored once in a .beton, then
rotated and mirrored on the device. Validation: held-out images' tiles at sigma 15 / 25 / 50 (with
--reductions=1,2 their halved tiles are scored apart, as val/x2/...). The test is `toolkit benchmark-denoiser
RUN --clean McMaster`: never tune on it.

    accelerate launch recipes/blind_denoiser.py --data=data/denoise/CBSD432          # the default model and budget
    accelerate launch recipes/blind_denoiser.py --train_minutes=60 --lr=7e-4 --batch_size=4   # the epochs an hour holds
    accelerate launch recipes/blind_denoiser.py --model=dncnn --model_kwargs=depth=17,width=64
    accelerate launch recipes/blind_denoiser.py --sigma_max=75                       # a wider noise range
    accelerate launch recipes/blind_denoiser.py --light_noise_share=0.1              # a tenth of patches at sigma 0-5
    accelerate launch recipes/blind_denoiser.py --early_patch_size=64 --train_minutes=60   # progressive patches
    accelerate launch recipes/blind_denoiser.py --model_kwargs='widths=(64,128,256,512),blocks=2' \
        --patch_size=128 --batch_size=32 --lr=5e-4 --train_minutes=6.5     # a GPU's budget (6.5 min on one H200)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from toolkit.config import check_fraction, check_non_negative, check_positive, parse_kwargs, parse_sizes
from toolkit.data.augment import random_channel_order, random_dihedral, random_patches, step_generator, to_unit_range
from toolkit.data.clean_images import load_clean_images
from toolkit.data.loaders import make_loader, stand_in_batch
from toolkit.data.noise import add_gaussian_noise, draw_sigmas_favouring_light, noise_level_weights
from toolkit.data.settings import CleanImageSettings
from toolkit.errors import ConfigError
from toolkit.models import DENOISERS, build_model, check_model_spec
from toolkit.run import RunSettings, run_recipe, start_run
from toolkit.train.denoiser import FixedSigmaEvaluation, finish_denoiser_run
from toolkit.train.loop import TrainingLoop
from toolkit.train.schedule import one_cycle_lr, set_lr
from toolkit.train.state import TrainerState


@dataclass
class Config(CleanImageSettings, RunSettings):
    model: str = "resunet"  # a denoiser of toolkit.models.DENOISERS that takes a noise level (resunet, unet, dncnn)
    # chosen on CBSD432 validation images at equal CPU time (docs/results.md): 24-192 channels, 2 blocks per level
    model_kwargs: str = "widths=(24,48,96,192),blocks=2"  # its constructor arguments
    patch_size: int = 96  # training patches, cropped at random from the tiles
    # progressive patches: smaller, cheaper ones for the first iterations buy more updates in a time budget, and
    # the schedule ends on --patch_size (0 = --patch_size throughout)
    early_patch_size: int = 0  # >0: patches of this size for the first --early_patch_share of the iterations
    early_patch_share: float = 0.5  # share of the iterations that use --early_patch_size
    batch_size: int = 16  # patches per iteration, per process (on 2 CPU cores' hour 8 beat 16, 4 beat 8, 2 lost to 4)
    eval_batch_size: int = 32  # tiles per evaluation batch
    # 44 epochs at --lr=5e-4 scored 0.7 dB higher than these defaults in 59 minutes of 2 AVX512-BF16 cores (bf16);
    # 1e-3 over 18 epochs had a loss spike it did not recover from: a longer schedule needs a lower peak.
    # --train_minutes sets the epochs from the time per iteration measured on this machine before training
    epochs: int = 10  # passes over the tiles (31 min fp32 on 2 AVX2 cores; 13 bf16 on 2 AVX512-BF16 cores)
    train_minutes: float = 0.0  # >0: instead of --epochs, the epochs that fit in these minutes here (measured
    # first); training also ends once these minutes are spent, should the steps run slower than timed
    lr: float = 1e-3  # peak Adam learning rate of the one-cycle schedule (2e-3 diverged after 300 steps at the peak)
    max_grad_norm: float = 1.0  # clip the gradient norm to this (0 = never): a guard against a runaway step
    warmup_fraction: float = 0.05  # share of training spent warming the learning rate up
    loss: Literal["l1", "mse"] = "l1"  # the training loss
    # noise levels above the floor counted alike, as in a mean PSNR over them (+0.01 dB on validation: not adopted)
    sigma_weight_floor: float = 0.0  # >0: weight each patch's loss by sqrt(floor / max(sigma, floor)), 0-255 scale
    channel_orders: bool = False  # put each patch's R, G, B in one of their 6 orders at random (-0.09 dB on validation)
    sigma_max: float = 50.0  # noise std drawn per patch from [0, sigma_max] on the 0-255 scale
    # the network learns what to leave alone in a nearly clean image (0.1 in the hour: +1.5 dB at sigma 0-2, -0.004
    # at 15-50)
    light_noise_share: float = 0.0  # this share of the patches draws its sigma from [0, --light_noise_max] instead
    light_noise_max: float = 5.0  # the light patches' sigma ceiling, 0-255 scale (above 0, at most --sigma_max)
    val_sigmas: str = "15,25,50"  # validation noise levels (0-255 scale)
    ema_decay: float = 0.999  # weight averaging for evaluation (0 = evaluate the raw weights)
    noise_seed: int = 1234  # seeds the validation noise
    grid_images: int = 4  # validation tiles in the clean / noisy / denoised grids
    eval_every: int = 500  # iterations between validation passes (each draws a grid)
    log_every: int = 5  # iterations between training-loss log lines


def model_spec(cfg: Config) -> dict:
    return {"name": cfg.model, "kwargs": parse_kwargs("model_kwargs", cfg.model_kwargs) | {"conditioned": True}}


def check_config(cfg: Config) -> None:
    """Every value in range, before any work: a study checks each of its runs' configs before training any."""
    check_positive(cfg, "patch_size", "batch_size", "eval_batch_size", "epochs", "lr", "sigma_max")
    check_non_negative(cfg, "grid_images", "max_grad_norm", "train_minutes", "sigma_weight_floor",
                       "early_patch_size")
    check_fraction(cfg, "warmup_fraction", "early_patch_share", "light_noise_share", "ema_decay")
    if not 0 < cfg.light_noise_max <= cfg.sigma_max:
        raise ConfigError(f"--light_noise_max={cfg.light_noise_max} must be above 0 and at most "
                          f"--sigma_max={cfg.sigma_max}")
    if cfg.model not in DENOISERS:
        raise ConfigError(f"--model={cfg.model!r} is not a denoiser; choose from {', '.join(DENOISERS)}")
    for name in ("patch_size", "early_patch_size"):
        if getattr(cfg, name) > cfg.tile_size:
            raise ConfigError(f"--{name}={getattr(cfg, name)} is larger than --tile_size={cfg.tile_size}")
    parse_sizes("val_sigmas", cfg.val_sigmas)
    check_model_spec(model_spec(cfg))


def main(cfg: Config) -> dict:
    check_config(cfg)
    val_sigmas, spec = parse_sizes("val_sigmas", cfg.val_sigmas), model_spec(cfg)
    run = start_run(cfg, f"blind_denoiser-{cfg.model}")
    with run.main_process_first():  # one process per machine writes the tiles; the others reuse them
        data = load_clean_images(cfg, cfg.cache_dir, cfg.num_workers, log=run.say)
    run.say(f"[data] {data.describe()}")
    train_tiles = data.train_indices_with_repeats(cfg.reduced_tile_repeats)
    if cfg.reduced_tile_repeats > 1:
        run.say(f"[data] each reduced training tile {cfg.reduced_tile_repeats} times per epoch: "
                f"{len(train_tiles)} tile turns per epoch")

    model = build_model(spec).to(memory_format=torch.channels_last)  # NHWC for the convolutions
    optimizer = torch.optim.Adam(model.parameters(), lr=run.scale_lr(cfg.lr))
    model, optimizer = run.prepare(model, optimizer, batch_size=cfg.batch_size, image_size=cfg.patch_size)
    accelerator, device = run.accelerator, run.device
    train_loader = make_loader(data.stored, train_tiles, cfg.batch_size, train=True,
                               image_size=cfg.tile_size, device=device, seed=cfg.seed, num_processes=run.world,
                               num_workers=cfg.num_workers)
    # validation chooses on the held-out images' tiles as they are; with --reductions, their smaller tiles beside
    val_tiles = data.val_indices_by_reduction()
    first, *smaller = val_tiles
    evaluation = FixedSigmaEvaluation(run, data.stored, val_tiles[first], cfg.tile_size, val_sigmas, True,
                                      cfg.eval_batch_size, cfg.grid_images, cfg.noise_seed,
                                      more_val={f"x{reduction}": val_tiles[reduction] for reduction in smaller})
    noise = {"sigma_min": 0.0, "sigma_max": cfg.sigma_max / 255, "clip": False, "seed": cfg.noise_seed}
    state = TrainerState("blind_denoiser", spec, {"image_size": cfg.tile_size}, noise=noise, conditioned=True,
                         label=cfg.model)
    loop = TrainingLoop(run, state, model, optimizer, evaluation.validate, cfg.eval_every, cfg.ema_decay)
    peak_lr, loss_of = run.scale_lr(cfg.lr), {"l1": F.l1_loss, "mse": F.mse_loss}[cfg.loss]

    def train_step(tiles: torch.Tensor, step: int, patch_size: int):
        clean, noisy, sigmas = noisy_patches(tiles, patch_size, cfg, step_generator(device, cfg.seed, step, run.rank))
        with accelerator.accumulate(model):
            with accelerator.autocast():
                output = model(noisy, sigmas)  # (B, 3, P, P): noisy minus the predicted noise
            if cfg.sigma_weight_floor:
                per_patch = loss_of(output.float(), clean, reduction="none").mean(dim=(1, 2, 3))
                loss = (per_patch * noise_level_weights(sigmas, cfg.sigma_weight_floor / 255)).mean()
            else:
                loss = loss_of(output.float(), clean)
            accelerator.backward(loss)
            grad_norm = None
            if cfg.max_grad_norm and accelerator.sync_gradients:  # the norm before clipping, logged
                grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
        return loss, len(clean), grad_norm

    model.train()
    epochs = cfg.epochs
    if cfg.train_minutes:  # as many epochs as fit on this machine: timed on stand-in tiles, then undone
        stand_in = stand_in_batch(cfg.batch_size, cfg.tile_size, cfg.seed, device)
        phases = [(f"patches of {size}", share, lambda size=size: train_step(stand_in, 0, size)[0])
                  for size, share in patch_plan(cfg) if share]
        epochs = loop.epochs_within_minutes(cfg.train_minutes, len(train_loader), phases)
    for (tiles,) in loop.batches(lambda epoch: train_loader, epochs):
        position = loop.schedule_at(loop.step - 1)  # (where this iteration stands, the schedule's length)
        set_lr(optimizer, one_cycle_lr(*position, peak_lr, cfg.warmup_fraction))
        patch_size = patch_size_at(*position, cfg)
        if loop.step > 1 and patch_size != patch_size_at(*loop.schedule_at(loop.step - 2), cfg):
            run.say(f"\n[patches] from iteration {loop.step} of {loop.total_steps}: patches of {patch_size}")
        loss, patches, grad_norm = train_step(tiles, loop.step, patch_size)
        loop.end_step(loss, patches, grad_norm=grad_norm)
    return finish_denoiser_run(loop, evaluation, data.describe(), data.fingerprint(), data.synthetic)


def patch_plan(cfg: Config) -> list[tuple[int, float]]:
    """(patch size, share of the iterations) in the order training uses them."""
    if not cfg.early_patch_size:
        return [(cfg.patch_size, 1.0)]
    return [(cfg.early_patch_size, cfg.early_patch_share), (cfg.patch_size, 1.0 - cfg.early_patch_share)]


def patch_size_at(position: float, total_iterations: int, cfg: Config) -> int:
    """The patch size at `position` (a training iteration counted from 0, or where it stands in a schedule a
    re-plan stretched: loop.schedule_at) of `total_iterations`, read from patch_plan (the plan the time budget
    timed): a function of the plan alone, so a resumed run crops exactly as the uninterrupted one did."""
    plan = patch_plan(cfg)
    ends = 0.0
    for size, share in plan:
        ends += share
        if position < round(ends * total_iterations):
            return size
    return plan[-1][0]


def noisy_patches(tiles: torch.Tensor, patch_size: int, cfg: Config, generator: torch.Generator):
    """(clean, noisy, sigmas) for a batch of uint8 tiles (B, 3, T, T), on their device: one random patch of
    patch_size per tile, turned and mirrored at random (its colour channels reordered with --channel_orders),
    plus unclipped Gaussian noise of a sigma drawn per patch (a --light_noise_share of them light). A pure
    function of (tiles, patch size, step generator): a resumed run replays exactly the same patches and noise."""
    clean = random_dihedral(random_patches(to_unit_range(tiles), patch_size, generator), generator)
    if cfg.channel_orders:
        clean = random_channel_order(clean, generator)
    sigmas = draw_sigmas_favouring_light(len(clean), cfg.sigma_max / 255, cfg.light_noise_share,
                                         cfg.light_noise_max / 255, generator, tiles.device)  # (B,)
    return clean, add_gaussian_noise(clean, sigmas, generator, clip=False), sigmas  # (B, 3, P, P) x2, (B,)


if __name__ == "__main__":
    run_recipe(main, Config)
