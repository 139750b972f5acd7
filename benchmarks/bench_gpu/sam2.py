"""Section 5, ``sam2``: SAM2.1 hiera-large propagating a person through an 81-frame 720P clip."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace

from benchmarks.bench_gpu.common import (
    DATA_RECIPE,
    Bench,
    _built,
    _memory_row,
    _random_frames,
    _recipe_table,
    _reset_peak,
    _row,
    _seconds,
)

# ---------------------------------------------------------------------------------------------- 5. SAM2


def bench_sam2(bench: Bench) -> Iterator[dict]:
    """SAM2.1 hiera-large video propagation of one box-prompted person through a portrait clip."""
    from benchmarks.bench_gpu.model_configs import random_weights, write_model_folder
    from dataengine.formats.recipe import build_config
    from dataengine.models.segment import Sam2VideoSegmenter, SegmenterConfig

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
