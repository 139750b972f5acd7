"""torchrun worker for tests/test_sequence_parallel.py: sequence parallelism against one process, and what must
not depend on the number of processes, 4 ranks (gloo).

    torchrun --standalone --nproc-per-node 4 tests/sequence_parallel_worker.py OUT.json ARGS.json

Every rank computes the references itself, without any process group (the debug model, float32), then runs
the same computations sequence-parallel; rank 0 writes what it measured to ``OUT.json`` and the test
compares. One launch checks:

- ``sp4``: one SP group of 4 ranks (dp 1), FSDP2 over the 4; ``dp2_sp2``: 2 replicas x SP 2, FSDP2 over the
  4, each replica on its own two samples. Loss, every parameter's gradient and the grad norm against one
  process on the same samples. The samples have condition tokens padded to the batch's longest (S = 5 and
  3) and L = 5 + 18 = 23 tokens, which divides by neither 2 nor 4.
- ``no_condition``: a forward without condition tokens (L = 18 over 4 ranks: the last chunk is padding).
- ``sample``: the Euler sampler over the SP 4 group against one process.
- ``saved_bytes``: the bytes autograd saves for one block on each rank under SP 2 and SP 4, against
  ``trainer.plan.block_activation_bytes`` (float32 and bfloat16, L = 449 tokens, not divisible).
- ``world_size``: tests/world_size_worker.py's checks (the SP group's sample check, the host peak of reading a
  checkpoint for sampling), on ``ARGS.json``.
- ``wan_fsdp``: tests/fsdp_load_worker.py's check (Wan weights loaded into an FSDP2-sharded meta-built model),
  on ``ARGS.json``'s ``wan_diffusers`` folder and ``wan_expected`` file.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from tests.fsdp_load_worker import load_and_compare
from tests.world_size_worker import world_size_checks
from trainer.flow import Conditioning, euler_sample
from trainer.model import MiVEBlock, MiVETransformer, SequenceShard, get_config, rope_cos_sin
from trainer.parallel import (
    MIVE_PLAN,
    ParallelConfig,
    Runtime,
    apply_parallel,
    build_mesh,
    shutdown_distributed,
)
from trainer.plan import block_activation_bytes

CONFIG = get_config("debug", adapter_init="normal")  # normal: the condition tokens matter from the start
LENGTHS = (5, 3, 4, 2)  # condition tokens of samples 0..3; a batch pads to its longest


def samples(indices: list[int]) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """Model inputs (B = len(indices), latents (16, 2, 4, 6): 3 x 2 x 3 = 18 visual tokens) and the target."""
    per = []
    for index in indices:
        g = torch.Generator().manual_seed(100 + index)
        per.append(
            dict(
                noisy=torch.randn(16, 2, 4, 6, generator=g),
                source=torch.randn(16, 2, 4, 6, generator=g),
                reference=torch.randn(16, 1, 4, 6, generator=g),
                t=torch.rand((), generator=g) * 1000,
                first=torch.randn(LENGTHS[index], CONFIG.vlm_dim, generator=g),
                last=torch.randn(LENGTHS[index], CONFIG.vlm_dim, generator=g),
                target=torch.randn(16, 2, 4, 6, generator=g),
            )
        )
    longest = max(len(p["first"]) for p in per)

    def pad(x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, (0, 0, 0, longest - len(x)))

    mask = torch.stack([torch.arange(longest) < len(p["first"]) for p in per])
    inputs = (
        torch.stack([p["noisy"] for p in per]),
        torch.stack([p["source"] for p in per]),
        torch.stack([p["reference"] for p in per]),
        torch.stack([p["t"] for p in per]),
        torch.stack([pad(p["first"]) for p in per]),
        torch.stack([pad(p["last"]) for p in per]),
        mask,
    )
    return inputs, torch.stack([p["target"] for p in per])


def reference(indices: list[int]) -> dict:
    """Loss, gradients and grad norm of one process on ``indices`` (no process group involved)."""
    torch.manual_seed(0)
    model = MiVETransformer(CONFIG)
    inputs, target = samples(indices)
    loss = F.mse_loss(model(*inputs), target)
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads.values()]))
    return {"loss": loss.item(), "grads": grads, "grad_norm": norm.item()}


def sequence_parallel_step(runtime: Runtime, indices: list[int]) -> dict:
    """The trainer's way: FSDP2 (+ checkpointing) over all ranks, this replica's samples, SP over its row."""
    torch.manual_seed(0)
    model = MiVETransformer(CONFIG)
    apply_parallel(model, MIVE_PLAN, ParallelConfig(param_dtype="float32"), runtime)
    inputs, target = samples(indices)
    loss = F.mse_loss(model(*inputs, sp=runtime.sp), target)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf")).full_tensor()
    grads = {name: p.grad.full_tensor() for name, p in model.named_parameters()}
    losses = torch.tensor([loss.item()])
    dist.all_reduce(losses)  # the trainer's logged loss: the mean over ranks
    return {"loss": losses.item() / dist.get_world_size(), "grads": grads, "grad_norm": norm.item()}


def compare(ours: dict, ref: dict) -> dict:
    """Relative differences: loss, grad norm, and per parameter max |g - g_ref| / max |g_ref|."""
    worst, name = 0.0, ""
    for key, value in ref["grads"].items():
        scale = value.abs().max().item()
        diff = (ours["grads"][key] - value).abs().max().item() / max(scale, 1e-12)
        if diff > worst:
            worst, name = diff, key
    return {
        "loss": ours["loss"],
        "loss_ref": ref["loss"],
        "grad_norm": ours["grad_norm"],
        "grad_norm_ref": ref["grad_norm"],
        "max_grad_rel_diff": worst,
        "worst_parameter": name,
        "num_grads": len(ours["grads"]),
    }


def saved_bytes(block: MiVEBlock, shard: SequenceShard, dtype: torch.dtype) -> int:
    """Bytes of the storages autograd saves in one block's forward on this rank (parameters excluded)."""
    grid, num_condition = (5, 8, 10), 49  # L = 449
    x_full = torch.randn(2, num_condition + 400, CONFIG.dim, generator=torch.Generator().manual_seed(3))
    x = shard.take(x_full.to(dtype), dim=1).requires_grad_(True)
    cos, sin = rope_cos_sin(CONFIG, grid, num_condition, x.device)
    rope = (shard.take(cos, 0), shard.take(sin, 0))
    time_mod = torch.randn(2, 2, 6, CONFIG.dim, requires_grad=True)
    params = {p.untyped_storage().data_ptr() for p in block.parameters()}
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.untyped_storage().data_ptr() not in params:
            storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = block(x, time_mod, rope, None, shard.local_count(num_condition + 80), shard)
    del out
    return sum(storages.values())


