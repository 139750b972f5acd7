"""Section 2, ``vlm``: the Qwen3-VL-8B encoder's samples/s at ``[shards.vlm]``'s budgets."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from benchmarks.bench_gpu.common import (
    DATA_RECIPE,
    INSTRUCTION,
    Bench,
    _built,
    _memory_row,
    _random_frames,
    _recipe_table,
    _reset_peak,
    _row,
    _seconds,
)

# ---------------------------------------------------------------------------------------------- 2. VLM encoder


def bench_vlm(bench: Bench) -> Iterator[dict]:
    """Qwen3-VL-8B encoder of the shards step at the recipe's budgets: samples/s and S."""
    from benchmarks.bench_gpu.model_configs import random_weights, write_model_folder
    from dataengine.formats.recipe import build_config
    from dataengine.formats.shard_format import TOKEN_TYPES
    from dataengine.models.vlm import Qwen3VLEncoder, Qwen3VLEncoderConfig

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
