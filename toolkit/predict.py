"""Applying a trained classifier: `toolkit predict` (any images) and `toolkit evaluate` (a labeled folder).

Both read only the checkpoint: its class list, its preprocessing (size, mean, std) and its weights,
so a checkpoint copied to another machine is all that is needed. Images are decoded and resized
exactly as the .beton files were written for training (toolkit.data.images.load_rgb).
"""

from __future__ import annotations

import csv
import functools
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from toolkit.data.folders import list_image_files, scan_labeled_folder
from toolkit.data.images import DIGEST_CHARS, UnreadableImage, load_rgb, pixel_hash, rgb_pixels
from toolkit.errors import UserError
from toolkit.inference import (
    inference_device,
    is_exported_file,
    load_trained_model,
    open_exported,
    require_exported_kind,
    resolve_checkpoint,
    say_if_int8_may_saturate_here,
)
from toolkit.models import is_denoiser
from toolkit.progress import bars_enabled
from toolkit.runs import write_json, written_whole
from toolkit.train.evaluate import (
    classification_metrics,
    classifier_outputs,
    expected_calibration_error,
    mean_negative_log_likelihood,
)
from toolkit.train.precision import autocast_dtype, choose_mixed_precision, runs_fast
from toolkit.worker_pool import forked_pool


@dataclass
class Predictions:
    files: list[Path]  # every input, in order
    # (N, C), NaN rows for files that could not be read: logarithms, which keep what float32 probabilities lose to
    # underflow (a confident model's other classes), and the loss and a temperature need
    log_probabilities: np.ndarray
    errors: dict[int, str]  # index -> why the file was skipped
    classes: list[str]
    pixel_hashes: list[str] | None = None  # hash of each file's decoded pixels ('' if unreadable)
    mixed_precision: str = "no"  # what the model ran in
    temperature: float = 1.0  # the calibration temperature the probabilities were divided by (1: as trained)
    # of an ensemble (predict_runs): each run's checkpoint, temperature and precision; the fields above are then
    # the log of the mean probabilities, the first run's temperature and every precision used
    members: list[dict] = field(default_factory=list)

    @functools.cached_property
    def probabilities(self) -> np.ndarray:
        """(N, C) probabilities, NaN rows for files that could not be read."""
        return np.exp(self.log_probabilities)

    @property
    def readable(self) -> np.ndarray:
        """Indices of the files that were read and predicted (the rows that are not NaN)."""
        return np.array([i for i in range(len(self.files)) if i not in self.errors], dtype=int)


def collect_inputs(inputs: list[str]) -> list[Path]:
    """Image files, folders (searched recursively) and @lists (a text file with one path per line, relative ones
    from the current folder; blank lines and lines starting with # are left out)."""
    files: list[Path] = []
    for item in inputs:
        if item.startswith("@"):
            listing = Path(item[1:])
            if not listing.is_file():
                raise UserError(f"list file {listing} {'is a folder' if listing.is_dir() else 'does not exist'}: "
                                "pass @FILE, a text file with one image path per line")
            try:
                lines = [line.strip() for line in listing.read_text().splitlines()]
            except UnicodeDecodeError:
                raise UserError(f"list file {listing} is not text: pass @FILE, a text file with one image path per "
                                "line (an image itself goes without the @)") from None
            listed = [Path(line) for line in lines if line and not line.startswith("#")]
            if not listed:
                raise UserError(f"list file {listing} lists no paths")
            files += listed
        elif Path(item).is_dir():
            found = list_image_files(Path(item))
            if not found:
                raise UserError(f"{item} holds no image files")
            files += found
        elif Path(item).exists():
            files.append(Path(item))
        else:
            raise UserError(f"{item} does not exist (pass image files, folders or @list.txt)")
    return files


def decode_for_prediction(job: tuple[str, int]):
    """(pixels at the model's size, hash of the full decoded pixels, error) for one file (path, size)."""
    path, size = job
    try:
        full = load_rgb(path)
        return rgb_pixels(Image.fromarray(full), size), pixel_hash(full), None
    except UnreadableImage as error:
        return None, "", str(error).removeprefix(f"{path}: ")
    except OSError as error:
        return None, "", f"cannot read ({error})"


