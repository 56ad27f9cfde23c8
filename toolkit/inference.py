"""Loading a trained model from a checkpoint (or a run directory) on its own, for inference.

A checkpoint written by the recipes is self-contained: model.safetensors holds the weights and
trainer_state.json the constructor call, the class list and the preprocessing. The commands that
denoise also take a denoiser's file from `toolkit export` (fp32 or int8), run by onnxruntime.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from toolkit.errors import CheckpointError, UserError
from toolkit.models import build_model, is_denoiser
from toolkit.runs import read_config
from toolkit.train.checkpoint import latest_checkpoint, older_checkpoint
from toolkit.train.state import TrainerState


def inference_device(requested: str) -> torch.device:
    """The device the toolkit's commands (denoise, benchmark-denoiser, predict, evaluate, calibrate) run the model
    on, from --device (by default the CUDA GPU when torch sees one, else the CPU); a GPU torch cannot see is a clear
    error."""
    try:
        device = torch.device(requested)
    except RuntimeError as error:
        raise UserError(f"--device={requested!r} is not a torch device: use cpu or cuda (cuda:1, ...)") from error
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device={requested}: the toolkit runs its models on cpu or cuda (cuda:1, ...)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device={requested}, but torch sees no CUDA GPU here (torch.cuda.is_available() is "
                        "False): use --device=cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"--device={requested}, but torch sees {torch.cuda.device_count()} GPU(s) here, numbered "
                        "from 0")
    return device


def keep_fp32_exact(device: torch.device, precision: str) -> None:
    """fp32 inference (precision 'no') on a GPU without TF32: cuDNN's convolutions default to TF32 (10-bit
    mantissas), which would move a GPU's PSNR away from a CPU's by more than a mean's rounding; exact fp32 agrees
    with the CPU to 2e-6 dB (measured on an H200: results/gpu_h200). Process-wide, as torch's switches are."""
    if device.type == "cuda" and precision == "no":
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False


def describe_device(device: torch.device) -> str:
    """'cuda (NVIDIA H200)' or 'cpu (AMD EPYC, 2 cores)': what a figure was measured on."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    from toolkit.train.precision import describe_cpu

    return f"cpu ({describe_cpu()})"


def resolve_checkpoint(path: Path | str) -> Path:
    """A checkpoint folder, or the newest checkpoint of a run directory."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist: pass a run directory (runs/<name>) or one of its "
                              "checkpoints (runs/<name>/checkpoints/step-N)")
    if (path / "trainer_state.json").is_file():
        return path
    newest = latest_checkpoint(path)
    if newest is None:
        # a study's model folder (compare/efficientnet_lite0 holds seed-0, seed-1, ...) or the study itself
        runs = sorted(folder for pattern in ("*", "*/*") for folder in path.glob(pattern)
                      if folder.is_dir() and latest_checkpoint(folder))
        if runs:
            example = f"{runs[0]}" + (f" (or several: {runs[0]} ... --ensemble {runs[1]} ..., for predict and "
                                      "evaluate)" if len(runs) > 1 else "")
            names = ", ".join(str(run.relative_to(path)) for run in runs)
            raise CheckpointError(f"{path} holds runs, not a checkpoint: {names}; pass one of them, e.g. {example}")
        raise CheckpointError(f"{path} holds no complete checkpoint (expected {path}/checkpoints/step-N/)")
    return newest


def trained_sigma_max(checkpoint: Path | str, state: TrainerState | None = None) -> float | None:
    """The strongest noise (0-255) the run behind a checkpoint drew in training (its config.json's sigma_max; of an
    exported file, the training noise its metadata records, read into `state` by load_exported_denoiser); None when
    nothing says (a checkpoint folder copied on its own, another recipe, a file exported before the noise was
    recorded)."""
    if is_exported_file(checkpoint):
        highest = ((state.noise if state else None) or {}).get("sigma_max")
        return None if highest is None else round(255 * highest, 4)
    sigma_max = (read_config(resolve_checkpoint(checkpoint).parent.parent) or {}).get("sigma_max")
    return float(sigma_max) if isinstance(sigma_max, (int, float)) else None


