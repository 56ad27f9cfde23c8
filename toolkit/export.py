"""A trained model as an ONNX file, to serve it without PyTorch or this toolkit (in onnxruntime, which checks it here,
or another ONNX runtime): `toolkit export RUN model.onnx`.

The graph holds what `toolkit predict` and `toolkit denoise` do around the network, so that a caller only decodes
images:
- a classifier takes uint8 RGB pixels (N, 3, S, S), S the run's image size, each image resized (squashed) to S x S
  as `toolkit predict` does (PIL's antialiased bilinear: Image.resize((S, S), Image.BILINEAR)), and gives the
  log-probabilities and the probabilities (N, classes): normalised with the run's mean and std, averaged with the
  mirror image where the run evaluates that way, divided by its calibration temperature (as predict does by default).
  Several classifier runs of one image size (an ensemble) go in one graph that gives the mean of their probabilities.
- a denoiser takes float32 RGB (N, 3, H, W) in [0, 1], of any size whose sides are at least SMALLEST_SIDE (padded to
  the network's multiple and cropped back inside, as in PyTorch), and a noise-conditioned one also the noise level of
  each image on the 0-255 scale (N,); it gives the denoised images, clamped to [0, 1]. A network that sizes a layer
  by its input in a way ONNX cannot leave free (the study's autoencoders: transposed convolutions) is exported for the
  run's image size only.
The classes, sizes, inputs and the run it came from are in the file's metadata (metadata_props). Before the file is
written the graph is run with onnxruntime on stand-in inputs, at a second size too where its sizes are free, and
compared with the PyTorch model; a graph that disagrees is not written.

A classifier or a noise-conditioned denoiser can also be written in 8-bit integers (`--int8 FOLDER`): onnxruntime's
static quantization (QDQ; weights int8 per output channel, activations uint8 with ranges read from images of FOLDER,
never one a run held out for reporting or validation), checked against the fp32 graph on other images of FOLDER: a
classifier must pick the fp32 graph's class (INT8_MIN_AGREEMENT), a denoiser must stay within INT8_MAX_PSNR_LOSS dB of
its PSNR at each of INT8_CHECK_SIGMAS.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

from toolkit.errors import UserError
from toolkit.inference import is_exported_file, load_trained_model, resolve_checkpoint
from toolkit.models import is_denoiser
from toolkit.progress import progress_bar
from toolkit.runs import written_whole
from toolkit.train.denoise import SMALLEST_SIDE
from toolkit.train.evaluate import classifier_outputs
from toolkit.train.precision import cpu_has_int8_dot_products, describe_cpu

# the largest difference from the PyTorch model an exported graph may show on the stand-in inputs: probabilities,
# and pixel values on the [0, 1] scale (a fortieth of an 8-bit level); fp32 graphs differ by about 1e-6
EXPORT_TOLERANCE = 1e-4
STAND_IN_SEED = 0
# int8: the images whose activations set the 8-bit ranges, and the other images the int8 graph must classify as the
# fp32 graph does (at least INT8_MIN_AGREEMENT of them: a graph that changes more predictions is refused)
INT8_CALIBRATION_IMAGES = 128
INT8_CHECK_IMAGES = 64
INT8_MIN_AGREEMENT = 0.9
# int8 denoisers: one crop of at most INT8_CROP px a side per image, noisy at a level drawn from the run's training
# range (seeded); the ranges from INT8_DENOISER_CALIBRATION_IMAGES crops, the check on crops of
# INT8_DENOISER_CHECK_IMAGES other images at each of INT8_CHECK_SIGMAS (0-255), where the int8 graph's mean PSNR may be
# at most INT8_MAX_PSNR_LOSS dB below the fp32 graph's (the blind denoiser's default run loses 0.04-0.11 dB on the
# held-out CBSD432 images: docs/results.md, "The blind denoiser in 8-bit integers")
INT8_DENOISER_CALIBRATION_IMAGES = 32
INT8_DENOISER_CHECK_IMAGES = 16
INT8_CROP = 128
INT8_CHECK_SIGMAS = (15.0, 25.0, 50.0)
INT8_MAX_PSNR_LOSS = 0.3
# what is quantized: the layers that hold the arithmetic, and the ops between them that keep values in 8 bits; the
# normalisation of the pixels, the softmax and the temperature stay in float
INT8_OP_TYPES = ["Conv", "Gemm", "MatMul", "Add", "Relu", "Clip", "GlobalAveragePool", "AveragePool"]
# a denoiser's: its convolutions, in int8 but for the first (it reads the noisy pixels, whose range, below 0 to above
# 1, in 256 steps is coarser than their own 8-bit levels) and the last (the noise estimate subtracted from the input);
# the skip connections' additions and the subtraction stay in float. Its ranges are read as the 99.999th percentile of
# each activation, not min-max. On the default run's held-out CBSD432 images at sigma 15 / 25 / 50, against the
# fp32 graph: every convolution and addition in int8 with min-max ranges -0.30 / -0.17 / -0.11 dB, the first and last
# convolutions in float -0.22 / -0.13 / -0.06, percentile ranges -0.15 / -0.09 / -0.05, the additions in float too
# -0.11 / -0.06 / -0.04, at 2.2-2.8x the fp32 graph's speed (docs/results.md)
INT8_DENOISER_OP_TYPES = ["Conv", "ConvTranspose", "Relu"]


class ClassifierForExport(nn.Module):
    """uint8 (N, 3, S, S) RGB pixels -> (log-probabilities, probabilities) (N, classes), as `toolkit predict`."""

    def __init__(self, model: nn.Module, mean, std, flip_tta: bool, temperature: float):
        super().__init__()
        self.model, self.mean, self.std = model, tuple(mean), tuple(std)
        self.flip_tta, self.temperature = flip_tta, float(temperature)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_probabilities = classifier_outputs(self.model, images, self.mean, self.std, self.flip_tta,
                                               self.temperature)
        return log_probabilities, log_probabilities.exp()


class EnsembleForExport(nn.Module):
    """Several classifiers (ClassifierForExport each, with its own normalisation, mirror and temperature): the log of
    the mean of their probabilities and that mean, as `toolkit predict --ensemble` gives them."""

    def __init__(self, members: list[ClassifierForExport]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        stacked = torch.stack([member(images)[0] for member in self.members])  # (members, N, classes)
        log_mean = torch.logsumexp(stacked, dim=0) - math.log(len(self.members))
        return log_mean, log_mean.exp()


class DenoiserForExport(nn.Module):
    """float32 (N, 3, H, W) in [0, 1] -> denoised (N, 3, H, W) in [0, 1], as `toolkit denoise` without tiles."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, noisy: torch.Tensor) -> torch.Tensor:
        return self.model(noisy).clamp(0, 1)


