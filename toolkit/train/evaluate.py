"""Evaluating a classifier in eval mode, without gradients, exactly once per sample.

Every process evaluates its own disjoint shard (see toolkit.data.loaders.shard_indices); the
confusion matrix and loss sum are then added up across processes, so the metrics are those
of the whole set, never of padded or duplicated samples.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from toolkit.data.augment import normalize

if TYPE_CHECKING:  # the loaders import FFCV, seconds of numba compiling that inference never needs
    from toolkit.data.loaders import Shard


def share_buffers(model: torch.nn.Module, accelerator) -> None:
    """Give every process the main process's buffers (BatchNorm statistics) before scoring: each process's last
    training forward updated its own copy, and the checkpoint holds the main process's."""
    if accelerator.num_processes > 1:
        import torch.distributed as dist

        for buffer in model.buffers():
            dist.broadcast(buffer.data, src=0)


def classifier_outputs(model, images: torch.Tensor, mean, std, flip_tta: bool = False,
                       temperature: float = 1.0) -> torch.Tensor:
    """Log-probabilities (B, C) for a uint8 batch; with flip_tta, averaged over the image and its mirror;
    then divided by the run's fitted temperature (1: as trained), which never changes the predicted class."""
    inputs = normalize(images, mean, std)
    log_probs = F.log_softmax(model(inputs).float(), dim=1)
    if flip_tta:
        mirrored = F.log_softmax(model(inputs.flip(3)).float(), dim=1)
        log_probs = torch.logsumexp(torch.stack([log_probs, mirrored]), dim=0) - np.log(2.0)
    return F.log_softmax(log_probs / temperature, dim=1) if temperature != 1.0 else log_probs


