"""The fake-tensor trace (``trainer/trace.py``): the real training step at 14B width without a GPU, against
the plan's formula per phase, and the tracker against the CPU allocator on a real step.

Each trace runs ``trainer.train``'s own ``micro_batch_loss`` and ``optimizer_step`` on rank 0 of a fake process
group of 8 ranks. Three blocks of 14B width (D 5120, FFN 13824, 40 heads) are traced: the backward's peak
is in a middle block (the previous block's reduce-scatter still in flight, the next one prefetched), which
needs three. The plan is computed for the same three-block model, so nothing is extrapolated here.
"""

from __future__ import annotations

import pytest
import torch

from trainer.model import get_config
from trainer.parallel import ParallelConfig
from trainer.plan import memory_estimate, parameter_breakdown, token_shape_from_latents
from trainer.trace import plan_phases, trace_training_step
from trainer.train import TrainConfig

LATENT = (21, 90, 160)  # 81 frames at 1280x720: the 14B recipe's clip
CONDITION = 2048
TOLERANCE = 0.05  # the plan within 5% of the trace, per phase


def _plan_and_trace(parallel: ParallelConfig, grad_accum: int = 1, layers: int = 3) -> tuple[dict, dict]:
    config = TrainConfig(model="mive_14b", grad_accum=grad_accum, parallel=parallel)
    trace = trace_training_step(config, LATENT, CONDITION, world_size=8, num_layers=layers)
    model = get_config("mive_14b", num_layers=layers, residual_dtype=parallel.residual_dtype)
    shape = token_shape_from_latents(model, LATENT, CONDITION)
    memory = memory_estimate(model, parameter_breakdown(model), parallel, shape, 8, 1, grad_accum=grad_accum)
    traced = {"forward end": trace.forward_end, **trace.phases}
    return plan_phases(memory), traced | {"host": trace.host, "plan host": memory.host}


@pytest.mark.parametrize(
    ("sequence_parallel", "offload", "residual"),
    [
        pytest.param(1, False, "float32", marks=pytest.mark.slow),  # the most tokens per rank: the longest
        (2, False, "float32"),
        (4, False, "float32"),
        pytest.param(2, True, "float32", marks=pytest.mark.slow),
        # a bfloat16 residual: no float32 copies of the gradients, the feed-forward's B l F gradient is the peak
        pytest.param(1, False, "bfloat16", marks=pytest.mark.slow),
        (2, False, "bfloat16"),
        (4, False, "bfloat16"),
    ],
)
def test_plan_agrees_with_the_trace_per_phase_at_14b_width(
    sequence_parallel: int, offload: bool, residual: str
) -> None:
    parallel = ParallelConfig(
        sequence_parallel=sequence_parallel, offload_activations=offload, residual_dtype=residual
    )
    planned, traced = _plan_and_trace(parallel)
    for phase, value in planned.items():
        assert abs(value / traced[phase] - 1) < TOLERANCE, (phase, value, traced[phase])
    # the offloaded block inputs: the bytes the trace saw leave the device are the plan's host memory
    assert traced["host"] == pytest.approx(traced["plan host"], rel=0.01)
    assert (traced["host"] > 0) == offload


def test_trace_fails_on_a_host_read_in_the_step() -> None:
    """A value read in Python (``.item()``, ``bool(t)``) stops the trace: the step has none (they would make
    the GPU wait), and the trace is what would catch a new one."""
    from torch._subclasses.fake_tensor import DataDependentOutputException

    from trainer.trace import fake_world

    with fake_world(8, 2), pytest.raises(DataDependentOutputException):
        bool(torch.ones(3).all())


def test_tracker_sees_what_the_cpu_allocator_sees_on_a_real_step() -> None:
    """The debug model, a real 1-rank FSDP2 step on real CPU tensors, tracked by the same code as the trace and
    profiled by torch's CPU allocator: the tracker's peak above what was alive at its start equals the
    allocator's (within 3%: the allocator also counts small tensors autograd and the optimizer keep outside
    tensors, such as the step counters)."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    from trainer.model import MiVETransformer
    from trainer.parallel import MIVE_PLAN, apply_parallel, init_distributed, shutdown_distributed
    from trainer.trace import fake_batch, track_steps
    from trainer.train import lr_factor

    parallel = ParallelConfig(param_dtype="float32")
    config = TrainConfig(model="debug", parallel=parallel)
    runtime = init_distributed(parallel)
    try:
        torch.manual_seed(0)
        model_config = get_config("debug")
        model = MiVETransformer(model_config)
        apply_parallel(model, MIVE_PLAN, parallel, runtime)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, config.optim, 10))
        batch = fake_batch(model_config, (9, 32, 32), 64, 1, runtime.device)
        for key in ("target_latents", "source_latents", "reference_latents", "vlm_first", "vlm_last"):
            batch[key].normal_()
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            trace = track_steps(model, optimizer, scheduler, [batch], config, runtime)
    finally:
        shutdown_distributed()
    events = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        event = stack.pop()
        if event.tag == _EventType.Allocation and event.extra_fields.device.type == "cpu":
            events.append(
                (event.start_time_ns, event.extra_fields.alloc_size, event.extra_fields.total_allocated)
            )
        stack.extend(event.children)
    events.sort()
    before = events[0][2] - events[0][1]
    allocator = max(total for _, _, total in events) - before
    tracked = trace.peak - trace.start
    assert tracked > 10 * 2**20  # activations of a 2,624-token step dominate: a meaningful comparison
    assert abs(tracked / allocator - 1) < 0.03, (tracked, allocator)
