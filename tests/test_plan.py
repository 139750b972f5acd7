"""``trainer plan`` against independent references: the built models' parameter counts, diffusers' Wan
transformer, the storages autograd really saves, torch's FLOP counter, and the CPU allocator's peak during
a real ``trainer fit`` run.

How the peak is measured, and why this way: ``torch.profiler`` with ``profile_memory=True`` makes torch's CPU
allocator (c10's ``ProfiledCPUMemoryReporter``) report every allocation and free together with its running
total of live bytes; the largest total over the run is the peak of tensor memory, the CPU counterpart of
``torch.cuda.max_memory_allocated``. ``tracemalloc`` does not see torch's allocations (they bypass Python's
allocator) and the RSS includes the interpreter, the libraries and freed pages the allocator keeps, so
neither measures tensors. The whole ``fit`` (model build, FSDP2 sharding, two steps) runs under the profiler
in a subprocess, so every tensor it holds is allocated, and counted, while profiling.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch

from tests.helpers import REPO
from trainer.model import MiVEBlock, MiVETransformer, get_config, rope_cos_sin
from trainer.parallel import ParallelConfig
from trainer.plan import (
    PlanConfig,
    block_activation_bytes,
    flops_estimate,
    make_plan,
    memory_estimate,
    parameter_breakdown,
    token_shape_from_latents,
)

PEAK_TOLERANCE = 0.10  # the plan's predicted peak within 10% of the measured one (seen: -1% .. +6%)
# Sequence parallelism is checked against the fake-tensor trace at 14B width (tests/test_trace.py): on gloo the
# allocator's peak also holds buffers of finished collectives for a while, which no GPU run has.


def test_debug_parameter_count_is_exact() -> None:
    config = get_config("debug")
    model = MiVETransformer(config)
    plan = parameter_breakdown(config)
    assert plan.total == sum(p.numel() for p in model.parameters())
    assert plan.per_block == sum(p.numel() for p in model.blocks[0].parameters())


def test_mive_14b_count_matches_meta_model_and_diffusers_wan() -> None:
    from diffusers import WanTransformer3DModel

    config = get_config("mive_14b")
    with torch.device("meta"):
        model = MiVETransformer(config)
        wan = WanTransformer3DModel()  # its defaults are Wan2.1-T2V-14B
    plan = parameter_breakdown(config)
    assert plan.total == sum(p.numel() for p in model.parameters())
    # Independent reference: Wan2.1-14B minus cross-attention (attn2, norm2), the text embedder replaced by
    # the context adapter (both Linear 4096 -> 5120 + Linear 5120 -> 5120 in size, plus the adapter's two
    # RMSNorm weights and the split first Linear's bias), the patch embedding seeing 32 channels, not 16.
    wan_total = sum(p.numel() for p in wan.parameters())
    cross = sum(p.numel() for n, p in wan.named_parameters() if ".attn2." in n or ".norm2." in n)
    text = sum(
        p.numel() for n, p in wan.named_parameters() if n.startswith("condition_embedder.text_embedder")
    )
    adapter = plan.by_part["context_adapter"]
    extra_patch = 16 * 4 * config.dim  # 16 more input channels x patch (1, 2, 2) x dim
    assert plan.total == wan_total - cross - text + adapter + extra_patch
    assert abs(plan.total / 1e9 - (14.288 - 4.196)) < 0.01  # MIVE.md's numbers


@pytest.mark.parametrize(
    ("dtype", "residual"),
    [(torch.float32, "float32"), (torch.bfloat16, "float32"), (torch.bfloat16, "bfloat16")],
)
def test_block_activation_formula_equals_autograd_saved_storages(dtype: torch.dtype, residual: str) -> None:
    config = get_config("debug", residual_dtype=residual)
    block = MiVEBlock(config).to(dtype)
    grid, num_condition = (5, 8, 10), 48
    seq_len = num_condition + grid[0] * grid[1] * grid[2]
    x = torch.randn(2, seq_len, config.dim, dtype=dtype, requires_grad=True)
    time_mod = torch.randn(2, 2, 6, config.dim, requires_grad=True)
    rope = rope_cos_sin(config, grid, num_condition, x.device)
    out = block(x, time_mod, rope, None, num_condition + grid[1] * grid[2])

    # every storage some autograd node of the block saved, counted once; weights (parameters) are not activations
    param_storages = {p.untyped_storage().data_ptr() for p in block.parameters()}
    saved: dict[int, int] = {}
    stack, seen = [out.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        for name in dir(node):
            if name.startswith("_saved_"):
                value = getattr(node, name)
                if (
                    isinstance(value, torch.Tensor)
                    and value.untyped_storage().data_ptr() not in param_storages
                ):
                    saved[value.untyped_storage().data_ptr()] = value.untyped_storage().nbytes()
        stack.extend(fn for fn, _ in node.next_functions)
    # (in float32 ``.float()`` is a no-op: the first LayerNorm saves the block input x itself, and counts it)
    measured = sum(saved.values())
    residual_bytes = 2 if residual == "bfloat16" else 4
    predicted = block_activation_bytes(config, seq_len, 2, torch.finfo(dtype).bits // 8, residual_bytes)
    # the formula leaves out the per-sample modulation vectors, RoPE tables and SDPA's log-sum-exp
    assert predicted <= measured <= predicted * 1.03, (predicted, measured)


def test_flops_agree_with_torch_flop_counter() -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    config = get_config("debug")
    model = MiVETransformer(config)
    shape = token_shape_from_latents(config, (4, 8, 12), 24)
    latents = torch.randn(1, 16, 4, 8, 12)
    args = (latents, latents.clone(), torch.randn(1, 16, 1, 8, 12), torch.tensor([500.0]))
    vlm = torch.randn(1, 24, config.vlm_dim)
    # the counter has no formula for the CPU flash-attention op: the math backend's bmm's are counted
    counter = FlopCounterMode(display=False)
    with sdpa_kernel(SDPBackend.MATH), counter:
        out = model(*args, vlm, vlm.clone())
    forward = counter.get_total_flops()
    with sdpa_kernel(SDPBackend.MATH), counter:
        model(*args, vlm, vlm.clone()).square().mean().backward()
    training = counter.get_total_flops()
    estimate = flops_estimate(config, shape, samples_per_gpu=1, activation_checkpointing=False)
    assert out.shape == latents.shape
    # the counter also sees the tiny time MLP's matmuls and counts the same matmuls: agree within 2%
    assert estimate.forward_per_sample == pytest.approx(forward, rel=0.02)
    # backward = 2x forward, except that the patch embedding's input (the latents) needs no gradient
    assert estimate.train_per_sample == pytest.approx(training, rel=0.05)


def measure_fit_peak(work: Path, overrides: list[str]) -> int:
    """Run ``trainer fit`` (debug recipe, two steps, on ``work/shards``) under the profiler; the CPU allocator's
    peak live bytes in this process (this rank, under torchrun)."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    from dataengine.formats.recipe import load_recipe
    from trainer.train import fit, train_config_from_recipe

    recipe = load_recipe(
        REPO / "manifests" / "train_debug.toml",
        [
            f"train.data.shards='{work / 'shards'}'",
            f"train.runs_dir='{work / 'runs'}'",
            "train.steps=2",
            "train.checkpoint.every_steps=0",
            "train.data.verify_checksums=false",
            *overrides,
        ],
    )
    config = train_config_from_recipe(recipe)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fit(config, recipe=recipe)
    events: list[tuple[int, int, int]] = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        event = stack.pop()
        if event.tag == _EventType.Allocation and event.extra_fields.device.type == torch.device("cpu").type:
            events.append(
                (event.start_time_ns, event.extra_fields.alloc_size, event.extra_fields.total_allocated)
            )
        stack.extend(event.children)
    events.sort()
    before = events[0][2] - events[0][1]  # the reporter's running total before the first event
    return max(total for _, _, total in events) - before


