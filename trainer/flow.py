"""Flow matching's noise schedule and its Euler sampler: the pieces training, validation and ``trainer sample``
share, below all three.

Training draws a noise level u and shifts it (``trainer.train``); validation evaluates the loss at shifted
quantiles of u and renders edits (``trainer.validation``); ``trainer sample`` edits a video
(``trainer.sample``). All of them use Wan's shift, and the last two the same sampler, so a rendered edit
is the edit ``trainer sample`` gives. Nothing here imports torch at import time (``trainer --help`` stays
instant).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from trainer.model import MiVETransformer, SequenceParallel


def shift_sigma(u: torch.Tensor, shift: float) -> torch.Tensor:
    """Wan's timestep shift of a noise level u in [0, 1]: ``shift u / (1 + (shift - 1) u)`` (shift > 1 pushes
    towards noise). Training draws u and shifts it; the sampler shifts an evenly spaced u (:func:`shifted_sigmas`)."""
    return shift * u / (1 + (shift - 1) * u)


def shifted_sigmas(num_steps: int, shift: float) -> torch.Tensor:
    """``num_steps + 1`` noise levels from 1 to 0 (float64): ``sigma(u) = shift u / (1 + (shift - 1) u)``,
    ``u = 1 - i / num_steps``, the schedule the trainer draws its noise levels from (``train.flow.shift``)."""
    import torch

    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    return shift_sigma(1.0 - torch.arange(num_steps + 1, dtype=torch.float64) / num_steps, shift)


@dataclass
class Conditioning:
    """One sample's model inputs besides the noisy latents (batch of 1)."""

    source_latents: torch.Tensor  # (1, 16, T', H', W')
    reference_latents: torch.Tensor  # (1, 16, 1, H', W')
    vlm_first: torch.Tensor  # (1, S, D_vlm)
    vlm_last: torch.Tensor  # (1, S, D_vlm)


def euler_sample(
    model: MiVETransformer,
    cond: Conditioning,
    num_steps: int,
    shift: float,
    seed: int,
    sp: SequenceParallel | None = None,
    guidance_scale: float = 1.0,
) -> torch.Tensor:
    """Integrate dx/dsigma = v from x(1) = noise to x(0): ``x <- x + (sigma_next - sigma) v(x, sigma)``.

    Training's x_t = (1 - sigma) x0 + sigma noise has velocity d x_t / d sigma = noise - x0, the model's
    target, so every Euler step moves along the predicted velocity. With ``guidance_scale`` other than 1, v is
    ``v_u + scale (v_c - v_u)``, v_u the velocity without condition tokens. Returns the latents
    (1, 16, T', H', W') in float32. With ``sp`` every rank of the group calls this with the same inputs; each
    model call is split over the group and returns the whole velocity everywhere, so every rank ends with the
    same latents.
    """
    import torch

    with torch.no_grad():
        param = next(model.parameters())
        device, dtype = param.device, param.dtype
        generator = torch.Generator().manual_seed(seed)
        x = torch.randn(cond.source_latents.shape, generator=generator, dtype=torch.float32).to(device)
        inputs = {
            "source_latents": cond.source_latents.to(device, dtype),
            "reference_latents": cond.reference_latents.to(device, dtype),
            "vlm_first": cond.vlm_first.to(device, dtype),
            "vlm_last": cond.vlm_last.to(device, dtype),
        }
        # the schedule as Python floats (the float64 values of ``shifted_sigmas``, computed the same way):
        # no tensor is read back, so the sampler also runs on fake tensors (``trainer.sample_trace``)
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        sigmas = [shift_sigma(1.0 - i / num_steps, shift) for i in range(num_steps + 1)]
        for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:], strict=True):
            timestep = torch.full((1,), sigma * 1000.0, device=device, dtype=torch.float32)
            velocity = model(
                x.to(dtype),
                inputs["source_latents"],
                inputs["reference_latents"],
                timestep,
                inputs["vlm_first"],
                inputs["vlm_last"],
                sp=sp,
            ).float()
            if guidance_scale != 1.0:
                # no condition tokens: what training's dropped condition (every token masked out) computes
                unconditional = model(
                    x.to(dtype),
                    inputs["source_latents"],
                    inputs["reference_latents"],
                    timestep,
                    None,
                    None,
                    sp=sp,
                ).float()
                velocity = unconditional + guidance_scale * (velocity - unconditional)
            x = x + (sigma_next - sigma) * velocity
        return x.cpu()
