"""The reusable pieces of a denoising recipe: building a model from its name, validation with image
grids, and the end-of-run report (held-out test metrics against the noisy input, figures, summary)."""

from __future__ import annotations

import json

import torch

from toolkit.data.loaders import make_loader, shard_indices
from toolkit.models.autoencoders import STUDY_AUTOENCODERS, latent_shape
from toolkit.models.build import build_model
from toolkit.models.summary import count_parameters, forward_flops
from toolkit.plots import plot_image_rows, plot_lines
from toolkit.train.checkpoint import ensure_final_checkpoint
from toolkit.train.classifier import elapsed_seconds
from toolkit.train.denoise import evaluate_denoiser, to_hwc_uint8


def denoiser_spec(name: str, width: int = 32, depth: int = 3, conditioned: bool = False) -> dict:
    """The constructor call for a denoiser named on the command line (stored in every checkpoint)."""
    if name in STUDY_AUTOENCODERS:
        return {"name": "ConvAutoencoder", "kwargs": STUDY_AUTOENCODERS[name]}
    if name == "unet":
        return {"name": "UNetDenoiser", "kwargs": {"width": width, "levels": depth, "conditioned": conditioned}}
    if name == "dncnn":
        return {"name": "DnCNN", "kwargs": {"depth": depth, "width": width, "conditioned": conditioned}}
    raise ValueError(f"unknown denoiser {name!r}")


def build_denoiser(name: str, width: int = 32, depth: int = 3, conditioned: bool = False):
    spec = denoiser_spec(name, width, depth, conditioned)
    return build_model(spec), spec


def denoiser_facts(model, image_size: int) -> dict:
    """Parameters, forward GFLOP per image and, for autoencoders, the latent's shape and size."""
    noise_level = (torch.full((1,), 0.1),) if getattr(model, "conditioned", False) else ()  # one sigma per image
    facts = {"parameters": count_parameters(model),
             "gflop_per_image": forward_flops(model, (3, image_size, image_size), *noise_level) / 1e9}
    if hasattr(model, "encode"):
        shape = latent_shape(model, image_size)
        size = shape[0] * shape[1] * shape[2]
        facts.update(latent_shape=list(shape), latent_size=size, latent_ratio=size / (3 * image_size**2))
    return facts


def validate_denoiser(run, model, loader, image_ids, noise, conditioned: bool, step: int, grid_images: int = 0,
                      epoch: int | None = None, prefix: str = "val") -> dict:
    """Evaluate on a split, log its metrics (and the noisy input's), and draw a grid if asked."""
    result = evaluate_denoiser(model, loader, image_ids, run.accelerator, noise, conditioned,
                               baselines=("noisy",), keep_examples=grid_images)
    scalars = {f"{prefix}/{metric}": value for metric, value in result["model"].items()}
    scalars |= {f"{prefix}/noisy_{metric}": value for metric, value in result["noisy"].items()}
    run.logger.log(scalars, step)
    run.say(f"[{prefix}] iteration {step}: MSE {result['model']['mse']:.5f} PSNR {result['model']['psnr']:.2f} dB "
            f"SSIM {result['model']['ssim']:.4f} (noisy input: PSNR {result['noisy']['psnr']:.2f} dB)")
    if grid_images and run.accelerator.is_main_process:
        examples = result["examples"]
        label = f"epoch {epoch}" if epoch is not None else f"iteration {step}"
        path = plot_image_rows({"clean": [to_hwc_uint8(x) for x in examples["clean"]],
                                "noisy": [to_hwc_uint8(x) for x in examples["noisy"]],
                                "denoised": [to_hwc_uint8(x) for x in examples["model"]]},
                               run.run_dir / "plots" / f"grid-{prefix}-step{step:06d}.png",
                               title=f"{run.run_dir.name}: {label}, {noise.describe()}")
        run.logger.log_images({f"{prefix}/grid": path}, step, captions={f"{prefix}/grid": label})
    return result


def finish_denoiser_run(run, model, data, val_loader, val_ids, noise, state: dict, eval_batch_size: int,
                        num_workers: int, keep_checkpoints: int, grid_images: int) -> dict:
    accelerator, step = run.accelerator, state["step"]
    image_size = state["preprocessing"]["image_size"]
    conditioned = state["conditioned"]
    validation = validate_denoiser(run, model, val_loader, val_ids, noise, conditioned, step, grid_images)
    rank, world = accelerator.process_index, accelerator.num_processes
    test_ids = shard_indices(data.test_indices, rank, world)
    test_loader = make_loader(data.stored, test_ids, eval_batch_size, train=False, resolution=image_size,
                              device=accelerator.device, num_workers=num_workers)
    test = validate_denoiser(run, model, test_loader, test_ids, noise, conditioned, step, grid_images,
                             prefix="test")
    facts = denoiser_facts(accelerator.unwrap_model(model), image_size)
    summary = {
        "recipe": "autoencoder", "label": state["label"], "model": state["model"], "steps": step,
        "noise": noise.describe(), "data": data.describe(), "synthetic_data": data.synthetic,
        "train_seconds": round(state["train_seconds"], 1), **facts,
        **{f"val_{k}": v for k, v in validation["model"].items()},
        **{f"test_{k}": v for k, v in test["model"].items()},
        **{f"test_noisy_{k}": v for k, v in test["noisy"].items()},
        "test_images": test["n"],
    }
    summary["train_images_per_s"] = state["images_seen"] / max(state["train_seconds"], 1e-9)
    final = ensure_final_checkpoint(accelerator, run.run_dir, step, state, keep_checkpoints)
    summary["checkpoint"] = str(final)
    summary["elapsed_seconds"] = elapsed_seconds(run.run_dir)
    if accelerator.is_main_process:
        records = [json.loads(line) for line in (run.run_dir / "metrics.jsonl").read_text().splitlines() if line]
        curves = plot_lines({"train MSE (per iteration)": [(r["step"], r["train/loss"]) for r in records
                                                           if r.get("train/loss") is not None],
                             "validation MSE": [(r["step"], r["val/mse"]) for r in records if "val/mse" in r]},
                            run.run_dir / "plots" / "learning_curves.png", "iteration", "MSE",
                            title=f"{state['label']}: {noise.describe()}")
        run.logger.log_images({"plots/curves": curves}, step)
        run.logger.log_artifact(f"{run.run_dir.name}-model", "model", final)
    run.say(f"[summary] {state['label']}: test PSNR {summary['test_psnr']:.2f} dB, SSIM {summary['test_ssim']:.4f} "
            f"(noisy input {summary['test_noisy_psnr']:.2f} dB) on {test['n']} held-out images")
    run.logger.summary(summary)
    run.logger.finish()
    return summary
