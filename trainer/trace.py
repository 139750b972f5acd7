"""Real size without a GPU: run the trainer's own code at the real size on fake tensors.

``FakeTensorMode`` tensors have shapes, dtypes and devices but no storage; a fake process group
(``torch.testing._internal.distributed.fake_pg``, backend "fake") of any world size stands in for the node:
its collectives return at once with the right shapes. The model is built on the meta device, sharded by the
real :func:`trainer.parallel.apply_parallel` (FSDP2, sequence parallelism, activation checkpointing and its
offload) and run by the real step functions of ``trainer/train.py``; ``FSDPMemTracker`` (PyTorch's
``torch.distributed._tools.fsdp2_mem_tracker``) counts every storage the step allocates and frees, by
category (sharded / unsharded parameters, gradients, optimizer state, activations, temporaries, collective
buffers). torchtitan's ``scripts/estimate/estimation.py`` does the same for its language models.

The fake tensors live on the CPU device: a "cuda" device mesh needs a driver, and FSDP2 allocates its
buffers on the mesh's device type. Sizes do not depend on the device; the one thing that does is which
SDPA kernel runs, and on the CPU it is the fused flash kernel (no L x L matrix), as on the GPU.

Reuse: :func:`fake_world` (a fake process group of a given size, its ``(dp, sp)`` mesh and the fake mode)
and :func:`meta_model` (the model of a config on the meta device, in a dtype) are the pieces any trace
needs; :func:`trace_training_step` is the one of ``trainer plan --trace``.

A trace fails where the code reads a tensor's value in Python (``.item()``, ``bool(t)``, ``.tolist()``):
there is no value. That is what the training step must not do anyway (each such read makes the GPU wait).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

if TYPE_CHECKING:
    from trainer.model import MiVEConfig, MiVETransformer
    from trainer.parallel import ParallelConfig, Runtime
    from trainer.train import TrainConfig

GIB = 2**30
FAKE_DEVICE = torch.device("cpu")


@contextlib.contextmanager
def fake_world(world_size: int, sequence_parallel: int = 1) -> Iterator[Runtime]:
    """This process as rank 0 of a fake process group of ``world_size`` ranks, with the trainer's
    ``(dp, sp)`` mesh, inside a ``FakeTensorMode``: yields the :class:`trainer.parallel.Runtime` the real code
    takes. Every tensor made inside is fake (no memory); leaving destroys the process group.

    The mesh is made before entering the fake mode (it needs real tensors), on the CPU."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from trainer.parallel import Runtime, build_mesh

    if dist.is_initialized():
        raise RuntimeError(
            "fake_world needs a process without a process group (it makes a fake one): run the trace in a "
            "fresh process, not inside a torchrun or trainer fit process"
        )
    if world_size < 1 or world_size % sequence_parallel:
        raise ValueError(
            f"sequence parallelism {sequence_parallel} must divide the world size {world_size} (>= 1)"
        )
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world_size)
    try:
        mesh, fsdp_mesh, sp = build_mesh(FAKE_DEVICE.type, world_size, sequence_parallel)
        runtime = Runtime(0, 0, world_size, FAKE_DEVICE, mesh, fsdp_mesh, sp)
        with FakeTensorMode(), _separate_sharding_propagation():
            yield runtime
    finally:
        dist.destroy_process_group()


