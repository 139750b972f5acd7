"""`make bench-gpu`: every model at its real size on one GPU, in one run of at most 8 minutes, nothing downloaded.

    python -m benchmarks.bench_gpu benchmarks/gpu-results                 # real sizes: needs CUDA (H100 / H200)
    python -m benchmarks.bench_gpu /tmp/smoke --profile debug --device cpu  # tiny configs on a CPU: the smoke run

Speed and memory do not depend on the weights' values, so each model is built from its published
configuration with random weights (``dataengine.model_configs``), directly on the GPU, and driven through the
product's own code (``Judge``, ``Qwen3VLEncoder``, ``WanVaeEncoder``, ``TransformersPersonDetector``,
``Sam2VideoSegmenter``, ``MiVEBlock``) at the recipes' settings (``manifests/openve.toml``,
``manifests/train_mive_14b.toml``):

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
4. ``detector``: the RT-DETRv2-R50 person detector at ``[portraits.detector]``'s settings (bf16, 640x640 input)
   on 720P frames: the model's frames/s at batch 1, 8, 32, 64 with peak memory, the processor's CPU seconds per
   frame, and ``detect()`` end to end at the recipe's batch size on a harvest actor's CPU threads.
5. ``sam2``: frames/s of SAM2.1 hiera-large propagating a person through an 81-frame 720P clip
   (``[portraits]``), prompted as the recipe says (``prompt = "detector"``: a detector's person box), end to end
   through ``Sam2VideoSegmenter.segment`` (preprocessing and masks included).
6. ``dit``: one 14B-width MiVE block (D 5120, 40 heads, FFN 13824), forward + backward in bf16 at ``trainer
   plan``'s sequence (79,200 visual + 2,048 condition tokens = 81,248) as one rank of sequence parallelism of
   degree 1, 2, 4 and 8 (``benchmarks.bench_model.measure_block``: L/N tokens, H/N heads, the all-to-alls
   replaced by local copies): time, TFLOP/s, MFU, peak memory, next to the plan's per-block memory; which SDPA
   backend the block ran (read from the dispatched aten op) and the attention forward of each backend alone.
7. ``projection`` (arithmetic on the rows above): GPU-hours of the paper's run on ``--gpus`` GPUs: the filter,
   the portrait harvest over OpenVE's source videos, segmentation, the shards, and training at the recipe's
   global batch and sequence-parallel degree (:func:`projection_rows`).

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
SECTIONS = ("judge", "vlm", "vae", "detector", "sam2", "dit")
DEFAULT_OUT = ROOT / "benchmarks" / "gpu-results"
TOTAL_LIMIT_S = 480.0  # the whole run, model construction included, on one H100 / H200

# The paper's data engine and training (MIVE.md): what the projection multiplies the measured rates by.
OPENVE_PAIRS = 2_450_000
OPENVE_CLIP = (97, 24.0)  # (frames, fps) of a typical OpenVE-3M clip: 65-129 frames at 24-30 fps
# Source videos the portrait harvest scans (distinct original_video of every CSV row): not published; at most one
# per pair, which the projection takes (an upper bound: several edits of one source shrink it).
OPENVE_SOURCE_VIDEOS = OPENVE_PAIRS
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
    judge_clip: tuple[int, float] = OPENVE_CLIP
    """(frames, fps) of each 720P OpenVE clip the judge samples (OpenVE: 65-129 frames at 24-30 fps)."""
    judge_batch_sizes: tuple[int, ...] = (1, 4, 8, 16)
    """Pairs per prefill measured; the recipe's batch size (8) also runs the generate() baseline."""
    judge_min_pairs: int = 16
    """Each batch size is timed over at least this many pairs (the same preprocessed batch repeated)."""
    vlm_samples: int = 6
    """Timed encoder forwards."""
    vae_clip: tuple[int, int, int] | None = None
    """(frames, height, width) of the VAE clip; None: the recipe's (81 frames, its first 720P bucket)."""
    detector_frame: tuple[int, int] = (720, 1280)
    """(height, width) of the frames the person detector gets: OpenVE's 720P sources (the harvest)."""
    detector_batch_sizes: tuple[int, ...] = (1, 8, 32, 64)
    """Frames per detector forward measured; the recipe's (``[portraits.detector] batch_size``) also end to end."""
    detector_min_frames: int = 64
    """Each batch size's forward is timed over at least this many frames (the same batch repeated)."""
    sam2_clip: tuple[int, int, int] | None = None
    """(frames, height, width) of the portrait clip; None: the recipe's (81 frames at 720x1280)."""
    dit_model: str = "mive_14b"
    """``trainer.model`` config whose block width is measured."""
    dit_grid: tuple[int, int, int] = (22, 45, 80)
    """(T'+1, H'/2, W'/2) patch grid: 81 frames at 720P (79,200 tokens)."""
    dit_condition: int = 2048
    """Condition tokens in front of the visual ones: ``trainer plan``'s (``PlanConfig.num_condition_tokens``),
    so the block runs the plan's L = 81,248 tokens."""
    dit_sp_degrees: tuple[int, ...] = (1, 2, 4, 8)
    """Sequence-parallel degrees whose per-rank share of the block is measured (each divides the heads)."""
    dit_reps: int = 2
    """Timed forward + backward runs of the block per degree, after one warm-up (the fastest is kept)."""
    dit_compiled: bool = True
    """Also time the block at SP 1 with its forward compiled (``train.parallel.compile_blocks``): the
    compiled-vs-eager row. The compilation (inductor) runs in the warm-up."""
    warmup: int = 1
    """Untimed runs before each timed measurement (kernel selection, autotuning, caches)."""
    min_reps: int = 2
    """Fewest timed runs of a measurement."""
    time_limits: dict[str, float] = field(
        default_factory=lambda: {
            "judge": 120.0,
            "vlm": 60.0,
            "vae": 100.0,
            "detector": 30.0,
            "sam2": 70.0,
            "dit": 80.0,
        }
    )
    """Seconds each section may run (its process is killed after that). Together 460 s, plus the shared imports
    within ``TOTAL_LIMIT_S``. The judge's (140 s before the detector came): 8.8B parameters x 2 x about 2.6K tokens
    per pair = 46 TFLOP, 0.1 s per pair at 400 TFLOP/s; about 110 pairs with the warm-ups and 16 for the
    generate baseline, plus the processor on the CPU (29 pairs): well under 120 s. ``bench_dit`` and
    ``bench_detector`` say theirs."""


