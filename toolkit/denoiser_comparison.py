"""Two `toolkit benchmark-denoiser` results side by side, image by image: is a difference of a few hundredths of a
dB more than which images happened to be scored?

Both files must hold the same noisy images (same folder, reduction and noise seed; checked on the noisy input's
per-image PSNR, which the seeded noise makes identical); told or blind, one pass or x8 may differ. Per noise level:
the difference of the two methods' per-image PSNR, its mean with a 95% t-interval over the images, and how many
images gained. The interval says how much the mean difference depends on the sample of images; it says nothing of
how much a retrained model would move (a seed's spread: measure it with a second run)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from toolkit.errors import UserError
from toolkit.stats import mean_interval

# what makes two results' images the same ones (the noise itself is checked on the noisy input's per-image PSNR, so
# a told and a blind result of the same images compare); with the default of results written before a key existed.
# The images themselves: their digest (names and pixels, in scoring order), or for results written before it was
# recorded, the folder's own name (its path as typed, relative or absolute, or where it has moved, is not the images)
SAME_IMAGES_KEYS = {"images": None, "validation_images": False, "reduction": 1, "noise_seed": None}


def load_benchmark(path: Path) -> dict:
    """A benchmark-denoiser JSON, or a UserError that says what is wrong with the file."""
    if not path.is_file():
        raise UserError(f"{path} is not a file: give the --out JSON that toolkit benchmark-denoiser wrote")
    try:
        results = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{path} is not JSON ({error}); give the --out file of toolkit benchmark-denoiser") from None
    if not isinstance(results, dict) or not isinstance(results.get("sigmas"), dict):
        raise UserError(f"{path} has no per-noise-level results ('sigmas'): it is not a toolkit benchmark-denoiser "
                        "JSON")
    return results


def check_same_noisy_images(base: dict, other: dict, base_name: str, other_name: str) -> None:
    """Refuse two results that did not score the same noisy images: a paired difference needs the same pairs."""
    for key, default in SAME_IMAGES_KEYS.items():
        values = [results.get(key, default) for results in (base, other)]
        if values[0] != values[1]:
            raise UserError(f"{base_name} and {other_name} scored different images ({key}: {values[0]!r} against "
                            f"{values[1]!r}); compare results of one folder, --reduce, --validation_images "
                            "and noise seed")
    digests = [results.get("images_digest") for results in (base, other)]
    if None not in digests and digests[0] != digests[1]:
        raise UserError(f"{base_name} and {other_name} scored different images (the files' names or pixels differ: "
                        f"{base.get('folder')} against {other.get('folder')}); compare results of one folder")
    folders = [Path(str(results.get("folder"))).name for results in (base, other)]
    if None in digests and folders[0] != folders[1]:
        raise UserError(f"{base_name} and {other_name} scored different folders ({base.get('folder')} against "
                        f"{other.get('folder')}); compare results of one folder")
    for sigma in set(base["sigmas"]) & set(other["sigmas"]):
        noisy = [results["sigmas"][sigma].get("noisy", {}).get("per_image_psnr") for results in (base, other)]
        if None in noisy:
            continue
        if len(noisy[0]) != len(noisy[1]) or not all(
                (a is None and b is None) or (a is not None and b is not None and abs(a - b) < 1e-4)
                for a, b in zip(*noisy)):
            raise UserError(f"{base_name} and {other_name} hold different noisy images at sigma {float(sigma):g} "
                            "(the noisy input's per-image PSNR differs): were the images in the folder changed "
                            "between the two runs? Score both again on the same folder")


def method_scores(results: dict, sigma: str, method: str, name: str) -> list[float | None]:
    """One method's per-image PSNR at one noise level of a result, or a UserError naming the methods it has."""
    scored = results["sigmas"][sigma]
    if method not in scored:
        raise UserError(f"{name} has no '{method}' at sigma {float(sigma):g}; it scored: {', '.join(scored)}")
    return scored[method]["per_image_psnr"]


