"""Distributed set-up and the parallel plan: FSDP2 per block and at the root, activation checkpointing per block
(optionally with its saved inputs offloaded to host memory), and the data-parallel x sequence-parallel mesh.

The plan is data (:class:`ParallelPlan`: which modules are sharding units and which are re-computed in the
backward) applied by one function, :func:`apply_parallel`. Launch with ``torchrun`` on one node or many; a
plain ``python`` process becomes a 1-rank group, so a CPU run and an 8-GPU run take the same code path
(FSDP2, DCP checkpoints) and differ only in the launcher.

The device mesh is 2-D, ``(dp, sp)`` with ``sp = train.parallel.sequence_parallel``: the ranks of one ``sp``
row (consecutive ranks, so one node's NVLink carries the all-to-alls) share one sample and split its tokens
(Ulysses, ``trainer.model.SequenceParallel``); the ``dp`` rows get different samples. FSDP2 shards the
parameters over the flattened mesh, all ``dp x sp`` ranks (as torchtitan's ``dp_shard_cp``).

    torchrun --nproc-per-node 8 -m trainer.cli fit manifests/train_mive_14b.toml            # one node
    torchrun --nnodes 4 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
        -m trainer.cli fit manifests/train_mive_14b.toml                                 # four nodes
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from dataclasses import dataclass
from typing import Any

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
    sequence_parallel: int = 1
    """Ranks that share one sample and split its tokens (Ulysses); 1 = off. Must divide the number of
    processes and the model's attention heads (Wan: 40, so 2, 4, 5, 8 or 10). Data-parallel replicas =
    processes / this: keep the global batch with ``train.grad_accum``. ``trainer plan`` says which fits."""
    residual_dtype: str = "float32"
    """Dtype of the blocks' norms, modulation and residual adds (``trainer.model.MiVEConfig.residual_dtype``):
    ``float32`` (Wan's numerics) or ``bfloat16`` (fewer bytes kept per token; see docs/training.md)."""
    offload_activations: bool = False
    """Keep each checkpointed block's saved input in pinned host memory between the forward and its
    backward (``torch.autograd.graph.save_on_cpu``); needs ``activation_checkpointing``."""
    compile_blocks: bool = False
    """``torch.compile`` each block's forward (regional compilation: the 40 Wan blocks share one compiled
    graph per input shape; checkpointing and FSDP2 hooks stay eager around it). Costs a compile per new
    sequence length (each bucket) at start-up; see docs/training.md."""

    def __post_init__(self) -> None:
        if self.sequence_parallel < 1:
            raise ValueError(f"train.parallel.sequence_parallel must be >= 1, got {self.sequence_parallel}")
        if self.residual_dtype not in ("float32", "bfloat16"):
            raise ValueError(
                f"train.parallel.residual_dtype {self.residual_dtype!r} is not one of ['bfloat16', 'float32']"
            )
        if self.offload_activations and not self.activation_checkpointing:
            raise ValueError(
                "train.parallel.offload_activations offloads the inputs activation checkpointing keeps: "
                "turn on train.parallel.activation_checkpointing too"
            )


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
    """Where this process runs: its rank, the device, the (dp, sp) mesh and this rank's place in it."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    mesh: Any  # torch.distributed.device_mesh.DeviceMesh, 2-D: ("dp", "sp")
    fsdp_mesh: Any  # the mesh flattened to 1-D ("dp_sp"): what FSDP2 shards over
    sp: Any = None  # trainer.model.SequenceParallel over this rank's "sp" row; None without SP

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def sp_size(self) -> int:
        return self.mesh.size(1)

    @property
    def dp_size(self) -> int:
        """Data-parallel replicas: groups of ``sp_size`` ranks that each train on their own samples."""
        return self.mesh.size(0)

    @property
    def dp_rank(self) -> int:
        """This rank's replica: which slice of every global batch it (and its SP group) trains on."""
        return self.mesh.get_local_rank(0)


def init_distributed(config: ParallelConfig) -> Runtime:
    """Join the ``torchrun`` process group (``RANK``/``WORLD_SIZE`` set), or make a 1-rank group otherwise,
    and build the ``(dp, sp)`` mesh."""

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
    mesh, fsdp_mesh, sp = build_mesh(device.type, world_size, config.sequence_parallel)
    return Runtime(rank, local_rank, world_size, device, mesh, fsdp_mesh, sp)


def build_mesh(device_type: str, world_size: int, sequence_parallel: int) -> tuple[Any, Any, Any]:
    """The ``(dp, sp)`` device mesh of all ranks, its 1-D flattening for FSDP2, and this rank's
    ``SequenceParallel`` (None when ``sequence_parallel`` is 1). Rank = dp_rank * sp + sp_rank."""
    from torch.distributed.device_mesh import init_device_mesh

    from trainer.model import SequenceParallel

    if world_size % sequence_parallel:
        raise ValueError(
            f"train.parallel.sequence_parallel = {sequence_parallel} must divide the number of processes "
            f"({world_size}): launch a multiple of it (torchrun --nproc-per-node)"
        )
    mesh = init_device_mesh(
        device_type, (world_size // sequence_parallel, sequence_parallel), mesh_dim_names=("dp", "sp")
    )
    fsdp_mesh = mesh._flatten("dp_sp")  # torchtitan's dp_shard_cp: shard over every rank
    sp = SequenceParallel(mesh.get_group("sp")) if sequence_parallel > 1 else None
    return mesh, fsdp_mesh, sp


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


def broadcast_tensors(
    tensors: list[torch.Tensor] | None, device: torch.device, src: int = 0
) -> list[torch.Tensor]:
    """Rank ``src``'s ``tensors`` on every rank (on ``device``); the others pass None. Shapes and dtypes go
    first as a small object broadcast between our own ranks, then each tensor."""
    meta = [[(tuple(t.shape), str(t.dtype).removeprefix("torch.")) for t in tensors] if tensors else None]
    dist.broadcast_object_list(meta, src=src)
    out = []
    for index, (shape, dtype) in enumerate(meta[0]):
        tensor = (
            tensors[index].to(device).contiguous()
            if dist.get_rank() == src
            else torch.empty(shape, dtype=getattr(torch, dtype), device=device)
        )
        dist.broadcast(tensor, src=src)
        out.append(tensor)
    return out


def sample_check_group(runtime: Runtime) -> dist.ProcessGroup | None:
    """A host-side (gloo) process group over this rank's sequence-parallel row, for
    :func:`check_same_samples`; None without SP. With NCCL the rows get gloo groups of their own (every rank
    makes every row's group, in order, as ``new_group`` requires), so the check never touches the GPU."""
    if runtime.sp is None:
        return None
    if dist.get_backend(runtime.sp.group) == "gloo":
        return runtime.sp.group
    size, mine = runtime.sp_size, None
    for start in range(0, runtime.world_size, size):  # rank = dp_rank * sp + sp_rank: rows are consecutive
        group = dist.new_group(list(range(start, start + size)), backend="gloo")
        if start <= runtime.rank < start + size:
            mine = group
    return mine


def check_same_samples(group: dist.ProcessGroup | None, keys: list[str], where: str) -> None:
    """Stop unless every rank of this sequence-parallel group holds the micro-batch ``keys`` (sample keys, in
    order): a digest of them is all-gathered on the host (8 bytes per rank, no device work) when the batch is
    built, before the forward. Every rank of the group sees the same digests, so all of them raise."""
    if group is None:
        return
    from trainer.data import batch_digest

    mine = torch.tensor([batch_digest(keys)], dtype=torch.int64)
    gathered = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
    dist.all_gather(gathered, mine, group=group)
    if any(not torch.equal(other, gathered[0]) for other in gathered):
        raise RuntimeError(
            f"{where}: the ranks of a sequence-parallel group hold different samples (this rank: {keys[:4]}; "
            f"digests {[int(g) for g in gathered]}): every rank of a group must read the same micro-batches "
            "(the loader takes the data-parallel rank and count, never the process rank)"
        )


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


def apply_activation_offload(model: nn.Module, patterns: tuple[str, ...]) -> int:
    """Move what each matching (checkpointed) module saves for its backward, its inputs, to host memory.

    Activation checkpointing saves a module's inputs through autograd's saved-tensor hooks just before the
    module runs; a ``torch.autograd.graph.save_on_cpu`` context entered by a forward pre-hook that runs
    before checkpointing's own (prepended) catches them: they are copied to pinned host memory and back to
    the device when the backward recomputes the module. Not during that recomputation (the checkpoint
    disables its own hooks then, and so does this one). Call after :func:`apply_activation_checkpointing`.
    """
    from torch.distributed._composable import checkpoint

    units = _matching(model, patterns)
    pin = torch.cuda.is_available()

    def enter(module: nn.Module, args: tuple, kwargs: dict) -> None:
        if checkpoint.state(module).enable_hook:  # False while the backward recomputes the module
            stack = contextlib.ExitStack()
            stack.enter_context(torch.autograd.graph.save_on_cpu(pin_memory=pin))
            module._offload_context = stack

    def leave(module: nn.Module, args: tuple, output: Any) -> None:
        stack = module.__dict__.pop("_offload_context", None)
        if stack is not None:
            stack.close()

    for _, module in units:
        module.register_forward_pre_hook(enter, prepend=True, with_kwargs=True)
        module.register_forward_hook(leave, always_call=True)
    return len(units)


def apply_compile(model: nn.Module, patterns: tuple[str, ...]) -> int:
    """Replace each matching module's ``forward`` by its ``torch.compile`` (inductor); returns how many.

    Only the block's own computation is compiled: the hooks of activation checkpointing and FSDP2 run in
    ``Module.__call__``, outside it, so sharding, recomputation and parameter names are unchanged. Every
    block compiles the same code: after the first, the others reuse its cache entry (their parameters are
    graph inputs)."""
    units = _matching(model, patterns)
    for _, module in units:
        module.forward = torch.compile(module.forward)
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
    if config.compile_blocks:
        apply_compile(model, plan.checkpoint_units)
    if config.activation_checkpointing:
        num_checkpointed = apply_activation_checkpointing(model, plan.checkpoint_units)
        if num_checkpointed == 0:
            raise ValueError(f"activation checkpointing: no module matches {plan.checkpoint_units}")
        if config.offload_activations:
            apply_activation_offload(model, plan.checkpoint_units)
    policy = MixedPrecisionPolicy(
        param_dtype=DTYPES[config.param_dtype], reduce_dtype=DTYPES[config.reduce_dtype]
    )
    units = _matching(model, plan.shard_units)
    if not units:
        raise ValueError(f"FSDP plan: no module matches {plan.shard_units}")
    for index, (_, module) in enumerate(units):
        # the last block is all-gathered again at once by the backward: keeping it avoids a useless re-gather
        reshard = config.reshard_after_forward and index < len(units) - 1
        fully_shard(module, mesh=runtime.fsdp_mesh, mp_policy=policy, reshard_after_forward=reshard)
    fully_shard(
        model, mesh=runtime.fsdp_mesh, mp_policy=policy, reshard_after_forward=config.reshard_after_forward
    )
    if runtime.is_main:
        logger.info(
            "FSDP2 over %d rank(s) (%d data-parallel x %d sequence-parallel): %d block units + root, params %s, "
            "reduce %s, activation checkpointing %s%s, residual %s%s",
            runtime.world_size,
            runtime.dp_size,
            runtime.sp_size,
            len(units),
            config.param_dtype,
            config.reduce_dtype,
            "on" if config.activation_checkpointing else "off",
            " (inputs offloaded to host)" if config.offload_activations else "",
            config.residual_dtype,
            ", blocks compiled" if config.compile_blocks else "",
        )
    return model
