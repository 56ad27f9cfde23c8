"""Scoring a trained denoiser the way the literature does: a folder of clean reference images at full
size, additive white Gaussian noise at sigma 15/25/50 on the 0-255 scale, NOT clipped, PSNR on RGB
over the whole image. The published McMaster figures sit beside ours in the printed table.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from toolkit.data.folders import list_image_files
from toolkit.data.images import load_rgb
from toolkit.errors import DataError
from toolkit.inference import load_trained_model
from toolkit.train.denoise import NoiseSpec, denoise, image_quality, nlm_denoise, seeded_noisy

# ../shared/data/README.md: PSNR (dB) on McMaster, AWGN, noise not clipped
PUBLISHED_MCMASTER = {
    "CBM3D": {15: 34.06, 25: 31.66, 50: 28.51},
    "CDnCNN": {15: 33.44, 25: 31.51, 50: 28.61},
    "FFDNet": {15: 34.66, 25: 32.35, 50: 29.18},
    "DRUNet": {15: 35.40, 25: 33.14, 50: 30.08},
    "SwinIR": {15: 35.61, 25: 33.20, 50: 30.22},
}


@torch.no_grad()
def benchmark_denoiser(checkpoint: str | None, clean_dir: Path, sigmas_255: list[float], nlm: bool = False,
                       noise_seed: int = 1234, log=print) -> dict:
    """Mean PSNR/SSIM over the folder for each sigma, for the model (if given), the noisy input and NLM."""
    files = list_image_files(Path(clean_dir)) if Path(clean_dir).is_dir() else []
    if not files:
        raise DataError(f"{clean_dir} holds no images: pass a folder of clean reference images (e.g. McMaster)")
    model, state = load_trained_model(checkpoint) if checkpoint else (None, {})
    conditioned = state.get("conditioned", False)
    if model is not None and not conditioned:
        trained = state.get("noise", {})
        log(f"[benchmark] note: this model is not told the noise level; it was trained on "
            f"sigma {trained.get('sigma_min')}-{trained.get('sigma_max')} (clipped: {trained.get('clip')})")
    results: dict = {"images": len(files), "folder": str(clean_dir), "checkpoint": checkpoint, "sigmas": {}}
    for sigma_255 in sigmas_255:
        noise = NoiseSpec(sigma_255 / 255, sigma_255 / 255, clip=False, seed=noise_seed)
        totals: dict[str, list] = {}
        started = time.perf_counter()
        for image_id, file in enumerate(files):
            clean = torch.from_numpy(load_rgb(file)).permute(2, 0, 1)[None].float() / 255  # (1, 3, H, W)
            noisy, sigmas = seeded_noisy(clean, [image_id], noise)
            outputs = {"noisy input": noisy}
            if model is not None:
                outputs["model"] = denoise(model, noisy, sigmas, conditioned)
            if nlm:
                outputs["non-local means"] = nlm_denoise(noisy, sigmas)
            for name, output in outputs.items():
                quality = image_quality(output, clean)
                totals.setdefault(name, []).append([float(quality["psnr"]), float(quality["ssim"])])
        results["sigmas"][sigma_255] = {name: {"psnr": float(np.mean([v[0] for v in values])),
                                               "ssim": float(np.mean([v[1] for v in values]))}
                                        for name, values in totals.items()}
        log(f"[benchmark] sigma {sigma_255:g}: " + ", ".join(
            f"{name} {v['psnr']:.2f} dB" for name, v in results["sigmas"][sigma_255].items())
            + f" ({time.perf_counter() - started:.0f}s)")
    return results


def benchmark_table(results: dict, label: str = "this toolkit") -> str:
    """Markdown: our rows (model, NLM, noisy input) and the published rows, one column per sigma."""
    sigmas = list(results["sigmas"])
    header = "| method | " + " | ".join(f"σ={s:g}" for s in sigmas) + " |"
    lines = [header, "|" + "---|" * (len(sigmas) + 1)]
    ours = list(next(iter(results["sigmas"].values())))
    for name in ours:
        shown = label if name == "model" else name
        lines.append(f"| **{shown}** | " + " | ".join(
            f"{results['sigmas'][s][name]['psnr']:.2f} / {results['sigmas'][s][name]['ssim']:.3f}" for s in sigmas)
            + " |")
    for name, row in PUBLISHED_MCMASTER.items():
        lines.append(f"| {name} (published) | " + " | ".join(f"{row[int(s)]:.2f}" if int(s) in row else "–"
                                                            for s in sigmas) + " |")
    return "\n".join(lines) + "\n\nOurs: PSNR dB / SSIM, mean over images; published: PSNR dB."


def write_benchmark(results: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