@contextlib.contextmanager
def _separate_sharding_propagation() -> Iterator[None]:
    """DTensor works out an op's output shape by running it on global-shape fake tensors, in the active fake
    mode when there is one: ours. ``FSDPMemTracker`` tells those runs from the real local ops by their fake
    mode, so in ours it counted them as memory (a gradient norm then "allocated" the whole unsharded gradient,
    8x its shard on 8 ranks). Here they get a fake mode of their own, as they do outside a trace."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed.tensor import _sharding_prop

    own = FakeTensorMode()
    original = _sharding_prop.detect_fake_mode
    _sharding_prop.detect_fake_mode = lambda *args, **kwargs: own
    try:
        yield
    finally:
        _sharding_prop.detect_fake_mode = original


def meta_model(config: MiVEConfig, dtype: torch.dtype | None = None) -> MiVETransformer:
    """The model of ``config`` on the meta device (no memory, no init), its parameters in ``dtype``
    (float32 by default: the trainer's master weights). Built in the dtype: ``.to(dtype)`` of a meta model
    inside a fake mode fails."""
    from trainer.model import MiVETransformer

    previous = torch.get_default_dtype()
    try:
        if dtype is not None:
            torch.set_default_dtype(dtype)
        with torch.device("meta"):
            return MiVETransformer(config)
    finally:
        torch.set_default_dtype(previous)


def sharded_fake_model(config: MiVEConfig, parallel: ParallelConfig, runtime: Runtime) -> MiVETransformer:
    """Inside :func:`fake_world`: the model on meta, sharded by the trainer's own ``apply_parallel``, its
    local shards allocated as fake tensors (values are never read)."""
    from trainer.parallel import MIVE_PLAN, apply_parallel

    model = meta_model(config)
    apply_parallel(model, MIVE_PLAN, parallel, runtime)
    model.to_empty(device=runtime.device)
    return model


# ---------------------------------------------------------------------------------------------------
# One training step at real size
# ---------------------------------------------------------------------------------------------------

TRACE_PHASES = ("forward", "backward", "optimizer step")
# FSDPMemTracker's reference types, grouped as the plan's categories
CATEGORIES = {
    "parameters": ("Sharded Param", "Unsharded Param", "Buffer"),
    "optimizer state": ("OptState",),
    "gradients": ("Sharded Grad", "Unsharded Grad"),
    "activations": ("Activation", "Inputs"),
    "temporaries": ("Temp", "All Gather", "Reduce Scatter"),
}


@dataclass
class StepTrace:
    """Peak tensor bytes of one training step on rank 0 of the fake world, per phase, with the tracker's
    breakdown (its reference types) at each phase's peak."""

    num_layers: int
    phases: dict[str, int] = field(default_factory=dict)  # peak bytes while the phase ran
    breakdown: dict[str, dict[str, int]] = field(default_factory=dict)  # phase -> reference type -> bytes
    forward_end: int = 0  # bytes alive when a micro-batch's loss is computed (the largest over micro-batches)
    start: int = 0  # bytes alive when tracking began (parameters, inputs)
    host: int = 0  # bytes offloaded to host memory by one micro-batch's forward (offload_activations)
    seconds: float = 0.0

    @property
    def peak(self) -> int:
        return max(self.phases.values())

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=self.phases.__getitem__)

    def categories(self, phase: str | None = None) -> dict[str, int]:
        """The plan's categories at a phase's peak (the step's peak by default)."""
        snap = self.breakdown[phase or self.peak_phase]
        return {name: sum(snap.get(k, 0) for k in kinds) for name, kinds in CATEGORIES.items()}


def fake_batch(
    config: MiVEConfig,
    latent_shape: tuple[int, int, int],
    num_condition: int,
    batch: int,
    device: torch.device,
) -> dict[str, Any]:
    """A micro-batch as ``trainer.data.collate`` makes it (bf16 latents and VLM states), of fake tensors."""
    frames, height, width = latent_shape
    channels, bf16 = config.latent_channels, torch.bfloat16
    return {
        "target_latents": torch.empty(batch, channels, frames, height, width, dtype=bf16, device=device),
        "source_latents": torch.empty(batch, channels, frames, height, width, dtype=bf16, device=device),
        "reference_latents": torch.empty(batch, channels, 1, height, width, dtype=bf16, device=device),
        "vlm_first": torch.empty(batch, num_condition, config.vlm_dim, dtype=bf16, device=device),
        "vlm_last": torch.empty(batch, num_condition, config.vlm_dim, dtype=bf16, device=device),
        "vlm_mask": torch.ones(batch, num_condition, dtype=torch.bool, device=device),
        "vlm_lengths": [num_condition] * batch,
        "keys": [f"trace/{i}" for i in range(batch)],
    }


def _device_snapshot(tracker: Any, kind: str, device: torch.device = FAKE_DEVICE) -> dict[str, int]:
    snap = tracker.get_tracker_snapshot(kind).get(device, {})
    return {str(getattr(k, "value", k)): int(v) for k, v in snap.items()}


def _reset_peak(tracker: Any) -> None:
    """Start a new phase: the tracker's peak becomes what is alive now."""
    import copy

    tracker._peak_mem_snap = copy.deepcopy(tracker._curr_mem_snap)
    tracker._peak_mem = {dev: snap["Total"] for dev, snap in tracker._peak_mem_snap.items()}


class _HostStandIn(torch.autograd.graph.saved_tensors_hooks):
    """``torch.autograd.graph.save_on_cpu`` inside a trace. The fake tensors are on the CPU already, where
    ``save_on_cpu`` keeps the tensor itself: nothing would leave the device. This keeps only the shape and
    dtype of each saved tensor (its bytes are added to ``packed_bytes``: the host memory) and hands the
    backward a new tensor on the device, as ``save_on_cpu``'s copy back does."""

    packed_bytes = 0

    def __init__(self, pin_memory: bool = False, device_type: str = "cuda") -> None:
        def pack(tensor: torch.Tensor) -> tuple[torch.device, torch.Size, torch.dtype]:
            _HostStandIn.packed_bytes += tensor.numel() * tensor.element_size()
            return tensor.device, tensor.shape, tensor.dtype

        def unpack(packed: tuple[torch.device, torch.Size, torch.dtype]) -> torch.Tensor:
            device, shape, dtype = packed
            return torch.empty(shape, dtype=dtype, device=device)

        super().__init__(pack, unpack)