def training_noise(state: TrainerState) -> str:
    """The noise a denoiser not told the noise level trained on, in words: 'sigma 0.3 on the [0, 1] scale, clipped'
    ('sigma 0-0.5 ...' for a range)."""
    trained = state.noise or {}
    low, high = trained.get("sigma_min"), trained.get("sigma_max")
    levels = "not recorded" if low is None or high is None else f"{low:g}" if low == high else f"{low:g}-{high:g}"
    return f"sigma {levels} on the [0, 1] scale{', clipped' if trained.get('clip') else ''}"


def is_exported_file(path: Path | str | None) -> bool:
    """Whether a model argument names a file `toolkit export` wrote (.onnx) rather than a run or checkpoint."""
    return path is not None and Path(path).suffix == ".onnx"


class ExportedDenoiser:
    """A denoiser exported by `toolkit export` (an .onnx file, fp32 or int8), run by onnxruntime on the CPU and called
    as its PyTorch model is: noisy (B, 3, H, W) in [0, 1] and, told the noise level, sigmas (B,) on the [0, 1] scale
    -> the denoised images (B, 3, H, W) in [0, 1], on the input's device. `multiple`: its network's down-sampling
    multiple, which sets the grid of denoise's tiles (model_tiles)."""

    def __init__(self, session, conditioned: bool, multiple: int):
        self.session, self.conditioned, self.multiple = session, conditioned, multiple

    def __call__(self, noisy: torch.Tensor, sigmas: torch.Tensor | None = None) -> torch.Tensor:
        feed = {"noisy": noisy.detach().float().cpu().numpy()}
        if self.conditioned:
            feed["sigma"] = (sigmas.detach().float().cpu() * 255).numpy()  # the graph takes the 0-255 scale
        return torch.from_numpy(self.session.run(["denoised"], feed)[0]).to(noisy.device)


def exported_metadata(session) -> dict:
    """The scene_toolkit.* entries of an exported file's metadata (toolkit export), their JSON read back."""
    import json

    read = {}
    for key, value in session.get_modelmeta().custom_metadata_map.items():
        if key.startswith("scene_toolkit."):
            try:
                read[key.removeprefix("scene_toolkit.")] = json.loads(value)
            except json.JSONDecodeError:
                read[key.removeprefix("scene_toolkit.")] = value
    return read


def open_exported(path: Path | str):
    """(onnxruntime session on the CPU, its exported_metadata) of a file `toolkit export` wrote; a missing file, one
    that is not ONNX, or a missing onnxruntime is a UserError saying so."""
    import importlib.util

    if importlib.util.find_spec("onnxruntime") is None:
        raise UserError(f"{path} is an ONNX file: running it needs onnxruntime (pip install onnxruntime, or bash "
                        "scripts/setup.sh)")
    if not Path(path).is_file():
        raise UserError(f"{path} does not exist: pass a file `toolkit export` wrote, or a run directory")
    file = Path(path).resolve()
    try:
        session = _cpu_session(str(file), file.stat().st_mtime_ns, file.stat().st_size)
    except Exception as error:  # onnxruntime's own error types: not an ONNX file, or a damaged one
        raise UserError(f"{path} cannot be read as an ONNX file ({str(error).strip().splitlines()[0][:200]}): pass "
                        "a file `toolkit export` wrote") from None
    return session, exported_metadata(session)


@functools.lru_cache(maxsize=2)
def _cpu_session(file: str, modified_ns: int, size: int):
    """An onnxruntime session of `file` on the CPU, made once per version of the file (its time and size in the
    key: a file written again is read again): predict and evaluate read a file's metadata for their checks, then run
    it, and an int8 graph takes a moment to set up."""
    import onnxruntime

    return onnxruntime.InferenceSession(file, providers=["CPUExecutionProvider"])


def require_exported_kind(path: Path | str, meta: dict, kind: str, instead: str) -> None:
    """A file whose metadata (exported_metadata) is not of a `kind` ('classifier', 'denoiser') model is a UserError
    naming what it holds and, `instead`, what to do."""
    if meta.get("kind") != kind:
        what = f"a {meta['kind']}" if meta.get("kind") else "no model toolkit export wrote (no scene_toolkit metadata)"
        raise UserError(f"{path} holds {what}, not a {kind}; {instead}")


