"""Parameter and FLOP counts, measured on the module itself."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@torch.no_grad()
def forward_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """FLOPs (multiply and add counted separately) of one forward pass of one input of `input_shape`.

    Denoisers conditioned on the noise level (`model.conditioned`) are given one sigma per image."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    extra = (torch.full((1,), 0.1, device=device),) if getattr(model, "conditioned", False) else ()
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, *input_shape, device=device), *extra)
    model.train(was_training)
    return int(counter.get_total_flops())
