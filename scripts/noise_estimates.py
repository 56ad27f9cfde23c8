"""How well the blind noise estimator reads the noise level of a folder of clean images, with the noise
clipped to [0, 1] (as in a saved photograph) and not clipped (the published benchmark protocol), beside
scikit-image's estimate over the whole image. The figures in docs/results.md come from

    python scripts/noise_estimates.py data/denoise/McMaster

Noise is seeded per image as in `toolkit benchmark-denoiser`; printed: the mean estimate (0-255 scale).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from skimage.restoration import estimate_sigma

from toolkit.denoising_benchmark import clean_reference_images
from toolkit.inference import estimate_noise_sigma
from toolkit.train.denoise import NoiseSpec, seeded_noisy


def noise_estimates(folder: Path, sigmas_255: list[float], noise_seed: int = 1234) -> dict:
    """{sigma: {'clipped' | 'unclipped': {'whole image' | 'toolkit': mean estimate, 0-255}}}."""
    _, cleans = clean_reference_images(folder)
    results = {}
    for sigma in sigmas_255:
        results[sigma] = {}
        for clip in (True, False):
            noise = NoiseSpec(sigma / 255, sigma / 255, clip=clip, seed=noise_seed)
            noisy = [seeded_noisy(clean, [image_id], noise)[0][0] for image_id, clean in enumerate(cleans)]
            whole = [estimate_sigma(image.permute(1, 2, 0).double().numpy(), channel_axis=-1, average_sigmas=True)
                     for image in noisy]
            ours = [estimate_noise_sigma(image) for image in noisy]
            results[sigma]["clipped" if clip else "unclipped"] = {"whole image": float(np.mean(whole)) * 255,
                                                                  "toolkit": float(np.mean(ours)) * 255}
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a folder of clean images (e.g. McMaster)")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[15, 25, 50, 75], help="noise levels, 0-255")
    parser.add_argument("--out", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()
    results = noise_estimates(args.folder, args.sigmas)
    print("| true sigma | clipped: whole image | clipped: toolkit | unclipped: whole image | unclipped: toolkit |")
    print("|---|---|---|---|---|")
    for sigma, row in results.items():
        print(f"| {sigma:g} | " + " | ".join(f"{row[kind][method]:.1f}" for kind in ("clipped", "unclipped")
                                            for method in ("whole image", "toolkit")) + " |")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