# (param_dtype, activation checkpointing, latent shape, condition tokens, sequence_parallel) of each measured fit
PEAK_CASES = [
    ("float32", True, (8, 16, 16), 64, 1),
    ("bfloat16", False, (4, 16, 24), 32, 1),
]
# test_plan_of_a_shard_set_with_two_frame_count_buckets_is_the_longest_clips's shard set and fit
TWO_BUCKETS = {(3, 16, 16): 2, (9, 16, 16): 2}
TWO_BUCKETS_OVERRIDES = ["train.parallel.param_dtype='float32'", "train.steps=4"]  # one epoch: both buckets


def _case_name(case: tuple) -> str:
    param_dtype, checkpointing, latent_shape, seq_len, sequence_parallel = case
    shape = "x".join(map(str, latent_shape))
    return f"{param_dtype}_ckpt{int(checkpointing)}_{shape}_s{seq_len}_sp{sequence_parallel}"


@pytest.fixture(scope="module")
def fit_peaks(tmp_path_factory) -> dict[str, tuple[Path, list[int]]]:
    """Every ``trainer fit`` this module measures (each case of ``PEAK_CASES``, and the two-bucket fit), one
    after the other in one subprocess per sequence-parallel degree (``torchrun`` above 1), each fit under its
    own profiler: name -> (its work folder with ``shards/``, the peak of each rank). Measured: the same bytes
    as one subprocess per fit."""
    from tests.shard_builder import build_shards

    config = get_config("debug")
    root = tmp_path_factory.mktemp("fit_peaks")
    launches: dict[int, list] = {}
    for case in PEAK_CASES:
        param_dtype, checkpointing, latent_shape, seq_len, sequence_parallel = case
        work = root / _case_name(case)
        build_shards(work / "shards", {latent_shape: 2}, vlm_dim=config.vlm_dim, seq_lengths=(seq_len,))
        overrides = [
            f"train.parallel.param_dtype='{param_dtype}'",
            f"train.parallel.activation_checkpointing={str(checkpointing).lower()}",
            f"train.parallel.sequence_parallel={sequence_parallel}",
        ]
        launches.setdefault(sequence_parallel, []).append([str(work), overrides])
    work = root / "two_buckets"
    build_shards(work / "shards", TWO_BUCKETS, vlm_dim=config.vlm_dim, seq_lengths=(64,))
    launches.setdefault(1, []).append([str(work), TWO_BUCKETS_OVERRIDES])

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    peaks: dict[str, tuple[Path, list[int]]] = {}
    for sequence_parallel, fits in launches.items():
        launcher = [sys.executable]
        if sequence_parallel > 1:
            launcher += [
                "-m",
                "torch.distributed.run",
                "--standalone",
                f"--nproc-per-node={sequence_parallel}",
            ]
        command = [*launcher, "-m", "tests.test_plan", json.dumps(fits)]
        run = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]
        for work, _ in fits:
            peaks[Path(work).name] = (Path(work), [])
        for line in run.stdout.splitlines():
            if line.startswith("PEAK"):
                _, name, _, value = line.split()
                peaks[name][1].append(int(value))
    return peaks


