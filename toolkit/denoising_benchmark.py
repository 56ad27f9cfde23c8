"""`toolkit benchmark-denoiser`: score denoisers the way the literature does, on any folder of clean images.

Protocol (the published tables'): each clean image at full size in [0, 1], additive white Gaussian noise
of sigma 15 / 25 / 50 on the 0-255 scale, NOT clipped, seeded per image; PSNR (data range 1) and SSIM on
RGB over the whole image, outputs clamped to [0, 1]; the mean over images. A noise-conditioned model and the
baselines are told the true sigma (as in the published tables), or, with blind=True, the sigma that
estimate_noise_sigma reads from each noisy image: every row told what it would know in use. With
self_ensemble=True, the model's output is the mean over the noisy image's 8 rotations and mirror images (the
"x8"/"+" rows of the literature). With validation_images=True only the images of the folder that the model's own
run held out for validation are scored: the place to choose such options, never the test set. Beside it: the noisy
input, non-local means (h = 0.8 sigma) and CBM3D from the optional `bm3d` package (non-commercial licence: never a
hard dependency), and for McMaster the published figures (FFDNet, DPIR and SwinIR papers; PUBLISHED below).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from toolkit.data.augment import to_unit_range
from toolkit.data.folders import list_image_files
from toolkit.data.images import UnreadableImage, open_image, pixel_hash, reduce_image, rgb_pixels
from toolkit.errors import DataError, UserError
from toolkit.inference import (
    describe_device,
    estimate_noise_sigma,
    is_exported_file,
    load_denoiser,
    resolve_checkpoint,
    training_noise,
)
from toolkit.progress import progress_bar
from toolkit.runs import read_config, read_json, read_summary, write_json
from toolkit.train.denoise import (
    SSIM_WINDOW,
    TILE_MARGIN,
    TILE_SIZE,
    NoiseSpec,
    bm3d_available,
    bm3d_denoiser,
    check_tile_size,
    denoise_in_tiles,
    image_quality,
    model_tiles,
    nlm_denoise,
    seeded_noisy,
    to_hwc_uint8,
)

# PSNR (dB) on McMaster, AWGN, noise not clipped (FFDNet's table; DPIR and SwinIR's tables)
PUBLISHED = {"mcmaster": {
    "CBM3D": {15: 34.06, 25: 31.66, 50: 28.51},
    "CDnCNN": {15: 33.44, 25: 31.51, 50: 28.61},
    "FFDNet": {15: 34.66, 25: 32.35, 50: 29.18},
    "DRUNet": {15: 35.40, 25: 33.14, 50: 30.08},
    "SwinIR": {15: 35.61, 25: 33.20, 50: 30.22},
}}
PUBLISHED_MCMASTER = PUBLISHED["mcmaster"]
METHOD_NAMES = {"noisy": "noisy input", "nlm": "non-local means", "bm3d": "CBM3D (bm3d package)"}


def published_rows(folder: Path, which: str = "auto") -> tuple[str | None, dict]:
    """('mcmaster', its rows) when the folder is McMaster (by name, or which='mcmaster'); (None, {}) otherwise."""
    if which == "none":
        return None, {}
    key = Path(folder).name.lower() if which == "auto" else which.lower()
    if key not in PUBLISHED:
        if which != "auto":
            raise UserError(f"no published figures for {which!r}: known {', '.join(PUBLISHED)} (or 'none')")
        return None, {}
    return key, PUBLISHED[key]


@torch.no_grad()
def benchmark_denoiser(checkpoint: str | None, clean_dir: Path, sigmas_255: list[float],
                       baselines: tuple[str, ...] = ("nlm",), noise_seed: int = 1234, blind: bool = False,
                       max_images: int = 0, self_ensemble: bool = False, validation_images: bool = False,
                       precision: str = "no", device: torch.device | str = "cpu", reduction: int = 1,
                       tile_size: int = TILE_SIZE, tile_margin: int = TILE_MARGIN, examples: dict | None = None,
                       progress_file: Path | None = None, log=print) -> dict:
    """Mean PSNR/SSIM over the folder per sigma, for the model (if given), the noisy input and the baselines.
    reduction: each image is first made that many times smaller each way by a box filter (reduce_image).
    precision: what the model runs in ('no': fp32, the protocol of the README's figures; 'bf16').
    device: where the model runs (toolkit.inference.inference_device); the noise, the baselines and the
    metrics stay on the CPU, so every device scores the same noisy images the same way.
    tile_size: the model denoises an image larger than a tile of this side plus its margins one tile at a time
    (denoise_in_tiles), in a tile's memory; the JSON counts such images (`tiled_images`; McMaster's, Kodak24's and
    CBSD68's all fit in one: whole images, the published protocol). 0: always whole images. tile_margin: the pixels
    of context each tile is denoised with (TILE_MARGIN was measured for the blind denoiser's network).
    examples: a dict to fill with the first image's centre (EXAMPLE_CROP px) per sigma: {sigma: {'clean' | method:
    (H, W, 3) uint8}}, for W&B (log_benchmark).
    progress_file: where the scores so far are kept, after every image (CBM3D: every chunk of images); a benchmark
    stopped on the way and started again with the same settings, model and images continues from it, since each
    image's noise is seeded by its place in the folder and every method is deterministic (its scores come out the
    same as an uninterrupted run's; `seconds` adds the runs' times). The caller removes it once the results are
    written."""
    check_tile_size(tile_size, tile_margin)
    refused = [sigma for sigma in sigmas_255 if not (math.isfinite(sigma) and sigma >= 0)]
    if refused:
        raise UserError(f"--sigmas takes noise stds on the 0-255 scale, 0 or more; got {refused[0]:g}")
    if validation_images and not checkpoint:
        raise UserError("validation images belong to a trained model's run: pass its run directory, not 'none'")
    model, state = load_denoiser(checkpoint, device) if checkpoint else (None, None)  # before reading any image
    only = validation_images_of(run_behind(checkpoint, state), clean_dir, log) if validation_images else None
    files, cleans = clean_reference_images(clean_dir, max_images, only, reduction)
    if "bm3d" in baselines and not bm3d_available():
        raise UserError("BM3D needs the optional bm3d package: pip install bm3d (licence: non-commercial use only)")
    conditioned = bool(state and state.conditioned)
    if model is not None and not conditioned:
        log(f"[benchmark] note: this model is not told the noise level; it was trained on {training_noise(state)}")
    methods = ["noisy"] + (["model"] if model is not None else []) + list(baselines)
    tiled = 0 if model is None else sum(len(model_tiles(model, clean, tile_size, tile_margin)) > 1 for clean in cleans)
    protocol = "AWGN, not clipped, whole images, RGB"
    if tiled:
        protocol = (f"AWGN, not clipped, RGB; the model saw {tiled} of the {len(cleans)} images in tiles of "
                    f"{tile_size} px with {tile_margin} px of context (--tile_size 0: whole images)")
        log(f"[benchmark] note: {tiled} of the {len(cleans)} images are larger than a tile: the model denoises them "
            f"in tiles of {tile_size} px (--tile_size; 0: whole images, in memory to match)")
    if blind:
        protocol += "; blind: each method told the sigma estimated from its noisy image"
    results: dict = {"images": len(files), "folder": str(clean_dir), "checkpoint": checkpoint, "blind": blind,
                     "self_ensemble": self_ensemble, "validation_images": validation_images,
                     "reduction": reduction, "tile_size": tile_size, "tile_margin": tile_margin, "tiled_images": tiled,
                     "mixed_precision": precision if model is not None else None,
                     "exported_precision": (state.extra.get("exported_precision") if state else None),
                     "device": describe_device(torch.device(device)) if model is not None else None,
                     "noise_seed": noise_seed, "protocol": protocol, "sigmas": {},
                     "seconds": {}}
    identity = scoring_identity(checkpoint, files, cleans, {
        key: results[key] for key in ("blind", "self_ensemble", "reduction", "tile_size", "tile_margin",
                                      "mixed_precision", "device", "noise_seed")} | {"methods": methods})
    # the images scored, by their names and pixels in scoring order: what compare-benchmarks pairs results by, wherever
    # the folder was and however its path was written
    results["images_digest"] = hashlib.sha256(json.dumps([identity["images"], identity["pixels"]]).encode()).hexdigest()
    progress = read_progress(progress_file, identity, log) if progress_file else {}
    save = (lambda: write_json(progress_file, {"identity": identity, "sigmas": progress})) if progress_file \
        else (lambda: None)  # after every chunk of images
    # CBM3D is handed a chunk of images at a time (two per worker), its workers started once: the noisy images and
    # outputs held at once are a chunk's, however large the folder; without it each image is drawn when it is scored
    workers = os.cpu_count() or 1
    chunk = 2 * workers if "bm3d" in methods else 1
    with bm3d_denoiser(workers) if "bm3d" in methods else contextlib.nullcontext() as run_bm3d:
        for sigma_255 in sigmas_255:
            noise = NoiseSpec(sigma_255 / 255, sigma_255 / 255, clip=False, seed=noise_seed)
            so_far = progress.setdefault(f"{sigma_255:g}", {})
            scores, results["seconds"][sigma_255], estimates = score_one_sigma(
                model, conditioned, run_bm3d, methods, cleans, noise, chunk, blind, (tile_size, tile_margin),
                self_ensemble, precision, device, f"sigma {sigma_255:g}",
                None if examples is None else examples.setdefault(sigma_255, {}), so_far, save, log)
            for method in methods[1:] if blind else ():  # what each method that takes a noise level was told
                if method != "model" or conditioned:
                    scores[method]["estimated_sigma_255"] = estimates
            results["sigmas"][sigma_255] = scores
            log(f"[benchmark] sigma {sigma_255:g}: " + ", ".join(
                f"{method} {v['psnr']:.2f} dB" for method, v in results["sigmas"][sigma_255].items())
                + (f" (sigma estimated {np.mean(estimates):.1f} on average)" if estimates else ""))
    return results


def score_one_sigma(model, conditioned: bool, run_bm3d, methods: list[str], cleans: list[torch.Tensor],
                    noise: NoiseSpec, chunk: int, blind: bool, tiles: tuple[int, int], self_ensemble: bool,
                    precision: str, device, title: str, example: dict | None = None, so_far: dict | None = None,
                    save=lambda: None, log=print) -> tuple[dict, dict, list]:
    """benchmark_denoiser at one noise level: ({method: psnr, ssim, per_image_psnr}, {method: seconds}, the noise
    levels estimated (0-255; blind, else empty)), methods[0] being the noisy input. Each noisy
    image is drawn, and with `blind` its noise level estimated once, for every method alike; `chunk` images at a time
    (CBM3D's batch for `run_bm3d`, a bm3d_denoiser). tiles: the model's (tile size, margin) (denoise_in_tiles).
    example: a dict to fill with the first image's centre, clean and as each method gave it.
    so_far: this level's scores of an earlier, stopped run (read_progress), continued from the first image it did not
    score and filled as images are scored ({'scores': {method: [[psnr, ssim], ...]}, 'seconds', 'estimates'});
    save() is called after each chunk. When the first image was scored before and `example` is asked for, it is
    denoised again for its crops, and a score that comes out other than before is said."""
    so_far = {} if so_far is None else so_far
    totals: dict[str, list] = so_far.setdefault("scores", {method: [] for method in methods})
    seconds = so_far.setdefault("seconds", {method: 0.0 for method in methods} | ({"sigma_estimate": 0.0} if blind
                                                                                  else {}))
    estimates = so_far.setdefault("estimates", [])  # blind: the noise level estimated on each noisy image, 0-255
    done = len(totals["noisy"])
    if done and example is not None:  # the crops of an image scored before the stop: denoised again, checked
        again = score_images([0], model, conditioned, run_bm3d, methods, cleans, noise, blind, tiles, self_ensemble,
                             precision, device, {method: [] for method in methods}, dict(seconds), [], example)
        changed = [method for method in methods if not math.isclose(
            again[method][0][0], finite_or_inf(totals[method][0][0]), rel_tol=1e-6, abs_tol=1e-6)]
        if changed:
            log(f"[benchmark] note: the first image scores other than it did before the stop at {title} "
                f"({', '.join(changed)}): the scores kept are of other code or another machine; delete the progress "
                "file to score every image here")
    with progress_bar(len(cleans), title, unit="img", initial=done) as bar:
        for first in range(done, len(cleans), chunk):
            image_ids = range(first, min(first + chunk, len(cleans)))
            score_images(image_ids, model, conditioned, run_bm3d, methods, cleans, noise, blind, tiles, self_ensemble,
                         precision, device, totals, seconds, estimates, example if first == 0 else None)
            save()
            bar.update(len(image_ids))
    scores = {method: {"psnr": float(np.mean([finite_or_inf(v[0]) for v in values])),
                       "ssim": float(np.mean([v[1] for v in values])),
                       "per_image_psnr": [finite_or_inf(v[0]) for v in values]} for method, values in totals.items()}
    return scores, seconds, estimates


def finite_or_inf(psnr: float | None) -> float:
    """A PSNR as kept in a progress file, where an infinite one (an output equal to its clean image) is null."""
    return math.inf if psnr is None else psnr


def score_images(image_ids, model, conditioned: bool, run_bm3d, methods: list[str], cleans: list[torch.Tensor],
                 noise: NoiseSpec, blind: bool, tiles: tuple[int, int], self_ensemble: bool, precision: str, device,
                 totals: dict, seconds: dict, estimates: list, example: dict | None) -> dict:
    """Score the images `image_ids` (one chunk) by every method, appending [psnr, ssim] per image to totals[method],
    the time taken to seconds[method] and, when blind, the noise level estimated per noisy image to estimates;
    example: filled with image 0's centre, clean and per method. Returns totals."""
    drawn = [seeded_noisy(to_unit_range(cleans[image_id]), [image_id], noise) for image_id in image_ids]
    if blind:  # on the image every method is given (here not clipped: the protocol)
        started = time.perf_counter()
        levels = [torch.full((1,), estimate_noise_sigma(noisy[0])) for noisy, _ in drawn]
        seconds["sigma_estimate"] += time.perf_counter() - started
        estimates += [float(level) * 255 for level in levels]
    else:
        levels = [sigmas for _, sigmas in drawn]
    if run_bm3d is not None:
        started = time.perf_counter()
        bm3d_outputs = run_bm3d([noisy[0] for noisy, _ in drawn], [float(level) for level in levels])
        seconds["bm3d"] += time.perf_counter() - started
    for position, image_id in enumerate(image_ids):
        clean, (noisy, _), level = to_unit_range(cleans[image_id]), drawn[position], levels[position]
        for method in methods:
            started = time.perf_counter()
            if method == "noisy":
                output = noisy
            elif method == "model":
                output = denoise_in_tiles(model, noisy.to(device), level.to(device), conditioned, *tiles,
                                          self_ensemble, precision).cpu()
            elif method == "nlm":
                output = nlm_denoise(noisy, level)
            else:
                output = bm3d_outputs[position][None]
            if method != "bm3d":
                seconds[method] += time.perf_counter() - started
            quality = image_quality(output, clean)
            totals[method].append([float(quality["psnr"]), float(quality["ssim"])])
            if example is not None and image_id == 0:
                example.setdefault("clean", centre_crop(clean[0]))
                example[method] = centre_crop(output[0])
    return totals


def scoring_identity(checkpoint: str | None, files: list[Path], cleans: list[torch.Tensor], settings: dict) -> dict:
    """What makes a benchmark's per-image scores what they are, for read_progress to match a stopped run's against:
    the model's checkpoint (its folder, and its files' sizes and times), the images (names and each one's pixel_hash,
    as scored) and the settings (methods, noise seed, blind, x8, reduction, tiles, precision, device)."""
    weights = None
    if is_exported_file(checkpoint):
        file = Path(checkpoint).resolve()
        weights = [str(file), f"{file.stat().st_size}:{file.stat().st_mtime_ns}"]
    elif checkpoint:
        folder = resolve_checkpoint(checkpoint).resolve()
        weights = [str(folder)] + [f"{file.name}:{file.stat().st_size}:{file.stat().st_mtime_ns}"
                                   for file in sorted(folder.iterdir()) if file.is_file()]
    return {**settings, "checkpoint": weights, "images": [file.name for file in files],
            "pixels": [pixel_hash(clean.numpy()) for clean in cleans]}


def read_progress(path: Path, identity: dict, log=print) -> dict:
    """The scores a stopped benchmark kept at `path` ({sigma: so_far}, score_one_sigma), when it scored the same
    model, images and settings (scoring_identity), saying how far it got; {} when there is none, and when it is of
    other ones, saying so (it is then written over)."""
    kept = read_json(path) if path.is_file() else None
    if not isinstance(kept, dict):
        if path.is_file():
            log(f"[benchmark] note: {path} is not a progress file this command wrote; scoring from the start over it")
        return {}
    kept_identity = kept.get("identity") or {}
    if kept_identity != identity:
        differing = sorted(key for key in identity.keys() | kept_identity.keys()
                           if identity.get(key) != kept_identity.get(key))
        log(f"[benchmark] {path} holds the scores of a stopped benchmark of other {', '.join(differing)}; scoring "
            "from the start (it is written over)")
        return {}
    progress = kept.get("sigmas") or {}
    log(f"[benchmark] continuing the stopped benchmark kept in {path}: " + ", ".join(
        f"sigma {sigma} at {len(level['scores']['noisy'])} of {len(identity['images'])} images"
        for sigma, level in progress.items() if level.get("scores")))
    return progress


def clean_reference_images(clean_dir: Path | str, max_images: int = 0, only: list[Path] | None = None,
                           reduction: int = 1) -> tuple[list[Path], list[torch.Tensor]]:
    """The image files of a folder of clean references (those in `only` when given; the first max_images,
    0 = all) and each as a (1, 3, H, W) uint8 tensor (to_unit_range gives [0, 1]: a quarter of float32's memory,
    for folders of large photographs), made `reduction` times smaller (reduce_image)."""
    if Path(clean_dir).is_file():
        raise UserError(f"{clean_dir} is a file: pass the folder of clean reference images it is in (e.g. McMaster)")
    files = list_image_files(Path(clean_dir)) if Path(clean_dir).is_dir() else []
    if not files:
        raise DataError(f"{clean_dir} holds no images: pass a folder of clean reference images (e.g. McMaster)")
    if only is not None:
        wanted = {file.resolve() for file in only}
        files = [file for file in files if file.resolve() in wanted]
    files = files[:max_images] if max_images else files
    images, problems = [], []
    for file in files:  # all read before any is scored: every problem is said at once, before minutes of work
        try:
            pixels = rgb_pixels(reduce_image(open_image(file), reduction))
        except UnreadableImage as error:
            problems.append(str(error))
            continue
        if min(pixels.shape[:2]) < SSIM_WINDOW:
            problems.append(f"{file}: {pixels.shape[1]}x{pixels.shape[0]} pixels, under the {SSIM_WINDOW}x"
                            f"{SSIM_WINDOW} that SSIM's window needs")
        images.append(torch.from_numpy(pixels).permute(2, 0, 1)[None])
    if problems:
        listed = "\n  ".join(problems[:10]) + (f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else "")
        raise DataError(f"{len(problems)} of the {len(files)} images in {clean_dir} cannot be scored:\n  {listed}\n"
                        "The benchmark scores every image of the folder, so that its mean is over a known set: move "
                        "these out of it (or replace them) and run it again")
    return files, images


def validation_images_of(checkpoint: str, clean_dir: Path | str, log=print) -> list[Path]:
    """The images of `clean_dir` that the checkpoint's run (recipes/blind_denoiser.py) held out for validation:
    the run's own split, rebuilt from its config.json (tile size, validation share) and checked against the
    data fingerprint its summary recorded, so that another folder cannot pass for the run's."""
    from toolkit.data.clean_images import load_clean_images
    from toolkit.data.settings import CleanImageSettings

    run_dir = resolve_checkpoint(checkpoint).parent.parent
    config = read_config(run_dir) or {}
    if "val_fraction" not in config or "tile_size" not in config:
        raise UserError(f"{checkpoint}: no config.json of a run trained on a folder of clean images "
                        f"(recipes/blind_denoiser.py) in {run_dir}; its held-out images are unknown. Pass such "
                        "a run's directory, or drop --validation_images to score the whole folder")
    settings = CleanImageSettings(data=str(clean_dir), tile_size=int(config["tile_size"]),
                                  reductions=str(config.get("reductions", "1")),
                                  val_fraction=float(config["val_fraction"]))
    data = load_clean_images(settings, config.get("cache_dir") or None, log=log)
    recorded = (read_summary(run_dir) or {}).get("data_fingerprint")
    if recorded and recorded != data.fingerprint():
        raise UserError(f"{clean_dir} is not the folder {run_dir} trained on (its split's fingerprint is "
                        f"{data.fingerprint()}, the run's {recorded}): pass the run's --data folder "
                        f"({config.get('data')})")
    if not recorded:
        log(f"[benchmark] note: {run_dir} has not finished (no summary.json); the split is rebuilt from its "
            "config but cannot be checked against the data it trained on")
    return sorted({data.root / data.stored.files[index] for index in data.val_indices})  # files: relative


def run_behind(checkpoint: str, state) -> str:
    """The run or checkpoint whose split and settings hold a model's validation images: the one given, or for an
    exported file the checkpoint it was exported from (load_exported_denoiser's state records it), where it still
    is."""
    if not is_exported_file(checkpoint):
        return checkpoint
    recorded = state.extra.get("exported_from")
    if not recorded or not Path(recorded).exists():
        raise UserError(f"{checkpoint} was exported from {recorded or 'a checkpoint it does not record'}, which is not "
                        "here: its held-out images are unknown. Pass that run's directory, or drop --validation_images "
                        "to score the whole folder")
    return recorded


def benchmark_table(results: dict, label: str = "this toolkit", published: dict | None = None) -> str:
    """Markdown: our rows (model, baselines, noisy input) and the published rows, one column per sigma."""
    sigmas = list(results["sigmas"])
    header = "| method | " + " | ".join(f"σ={float(s):g}" for s in sigmas) + " |"
    lines = [header, "|" + "---|" * (len(sigmas) + 1)]
    order = [m for m in ("model", "bm3d", "nlm", "noisy") if m in results["sigmas"][sigmas[0]]]
    for method in order:
        shown = row_label(method, results, label)
        lines.append(f"| **{shown}** | " + " | ".join(
            f"{results['sigmas'][s][method]['psnr']:.2f} / {results['sigmas'][s][method]['ssim']:.3f}" for s in sigmas)
            + " |")
    for name, row in (published or {}).items():
        lines.append(f"| {name} (published) | " + " | ".join(f"{row[int(float(s))]:.2f}" if int(float(s)) in row
                                                            else "–" for s in sigmas) + " |")
    note = "\n\nOurs: PSNR dB / SSIM, mean over images" + ("; published: PSNR dB." if published else
                                                            " (no published figures for this folder).")
    return "\n".join(lines) + note


def row_label(method: str, results: dict, label: str = "this toolkit") -> str:
    """A method's row name: the model's as model_label gives it; a baseline's saying when it was told the estimated
    noise level (blind)."""
    if method == "model":
        return model_label(label, results)
    return METHOD_NAMES[method] + (" (blind: sigma estimated)" if results.get("blind") and method != "noisy" else "")


def model_label(label: str, results: dict) -> str:
    """The model's row name, saying how it was run: blind (sigma estimated), x8 self-ensemble."""
    how = [words for flag, words in (("blind", "blind: sigma estimated"), ("self_ensemble", "x8 self-ensemble"))
           if results.get(flag)]
    if results.get("exported_precision"):
        how.insert(0, f"{results['exported_precision']} ONNX graph")
    if results.get("mixed_precision") not in (None, "no"):
        how.append(f"{results['mixed_precision']} inference")
    return label + (f" ({', '.join(how)})" if how else "")


def write_benchmark(results: dict, out: Path) -> None:
    """The results as standard JSON: an infinite PSNR (an output equal to its clean image: the noisy input at sigma
    0) is written as null, which every JSON reader takes, where Python's default `Infinity` is not JSON."""
    write_json(out, results)


EXAMPLE_CROP = 192  # the side of the centre of the first image that W&B shows per method


def centre_crop(image: torch.Tensor, side: int = EXAMPLE_CROP) -> np.ndarray:
    """The centre side x side of a (3, H, W) image in [0, 1] (the whole where smaller) as (h, w, 3) uint8."""
    height, width = image.shape[-2:]
    top, left = max(0, (height - side) // 2), max(0, (width - side) // 2)
    return to_hwc_uint8(image[:, top:top + side, left:left + side])


def log_benchmark(results: dict, examples: dict, logger) -> None:
    """A benchmark in a W&B run (toolkit.train.tracking.RunLogger; its folder keeps the same as files): every row,
    measured and published, in one table (method, sigma, PSNR, SSIM, source); each figure in the summary
    (`model/psnr_sigma25`, `published/CBM3D/psnr_sigma25`, ...) and as step-0 scalars, for charts and Reports; and per
    sigma the first image's centre clean, noisy and as each method denoised it, side by side."""
    published = (results.get("published") or {}).get("rows") or {}
    rows, figures = [], {}
    for sigma, scores in results["sigmas"].items():
        for method, score in scores.items():
            shown = row_label(method, results)
            psnr = score["psnr"] if math.isfinite(score["psnr"]) else None  # sigma 0's noisy input: infinite
            rows.append([shown, float(sigma), psnr, score["ssim"], "measured"])
            figures[f"{method}/psnr_sigma{float(sigma):g}"] = psnr
            figures[f"{method}/ssim_sigma{float(sigma):g}"] = score["ssim"]
        for name, row in published.items():
            value = row.get(int(float(sigma)), row.get(str(int(float(sigma)))))
            if value is not None and float(sigma).is_integer():
                rows.append([f"{name} (published)", float(sigma), value, None, "published"])
                figures[f"published/{name}/psnr_sigma{float(sigma):g}"] = value
    figures = {key: value for key, value in figures.items() if value is not None and math.isfinite(value)}
    logger.log_table("benchmark/results", ["method", "sigma", "psnr", "ssim", "source"], rows, step=0)
    logger.log(figures, step=0)
    logger.summary(figures)
    images, captions = {}, {}
    for sigma, crops in examples.items():
        order = ["clean", *[method for method in ("noisy", "model", "bm3d", "nlm") if method in crops]]
        height = min(crops[name].shape[0] for name in order)
        gap = np.full((height, 4, 3), 255, np.uint8)
        strip = [piece for name in order for piece in (crops[name][:height], gap)][:-1]
        images[f"examples/sigma_{float(sigma):g}"] = np.concatenate(strip, axis=1)
        first = {method: results["sigmas"][sigma][method]["per_image_psnr"][0] for method in order[1:]}
        captions[f"examples/sigma_{float(sigma):g}"] = "left to right: clean, " + ", ".join(
            f"{row_label(method, results)} ({first[method]:.2f} dB on the whole image)"
            for method in order[1:])
    logger.log_images(images, step=0, captions=captions)