def require_classifier(state, checkpoint) -> None:
    if is_denoiser(state.model) or not state.classes:
        raise UserError(f"{checkpoint} holds a {state.model}, not a classifier; "
                        "denoise images with `toolkit denoise` instead")


class ExportedClassifier:
    """A classifier exported by `toolkit export` (an .onnx file, fp32 or int8, one run or an ensemble), run by
    onnxruntime on the CPU: uint8 (B, 3, S, S) pixels -> log-probabilities (B, classes), with the normalisation,
    mirror and temperature the file was exported with."""

    def __init__(self, session):
        self.session = session

    def log_probabilities(self, images: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(["log_probabilities"], {"images": images.cpu().numpy()})[0])


def exported_classifier_state(checkpoint: str, meta: dict):
    """The trainer state of a classifier's exported file, from its metadata: its classes, size and normalisation,
    the temperature it applies (1 when exported with --no-calibrated), and the split of the run it was exported from
    where that run still is (for --held_out and the images it trained on)."""
    from toolkit.train.state import TrainerState

    require_exported_kind(checkpoint, meta, "classifier", "denoise images with `toolkit denoise` instead")
    members = meta.get("ensemble") or [meta]
    origins = [str(member.get("checkpoint") or "") for member in members]  # an ensemble's: each run's checkpoint
    here = [bool(origin) and (Path(origin) / "trainer_state.json").is_file() for origin in origins]
    splits = [TrainerState.read(Path(origin)).split if present else None for origin, present in zip(origins, here)]
    missing = next((origin or "a run it does not record" for origin, present in zip(origins, here) if not present),
                   None)
    return TrainerState(recipe="exported", model_spec=meta["model_spec"],
                        preprocessing={"image_size": meta["image_size"], "mean": members[0]["mean"],
                                       "std": members[0]["std"]},
                        classes=meta["classes"], flip_tta=bool(members[0]["flip_tta"]),
                        temperature=float(members[0]["temperature"]) if len(members) == 1 else 1.0,
                        split=None if missing else splits[0],
                        extra={"exported_precision": meta.get("precision", "fp32"), "calibrated": meta["calibrated"],
                               "members": len(members), "exported_from": meta.get("checkpoint"),
                               "run_not_here": missing, "member_splits": [] if missing else
                               [[origin, split] for origin, split in zip(origins, splits)]})


def classifier_state(checkpoint: str):
    """The trainer state of a classifier's run or checkpoint (its weights left unread), or of its exported file."""
    from toolkit.train.state import TrainerState

    if is_exported_file(checkpoint):
        return exported_classifier_state(checkpoint, open_exported(checkpoint)[1])
    state = TrainerState.read(resolve_checkpoint(checkpoint))
    require_classifier(state, checkpoint)
    return state


def load_classifier(checkpoint: str, device: str):
    """(model, trainer state): a run's PyTorch model on `device`, or an exported file's ExportedClassifier."""
    if is_exported_file(checkpoint):
        session, meta = open_exported(checkpoint)
        state = exported_classifier_state(checkpoint, meta)
        say_if_int8_may_saturate_here(checkpoint, meta)  # where it runs; its state alone is read for other checks too
        return ExportedClassifier(session), state
    model, state = load_trained_model(checkpoint, inference_device(device))
    require_classifier(state, checkpoint)
    return model, state


def check_exported_options(checkpoint: str, state, flip_tta: bool | None, mixed_precision: str | None,
                           calibrated: bool) -> None:
    """What an exported classifier cannot be asked for: another mirror or precision than it was exported with, or,
    for an ensemble exported with its temperatures, probabilities as trained (each run's temperature is inside)."""
    if flip_tta is not None and flip_tta != state.flip_tta:
        raise UserError(f"--{'' if flip_tta else 'no-'}tta: {checkpoint} was exported "
                        f"{'with' if state.flip_tta else 'without'} the mirror image inside; leave --tta out (or "
                        "export the run again)")
    if mixed_precision is not None:
        raise UserError(f"--mixed_precision={mixed_precision}: {checkpoint} is an exported file, which runs in the "
                        f"precision it was exported in ({state.extra['exported_precision']}); leave it out")
    if not calibrated and state.extra["members"] > 1 and state.extra["calibrated"]:
        raise UserError(f"--no-calibrated: {checkpoint} averages {state.extra['members']} runs' calibrated "
                        "probabilities; export them with --no-calibrated for their probabilities as trained")