@pytest.mark.parametrize(
    ("param_dtype", "checkpointing", "latent_shape", "seq_len", "sequence_parallel"), PEAK_CASES
)
def test_predicted_peak_matches_measured_fit_step(
    fit_peaks: dict[str, tuple[Path, list[int]]],
    param_dtype: str,
    checkpointing: bool,
    latent_shape: tuple[int, int, int],
    seq_len: int,
    sequence_parallel: int,
) -> None:
    """One process; a ``sequence_parallel`` above 1 runs under torchrun and measures each rank's peak."""
    config = get_config("debug")
    case = (param_dtype, checkpointing, latent_shape, seq_len, sequence_parallel)
    peaks = fit_peaks[_case_name(case)][1]
    assert len(peaks) == sequence_parallel

    parallel = ParallelConfig(
        param_dtype=param_dtype, activation_checkpointing=checkpointing, sequence_parallel=sequence_parallel
    )
    shape = token_shape_from_latents(config, latent_shape, seq_len)
    # the debug recipe keeps an EMA of the weights (train.ema_decay): 4 P / G more in every phase
    recipe = tomllib.loads((REPO / "manifests" / "train_debug.toml").read_text())
    ema = recipe["train"].get("ema_decay", 0) > 0
    predicted = memory_estimate(
        config, parameter_breakdown(config), parallel, shape, num_gpus=sequence_parallel, ema=ema
    ).tensors
    for measured in peaks:
        assert abs(predicted / measured - 1) < PEAK_TOLERANCE, (predicted, measured)


