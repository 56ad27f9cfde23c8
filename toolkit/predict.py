"""Applying a trained classifier: `toolkit predict` (any images) and `toolkit evaluate` (a labeled folder).

Both read only the checkpoint: its class list, its preprocessing (size, mean, std) and its weights,
so a checkpoint copied to another machine is all that is needed. Images are decoded and resized
exactly as the .beton files were written for training (toolkit.data.images.load_rgb).
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from toolkit.data.folders import list_image_files, scan_labeled_folder
from toolkit.data.images import UnreadableImage, load_rgb
from toolkit.errors import UserError
from toolkit.inference import DENOISER_NAMES, load_trained_model
from toolkit.train.evaluate import classification_metrics, classifier_outputs, expected_calibration_error
from toolkit.train.precision import choose_mixed_precision


@dataclass
class Predictions:
    files: list[Path]  # every input, in order
    probabilities: np.ndarray  # (N, C); NaN rows for files that could not be read
    errors: dict[int, str]  # index -> why the file was skipped
    classes: list[str]


def collect_inputs(inputs: list[str]) -> list[Path]:
    """Image files, folders (searched recursively) and @lists (a text file with one path per line)."""
    files: list[Path] = []
    for item in inputs:
        if item.startswith("@"):
            listing = Path(item[1:])
            if not listing.is_file():
                raise UserError(f"list file {listing} does not exist")
            files += [Path(line.strip()) for line in listing.read_text().splitlines() if line.strip()]
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


def _decode(job: tuple[str, int]):
    path, size = job
    try:
        return load_rgb(path, size), None
    except UnreadableImage as error:
        return None, str(error).removeprefix(f"{path}: ")
    except OSError as error:
        return None, f"cannot read ({error})"


def load_classifier(checkpoint: str, device: str):
    model, state = load_trained_model(checkpoint, device)
    if state["model_spec"]["name"] in DENOISER_NAMES or "classes" not in state:
        raise UserError(f"{checkpoint} holds a {state['model_spec']['name']}, not a classifier; "
                        "denoise images with `toolkit denoise` instead")
    return model, state


@torch.no_grad()
def predict_files(checkpoint: str, files: list[Path], batch_size: int = 64, flip_tta: bool | None = None,
                  device: str = "cpu", workers: int = 2, progress: bool = True) -> Predictions:
    """Class probabilities for every file; unreadable files are recorded, never fatal."""
    model, state = load_classifier(checkpoint, device)
    classes, pre = state["classes"], state["preprocessing"]
    flip_tta = state.get("flip_tta", False) if flip_tta is None else flip_tta
    use_bf16 = choose_mixed_precision("auto", torch.device(device).type, log=lambda _: None) == "bf16"
    probabilities = np.full((len(files), len(classes)), np.nan, dtype=np.float32)
    errors: dict[int, str] = {}
    jobs = [(str(file), pre["resolution"]) for file in files]
    with multiprocessing.get_context("fork").Pool(max(1, workers)) as pool, \
            tqdm(total=len(files), unit="img", disable=not progress, file=sys.stderr) as bar:
        decoded = pool.imap(_decode, jobs, chunksize=16)
        batch, positions = [], []
        for index, (pixels, error) in enumerate(decoded):
            if error is not None:
                errors[index] = error
            else:
                batch.append(pixels)
                positions.append(index)
            if len(batch) == batch_size or (index == len(files) - 1 and batch):
                images = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).to(device)  # (B, 3, H, W) uint8
                with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=use_bf16):
                    log_probs = classifier_outputs(model, images, pre["mean"], pre["std"], flip_tta)
                probabilities[positions] = log_probs.exp().cpu().numpy()
                bar.update(len(batch))
                batch, positions = [], []
            if error is not None:
                bar.update(1)
    return Predictions(files=files, probabilities=probabilities, errors=errors, classes=classes)


def write_predictions_csv(predictions: Predictions, path: Path, top_k: int = 1) -> None:
    """file, predicted, probability, (top-k), one probability column per class, error."""
    path.parent.mkdir(parents=True, exist_ok=True)
    classes, top_k = predictions.classes, max(1, min(top_k, len(predictions.classes)))
    header = ["file", "predicted", "probability"]
    for rank in range(2, top_k + 1):
        header += [f"top{rank}", f"top{rank}_probability"]
    header += [f"p_{name}" for name in classes] + ["error"]
    with open(path, "w", newline="") as handle:
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


def holdout_images(data: str, holdout_fraction: float, classes: list[str]) -> tuple[list[Path], list[int]]:
    """The held-out test images the recipes carve from a training folder (same files, same seed)."""
    from toolkit.data.classification import load_classification_data

    split = load_classification_data(data, "seg_train", "", 0.1, holdout_fraction, 0, store_size=32,
                                     log=lambda *_: None)
    if split.classes != classes:
        raise UserError(f"{data} has classes {split.classes} but the model was trained on {classes}")
    root = Path(split.train_set.manifest["root"])
    files = [root / split.train_set.files[i] for i in split.test_indices]
    return files, [int(split.train_set.labels[i]) for i in split.test_indices]


def evaluate_folder(checkpoint: str, folder: Path, out_dir: Path, batch_size: int = 64, flip_tta: bool | None = None,
                    device: str = "cpu", workers: int = 2, gallery: int = 24, holdout_fraction: float = 0.0) -> dict:
    """Accuracy, per-class precision/recall/F1, confusion matrix, calibration and the most confident
    mistakes of a checkpoint on a labeled folder (or, with holdout_fraction > 0, on the images the
    recipes hold out of that training folder); figures and metrics.json written to out_dir."""
    from toolkit.plots import image_grid, plot_confusion, plot_grouped_bars, plot_reliability

    _, state = load_classifier(checkpoint, "cpu")
    if holdout_fraction > 0:
        files, all_labels = holdout_images(str(folder), holdout_fraction, state["classes"])
    else:
        listing = scan_labeled_folder(folder, classes=state["classes"])
        files, all_labels = listing.files, listing.labels
    predictions = predict_files(checkpoint, files, batch_size, flip_tta, device, workers)
    good = np.array([i for i in range(len(files)) if i not in predictions.errors], dtype=int)
    labels = np.asarray(all_labels)[good]
    probabilities = predictions.probabilities[good]
    classes = state["classes"]
    predicted = probabilities.argmax(1)
    confusion = np.zeros((len(classes), len(classes)), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    loss = float(-np.log(np.clip(probabilities[np.arange(len(labels)), labels], 1e-12, 1)).sum())
    metrics = classification_metrics(confusion, loss)
    ece, reliability = expected_calibration_error(probabilities, labels)
    metrics.update(ece=ece, reliability=reliability, skipped={str(files[i]): e for i, e in predictions.errors.items()},
                   checkpoint=str(checkpoint), folder=str(folder) + (" (held-out split)" if holdout_fraction else ""),
                   classes=classes)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_predictions_csv(Predictions(files, predictions.probabilities, predictions.errors, classes),
                          out_dir / "predictions.csv", top_k=2)
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
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float))
    return metrics
