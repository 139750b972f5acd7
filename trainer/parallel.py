"""Distributed set-up and the parallel plan: FSDP2 per block and at the root, activation checkpointing per block.

The plan is data (:class:`ParallelPlan`: which modules are sharding units and which are re-computed in the
backward) applied by one function, :func:`apply_parallel`. Launch with ``torchrun`` on one node or many; a
plain ``python`` process becomes a 1-rank group, so a CPU run and an 8-GPU run take the same code path
(FSDP2, DCP checkpoints) and differ only in the launcher.

    torchrun --nproc-per-node 8 -m trainer.cli fit manifests/train_mive_14b.toml            # one node
    torchrun --nnodes 4 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
        -m trainer.cli fit manifests/train_mive_14b.toml                                 # four nodes
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

logger = logging.getLogger(__name__)

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}


@dataclass
class ParallelConfig:
    """The ``[train.parallel]`` recipe table."""

    param_dtype: str = "bfloat16"
    """Dtype FSDP2 all-gathers parameters in and computes with (``bfloat16``; ``float32`` for exact CPU tests).
    The sharded master parameters and the optimizer state stay float32."""
    reduce_dtype: str = "float32"
    """Dtype of the gradient reduce-scatter (float32, as the paper's recipe)."""
    activation_checkpointing: bool = True
    """Recompute each block's activations in the backward instead of keeping them (needed at 720P x 81 frames)."""
    reshard_after_forward: bool = True
    """Free the gathered block parameters after its forward (ZeRO-3); off keeps them until the backward."""
    backend: str = "auto"
    """``torch.distributed`` backend: ``auto`` is nccl with CUDA, gloo without."""


@dataclass(frozen=True)
class ParallelPlan:
    """Which submodules (patterns over ``named_modules`` names, ``*`` = one name component) are units of what.

    The root module is always the last FSDP unit: it holds what no block does (embeddings, adapter, head).
    """

    shard_units: tuple[str, ...] = ("blocks.*",)
    """Modules wrapped with ``fully_shard`` (one all-gather / reduce-scatter each)."""
    checkpoint_units: tuple[str, ...] = ("blocks.*",)
    """Modules whose activations are recomputed in the backward (when checkpointing is on)."""


MIVE_PLAN = ParallelPlan()
"""The MiVE DiT: every transformer block in ``model.blocks`` is one sharding and one checkpointing unit."""


@dataclass
class Runtime:
    """Where this process runs: its rank, the device and the data-parallel mesh."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    mesh: object  # torch.distributed.device_mesh.DeviceMesh

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(config: ParallelConfig) -> Runtime:
    """Join the ``torchrun`` process group (``RANK``/``WORLD_SIZE`` set), or make a 1-rank group otherwise."""
    from torch.distributed.device_mesh import init_device_mesh

    use_cuda = torch.cuda.is_available()
    backend = config.backend if config.backend != "auto" else ("nccl" if use_cuda else "gloo")
    launched = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        if launched:
            dist.init_process_group(backend, device_id=device if use_cuda else None)
        else:
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    mesh = init_device_mesh(device.type, (world_size,), mesh_dim_names=("dp_shard",))
    return Runtime(rank=rank, local_rank=local_rank, world_size=world_size, device=device, mesh=mesh)


def shutdown_distributed(synchronize: bool = True) -> None:
    """Leave the process group.

    With ``synchronize`` the ranks first wait for each other, so that no rank tears down its gloo/NCCL
    connections while a peer still uses them (a rank then aborts: "terminate called without an active
    exception"). After an error pass ``synchronize=False``: a failed peer may never reach the barrier.
    """
    if dist.is_initialized():
        if synchronize and dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()


def _pattern(pattern: str) -> re.Pattern[str]:
    # ``*`` stands for one name component (``blocks.*`` matches ``blocks.3``, not ``blocks.3.attn``)
    return re.compile("[^.]+".join(re.escape(part) for part in pattern.split("*")) + "$")


def _matching(model: nn.Module, patterns: tuple[str, ...]) -> list[tuple[str, nn.Module]]:
    compiled = [_pattern(p) for p in patterns]
    return [(name, m) for name, m in model.named_modules() if name and any(c.match(name) for c in compiled)]


def apply_activation_checkpointing(model: nn.Module, patterns: tuple[str, ...]) -> int:
    """Make each matching module recompute its activations in the backward; returns how many.

    Uses the composable (hook-based, non-reentrant) ``checkpoint``: module names stay as they are, so
    state-dict keys, Wan weight loading and DCP checkpoints do not depend on whether checkpointing is on.
    """
    from torch.distributed._composable import checkpoint

    units = _matching(model, patterns)
    for _, module in units:
        checkpoint(module)
    return len(units)


def apply_parallel(
    model: nn.Module, plan: ParallelPlan, config: ParallelConfig, runtime: Runtime
) -> nn.Module:
    """Activation checkpointing, then FSDP2 ``fully_shard`` on every shard unit and at the root (in place)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if config.param_dtype not in DTYPES or config.reduce_dtype not in DTYPES:
        raise ValueError(
            f"train.parallel dtypes must be one of {sorted(DTYPES)}, got {config.param_dtype}/{config.reduce_dtype}"
        )
    if config.activation_checkpointing:
        num_checkpointed = apply_activation_checkpointing(model, plan.checkpoint_units)
        if num_checkpointed == 0:
            raise ValueError(f"activation checkpointing: no module matches {plan.checkpoint_units}")
    policy = MixedPrecisionPolicy(
        param_dtype=DTYPES[config.param_dtype], reduce_dtype=DTYPES[config.reduce_dtype]
    )
    units = _matching(model, plan.shard_units)
    if not units:
        raise ValueError(f"FSDP plan: no module matches {plan.shard_units}")
    for index, (_, module) in enumerate(units):
        # the last block is all-gathered again at once by the backward: keeping it avoids a useless re-gather
        reshard = config.reshard_after_forward and index < len(units) - 1
        fully_shard(module, mesh=runtime.mesh, mp_policy=policy, reshard_after_forward=reshard)
    fully_shard(
        model, mesh=runtime.mesh, mp_policy=policy, reshard_after_forward=config.reshard_after_forward
    )
    if runtime.is_main:
        logger.info(
            "FSDP2 over %d rank(s): %d block units + root, params %s, reduce %s, activation checkpointing %s",
            runtime.world_size,
            len(units),
            config.param_dtype,
            config.reduce_dtype,
            "on" if config.activation_checkpointing else "off",
        )
    return model