def say_if_int8_may_saturate_here(path: Path | str, meta: dict) -> None:
    """An int8 file with 8-bit weights, run on a CPU without VNNI: onnxruntime adds its uint8 x int8 products in
    pairs in 16 bits there, which such weights can saturate, so the file may score below what its check measured
    (on the CPU it was exported on). Said on standard error, with what to do; not refused (it may well be fine)."""
    import sys

    from toolkit.train.precision import cpu_has_int8_dot_products

    int8 = meta.get("int8") or {}
    if meta.get("precision") == "int8" and int8.get("weight_bits") == 8 and not cpu_has_int8_dot_products():
        print(f"note: {path} holds 8-bit weights, checked on {int8.get('checked_on', 'another CPU')}; this CPU has no "
              "VNNI, so its int8 products are added in 16 bits, which such weights can saturate: score the file here "
              "first (toolkit evaluate, toolkit benchmark-denoiser), or export it with --int8_reduce_range",
              file=sys.stderr)


def load_exported_denoiser(path: Path | str) -> tuple[ExportedDenoiser, TrainerState]:
    """(model, a trainer state rebuilt from the file's metadata) of a denoiser that `toolkit export` wrote, fp32 or
    int8, for `toolkit denoise` and `toolkit benchmark-denoiser`: onnxruntime runs it on the CPU."""
    session, meta = open_exported(path)
    require_exported_kind(path, meta, "denoiser", "denoise with a denoiser's file or run directory")
    say_if_int8_may_saturate_here(path, meta)
    height, width = session.get_inputs()[0].shape[2:]
    if isinstance(height, int):
        raise UserError(f"{path} was exported for {height}x{width} images only (its network sizes its layers by its "
                        f"input); denoise with its run directory ({meta.get('checkpoint')}) instead")
    spec = meta.get("model_spec") or {"name": meta.get("model", "denoiser"), "kwargs": {}}
    state = TrainerState(recipe="exported", model_spec=spec, preprocessing={},
                         conditioned=bool(meta.get("conditioned")), noise=meta.get("noise"),
                         label=f"{meta.get('model', 'denoiser')} ({meta.get('precision', 'fp32')} ONNX graph)",
                         extra={"exported_precision": meta.get("precision", "fp32"),
                                "exported_from": meta.get("checkpoint")})
    return ExportedDenoiser(session, state.conditioned, int(meta.get("multiple", 1))), state


def load_denoiser(path: Path | str, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, TrainerState]:
    """load_trained_model for the commands that denoise: a classifier's run is a UserError naming the commands
    that serve it. A file `toolkit export` wrote (.onnx) is run by onnxruntime on the CPU (load_exported_denoiser)."""
    if is_exported_file(path):
        return load_exported_denoiser(path)
    model, state = load_trained_model(path, device)
    if not is_denoiser(state.model):
        raise UserError(f"{path} holds a {state.model}, not a denoiser; classify images with `toolkit predict` or "
                        "score them with `toolkit evaluate` instead")
    return model, state


def load_trained_model(path: Path | str, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, TrainerState]:
    """(model in eval mode on `device`, trainer state) from a checkpoint or run directory."""
    checkpoint = resolve_checkpoint(path)
    state = TrainerState.read(checkpoint)
    model = build_model(state.model_spec)
    weights_file = checkpoint / "model.safetensors"
    if not weights_file.is_file():
        raise CheckpointError(f"{checkpoint} has no model.safetensors: the checkpoint is incomplete")
    try:
        stored = load_file(weights_file)
    except Exception as error:  # a file cut short or overwritten: safetensors raises its own error types
        older = older_checkpoint(checkpoint)
        raise CheckpointError(f"{weights_file} cannot be read ({type(error).__name__}: {error}): the checkpoint is "
                              "damaged" + (f"; pass the one before it, {older}" if older else "")) from None
    weights = {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in stored.items()}
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        raise CheckpointError(f"the weights in {checkpoint} do not fit {state.model}: "
                              f"{str(error).splitlines()[0]}") from None
    return model.to(device).eval(), state


