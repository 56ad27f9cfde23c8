"""An exponential moving average of a model's weights, evaluated instead of the raw weights."""

from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEMA:
    """Holds a copy of the model whose parameters track decay * ema + (1 - decay) * current every
    update; buffers (BatchNorm statistics) are copied as they are. `state_dict`/`load_state_dict`
    let Accelerate checkpoint it (accelerator.register_for_checkpointing)."""

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup_steps: int = 100):
        self.model = copy.deepcopy(model).eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self.decay = decay
        self.warmup_steps = warmup_steps  # early on, average over fewer steps: decay ramps up
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (self.warmup_steps + self.updates))
        for average, current in zip(self.model.parameters(), model.parameters()):
            average.lerp_(current.detach(), 1 - decay)
        for average, current in zip(self.model.buffers(), model.buffers()):
            average.copy_(current)

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.updates = state["updates"]