@contextlib.contextmanager
def _offload_stand_in() -> Iterator[None]:
    original = torch.autograd.graph.save_on_cpu
    torch.autograd.graph.save_on_cpu = _HostStandIn
    try:
        yield
    finally:
        torch.autograd.graph.save_on_cpu = original


def track_steps(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    batches: list[dict[str, Any]],
    config: TrainConfig,
    runtime: Runtime,
) -> StepTrace:
    """Two optimizer steps over ``batches`` (one per micro-batch) through ``trainer.train``'s
    ``micro_batch_loss`` and ``optimizer_step``, the second tracked by ``FSDPMemTracker`` per phase (AdamW
    makes its state in the first, as torchtitan's estimation does). Fake or real tensors alike."""
    from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker

    from trainer.train import micro_batch_loss, optimizer_step

    tracker = FSDPMemTracker(model, optimizer)
    tracker.track_inputs(tuple(batches))
    result = StepTrace(len(model.blocks))
    device = runtime.device

    def record(phase: str) -> None:
        snap = _device_snapshot(tracker, "peak", device)
        if snap.get("Total", 0) >= result.phases.get(phase, 0):
            result.phases[phase] = snap.get("Total", 0)
            result.breakdown[phase] = snap

    with tracker:
        result.start = _device_snapshot(tracker, "current", device).get("Total", 0)
        for step in range(2):
            for micro, batch in enumerate(batches):
                tracker.reset_mod_stats()  # its per-module stats allow one forward per module
                _reset_peak(tracker)
                _HostStandIn.packed_bytes = 0
                loss = micro_batch_loss(model, batch, config, runtime, step, micro)
                if step:
                    result.host = max(result.host, _HostStandIn.packed_bytes)
                    record("forward")
                    now = _device_snapshot(tracker, "current", device).get("Total", 0)
                    result.forward_end = max(result.forward_end, now)
                _reset_peak(tracker)
                (loss / config.grad_accum).backward()
                del loss
                if step:
                    record("backward")
            _reset_peak(tracker)
            optimizer_step(model, optimizer, scheduler, config.optim.grad_clip)
            if step:
                record("optimizer step")
    return result


def trace_training_step(
    config: TrainConfig,
    latent_shape: tuple[int, int, int],
    num_condition: int,
    world_size: int,
    num_layers: int | None = None,
) -> StepTrace:
    """Run one optimizer step of ``config`` (its model, ``[train.parallel]``, micro-batch and accumulation) on
    rank 0 of a fake world of ``world_size`` ranks, through ``trainer.train``'s own ``micro_batch_loss`` and
    ``optimizer_step``, and track its memory. ``num_layers`` traces a model of that many blocks at the
    config's width (the time grows with the blocks; the memory is linear in them, see :func:`extrapolate`).
    """
    import time

    from trainer.model import get_config
    from trainer.train import lr_factor

    overrides: dict[str, Any] = {"residual_dtype": config.parallel.residual_dtype}
    if num_layers is not None:
        overrides["num_layers"] = num_layers
    model_config = get_config(config.model, **overrides)
    optim = config.optim
    start = time.perf_counter()
    with fake_world(world_size, config.parallel.sequence_parallel) as runtime, _offload_stand_in():
        model = sharded_fake_model(model_config, config.parallel, runtime)
        model.train()
        # foreach: AdamW's default on CUDA (one temporary per state tensor at once), not its CPU default
        optimizer = torch.optim.AdamW(
            model.parameters(),
            lr=optim.lr,
            betas=optim.betas,
            eps=optim.eps,
            weight_decay=optim.weight_decay,
            foreach=True,
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, optim, config.steps))
        batches = [
            fake_batch(model_config, latent_shape, num_condition, config.data.batch_size, runtime.device)
            for _ in range(config.grad_accum)
        ]
        result = track_steps(model, optimizer, scheduler, batches, config, runtime)
        del model, optimizer, scheduler, batches
    result.seconds = time.perf_counter() - start
    return result


# ---------------------------------------------------------------------------------------------------
# Beside the plan: ``trainer plan --trace``
# ---------------------------------------------------------------------------------------------------

