"""What denoising recipes share around their step: validation with image grids, the held-out test
scores against the noisy input, figures and the summary."""

from __future__ import annotations

import torch

from toolkit.data.loaders import shard_loader
from toolkit.models.autoencoders import latent_shape
from toolkit.models.summary import count_parameters, forward_flops
from toolkit.plots import plot_image_rows, plot_lines
from toolkit.run import Run
from toolkit.runs import elapsed_seconds, psnr_series, read_metrics, series
from toolkit.train.denoise import NoiseSpec, evaluate_denoiser, to_hwc_uint8
from toolkit.train.loop import TrainingLoop


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


class DenoiserEvaluation:
    """The validation shard, the evaluation noise and the grids: what every validation pass and the final
    scores share. `stored`, `val_indices` and `test_indices` point into one stored image set."""

    def __init__(self, run: Run, stored, val_indices, test_indices, image_size: int, noise: NoiseSpec,
                 conditioned: bool, batch_size: int, grid_images: int = 6):
        self.run, self.stored, self.test_indices = run, stored, test_indices
        self.image_size, self.noise, self.conditioned = image_size, noise, conditioned
        self.batch_size, self.grid_images = batch_size, grid_images
        self.val = shard_loader(stored, val_indices, run.rank, run.world, batch_size, image_size, run.device,
                                run.cfg.num_workers)

    def score(self, model, shard, step: int, prefix: str, grid: str | None = None) -> dict:
        """Scores of `model` and of the noisy input on a shard, logged; with `grid`, an image grid titled so."""
        run = self.run
        keep = self.grid_images if grid else 0
        result = evaluate_denoiser(model, shard, run.accelerator, self.noise, self.conditioned, baselines=("noisy",),
                                   keep_examples=keep)
        scalars = {f"{prefix}/{metric}": value for metric, value in result["model"].items()}
        scalars |= {f"{prefix}/noisy_{metric}": value for metric, value in result["noisy"].items()}
        run.say(f"[{prefix}] iteration {step}: MSE {result['model']['mse']:.5f} PSNR {result['model']['psnr']:.2f} "
                f"dB SSIM {result['model']['ssim']:.4f} (noisy input: PSNR {result['noisy']['psnr']:.2f} dB)")
        if keep and run.is_main:
            examples = result["examples"]
            path = plot_image_rows({"clean": [to_hwc_uint8(x) for x in examples["clean"]],
                                    "noisy": [to_hwc_uint8(x) for x in examples["noisy"]],
                                    "denoised": [to_hwc_uint8(x) for x in examples["model"]]},
                                   run.run_dir / "plots" / f"grid-{prefix}-step{step:06d}.png",
                                   title=f"{run.run_dir.name}: {grid}, {self.noise.describe()}")
            run.logger.log_images({f"{prefix}/grid": path}, step, captions={f"{prefix}/grid": grid})
        result["scalars"] = scalars
        return result

    def validate(self, model, step: int, epoch_end: int | None = None) -> dict:
        """The loop's validation: a grid at every epoch's end, as the study drew them."""
        grid = f"epoch {epoch_end}" if epoch_end is not None and self.grid_images else None
        return self.score(model, self.val, step, "val", grid)["scalars"]

    def final(self, model, step: int) -> dict:
        """Final validation and held-out test scores (against the noisy input), for summary.json."""
        validation = self.score(model, self.val, step, "val", "final" if self.grid_images else None)
        self.run.logger.log(validation["scalars"], step)
        test_shard = shard_loader(self.stored, self.test_indices, self.run.rank, self.run.world, self.batch_size,
                                  self.image_size, self.run.device, self.run.cfg.num_workers)
        test = self.score(model, test_shard, step, "test", "held-out test" if self.grid_images else None)
        self.run.logger.log(test["scalars"], step)
        self.run.say(f"[summary] test PSNR {test['model']['psnr']:.2f} dB, SSIM {test['model']['ssim']:.4f} (noisy "
                     f"input {test['noisy']['psnr']:.2f} dB) on {test['n']} held-out images")
        return {"noise": self.noise.describe(), **{f"val_{k}": v for k, v in validation["model"].items()},
                **{f"test_{k}": v for k, v in test["model"].items()},
                **{f"test_noisy_{k}": v for k, v in test["noisy"].items()}, "test_images": test["n"]}


