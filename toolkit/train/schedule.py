"""Learning-rate schedules as pure functions of the step: nothing to save, exact on resume."""

from __future__ import annotations

import math


def one_cycle_lr(step: int, total_steps: int, peak_lr: float, warmup_fraction: float = 0.2,
                 final_fraction: float = 0.02) -> float:
    """Linear warm-up from 0 to peak_lr over warmup_fraction of training, then cosine decay to
    final_fraction * peak_lr at the last step (Smith's one-cycle policy, cosine flavour)."""
    warmup = max(1, int(warmup_fraction * total_steps))
    if step < warmup:
        return peak_lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    final = final_fraction * peak_lr
    return final + (peak_lr - final) * 0.5 * (1 + math.cos(math.pi * progress))


def set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