TRACE_BLOCKS = (3, 4)  # traced models of this many blocks at the recipe's width; 40 blocks are extrapolated


@dataclass
class TraceReport:
    """The step's memory per phase at the recipe's depth, extrapolated from two traced depths."""

    num_layers: int
    traced: tuple[StepTrace, StepTrace]
    phases: dict[str, int]  # "forward end", "forward", "backward", "optimizer step" -> bytes
    categories: dict[str, int]  # at the peak phase

    @property
    def peak(self) -> int:
        return max(self.phases.values())


def _linear(a: int, b: int, la: int, lb: int, layers: int) -> int:
    """The value at ``layers`` blocks of a quantity that is a at la blocks and b at lb: per block (b - a) /
    (lb - la). Sharded state and kept block inputs grow by a block each; the rest does not change."""
    if la == lb:
        return b
    return round(b + (b - a) * (layers - lb) / (lb - la))


def trace_report(
    config: TrainConfig,
    latent_shape: tuple[int, int, int],
    num_condition: int,
    world_size: int,
    blocks: tuple[int, int] = TRACE_BLOCKS,
) -> TraceReport:
    """Trace the step at two depths (``blocks``) and extrapolate every phase and category per block to the
    model's own depth (exact when the depth is one of them)."""
    from trainer.model import get_config

    layers = get_config(config.model).num_layers
    if layers <= max(blocks):  # a small model: traced at its own depth, nothing extrapolated
        blocks = (layers, layers)
        first = second = trace_training_step(config, latent_shape, num_condition, world_size)
    else:
        first, second = (
            trace_training_step(config, latent_shape, num_condition, world_size, n) for n in blocks
        )
    la, lb = blocks

    def at(a: int, b: int) -> int:
        return _linear(a, b, la, lb, layers)

    phases = {"forward end": at(first.forward_end, second.forward_end)}
    for phase in TRACE_PHASES:
        phases[phase] = at(first.phases[phase], second.phases[phase])
    peak_phase = max(TRACE_PHASES, key=phases.__getitem__)
    ca, cb = first.categories(peak_phase), second.categories(peak_phase)
    categories = {name: at(ca[name], cb[name]) for name in CATEGORIES}
    return TraceReport(layers, (first, second), phases, categories)


def plan_phases(memory: Any) -> dict[str, int]:
    """The plan's tensor bytes on the trace's phases (its two backward moments are one phase here)."""
    p = memory.phases
    return {
        "forward end": p["forward end"],
        "backward": max(v for k, v in p.items() if k.startswith("backward")),
        "optimizer step": p["optimizer step"],
    }


def _size(num_bytes: float) -> str:
    return f"{num_bytes / GIB:.2f} GiB" if num_bytes >= GIB else f"{num_bytes / 2**20:.1f} MiB"


def format_trace(report: TraceReport, memory: Any, world_size: int) -> str:
    """The trace beside the plan's figures (``memory``: the plan's ``MemoryEstimate``)."""
    planned = plan_phases(memory)
    a, b = report.traced
    lines = [
        "",
        f"Trace: one optimizer step of the real code (trainer.train.micro_batch_loss, optimizer_step) on fake CPU "
        f"tensors, rank 0 of a fake process group of {world_size}, FSDPMemTracker (tensors only, no reserved)",
        f"  traced at {a.num_layers} and {b.num_layers} blocks of the recipe's width ({a.seconds:.0f} s + "
        f"{b.seconds:.0f} s), extrapolated per block to {report.num_layers}"
        if report.num_layers not in (a.num_layers, b.num_layers)
        else f"  traced at the model's own {report.num_layers} blocks",
        f"  {'phase':<16}{'trace':>12}{'plan':>12}{'difference':>12}",
    ]
    for phase, value in planned.items():
        traced = report.phases[phase]
        lines.append(f"  {phase:<16}{_size(traced):>12}{_size(value):>12}{(value - traced) / traced:>+12.1%}")
    lines.append(f"  {'forward (peak)':<16}{_size(report.phases['forward']):>12}{'':>12}   inside a block")
    peak_phase = max(TRACE_PHASES, key=report.phases.__getitem__)
    lines.append(
        f"  at the trace's peak ({peak_phase}): "
        + ", ".join(f"{name} {_size(value)}" for name, value in report.categories.items())
    )
    plan_peak = memory.tensors
    lines.append(
        f"trace: peak {_size(report.peak)}, plan {_size(plan_peak)}, difference "
        f"{(plan_peak - report.peak) / report.peak:+.1%}"
    )
    return "\n".join(lines)
