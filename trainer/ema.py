"""An exponential moving average of the weights, sharded like the parameters (FSDP2: one shard per rank).

    ema <- decay * ema + (1 - decay) * param        after every optimizer step (torch._foreach_lerp_)

The average is float32, one tensor per parameter, created as a copy of the parameter: under FSDP2 a
parameter is a DTensor sharded over every rank, so is its average (4 bytes x parameters / ranks per rank,
nothing gathered). Updating works on the local shards only: no communication. The averages go into the DCP
checkpoint under ``ema.<parameter name>`` (the names of ``model.named_parameters()``, which are the model's
state-dict keys: ``trainer export --ema`` and ``trainer sample`` read them as model weights) and are
restored in place on resume, resharded by DCP when the number of ranks changed.
"""

from __future__ import annotations

import torch
from torch import nn

EMA_PREFIX = "ema"


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """A DTensor's local shard (a view: writing it writes the DTensor), or the tensor itself."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


class WeightAverage:
    """The EMA of ``model``'s parameters with ``decay`` (0 < decay < 1)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"train.ema_decay must be in (0, 1) to keep an EMA, got {decay}")
        self.decay = decay
        named = [(name, param) for name, param in model.named_parameters()]
        self.params = [param for _, param in named]
        with torch.no_grad():
            self.averages = {name: param.detach().float().clone() for name, param in named}

    @torch.no_grad()
    def update(self) -> None:
        """One step of the average towards the current parameters (call after ``optimizer.step()``)."""
        averages = [_local(a) for a in self.averages.values()]
        params = [_local(p.detach()).float() for p in self.params]
        torch._foreach_lerp_(averages, params, 1.0 - self.decay)

    @torch.no_grad()
    def reset_to_parameters(self) -> None:
        """Restart the average at the current parameters (a resumed checkpoint that held none)."""
        for average, param in zip(self.averages.values(), self.params, strict=True):
            _local(average).copy_(_local(param.detach()))

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averages by parameter name (DTensors under FSDP2): DCP saves and loads them in place."""
        return self.averages