def test_plan_of_a_shard_set_with_two_frame_count_buckets_is_the_longest_clips(fit_peaks) -> None:
    """A shard set with 9- and 33-frame clips (T' 3 and 9): the plan takes the 33-frame bucket, lists both with
    their own peaks, and a real fit over both buckets peaks where the plan says (the long bucket's)."""
    from typer.testing import CliRunner

    from dataengine.formats.recipe import load_recipe
    from trainer.cli import app
    from trainer.plan import plan_from_recipe

    seq_len = 64
    work, peaks = fit_peaks["two_buckets"]  # its shard set: TWO_BUCKETS, condition tokens 64
    recipe = load_recipe(
        REPO / "manifests" / "train_debug.toml",
        [f"train.data.shards='{work / 'shards'}'", "train.parallel.param_dtype='float32'"],
    )
    plan = PlanConfig(num_gpus=1, num_condition_tokens=seq_len, reserved_gib=0.0)
    result = plan_from_recipe(recipe, plan)
    assert (result.plan.num_frames, result.plan.height, result.plan.width) == (33, 128, 128)
    assert [(b.name, b.num_frames, b.num_samples) for b in result.buckets] == [
        ("t3_h16_w16", 9, 2),
        ("t9_h16_w16", 33, 2),
    ]
    short, long = result.buckets
    assert short.total_bytes < long.total_bytes == result.memory.total
    explicit = plan_from_recipe(recipe, PlanConfig(1, num_frames=9, height=128, width=128, num_condition_tokens=seq_len,
                                                   reserved_gib=0.0), from_shards=False)  # fmt: skip
    assert explicit.buckets == [] and explicit.memory.total == short.total_bytes

    shards = f"train.data.shards='{work / 'shards'}'"
    out = CliRunner().invoke(
        app, ["plan", str(REPO / "manifests" / "train_debug.toml"), shards, "--gpus", "1"]
    )
    assert "2 bucket(s)" in out.output and "planned at the largest (t9_h16_w16)" in out.output, out.output
    assert "clip 33 frames at 128x128" in out.output
    assert (
        "clip 9 frames"
        in CliRunner()
        .invoke(app, ["plan", str(REPO / "manifests" / "train_debug.toml"), shards, "--frames", "9"])
        .output
    )

    (measured,) = peaks  # the fit of TWO_BUCKETS_OVERRIDES: 4 steps, one epoch, both buckets
    assert abs(result.memory.tensors / measured - 1) < PEAK_TOLERANCE, (result.memory.tensors, measured)


def test_plan_command_fits_and_suggests(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from trainer.cli import app

    runner = CliRunner()
    recipe = str(REPO / "manifests" / "train_mive_14b.toml")
    small = runner.invoke(app, ["plan", recipe, "--gpus", "8", "--gpu-memory-gib", "40"])
    assert small.exit_code == 1, small.output
    assert (
        "DOES NOT FIT" in small.output
        and "fewer frames" in small.output
        and "lower resolution" in small.output
    )
    big = runner.invoke(app, ["plan", recipe, "--gpus", "8", "--gpu-memory-gib", "141"])
    assert big.exit_code == 0, big.output
    assert "FITS" in big.output and "10,092,885,056" in big.output
    bad = runner.invoke(app, ["plan", recipe, "--frames", "80"])
    assert bad.exit_code == 2 and "4n + 1" in bad.output
    # the paper's 8x 80 GiB: the recipe (sequence parallelism 2) fits with headroom and is what is recommended;
    # without sequence parallelism it does not, and the suggestion is degree 2 with the global batch kept
    paper = runner.invoke(app, ["plan", recipe, "--gpus", "8", "--gpu-memory-gib", "80"])
    assert paper.exit_code == 0 and "(the recipe as it is)" in paper.output, paper.output
    headroom = float(paper.output.split("FITS: ")[1].split("(")[1].split(" GiB headroom")[0])
    assert headroom > 8.0  # 10% of 80 GiB
    unsplit = ["train.parallel.sequence_parallel=1", "train.grad_accum=1"]
    alone = runner.invoke(app, ["plan", recipe, *unsplit, "--gpus", "8", "--gpu-memory-gib", "80"])
    assert alone.exit_code == 1
    assert "train.parallel.sequence_parallel = 2, train.grad_accum = 2 (global batch 8)" in alone.output
    three = runner.invoke(app, ["plan", recipe, "train.parallel.sequence_parallel=3", "--gpus", "8"])
    assert three.exit_code == 2 and "must divide the 8 GPU(s)" in three.output


def test_suggestions_actually_fit() -> None:
    parallel = ParallelConfig()  # bf16, checkpointing on: the 14B recipe's
    plan = PlanConfig(num_gpus=8, gpu_memory_gib=60)
    result = make_plan("mive_14b", parallel, plan)
    assert not result.fits
    frames = next(s for s in result.suggestions if s.startswith("fewer frames"))
    num_frames = int(frames.split(":")[1].split()[0])
    assert (num_frames - 1) % 4 == 0
    assert make_plan("mive_14b", parallel, PlanConfig(8, 60, num_frames=num_frames)).fits
    assert not make_plan("mive_14b", parallel, PlanConfig(8, 60, num_frames=num_frames + 4)).fits


# one process (or torchrun rank) of the fit_peaks fixture: python -m tests.test_plan '[[work, overrides], ...]'
if __name__ == "__main__":
    for work, overrides in json.loads(sys.argv[1]):
        peak = measure_fit_peak(Path(work), overrides)
        print("PEAK", Path(work).name, os.environ.get("RANK", 0), peak, flush=True)
