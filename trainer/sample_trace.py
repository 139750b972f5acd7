"""``trainer sample-trace``: sampling at real size without a GPU, on fake tensors, per rank.

    trainer sample-trace                                   # mive_14b, 81 x 720 x 1280, SP 1 and 2
    trainer sample-trace --sequence-parallel 1,2,4,8 --frames 81 --height 720 --width 1280

What runs is ``trainer sample``'s own code for the DiT, at the real size, on ``FakeTensorMode`` tensors
(shapes, no storage) and, under sequence parallelism, a fake process group of that many ranks
(``torch.testing._internal.distributed.fake_pg``), once as each rank:

1. **load**: the model built on the meta device in the sampling dtype (:func:`trainer.sample.meta_model`),
   its parameters allocated on the device (``to_empty``), then :func:`trainer.sample.fill_model` copies
   every tensor of the checkpoint into its place, read as the exported-folder reader reads it: one float32
   host tensor at a time, in the file's order (here a fake tensor of each parameter's shape, largest
   first: the worst case). The **host peak** is what the reader holds beyond the model's parameters.
2. **one denoising step**: :func:`trainer.flow.euler_sample` with one step at the requested clip size
   (twice the model calls with classifier-free guidance), over the SP group: the **device peak**.

PyTorch's ``torch.distributed._tools.mem_tracker.MemTracker`` counts every storage made and freed. The
fake tensors live on the CPU device (on a "cuda" fake device, scaled-dot-product attention takes the math
path, which materialises the L x L scores; the CPU takes the fused kernel, as the GPU does), so host and
device are told apart by phase, not by device: during the load the parameters are the device's and the
rest is the reader's. Not traced: the Wan VAE and the VLM, which rank 0 alone also holds
(``trainer.sample.Sampler``); the reader's own file buffer (``tests/test_sequence_parallel.py`` measures
the real reader's resident set on a wide checkpoint: one tensor at a time). See docs/sample_plan_report.md.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Annotated

import typer

GIB = 2**30
DEFAULT_CONDITION_TOKENS = 2048  # as ``trainer plan``: VLM tokens of a 720P clip with its reference


@dataclass
class SampleTrace:
    """One rank's sampling at real size: bytes at the peak of each phase."""

    rank: int
    sequence_parallel: int
    num_tokens: int  # L, the whole sequence; each rank keeps ceil(L / SP) of it
    parameters: int  # the DiT's parameter bytes on the device, in the sampling dtype
    largest_tensor: int  # bytes of the largest checkpoint tensor, float32 (what the reader holds at most)
    host_peak: int  # bytes the reader held beyond the model's parameters, at its worst moment
    device_peak: int  # parameters + one denoising step's peak
    seconds: float


