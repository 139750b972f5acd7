"""Section 3, ``vae``: the Wan2.1 VAE on one 81-frame 720P clip, with and without tiling."""

from __future__ import annotations

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

# ---------------------------------------------------------------------------------------------- 3. Wan VAE


def bench_vae(bench: Bench) -> Iterator[dict]:
    """Wan2.1 VAE: one 81-frame 720P clip without and with tiling, the reference frame, and a shards sample."""
    from benchmarks.bench_gpu.model_configs import random_weights, write_model_folder
    from dataengine.formats.recipe import build_config
    from dataengine.models.vae import WanVaeConfig, WanVaeEncoder

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
