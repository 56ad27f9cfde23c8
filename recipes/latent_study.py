"""The study's latent-size study as a curve with error bars (STUDY.md, Part 2), measured on held-out images.

Trains a family of autoencoders with the study's structure (AE5 ... AE146: latents from 0.05x to 5x the
input, the study's AE10, AE38 and AE71 among them) and any other denoiser, each at every seed, with the
same noise; then scores all of them, the classical baselines (the noisy input, non-local means, BM3D)
and any already trained denoiser (--pretrained) on the same seeded noisy held-out images.

    accelerate launch recipes/latent_study.py                   # the family and a U-Net, one seed, a CPU's budget
    accelerate launch recipes/latent_study.py --seeds=0,1       # repeats: intervals
    accelerate launch recipes/latent_study.py --seeds=0,1,2 --ae_args=--epochs=8 --other_args="--crop=64 --epochs=4"
        # the full sweep at the study's 8 epochs (a GPU's budget)
    accelerate launch recipes/latent_study.py --models=AE10,AE38,AE71 --ae_args="--epochs=8"   # the study's three
    accelerate launch recipes/latent_study.py --bm3d --baseline_images=300     # BM3D (pip install bm3d; non-commercial)
    accelerate launch recipes/latent_study.py --pretrained=runs/blind_denoiser-X   # a CBSD432 model, used as is
    accelerate launch recipes/latent_study.py --models=AE38,resunet \\
        --model_args="resunet: --init_from=runs/blind_denoiser-X --conditioned --model_kwargs=widths=(16,32,64,128)"
        # the same model fine-tuned on this noise
    accelerate launch recipes/latent_study.py --models=AE38,AE38x8=AE38 --model_args="AE38x8: --epochs=8"
        # NAME=MODEL: one model twice, with other options (a variant is a row of its own, off the family's curve)

Writes latent_study.md / .json, PSNR against latent size (training cost on a second axis), validation
curves, the same held-out images through every model, and W&B (sub-runs grouped by the study).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from toolkit.config import check_non_negative, check_positive, chosen_keys, field_names
from toolkit.data.denoising import load_denoising_data
from toolkit.data.loaders import shard_loader
from toolkit.data.settings import DenoisingDataSettings
from toolkit.errors import ConfigError
from toolkit.inference import load_denoiser, load_trained_model
from toolkit.latent import (
    STUDY_TRAINING_MSE,
    aggregate_latent_study,
    latent_figures,
    latent_table,
    spread_subset,
    tune_nlm,
)
from toolkit.models import DENOISERS
from toolkit.models.autoencoders import AUTOENCODER_FAMILY
from toolkit.recipes import recipe_module
from toolkit.run import RunSettings, run_recipe, start_run
from toolkit.runs import write_json, write_text_whole
from toolkit.studies import (
    STUDY_KEYS,
    options_of,
    parse_recipe_args,
    parse_seeds,
    parse_variants,
    reusable,
    study_dir,
    sub_config,
    sub_run_keys,
)
from toolkit.train.denoise import (
    NoiseSpec,
    bm3d_available,
    evaluate_denoiser,
)
from toolkit.train.denoiser import denoiser_facts


@dataclass
class Config(DenoisingDataSettings, RunSettings):
    models: str = "AE5,AE10,AE19,AE38,AE75,AE71,AE146,unet"  # denoisers to train (family and others), or NAME=MODEL
    seeds: str = "0"  # one run per model and seed, e.g. 0,1 (intervals need two or more)
    # a 2-core CPU's budget (docs/results.md: the time it takes); the study's own 8 epochs: --ae_args=--epochs=8
    ae_args: str = "--epochs=2"  # options for every autoencoder of the family (recipes/autoencoder.py keys)
    other_args: str = "--crop=64 --epochs=1"  # options for the other denoisers (64 px crops: 5x cheaper)
    model_args: str = ""  # options per model, after the above: "AE71: --epochs=4; unet: --model_kwargs=width=16"
    pretrained: str = ""  # comma-separated trained denoiser runs or checkpoints, scored as they are
    sigma: float = 0.3  # noise standard deviation on [0, 1], for every model and baseline
    clip_noise: bool = True  # clip noisy images to [0, 1], as the study did
    noise_seed: int = 1234  # the evaluation noise, shared by every model and baseline
    nlm: bool = True  # score non-local means (scikit-image) on the held-out images
    bm3d: bool = False  # score BM3D too (needs `pip install bm3d`; licence: non-commercial use only)
    baseline_images: int = 0  # >0: score the baselines (and every model again) on N held-out images, spread evenly
    grid_images: int = 6  # held-out images in the final side-by-side grid
    eval_batch_size: int = 100  # images per evaluation batch
    # every epoch ends with a validation pass (and grids); SSIM on a CPU makes more of them costly
    eval_every: int = 0  # iterations between extra validation passes within an epoch (0 = none)


def main(cfg: Config) -> dict:
    check_positive(cfg, "eval_batch_size")
    check_non_negative(cfg, "baseline_images", "grid_images")
    models = parse_variants(cfg.models, DENOISERS, kind="model")  # name: model
    names = list(models)
    seeds = parse_seeds(cfg.seeds)
    if "seed" in chosen_keys(cfg):
        raise ConfigError("the study trains every model at each of --seeds (e.g. --seeds=0,1); --seed is unused")
    per_model = parse_recipe_args(cfg.model_args, names)
    if cfg.bm3d and not bm3d_available():
        raise ConfigError("--bm3d needs the optional bm3d package: pip install bm3d (non-commercial licence)")
    pretrained = [path.strip() for path in cfg.pretrained.split(",") if path.strip()]
    for path in pretrained:  # a denoiser each, checked now rather than after the training below
        load_denoiser(path)
    base = study_dir(cfg.run_dir, cfg.resume, "latent-study")
    group = cfg.wandb_group or base.name
    shared = field_names(DenoisingDataSettings, RunSettings) - STUDY_KEYS
    noise_keys = {"sigma": cfg.sigma, "sigma_max": 0.0, "clip_noise": cfg.clip_noise, "noise_seed": cfg.noise_seed}
    autoencoder = recipe_module("autoencoder")
    configs = {(name, s): sub_config(autoencoder.Config, cfg, shared,
                                     f"{cfg.ae_args if model in AUTOENCODER_FAMILY else cfg.other_args} "
                                     f"{per_model.get(name, '')}", model=model,
                                     **sub_run_keys(base, name, model, s, group, "latent-study"), **noise_keys)
               for name, model in models.items() for s in seeds}  # every option is read here, before any training
    for (name, _), sub in configs.items():  # and every value: a bad one is not found after hours of the others
        with options_of(name):
            autoencoder.check_config(sub)
    summaries = {}
    for (name, seed), sub in configs.items():
        found = reusable(Path(sub.run_dir), sub, "test_psnr",
                         lambda sub=sub: load_denoising_data(sub, sub.seed, sub.cache_dir, log=lambda *_: None)
                         .fingerprint())
        print(f"[latent-study] {'reading the finished' if found else 'training'} {name} seed {seed} in "
              f"{sub.run_dir}", flush=True)
        summaries[name, seed] = found if found is not None else autoencoder.main(sub)

    run = start_run(dataclasses.replace(cfg, run_dir=str(base), resume=False, wandb_group=group), "latent-study")
    with run.main_process_first():
        data = load_denoising_data(cfg, cfg.seed, cfg.cache_dir, cfg.num_workers, log=run.say)
    noise = NoiseSpec(cfg.sigma, cfg.sigma, cfg.clip_noise, cfg.noise_seed)
    run.prepare_evaluation()  # scores in fp32, whatever each model trained in
    subset = spread_subset(data.test_indices, cfg.baseline_images)  # over every class, not the first ones
    shard = shard_loader(data.stored, subset, run.rank, run.world, cfg.eval_batch_size, cfg.image_size, run.device,
                         cfg.num_workers)
    h_factor = tune_nlm(data, cfg.image_size, noise) if cfg.nlm else 0.8
    if cfg.nlm:
        run.say(f"[latent-study] non-local means: h = {h_factor} x sigma (chosen on validation images)")
    methods = ("noisy",) + (("nlm",) if cfg.nlm else ()) + (("bm3d",) if cfg.bm3d else ())
    scored = evaluate_denoiser(None, shard, run.accelerator, noise, baselines=methods, nlm_h_factor=h_factor,
                               progress="baselines on held-out images")
    labels = {"noisy": "noisy input", "nlm": f"non-local means (h={h_factor}σ)", "bm3d": "BM3D (bm3d package)"}
    baselines = {labels[m]: scored[m] for m in methods}
    extra = {}
    for path in pretrained:  # trained elsewhere, scored here as they are
        model, state = load_denoiser(path, run.device)
        result = evaluate_denoiser(model, shard, run.accelerator, noise, state.conditioned, baselines=(),
                                   progress=f"{state.label or state.model} on held-out images")
        extra[f"{state.label or state.model} (pretrained: {Path(path).name})"] = {
            **result["model"], **denoiser_facts(model, cfg.image_size), "source": str(path),
            "trained_on": state.noise}
    rescored = {}
    if cfg.baseline_images:  # every trained model again on the baselines' images, for a like-for-like row
        for (name, seed), sub in configs.items():
            model, state = load_trained_model(sub.run_dir, run.device)
            rescored[name, seed] = evaluate_denoiser(model, shard, run.accelerator, noise, state.conditioned,
                                                     baselines=())["model"]

    if not run.is_main:
        run.logger.finish()
        return {}
    result = aggregate_latent_study(names, seeds, summaries, rescored, baselines, extra, scored["n"], cfg.image_size)
    scope = f" ({scored['n']} of them, spread evenly over the set, for every row)" if cfg.baseline_images else ""
    table = latent_table(result) + (
        f"\n\nHeld-out test: {data.describe()}{scope}; noise {noise.describe()}, seed {cfg.noise_seed}: every row "
        "saw the same noisy images. Per-image averages; outputs clamped to [0, 1].\nThe study reported final "
        "*training* MSE only: " + "; ".join(f"{k} {v}" for k, v in STUDY_TRAINING_MSE.items()))
    run.say("\n" + table + "\n")
    write_text_whole(run.run_dir / "latent_study.md", table + "\n")
    write_json(run.run_dir / "latent_study.json", result)  # standard JSON: a score of no values is null
    run_dirs = {key: sub.run_dir for key, sub in configs.items()}
    figures = latent_figures(run.run_dir / "plots", result, data, names, seeds, run_dirs, noise, cfg.image_size,
                             cfg.grid_images, h_factor if cfg.nlm else None)
    run.logger.log_images({f"latent_study/{k}": v for k, v in figures.items()}, step=0)
    run.logger.log_table("latent_study/table", ["model", "latent / input", "PSNR mean", "low", "high", "SSIM mean"],
                         [[n, r.get("latent_ratio"), r["psnr"]["mean"], r["psnr"]["low"], r["psnr"]["high"],
                           r["ssim"]["mean"]] for n, r in result["models"].items()], step=0)
    run.logger.summary({f"{n}_test_psnr": r["psnr"]["mean"] for n, r in result["models"].items()}
                       | {f"{n}_psnr": m["psnr"] for n, m in baselines.items()} | {"seeds": seeds})
    run.logger.finish()
    return result


if __name__ == "__main__":
    run_recipe(main, Config)