def main(out_path: str, args_path: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    assert world == 4, "run with --nproc-per-node 4"
    results: dict = {}

    # SP 4 (one group, dp 1): samples 0 and 1 on every rank
    mesh, fsdp_mesh, sp = build_mesh("cpu", world, 4)
    sp4 = Runtime(rank, rank, world, torch.device("cpu"), mesh, fsdp_mesh, sp)
    results["sp4"] = compare(sequence_parallel_step(sp4, [0, 1]), reference([0, 1]))

    # the sampler: every rank of the group ends with the one-process latents
    torch.manual_seed(0)
    model = MiVETransformer(CONFIG).eval()
    inputs, _ = samples([2])
    cond = Conditioning(inputs[1], inputs[2], inputs[4], inputs[5])
    alone = euler_sample(model, cond, num_steps=3, shift=5.0, seed=1)
    split = euler_sample(model, cond, num_steps=3, shift=5.0, seed=1, sp=sp4.sp)
    results["sample"] = {
        "max_abs_diff": (split - alone).abs().max().item(),
        "max_abs": alone.abs().max().item(),
    }
    # classifier-free guidance through the same path: its unconditional pass is split over the group too
    guided_alone = euler_sample(model, cond, num_steps=3, shift=5.0, seed=1, guidance_scale=3.0)
    guided_split = euler_sample(model, cond, num_steps=3, shift=5.0, seed=1, sp=sp4.sp, guidance_scale=3.0)
    results["guided_sample"] = {
        "max_abs_diff": (guided_split - guided_alone).abs().max().item(),
        "max_abs": guided_alone.abs().max().item(),
        "guidance_effect": (guided_alone - alone).abs().max().item(),
    }
    with torch.no_grad():
        plain = model(*inputs[:4])  # no condition tokens: L = 18, chunks of 5, the last holds 2 padded tokens
        parallel = model(*inputs[:4], sp=sp4.sp)
    results["no_condition"] = {"max_abs_diff": (parallel - plain).abs().max().item()}

    # DP 2 x SP 2: replica r trains on samples 2r, 2r + 1; the reference is one process on all four
    mesh, fsdp_mesh, sp = build_mesh("cpu", world, 2)
    dp2_sp2 = Runtime(rank, rank, world, torch.device("cpu"), mesh, fsdp_mesh, sp)
    replica = dp2_sp2.dp_rank
    step = sequence_parallel_step(dp2_sp2, [2 * replica, 2 * replica + 1])
    results["dp2_sp2"] = compare(step, reference([0, 1, 2, 3]))
    results["dp2_sp2"]["dp_rank"] = replica

    # saved bytes per rank of one block under SP 2 and SP 4, against the plan's formula
    results["saved_bytes"] = []
    for runtime in (dp2_sp2, sp4):
        for dtype in (torch.float32, torch.bfloat16):
            torch.manual_seed(0)
            block = MiVEBlock(CONFIG).to(dtype)
            shard = SequenceShard(runtime.sp, 449)
            measured = saved_bytes(block, shard, dtype)
            predicted = block_activation_bytes(
                CONFIG, 449, 2, torch.finfo(dtype).bits // 8, 4, runtime.sp_size
            )
            results["saved_bytes"].append(
                {"sp": runtime.sp_size, "dtype": str(dtype), "measured": measured, "predicted": predicted}
            )

    args = json.loads(Path(args_path).read_text())
    results["world_size"] = world_size_checks(args)
    results["wan_fsdp"] = load_and_compare(args["wan_diffusers"], args["wan_expected"])

    gathered = [None] * world
    dist.all_gather_object(gathered, results)
    if rank == 0:
        with open(out_path, "w") as handle:
            json.dump(gathered, handle, indent=1)
    shutdown_distributed()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
