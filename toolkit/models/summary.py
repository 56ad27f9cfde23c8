"""Parameter and FLOP counts, measured on the module itself."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@torch.no_grad()
def forward_flops(model: nn.Module, input_shape: tuple[int, ...], *extra_inputs: torch.Tensor) -> int:
    """FLOPs (multiply and add counted separately) of one forward pass of one input of `input_shape`,
    with `extra_inputs` passed after it (e.g. the noise level of a conditioned denoiser)."""
    # a torch.compile'd model: count its module (compiling again for a one-image input would cost minutes)
    model = getattr(model, "_orig_mod", model)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, *input_shape, device=device), *(extra.to(device) for extra in extra_inputs))
    model.train(was_training)
    return int(counter.get_total_flops())
