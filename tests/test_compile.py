"""Compiled blocks (``train.parallel.compile_blocks``): the debug DiT with every block's forward compiled by
inductor on the CPU, under activation checkpointing as in training, against the same model eager: forward and
every parameter's gradient. Both blocks share one compiled graph (regional compilation compiles once)."""

from __future__ import annotations

import copy

import pytest
import torch

from trainer.model import MiVETransformer, get_config
from trainer.parallel import apply_activation_checkpointing, apply_compile

# Measured on the CPU (float32, 2026-12-03): forward within 9e-8 of outputs of magnitude 0.6-0.75, gradients
# within 1.6e-6 of each parameter's largest: inductor fuses and reorders float32 sums, nothing more.
FORWARD_ATOL = 1e-6
GRADIENT_RTOL = 1e-5


def _inputs(generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    noisy = torch.randn(2, 16, 2, 4, 4, generator=generator)
    source = torch.randn(2, 16, 2, 4, 4, generator=generator)
    reference = torch.randn(2, 16, 1, 4, 4, generator=generator)
    timestep = torch.rand(2, generator=generator) * 1000
    vlm_first = torch.randn(2, 5, 64, generator=generator)
    vlm_last = torch.randn(2, 5, 64, generator=generator)
    return noisy, source, reference, timestep, vlm_first, vlm_last


@pytest.mark.slow
@pytest.mark.process  # inductor runs the C++ compiler
def test_compiled_blocks_equal_eager_forward_and_backward():
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    eager = MiVETransformer(get_config("debug"))
    compiled = copy.deepcopy(eager)
    assert apply_compile(compiled, ("blocks.*",)) == 2
    for model in (eager, compiled):
        apply_activation_checkpointing(model, ("blocks.*",))
    torch._dynamo.reset()
    counters.clear()
    generator = torch.Generator().manual_seed(1)
    for _ in range(2):  # the second step runs the cached graph
        inputs = _inputs(generator)
        outputs = [model(*inputs) for model in (eager, compiled)]
        for output in outputs:
            output.square().mean().backward()
        assert (outputs[0] - outputs[1]).abs().max().item() <= FORWARD_ATOL
        assert not torch.equal(outputs[0], torch.zeros_like(outputs[0]))
        for (name, ours), theirs in zip(compiled.named_parameters(), eager.parameters(), strict=True):
            scale = theirs.grad.abs().max().item()
            assert (ours.grad - theirs.grad).abs().max().item() <= GRADIENT_RTOL * max(scale, 1e-12), name
            ours.grad, theirs.grad = None, None
    # one graph for both blocks and both steps: the blocks' parameters are graph inputs, not constants
    assert counters["stats"]["unique_graphs"] == 1
