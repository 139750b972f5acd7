"""Wan weights into an FSDP2-sharded meta-built model (gloo, CPU), one rank's part: run inside
tests/sequence_parallel_worker.py's ``torchrun`` launch (the process group exists) for
tests/test_sequence_parallel.py's test_wan_weights_load_into_an_fsdp2_sharded_model.

Each rank gathers the full state dict and compares it with the reference file written by the test.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from safetensors.torch import load_file
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from trainer.model import MiVETransformer, get_config
from trainer.wan_weights import load_wan_weights


def load_and_compare(checkpoint: str, expected_file: str) -> dict:
    """Build the debug model on meta, shard it over every rank (FSDP2), load ``checkpoint`` into it; the
    parameters (gathered whole) that differ from ``expected_file``, and whether the fresh context adapter's
    fusion starts at zero."""
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    with torch.device("meta"):
        model = MiVETransformer(get_config("debug"))
    for block in model.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    model.to_empty(device="cpu")
    model.init_weights()
    load_wan_weights(model, checkpoint)
    expected = load_file(expected_file)
    differs = []
    for name, value in model.state_dict().items():
        full = value.full_tensor()
        if name.startswith("context_adapter."):
            continue
        if not torch.equal(full, expected[name]):
            differs.append(name)
    fusion_zero = bool(model.context_adapter.fusion.weight.full_tensor().abs().max() == 0)
    return {"rank": dist.get_rank(), "differs": differs, "fusion_zero": fusion_zero}
