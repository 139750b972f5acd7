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


def _device_snapshot(tracker: Any, kind: str) -> dict[str, int]:
    snap = tracker.get_tracker_snapshot(kind).get(FAKE_DEVICE, {})
    return {str(getattr(k, "value", k)): int(v) for k, v in snap.items()}


def _reset_peak(tracker: Any) -> None:
    """Start a new phase: the tracker's peak becomes what is alive now."""
    import copy

    tracker._peak_mem_snap = copy.deepcopy(tracker._curr_mem_snap)
    tracker._peak_mem = {dev: snap["Total"] for dev, snap in tracker._peak_mem_snap.items()}


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

    from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker

    from trainer.model import get_config
    from trainer.train import lr_factor, micro_batch_loss, optimizer_step

    overrides: dict[str, Any] = {"residual_dtype": config.parallel.residual_dtype}
    if num_layers is not None:
        overrides["num_layers"] = num_layers
    model_config = get_config(config.model, **overrides)
    optim = config.optim
    start = time.perf_counter()
    with fake_world(world_size, config.parallel.sequence_parallel) as runtime:
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
        tracker = FSDPMemTracker(model, optimizer)
        tracker.track_inputs(tuple(batches))
        result = StepTrace(model_config.num_layers)

        def record(phase: str) -> None:
            snap = _device_snapshot(tracker, "peak")
            if snap.get("Total", 0) >= result.phases.get(phase, 0):
                result.phases[phase] = snap.get("Total", 0)
                result.breakdown[phase] = snap

        with tracker:
            # two optimizer steps, the second recorded: AdamW makes its state in the first (as torchtitan)
            for step in range(2):
                for micro, batch in enumerate(batches):
                    tracker.reset_mod_stats()  # its per-module stats allow one forward per module
                    _reset_peak(tracker)
                    loss = micro_batch_loss(model, batch, config, runtime, step, micro)
                    if step:
                        record("forward")
                        result.forward_end = max(
                            result.forward_end, _device_snapshot(tracker, "current")["Total"]
                        )
                    _reset_peak(tracker)
                    (loss / config.grad_accum).backward()
                    del loss
                    if step:
                        record("backward")
                _reset_peak(tracker)
                optimizer_step(model, optimizer, scheduler, optim.grad_clip)
                if step:
                    record("optimizer step")
        del model, optimizer, scheduler, batches
    result.seconds = time.perf_counter() - start
    return result