PROFILES = {
    "real": Profile("real"),
    "debug": Profile(
        "debug",
        judge_batch_sizes=(1, 2),
        judge_min_pairs=1,
        vlm_samples=1,
        vae_clip=(9, 64, 64),
        detector_frame=(48, 80),
        detector_batch_sizes=(1, 2),
        detector_min_frames=1,
        sam2_clip=(5, 64, 64),
        dit_model="debug",
        dit_grid=(2, 4, 4),
        dit_condition=16,
        dit_sp_degrees=(1, 2, 4),  # the debug model's 4 heads
        dit_reps=1,
        dit_compiled=False,  # inductor's C++ build of the block takes minutes on a CPU
        warmup=0,
        min_reps=1,
        time_limits=dict.fromkeys(SECTIONS, 120.0),
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


# ---------------------------------------------------------------------------------------------- 4. detector


def bench_detector(bench: Bench) -> Iterator[dict]:
    """RT-DETRv2-R50 person detector at ``[portraits.detector]``'s settings: the model's frames/s per batch size,
    the processor's CPU time, and ``detect()`` end to end as a harvest actor runs it.

    Time (limit 30 s): RT-DETR-R50 is about 136 GFLOP per 640 x 640 frame, so the model alone runs hundreds of
    frames/s in bf16 (the 64 frames of each batch size take well under a second); the processor resizes each
    720P frame on the CPU, a few to tens of ms: 64 frames on all cores for the forward timings, then 32 alone
    and 2 x 32 end to end on the harvest actor's 4 threads, a few seconds; building the 43M parameters on the
    GPU, about a second. The limit leaves room for a processor ten times slower than that.
    """
    import torch

    from dataengine.detect import DetectorConfig, TransformersPersonDetector
    from dataengine.model_configs import random_weights, write_model_folder
    from dataengine.recipe import build_config

    profile = bench.profile
    portraits = _recipe_table(DATA_RECIPE, "portraits")
    recipe = build_config(DetectorConfig, portraits["detector"], "portraits.detector")
    folder = write_model_folder("rtdetr_v2_r50", bench.work / "detector", profile.model_size)
    config = replace(recipe, model=str(folder), device=bench.device)
    start = time.perf_counter()
    with random_weights(bench.device):
        detector = TransformersPersonDetector(config)
    yield _built(bench, "detector", "rtdetr_v2_r50", time.perf_counter() - start, detector.model)

    height, width = profile.detector_frame
    batches = profile.detector_batch_sizes
    recipe_batch = recipe.batch_size if recipe.batch_size in batches else max(batches)
    frames = _random_frames((max(batches), height, width, 3))
    size = detector.processor.size
    dtype = str(detector.dtype).removeprefix("torch.")
    shape = f"{height}x{width} frames -> {size['height']}x{size['width']}, {dtype}"
    # 1. the model alone per batch size, on frames preprocessed before the clock starts
    pixels = detector.processor(images=list(frames), return_tensors="pt")["pixel_values"]
    pixels = pixels.to(detector.device, detector.dtype)

    for batch in batches:
        reps = max(profile.min_reps, math.ceil(profile.detector_min_frames / batch))
        _reset_peak(bench)
        try:
            with torch.inference_mode():
                seconds = _seconds(bench, partial(detector.model, pixel_values=pixels[:batch]), reps)
        except Exception as err:
            if not _is_oom(err):
                raise
            yield _row("detector", f"batch {batch}", "OOM", "", f"{type(err).__name__}: {str(err)[:120]}")
            continue
        key = "detector.model_frames_per_s" if batch == recipe_batch else None
        yield _row("detector", f"model frames/s, batch {batch}", batch / seconds, "frames/s", shape, key)
        yield from _memory_row(bench, "detector", f"peak memory, batch {batch}")
    del pixels
    # 2. as a harvest actor runs it: detect() = processor + model + post-processing, the processor on the actor's
    # CPUs (Ray sets an actor's OMP_NUM_THREADS to its num_cpus); frame decoding not included
    threads = max(1, int(portraits["resources"]["harvest_cpus"]))
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        chunk = frames[:recipe_batch]
        start = time.perf_counter()
        detector.processor(images=list(chunk), return_tensors="pt")
        processor = (time.perf_counter() - start) / len(chunk)
        note = (
            f"{height}x{width} frames -> {size['height']}x{size['width']}, {threads} threads (harvest_cpus)"
        )
        yield _row("detector", "processor CPU s/frame", processor, "s", note)
        seconds = _seconds(bench, partial(detector.detect, chunk), reps=1)
    finally:
        torch.set_num_threads(previous)
    note = (
        f"detect() on {len(chunk)} frames (batch_size {recipe.batch_size}): processor on {threads} threads + model + "
        "post-processing, as one harvest actor; decoding the sampled frames not included"
    )
    yield _row(
        "detector", "frames/s end to end", len(chunk) / seconds, "frames/s", note, key="detector.frames_per_s"
    )


# ---------------------------------------------------------------------------------------------- 5. SAM2


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
    # The recipe prompts with the detector's person boxes (prompt = "detector"), which segment_portrait passes
    # in output pixels: one box here (policy "reject" keeps clips with one person), the segmenter's person prior
    # scaled to the frame, as a detector would find a centred standing person. A fixed-box or points recipe
    # prompts itself (no boxes given).
    boxes = None
    if config.prompt == "detector":
        x0, y0, x1, y1 = SegmenterConfig().prompt_box
        boxes = [(x0 * width, y0 * height, x1 * width, y1 * height)]
    if bench.profile.warmup:
        segmenter.segment(clip[:3], boxes)
    _reset_peak(bench)
    seconds = _seconds(bench, lambda: segmenter.segment(clip, boxes), reps=1, warmup=0)
    dtype = str(segmenter.dtype).removeprefix("torch.")
    prompt = "a detector's person box" if boxes else f"the recipe's {config.prompt} prompt"
    note = f"{frames}x{height}x{width}, {dtype}, {prompt} on frame 0; preprocessing and masks included"
    yield _row("sam2", "frames/s", frames / seconds, "frames/s", note, key="sam2.frames_per_s")
    yield _row("sam2", "seconds per clip", seconds, "s", f"{frames} frames")
    yield from _memory_row(bench, "sam2", "peak memory")


# ---------------------------------------------------------------------------------------------- 6. the DiT


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

    gen = torch.Generator(device=bench.device).manual_seed(0)  # drawn on the device: 3 x 416M values
    q, k, v = (
        torch.randn(1, num_heads, seq, head_dim, generator=gen, device=bench.device, dtype=dtype)
        for _ in range(3)
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


def block_tflops_key(degree: int) -> str:
    """The key of the block's TFLOP/s per rank at sequence-parallel degree ``degree`` (SP 1: ``dit.block_tflops``)."""
    return "dit.block_tflops" if degree == 1 else f"dit.block_tflops_sp{degree}"


def _compiled_rows(
    bench: Bench, config: Any, seq: int, dtype: Any, residual: str, eager_s: float
) -> Iterator[dict]:
    """The block at SP 1 with its forward compiled (``train.parallel.compile_blocks``) against eager."""
    from benchmarks.bench_model import measure_block

    profile = bench.profile
    try:
        m = measure_block(
            config.dim, config.num_heads, config.ffn_dim, seq, profile.dit_condition, dtype, 1,
            device=bench.device, reps=profile.dit_reps, residual_dtype=residual, compiled=True,
        )  # fmt: skip
    except Exception as err:
        if not _is_oom(err):
            raise
        yield _row("dit", "SP 1 compiled", "OOM", "", f"{type(err).__name__}: {str(err)[:120]}")
        return
    yield _row("dit", "SP 1 compiled: block fwd+bwd", m["seconds"] * 1e3, "ms", "torch.compile'd forward")
    yield _row(
        "dit",
        "SP 1 compiled vs eager",
        eager_s / m["seconds"],
        "x",
        "eager time / compiled time (above 1: compiling pays)",
        key="dit.compiled_speedup",
    )
    if m["peak_memory_gib"] is not None:
        yield _row("dit", "SP 1 compiled: peak memory", m["peak_memory_gib"], "GiB", "above the weights")


def bench_dit(bench: Bench) -> Iterator[dict]:
    """One MiVE block of the real width, fwd+bwd at the plan's sequence, as one rank of each sequence-parallel
    degree (``benchmarks.bench_model.measure_block``), next to the plan's per-block numbers; the SDPA backend.

    Time (limit 80 s on one H100 / H200): at L = 81,248, D 5120, FFN 13824 the block's forward is
    L (8 D^2 + 4 D F) = 4.0e13 FLOP of projections and FFN plus 4 L^2 D = 1.35e14 of attention, 1.75e14 in all;
    forward + backward 3x that, 0.53 PFLOP as counted (about 0.7 executed: flash's backward recomputes the
    scores): 1.2-1.7 s per run at 400-500 TFLOP/s. A rank of SP N does 1/N of it (L/N tokens through the
    projections, H/N heads over all L in attention), so SP 1, 2, 4, 8 together are 1.875 SP 1 runs; one
    warm-up + ``dit_reps`` (2) timed runs each: 3 x 1.875 x 1.7 = 10 s. Building the four 246M-parameter blocks
    on the GPU, a second or two; the backend probe (one forward, 0.5 s) and the three backends' attention
    forward alone (1.35e14 FLOP, 3 runs each, the efficient one slower): about 5 s. About 20 s in all, 40 s at
    half the rate: 80 s leaves room for a slower GPU or backend. The compiled block at SP 1 (``dit_compiled``)
    comes last: inductor compiles its forward and backward in the warm-up (not measured on a GPU; on 2 CPU cores
    the debug model took 134 s; a GPU build with Triton kernels is assumed under 60 s), then 2 timed runs of
    1.2-1.7 s. If that overruns the section's limit only its rows are lost (the rows so far are kept); give it
    room with ``--time-limit dit=150``.
    """
    import torch

    from benchmarks.bench_model import measure_block
    from trainer.model import MiVEBlock, get_config, rope_cos_sin
    from trainer.plan import parameter_breakdown

    profile = bench.profile
    config = get_config(profile.dit_model)
    residual = _recipe_table(TRAIN_RECIPE, "train", "parallel").get("residual_dtype", "float32")
    dtype = torch.bfloat16 if bench.cuda else torch.float32
    dtype_name = str(dtype).removeprefix("torch.")
    frames, height, width = profile.dit_grid
    seq = profile.dit_condition + frames * height * width
    params = parameter_breakdown(config)
    eager_seconds = None  # the SP 1 block's, for the compiled-vs-eager row
    yield _row(
        "dit",
        "plan: parameters per block",
        params.per_block,
        "",
        f"{config.dim} wide; gathered {2 * params.per_block / 2**30:.2f} GiB in bf16",
    )
    for degree in profile.dit_sp_degrees:
        label = f"SP {degree}"
        try:
            m = measure_block(
                config.dim,
                config.num_heads,
                config.ffn_dim,
                seq,
                profile.dit_condition,
                dtype,
                degree,
                device=bench.device,
                reps=profile.dit_reps,
                residual_dtype=residual,
            )
        except Exception as err:
            if not _is_oom(err):
                raise
            yield _row("dit", label, "OOM", "", f"{type(err).__name__}: {str(err)[:120]}")
            continue
        yield _row(
            "dit",
            f"{label}: tokens per rank",
            m["tokens_per_rank"],
            "tokens",
            f"of L {seq:,} ({profile.dit_condition:,} condition); {m['heads_per_rank']} of {config.num_heads} heads",
            key=f"dit.tokens_per_rank_sp{degree}",
        )
        note = (
            f"{m['device']}, D {config.dim}, {dtype_name}, residual {residual}, fastest of {profile.dit_reps}"
        )
        yield _row("dit", f"{label}: block fwd+bwd", m["seconds"] * 1e3, "ms", note)
        yield _row(
            "dit",
            f"{label}: TFLOP/s per rank",
            m["tflops"],
            "TFLOP/s",
            "3 x forward matmul FLOPs / N",
            key=block_tflops_key(degree),
        )
        if m["mfu"] is not None:
            yield _row("dit", f"{label}: MFU", 100 * m["mfu"], "%", "of the dense bf16 peak")
        plan = (
            f"plan: block {m['plan_block_gib']:.2f} GiB (saved {m['plan_saved_gib']:.2f} + transient "
            f"{m['plan_transient_gib']:.2f} + input)"
        )
        if m["peak_memory_gib"] is not None:
            yield _row(
                "dit", f"{label}: peak memory", m["peak_memory_gib"], "GiB", f"above the weights; {plan}"
            )
        else:
            yield _row("dit", f"{label}: plan's block memory", m["plan_block_gib"], "GiB", plan)
        if degree == 1:
            eager_seconds = m["seconds"]

    # which SDPA kernel the block's attention dispatches to (SP 1, the whole sequence)
    device = torch.device(bench.device)
    torch.manual_seed(0)
    with torch.device(device):
        block = MiVEBlock(replace(config, residual_dtype=residual)).to(dtype)
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
    if profile.dit_compiled and eager_seconds is not None:
        yield from _compiled_rows(bench, config, seq, dtype, residual, eager_seconds)


BENCHMARKS: dict[str, Callable[[Bench], Iterator[dict]]] = {
    "judge": bench_judge,
    "vlm": bench_vlm,
    "vae": bench_vae,
    "detector": bench_detector,
    "sam2": bench_sam2,
    "dit": bench_dit,
}


# ---------------------------------------------------------------------------------------------- 7. projection


def projection_rows(rows: list[dict], num_gpus: int) -> list[dict]:
    """GPU-hours of the paper's run from the measured rates (rows with a ``key``); a missing rate is a row saying so.

    Filter (the judge over every OpenVE pair), harvest (the person detector over every OpenVE source video's
    frames sampled at ``[portraits.detector] sample_fps``), segment (SAM2 and the detector's prompt over each
    portrait clip), shards (VLM + VAE per training sample), train (``trainer plan`` of
    ``manifests/train_mive_14b.toml`` on 8 GPUs: its global batch per step, its FLOPs per sample, at the block's
    TFLOP/s measured at the plan's tokens per GPU, i.e. at the recipe's sequence-parallel degree).
    """
    from dataengine.detect import DetectorConfig
    from dataengine.recipe import build_config
    from dataengine.video import sample_indices
    from trainer.parallel import ParallelConfig
    from trainer.plan import REFERENCE_TFLOPS_PER_GPU, PlanConfig, make_plan, tokens_per_rank

    rates = {
        row["key"]: row["value"] for row in rows if "key" in row and isinstance(row["value"], int | float)
    }
    portraits = _recipe_table(DATA_RECIPE, "portraits")
    detector = build_config(DetectorConfig, portraits["detector"], "portraits.detector")
    harvest_gpus = portraits["resources"]["harvest_gpus"]
    clips = 3 * portraits["pairs_per_type"]  # at most one portrait clip per pair (clips may be reused)
    # the detector's frames of one OpenVE clip: detect_sampled's nearest frames at sample_fps over the whole clip
    video_frames, video_fps = OPENVE_CLIP
    sampled = len(np.unique(sample_indices(video_frames, video_fps, detector.sample_fps)))
    train = _recipe_table(TRAIN_RECIPE, "train")
    steps = train["steps"]
    # trainer plan of the paper's run on 8 GPUs (read here, not through trainer.train, whose data loader needs
    # webdataset, which GPU machines may lack): the dp x sp mesh, the global batch, the tokens per GPU
    parallel = build_config(ParallelConfig, train["parallel"], "train.parallel")
    plan = make_plan(
        train["model"],
        parallel,
        PlanConfig(num_gpus=8),
        train["data"]["batch_size"],
        train["grad_accum"],
        steps,
    )
    sp = plan.parallel.sequence_parallel
    samples = steps * plan.global_batch  # data-parallel replicas x micro-batch x accumulation, per step
    tokens_per_gpu = tokens_per_rank(plan.shape.seq_len, sp)
    mesh = (
        f"{plan.data_parallel} dp x {sp} sp, global batch {plan.data_parallel} x {plan.samples_per_gpu} x "
        f"{plan.grad_accum} = {plan.global_batch}"
    )
    train_key = block_tflops_key(sp)
    measured_tokens = rates.get(f"dit.tokens_per_rank_sp{sp}")
    if train_key in rates:
        train_rate = rates[train_key]
        if measured_tokens == tokens_per_gpu:
            at = f"the block's TFLOP/s at the plan's {tokens_per_gpu:,} tokens per GPU (SP {sp})"
        else:
            at = (
                f"the block's TFLOP/s at {measured_tokens} tokens per rank, not the plan's {tokens_per_gpu:,}"
            )
    else:
        train_rate = rates.get("dit.block_tflops")
        at = (
            f"SP {sp} not measured: the SP 1 block's TFLOP/s at {rates.get('dit.tokens_per_rank_sp1')} tokens"
        )

    def seconds_each(*keys: str, per: Callable[..., float]) -> float | None:
        values = [rates.get(key) for key in keys]
        return per(*values) if all(v is not None and v > 0 for v in values) else None

    items = [
        (
            f"filter: judge {OPENVE_PAIRS / 1e6:.2f}M pairs",
            OPENVE_PAIRS,
            seconds_each("judge.pairs_per_s", per=lambda r: 1 / r),
            "judge; the recipe's batch size; frame decoding (CPU) not included",
        ),
        (
            f"harvest: detect people in {OPENVE_SOURCE_VIDEOS / 1e6:.2f}M source videos",
            OPENVE_SOURCE_VIDEOS,
            seconds_each("detector.frames_per_s", per=lambda r: sampled / r * harvest_gpus),
            f"{sampled} frames each ({video_frames} at {video_fps:g} fps sampled at {detector.sample_fps:g} fps), "
            f"detect() end to end; an actor holds {harvest_gpus:g} GPU ([portraits.resources]): GPU-h = actor-h x "
            f"{harvest_gpus:g}; at most one source video per pair; decoding not included",
        ),
        (
            f"portraits: segment {clips:,} clips",
            clips,
            seconds_each(
                "sam2.frames_per_s",
                "detector.frames_per_s",
                per=lambda sam2, det: portraits["num_frames"] / sam2 + sampled / det,
            ),
            f"SAM2 on {portraits['num_frames']} frames + the detector's prompt on at most {sampled} sampled frames "
            "each; at most one clip per pair",
        ),
        (
            f"shards: encode {TRAINING_SAMPLES // 1000}K samples",
            TRAINING_SAMPLES,
            seconds_each("vlm.samples_per_s", "vae.seconds_per_sample", per=lambda vlm, vae: 1 / vlm + vae),
            "Qwen3-VL forward + VAE (source, target, reference); decoding not included",
        ),
        (
            f"train: {steps:,} steps x {plan.global_batch} samples",
            samples,
            None if not train_rate else plan.flops.train_per_sample / (train_rate * 1e12),
            f"{mesh}; plan's {plan.flops.train_per_sample:.3g} FLOPs per sample (activation checkpointing) at "
            f"{at}; FSDP2 and all-to-all communication not included",
        ),
    ]
    out: list[dict] = []
    hours_each: list[float] = []
    # the `dataengine reproduce` step each row projects: it reads ``gpu_seconds_each`` and multiplies it by
    # the item count of the recipe it runs
    step_names = ("filter", "harvest-portraits", "synth-portraits", "shards", "fit")
    for step, (label, count, seconds, note) in zip(step_names, items, strict=True):
        if seconds is None:
            out.append(
                _row("projection", label, "n/a", "GPU-h", "its section has no rate (failed or skipped)")
            )
            continue
        hours = count * seconds / 3600
        hours_each.append(hours)
        row = _row(
            "projection", label, hours, "GPU-h", f"{hours / num_gpus:,.1f} h on {num_gpus} GPUs; {note}"
        )
        out.append({**row, "step": step, "gpu_seconds_each": seconds})
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
            "transformers.models.rt_detr_v2.modeling_rt_detr_v2",
            "diffusers.models.autoencoders.autoencoder_kl_wan",
            "diffusers.models.transformers.transformer_wan",
            "trainer.model",
            "benchmarks.bench_model",
            "dataengine.judge",
            "dataengine.detect",
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