@torch.no_grad()
def denoise_files(checkpoint: Path | str, source: Path | str, destination: Path | str, sigma_255: float | None = None,
                  self_ensemble: bool = False, precision: str = "no", device: torch.device | str = "cpu",
                  tile_size: int | None = None, tile_margin: int | None = None, skip_existing: bool = False,
                  log=print) -> dict:
    """Denoise one image or every image below a folder with a trained denoiser, writing PNG images of the same size (a
    folder mirrors the source's layout; floating-point grey, which PNG cannot hold, as TIFF). Unreadable files are
    reported and skipped. Each is written as its file stored it (load_for_restoration): grey stays grey, 16-bit grey and
    colour stay 16-bit, floating-point grey stays floating-point, transparency, the colour profile and the EXIF data are
    kept; a palette or CMYK image comes back as RGB (CMYK through its colour profile to sRGB when it has one), saying
    so, as does a file of several frames (its first denoised) or a target format that cannot keep the metadata.

    A denoiser told the noise level takes `sigma_255` (the noise std on the 0-255 scale) for every image; without it,
    each image's noise level is estimated (estimate_noise_sigma) and printed. self_ensemble: average over the image's 8
    rotations and mirror images (toolkit.train.denoise.denoise). precision: what the model runs in ('no': fp32; 'bf16':
    about 2x faster where the CPU computes bf16 faster than fp32). device: where the model runs (inference_device).
    tile_size: images larger than a tile of this side plus its margins are denoised one tile at a time
    (denoise_in_tiles; default TILE_SIZE), so that the model's memory is a tile's whatever the image's size (the hour's
    network: 1.8 GB in all for 12 megapixels in fp32, 8.2 whole), with a progress bar over its tiles; 0: whole images.
    tile_margin: the pixels of context each tile is denoised with (default TILE_MARGIN, measured for the blind
    denoiser's network). Each output file appears whole (written beside it, then renamed), so a run stopped on the way
    leaves no half-written image; skip_existing: images whose output file is there already are left out, which continues
    such a run."""
    from toolkit.data.folders import list_image_files
    from toolkit.data.images import (
        UnreadableImage,
        load_for_restoration,
        naming_advice,
        restored_suffix,
        save_restored,
        writes_images,
    )
    from toolkit.progress import progress_bar, tracked
    from toolkit.train.denoise import TILE_MARGIN, TILE_SIZE, check_tile_size, denoise_in_tiles, model_tiles

    tile_size = TILE_SIZE if tile_size is None else tile_size
    tile_margin = TILE_MARGIN if tile_margin is None else tile_margin
    check_tile_size(tile_size, tile_margin)
    if sigma_255 is not None and not (math.isfinite(sigma_255) and sigma_255 >= 0):
        raise UserError(f"--sigma takes the noise std on the 0-255 scale, 0 or more; got {sigma_255:g} (leave it out "
                        "to have each image's noise level estimated)")
    model, state = load_denoiser(checkpoint, device)
    conditioned = state.conditioned
    trained_max = trained_sigma_max(checkpoint, state) if conditioned else None
    if sigma_255 is not None and trained_max is not None and sigma_255 > trained_max:
        log(f"[denoise] note: --sigma={sigma_255:g} is above the noise levels this model trained on (0-{trained_max:g}"
            f"/255): expect less than its benchmark; a run with --sigma_max={sigma_255:g} or more covers it")
    if sigma_255 is not None and not conditioned:
        log(f"[denoise] note: --sigma is not used: {state.label or state.model} is not told the noise level (it "
            f"trained on {training_noise(state)}); a noise-conditioned model (recipes/blind_denoiser.py) takes it")
    source, destination = Path(source), Path(destination)
    if source.is_dir():
        if destination.exists() and not destination.is_dir():
            raise UserError(f"{destination} is a file: give a folder (new or existing) for the denoised images of the "
                            f"folder {source}")
        files = list_image_files(source)
        inside = {file for file in files if file.resolve().is_relative_to(destination.resolve())}
        if inside and destination.resolve() != source.resolve():  # earlier outputs, not inputs
            log(f"[denoise] leaving out the {len(inside)} image(s) already in {destination} (inside {source})")
            files = [file for file in files if file not in inside]
        pairs = [(file, destination / file.relative_to(source).with_suffix(restored_suffix(file))) for file in files]
        if not pairs:
            raise UserError(f"{source} holds no images")
    elif source.is_file():
        target = destination / (source.stem + restored_suffix(source)) if destination.is_dir() else destination
        pairs = [(source, target if target.suffix else target.with_suffix(restored_suffix(source)))]
        if not writes_images(pairs[0][1]):  # said now, not after the image is denoised
            raise UserError(f"cannot write {pairs[0][1]}: {pairs[0][1].suffix} names no image format Pillow writes. "
                            + naming_advice(restored_suffix(source)))
    else:
        raise UserError(f"{source} does not exist")
    refuse_overwriting_inputs(pairs)
    if skip_existing:
        existing = [target for _, target in pairs if target.is_file()]
        if existing:
            log(f"[denoise] leaving out {len(existing)} of the {len(pairs)} image(s), whose output is there already "
                f"(--skip_existing)")
            pairs = [(file, target) for file, target in pairs if not target.is_file()]
    written, skipped, estimated = 0, [], {}
    light_noise_said = False  # the light-noise note, once per run
    for file, target in tracked(pairs, len(pairs), "denoising", "img"):
        try:
            pixels, stored = load_for_restoration(file)
        except UnreadableImage as error:
            skipped.append(str(error))
            log(f"[denoise] skipped {error}")
            continue
        noisy = torch.from_numpy(pixels).permute(2, 0, 1)[None]  # (1, 3, H, W) in [0, 1]
        if stored.converted_through:
            log(f"[denoise] {file}: in colour mode {stored.mode}, written as sRGB through its colour profile "
                f"({stored.converted_through})")
        elif stored.converted:
            kind = "a palette image" if stored.mode == "P" else f"in colour mode {stored.mode}"  # CMYK, YCbCr, ...
            log(f"[denoise] {file}: {kind}, written as RGB")
        if stored.dropped_profile:
            log(f"[denoise] {file}: its {stored.dropped_profile} colour profile does not describe the RGB pixels "
                "written, which carry none (colours as a plain conversion to RGB gives them)")
        if stored.frames > 1:
            log(f"[denoise] {file}: holds {stored.frames} frames (an animation or pages); only the first is denoised")
        if conditioned and sigma_255 is None:
            level = estimate_noise_sigma(noisy[0])
            estimated[str(file)] = round(level * 255, 2)
            log(f"[denoise] {file}: estimated noise sigma {level * 255:.1f}/255 (pass --sigma to set it)")
            if trained_max is not None and level * 255 > trained_max:
                log(f"[denoise] note: {file}: that is above the noise levels this model trained on (0-"
                    f"{trained_max:g}/255): expect less than its benchmark")
        else:
            level = (sigma_255 or 0.0) / 255
        if conditioned and level * 255 < LIGHT_NOISE_255 and not light_noise_said:
            light_noise_said = True
            log(f"[denoise] note: noise below sigma {LIGHT_NOISE_255:g}/255 is light enough that the network may "
                "change fine detail more than the noise it removes (the blind denoiser's hour is below its input at "
                "sigma 1 on full-colour images: docs/results.md, 'Light noise and none'); compare the output with the "
                "input, or use a model trained with more light-noise patches (recipes/blind_denoiser.py "
                "--light_noise_share=0.15 --light_noise_max=2)")
        tiles = len(model_tiles(model, noisy, tile_size, tile_margin))
        if tiles > 1:
            log(f"[denoise] {file}: {noisy.shape[-1]}x{noisy.shape[-2]}, denoised in {tiles} tiles of at most "
                f"{tile_size} px (--tile_size)")
        with progress_bar(tiles if tiles > 1 else None, f"tiles of {file.name}", "tile", leave=False,
                          disable=tiles == 1) as bar:
            output = denoise_in_tiles(model, noisy.to(device), torch.full((1,), level, device=device), conditioned,
                                      tile_size, tile_margin, self_ensemble, precision, on_tile=bar.update)[0].cpu()
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            in_the_way = next((folder for folder in (target.parent, *target.parent.parents)
                               if folder.exists() and not folder.is_dir()), None)
            why = f"{in_the_way} is a file, not a folder" if in_the_way else error.strerror or str(error)
            raise UserError(f"cannot create the folder {target.parent} for {target.name}: {why}") from None
        for left_out in save_restored(output.permute(1, 2, 0).numpy(), stored, target):
            log(f"[denoise] {target}: {left_out}")
        written += 1
    log(f"[denoise] wrote {written} image(s) to {destination}" + (f"; skipped {len(skipped)}" if skipped else ""))
    return {"written": written, "skipped": skipped, "estimated_sigma_255": estimated}