class FixedSigmaEvaluation:
    """Validation of a blind denoiser the published way, on tiles of held-out images: unclipped white Gaussian
    noise at each of a few fixed levels (15, 25, 50 on the 0-255 scale), the model told the level.

    `val_indices` are the tiles that choose (val/...); `more_val` names other tiles of the same images scored
    beside them and logged under val/<name>/... (a run with --reductions=1,2: the halved tiles, as "x2"), so
    that val/psnr means the same with or without them."""

    def __init__(self, run: Run, stored, val_indices, image_size: int, sigmas_255: list[float], conditioned: bool,
                 batch_size: int, grid_images: int = 6, noise_seed: int = 1234,
                 more_val: dict[str, object] | None = None):
        self.run, self.image_size, self.conditioned, self.grid_images = run, image_size, conditioned, grid_images
        self.noises = {s: NoiseSpec(s / 255, s / 255, clip=False, seed=noise_seed) for s in sigmas_255}
        self.shards = {"val": shard_loader(stored, val_indices, run.rank, run.world, batch_size, image_size,
                                           run.device, run.cfg.num_workers)}
        for name, indices in (more_val or {}).items():
            if len(indices):
                self.shards[f"val/{name}"] = shard_loader(stored, indices, run.rank, run.world, batch_size,
                                                          image_size, run.device, run.cfg.num_workers)

    def validate(self, model, step: int, epoch_end: int | None = None) -> dict:
        """val/psnr_<sigma>, val/ssim_<sigma> per level and val/psnr, their mean (the number that chooses); the
        same under val/<name>/ for each of `more_val`."""
        scalars = {}
        for prefix, shard in self.shards.items():
            scalars |= self._score_levels(model, shard, step, prefix, grid=prefix == "val")
        return scalars

    def _score_levels(self, model, shard, step: int, prefix: str, grid: bool) -> dict:
        run, scalars = self.run, {}
        grid_sigma = sorted(self.noises)[len(self.noises) // 2]
        for sigma, noise in self.noises.items():
            keep = self.grid_images if grid and sigma == grid_sigma else 0
            result = evaluate_denoiser(model, shard, run.accelerator, noise, self.conditioned,
                                       baselines=("noisy",), keep_examples=keep)
            scalars[f"{prefix}/psnr_{sigma:g}"] = result["model"]["psnr"]
            scalars[f"{prefix}/ssim_{sigma:g}"] = result["model"]["ssim"]
            scalars[f"{prefix}/noisy_psnr_{sigma:g}"] = result["noisy"]["psnr"]
            scalars[f"{prefix}/tiles"] = result["n"]
            if keep and run.is_main:
                examples = result["examples"]
                path = plot_image_rows({name: [to_hwc_uint8(x) for x in examples[key]] for name, key in
                                        (("clean", "clean"), ("noisy", "noisy"), ("denoised", "model"))},
                                       run.run_dir / "plots" / f"grid-val-step{step:06d}.png",
                                       title=f"{run.run_dir.name}: iteration {step}, {noise.describe()}")
                run.logger.log_images({"val/grid": path}, step, captions={"val/grid": f"iteration {step}"})
        scalars[f"{prefix}/psnr"] = sum(scalars[f"{prefix}/psnr_{s:g}"] for s in self.noises) / len(self.noises)
        levels = " / ".join(f"{scalars[f'{prefix}/psnr_{s:g}']:.2f}" for s in self.noises)
        run.say(f"[{prefix}] iteration {step}: PSNR {levels} dB at sigma {' / '.join(f'{s:g}' for s in self.noises)}"
                f" (mean {scalars[f'{prefix}/psnr']:.2f}) on {scalars[f'{prefix}/tiles']} tiles")
        return scalars

    def final(self, model, step: int) -> dict:
        scalars = self.validate(model, step)
        self.run.logger.log(scalars, step)
        return {"noise": "unclipped AWGN at sigma " + ", ".join(f"{s:g}" for s in self.noises) + " (of 255)",
                **{k.replace("/", "_"): v for k, v in scalars.items()}}


def _plot_denoiser_curves(run, records: list[dict], label: str, noise: str, step: int) -> None:
    curves = plot_lines({"train loss (per iteration)": series(records, "train/loss"),
                         "validation MSE": series(records, "val/mse")},
                        run.run_dir / "plots" / "learning_curves.png", "iteration", "loss", title=f"{label}: {noise}")
    psnr = psnr_series(records)  # per level, and of the tiles scored beside them
    if psnr:
        curves = plot_lines(psnr, run.run_dir / "plots" / "validation_psnr.png", "iteration", "PSNR (dB)",
                            title=f"{label}: validation PSNR")
    run.logger.log_images({"plots/curves": curves}, step)


def finish_denoiser_run(loop: TrainingLoop, evaluation, data_description: str, data_fingerprint: str,
                        synthetic: bool) -> dict:
    """After training: final scores (evaluation.final), final checkpoint, curves and summary.json."""
    run, state = loop.run, loop.finish()
    model, step = loop.evaluated_model, state.step
    scores = evaluation.final(model, step)
    facts = denoiser_facts(run.accelerator.unwrap_model(model), evaluation.image_size)
    summary = {
        "recipe": state.recipe, "label": state.label, "model": state.model, "steps": step, "seed": run.cfg.seed,
        "data": data_description, "data_fingerprint": data_fingerprint, "synthetic_data": synthetic,
        "mixed_precision": state.mixed_precision, "num_processes": state.num_processes,
        "cpu": run.logger.config.get("cpu"), "train_seconds": round(state.train_seconds, 1), **facts, **scores,
        "train_images_per_s": state.images_seen / max(state.train_seconds, 1e-9),
    }
    if "budget" in state.extra:  # --train_minutes: what was measured and chosen
        summary["budget"] = state.extra["budget"]
    final = loop.final_checkpoint()
    summary["checkpoint"] = str(final)
    if run.is_main:
        records = read_metrics(run.run_dir)
        summary["elapsed_seconds"] = elapsed_seconds(records)
        if run.cfg.figures:
            _plot_denoiser_curves(run, records, state.label, summary["noise"], step)
        run.logger.log_artifact(f"{run.run_dir.name}-model", "model", final)
    run.logger.summary(summary)
    run.logger.finish()
    return summary
