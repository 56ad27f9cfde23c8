"""One denoiser on noisy Intel scenes (STUDY.md, Part 2): the study's autoencoders or a U-Net / DnCNN.

Defaults are the study's: AE38, Adam lr 1e-3, weight decay 1e-5, batch 100, 8 epochs, MSE on
150x150 images, noise sigma 0.3 (on [0, 1]) clipped to [0, 1], fresh every batch.

    accelerate launch recipes/autoencoder.py                         # AE38, the study's choice
    accelerate launch recipes/autoencoder.py --model=AE10            # AE10 / AE38 / AE71 / unet / dncnn
    accelerate launch recipes/autoencoder.py --model=unet --crop=96  # the U-Net, trained on random crops
    accelerate launch recipes/autoencoder.py --model=unet --conditioned --sigma=0 --sigma_max=0.2 \\
        --clip_noise=false                                           # blind, for the published benchmarks
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from toolkit.config import check_non_negative, check_positive
from toolkit.data.augment import random_flip, step_generator, to_unit_range
from toolkit.data.denoising import load_denoising_data
from toolkit.data.loaders import make_loader, shard_indices
from toolkit.data.noise import add_gaussian_noise, draw_sigmas, random_crop
from toolkit.errors import ConfigError
from toolkit.models.autoencoders import STUDY_AUTOENCODERS
from toolkit.run import DenoisingDataSettings, RunSettings, run_recipe, start_run
from toolkit.train.checkpoint import load_checkpoint, save_checkpoint
from toolkit.train.denoise import NoiseSpec, denoise
from toolkit.train.denoiser_report import build_denoiser, finish_denoiser_run, validate_denoiser
from toolkit.train.loop import due, resumable_batches
from toolkit.train.meter import TrainingMeter


@dataclass
class Config(DenoisingDataSettings, RunSettings):
    model: Literal["AE10", "AE38", "AE71", "unet", "dncnn"] = "AE38"  # which denoiser
    width: int = 32  # unet: channels at full resolution; dncnn: channels of every layer
    depth: int = 3  # unet: resolution levels; dncnn: layers
    conditioned: bool = False  # unet/dncnn: give the noise level to the network as an extra channel
    epochs: int = 8  # passes over the training images
    batch_size: int = 100  # images per iteration, per process
    eval_batch_size: int = 100  # images per evaluation batch
    lr: float = 1e-3  # Adam learning rate
    weight_decay: float = 1e-5  # Adam weight decay (L2)
    sigma: float = 0.3  # noise standard deviation on the [0, 1] scale (0.3 = 76.5/255)
    sigma_max: float = 0.0  # >0: blind training, sigma drawn per image from [--sigma, --sigma_max]
    clip_noise: bool = True  # clip noisy images to [0, 1] (the study) or not (published benchmarks)
    crop: int = 0  # >0: train on random crop x crop windows (evaluation always uses whole images)
    noise_seed: int = 1234  # seeds the evaluation noise: every model sees the same noisy images
    grid_images: int = 6  # images in the clean / noisy / denoised grids
    # every epoch ends with a validation pass (and grids); SSIM on a CPU makes more of them costly
    eval_every: int = 0  # iterations between extra validation passes within an epoch (0 = none)
    channels_last: bool = True  # NHWC memory for the convolutions


def main(cfg: Config) -> dict:
    check_positive(cfg, "epochs", "batch_size", "eval_batch_size", "lr", "width", "depth")
    check_non_negative(cfg, "weight_decay", "sigma", "sigma_max", "crop", "grid_images")
    if cfg.sigma_max and cfg.sigma_max < cfg.sigma:
        raise ConfigError(f"--sigma_max={cfg.sigma_max} is below --sigma={cfg.sigma}: blind noise needs a range")
    if cfg.conditioned and cfg.model in STUDY_AUTOENCODERS:
        raise ConfigError("--conditioned applies to --model=unet or dncnn, not to the study's autoencoders")
    run = start_run(cfg, f"autoencoder-{cfg.model}")
    accelerator, say = run.accelerator, run.say
    rank, world = accelerator.process_index, accelerator.num_processes
    with accelerator.main_process_first():
        data = load_denoising_data(cfg.data, cfg.pool_split, cfg.holdout_fraction, cfg.val_fraction, cfg.seed,
                                   cfg.image_size, cfg.storage, cfg.cache_dir or None, cfg.max_train_images,
                                   cfg.num_workers, log=say)
    say(f"[data] {data.describe()}")

    model, spec = build_denoiser(cfg.model, cfg.width, cfg.depth, cfg.conditioned)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    model, optimizer = accelerator.prepare(model, optimizer)
    device = accelerator.device
    train_loader = make_loader(data.stored, data.train_indices, cfg.batch_size, train=True,
                               resolution=cfg.image_size, device=device, seed=cfg.seed, distributed=world > 1,
                               num_workers=cfg.num_workers)
    val_ids = shard_indices(data.val_indices, rank, world)
    val_loader = make_loader(data.stored, val_ids, cfg.eval_batch_size, train=False, resolution=cfg.image_size,
                             device=device, num_workers=cfg.num_workers)
    sigma_max = cfg.sigma_max or cfg.sigma
    noise = NoiseSpec(cfg.sigma, sigma_max, cfg.clip_noise, cfg.noise_seed)
    state = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "train_seconds": 0.0, "images_seen": 0, "model": spec["name"],
             "model_spec": spec, "recipe": "autoencoder", "label": cfg.model, "noise": noise.as_dict(),
             "conditioned": cfg.conditioned, "preprocessing": {"image_size": cfg.image_size}}
    if run.resume_from:
        state.update(load_checkpoint(accelerator, run.resume_from, {"model": spec["name"], "label": cfg.model}))
        say(f"[run] resumed from {run.resume_from} at iteration {state['step']}")
    total_steps = cfg.epochs * len(train_loader)
    last_step = min(total_steps, cfg.max_steps) if cfg.max_steps else total_steps
    meter = TrainingMeter(accelerator)

    model.train()
    tick = time.perf_counter()
    batches_to_train = resumable_batches(lambda epoch: train_loader, state, cfg.epochs, last_step)
    for epoch, batch, batches, (images,) in batches_to_train:
        step = state["step"]
        generator = step_generator(device, cfg.seed, step, rank)  # flips, crop, noise: replayable on resume
        clean = to_unit_range(random_crop(random_flip(images, generator), cfg.crop, generator))
        sigmas = draw_sigmas(clean.shape[0], cfg.sigma, sigma_max, generator, device)
        noisy = add_gaussian_noise(clean, sigmas, generator, cfg.clip_noise)
        with accelerator.accumulate(model):
            with accelerator.autocast():
                output = denoise(model, noisy, sigmas, cfg.conditioned)
            loss = F.mse_loss(output.float(), clean)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        meter.add(loss, clean.shape[0], time.perf_counter() - tick)

        evaluate_now = due(step, cfg.eval_every)
        checkpoint_now = due(step, cfg.checkpoint_every)
        if due(step, cfg.log_every) or evaluate_now or checkpoint_now or step == last_step:
            metrics = meter.flush(step)
            metrics.update(epoch=epoch + (batch + 1) / batches, lr=optimizer.param_groups[0]["lr"])
            state["train_seconds"] += metrics["seconds"]
            state["images_seen"] += metrics["images"]
            run.logger.log(metrics, step)
        grid_now = batch + 1 == batches and cfg.grid_images  # grids at every epoch's end, as the study had
        if (evaluate_now or grid_now) and step != last_step:
            validate_denoiser(run, model, val_loader, val_ids, noise, cfg.conditioned, step,
                              grid_images=cfg.grid_images if grid_now else 0, epoch=epoch + 1)
        if checkpoint_now and step != last_step and accelerator.sync_gradients:
            save_checkpoint(accelerator, run.run_dir, step, state, cfg.keep_checkpoints)
        tick = time.perf_counter()

    return finish_denoiser_run(run, model, data, val_loader, val_ids, noise, state, cfg.eval_batch_size,
                               cfg.num_workers, cfg.keep_checkpoints, cfg.grid_images)


if __name__ == "__main__":
    run_recipe(main, Config)
