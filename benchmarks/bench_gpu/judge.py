"""Section 1, ``judge``: the Qwen3-VL-8B judge's pairs/s and prefill tokens/s at the recipe's frame budget."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import replace

from benchmarks.bench_gpu.common import (
    DATA_RECIPE,
    INSTRUCTION,
    Bench,
    _built,
    _is_oom,
    _memory_row,
    _random_frames,
    _recipe_table,
    _reset_peak,
    _row,
    _seconds,
)

# ---------------------------------------------------------------------------------------------- 1. judge


def bench_judge(bench: Bench) -> Iterator[dict]:
    """Qwen3-VL-8B judge: single-pass scoring per batch size, and the generate()-then-parse baseline."""
    import torch
    from transformers.video_utils import VideoMetadata

    from benchmarks.bench_filter import ANSWER, _generate_scores
    from benchmarks.bench_gpu.model_configs import random_weights, write_model_folder
    from dataengine.formats.recipe import build_config
    from dataengine.formats.shard_format import TOKEN_TYPES
    from dataengine.models.judge import Judge, JudgeConfig, sample_frame_indices

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
