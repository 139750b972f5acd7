"""``trainer sample-trace``: ``trainer sample``'s DiT load and one denoising step at 14B width on fake tensors,
per rank, against independent counts (the parameters counted on the meta device, the largest checkpoint
tensor, the FFN's hidden activation). Two blocks at 14B width: the parameters grow with the blocks, the
step's peak (no gradients kept) does not."""

from __future__ import annotations

import pytest

from trainer.model import MiVETransformer, count_parameters, get_config
from trainer.sample_trace import trace_sampling

LATENTS = (21, 90, 160)  # 81 frames at 720 x 1280
CONDITION = 2048


@pytest.mark.slow
def test_sampling_at_14b_width_host_and_device_peaks_per_rank() -> None:
    import torch

    config = get_config("mive_14b", num_layers=2)
    with torch.device("meta"):
        shapes = [p.shape for p in MiVETransformer(config).parameters()]
    largest = 4 * max(s.numel() for s in shapes)  # float32 bytes of the largest stored tensor
    alone = trace_sampling("mive_14b", LATENTS, CONDITION, 1, 0, num_layers=2)
    split = [trace_sampling("mive_14b", LATENTS, CONDITION, 2, rank, num_layers=2) for rank in (0, 1)]
    for trace in (alone, *split):
        assert trace.parameters == 2 * count_parameters(config).total  # bfloat16 on the device
        # the host holds one checkpoint tensor at a time beyond the model: never a float32 model
        assert trace.largest_tensor == largest and trace.host_peak <= largest, trace
    assert split[0].device_peak == split[1].device_peak  # the ranks' chunks are the same size
    step_alone = alone.device_peak - alone.parameters
    step_split = split[0].device_peak - split[0].parameters
    tokens = CONDITION + (LATENTS[0] + 1) * (LATENTS[1] // 2) * (LATENTS[2] // 2)
    assert alone.num_tokens == tokens
    assert step_alone >= tokens * config.ffn_dim * 2  # the FFN's hidden activation of the whole sequence
    assert step_split < 0.6 * step_alone  # each rank keeps half of the tokens