class ConditionedDenoiserForExport(nn.Module):
    """DenoiserForExport for a model told the noise level: sigma (N,) on the 0-255 scale, as `toolkit denoise
    --sigma` takes it."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, noisy: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.model(noisy, sigma / 255.0).clamp(0, 1)


def export_onnx(checkpoint: Path | str, out: Path | str, opset: int | None = None, calibrated: bool = True,
                ensemble: list[str] | tuple = (), int8_folder: Path | str | None = None,
                int8_images: int | None = None, int8_reduce_range: bool = False, log=print) -> dict:
    """Write the model of a run directory or checkpoint to `out` (.onnx), checked with onnxruntime first; returns
    what was written and checked (also in the file's metadata). calibrated: a classifier's probabilities divided by
    its calibration temperature, as `toolkit predict` gives them by default; False: as trained. ensemble: more
    classifier runs of the same classes and image size, whose probabilities the graph averages with the first's.
    int8_folder: a classifier's or noise-conditioned denoiser's graph quantized to 8-bit integers, its activation
    ranges read from `int8_images` images of this folder (default INT8_CALIBRATION_IMAGES for a classifier,
    INT8_DENOISER_CALIBRATION_IMAGES for a denoiser; see the module's docstring); int8_reduce_range: its weights in 7
    bits, for CPUs without VNNI (toolkit.train.precision.cpu_has_int8_dot_products)."""
    out = Path(out)
    if out.suffix != ".onnx":
        raise UserError(f"{out}: name the ONNX file with .onnx (e.g. {out.with_suffix('.onnx').name})")
    onnx, onnxruntime = _onnx_modules()
    if is_exported_file(checkpoint) or any(is_exported_file(member) for member in ensemble):
        file = next(path for path in (checkpoint, *ensemble) if is_exported_file(path))
        raise UserError(f"{file} is an exported file already: export from the run directory it came from (its "
                        "metadata names the checkpoint: scene_toolkit.checkpoint)")
    first = _loaded(checkpoint)
    checkpoint, _, state = first
    denoiser = is_denoiser(state.model)
    if denoiser and (not calibrated or ensemble):
        option = "--ensemble" if ensemble else "--no-calibrated"
        raise UserError(f"{checkpoint} holds a denoiser: {option} is for classifiers")
    if denoiser and int8_folder and not state.conditioned:
        raise UserError(f"{checkpoint} holds a denoiser that is not told the noise level ({state.model}): --int8 "
                        "takes classifiers and noise-conditioned denoisers (recipes/blind_denoiser.py), whose int8 "
                        "graph is checked at each noise level; export this one in fp32 (without --int8)")
    if int8_folder and not Path(int8_folder).is_dir():
        raise UserError(f"--int8 {int8_folder}: not a folder; give a folder of images like those the model will "
                        "see, e.g. the training folder (data/intel/seg_train; a denoiser's: data/denoise/CBSD432)")
    others = _ensemble_members(checkpoint, ensemble)
    generator = torch.Generator().manual_seed(STAND_IN_SEED)
    members = f" and {len(others)} more run(s), their probabilities averaged" if others else ""
    log(f"[export] {state.label or state.model} from {checkpoint}{members}: tracing, converting and checking")
    differing = [str(other) for other, _, other_state in others
                 if (other_state.split or {}).get("held_out") != (state.split or {}).get("held_out")]
    if differing:
        log(f"[export] note: {differing[0]} held out other images than {checkpoint}: the file's `toolkit evaluate "
            "--held_out` will be refused (no image is held out by every run); score it on a labeled folder")
    with progress_bar(5 if int8_folder else 3, "exporting", "stage") as bar:
        if int8_folder:  # the sample first: a folder that cannot serve is said before the minutes of work
            calibration = int8_images or (INT8_DENOISER_CALIBRATION_IMAGES if denoiser else INT8_CALIBRATION_IMAGES)
            sample = int8_denoiser_crops(int8_folder, checkpoint, calibration) if denoiser else \
                int8_sample_images(int8_folder, [state, *(member for _, _, member in others)], state.image_size,
                                   calibration)
            bar.update(1)
        wrapper, inputs, record, graph = _traced_and_converted([first, *others], generator, opset, calibrated, log)
        record |= {"checkpoint": str(checkpoint), "model": state.model, "model_spec": state.model_spec}
        bar.update(1)
        session = onnxruntime.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
        height, width = session.get_inputs()[0].shape[2:]
        if record["kind"] == "denoiser" and isinstance(height, int):
            record["inputs"]["noisy"] = f"float32 (batch, 3, {height}, {width}): RGB in [0, 1], this network's size"
            record["outputs"]["denoised"] = f"float32 (batch, 3, {height}, {width}): RGB in [0, 1]"
        record["check"] = _check_against_pytorch(session, wrapper, inputs, list(record["inputs"]),
                                                 _second_inputs(inputs, generator, isinstance(height, int)))
        record["check"]["onnxruntime"] = onnxruntime.__version__
        record["opset"] = max(entry.version for entry in graph.opset_import if entry.domain in ("", "ai.onnx"))
        record["precision"] = "fp32"
        bar.update(1)
        if int8_folder:
            taken, what_was_taken = sample
            if denoiser and isinstance(height, int):
                raise UserError(f"{checkpoint} holds a denoiser exported for {height}x{width} images only: --int8 "
                                "takes denoisers of any size (recipes/blind_denoiser.py); export this one in fp32")
            graph, record["int8"] = quantized_int8_denoiser(
                graph, session, taken, calibration, training_noise_range(state), int8_reduce_range, onnx,
                onnxruntime) if denoiser else \
                quantized_int8(graph, session, taken, calibration, int8_reduce_range, onnx, onnxruntime)
            record["int8"] |= what_was_taken
            record["precision"] = "int8"
            bar.update(1)
        for key, value in record.items():
            entry = graph.metadata_props.add()
            entry.key, entry.value = f"scene_toolkit.{key}", value if isinstance(value, str) else json.dumps(value)
        with written_whole(out) as temporary:
            onnx.save(graph, temporary)
        bar.update(1)
    record |= {"bytes": out.stat().st_size, "onnx": str(out)}
    return record


def int8_sample_images(folder: Path | str, states: list, size: int, calibration: int) -> tuple[np.ndarray, dict]:
    """(uint8 (calibration + INT8_CHECK_IMAGES, 3, size, size) pixels as predict decodes them, what was taken) from
    the image files below `folder` in a seeded random order, skipping files that do not decode and any image a run of
    `states` held out of its training folder (its pixels as the checkpoint recorded them): the images a run is
    reported on never set the int8 ranges."""
    from toolkit.data.folders import list_image_files
    from toolkit.data.images import DIGEST_CHARS
    from toolkit.predict import decode_for_prediction

    files = list_image_files(Path(folder))
    wanted = calibration + INT8_CHECK_IMAGES
    held_out = {item["pixels"] for state in states for item in (state.split or {}).get("held_out", [])}
    taken, skipped_held_out, unreadable = [], 0, 0
    for index in np.random.default_rng(STAND_IN_SEED).permutation(len(files)):
        if len(taken) == wanted:
            break
        pixels, digest, error = decode_for_prediction((str(files[index]), size))
        if error is not None:
            unreadable += 1
        elif digest[:DIGEST_CHARS] in held_out:
            skipped_held_out += 1
        else:
            taken.append(pixels.transpose(2, 0, 1))
    if len(taken) < wanted:
        raise UserError(f"--int8 {folder}: {len(taken)} usable image(s) ({len(files)} image files, {unreadable} that "
                        f"do not decode, {skipped_held_out} held out by the run for reporting); it needs {wanted}: "
                        f"{calibration} to calibrate (--int8_images) and {INT8_CHECK_IMAGES} to check. Give a larger "
                        "folder, e.g. the training folder")
    return np.stack(taken), {"folder": str(folder), "held_out_skipped": skipped_held_out, "unreadable": unreadable}


def int8_denoiser_crops(folder: Path | str, checkpoint: Path, calibration: int) -> tuple[list[np.ndarray], dict]:
    """(calibration + INT8_DENOISER_CHECK_IMAGES clean crops, (3, h, w) float32 in [0, 1], what was taken): one crop
    of at most INT8_CROP px a side at a seeded place in each image file below `folder`, the files in a seeded random
    order, skipping files that do not decode, images with a side under SMALLEST_SIDE, and, when `folder` is the one
    the checkpoint's run trained on, the images it held out for validation (the images its scores are read on)."""
    from toolkit.data.folders import list_image_files
    from toolkit.data.images import UnreadableImage, open_image, rgb_pixels
    from toolkit.denoising_benchmark import validation_images_of
    from toolkit.runs import read_config

    files = list_image_files(Path(folder))
    trained_on = (read_config(checkpoint.parent.parent) or {}).get("data")
    held_out = set()
    if trained_on and Path(trained_on).resolve() == Path(folder).resolve():
        held_out = {file.resolve() for file in validation_images_of(str(checkpoint), folder, log=lambda _: None)}
    wanted = calibration + INT8_DENOISER_CHECK_IMAGES
    rng = np.random.default_rng(STAND_IN_SEED)
    taken, skipped_held_out, unreadable, small = [], 0, 0, 0
    for index in rng.permutation(len(files)):
        if len(taken) == wanted:
            break
        if files[index].resolve() in held_out:
            skipped_held_out += 1
            continue
        try:
            pixels = rgb_pixels(open_image(files[index]))  # (H, W, 3) uint8, as the denoising benchmark reads them
        except UnreadableImage:
            unreadable += 1
            continue
        height, width = pixels.shape[:2]
        if min(height, width) < SMALLEST_SIDE:
            small += 1
            continue
        side_h, side_w = min(height, INT8_CROP), min(width, INT8_CROP)
        top, left = rng.integers(0, height - side_h + 1), rng.integers(0, width - side_w + 1)
        crop = pixels[top:top + side_h, left:left + side_w].transpose(2, 0, 1)
        taken.append(np.ascontiguousarray(crop, dtype=np.float32) / 255)
    if len(taken) < wanted:
        raise UserError(f"--int8 {folder}: {len(taken)} usable image(s) ({len(files)} image files, {unreadable} that "
                        f"do not decode, {small} with a side under {SMALLEST_SIDE} px, {skipped_held_out} held out by "
                        f"the run for validation); it needs {wanted}: {calibration} to calibrate (--int8_images) and "
                        f"{INT8_DENOISER_CHECK_IMAGES} to check. Give a larger folder of clean images, e.g. the "
                        "training folder")
    return taken, {"folder": str(folder), "held_out_skipped": skipped_held_out, "unreadable": unreadable,
                   "too_small": small}


def training_noise_range(state) -> tuple[float, float, bool]:
    """(lowest, highest noise level on the 0-255 scale, clipped) of a denoiser's training noise (its trainer state's
    record; 0-50 unclipped, the blind denoiser's default and the published range, where it is not recorded)."""
    noise = state.noise or {}
    return 255 * noise.get("sigma_min", 0.0), 255 * noise.get("sigma_max", 50 / 255), bool(noise.get("clip"))


def quantized_int8(graph, session, images: np.ndarray, calibration: int, reduce_range: bool, onnx,
                   onnxruntime) -> tuple[object, dict]:
    """(the int8 ModelProto, its check) of a classifier's fp32 graph, whose onnxruntime session (already checked
    against PyTorch) is `session`: static_int8_graph over INT8_OP_TYPES with the min-max ranges of the first
    `calibration` images (uint8, (N, 3, S, S)), in batches of 8; then both graphs classify the other images on this
    CPU, and an int8 graph that picks the fp32 graph's class for less than INT8_MIN_AGREEMENT of them is refused."""
    feeds = [{"images": images[start:start + 8]} for start in range(0, calibration, 8)]
    result = static_int8_graph(graph, feeds, INT8_OP_TYPES, reduce_range, percentile=False, ends_in_float=False,
                               onnx=onnx)
    check = images[calibration:]
    quantized = onnxruntime.InferenceSession(result.SerializeToString(), providers=["CPUExecutionProvider"])
    probabilities = [way.run(["probabilities"], {"images": check})[0] for way in (session, quantized)]
    agreement = float(np.mean(probabilities[0].argmax(1) == probabilities[1].argmax(1)))
    largest = float(np.abs(probabilities[0] - probabilities[1]).max())
    if agreement < INT8_MIN_AGREEMENT:
        raise UserError(f"the int8 graph picks the fp32 graph's class for only {agreement:.0%} of {len(check)} "
                        f"check images (at least {INT8_MIN_AGREEMENT:.0%} needed); not written. "
                        + int8_refusal_advice(reduce_range))
    return result, {"calibration_images": calibration, "check_images": len(check), "agreement": agreement,
                    "largest_difference": largest} | int8_method(reduce_range, "min-max", INT8_OP_TYPES)


def quantized_int8_denoiser(graph, session, crops: list[np.ndarray], calibration: int,
                            noise: tuple[float, float, bool], reduce_range: bool, onnx,
                            onnxruntime) -> tuple[object, dict]:
    """(the int8 ModelProto, its check) of a noise-conditioned denoiser's fp32 graph, whose onnxruntime session
    (already checked against PyTorch) is `session`: static_int8_graph over INT8_DENOISER_OP_TYPES, the first and last
    convolutions in float, with percentile ranges from the first `calibration` clean crops ((3, h, w) float32 in
    [0, 1]), each noisy as the run trained: at a level drawn evenly from its range (`noise`: lowest and highest on the
    0-255 scale, clipped or not; training_noise_range), seeded, and run one at a time (their sizes differ). Then both
    graphs denoise the other crops at each of INT8_CHECK_SIGMAS (seeded, unclipped, told the level), and an int8 graph
    whose mean PSNR is more than INT8_MAX_PSNR_LOSS dB below the fp32 graph's at any level is refused."""
    lowest, highest, clip = noise
    rng = np.random.default_rng(STAND_IN_SEED)
    feeds = []
    for clean in crops[:calibration]:
        sigma = rng.uniform(lowest, highest)
        noisy = clean + rng.normal(0, sigma / 255, clean.shape)
        feeds.append({"noisy": (np.clip(noisy, 0, 1) if clip else noisy).astype(np.float32)[None],
                      "sigma": np.array([sigma], np.float32)})
    result = static_int8_graph(graph, feeds, INT8_DENOISER_OP_TYPES, reduce_range, percentile=True,
                               ends_in_float=True, onnx=onnx)
    quantized = onnxruntime.InferenceSession(result.SerializeToString(), providers=["CPUExecutionProvider"])
    check = crops[calibration:]
    psnr: dict[str, dict[str, float]] = {"fp32": {}, "int8": {}}
    for sigma in INT8_CHECK_SIGMAS:
        draws = np.random.default_rng([STAND_IN_SEED, int(sigma * 100)])  # this level's noise, seeded
        scores: dict[str, list[float]] = {"fp32": [], "int8": []}
        for clean in check:
            feed = {"noisy": (clean + draws.normal(0, sigma / 255, clean.shape)).astype(np.float32)[None],
                    "sigma": np.array([sigma], np.float32)}
            for name, way in (("fp32", session), ("int8", quantized)):
                error = np.mean((way.run(["denoised"], feed)[0][0].astype(np.float64) - clean) ** 2)
                scores[name].append(10 * np.log10(1 / max(error, 1e-12)))
        for name in scores:
            psnr[name][f"{sigma:g}"] = float(np.mean(scores[name]))
    loss = {level: psnr["fp32"][level] - psnr["int8"][level] for level in psnr["fp32"]}
    worst = max(loss, key=loss.get)
    if loss[worst] > INT8_MAX_PSNR_LOSS:
        raise UserError(f"the int8 graph's mean PSNR is {loss[worst]:.2f} dB below the fp32 graph's at sigma {worst} "
                        f"on {len(check)} check images (at most {INT8_MAX_PSNR_LOSS:g} dB allowed); not written. "
                        + int8_refusal_advice(reduce_range))
    return result, {"calibration_images": calibration, "check_images": len(check), "crop": INT8_CROP,
                    "calibration_noise": {"sigma_min": lowest, "sigma_max": highest, "clip": clip},
                    "psnr_fp32": psnr["fp32"], "psnr_int8": psnr["int8"],
                    "psnr_loss": loss} | int8_method(reduce_range, "percentile 99.999", INT8_DENOISER_OP_TYPES,
                                                     " but the first and last convolutions")


def int8_refusal_advice(reduce_range: bool) -> str:
    """What to do about an int8 graph its check refused: on a CPU without VNNI, whose 16-bit sums 8-bit weights can
    saturate, first of all weights in 7 bits."""
    advice = "Export in fp32 (without --int8), or calibrate on more images (--int8_images)"
    if not reduce_range and not cpu_has_int8_dot_products():
        advice = ("This CPU has no VNNI, so its int8 products are added in 16 bits, which 8-bit weights can saturate: "
                  "try --int8_reduce_range (weights in 7 bits). Or export in fp32 (without --int8), or calibrate on "
                  "more images (--int8_images)")
    return advice


def int8_method(reduce_range: bool, ranges: str, op_types: list[str], exceptions: str = "") -> dict:
    """What an int8 graph's metadata says of how it was made and on which CPU it was checked."""
    return {"weight_bits": 7 if reduce_range else 8, "checked_on": describe_cpu(),
            "checked_with_vnni": cpu_has_int8_dot_products(),
            "method": f"onnxruntime static quantization, QDQ, weights int8 per output channel, activations uint8 "
                      f"({ranges} ranges){exceptions}", "op_types": op_types}


def static_int8_graph(graph, feeds: list[dict], op_types: list[str], reduce_range: bool, percentile: bool,
                      ends_in_float: bool, onnx):
    """The int8 ModelProto of an fp32 graph: onnxruntime's static quantization in QDQ form of the nodes of op_types,
    weights int8 per output channel (in 7 bits with reduce_range), activations uint8 with the ranges seen over the
    `feeds` (input dicts): their min-max, or with `percentile` their 99.999th percentile; ends_in_float leaves the
    first and last Conv nodes in float. The quantizer's advice, printed and logged, is kept back."""
    import logging
    import tempfile

    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Feeds(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter(feeds)

        def get_next(self):
            return next(self.feeds, None)

    said = io.StringIO()
    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # the quantizer logs its advice at WARNING on the root logger
    try:
        with tempfile.TemporaryDirectory() as scratch, contextlib.redirect_stdout(said), \
                contextlib.redirect_stderr(said):
            plain, prepared, quantized = (Path(scratch) / name for name in ("fp32.onnx", "prepared.onnx", "int8.onnx"))
            onnx.save(graph, plain)
            quant_pre_process(str(plain), str(prepared), skip_symbolic_shape=True)  # fold constants, infer shapes
            convolutions = [node.name for node in onnx.load(str(prepared)).graph.node if node.op_type == "Conv"]
            in_float = [convolutions[0], convolutions[-1]] if ends_in_float and convolutions else []
            quantize_static(str(prepared), str(quantized), Feeds(), quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                            reduce_range=reduce_range, op_types_to_quantize=op_types, nodes_to_exclude=in_float,
                            calibrate_method=CalibrationMethod.Percentile if percentile else CalibrationMethod.MinMax)
            return onnx.load(str(quantized))
    finally:
        logging.getLogger().setLevel(quiet)


def _onnx_modules():
    major, minor = (int(part) for part in torch.__version__.split(".")[:2])
    if (major, minor) < (2, 6):  # torch.export's Dim.AUTO and the exporter's model_proto came in 2.6
        raise UserError(f"exporting needs torch 2.6 or newer (its torch.export-based ONNX exporter); this is torch "
                        f"{torch.__version__}: bash scripts/setup.sh installs the tested pair")
    try:
        import onnx
        import onnxruntime
        import onnxscript  # noqa: F401  (torch's ONNX exporter needs it)
    except ImportError as error:
        raise UserError(f"exporting needs the onnx, onnxscript and onnxruntime packages ({error.name} is missing): "
                        "pip install onnx onnxscript onnxruntime, or bash scripts/setup.sh") from None
    return onnx, onnxruntime


def _loaded(run: Path | str) -> tuple[Path, nn.Module, object]:
    """(checkpoint, model in fp32 and eval mode on the CPU, trainer state) of a run directory or checkpoint."""
    checkpoint = resolve_checkpoint(run)
    model, state = load_trained_model(checkpoint, "cpu")
    return checkpoint, model.float().eval(), state


def _ensemble_members(checkpoint: Path, ensemble) -> list[tuple[Path, nn.Module, object]]:
    """The (checkpoint, model, state) of each further run of an ensemble, after checking that every run is a
    classifier of the same classes in the same order (as predict --ensemble does) and of the same image size (the
    graph has one input)."""
    if not ensemble:
        return []
    from toolkit.predict import classifier_states

    states = classifier_states([str(checkpoint), *map(str, ensemble)])
    sizes = sorted({member.image_size for member in states})
    if len(sizes) > 1:
        raise UserError(f"the runs take images of different sizes ({', '.join(map(str, sizes))} px): one ONNX graph "
                        "takes one size; export them apart, or ensemble runs of one size")
    return [_loaded(run) for run in ensemble]


def _traced_and_converted(loaded: list[tuple[Path, nn.Module, object]], generator, opset: int | None,
                          calibrated: bool, log):
    """(wrapper, stand-in inputs, record, ONNX graph) of loaded [(checkpoint, model, state), ...] (several: an
    ensemble of classifiers): a denoiser with its height and width free, or, where the network cannot be converted
    so (an autoencoder's transposed convolutions sized by their input), at the run's image size."""
    _, model, state = loaded[0]
    if not is_denoiser(state.model):
        wrapper, inputs, free_axes, record = _classifier_export(loaded, generator, calibrated)
        return wrapper, inputs, record, _converted(wrapper, inputs, free_axes, record, opset)
    try:
        wrapper, inputs, free_axes, record = _denoiser_export(model, state, generator, free_size=True)
        return wrapper, inputs, record, _converted(wrapper, inputs, free_axes, record, opset)
    except UserError as error:
        log(f"[export] cannot be converted for every image size ({error}); exporting it for {state.image_size}x"
            f"{state.image_size} images, the run's size")
    wrapper, inputs, free_axes, record = _denoiser_export(model, state, generator, free_size=False)
    return wrapper, inputs, record, _converted(wrapper, inputs, free_axes, record, opset)


def _classifier_export(loaded: list[tuple[Path, nn.Module, object]], generator, calibrated: bool):
    members = []
    for _, model, member_state in loaded:
        pre = member_state.preprocessing
        members.append(ClassifierForExport(model, pre["mean"], pre["std"], member_state.flip_tta,
                                           float(member_state.temperature) if calibrated else 1.0).eval())
    wrapper = members[0] if len(members) == 1 else EnsembleForExport(members).eval()
    state = loaded[0][2]
    size = state.image_size
    images = torch.randint(0, 256, (2, 3, size, size), generator=generator, dtype=torch.uint8)
    each = [{"mean": list(member.mean), "std": list(member.std), "temperature": member.temperature,
             "flip_tta": bool(member.flip_tta)} for member in members]
    record = {
        "kind": "classifier",
        "inputs": {"images": f"uint8 (batch, 3, {size}, {size}): RGB pixels, each image resized (squashed) to "
                             f"{size}x{size} with antialiased bilinear (PIL Image.resize((S, S), Image.BILINEAR))"},
        "outputs": {"log_probabilities": f"float32 (batch, {len(state.classes)})",
                    "probabilities": f"float32 (batch, {len(state.classes)}): the classes in metadata order"},
        "classes": list(state.classes), "image_size": size, "calibrated": calibrated,
    }
    if len(members) == 1:
        record |= each[0]
    else:  # the runs' own normalisation, mirror and temperature, each
        record["ensemble"] = [{"checkpoint": str(member_checkpoint), "model": member_state.model} | one
                              for (member_checkpoint, _, member_state), one in zip(loaded, each)]
    return wrapper, (images,), ({0: "batch"},), record


def _denoiser_export(model, state, generator, free_size: bool):
    """free_size: traced at a size the network must pad (odd, not its multiple), so that the padding is in the
    graph, with height and width left free; else at the run's image size, the only one the graph takes."""
    size = max(SMALLEST_SIDE, state.image_size or 48)
    height, width = (size + 5, size + 11) if free_size else (size, size)
    noisy = torch.rand(2, 3, height, width, generator=generator)
    inputs = {"noisy": f"float32 (batch, 3, height, width): RGB in [0, 1], sides of at least {SMALLEST_SIDE}"}
    free_axes = ({0: "batch", 2: "height", 3: "width"} if free_size else {0: "batch"},)
    if state.conditioned:
        wrapper, example = ConditionedDenoiserForExport(model).eval(), (noisy, torch.tensor([15.0, 40.0]))
        inputs["sigma"] = "float32 (batch,): each image's noise level on the 0-255 scale"
        free_axes += ({0: "batch"},)
    else:
        wrapper, example = DenoiserForExport(model).eval(), (noisy,)
    record = {"kind": "denoiser", "inputs": inputs,
              "outputs": {"denoised": "float32 (batch, 3, height, width): RGB in [0, 1]"},
              "conditioned": bool(state.conditioned), "smallest_side": SMALLEST_SIDE,
              "noise": state.noise, "multiple": int(getattr(model, "multiple", 1))}
    return wrapper, example, free_axes, record


def _converted(wrapper: nn.Module, inputs: tuple, free_axes: tuple[dict, ...], record: dict, opset: int | None):
    """The ONNX ModelProto of wrapper(*inputs) by torch's exporter (torch.export), each input's free_axes left free
    where the network allows (torch.export.Dim.AUTO); the exporter's own chatter kept back. A model it cannot convert is
    a UserError with the exporter's first line."""
    dynamic = tuple({axis: torch.export.Dim.AUTO for axis in axes} for axes in free_axes)
    said = io.StringIO()
    try:
        with torch.no_grad(), contextlib.redirect_stdout(said), contextlib.redirect_stderr(said):
            program = torch.onnx.export(wrapper, inputs, dynamo=True, dynamic_shapes=dynamic, opset_version=opset,
                                        input_names=list(record["inputs"]), output_names=list(record["outputs"]),
                                        verbose=False, report=False)
    except Exception as error:
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip()  # the exporter colours its messages
        first_line = text.splitlines()[0].split(" Next steps")[0] if text else type(error).__name__
        raise UserError(f"torch's ONNX exporter could not convert this model: {first_line}") from None
    return program.model_proto


def _second_inputs(inputs: tuple, generator: torch.Generator, fixed_size: bool) -> tuple:
    """Stand-in inputs of another batch size, and for a denoiser of free sizes another height and width."""
    first = inputs[0]
    if first.dtype == torch.uint8:  # a classifier's pixels: three images
        return (torch.randint(0, 256, (3, *first.shape[1:]), generator=generator, dtype=torch.uint8),)
    height, width = (first.shape[2], first.shape[3]) if fixed_size else (first.shape[2] + 6, first.shape[3] - 3)
    return (torch.rand(1, 3, height, width, generator=generator), *(tensor[:1] for tensor in inputs[1:]))


def _check_against_pytorch(session, wrapper: nn.Module, inputs: tuple, names: list[str], second: tuple) -> dict:
    """Run the graph with onnxruntime on the stand-in inputs and on a second set (another batch size, and size for a
    denoiser) against the PyTorch wrapper: the largest difference of any output; over EXPORT_TOLERANCE, or a size
    the graph does not take, refuses."""
    largest = 0.0
    for trial in (inputs, second):
        with torch.no_grad():
            expected = wrapper(*trial)
        expected = expected if isinstance(expected, tuple) else (expected,)
        try:
            got = session.run(None, {name: tensor.numpy() for name, tensor in zip(names, trial)})
        except Exception as error:  # onnxruntime's own error types: a size the graph fixed
            shapes = ", ".join(f"{name} {tuple(tensor.shape)}" for name, tensor in zip(names, trial))
            raise UserError(f"the ONNX graph does not take {shapes} ({str(error).strip().splitlines()[0][:300]}); "
                            "not written") from None
        for want, have in zip(expected, got):
            want = want.numpy()
            finite = np.isfinite(want)  # log-probabilities of -inf compare as equal when both are
            difference = float(np.abs(have[finite] - want[finite]).max(initial=0.0)) if have.shape == want.shape \
                else float("inf")
            if difference > EXPORT_TOLERANCE or np.any(np.isfinite(have) != finite):
                raise UserError(f"the ONNX graph disagrees with the PyTorch model on stand-in inputs (shape "
                                f"{have.shape} against {want.shape}, largest difference {difference:.2g}, allowed "
                                f"{EXPORT_TOLERANCE:g}); not written. Try another --opset")
            largest = max(largest, difference)
    return {"largest_difference": largest,
            "input_shapes": [[list(tensor.shape) for tensor in trial] for trial in (inputs, second)]}