def paired_differences(base: dict, other: dict, base_method: str, method: str, base_name: str, other_name: str,
                       sigmas: list[float] | None = None) -> dict:
    """Per noise level both files scored (or `sigmas`), other's `method` minus base's `base_method`, image by image:
    {"levels": [{sigma, base, other, difference: mean_interval, better, images}], "mean": the same for each image's
    mean difference over the levels}. An image where either PSNR is infinite or missing (an output equal to its
    clean image) is left out of that level, and counted."""
    shared = sorted(set(base["sigmas"]) & set(other["sigmas"]), key=float)
    if sigmas is not None:
        missing = [f"{sigma:g}" for sigma in sigmas if not any(float(key) == sigma for key in shared)]
        if missing:
            raise UserError(f"sigma {', '.join(missing)} is not scored in both files (both have: "
                            f"{', '.join(f'{float(key):g}' for key in shared) or 'none'})")
        shared = [key for key in shared if float(key) in sigmas]
    if not shared:
        raise UserError(f"{base_name} and {other_name} share no noise level; score both at the same --sigmas")
    levels, per_image = [], []
    for sigma in shared:
        pairs = np.array([[math.nan if value is None else value for value in pair] for pair in zip(
            method_scores(base, sigma, base_method, base_name), method_scores(other, sigma, method, other_name))])
        finite = pairs[np.isfinite(pairs).all(axis=1)]  # (images with two finite PSNRs, 2)
        differences = finite[:, 1] - finite[:, 0]
        levels.append({"sigma": float(sigma), "base": float(finite[:, 0].mean()) if len(finite) else math.nan,
                       "other": float(finite[:, 1].mean()) if len(finite) else math.nan,
                       "difference": mean_interval(differences.tolist()), "better": int((differences > 0).sum()),
                       "images": len(finite), "left_out": len(pairs) - len(finite)})
        with np.errstate(invalid="ignore"):  # inf - inf, masked out as the other non-finite pairs are
            per_image.append(np.where(np.isfinite(pairs).all(axis=1), pairs[:, 1] - pairs[:, 0], math.nan))
    table = np.array(per_image)  # (levels, images)
    complete = ~np.isnan(table).any(axis=0)
    mean_over_levels = table[:, complete].mean(axis=0)
    return {"levels": levels, "mean": {"difference": mean_interval(mean_over_levels.tolist()),
                                       "better": int((mean_over_levels > 0).sum()), "images": int(complete.sum())}}


def comparison_table(compared: dict, base_label: str, other_label: str) -> str:
    """The paired differences as a markdown table, a row per noise level and one for their mean."""
    def interval(difference: dict) -> str:
        if difference["n"] < 2:
            return "(no images)" if difference["n"] == 0 else "(one image)"
        return f"{difference['low']:+.3f} to {difference['high']:+.3f}"

    lines = [f"| σ | {base_label}, dB | {other_label}, dB | difference | 95% interval over images | images better |",
             "|---|---|---|---|---|---|"]
    for level in compared["levels"]:
        left_out = f" ({level['left_out']} left out: infinite)" if level["left_out"] else ""
        lines.append(f"| {level['sigma']:g} | {level['base']:.3f} | {level['other']:.3f} | "
                     f"{level['difference']['mean']:+.3f} | {interval(level['difference'])} | "
                     f"{level['better']} of {level['images']}{left_out} |")
    if len(compared["levels"]) > 1:
        mean = compared["mean"]
        lines.append(f"| mean of the levels | | | {mean['difference']['mean']:+.3f} | {interval(mean['difference'])} | "
                     f"{mean['better']} of {mean['images']} |")
    return "\n".join(lines)


def distinct_names(paths: list[Path]) -> list[str]:
    """A short name for each compared file, for table labels and W&B keys: its stem, or where another file has
    the same stem (runs/a/mcmaster.json, runs/b/mcmaster.json), as many of its last folders as tell it apart,
    joined by '-' (a-mcmaster, b-mcmaster). The same path given twice gets the same name."""
    def tail(path: Path, parts: int) -> str:
        return "-".join(path.with_suffix("").parts[-parts:])

    names = []
    for path in paths:
        others = [other for other in paths if other.resolve() != path.resolve()]
        parts = next((count for count in range(1, len(path.parts) + 1)
                      if all(tail(other, count) != tail(path, count) for other in others)), len(path.parts))
        names.append(tail(path, parts))
    return names
