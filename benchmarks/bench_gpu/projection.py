"""Section 7, ``projection``: GPU-hours of the paper's run from the measured rates and ``trainer plan``'s
arithmetic (``trainer.plan.make_plan``, ``tokens_per_rank``, the FLOPs per sample): pure arithmetic on rows.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from benchmarks.bench_gpu.common import (
    DATA_RECIPE,
    OPENVE_CLIP,
    OPENVE_PAIRS,
    OPENVE_SOURCE_VIDEOS,
    PAPER_TRAIN_GPU_HOURS,
    TRAIN_RECIPE,
    TRAINING_SAMPLES,
    _recipe_table,
    _row,
)
from benchmarks.bench_gpu.dit import block_tflops_key

# ---------------------------------------------------------------------------------------------- 7. projection


def projection_rows(rows: list[dict], num_gpus: int) -> list[dict]:
    """GPU-hours of the paper's run from the measured rates (rows with a ``key``); a missing rate is a row saying so.

    Filter (the judge over every OpenVE pair), harvest (the person detector over every OpenVE source video's
    frames sampled at ``[portraits.detector] sample_fps``), segment (SAM2 and the detector's prompt over each
    portrait clip), shards (VLM + VAE per training sample), train (``trainer plan`` of
    ``manifests/train_mive_14b.toml`` on 8 GPUs: its global batch per step, its FLOPs per sample, at the block's
    TFLOP/s measured at the plan's tokens per GPU, i.e. at the recipe's sequence-parallel degree).
    """
    from dataengine.formats.recipe import build_config
    from dataengine.media.video import sample_indices
    from dataengine.models.detect import DetectorConfig
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
