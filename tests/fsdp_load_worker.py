"""torchrun worker for tests/test_wan_weights.py: load Wan weights into an FSDP2-sharded meta-built model (gloo, CPU).

Each rank gathers the full state dict and compares it with the reference file written by the test.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
from safetensors.torch import load_file
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from trainer.model import MiVETransformer, get_config
from trainer.parallel import shutdown_distributed
from trainer.wan_weights import load_wan_weights


def main(checkpoint: str, expected_file: str) -> None:
    dist.init_process_group("gloo")
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
    for name, value in model.state_dict().items():
        full = value.full_tensor()
        if name.startswith("context_adapter."):
            continue
        assert torch.equal(full, expected[name]), f"rank {os.environ['RANK']}: {name} differs"
    assert model.context_adapter.fusion.weight.full_tensor().abs().max() == 0
    print(f"rank {dist.get_rank()} ok", flush=True)
    shutdown_distributed()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