def refuse_overwriting_inputs(pairs: list[tuple[Path, Path]]) -> None:
    """UserError, before any work, when a (source, target) pair would write over an input image, or two inputs
    (a.jpg and a.png) over one output: nothing the user gave is ever replaced."""
    inputs = {file.resolve() for file, _ in pairs}
    for file, target in pairs:
        if target.resolve() in inputs:
            raise UserError(f"denoising {file} would write over the input image {target}: give an OUTPUT outside "
                            "the input folder (or another file name)")
    targets: dict[Path, Path] = {}
    for file, target in pairs:
        if target.resolve() in targets:
            raise UserError(f"{targets[target.resolve()]} and {file} would both be written to {target}: rename one "
                            "of them, or denoise them into separate folders")
        targets[target.resolve()] = file


# below this noise level (0-255) `toolkit denoise` notes that the output may hold less detail than the input: the
# blind denoiser's hour is below its noisy input at sigma 1 on McMaster and on halved held-out CBSD432 images, above
# it from sigma 2 on both (docs/results.md, "Adopted on light noise: a share of the patches at light noise")
LIGHT_NOISE_255 = 2.0
NOISE_PATCH = 7  # the side of the patches whose covariance the noise estimator reads (Chen, Zhu and Heng use 7)
NOISE_PATCHES_MAX = 200_000  # patches on a regular grid, at most: a 12-megapixel photograph costs what a small one does
PATCHES_PER_DIMENSION = 20  # fewer spread the sample eigenvalues (sqrt(dimensions / patches)) and bias the tail low
PCA_CLIPPED_LIMIT = 30 / 255  # above this, clipping biases the patch estimate low: the wavelet estimate is used


