"""What denoising in tiles (toolkit denoise's and benchmark-denoiser's --tile_size, which bounds memory on large
images) changes against one pass over the whole image, for each margin of context a tile is given: the mean PSNR
against the clean images, its difference from the whole-image pass, and how far the two outputs are apart as 8-bit
pixels. The margin of the toolkit (TILE_MARGIN) was chosen from

    python scripts/tile_seams.py RUN data/denoise/CBSD432 --validation_images_of RUN

(the images the blind denoiser run RUN held out of its training folder; small tiles, so that every image has many
seams). Noise is seeded per image as in `toolkit benchmark-denoiser`, unclipped, the model told its level; fp32.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from folder_arguments import add_folder_arguments, measure_folder, write_figures

from toolkit.data.augment import to_unit_range
from toolkit.denoising_benchmark import clean_reference_images
from toolkit.errors import UserError
from toolkit.inference import load_trained_model
from toolkit.progress import tracked
from toolkit.train.denoise import NoiseSpec, denoise, denoise_in_tiles, image_quality, model_tiles, seeded_noisy


@torch.no_grad()
def tile_seams(checkpoint: str, folder: Path, sigmas_255: list[float], tile_size: int, margins: list[int],
               only=None, noise_seed: int = 1234) -> dict:
    """{sigma: {'whole': mean PSNR, margin: {'psnr', 'psnr_change', 'max_levels', 'pixels_changed', 'tiles'}}}:
    pixels_changed is the share of 8-bit output values (rounded) that differ from the whole-image pass'."""
    model, state = load_trained_model(checkpoint)
    if not state.conditioned:
        raise UserError(f"{checkpoint} is not told the noise level; this script measures the blind denoiser's tiles")
    _, cleans = clean_reference_images(folder, only=only)
    print(f"tiles of {tile_size} px on {len(cleans)} images of {folder} ({checkpoint})")
    results: dict = {}
    cases = [(sigma, image_id) for sigma in sigmas_255 for image_id in range(len(cleans))]
    collected: dict = {}
    for sigma, image_id in tracked(cases, len(cases), "tile seams", "img"):
        clean = to_unit_range(cleans[image_id])
        noisy, sigmas = seeded_noisy(clean, [image_id], NoiseSpec(sigma / 255, sigma / 255, False, noise_seed))
        whole = denoise(model, noisy, sigmas, True).clamp(0, 1)
        rows = collected.setdefault(sigma, {"whole": []})
        rows["whole"].append(float(image_quality(whole, clean)["psnr"]))
        for margin in margins:
            tiled = denoise_in_tiles(model, noisy, sigmas, True, tile_size, margin).clamp(0, 1)
            levels = ((tiled * 255).round() - (whole * 255).round()).abs()
            rows.setdefault(margin, []).append((float(image_quality(tiled, clean)["psnr"]), float(levels.max()),
                                                float((levels > 0).float().mean()),
                                                len(model_tiles(model, clean, tile_size, margin))))
    for sigma, rows in collected.items():
        whole = sum(rows["whole"]) / len(rows["whole"])
        results[sigma] = {"whole": whole}
        for margin in margins:
            psnr, max_levels, changed, tiles = zip(*rows[margin])
            results[sigma][margin] = {"psnr": sum(psnr) / len(psnr), "psnr_change": sum(psnr) / len(psnr) - whole,
                                      "max_levels": max(max_levels), "pixels_changed": sum(changed) / len(changed),
                                      "tiles": sum(tiles) / len(tiles)}
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a blind denoiser's run directory or checkpoint")
    add_folder_arguments(parser)
    parser.add_argument("--sigmas", type=float, nargs="+", default=[15, 50], help="noise levels, 0-255")
    parser.add_argument("--tile_size", type=int, default=128, help="tile side in pixels (small: many seams)")
    parser.add_argument("--margins", type=int, nargs="+", default=[0, 16, 32, 64, 96, 128],
                        help="context around each tile, in pixels")
    args = parser.parse_args()
    if args.tile_size < 1 or min(args.margins) < 0:
        print("error: --tile_size must be at least 1 and --margins at least 0", file=sys.stderr)
        return 2
    results = measure_folder(lambda only: tile_seams(args.checkpoint, args.folder, args.sigmas, args.tile_size,
                                                     args.margins, only), args)
    if results is None:
        return 2
    print("mean PSNR dB (change from one whole-image pass); largest 8-bit difference; share of 8-bit values changed")
    print("| sigma | whole image | " + " | ".join(f"margin {margin}" for margin in args.margins) + " |")
    print("|---" * (2 + len(args.margins)) + "|")
    for sigma, row in results.items():
        print(f"| {sigma:g} | {row['whole']:.3f} | " + " | ".join(
            f"{row[m]['psnr']:.3f} ({row[m]['psnr_change']:+.4f}); {row[m]['max_levels']:.0f}; "
            f"{row[m]['pixels_changed']:.2%}" for m in args.margins) + " |")
    print(f"tiles per image: {next(iter(results.values()))[args.margins[0]]['tiles']:.1f}")
    write_figures(results, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
