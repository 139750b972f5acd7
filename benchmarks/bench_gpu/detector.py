"""Section 4, ``detector``: the RT-DETRv2-R50 person detector at ``[portraits.detector]``'s settings."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import replace
from functools import partial

from benchmarks.bench_gpu.common import (
    DATA_RECIPE,
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

    from benchmarks.bench_gpu.model_configs import random_weights, write_model_folder
    from dataengine.formats.recipe import build_config
    from dataengine.models.detect import DetectorConfig, TransformersPersonDetector

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
