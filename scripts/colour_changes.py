"""What a denoiser changes in brightness and what in colour: the PSNR of its output against the clean image on the
luma channel (Y) and on the two colour-difference channels (Cb, Cr; BT.601 full range, JPEG's convention), beside
the noisy input's, per noise level. At sigma 0 the image is clean: whatever the network changes there is detail it
takes for noise. docs/results.md's "Light noise and none" reads McMaster with

    python scripts/colour_changes.py RUN data/denoise/McMaster --sigmas 0 2 5

(and the images the run held out of its training folder with --validation_images_of RUN). Noise is seeded per
image as in `toolkit benchmark-denoiser`, unclipped, the model told its level, one pass, fp32.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
from folder_arguments import add_folder_arguments, measure_folder, write_figures

from toolkit.data.augment import to_unit_range
from toolkit.denoising_benchmark import clean_reference_images
from toolkit.errors import UserError
from toolkit.inference import load_trained_model
from toolkit.progress import tracked
from toolkit.train.denoise import TILE_MARGIN, TILE_SIZE, NoiseSpec, denoise_in_tiles, seeded_noisy

# RGB in [0, 1] -> Y, Cb, Cr differences (BT.601 full range, as JPEG stores colour; the offsets cancel in errors)
RGB_TO_YCBCR = torch.tensor([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])


def psnr_of(mse: float) -> float | None:
    """PSNR (dB, data range 1) of a mean squared error; None where nothing differs (infinite)."""
    return -10 * math.log10(mse) if mse > 0 else None


@torch.no_grad()
def colour_changes(checkpoint: str, folder: Path, sigmas_255: list[float], only=None, noise_seed: int = 1234) -> dict:
    """{sigma: {"noisy" | "model": {"psnr_y", "psnr_cbcr", "colour_share"}}}: the PSNRs of the mean over images
    of each one's squared error on Y, and on Cb and Cr together (None: no error), and the share of the squared
    error that is in colour."""
    model, state = load_trained_model(checkpoint)
    if not state.conditioned:
        raise UserError(f"{checkpoint} is not told the noise level; this script measures the blind denoiser")
    _, cleans = clean_reference_images(folder, only=only)
    print(f"brightness and colour changes on {len(cleans)} images of {folder} ({checkpoint})")
    cases = [(sigma, image_id) for sigma in sigmas_255 for image_id in range(len(cleans))]
    sums: dict = {}  # sigma -> method -> [Y, Cb + Cr] squared error, summed over images
    for sigma, image_id in tracked(cases, len(cases), "colour changes", "img"):
        clean = to_unit_range(cleans[image_id])
        noisy, sigmas = seeded_noisy(clean, [image_id], NoiseSpec(sigma / 255, sigma / 255, False, noise_seed))
        output = denoise_in_tiles(model, noisy, sigmas, True, TILE_SIZE, TILE_MARGIN)
        for method, image in (("noisy", noisy), ("model", output)):
            error = torch.einsum("ij,bjhw->bihw", RGB_TO_YCBCR, image.clamp(0, 1) - clean).square()
            totals = sums.setdefault(sigma, {}).setdefault(method, [0.0, 0.0])
            totals[0] += float(error[:, 0].mean())
            totals[1] += float(error[:, 1:].mean())
    return {sigma: {method: {"psnr_y": psnr_of(y / len(cleans)), "psnr_cbcr": psnr_of(colour / len(cleans)),
                             "colour_share": 2 * colour / (y + 2 * colour) if y + colour else None}
                    for method, (y, colour) in methods.items()}
            for sigma, methods in sums.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a blind denoiser's run directory or checkpoint")
    add_folder_arguments(parser)
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0, 2, 5], help="noise levels, 0-255")
    args = parser.parse_args()
    if min(args.sigmas) < 0:
        print("error: --sigmas takes noise levels of 0 or more", file=sys.stderr)
        return 2
    results = measure_folder(lambda only: colour_changes(args.checkpoint, args.folder, args.sigmas, only), args)
    if results is None:
        return 2
    shown = lambda psnr: "∞" if psnr is None else f"{psnr:.2f}"  # noqa: E731
    print("PSNR dB on Y / on Cb and Cr; share of the squared error in colour (Cb + Cr)")
    print("| sigma | noisy input | model |")
    print("|---|---|---|")
    for sigma, row in results.items():
        print(f"| {sigma:g} | " + " | ".join(
            f"{shown(row[m]['psnr_y'])} / {shown(row[m]['psnr_cbcr'])}"
            + (f"; {row[m]['colour_share']:.0%}" if row[m]["colour_share"] is not None else "")
            for m in ("noisy", "model")) + " |")
    write_figures(results, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
