"""`make bench-gpu`: every model at its real size on one GPU, in one run of at most 8 minutes, nothing downloaded.

    python -m benchmarks.bench_gpu benchmarks/gpu-results                 # real sizes: needs CUDA (H100 / H200)
    python -m benchmarks.bench_gpu /tmp/smoke --profile debug --device cpu  # tiny configs on a CPU: the smoke run

Speed and memory do not depend on the weights' values, so each model is built from its published
configuration with random weights (``dataengine.model_configs``), directly on the GPU, and driven through the
product's own code (``Judge``, ``Qwen3VLEncoder``, ``WanVaeEncoder``, ``Sam2VideoSegmenter``, ``MiVEBlock``)
at the recipes' settings (``manifests/openve.toml``, ``manifests/train_mive_14b.toml``):

1. ``judge``: pairs/s and prefill tokens/s of the Qwen3-VL-8B judge at the recipe's frame budget
   (``[filter.judge]``: 2 fps, at most 16 frames of at most 384x672 per clip, here two 97-frame 24 fps 720P clips),
   for several batch sizes, with peak memory; the same pairs through ``generate()``-then-parse (the baseline of
   ``benchmarks/bench_filter.py``) at the recipe's batch size, and the ratio. Inputs are preprocessed before the
   clock starts; the processor's CPU seconds per pair are a row of their own.
2. ``vlm``: samples/s of the Qwen3-VL-8B encoder (one forward per sample, ``[shards.vlm]`` budgets: a 720P
   reference image and 10 frames of an 81-frame 16 fps clip) and S, the tokens per sample.
3. ``vae``: seconds to encode one 81-frame 720P clip with the Wan2.1 VAE in float32 (``[shards.vae]``) with and
   without tiling, a shards sample (source + target as a batch of 2, sliced, plus the reference frame), peak
   memory of each.
4. ``sam2``: frames/s of SAM2.1 hiera-large propagating a box-prompted person through an 81-frame 720P clip
   (``[portraits]``), end to end through ``Sam2VideoSegmenter.segment`` (preprocessing and masks included).
5. ``dit``: one 14B-width MiVE block (D 5120, 40 heads, FFN 13824), forward + backward in bf16 at the paper's
   sequence (79,200 visual + 3,600 condition tokens): time, TFLOP/s, MFU, peak memory, next to ``trainer plan``'s
   per-block numbers; which SDPA backend the block ran (read from the dispatched aten op) and the attention
   forward of each backend alone.
6. ``projection`` (arithmetic on the rows above): GPU-hours of the paper's run on ``--gpus`` GPUs.

Each section runs in its own process (forked from a server that imported torch, transformers and diffusers once)
with its own time limit, and all together within ``--total-limit`` seconds: a section that fails, runs out of
memory or out of time keeps the rows it measured before, and its failure is a row and a printed line. The run
prints one table and writes ``bench_gpu.json`` and ``bench_gpu.md`` into the output folder; it exits 1 when a
section failed. What each real builder costs is a row of its section (``build``): on the GPU every model is
created and initialised in place, expected to take seconds even for the 8.8B Qwen3-VL (a CPU init of it:
about 200 s on 2 busy cores, extrapolated from one 50M-parameter bf16 layer).
``tests/test_bench_gpu.py`` runs the whole command with the ``debug`` profile on a CPU.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA_RECIPE = ROOT / "manifests" / "openve.toml"
TRAIN_RECIPE = ROOT / "manifests" / "train_mive_14b.toml"
SECTIONS = ("judge", "vlm", "vae", "sam2", "dit")
DEFAULT_OUT = ROOT / "benchmarks" / "gpu-results"
TOTAL_LIMIT_S = 480.0  # the whole run, model construction included, on one H100 / H200

# The paper's data engine and training (MIVE.md): what the projection multiplies the measured rates by.
OPENVE_PAIRS = 2_450_000
TRAINING_SAMPLES = 30_000
PAPER_TRAIN_GPU_HOURS = 8 * 65  # "8x H100, about 65 hours"
INSTRUCTION = (
    "Replace the red car parked on the left side of the street with a blue bicycle leaning against the wall, "
    "keep the pedestrians, the shop windows, the lighting and the camera motion exactly as they are in the "
    "source video, and make the bicycle cast a soft shadow on the pavement."
)  # about 50 words: OpenVE instructions average about 40


@dataclass(frozen=True)
class Profile:
    """What one run builds and measures: ``real`` (published configs, the paper's workloads) or ``debug``."""

    model_size: str
    """``real`` or ``debug``: the configurations of ``dataengine.model_configs`` to build."""
    judge_clip: tuple[int, float] = (97, 24.0)
    """(frames, fps) of each 720P OpenVE clip the judge samples (OpenVE: 65-129 frames at 24-30 fps)."""
    judge_batch_sizes: tuple[int, ...] = (1, 4, 8, 16)
    """Pairs per prefill measured; the recipe's batch size (8) also runs the generate() baseline."""
    judge_min_pairs: int = 16
    """Each batch size is timed over at least this many pairs (the same preprocessed batch repeated)."""
    vlm_samples: int = 6
    """Timed encoder forwards."""
    vae_clip: tuple[int, int, int] | None = None
    """(frames, height, width) of the VAE clip; None: the recipe's (81 frames, its first 720P bucket)."""
    sam2_clip: tuple[int, int, int] | None = None
    """(frames, height, width) of the portrait clip; None: the recipe's (81 frames at 720x1280)."""
    dit_model: str = "mive_14b"
    """``trainer.model`` config whose block width is measured."""
    dit_grid: tuple[int, int, int] = (22, 45, 80)
    """(T'+1, H'/2, W'/2) patch grid: 81 frames at 720P."""
    dit_condition: int = 3600
    """Condition tokens in front of the visual ones (whole 45x80 frames, for diffusers' comparison block)."""
    dit_reps: int = 3
    """Timed forward + backward runs of the block (the fastest is kept)."""
    warmup: int = 1
    """Untimed runs before each timed measurement (kernel selection, autotuning, caches)."""
    min_reps: int = 2
    """Fewest timed runs of a measurement."""
    time_limits: dict[str, float] = field(
        default_factory=lambda: {"judge": 140.0, "vlm": 60.0, "vae": 100.0, "sam2": 70.0, "dit": 80.0}
    )
    """Seconds each section may run (its process is killed after that)."""


PROFILES = {
    "real": Profile("real"),
    "debug": Profile(
        "debug",
        judge_batch_sizes=(1, 2),
        judge_min_pairs=1,
        vlm_samples=1,
        vae_clip=(9, 64, 64),
        sam2_clip=(5, 64, 64),
        dit_model="debug",
        dit_grid=(2, 4, 4),
        dit_condition=16,
        dit_reps=1,
        warmup=0,
        min_reps=1,
        time_limits={"judge": 120.0, "vlm": 120.0, "vae": 120.0, "sam2": 120.0, "dit": 120.0},
    ),
}


@dataclass(frozen=True)
class Bench:
    """Everything a section needs (picklable: it crosses into the section's process)."""

    profile: Profile
    device: str
    """A torch device string (``cuda``, ``cuda:1``, ``cpu``)."""
    work: Path
    """A scratch folder for the sections' config folders."""

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    def compute_dtype(self, recipe_dtype: str) -> str:
        """The recipe's dtype on a GPU; float32 on a CPU (as ``auto`` would choose there)."""
        return recipe_dtype if self.cuda else "float32"


def _row(benchmark: str, metric: str, value: Any, unit: str, note: str = "", key: str | None = None) -> dict:
    row = {"benchmark": benchmark, "metric": metric, "value": value, "unit": unit, "note": note}
    if key:
        row["key"] = key  # what the projection looks the value up by
    return row


# ---------------------------------------------------------------------------------------------- measuring


def _sync(bench: Bench) -> None:
    import torch

    if bench.cuda:
        torch.cuda.synchronize(bench.device)


def _reset_peak(bench: Bench) -> None:
    import torch

    if bench.cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(bench.device)


def _peak_gib(bench: Bench) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated(bench.device) / 2**30 if bench.cuda else None


def _seconds(bench: Bench, fn: Callable[[], Any], reps: int, warmup: int | None = None) -> float:
    """Mean seconds of ``fn`` over ``reps`` runs after ``warmup`` untimed ones (default: the profile's)."""
    for _ in range(bench.profile.warmup if warmup is None else warmup):
        fn()
    _sync(bench)
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    _sync(bench)
    return (time.perf_counter() - start) / reps


def _is_oom(err: BaseException) -> bool:
    import torch

    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


def _memory_row(
    bench: Bench, benchmark: str, metric: str, note: str = "", key: str | None = None
) -> list[dict]:
    peak = _peak_gib(bench)
    return [] if peak is None else [_row(benchmark, metric, peak, "GiB", note, key)]


def _recipe_table(path: Path, *keys: str) -> dict:
    from dataengine.recipe import load_recipe

    table = load_recipe(path)
    for key in keys:
        table = table[key]
    return table


def _random_frames(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _built(bench: Bench, benchmark: str, name: str, seconds: float, model: Any) -> dict:
    from dataengine.model_configs import MODELS, num_parameters

    spec, count = MODELS[name], num_parameters(model)
    note = (
        f"{count / 1e6:,.1f}M parameters (published: {spec.published_parameters}), {spec.source} "
        f"({bench.profile.model_size} config), random weights"
    )
    return _row(benchmark, "build (constructor, random init on the device)", seconds, "s", note)


# ---------------------------------------------------------------------------------------------- 1. judge


def bench_judge(bench: Bench) -> Iterator[dict]:
    """Qwen3-VL-8B judge: single-pass scoring per batch size, and the generate()-then-parse baseline."""
    import torch
    from transformers.video_utils import VideoMetadata

    from benchmarks.bench_filter import ANSWER, _generate_scores
    from dataengine.judge import Judge, JudgeConfig, sample_frame_indices
    from dataengine.model_configs import random_weights, write_model_folder
    from dataengine.recipe import build_config
    from dataengine.shard_format import TOKEN_TYPES

    profile = bench.profile
    recipe = build_config(JudgeConfig, _recipe_table(DATA_RECIPE, "filter", "judge"), "filter.judge")
    folder = write_model_folder("qwen3vl_8b", bench.work / "qwen3vl", profile.model_size)
    config = replace(recipe, model=str(folder), device=bench.device, dtype=bench.compute_dtype(recipe.dtype))
    start = time.perf_counter()
    with random_weights(bench.device):
        judge = Judge(config)
    yield _built(bench, "judge", "qwen3vl_8b", time.perf_counter() - start, judge.model)

    num_frames, fps = profile.judge_clip
    indices = sample_frame_indices(num_frames, fps, config.fps, config.max_frames)
    metadata = VideoMetadata(
        total_num_frames=num_frames, fps=fps, width=1280, height=720, frames_indices=indices.tolist()
    )
    clip = (_random_frames((len(indices), 720, 1280, 3)), metadata)
    workload = (
        f"{len(indices)} frames per clip ({num_frames} at {fps:g} fps, 720P, {config.fps:g} fps sampled), "
        f"{config.max_pixels_per_frame} px per frame, {config.dtype}"
    )
    recipe_batch = (
        recipe.batch_size if recipe.batch_size in profile.judge_batch_sizes else profile.judge_batch_sizes[-1]
    )
    recipe_inputs = None
    for batch in profile.judge_batch_sizes:
        start = time.perf_counter()
        inputs = judge.processor_inputs([judge.prompt_text(INSTRUCTION)] * batch, [clip] * (2 * batch))
        inputs["pixel_values_videos"] = inputs["pixel_values_videos"].to(judge.dtype)
        preprocess = (time.perf_counter() - start) / batch
        tokens = int(inputs["attention_mask"].sum())
        if batch == profile.judge_batch_sizes[0]:
            video = int((inputs["mm_token_type_ids"] == TOKEN_TYPES["video"]).sum()) // batch
            note = (
                f"of {tokens // batch:,} per pair; the rest is text (synthetic tokenizer: more than Qwen's)"
            )
            yield _row("judge", "video tokens per pair", video, "tokens", note, key="judge.video_tokens")
        if batch == max(profile.judge_batch_sizes):
            note = f"resize + patchify of 2 clips, {torch.get_num_threads()} threads"
            yield _row("judge", "processor CPU s/pair", preprocess, "s", note)
        reps = max(profile.min_reps, math.ceil(profile.judge_min_pairs / batch))
        _reset_peak(bench)
        try:
            seconds = _seconds(bench, lambda inputs=inputs: judge.score_inputs(inputs), reps)
        except Exception as err:
            if not _is_oom(err):
                raise
            yield _row("judge", f"batch {batch}", "OOM", "", f"{type(err).__name__}: {str(err)[:120]}")
            continue
        key = "judge.pairs_per_s" if batch == recipe_batch else None
        yield _row("judge", f"pairs/s, batch {batch}", batch / seconds, "pairs/s", workload, key)
        note = f"{tokens // batch:,} tokens per pair"
        yield _row("judge", f"prefill tokens/s, batch {batch}", tokens / seconds, "tokens/s", note)
        yield from _memory_row(bench, "judge", f"peak memory, batch {batch}")
        if batch == recipe_batch:
            recipe_inputs, recipe_seconds = inputs, seconds
    if recipe_inputs is None:
        return
    answer = judge.processor.tokenizer.encode(ANSWER, add_special_tokens=False)
    answer_tokens = len(answer) + 1  # + <|im_end|>
    batch = recipe_batch
    reps = max(1, math.ceil(profile.judge_min_pairs / batch) // 2)  # generating is slower: fewer runs
    generated = _seconds(bench, lambda: _generate_scores(judge, recipe_inputs, answer_tokens), reps)
    note = f"{answer_tokens} new tokens greedy (the synthetic tokenizer's length of a three-line answer)"
    yield _row("judge", f"generate+parse pairs/s, batch {batch}", batch / generated, "pairs/s", note)
    yield _row("judge", "single-pass / generate speed-up", generated / recipe_seconds, "x", f"batch {batch}")


# ---------------------------------------------------------------------------------------------- 2. VLM encoder


def bench_vlm(bench: Bench) -> Iterator[dict]:
    """Qwen3-VL-8B encoder of the shards step at the recipe's budgets: samples/s and S."""
    from dataengine.model_configs import random_weights, write_model_folder
    from dataengine.recipe import build_config
    from dataengine.shard_format import TOKEN_TYPES
    from dataengine.vlm import Qwen3VLEncoder, Qwen3VLEncoderConfig

    profile = bench.profile
    recipe = build_config(Qwen3VLEncoderConfig, _recipe_table(DATA_RECIPE, "shards", "vlm"), "shards.vlm")
    clip = _recipe_table(DATA_RECIPE, "shards", "clip")
    height, width = clip["buckets"][0]
    folder = write_model_folder("qwen3vl_8b", bench.work / "qwen3vl", profile.model_size)
    config = replace(
        recipe, model_id=str(folder), device=bench.device, dtype=bench.compute_dtype(recipe.dtype)
    )
    start = time.perf_counter()
    with random_weights(bench.device):
        encoder = Qwen3VLEncoder(config)
    yield _built(bench, "vlm", "qwen3vl_8b", time.perf_counter() - start, encoder.model)

    indices = encoder.select_frames(clip["num_frames"], clip["fps"])
    video = _random_frames((len(indices), height, width, 3))
    reference = _random_frames((height, width, 3), seed=1)

    def encode() -> Any:
        return encoder.encode(INSTRUCTION, reference, video, clip["fps"], frame_indices=indices.tolist())

    start = time.perf_counter()
    inputs = encoder.build_inputs(INSTRUCTION, reference, video, clip["fps"], indices.tolist())
    preprocess = time.perf_counter() - start
    _reset_peak(bench)
    seconds = _seconds(bench, encode, profile.vlm_samples)
    types = encoder.token_types(inputs)
    counts = {name: int((types == value).sum()) for name, value in TOKEN_TYPES.items()}
    note = (
        f"reference {height}x{width}, {len(indices)} of {clip['num_frames']} frames at {clip['fps']:g} fps; "
        f"processor included ({preprocess:.2f} s of it)"
    )
    yield _row("vlm", "samples/s", 1 / seconds, "samples/s", note, key="vlm.samples_per_s")
    yield _row(
        "vlm",
        "S (tokens per sample)",
        len(types),
        "tokens",
        f"image {counts['image']}, video {counts['video']}, text {counts['text']} (synthetic tokenizer)",
        key="vlm.tokens",
    )
    yield _row("vlm", "S image tokens", counts["image"], "tokens", key="vlm.image_tokens")
    yield _row("vlm", "S video tokens", counts["video"], "tokens", key="vlm.video_tokens")
    yield from _memory_row(bench, "vlm", "peak memory")


# ---------------------------------------------------------------------------------------------- 3. Wan VAE


def bench_vae(bench: Bench) -> Iterator[dict]:
    """Wan2.1 VAE: one 81-frame 720P clip without and with tiling, the reference frame, and a shards sample."""
    from dataengine.model_configs import random_weights, write_model_folder
    from dataengine.recipe import build_config
    from dataengine.vae import WanVaeConfig, WanVaeEncoder

    recipe = build_config(WanVaeConfig, _recipe_table(DATA_RECIPE, "shards", "vae"), "shards.vae")
    clip_table = _recipe_table(DATA_RECIPE, "shards", "clip")
    frames, height, width = bench.profile.vae_clip or (clip_table["num_frames"], *clip_table["buckets"][0])
    folder = write_model_folder("wan21_vae", bench.work / "wan_vae", bench.profile.model_size)
    base = replace(recipe, model_id=str(folder), subfolder="vae", device=bench.device)
    clip = _random_frames((frames, height, width, 3))
    shape = f"{frames}x{height}x{width}, {base.dtype}"
    seconds: dict[str, float] = {}
    # One clip at a time: slicing (the recipe's) only splits a batch into such calls.
    for tiling in (False, True):
        start = time.perf_counter()
        with random_weights(bench.device):
            encoder = WanVaeEncoder(replace(base, tiling=tiling, slicing=True))
        if not tiling:
            yield _built(bench, "vae", "wan21_vae", time.perf_counter() - start, encoder.vae)
        if bench.profile.warmup:
            encoder.encode(clip[:5])  # kernels and autotuning on a 5-frame clip
        label = "tiling" if tiling else "no tiling"
        parts = (
            {f"one clip, {label}": clip}
            if tiling
            else {"one clip, no tiling": clip, "reference frame": clip[:1]}
        )
        for metric, frames_in in parts.items():
            _reset_peak(bench)
            try:
                seconds[metric] = _seconds(bench, partial(encoder.encode, frames_in), reps=1, warmup=0)
            except Exception as err:
                if not _is_oom(err):
                    raise
                yield _row("vae", metric, "OOM", "", f"{type(err).__name__}: {str(err)[:120]}")
                continue
            key = {"one clip, no tiling": "vae.seconds_per_clip"}.get(metric)
            yield _row(
                "vae",
                f"seconds, {metric}",
                seconds[metric],
                "s",
                shape if metric != "reference frame" else "",
                key,
            )
            yield from _memory_row(bench, "vae", f"peak memory, {metric}")
        del encoder  # before the next one is built
    if "one clip, no tiling" in seconds and "reference frame" in seconds:
        sample = 2 * seconds["one clip, no tiling"] + seconds["reference frame"]
        note = "source + target (a batch of 2, sliced: one clip at a time) + the reference frame, as [shards.vae]"
        yield _row("vae", "seconds per shards sample", sample, "s", note, key="vae.seconds_per_sample")


# ---------------------------------------------------------------------------------------------- 4. SAM2


def bench_sam2(bench: Bench) -> Iterator[dict]:
    """SAM2.1 hiera-large video propagation of one box-prompted person through a portrait clip."""
    from dataengine.model_configs import random_weights, write_model_folder
    from dataengine.recipe import build_config
    from dataengine.segment import Sam2VideoSegmenter, SegmenterConfig

    portraits = _recipe_table(DATA_RECIPE, "portraits")
    recipe = build_config(SegmenterConfig, portraits["segmenter"], "portraits.segmenter")
    frames, height, width = bench.profile.sam2_clip or (
        portraits["num_frames"],
        portraits["height"],
        portraits["width"],
    )
    folder = write_model_folder("sam21_hiera_large", bench.work / "sam2", bench.profile.model_size)
    config = replace(recipe, model=str(folder), device=bench.device)
    start = time.perf_counter()
    with random_weights(bench.device):
        segmenter = Sam2VideoSegmenter(config)
    yield _built(bench, "sam2", "sam21_hiera_large", time.perf_counter() - start, segmenter.model)

    clip = _random_frames((frames, height, width, 3))
    if bench.profile.warmup:
        segmenter.segment(clip[:3])
    _reset_peak(bench)
    seconds = _seconds(bench, lambda: segmenter.segment(clip), reps=1, warmup=0)
    dtype = str(segmenter.dtype).removeprefix("torch.")
    note = f"{frames}x{height}x{width}, {dtype}, box prompt on frame 0; preprocessing and masks included"
    yield _row("sam2", "frames/s", frames / seconds, "frames/s", note, key="sam2.frames_per_s")
    yield _row("sam2", "seconds per clip", seconds, "s", f"{frames} frames")
    yield from _memory_row(bench, "sam2", "peak memory")


# ---------------------------------------------------------------------------------------------- 5. the DiT


FUSED_ATTENTION_OPS = {  # aten ops scaled_dot_product_attention dispatches to, by backend
    "_scaled_dot_product_flash_attention_for_cpu": "flash (CPU)",
    "_scaled_dot_product_flash_attention": "flash",
    "_scaled_dot_product_cudnn_attention": "cuDNN",
    "_scaled_dot_product_efficient_attention": "efficient",
    "_scaled_dot_product_fused_attention_overrideable": "fused (overrideable)",
}


def attention_backends(fn: Callable[[], Any]) -> list[str]:
    """The SDPA backends ``fn`` dispatched to, read from the aten ops it ran (``math`` when no fused op ran
    but a softmax did)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class _Ops(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.names: set[str] = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
            self.names.add(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    with _Ops() as ops:
        fn()
    found = sorted({label for op, label in FUSED_ATTENTION_OPS.items() if op in ops.names})
    if not found and any("softmax" in name for name in ops.names):
        found = ["math"]
    return found


def _attention_rows(bench: Bench, num_heads: int, head_dim: int, seq: int, dtype: Any) -> Iterator[dict]:
    """Attention forward alone at the block's shape, each backend on its own (math would need L^2 memory)."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    gen = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (
        torch.randn(1, num_heads, seq, head_dim, generator=gen).to(bench.device, dtype) for _ in range(3)
    )
    flops = 4 * seq * seq * head_dim * num_heads
    for backend, label in (
        (SDPBackend.FLASH_ATTENTION, "flash"),
        (SDPBackend.CUDNN_ATTENTION, "cuDNN"),
        (SDPBackend.EFFICIENT_ATTENTION, "efficient"),
    ):
        try:
            with sdpa_kernel([backend]):
                seconds = _seconds(
                    bench, lambda: F.scaled_dot_product_attention(q, k, v), bench.profile.min_reps
                )
        except RuntimeError as err:
            yield _row(
                "dit", f"attention fwd, {label} alone", "unavailable", "", str(err).splitlines()[0][:100]
            )
            continue
        yield _row(
            "dit",
            f"attention fwd, {label} alone",
            flops / seconds / 1e12,
            "TFLOP/s",
            f"(1, {num_heads}, {seq:,}, {head_dim}) {str(dtype).removeprefix('torch.')}",
        )


def bench_dit(bench: Bench) -> Iterator[dict]:
    """One MiVE block of the real width: fwd+bwd at the paper's sequence, plan numbers, attention backend."""
    import torch

    from benchmarks.bench_model import _block_rows
    from trainer.model import MiVEBlock, get_config, rope_cos_sin
    from trainer.plan import DTYPE_BYTES, block_activation_bytes, parameter_breakdown

    profile = bench.profile
    config = get_config(profile.dit_model)
    dtype = torch.bfloat16 if bench.cuda else torch.float32
    dtype_name = str(dtype).removeprefix("torch.")
    frames, height, width = profile.dit_grid
    seq = profile.dit_condition + frames * height * width
    device = torch.device(bench.device)
    rows = _block_rows(
        device,
        config.dim,
        config.num_heads,
        config.ffn_dim,
        profile.dit_grid,
        profile.dit_condition,
        dtype,
        profile.dit_reps,
    )
    for row in rows:
        row["benchmark"] = "dit"
        if row["metric"] == "mive_block TFLOP/s":
            row["key"] = "dit.block_tflops"
        yield row

    # trainer plan's numbers for one block at this sequence
    params = parameter_breakdown(config)
    saved = block_activation_bytes(config, seq, 1, DTYPE_BYTES[dtype_name])
    yield _row(
        "dit",
        "plan: parameters per block",
        params.per_block,
        "",
        f"{config.dim} wide; gathered {2 * params.per_block / 2**30:.2f} GiB in bf16",
    )
    yield _row(
        "dit",
        "plan: saved activations per block",
        saved / 2**30,
        "GiB",
        f"seq {seq:,}, {dtype_name}, no checkpointing; compare the measured peak above",
    )

    # which SDPA kernel the block's attention dispatches to
    torch.manual_seed(0)
    with torch.device(device):
        block = MiVEBlock(config).to(dtype)
    x = torch.randn(1, seq, config.dim, device=device, dtype=dtype)
    time_mod = torch.randn(1, 2, 6, config.dim, device=device) * 0.1
    rope = rope_cos_sin(config, profile.dit_grid, profile.dit_condition, device)
    num_clean = profile.dit_condition + height * width
    with torch.no_grad():
        backends = attention_backends(partial(block, x, time_mod, rope, None, num_clean))
    del block, x
    yield _row(
        "dit",
        "SDPA backend in the block",
        ", ".join(backends) or "none found",
        "",
        "the aten op the block's attention ran",
    )
    yield from _attention_rows(bench, config.num_heads, config.head_dim, seq, dtype)


BENCHMARKS: dict[str, Callable[[Bench], Iterator[dict]]] = {
    "judge": bench_judge,
    "vlm": bench_vlm,
    "vae": bench_vae,
    "sam2": bench_sam2,
    "dit": bench_dit,
}


# ---------------------------------------------------------------------------------------------- 6. projection


def projection_rows(rows: list[dict], num_gpus: int) -> list[dict]:
    """GPU-hours of the paper's run from the measured rates (rows with a ``key``); a missing rate is a row saying so."""
    from dataengine.recipe import build_config
    from trainer.parallel import ParallelConfig
    from trainer.plan import REFERENCE_TFLOPS_PER_GPU, PlanConfig, make_plan

    rates = {
        row["key"]: row["value"] for row in rows if "key" in row and isinstance(row["value"], int | float)
    }
    portraits = _recipe_table(DATA_RECIPE, "portraits")
    clips = 3 * portraits["pairs_per_type"]  # at most one portrait clip per pair (clips may be reused)
    train = _recipe_table(TRAIN_RECIPE, "train")
    steps = train["steps"]
    # trainer plan of the paper's run: 8 GPUs x the recipe's batch (read here, not through trainer.train,
    # whose data loader needs webdataset, which GPU machines may lack)
    parallel = build_config(ParallelConfig, train["parallel"], "train.parallel")
    plan = make_plan(
        train["model"], parallel, PlanConfig(num_gpus=8), train["data"]["batch_size"], train["grad_accum"]
    )
    samples = steps * plan.plan.num_gpus * plan.samples_per_gpu * plan.grad_accum

    def seconds_each(key: str, per: Callable[[float], float]) -> float | None:
        return per(rates[key]) if key in rates and rates[key] > 0 else None

    items = [
        (
            f"filter: judge {OPENVE_PAIRS / 1e6:.2f}M pairs",
            OPENVE_PAIRS,
            seconds_each("judge.pairs_per_s", lambda r: 1 / r),
            "judge; the recipe's batch size; frame decoding (CPU) not included",
        ),
        (
            f"shards: encode {TRAINING_SAMPLES // 1000}K samples",
            TRAINING_SAMPLES,
            None
            if "vlm.samples_per_s" not in rates or "vae.seconds_per_sample" not in rates
            else 1 / rates["vlm.samples_per_s"] + rates["vae.seconds_per_sample"],
            "Qwen3-VL forward + VAE (source, target, reference); decoding not included",
        ),
        (
            f"portraits: segment {clips:,} clips",
            clips,
            seconds_each("sam2.frames_per_s", lambda r: portraits["num_frames"] / r),
            f"SAM2, {portraits['num_frames']} frames each; at most one clip per pair",
        ),
        (
            f"train: {steps:,} steps x {samples // steps} samples",
            samples,
            seconds_each("dit.block_tflops", lambda r: plan.flops.train_per_sample / (r * 1e12)),
            f"plan's {plan.flops.train_per_sample:.3g} FLOPs per sample (activation checkpointing) at the "
            "block's measured TFLOP/s; FSDP2 communication not included",
        ),
    ]
    out: list[dict] = []
    hours_each: list[float] = []
    for label, count, seconds, note in items:
        if seconds is None:
            out.append(
                _row("projection", label, "n/a", "GPU-h", "its section has no rate (failed or skipped)")
            )
            continue
        hours = count * seconds / 3600
        hours_each.append(hours)
        out.append(
            _row("projection", label, hours, "GPU-h", f"{hours / num_gpus:,.1f} h on {num_gpus} GPUs; {note}")
        )
    reference = samples * plan.flops.train_per_sample / (REFERENCE_TFLOPS_PER_GPU * 1e12 * 3600)
    paper_rate = samples * plan.flops.train_per_sample / (PAPER_TRAIN_GPU_HOURS * 3600) / 1e12
    note = (
        f"trainer plan's reference rate; the paper's {PAPER_TRAIN_GPU_HOURS} GPU-h (65 h on 8 H100) would take "
        f"{paper_rate:,.0f} TFLOP/s per GPU at these FLOPs"
    )
    out.append(
        _row(
            "projection", f"train at {REFERENCE_TFLOPS_PER_GPU} TFLOP/s (NeMo DFM)", reference, "GPU-h", note
        )
    )
    if len(hours_each) == len(items):
        total = sum(hours_each)
        out.append(
            _row(
                "projection",
                "the paper's whole run",
                total,
                "GPU-h",
                f"{total / num_gpus:,.1f} h on {num_gpus} GPUs",
            )
        )
    else:
        out.append(_row("projection", "the paper's whole run", "n/a", "GPU-h", "a rate is missing"))
    return out


# ---------------------------------------------------------------------------------------------- the runner


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def _section_process(name: str, bench: Bench, rows_path: Path) -> None:
    """A section's process: measure, writing the rows so far after each one; a failure is recorded and exit 1."""
    rows: list[dict] = []
    try:
        for row in BENCHMARKS[name](bench):
            rows.append(row)
            _write_json(rows_path, {"rows": rows, "status": "running"})
    except BaseException as err:  # noqa: BLE001 - anything that ends the section is its reason
        traceback.print_exc()
        reason = "out of memory: " if _is_oom(err) else ""
        _write_json(
            rows_path,
            {"rows": rows, "status": "failed", "reason": f"{reason}{type(err).__name__}: {err}"[:300]},
        )
        sys.exit(1)
    _write_json(rows_path, {"rows": rows, "status": "ok"})


def _ready() -> None:
    """A process that does nothing: starting it waits for the fork server's imports."""


def run_sections(
    bench: Bench, names: list[str], limits: dict[str, float], total_limit: float
) -> tuple[list[dict], dict, float]:
    """Run each section in its own process under its time limit; returns (rows, per-section status, seconds
    of the shared imports)."""
    context = multiprocessing.get_context("forkserver")
    # One import of the heavy libraries, shared by every section's process (each forks from the server).
    context.set_forkserver_preload(
        [
            "torch",
            "transformers.models.qwen3_vl.modeling_qwen3_vl",
            "transformers.models.sam2_video.modeling_sam2_video",
            "diffusers.models.autoencoders.autoencoder_kl_wan",
            "diffusers.models.transformers.transformer_wan",
            "trainer.model",
            "benchmarks.bench_model",
            "dataengine.judge",
        ]
    )
    start = time.monotonic()
    warm = context.Process(target=_ready)  # returns once the server has imported the modules above
    warm.start()
    warm.join()
    imports = time.monotonic() - start
    print(f"# imports shared by the sections: {imports:.1f} s", flush=True)
    deadline = start + total_limit
    rows: list[dict] = []
    status: dict[str, dict] = {}
    for name in names:
        rows_path = bench.work / f"{name}.rows.json"
        left = deadline - time.monotonic()
        limit = min(limits[name], left)
        if left <= 1:
            status[name] = {
                "status": "skipped",
                "reason": f"the run's {total_limit:g} s were spent",
                "seconds": 0.0,
            }
            rows.append(_row(name, "FAILED", "skipped", "", status[name]["reason"]))
            print(f"# {name}: skipped ({status[name]['reason']})", file=sys.stderr, flush=True)
            continue
        print(f"# {name}: running (limit {limit:.0f} s)", flush=True)
        start = time.monotonic()
        process = context.Process(
            target=_section_process, args=(name, bench, rows_path), name=f"bench_gpu.{name}"
        )
        process.start()
        process.join(limit)
        if process.is_alive():
            process.kill()
            process.join()
            outcome = {"status": "timeout", "reason": f"timed out after {limit:.0f} s (killed)"}
        elif process.exitcode == 0:
            outcome = {"status": "ok", "reason": None}
        else:
            outcome = {"status": "failed", "reason": f"exit code {process.exitcode}"}
            if process.exitcode < 0:
                outcome["reason"] += f" (killed by signal {-process.exitcode}: host out of memory?)"
        written = json.loads(rows_path.read_text()) if rows_path.exists() else {"rows": []}
        if written.get("status") == "failed":
            outcome["reason"] = written["reason"]
        outcome["seconds"] = round(time.monotonic() - start, 1)
        status[name] = outcome
        rows += written["rows"]
        if outcome["status"] != "ok":
            kept = len(written["rows"])
            rows.append(_row(name, "FAILED", outcome["status"], "", f"{outcome['reason']}; {kept} rows kept"))
            print(
                f"# {name}: {outcome['status']}: {outcome['reason']} ({kept} rows kept)",
                file=sys.stderr,
                flush=True,
            )
        else:
            print(f"# {name}: ok in {outcome['seconds']:.1f} s", flush=True)
    return rows, status, imports


def markdown_table(rows: list[dict]) -> str:
    """Rows as a Markdown table (the same cells as the printed table)."""
    lines = ["| benchmark | metric | value | unit | note |", "|---|---|---|---|---|"]
    for row in rows:
        value = row["value"]
        if isinstance(value, float):
            value = f"{value:,.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
        cells = [row["benchmark"], row["metric"], value, row["unit"], row.get("note", "")]
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def _device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(device)
        return f"{props.name} ({props.total_memory / 2**30:.0f} GiB)"
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "out", type=Path, nargs="?", default=DEFAULT_OUT, help="folder for bench_gpu.json and .md"
    )
    parser.add_argument(
        "--profile", choices=sorted(PROFILES), default="real", help="real sizes (GPU) or debug (CPU smoke)"
    )
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cuda, cuda:N or cpu")
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}"
    )
    parser.add_argument(
        "--gpus", type=int, default=8, help="GPUs the projection spreads the paper's run over"
    )
    parser.add_argument(
        "--total-limit", type=float, default=TOTAL_LIMIT_S, help="seconds for all sections together"
    )
    parser.add_argument(
        "--time-limit",
        action="append",
        default=[],
        metavar="SECTION=SECONDS",
        help="override a section's limit",
    )
    args = parser.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import tempfile

    import torch

    from benchmarks.run import format_table
    from dataengine.devices import resolve_device

    profile = PROFILES[args.profile]
    device = str(resolve_device(args.device))
    if profile.model_size == "real" and not device.startswith("cuda"):
        print(
            f"error: the real profile builds the 8.8B Qwen3-VL and 14B-wide DiT blocks and needs a CUDA GPU "
            f"(device {device}); on a CPU run `--profile debug --device cpu`",
            file=sys.stderr,
        )
        return 2
    names = [name.strip() for name in args.sections.split(",") if name.strip()]
    unknown = sorted(set(names) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {unknown}; known: {list(SECTIONS)}")
    limits = dict(profile.time_limits)
    for item in args.time_limit:
        name, _, seconds = item.partition("=")
        if name not in SECTIONS or not seconds:
            parser.error(
                f"--time-limit {item!r}: expected SECTION=SECONDS with SECTION one of {list(SECTIONS)}"
            )
        limits[name] = float(seconds)

    header = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "device": _device_name(device),
        "torch": torch.__version__,
        "profile": args.profile,
        "command": " ".join(
            ["python", "-m", "benchmarks.bench_gpu", *(sys.argv[1:] if argv is None else argv)]
        ),
    }
    print(f"# bench_gpu: {header['device']}, torch {header['torch']}, profile {args.profile}", flush=True)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as work:
        bench = Bench(profile=profile, device=device, work=Path(work))
        rows, status, imports = run_sections(bench, names, limits, args.total_limit)
    rows += projection_rows(rows, args.gpus)
    header["seconds"] = round(time.monotonic() - start, 1)
    header["imports_seconds"] = round(imports, 1)
    print(format_table(rows))
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / "bench_gpu.json", {**header, "sections": status, "rows": rows})
    section_lines = [
        f"- {name}: {s['status']} in {s['seconds']} s" + (f" ({s['reason']})" if s["reason"] else "")
        for name, s in status.items()
    ]
    (out / "bench_gpu.md").write_text(
        f"# bench_gpu, {header['date']}\n\n{header['device']}, torch {header['torch']}, profile {args.profile}, "
        f"{header['seconds']} s ({header['imports_seconds']} s of shared imports): `{header['command']}`\n\n"
        + "\n".join(section_lines)
        + "\n\n"
        + markdown_table(rows)
        + "\n"
    )
    print(
        f"# wrote {out / 'bench_gpu.json'} and {out / 'bench_gpu.md'} in {header['seconds']:.0f} s",
        flush=True,
    )
    return 0 if all(s["status"] == "ok" for s in status.values()) else 1


def run(quick: bool = False) -> list[dict]:
    """``make bench``: the real profile where CUDA is available (about 8 minutes), else a row saying to use a GPU."""
    import tempfile

    import torch

    if not torch.cuda.is_available():
        return [
            _row(
                "gpu",
                "skipped",
                "no CUDA",
                "",
                "make bench-gpu OUT=folder on a GPU machine (benchmarks/RESULTS.md)",
            )
        ]
    with tempfile.TemporaryDirectory() as folder:
        main([folder])
        return json.loads((Path(folder) / "bench_gpu.json").read_text())["rows"]


if __name__ == "__main__":
    sys.exit(main())
