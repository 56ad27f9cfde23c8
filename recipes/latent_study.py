"""The study's latent-size study, measured honestly and then beaten (STUDY.md, Part 2).

Trains AE10, AE38, AE71 and a U-Net on the same images with the same noise (or reads finished
runs), then scores all of them and the baselines (the noisy input itself, non-local means,
optionally BM3D) on the same held-out noisy images: the table (model, latent shape and size
relative to the input, parameters, GFLOP, PSNR, SSIM, MSE, training time, images/s), PSNR against
latent size, every model's validation curve, and one grid of the same images through every model.

    accelerate launch recipes/latent_study.py                       # the study's settings, then the U-Net
    accelerate launch recipes/latent_study.py --unet_args="--epochs=8 --crop=96"   # a longer U-Net
    accelerate launch recipes/latent_study.py --models=AE10,AE38 --max_steps=20   # a quick look
    accelerate launch recipes/latent_study.py --bm3d                # add BM3D (pip install bm3d; non-commercial)
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import autoencoder  # the sibling recipe: this file's folder is on sys.path when it runs as a script
import torch

from toolkit.config import check_positive, derive_config, field_names
from toolkit.data.denoising import load_denoising_data
from toolkit.data.loaders import make_loader, shard_indices
from toolkit.errors import ConfigError
from toolkit.inference import load_trained_model
from toolkit.plots import plot_image_rows, plot_lines
from toolkit.run import DenoisingDataSettings, RunSettings, run_recipe, start_run
from toolkit.train.denoise import (
    NoiseSpec,
    bm3d_available,
    denoise,
    evaluate_denoiser,
    nlm_denoise,
    seeded_noisy,
    to_hwc_uint8,
)

STUDY_TRAINING_MSE = {"AE10": "0.019-0.021 (≈17 dB)", "AE38": "≈0.011 (≈19.6 dB)", "AE71": "≈0.011 (≈19.6 dB)"}


@dataclass
class Config(DenoisingDataSettings, RunSettings):
    models: str = "AE10,AE38,AE71,unet"  # comma-separated: AE10, AE38, AE71, unet, dncnn
    ae_args: str = ""  # extra options for recipes/autoencoder.py for the autoencoders
    unet_args: str = "--crop=64 --epochs=4"  # extra options for the U-Net / DnCNN runs (64px crops: 5x cheaper)
    sigma: float = 0.3  # noise standard deviation on [0, 1], for every model and baseline
    clip_noise: bool = True  # clip noisy images to [0, 1], as the study did
    noise_seed: int = 1234  # the evaluation noise, shared by every model and baseline
    nlm: bool = True  # score non-local means (scikit-image) on the held-out images
    bm3d: bool = False  # score BM3D too (needs `pip install bm3d`; licence: non-commercial use only)
    baseline_images: int = 0  # >0: score the classical baselines on the first N held-out images only
    grid_images: int = 6  # held-out images in the final side-by-side grid
    eval_batch_size: int = 100  # images per evaluation batch
    # every epoch ends with a validation pass (and grids); SSIM on a CPU makes more of them costly
    eval_every: int = 0  # iterations between extra validation passes within an epoch (0 = none)
    reuse_finished: bool = True  # read runs already finished in --run_dir instead of training them again


def _finished(run_dir: Path) -> dict | None:
    path = run_dir / "summary.json"
    if path.is_file():
        summary = json.loads(path.read_text())
        if "test_psnr" in summary:
            return summary
    return None


def _tune_nlm(val_loader, val_ids, accelerator, noise: NoiseSpec, images: int = 48) -> float:
    """Pick NLM's filter strength h (a multiple of sigma) on validation images, never on the test set."""
    batch = next(iter(val_loader))[0][:images].to(accelerator.device)
    clean = batch.float() / 255
    noisy, sigmas = seeded_noisy(clean, val_ids[:len(clean)], noise)
    scores = {}
    for factor in (0.4, 0.6, 0.8, 1.0, 1.2):
        mse = ((nlm_denoise(noisy, sigmas, factor).clamp(0, 1) - clean) ** 2).mean(dim=(1, 2, 3))
        scores[factor] = float((10 * torch.log10(1 / mse)).mean())
    return max(scores, key=scores.get)


