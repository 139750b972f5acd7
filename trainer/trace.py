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
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

if TYPE_CHECKING:
    from trainer.model import MiVEConfig, MiVETransformer
    from trainer.parallel import ParallelConfig, Runtime

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
        with FakeTensorMode():
            yield runtime
    finally:
        dist.destroy_process_group()


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