def trace_sampling(
    model_name: str = "mive_14b",
    latent_shape: tuple[int, int, int] = (21, 90, 160),
    num_condition: int = DEFAULT_CONDITION_TOKENS,
    sequence_parallel: int = 1,
    rank: int = 0,
    guidance: bool = False,
    num_layers: int | None = None,
) -> SampleTrace:
    """Trace ``trainer sample``'s DiT load and one denoising step as ``rank`` of ``sequence_parallel`` ranks
    (bfloat16, as on a GPU). Run in a process without a process group (it makes a fake one)."""
    import torch
    import torch.distributed as dist
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from trainer.flow import Conditioning, euler_sample
    from trainer.model import SequenceParallel, get_config
    from trainer.sample import SamplingContext, fill_model, meta_model

    if dist.is_initialized():
        raise RuntimeError("trace_sampling makes a fake process group: run it in a process without one")
    if sequence_parallel < 1 or not 0 <= rank < sequence_parallel:
        raise ValueError(f"rank {rank} must be in [0, sequence parallelism {sequence_parallel})")
    overrides = {} if num_layers is None else {"num_layers": num_layers}
    config = get_config(model_name, **overrides)
    if config.num_heads % sequence_parallel:
        raise ValueError(
            f"sequence parallelism {sequence_parallel} must divide the {config.num_heads} heads of {model_name}"
        )
    context = SamplingContext(model_name=model_name, model=asdict(config), flow_shift=5.0, shards_recipe={})
    dtype, device = torch.bfloat16, torch.device("cpu")
    frames, height, width = latent_shape
    start = time.perf_counter()
    model = meta_model(context, dtype)  # outside the fake mode: a meta model made inside it cannot move
    shapes = sorted(((n, tuple(p.shape)) for n, p in model.state_dict().items()), key=lambda x: -_numel(x[1]))
    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=sequence_parallel)
    try:
        sp = SequenceParallel(dist.group.WORLD) if sequence_parallel > 1 else None
        with FakeTensorMode(allow_non_fake_inputs=True):
            # 1. load: parameters on the device, the checkpoint's float32 tensors through the host one by one
            with MemTracker() as tracker:
                model = model.to_empty(device=device)
                parameters = sum(p.numel() * p.element_size() for p in model.parameters())
                reader = ((name, torch.empty(shape, dtype=torch.float32)) for name, shape in shapes)
                fill_model(model, reader, "trace", model_name)
                load_peak = tracker.get_tracker_snapshot("peak")[device]["Total"]
            model.eval()  # (the tracker hooks every parameter's gradient: they keep requires_grad)

            # 2. one denoising step over the SP group
            cond = Conditioning(
                torch.empty(1, config.latent_channels, frames, height, width, dtype=dtype),
                torch.empty(1, config.latent_channels, 1, height, width, dtype=dtype),
                torch.empty(1, num_condition, config.vlm_dim, dtype=dtype),
                torch.empty(1, num_condition, config.vlm_dim, dtype=dtype),
            )
            tracker = MemTracker()
            tracker.track_external(model)
            with tracker:
                euler_sample(model, cond, 1, 5.0, 0, sp, 3.0 if guidance else 1.0)
                device_peak = tracker.get_tracker_snapshot("peak")[device]["Total"]
    finally:
        dist.destroy_process_group()
    p_t, p_h, p_w = config.patch_size
    num_tokens = num_condition + (frames + 1) * (height // p_h) * (width // p_w) // p_t
    return SampleTrace(
        rank=rank,
        sequence_parallel=sequence_parallel,
        num_tokens=num_tokens,
        parameters=parameters,
        largest_tensor=4 * _numel(shapes[0][1]),
        host_peak=load_peak - parameters,
        device_peak=device_peak,
        seconds=time.perf_counter() - start,
    )


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


def format_traces(traces: list[SampleTrace], model_name: str, latent_shape: tuple[int, int, int]) -> str:
    lines = [
        f"trainer sample at real size ({model_name}, bfloat16, latents {latent_shape}, fake tensors):",
        f"{'SP':>3} {'rank':>4} {'tokens/rank':>11} {'host peak GiB':>13} {'device peak GiB':>15} "
        f"{'params GiB':>10} {'step GiB':>8} {'s':>6}",
    ]
    for t in traces:
        per_rank = -(-t.num_tokens // t.sequence_parallel)
        lines.append(
            f"{t.sequence_parallel:>3} {t.rank:>4} {per_rank:>11,} {t.host_peak / GIB:>13.3f} "
            f"{t.device_peak / GIB:>15.2f} {t.parameters / GIB:>10.2f} "
            f"{(t.device_peak - t.parameters) / GIB:>8.2f} {t.seconds:>6.1f}"
        )
    largest = max(t.largest_tensor for t in traces)
    lines.append(
        f"host peak: the reader's float32 tensors beyond the model (largest checkpoint tensor "
        f"{largest / 2**20:,.0f} MiB); never a float32 model. Rank 0 also holds the VAE and the VLM (not traced)."
    )
    return "\n".join(lines)


def sample_trace_command(
    model: Annotated[str, typer.Option("--model", help="Model config (trainer.model.CONFIGS)")] = "mive_14b",
    sequence_parallel: Annotated[
        str, typer.Option("--sequence-parallel", help="Comma-separated SP degrees (processes of torchrun)")
    ] = "1,2",
    frames: Annotated[int, typer.Option("--frames", help="Clip frames (4n + 1)")] = 81,
    height: Annotated[int, typer.Option("--height", help="Clip height in pixels (multiple of 16)")] = 720,
    width: Annotated[int, typer.Option("--width", help="Clip width in pixels (multiple of 16)")] = 1280,
    condition_tokens: Annotated[
        int, typer.Option("--condition-tokens", help="VLM tokens (as trainer plan)")
    ] = DEFAULT_CONDITION_TOKENS,
    guidance: Annotated[
        bool, typer.Option("--guidance", help="Trace a guided step (two model calls)")
    ] = False,
) -> None:
    """Trace ``trainer sample`` at real size on fake tensors: each rank's host and device peak (no GPU needed)."""
    if (frames - 1) % 4 or height % 16 or width % 16:
        typer.echo(
            f"error: frames must be 4n + 1 and height, width multiples of 16, got {frames}x{height}x{width}"
        )
        raise typer.Exit(code=2)
    try:
        degrees = [int(d) for d in sequence_parallel.split(",")]
    except ValueError as err:
        typer.echo(f"error: --sequence-parallel {sequence_parallel!r}: give integers like 1,2,4")
        raise typer.Exit(code=2) from err
    latent_shape = (1 + (frames - 1) // 4, height // 8, width // 8)
    traces = []
    try:
        for degree in degrees:
            for rank in range(degree):
                traces.append(
                    trace_sampling(model, latent_shape, condition_tokens, degree, rank, guidance=guidance)
                )
    except ValueError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(code=2) from err
    typer.echo(format_traces(traces, model, latent_shape))
