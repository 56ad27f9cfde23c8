"""Training-loss and throughput bookkeeping between log lines."""

from __future__ import annotations

import math

import torch

from toolkit.errors import TrainingDiverged


class TrainingMeter:
    """Sums loss, correct predictions and time on the device between log lines (no sync per step)."""

    def __init__(self, accelerator):
        self.accelerator = accelerator
        device = accelerator.device
        self.loss_sum = torch.zeros((), device=device, dtype=torch.float64)
        self.steps = 0
        self.images = 0
        self.seconds = 0.0
        self.correct = torch.zeros((), device=device, dtype=torch.int64)  # since the last validation
        self.seen = torch.zeros((), device=device, dtype=torch.int64)
        self.seen_any = False  # a classifier's logits were counted (the running accuracy exists)

    def add(self, loss: torch.Tensor, images: int, seconds: float, logits: torch.Tensor | None = None,
            labels: torch.Tensor | None = None) -> None:
        """One step: its loss, batch size and time; logits and labels feed the running accuracy."""
        self.loss_sum += loss.detach().double()
        self.steps += 1
        self.images += images
        self.seconds += seconds
        if logits is not None:
            self.seen_any = True
            self.correct += (logits.detach().argmax(dim=1) == labels).sum()
            self.seen += labels.shape[0]

    def flush(self, step: int) -> dict:
        """Mean loss over all processes since the last flush, and throughput. Raises on NaN/inf."""
        loss = self.accelerator.reduce(self.loss_sum, reduction="sum").item() / max(self.steps, 1)
        loss /= self.accelerator.num_processes
        if not math.isfinite(loss):
            raise TrainingDiverged(
                f"the training loss became {loss} at iteration {step}; the run stopped before saving it, so the "
                "newest checkpoint is still good. Lower --lr or use --mixed_precision=no, then --resume")
        images = self.images * self.accelerator.num_processes
        metrics = {"train/loss": loss, "train/images_per_s": images / max(self.seconds, 1e-9),
                   "seconds": self.seconds, "images": images}
        self.loss_sum.zero_()
        self.steps, self.images, self.seconds = 0, 0, 0.0
        return metrics

    def take_running_accuracy(self) -> float:
        """Accuracy on the (augmented, train-mode) batches seen since the last call."""
        correct = self.accelerator.reduce(self.correct, reduction="sum").item()
        seen = self.accelerator.reduce(self.seen, reduction="sum").item()
        self.correct.zero_()
        self.seen.zero_()
        return correct / seen if seen else float("nan")
