"""One denoiser on noisy Intel scenes (STUDY.md, Part 2): the study's autoencoders, their family, a U-Net...

Defaults are the study's: AE38, Adam lr 1e-3, weight decay 1e-5, batch 100, 8 epochs, MSE on
150x150 images, noise sigma 0.3 (on [0, 1]) clipped to [0, 1], fresh every batch.

    accelerate launch recipes/autoencoder.py                         # AE38, the study's choice
    accelerate launch recipes/autoencoder.py --model=AE10            # any denoiser of toolkit.models.DENOISERS
    accelerate launch recipes/autoencoder.py --model=unet --crop=96  # the U-Net, trained on random crops
    accelerate launch recipes/autoencoder.py --model=unet --model_kwargs=width=16,levels=2   # its constructor
    accelerate launch recipes/autoencoder.py --train_minutes=10      # the epochs that 10 minutes hold here
    accelerate launch recipes/autoencoder.py --init_from=runs/blind_denoiser-X --model=resunet --conditioned
        # fine-tune a trained denoiser (e.g. the CBSD432 blind one) on this noise
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from toolkit.config import check_non_negative, check_positive, parse_kwargs
from toolkit.data.augment import random_flip, step_generator, to_unit_range
from toolkit.data.denoising import load_denoising_data
from toolkit.data.loaders import make_loader, stand_in_batch
from toolkit.data.noise import add_gaussian_noise, draw_sigmas, random_crop
from toolkit.data.settings import DenoisingDataSettings
from toolkit.errors import ConfigError
from toolkit.models import DENOISERS, build_model, check_model_spec
from toolkit.models.weights import load_trained_weights
from toolkit.run import RunSettings, run_recipe, start_run
from toolkit.train.denoise import NoiseSpec, denoise
from toolkit.train.denoiser import DenoiserEvaluation, finish_denoiser_run
from toolkit.train.loop import TrainingLoop
from toolkit.train.state import TrainerState


@dataclass
class Config(DenoisingDataSettings, RunSettings):
    model: str = "AE38"  # a denoiser of toolkit.models.DENOISERS: AE5..AE146 (the study's AE10/38/71), unet, ...
    model_kwargs: str = ""  # constructor arguments, e.g. "width=16,levels=2" (default: the model's own)
    conditioned: bool = False  # give the noise level to the network as an extra channel (unet, dncnn, resunet)
    init_from: str = ""  # start from this trained denoiser's weights (a run directory or checkpoint)
    epochs: int = 8  # passes over the training images
    train_minutes: float = 0.0  # >0: instead of --epochs, the epochs that fit in these minutes here (measured
    # first); training also ends once these minutes are spent, should the steps run slower than timed
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


def model_spec(cfg: Config) -> dict:
    return {"name": cfg.model, "kwargs": parse_kwargs("model_kwargs", cfg.model_kwargs)
            | ({"conditioned": True} if cfg.conditioned else {})}


def check_config(cfg: Config) -> None:
    """Every value in range, before any work: a study checks each of its runs' configs before training any."""
    check_positive(cfg, "epochs", "batch_size", "eval_batch_size", "lr")
    check_non_negative(cfg, "weight_decay", "sigma", "sigma_max", "crop", "grid_images", "train_minutes")
    if cfg.model not in DENOISERS:
        raise ConfigError(f"--model={cfg.model!r} is not a denoiser; choose from {', '.join(DENOISERS)}")
    if cfg.sigma_max and cfg.sigma_max < cfg.sigma:
        raise ConfigError(f"--sigma_max={cfg.sigma_max} is below --sigma={cfg.sigma}: blind noise needs a range")
    check_model_spec(model_spec(cfg))


def main(cfg: Config) -> dict:
    check_config(cfg)
    spec = model_spec(cfg)
    run = start_run(cfg, f"autoencoder-{cfg.model}")
    with run.main_process_first():
        data = load_denoising_data(cfg, cfg.seed, cfg.cache_dir, cfg.num_workers, log=run.say)
    run.say(f"[data] {data.describe()}")
    model = build_model(spec).to(memory_format=torch.channels_last)  # NHWC for the convolutions
    weights = load_trained_weights(model, cfg.init_from) if cfg.init_from else "random initialisation"
    optimizer = torch.optim.Adam(model.parameters(), lr=run.scale_lr(cfg.lr), weight_decay=cfg.weight_decay)
    model, optimizer = run.prepare(model, optimizer, batch_size=cfg.batch_size, image_size=cfg.crop or cfg.image_size)
    accelerator, device = run.accelerator, run.device
    train_loader = make_loader(data.stored, data.train_indices, cfg.batch_size, train=True,
                               image_size=cfg.image_size, device=device, seed=cfg.seed, num_processes=run.world,
                               num_workers=cfg.num_workers)
    sigma_max = cfg.sigma_max or cfg.sigma
    noise = NoiseSpec(cfg.sigma, sigma_max, cfg.clip_noise, cfg.noise_seed)
    evaluation = DenoiserEvaluation(run, data.stored, data.val_indices, data.test_indices, cfg.image_size, noise,
                                    cfg.conditioned, cfg.eval_batch_size, cfg.grid_images)
    state = TrainerState("autoencoder", spec, {"image_size": cfg.image_size}, noise=noise.as_dict(),
                         conditioned=cfg.conditioned, label=cfg.model, weights=weights)
    loop = TrainingLoop(run, state, model, optimizer, evaluation.validate, cfg.eval_every,
                        eval_at_epoch_end=bool(cfg.grid_images))

    def train_step(images: torch.Tensor, step: int):
        generator = step_generator(device, cfg.seed, step, run.rank)  # flips, crop, noise: replayable on resume
        clean = to_unit_range(random_crop(random_flip(images, generator), cfg.crop, generator))
        sigmas = draw_sigmas(clean.shape[0], cfg.sigma, sigma_max, generator, device)
        noisy = add_gaussian_noise(clean, sigmas, generator, cfg.clip_noise)
        with accelerator.accumulate(model):
            with accelerator.autocast():
                output = denoise(model, noisy, sigmas, cfg.conditioned)  # (B, 3, H, W)
            loss = F.mse_loss(output.float(), clean)
            accelerator.backward(loss)
            optimizer.step()
        return loss, len(clean)

    model.train()
    epochs = cfg.epochs
    if cfg.train_minutes:  # as many epochs as fit on this machine: timed on stand-in images, then undone
        stand_in = stand_in_batch(cfg.batch_size, cfg.image_size, cfg.seed, device)
        epochs = loop.epochs_within_minutes(cfg.train_minutes, len(train_loader), lambda: train_step(stand_in, 0)[0])
    for (images,) in loop.batches(lambda epoch: train_loader, epochs):
        loss, images_in_step = train_step(images, loop.step)
        loop.end_step(loss, images_in_step)
    return finish_denoiser_run(loop, evaluation, data.describe(), data.fingerprint(), data.synthetic)


if __name__ == "__main__":
    run_recipe(main, Config)
