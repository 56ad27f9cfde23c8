"""How well the blind noise estimator reads the noise level of a folder of clean images made noisy, with the
noise clipped to [0, 1] and saved as 8 bits (as in a saved photograph) and not clipped (the published benchmark
protocol), beside scikit-image's estimate over the whole image and the clipping-aware wavelet estimate the toolkit
used before its patch estimator (and still uses where clipping spoils that). The figures in docs/results.md come
from

    python scripts/noise_estimates.py data/denoise/McMaster
    python scripts/noise_estimates.py data/denoise/CBSD432 --validation_images_of RUN --sigmas 0 2 5 10 ...

(the second: only the images a blind denoiser run held out). Noise is seeded per image as in `toolkit
benchmark-denoiser`; printed: the mean estimate and the mean absolute error over the images (0-255 scale).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from folder_arguments import add_folder_arguments, measure_folder, write_figures
from skimage.restoration import estimate_sigma

from toolkit.data.augment import to_unit_range
from toolkit.denoising_benchmark import clean_reference_images
from toolkit.inference import estimate_noise_sigma, wavelet_noise_sigma
from toolkit.progress import tracked
from toolkit.train.denoise import NoiseSpec, seeded_noisy

KINDS = ("clipped, 8-bit", "unclipped")
METHODS = ("whole image", "wavelet", "toolkit")


def whole_image_estimate(image) -> float:
    return float(estimate_sigma(image.permute(1, 2, 0).double().numpy(), channel_axis=-1, average_sigmas=True))


def noise_estimates(folder: Path, sigmas_255: list[float], noise_seed: int = 1234, only=None) -> dict:
    """{sigma: {kind: {method: {'mean': mean estimate, 'error': mean absolute error}}}}, 0-255 scale."""
    _, cleans = clean_reference_images(folder, only=only)
    print(f"noise estimates on {len(cleans)} images of {folder}")
    estimators = dict(zip(METHODS, (whole_image_estimate, wavelet_noise_sigma, estimate_noise_sigma)))
    results: dict = {}
    cases = [(sigma, kind) for sigma in sigmas_255 for kind in KINDS]
    for sigma, kind in tracked(cases, len(cases), "noise estimates", "level"):
        noise = NoiseSpec(sigma / 255, sigma / 255, clip=kind != "unclipped", seed=noise_seed)
        noisy = [seeded_noisy(to_unit_range(clean), [image_id], noise)[0][0] for image_id, clean in enumerate(cleans)]
        if kind != "unclipped":
            noisy = [(image * 255).round() / 255 for image in noisy]  # saved as 8 bits
        results.setdefault(sigma, {})[kind] = {}
        for method, estimate in estimators.items():
            read = np.array([estimate(image) for image in noisy]) * 255
            results[sigma][kind][method] = {"mean": float(read.mean()), "error": float(np.abs(read - sigma).mean())}
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_folder_arguments(parser, "a folder of clean images (e.g. McMaster)")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[5, 15, 25, 50, 75], help="noise levels, 0-255")
    args = parser.parse_args()
    results = measure_folder(lambda only: noise_estimates(args.folder, args.sigmas, only=only), args)
    if results is None:
        return 2
    print("mean estimate (mean absolute error), 0-255")
    print("| true sigma | " + " | ".join(f"{kind}: {method}" for kind in KINDS for method in METHODS) + " |")
    print("|---" * (1 + len(KINDS) * len(METHODS)) + "|")
    for sigma, row in results.items():
        print(f"| {sigma:g} | " + " | ".join(f"{row[kind][method]['mean']:.2f} ({row[kind][method]['error']:.2f})"
                                            for kind in KINDS for method in METHODS) + " |")
    write_figures(results, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
