"""The latent-size study's numbers: per model, means and 95% intervals over seeds; the table in Markdown;
non-local means tuned on validation images; PSNR against latent size and the other figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from toolkit.data.loaders import make_loader
from toolkit.inference import load_trained_model
from toolkit.models.autoencoders import AUTOENCODER_FAMILY, STUDY_AUTOENCODERS
from toolkit.plots import plot_bands, plot_image_rows, plot_latent_curve
from toolkit.runs import read_metrics, series
from toolkit.stats import mean_interval
from toolkit.train.denoise import NoiseSpec, denoise, nlm_denoise, seeded_noisy, to_hwc_uint8

STUDY_TRAINING_MSE = {"AE10": "0.019-0.021 (≈17 dB)", "AE38": "≈0.011 (≈19.6 dB)", "AE71": "≈0.011 (≈19.6 dB)"}


def spread_subset(indices: np.ndarray, count: int) -> np.ndarray:
    """`count` of `indices` spread evenly over them (all of them when count is 0 or larger): the held-out
    images are in folder order, so the first N would be the first classes' images only."""
    if count <= 0 or count >= len(indices):
        return indices
    return indices[np.linspace(0, len(indices) - 1, count).round().astype(int)]


def aggregate_latent_study(names, seeds, summaries, rescored, baselines, extra, images: int, image_size: int) -> dict:
    models = {}
    for name in names:
        runs = [summaries[name, s] for s in seeds]
        scores = [rescored[name, s] for s in seeds] if rescored else [
            {m: r[f"test_{m}"] for m in ("psnr", "ssim", "mse")} for r in runs]
        first = runs[0]
        models[name] = {
            "family": name in AUTOENCODER_FAMILY, "study": name in STUDY_AUTOENCODERS,
            **{k: first[k] for k in ("latent_shape", "latent_size", "latent_ratio") if k in first},
            "parameters": first["parameters"], "gflop_per_image": first["gflop_per_image"],
            **{m: mean_interval([s[m] for s in scores]) for m in ("psnr", "ssim", "mse")},
            "train_seconds": mean_interval([r["train_seconds"] for r in runs]),
            "train_images_per_s": mean_interval([r["train_images_per_s"] for r in runs]),
            "mixed_precision": sorted({r.get("mixed_precision", "?") for r in runs}),
            "per_seed": {str(s): r for s, r in zip(seeds, runs)},
        }
    return {"models": models, "baselines": baselines, "pretrained": extra, "seeds": list(seeds), "images": images,
            "input_size": 3 * image_size ** 2}


def _fmt(interval: dict, digits: int) -> str:
    if interval["n"] <= 1:
        return f"{interval['mean']:.{digits}f}"
    return f"{interval['mean']:.{digits}f} ± {interval['std']:.{digits}f} [{interval['low']:.{digits}f}, " \
           f"{interval['high']:.{digits}f}]"