def estimate_noise_sigma(image: torch.Tensor) -> float:
    """The noise std (on the [0, 1] scale) of a (3, H, W) image, white Gaussian noise assumed. The patch estimator
    of Chen, Zhu and Heng (ICCV 2015): the covariance of the image's 7x7 colour patches has the noise variance as
    its smallest eigenvalues, found as the tail of the sorted eigenvalues whose mean is also its median (texture
    and edges live in the large ones, where the wavelet estimator reads them as noise: it reads 7.1 for sigma 5).
    A saved photograph is clipped to [0, 1], which hides noise near black and white: patches with a value at
    exactly 0 or 1 are left out, and where the noise is strong enough for clipping to reach into the patches kept
    (an estimate above 30/255) or too few patches are left, the wavelet estimate is used instead. On the 32
    CBSD432 images a denoiser run holds out, the mean absolute error at sigma 2-50 is 0.04-0.12 without clipping
    (wavelet 0.66-2.35) and 0.04-0.37 with clipped 8-bit noise at sigma 2-30 (wavelet 0.62-2.35)
    (scripts/noise_estimates.py; docs/results.md)."""
    pixels = image.float().numpy()  # no float64 copy of a large photograph: the patches are read in float64 in chunks
    if np.array_equal(pixels[0], pixels[1]) and np.array_equal(pixels[0], pixels[2]):
        pixels = pixels[:1]  # a grey image in three channels: their copies would read as noise-free directions
    height, width = pixels.shape[1:]
    if height < 2 * NOISE_PATCH or width < 2 * NOISE_PATCH:
        return wavelet_noise_sigma(image)
    at_bounds = ((pixels == 0) | (pixels == 1)).any(axis=0)
    clipped = bool(at_bounds.any())
    sigma = patch_noise_sigma(pixels, at_bounds if clipped else None)
    if sigma is None or (clipped and sigma > PCA_CLIPPED_LIMIT):
        return wavelet_noise_sigma(image)
    return sigma