def _full_pixel_hash(path: str) -> str:
    """The hash of a file's decoded pixels; '' when it cannot be read."""
    try:
        return pixel_hash(load_rgb(path))
    except (UnreadableImage, OSError):
        return ""


def inference_precision(requested: str | None, state, device: str, log=print) -> str:
    """--mixed_precision for predict/evaluate: by default the precision the run was trained with, where this
    device runs it fast; fp32 where it would emulate it or run it slower (a bf16 run of an AMX Xeon, scored
    on an AVX2 laptop, would otherwise take about 10x fp32's time). An explicit request is obeyed."""
    device_type = torch.device(device).type
    if requested:
        return choose_mixed_precision(requested, device_type, log=log)
    trained = state.mixed_precision or "no"
    if not runs_fast(trained, device_type):
        log(f"[precision] the run trained in {trained}, which this {device_type.upper()} would emulate or run no "
            f"faster than fp32: predicting in fp32 (--mixed_precision={trained} insists on {trained})")
        return "no"
    return choose_mixed_precision(trained, device_type, log=log)


@torch.no_grad()
def predict_files(checkpoint: str, files: list[Path], batch_size: int = 64, flip_tta: bool | None = None,
                  device: str = "cpu", workers: int = 2, progress: bool = True,
                  mixed_precision: str | None = None, calibrated: bool = True,
                  progress_label: str = "predicting") -> Predictions:
    """Class probabilities for every file; unreadable files are recorded, never fatal.

    mixed_precision: 'no', 'bf16', 'fp16' or 'auto'; None: the precision the checkpoint was trained with where
    this device runs it fast, else fp32 (inference_precision).
    calibrated: divided by the temperature the run fitted on its validation images (checkpoints written
    before calibration existed hold 1, as trained); False: as trained."""
    from toolkit.memory import keep_freed_memory

    keep_freed_memory()  # each batch's activations stay in the process for the next (2.2x on a CPU: toolkit.memory)
    model, state = load_classifier(checkpoint, device)
    exported = isinstance(model, ExportedClassifier)
    if exported:
        check_exported_options(checkpoint, state, flip_tta, mixed_precision, calibrated)
    classes, pre = state.classes, state.preprocessing
    flip_tta = state.flip_tta if flip_tta is None else flip_tta
    temperature = state.temperature if calibrated else 1.0
    precision = f"{state.extra['exported_precision']} ONNX graph" if exported else \
        inference_precision(mixed_precision, state, device, log=lambda m: print(m, file=sys.stderr))
    dtype = None if exported else autocast_dtype(precision)
    log_probabilities = np.full((len(files), len(classes)), np.nan, dtype=np.float32)
    hashes = [""] * len(files)
    errors: dict[int, str] = {}
    jobs = [(str(file), state.image_size) for file in files]
    with forked_pool(workers) as pool, \
            tqdm(total=len(files), desc=progress_label, unit="img", disable=not (progress and bars_enabled()),
                 file=sys.stderr) as bar:
        decoded = pool.imap(decode_for_prediction, jobs, chunksize=16)
        batch, positions = [], []
        for index, (pixels, full_hash, error) in enumerate(decoded):
            hashes[index] = full_hash
            if error is not None:
                errors[index] = error
            else:
                batch.append(pixels)
                positions.append(index)
            if len(batch) == batch_size or (index == len(files) - 1 and batch):
                images = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).to(device)  # (B, 3, H, W) uint8
                device_type = torch.device(device).type
                if exported:  # the file applies its temperature: undone (exactly) for --no-calibrated
                    log_probs = model.log_probabilities(images)
                    if temperature != state.temperature:
                        log_probs = torch.log_softmax(log_probs.double() * state.temperature, dim=1)
                else:
                    with torch.autocast(device_type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                        log_probs = classifier_outputs(model, images, pre["mean"], pre["std"], flip_tta,
                                                       temperature)
                log_probabilities[positions] = log_probs.float().cpu().numpy()
                bar.update(len(batch))
                batch, positions = [], []
            if error is not None:
                bar.update(1)
    return Predictions(files=files, log_probabilities=log_probabilities, errors=errors, classes=classes,
                       pixel_hashes=hashes, mixed_precision=precision, temperature=temperature)


def classifier_states(checkpoints: list[str]) -> list:
    """The trainer state of each run or checkpoint (its weights left unread), after checking that each is a
    classifier and that all classify into the same classes, in the same order, as an ensemble must."""
    exported = [checkpoint for checkpoint in checkpoints if is_exported_file(checkpoint)]
    if exported and len(checkpoints) > 1:
        raise UserError(f"{exported[0]} is an exported file, which is scored alone: to score an ensemble in one file, "
                        "export the runs together (toolkit export RUN OUT.onnx --ensemble RUN...)")
    states = []
    for checkpoint in checkpoints:
        state = classifier_state(checkpoint)
        if states and state.classes != states[0].classes:
            raise UserError(f"{checkpoint} classifies into {state.classes}, {checkpoints[0]} into "
                            f"{states[0].classes}: an ensemble needs runs trained on the same classes")
        states.append(state)
    return states


def predict_runs(checkpoints: list[str], files: list[Path], batch_size: int = 64, flip_tta: bool | None = None,
                 device: str = "cpu", workers: int = 2, progress: bool = True, mixed_precision: str | None = None,
                 calibrated: bool = True) -> Predictions:
    """predict_files for one run; for several (an ensemble: seeds of one recipe, or recipes trained on the same
    classes), the mean of their probabilities, each run predicting with its own image size, normalisation,
    test-time flip, precision and temperature. Averaging the seeds' probabilities usually scores above each seed
    alone (the classifier comparison's 'ensemble of the seeds' row measures it on its test images)."""
    classifier_states(checkpoints)  # every run checked before any predicts
    members = [predict_files(checkpoint, files, batch_size, flip_tta, device, workers, progress, mixed_precision,
                             calibrated, progress_label=f"predicting, run {index + 1} of {len(checkpoints)}"
                             if len(checkpoints) > 1 else "predicting")
               for index, checkpoint in enumerate(checkpoints)]
    if len(members) == 1:
        return members[0]
    errors = {index: error for member in reversed(members) for index, error in member.errors.items()}
    first = members[0]
    from scipy.special import logsumexp  # (here, not at import: 0.3 s of start-up for commands that never need it)

    # the log of the mean probability, from the members' log-probabilities (the mean of underflowed ones is not 0)
    stacked = np.stack([m.log_probabilities.astype(np.float64) for m in members])
    log_mean = logsumexp(stacked, axis=0) - np.log(len(members))
    return Predictions(files=files, log_probabilities=log_mean.astype(np.float32), errors=errors,
                       classes=first.classes, pixel_hashes=first.pixel_hashes,
                       mixed_precision=", ".join(sorted({m.mixed_precision for m in members})),
                       temperature=first.temperature,
                       members=[{"checkpoint": str(checkpoint), "temperature": m.temperature,
                                 "mixed_precision": m.mixed_precision} for checkpoint, m in zip(checkpoints, members)])


def write_predictions_csv(predictions: Predictions, path: Path, top_k: int = 1) -> None:
    """file, predicted, probability, (top-k), one probability column per class, error."""
    classes, top_k = predictions.classes, max(1, min(top_k, len(predictions.classes)))
    header = ["file", "predicted", "probability"]
    for rank in range(2, top_k + 1):
        header += [f"top{rank}", f"top{rank}_probability"]
    header += [f"p_{name}" for name in classes] + ["error"]
    with written_whole(path) as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for index, file in enumerate(predictions.files):
            if index in predictions.errors:
                writer.writerow([str(file), "", ""] + [""] * (2 * (top_k - 1) + len(classes))
                                + [predictions.errors[index]])
                continue
            row = predictions.probabilities[index]
            order = np.argsort(-row)[:top_k]
            cells = [str(file), classes[order[0]], f"{row[order[0]]:.6f}"]
            for rank in order[1:]:
                cells += [classes[rank], f"{row[rank]:.6f}"]
            writer.writerow(cells + [f"{p:.6f}" for p in row] + [""])


def training_folder(data: str) -> Path:
    """DATA's training folder (DATA/seg_train, or DATA itself when it holds the class folders)."""
    from toolkit.data.folders import find_split

    folder = find_split(Path(data), "seg_train")
    if folder is None:
        raise UserError(f"no training folder (seg_train or <class> folders) under {data}: pass the data root "
                        "the run trained on")
    return folder


def require_split_of_origin(state) -> None:
    """An exported file knows its runs' images (held out, trained on) only through those runs: where one is no
    longer where the file recorded it, say so rather than that the file records no split."""
    if state.recipe == "exported" and state.extra.get("run_not_here"):
        origin = state.extra["run_not_here"]
        raise UserError(f"this file was exported from {origin}, which is not here: the images that run held out "
                        "and trained on are unknown. Pass the run's directory, or evaluate on a labeled folder")


def exported_members(state) -> int:
    """How many runs an exported file's graph averages (1 for a run or checkpoint itself)."""
    return int(state.extra.get("members", 1)) if state.recipe == "exported" else 1


def run_splits(states: list, names: list[str]) -> list[tuple[str, dict | None]]:
    """(run, its data split) for every run behind `states` (of the runs or files `names`): a run's own, and for a
    file exported from several runs together (an ensemble), each of theirs, read where the runs still are. An
    ensemble file's images held out and trained on are all its runs', not its first run's. A file whose runs are
    not all here: its own entry, with no split."""
    return [(str(run), split) for name, state in zip(names, states)
            for run, split in (state.extra.get("member_splits") or [(name, state.split)])]


def held_out_images(data: str, states: list, names: list[str]) -> tuple[list[Path], list[int]]:
    """The images the runs of `states` (named `names`; one run, an ensemble, a file) held out of DATA's training
    folder, as their checkpoints recorded them, after checking that every run held out the same images (an
    ensemble is scored only on images none of its runs trained on) and that each file still holds the same pixels
    (so the score is the held-out one, not a lookalike)."""
    for state in states:
        require_split_of_origin(state)
    (first, split), *others = run_splits(states, names)
    for other, other_split in others:
        if (other_split or {}).get("held_out") != (split or {}).get("held_out"):
            raise UserError(f"{other} held out other images than {first}: an ensemble is scored with --held_out "
                            "only on images every run held out; evaluate it on a labeled folder")
    split = split or {}
    if not split.get("held_out"):
        raise UserError("this checkpoint records no held-out images (it was scored on a test folder, or written "
                        "by an older toolkit): evaluate on a labeled folder instead")
    folder = training_folder(data)
    files, labels, changed = [], [], []
    for item in split["held_out"]:
        path = folder / item["file"]
        files.append(path)
        labels.append(int(item["label"]))
        if _full_pixel_hash(str(path))[:DIGEST_CHARS] != item["pixels"]:  # '' when missing or unreadable
            changed.append(item["file"])
    if changed:
        raise UserError(f"{len(changed)} held-out file(s) under {folder} are missing or hold other pixels than when "
                        f"the run trained (e.g. {changed[0]}): this is not the folder the run was trained on")
    return files, labels


def unseen_training_folder_images(data: str, states: list, names: list[str],
                                  workers: int = 2) -> tuple[list[Path], list[int]]:
    """The images of DATA's training folder that no run of `states` (named `names`; for an ensemble file, none of
    its runs) trained on or held out, told apart by their pixels as the checkpoints recorded them: a run's
    validation images (and, for a run trained on a subset, the training images it left out); of several runs of
    one split, their common validation images. What a temperature is fitted on after the fact, and what `toolkit
    evaluate --validation` scores to choose on."""
    for state in states:
        require_split_of_origin(state)
    splits = [split for _, split in run_splits(states, names)]
    if not all((split or {}).get("train_pixels") for split in splits):
        raise UserError("this checkpoint does not record which images it trained on (written by an older "
                        "toolkit): its validation images cannot be told apart, so it cannot be calibrated or "
                        "scored on them")
    folder = training_folder(data)
    listing = scan_labeled_folder(folder, classes=states[0].classes)
    excluded = {pixels for split in splits for pixels in
                [*split["train_pixels"], *(item["pixels"] for item in split.get("held_out", []))]}
    with forked_pool(workers) as pool:
        hashes = list(tqdm(pool.imap(_full_pixel_hash, [str(f) for f in listing.files], chunksize=32),
                           total=len(listing.files), unit="img", desc="hashing", disable=not bars_enabled(),
                           file=sys.stderr))
    unseen = [i for i, full in enumerate(hashes) if full and full[:DIGEST_CHARS] not in excluded]
    if not unseen:
        owner = "this run" if len(splits) == 1 else "one of these runs (runs of other seeds validate on other images)"
        raise UserError(f"every image under {folder} was trained on or held out by {owner}: no images are left "
                        "(is this the data root the run trained on?)")
    return [listing.files[i] for i in unseen], [int(listing.labels[i]) for i in unseen]


def calibrate_checkpoint(checkpoint: str, data: str, batch_size: int = 64, device: str = "cpu",
                         workers: int = 2, out_dir: Path | None = None) -> dict:
    """Fit (or refit) a classifier's calibration temperature after training, as the recipes do at the end of a
    run, on the images of DATA's training folder the run never trained on or held out, and write it into the
    checkpoint's trainer state (predict and evaluate then apply it). For runs trained before calibration.
    out_dir: also calibration.json and the reliability diagrams on those images before and after."""
    from toolkit.inference import resolve_checkpoint
    from toolkit.plots import plot_reliability
    from toolkit.train.evaluate import fit_temperature, tempered_log_probabilities
    from toolkit.train.state import TrainerState

    if is_exported_file(checkpoint):
        raise UserError(f"{checkpoint} is an exported file: calibrate the run it was exported from, then export it "
                        "again (the temperature is part of the graph)")
    folder = resolve_checkpoint(checkpoint)
    state = TrainerState.read(folder)  # the weights are loaded once, by predict_files
    require_classifier(state, checkpoint)
    files, labels = unseen_training_folder_images(data, [state], [checkpoint], workers)
    predictions = predict_files(str(folder), files, batch_size, None, device, workers, calibrated=False)
    good = predictions.readable
    log_probabilities, labels = predictions.log_probabilities[good].astype(np.float64), np.asarray(labels)[good]
    temperature = fit_temperature(log_probabilities, labels)
    calibrated = tempered_log_probabilities(log_probabilities, temperature)
    probabilities = np.exp(log_probabilities)
    (ece_before, reliability_before), (ece_after, reliability_after) = (
        expected_calibration_error(probabilities, labels), expected_calibration_error(np.exp(calibrated), labels))
    result = {"checkpoint": str(folder), "data": str(data), "images": len(labels),
              "temperature_before": state.temperature, "temperature": temperature,
              "ece_as_trained": ece_before, "ece_calibrated": ece_after,
              "loss_as_trained": mean_negative_log_likelihood(log_probabilities, labels),
              "loss_calibrated": mean_negative_log_likelihood(calibrated, labels),
              "accuracy": float((probabilities.argmax(1) == labels).mean()) if len(labels) else float("nan"),
              "skipped": {str(files[i]): error for i, error in predictions.errors.items()}}
    state.temperature = temperature
    state.extra["calibration"] = {"by": "toolkit calibrate", "data": str(data), "images": len(labels)}
    state.write(folder)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        result["figures"] = {
            "reliability_as_trained": str(plot_reliability(reliability_before, ece_before,
                                                           out_dir / "reliability_as_trained.png", "as trained")),
            "reliability_calibrated": str(plot_reliability(reliability_after, ece_after,
                                                           out_dir / "reliability_calibrated.png",
                                                           f"temperature {temperature:.3f}"))}
        write_json(out_dir / "calibration.json", {**result, "reliability_as_trained": reliability_before,
                                                  "reliability_calibrated": reliability_after})
    return result


def evaluate_folder(checkpoint: str, folder: Path, out_dir: Path, batch_size: int = 64, flip_tta: bool | None = None,
                    device: str = "cpu", workers: int = 2, gallery: int = 24, held_out: bool = False,
                    mixed_precision: str | None = None, calibrated: bool = True, ensemble: list[str] = (),
                    validation: bool = False) -> dict:
    """Accuracy, per-class precision/recall/F1, confusion matrix, calibration and the most confident
    mistakes of a checkpoint on a labeled folder (or, with held_out, on exactly the images its run held
    out of that data root's training folder, as the checkpoint recorded them); figures and metrics.json
    written to out_dir. Images the run trained on are counted and named: a score on them is not held-out.
    ensemble: more runs whose probabilities are averaged with the checkpoint's (predict_runs); with held_out,
    every run must have held out the same images, and an image any of them trained on counts as trained on.
    validation: instead, the data root's training images that no run trained on or held out (a run's validation
    images), to choose options and ensembles on without touching the held-out ones."""
    from toolkit.plots import image_grid, plot_confusion, plot_grouped_bars, plot_reliability

    checkpoints = [checkpoint, *ensemble]
    states = classifier_states(checkpoints)
    state = states[0]
    if held_out:
        files, all_labels = held_out_images(str(folder), states, checkpoints)
    elif validation:
        files, all_labels = unseen_training_folder_images(str(folder), states, checkpoints, workers)
    else:
        listing = scan_labeled_folder(folder, classes=state.classes)
        files, all_labels = listing.files, listing.labels
    predictions = predict_runs(checkpoints, files, batch_size, flip_tta, device, workers,
                               mixed_precision=mixed_precision, calibrated=calibrated)
    behind = run_splits(states, checkpoints)  # the runs behind the checkpoints: an ensemble file's several
    trained_on = {pixels for _, split in behind for pixels in (split or {}).get("train_pixels", [])}
    seen_in_training = [str(f) for f, h in zip(files, predictions.pixel_hashes) if h and h[:DIGEST_CHARS] in trained_on]
    good = predictions.readable
    labels = np.asarray(all_labels)[good]
    probabilities = predictions.probabilities[good]
    classes = state.classes
    predicted = probabilities.argmax(1)
    confusion = np.zeros((len(classes), len(classes)), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    loss = mean_negative_log_likelihood(predictions.log_probabilities[good], labels) * len(labels) \
        if len(labels) else 0.0  # summed
    metrics = classification_metrics(confusion, loss)
    ece, reliability = expected_calibration_error(probabilities, labels)
    metrics.update(ece=ece, reliability=reliability, skipped={str(files[i]): e for i, e in predictions.errors.items()},
                   checkpoint=str(checkpoint),
                   folder=str(folder) + (" (held-out split)" if held_out else " (validation images)" if validation
                                         else ""),
                   mixed_precision=predictions.mixed_precision,
                   temperature=None if predictions.members else predictions.temperature,
                   ensemble=predictions.members, runs=max(len(behind), exported_members(states[0])),
                   training_images=len(seen_in_training),
                   training_image_examples=seen_in_training[:10],
                   classes=classes)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_predictions_csv(predictions, out_dir / "predictions.csv", top_k=2)
    figures = {
        "confusion": plot_confusion(confusion, classes, out_dir / "confusion.png",
                                    f"confusion matrix ({metrics['n']} images)"),
        "per_class": plot_grouped_bars({"precision": metrics["precision"], "recall": metrics["recall"],
                                        "F1": metrics["f1"]}, classes, out_dir / "per_class.png", "score",
                                       title="per-class precision / recall / F1", ylim=(0, 1.1)),
        "reliability": plot_reliability(reliability, ece, out_dir / "reliability.png"),
    }
    wrong = np.flatnonzero(predicted != labels)
    worst = wrong[np.argsort(-probabilities[wrong].max(1))][:gallery]
    if len(worst):
        images = [load_rgb(files[good[i]]) for i in worst]
        captions = [f"true {classes[labels[i]]}\npredicted {classes[predicted[i]]} {probabilities[i].max():.2f}"
                    for i in worst]
        figures["mistakes"] = image_grid(images, captions, out_dir / "confident_mistakes.png",
                                         title="the most confident mistakes")
        metrics["confident_mistakes"] = [{"file": str(files[good[i]]), "true": classes[labels[i]],
                                          "predicted": classes[predicted[i]],
                                          "probability": float(probabilities[i].max())} for i in worst]
    metrics["figures"] = {k: str(v) for k, v in figures.items()}
    write_json(out_dir / "metrics.json", metrics)  # standard JSON: a class never predicted has a null precision
    return metrics