def latent_table(result: dict) -> str:
    header = ["model", "latent (CxHxW)", "latent / input", "parameters", "GFLOP / image", "PSNR dB", "SSIM", "MSE",
              "training s", "train img/s"]
    rows = []
    ordered = sorted(result["models"].items(), key=lambda item: (not item[1]["family"],
                                                                item[1].get("latent_ratio", 0)))
    for name, r in ordered:
        shape = "x".join(map(str, r["latent_shape"])) if "latent_shape" in r else "—"
        ratio = f"{r['latent_ratio']:.2f}" if "latent_ratio" in r else "—"
        rows.append([name + (" (study)" if r["study"] else ""), shape, ratio, f"{r['parameters']:,}",
                     f"{r['gflop_per_image']:.2f}", _fmt(r["psnr"], 2), _fmt(r["ssim"], 4), _fmt(r["mse"], 5),
                     f"{r['train_seconds']['mean']:.0f}", f"{r['train_images_per_s']['mean']:.0f}"])
    for name, m in result["pretrained"].items():
        rows.append([name, "—", "—", f"{m['parameters']:,}", f"{m['gflop_per_image']:.2f}", f"{m['psnr']:.2f}",
                     f"{m['ssim']:.4f}", f"{m['mse']:.5f}", "—", "—"])
    for name, m in result["baselines"].items():
        rows.append([name, "—", "—", "—", "—", f"{m['psnr']:.2f}", f"{m['ssim']:.4f}", f"{m['mse']:.5f}", "—", "—"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    text = "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])
    if len(result["seeds"]) > 1:
        text += (f"\n\nSeeds {', '.join(map(str, result['seeds']))}: mean ± standard deviation [95% t-interval of "
                 "the mean]; training noise only (every seed is scored on the same noisy images).")
    return text


def tune_nlm(data, image_size: int, noise: NoiseSpec, images: int = 48) -> float:
    """Pick NLM's filter strength h (a multiple of sigma) on validation images, never on the test set."""
    ids = data.val_indices[:images]
    loader = make_loader(data.stored, ids, len(ids), train=False, image_size=image_size,
                         device=torch.device("cpu"), num_workers=1)
    clean = next(iter(loader))[0].float() / 255
    noisy, sigmas = seeded_noisy(clean, ids, noise)
    scores = {}
    for factor in (0.4, 0.6, 0.8, 1.0, 1.2):
        mse = ((nlm_denoise(noisy, sigmas, factor).clamp(0, 1) - clean) ** 2).mean(dim=(1, 2, 3))
        scores[factor] = float((10 * torch.log10(1 / mse)).mean())
    return max(scores, key=scores.get)


def latent_figures(plots: Path, result, data, names, seeds, run_dirs: dict, noise: NoiseSpec, image_size: int,
                   grid_images: int, nlm_h_factor: float | None) -> dict:
    """PSNR against latent size, validation curves (band over seeds), the same images through every model."""
    figures = {}
    family = [{"name": n, "latent_ratio": r["latent_ratio"], "psnr": r["psnr"], "train_seconds": r["train_seconds"],
               "study": r["study"]} for n, r in result["models"].items() if r["family"]]
    lines = {n: r["psnr"]["mean"] for n, r in result["models"].items() if not r["family"]}
    lines |= {n: m["psnr"] for n, m in result["pretrained"].items()}
    lines |= {n: m["psnr"] for n, m in result["baselines"].items()}
    if family:
        figures["psnr_vs_latent"] = plot_latent_curve(family, lines, plots / "psnr_vs_latent.png",
                                                      result["input_size"],
                                                      title=f"held-out PSNR against latent size ({noise.describe()})")
    curves = {n: [series(read_metrics(run_dirs[n, s]), "val/mse", x="epoch") for s in seeds] for n in names}
    figures["validation_curves"] = plot_bands(curves, plots / "validation_curves.png", "epoch",
                                              "validation MSE (per-image mean)",
                                              title="validation loss per model (band: all seeds)")
    if grid_images:
        first_seed = {n: run_dirs[n, seeds[0]] for n in names}
        figures["side_by_side"] = side_by_side(plots / "side_by_side.png", data, first_seed, noise, image_size,
                                               grid_images, nlm_h_factor)
    return figures


def side_by_side(path: Path, data, run_dirs: dict, noise: NoiseSpec, image_size: int, grid_images: int,
                 nlm_h_factor: float | None) -> Path:
    """The same held-out images: clean, noisy, non-local means (if nlm_h_factor), then every model."""
    ids = data.test_indices[:grid_images]
    loader = make_loader(data.stored, ids, len(ids), train=False, image_size=image_size,
                         device=torch.device("cpu"), num_workers=1)
    clean = next(iter(loader))[0].float() / 255
    noisy, sigmas = seeded_noisy(clean, ids, noise)
    rows = {"clean": clean, "noisy": noisy.clamp(0, 1)}
    if nlm_h_factor is not None:
        rows["non-local means"] = nlm_denoise(noisy, sigmas, nlm_h_factor)
    for name, run_dir in run_dirs.items():
        model, state = load_trained_model(run_dir)
        with torch.no_grad():
            rows[name] = denoise(model, noisy, sigmas, state.conditioned)
    images = {label: [to_hwc_uint8(x) for x in batch] for label, batch in rows.items()}
    return plot_image_rows(images, path, title=f"held-out images, {noise.describe()}")