def table_rows(summaries: dict[str, dict], baselines: dict[str, dict], image_size: int) -> list[list]:
    rows = []
    for name, s in summaries.items():
        shape = "x".join(map(str, s["latent_shape"])) if "latent_shape" in s else "—"
        ratio = f"{s['latent_ratio']:.2f}" if "latent_ratio" in s else "—"
        rows.append([name, shape, ratio, f"{s['parameters']:,}", f"{s['gflop_per_image']:.2f}",
                     f"{s['test_psnr']:.2f}", f"{s['test_ssim']:.4f}", f"{s['test_mse']:.5f}",
                     f"{s['train_seconds']:.0f}", f"{s['train_images_per_s']:.0f}"])
    for name, metrics in baselines.items():
        rows.append([name, "—", "—", "—", "—", f"{metrics['psnr']:.2f}", f"{metrics['ssim']:.4f}",
                     f"{metrics['mse']:.5f}", "—", "—"])
    return rows


def markdown(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(map(str, row)) + " |" for row in rows])


def main(cfg: Config) -> dict:
    check_positive(cfg, "eval_batch_size")
    names = [name.strip() for name in cfg.models.split(",") if name.strip()]
    known = {"AE10", "AE38", "AE71", "unet", "dncnn"}
    if not names or set(names) - known:
        raise ConfigError(f"--models={cfg.models!r}: choose from {', '.join(sorted(known))}")
    if cfg.bm3d and not bm3d_available():
        raise ConfigError("--bm3d needs the optional bm3d package: pip install bm3d (non-commercial licence)")
    base = Path(cfg.run_dir or f"runs/latent-study-{time.strftime('%Y%m%d-%H%M%S')}")
    shared = field_names(DenoisingDataSettings, RunSettings) - {"run_dir"}
    noise_keys = {"sigma": cfg.sigma, "sigma_max": 0.0, "clip_noise": cfg.clip_noise, "noise_seed": cfg.noise_seed}
    configs = {name: derive_config(autoencoder.Config, cfg, shared,
                                   cfg.ae_args if name.startswith("AE") else cfg.unet_args,
                                   model=name, run_dir=str(base / name), **noise_keys) for name in names}
    summaries = {}
    for name, sub_config in configs.items():  # every option was checked above, before any training
        finished = _finished(Path(sub_config.run_dir)) if cfg.reuse_finished else None
        if finished is not None:
            print(f"[latent-study] {name}: reading the finished run in {sub_config.run_dir}")
            summaries[name] = finished
            continue
        print(f"[latent-study] training {name} in {sub_config.run_dir}")
        summaries[name] = autoencoder.main(sub_config)

    run = start_run(dataclasses.replace(cfg, run_dir=str(base), resume=False), "latent-study")
    accelerator, say = run.accelerator, run.say
    with accelerator.main_process_first():
        data = load_denoising_data(cfg.data, cfg.pool_split, cfg.holdout_fraction, cfg.val_fraction, cfg.seed,
                                   cfg.image_size, cfg.storage, cfg.cache_dir or None, cfg.max_train_images,
                                   cfg.num_workers, log=say)
    noise = NoiseSpec(cfg.sigma, cfg.sigma, cfg.clip_noise, cfg.noise_seed)
    rank, world = accelerator.process_index, accelerator.num_processes
    test_ids = data.test_indices[:cfg.baseline_images] if cfg.baseline_images else data.test_indices
    shard = shard_indices(test_ids, rank, world)
    loader = make_loader(data.stored, shard, cfg.eval_batch_size, train=False, resolution=cfg.image_size,
                         device=accelerator.device, num_workers=cfg.num_workers)
    baselines = {"noisy input": {k.removeprefix("test_noisy_"): v for k, v in summaries[names[0]].items()
                                 if k.startswith("test_noisy_")}}
    methods, h_factor = [], 0.8
    if cfg.nlm:
        val_loader = make_loader(data.stored, data.val_indices, 48, train=False, resolution=cfg.image_size,
                                 device=accelerator.device, num_workers=cfg.num_workers)
        h_factor = _tune_nlm(val_loader, data.val_indices, accelerator, noise)
        say(f"[latent-study] non-local means: h = {h_factor} x sigma (chosen on validation images)")
        methods.append("nlm")
    if cfg.bm3d:
        methods.append("bm3d")
    if methods:
        scored = evaluate_denoiser(None, loader, shard, accelerator, noise, baselines=tuple(methods),
                                   nlm_h_factor=h_factor)
        labels = {"nlm": f"non-local means (h={h_factor}σ)", "bm3d": "BM3D"}
        for method in methods:
            baselines[labels[method]] = scored[method]
        if cfg.baseline_images:
            say(f"[latent-study] baselines scored on the first {scored['n']} held-out images only")

    if not accelerator.is_main_process:
        run.logger.finish()
        return {}
    header = ["model", "latent (CxHxW)", "latent / input", "parameters", "GFLOP / image", "PSNR dB", "SSIM", "MSE",
              "training s", "train img/s"]
    rows = table_rows(summaries, baselines, cfg.image_size)
    table = markdown(header, rows)
    some = summaries[names[0]]
    table += (f"\n\nHeld-out test: {some['test_images']} images ({data.describe()}); noise {noise.describe()}, "
              f"seed {cfg.noise_seed}: every row saw the same noisy images. Per-image averages; outputs clamped "
              "to [0, 1].\nThe study reported final *training* MSE only: "
              + "; ".join(f"{k} {v}" for k, v in STUDY_TRAINING_MSE.items()))
    say("\n" + table + "\n")
    (run.run_dir / "latent_study.md").write_text(table + "\n")
    (run.run_dir / "latent_study.json").write_text(json.dumps({"models": summaries, "baselines": baselines}, indent=2))
    run.logger.log_table("latent_study/table", header, rows, step=0)

    autoencoders = {n: s for n, s in summaries.items() if "latent_size" in s}
    figures = {}
    if autoencoders:
        points = sorted((s["latent_size"], s["test_psnr"]) for s in autoencoders.values())
        series = {"study autoencoders": points}
        for name, s in summaries.items():
            if name not in autoencoders:
                series[name] = [(points[0][0], s["test_psnr"]), (points[-1][0], s["test_psnr"])]
        for name, metrics in baselines.items():
            series[name] = [(points[0][0], metrics["psnr"]), (points[-1][0], metrics["psnr"])]
        figures["psnr_vs_latent"] = plot_lines(series, run.run_dir / "plots" / "psnr_vs_latent.png",
                                               "latent size (values; the input has 67,500)", "held-out PSNR (dB)",
                                               title=f"PSNR against latent size ({noise.describe()})", logx=True,
                                               marker="o-")
    curves = {}
    for name in names:
        metrics_file = Path(configs[name].run_dir) / "metrics.jsonl"
        records = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
        curves[name] = [(r["epoch"], r["val/mse"]) for r in records if "val/mse" in r and "epoch" in r] or \
            [(r["step"], r["val/mse"]) for r in records if "val/mse" in r]
    figures["validation_curves"] = plot_lines(curves, run.run_dir / "plots" / "validation_curves.png",
                                              "iteration", "validation MSE (per-image mean)",
                                              title="validation loss per model")
    figures["side_by_side"] = _side_by_side(run, data, names, configs, noise, cfg, h_factor)
    run.logger.log_images({f"latent_study/{k}": v for k, v in figures.items()}, step=0)
    run.logger.summary({f"{n}_test_psnr": s["test_psnr"] for n, s in summaries.items()}
                       | {f"{n}_psnr": m["psnr"] for n, m in baselines.items()})
    run.logger.finish()
    return {"models": summaries, "baselines": baselines}


def _side_by_side(run, data, names, configs, noise: NoiseSpec, cfg: Config, h_factor: float) -> Path:
    """The same held-out images: clean, noisy, non-local means, then every model."""
    ids = data.test_indices[:cfg.grid_images]
    loader = make_loader(data.stored, ids, len(ids), train=False, resolution=cfg.image_size,
                         device=torch.device("cpu"), num_workers=1)
    clean = next(iter(loader))[0].float() / 255
    noisy, sigmas = seeded_noisy(clean, ids, noise)
    rows = {"clean": clean, "noisy": noisy.clamp(0, 1)}
    if cfg.nlm:
        rows["non-local means"] = nlm_denoise(noisy, sigmas, h_factor)
    for name in names:
        model, state = load_trained_model(configs[name].run_dir)
        with torch.no_grad():
            rows[name] = denoise(model, noisy, sigmas, state.get("conditioned", False))
    images = {label: [to_hwc_uint8(x) for x in batch] for label, batch in rows.items()}
    return plot_image_rows(images, run.run_dir / "plots" / "side_by_side.png",
                           title=f"held-out images, {noise.describe()}")


if __name__ == "__main__":
    run_recipe(main, Config)