def patch_noise_sigma(pixels: np.ndarray, excluded: np.ndarray | None) -> float | None:
    """The noise std from the smallest eigenvalues of the covariance of (C, H, W) pixels' 7x7 patches (Chen, Zhu and
    Heng's statistic), on a grid of at most NOISE_PATCHES_MAX patches; those covering a True pixel of `excluded`
    (H, W) are left out. The covariance is summed over chunks of ~20,000 patches in float64, so the patches are
    never held at once. None when fewer than PATCHES_PER_DIMENSION patches per dimension remain."""
    from numpy.lib.stride_tricks import sliding_window_view
    from scipy.ndimage import maximum_filter

    channels, height, width = pixels.shape
    rows, cols = height - NOISE_PATCH + 1, width - NOISE_PATCH + 1
    step = max(1, int(np.ceil(np.sqrt(rows * cols / NOISE_PATCHES_MAX))))
    windows = sliding_window_view(pixels, (NOISE_PATCH, NOISE_PATCH), axis=(1, 2))[:, ::step, ::step]  # a view
    kept = np.ones(windows.shape[1:3], dtype=bool)
    if excluded is not None:
        half = NOISE_PATCH // 2
        covers = maximum_filter(excluded, size=NOISE_PATCH, mode="constant")[half:half + rows, half:half + cols]
        kept = ~covers[::step, ::step]
    dimensions = channels * NOISE_PATCH ** 2
    count = int(kept.sum())
    if count < PATCHES_PER_DIMENSION * dimensions:
        return None
    sums, products = np.zeros(dimensions), np.zeros((dimensions, dimensions))
    chunk_rows = max(1, 20_000 // windows.shape[2])  # ~20,000 patches (23 MB in float64) at a time
    for top in range(0, windows.shape[1], chunk_rows):
        chunk = windows[:, top:top + chunk_rows].transpose(1, 2, 0, 3, 4).reshape(-1, dimensions)
        chunk = chunk[kept[top:top + chunk_rows].reshape(-1)].astype(np.float64)
        sums += chunk.sum(axis=0)
        products += chunk.T @ chunk
    patch_mean = sums / count
    covariance = products / count - np.outer(patch_mean, patch_mean)
    eigenvalues = np.linalg.eigvalsh(covariance)[::-1]  # largest first
    for first in range(dimensions):
        tail = eigenvalues[first:]
        mean = tail.mean()
        if (tail > mean).sum() >= (tail < mean).sum():  # the tail's mean is its median: noise alone
            return float(np.sqrt(max(mean, 0.0)))
    return float(np.sqrt(max(eigenvalues[-1], 0.0)))


def wavelet_noise_sigma(image: torch.Tensor) -> float:
    """The noise std (on the [0, 1] scale) of a (3, H, W) image: scikit-image's wavelet estimator (Donoho's median
    of the finest diagonal db2 coefficients, per colour channel, averaged), then repeated on the coefficients whose
    neighbourhood lies 2 sigma inside [0, 1]. A saved photograph is clipped to [0, 1], and clipping hides the noise
    near black and white: on McMaster with clipped noise of sigma 15 / 25 / 50 / 75, the estimate over the whole
    image reads 14.3 / 22.4 / 41.1 / 57.2, this one 15.6 / 25.3 / 49.5 / 69.4 (scripts/noise_estimates.py). Fine
    texture reads as noise here (7.1 for sigma 5 on held-out CBSD432 images): estimate_noise_sigma uses it only
    where clipping spoils the patch estimate."""
    import pywt
    from scipy.ndimage import uniform_filter
    from scipy.stats import norm

    def median_sigma(coefficients: np.ndarray) -> float:
        nonzero = coefficients[coefficients != 0]  # as scikit-image: flat (e.g. saturated) areas say nothing
        return float(np.median(np.abs(nonzero)) / norm.ppf(0.75)) if nonzero.size else 0.0

    sigmas = []
    for channel in image.double().numpy():
        detail = pywt.dwt2(channel, "db2")[1][2]  # diagonal details, about half the size each way
        sigma = median_sigma(detail)
        local_mean = uniform_filter(channel, 7)[::2, ::2]
        rows, cols = min(detail.shape[0], local_mean.shape[0]), min(detail.shape[1], local_mean.shape[1])
        for _ in range(3):
            inside = (local_mean[:rows, :cols] > 2 * sigma) & (local_mean[:rows, :cols] < 1 - 2 * sigma)
            if inside.sum() < 256:  # too little of the image away from black and white: keep what we have
                break
            sigma = median_sigma(detail[:rows, :cols][inside])
        sigmas.append(sigma)
    return float(np.mean(sigmas))
