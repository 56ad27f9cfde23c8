"""Learning-rate schedules as pure functions of the step: nothing to save, exact on resume."""

from __future__ import annotations

import math


def one_cycle_lr(step: float, total_steps: int, peak_lr: float, warmup_fraction: float = 0.2,
                 final_fraction: float = 0.02) -> float:
    """Linear warm-up from 0 to peak_lr over warmup_fraction of training, then cosine decay to
    final_fraction * peak_lr at the last step (Smith's one-cycle policy, cosine flavour). `step` may lie between
    whole steps (a schedule stretched by a re-plan: TrainingLoop.schedule_at)."""
    warmup = max(1, int(warmup_fraction * total_steps))
    if step < warmup:
        return peak_lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    final = final_fraction * peak_lr
    return final + (peak_lr - final) * 0.5 * (1 + math.cos(math.pi * progress))


def stretched_position(iteration: int, first_total: int, changes: list[tuple[int, int]]) -> float:
    """Where training iteration `iteration` (from 0) stands in a schedule planned for `first_total` iterations,
    once the plan changed to other totals: changes = [(at iteration, new total), ...] in order. At each change
    what is left of the schedule is spread evenly over the iterations that now follow, so the position moves on
    from where it stood, with no jump, and reaches first_total at the new total. Without changes: the iteration
    itself, exactly."""
    start_iteration, start_position, end_iteration = 0, 0.0, first_total
    for at, total in changes:
        if iteration < at:
            break
        start_position = _between(at, start_iteration, start_position, end_iteration, first_total)
        start_iteration, end_iteration = at, total
    return _between(iteration, start_iteration, start_position, end_iteration, first_total)


def _between(iteration: int, start_iteration: int, start_position: float, end_iteration: int,
             end_position: int) -> float:
    """The position of `iteration` on the line from (start_iteration, start_position) to (end_iteration,
    end_position); past its end, the end."""
    if iteration >= end_iteration:
        return float(end_position)
    return start_position + (end_position - start_position) * (iteration - start_iteration) / \
        (end_iteration - start_iteration)


def set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