def tempered_log_probabilities(log_probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """Log-probabilities (N, C) rescaled as log softmax(log p / temperature), in float64. From log-probabilities,
    not probabilities: a confident model's small probabilities underflow to 0 in float32 (below about e^-87), their
    logarithms do not, and the temperature needs them (dividing a log-probability of -200 by 20 gives -10)."""
    from scipy.special import logsumexp

    scaled = np.asarray(log_probabilities, dtype=np.float64) / temperature
    return scaled - logsumexp(scaled, axis=1, keepdims=True)


def log_of(probabilities: np.ndarray) -> np.ndarray:
    """Log-probabilities from probabilities where only these are kept (saved files, the mean of an ensemble's): a
    probability that underflowed to 0 reads as 1e-30."""
    return np.log(np.clip(np.asarray(probabilities, dtype=np.float64), 1e-30, 1))


def with_temperature(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities (N, C) rescaled as softmax(log p / temperature) (tempered_log_probabilities from the
    log-probabilities where they are at hand: exact for probabilities that underflowed)."""
    return np.exp(tempered_log_probabilities(log_of(probabilities), temperature))


def mean_negative_log_likelihood(log_probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The mean cross-entropy of log-probabilities (N, C) against integer labels (N,): what the runs' loss is,
    a confidently wrong prediction counted in full (log_of gives them from probabilities)."""
    if len(labels) == 0:
        return float("nan")
    return float(-np.asarray(log_probabilities, dtype=np.float64)[np.arange(len(labels)), labels].mean())


# the spread of log T believed before any image is seen (T in about [0.37, 2.7] at two standard deviations):
# few images cannot pull a fit far from T = 1, a few hundred decide it alone
TEMPERATURE_PRIOR_SD = 0.5


def fit_temperature(log_probabilities: np.ndarray, labels: np.ndarray,
                    prior_sd: float | None = TEMPERATURE_PRIOR_SD) -> float:
    """Temperature scaling (Guo et al., 2017): the T in [0.05, 20] that minimises the negative log-likelihood
    of softmax(log p / T) on held-back images (a run's validation images), given their log-probabilities. T > 1
    softens over-confident probabilities, T < 1 sharpens under-confident ones; the ranking of the classes never
    changes.

    The fit is the most probable T under a normal prior on log T (mean 0, `prior_sd`; None: no prior, the plain
    maximum likelihood). On a few dozen images the plain fit follows their noise, often to an extreme T that
    makes calibration worse elsewhere; the prior holds it near 1 until the images say otherwise. On 20 or 50
    images it scores better on fresh images than the plain fit for most miscalibrations, and on hundreds the
    two agree (tests/test_evaluate.py simulates both)."""
    from scipy.optimize import minimize_scalar

    count = len(labels)
    if count == 0:
        return 1.0

    def negative_log_posterior(log_t: float) -> float:
        tempered = tempered_log_probabilities(log_probabilities, np.exp(log_t))
        fit = count * mean_negative_log_likelihood(tempered, labels)
        return fit + (0.0 if prior_sd is None else log_t**2 / (2 * prior_sd**2))

    found = minimize_scalar(negative_log_posterior, bounds=(np.log(0.05), np.log(20.0)), method="bounded",
                            options={"xatol": 1e-4})
    return float(np.exp(found.x))


@torch.no_grad()
def evaluate_classifier(model, shard: Shard, accelerator, num_classes: int, mean, std, flip_tta: bool = False,
                        keep_predictions: bool = False) -> dict:
    """Loss, accuracy, per-class metrics and confusion matrix over every image of the set `shard` is part of.

    Each process scores its own shard (possibly empty); counts and losses are added up over processes.
    With keep_predictions, the result also holds 'log_probabilities' and 'probabilities' (N, C) and 'labels' (N,)
    for the whole set in its own order (every process gathers the shards and puts each row back at its position).
    """
    model = accelerator.unwrap_model(model)  # DDP's forward would sync buffers: shards of unequal length deadlock
    share_buffers(model, accelerator)
    was_training = model.training
    model.eval()
    device = accelerator.device
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    kept_log_probabilities, kept_labels = [], []
    for images, labels in shard.loader:
        with accelerator.autocast():
            log_probs = classifier_outputs(model, images, mean, std, flip_tta)
        labels = labels.to(device)
        loss_sum += F.nll_loss(log_probs, labels, reduction="sum").double()
        predictions = log_probs.argmax(dim=1)
        confusion += torch.bincount(labels * num_classes + predictions, minlength=num_classes**2)
        if keep_predictions:
            kept_log_probabilities.append(log_probs.float().cpu())
            kept_labels.append(labels.cpu().clone())  # FFCV reuses its batch buffers
    confusion = accelerator.reduce(confusion, reduction="sum")
    loss_sum = accelerator.reduce(loss_sum, reduction="sum")
    model.train(was_training)
    metrics = classification_metrics(confusion.view(num_classes, num_classes).cpu().numpy(), float(loss_sum))
    if keep_predictions:
        log_probabilities = torch.cat(kept_log_probabilities) if kept_log_probabilities else \
            torch.zeros(0, num_classes)
        labels = torch.cat(kept_labels) if kept_labels else torch.zeros(0, dtype=torch.int64)
        parts = [(shard.positions, log_probabilities, labels)]
        if accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            parts = gather_object(parts)
        ordered_log_probabilities = np.full((shard.total, num_classes), np.nan, dtype=np.float32)
        ordered_labels = np.full(shard.total, -1, dtype=np.int64)
        for positions, part_log_probabilities, part_labels in parts:  # strided shards: back to the set's order
            ordered_log_probabilities[positions] = part_log_probabilities.numpy()
            ordered_labels[positions] = part_labels.numpy()
        metrics["log_probabilities"] = ordered_log_probabilities
        metrics["probabilities"] = np.exp(ordered_log_probabilities)
        metrics["labels"] = ordered_labels
    return metrics


def classification_metrics(confusion: np.ndarray, loss_sum: float) -> dict:
    """Metrics from a confusion matrix (rows: true class, columns: predicted) and a summed loss.

    Classes with no samples (or no predictions) get NaN recall (precision), not a fake 0 or 1; a class
    with no samples has no F1 and is left out of the macro F1.
    """
    confusion = np.asarray(confusion, dtype=np.int64)
    total = int(confusion.sum())
    correct = np.diag(confusion)
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.where(support > 0, correct / np.maximum(support, 1), np.nan)
        precision = np.where(predicted > 0, correct / np.maximum(predicted, 1), np.nan)
        f1 = np.where((precision + recall) > 0, 2 * precision * recall / (precision + recall), 0.0)
        f1 = np.where(support > 0, np.nan_to_num(f1), np.nan)  # a class absent from the set has no F1
    return {
        "n": total,
        "loss": loss_sum / total if total else float("nan"),
        "accuracy": float(correct.sum() / total) if total else float("nan"),
        "per_class_accuracy": recall.tolist(),  # = recall: share of each true class predicted right
        "per_class_correct": correct.tolist(),
        "per_class_total": support.tolist(),
        "precision": precision.tolist(),
        "recall": recall.tolist(),
        "f1": f1.tolist(),
        "macro_f1": float(np.nanmean(f1)) if (support > 0).any() else float("nan"),  # over classes present
        "confusion": confusion.tolist(),
    }


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = 15) -> tuple[float, dict]:
    """ECE with equal-width confidence bins, and the per-bin table for a reliability plot."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    table = {"confidence": [], "accuracy": [], "count": [], "lower": edges[:-1].tolist(), "upper": edges[1:].tolist()}
    ece = 0.0
    for b in range(bins):
        members = which == b
        count = int(members.sum())
        table["count"].append(count)
        table["confidence"].append(float(confidence[members].mean()) if count else float("nan"))
        table["accuracy"].append(float(correct[members].mean()) if count else float("nan"))
        if count:
            ece += count / len(labels) * abs(confidence[members].mean() - correct[members].mean())
    return float(ece), table
