"""`make bench-gpu` end to end on a CPU with the debug configs (the real sizes need a GPU: benchmarks/RESULTS.md)."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import REPO

ROOT = REPO


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[subprocess.CompletedProcess, dict, Path]:
    """One run of the command: every section, the VAE one given too little time to finish."""
    out = tmp_path_factory.mktemp("bench_gpu")
    command = [
        sys.executable,
        "-m",
        "benchmarks.bench_gpu",
        str(out),
        "--profile",
        "debug",
        "--device",
        "cpu",
    ]
    proc = subprocess.run(
        [*command, "--time-limit", "vae=0.01"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert (out / "bench_gpu.json").exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, json.loads((out / "bench_gpu.json").read_text()), out


@pytest.mark.process
@pytest.mark.slow
def test_a_killed_section_leaves_the_others_rows_and_says_why(smoke) -> None:
    proc, result, out = smoke
    assert proc.returncode == 1, proc.stderr[-2000:]  # a section failed
    status = {name: s["status"] for name, s in result["sections"].items()}
    assert status == {
        "judge": "ok",
        "vlm": "ok",
        "vae": "timeout",
        "detector": "ok",
        "sam2": "ok",
        "dit": "ok",
    }, proc.stderr[-3000:]
    rows = result["rows"]
    failed = [row for row in rows if row["metric"] == "FAILED"]
    assert [row["benchmark"] for row in failed] == ["vae"] and "timed out" in failed[0]["note"]
    assert "vae: timeout: timed out" in proc.stderr
    rates = {row["key"]: row["value"] for row in rows if "key" in row}
    for key in (
        "judge.pairs_per_s",
        "vlm.samples_per_s",
        "detector.frames_per_s",
        "detector.model_frames_per_s",
        "sam2.frames_per_s",
        "dit.block_tflops",
        "dit.block_tflops_sp2",
        "dit.block_tflops_sp4",
    ):
        assert isinstance(rates[key], float) and rates[key] > 0, key
    assert "vae.seconds_per_sample" not in rates
    # one printed table and the same rows in the Markdown file
    for name in ("judge", "vlm", "vae", "detector", "sam2", "dit", "projection"):
        assert f"\n{name} " in proc.stdout
    markdown = (out / "bench_gpu.md").read_text()
    assert sum(line.startswith("| ") for line in markdown.splitlines()) == len(rows) + 1  # + the header
    # the projection: GPU-hours from the measured rates; the shards step needs the VAE's rate, so it is n/a
    projection = {row["metric"]: row for row in rows if row["benchmark"] == "projection"}
    filter_hours = projection["filter: judge 2.45M pairs"]["value"]
    assert filter_hours == pytest.approx(2_450_000 / rates["judge.pairs_per_s"] / 3600)
    assert projection["shards: encode 30K samples"]["value"] == "n/a"
    assert isinstance(projection["harvest: detect people in 2.45M source videos"]["value"], float)
    assert isinstance(projection["portraits: segment 6,000 clips"]["value"], float)
    assert projection["the paper's whole run"]["value"] == "n/a"


@pytest.mark.process
@pytest.mark.slow
def test_token_counts_are_those_of_the_recipe_budgets(smoke) -> None:
    """Vision tokens per judge pair and per encoder sample, against the processors' own arithmetic."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    from benchmarks.bench_shards import paper_vlm_tokens
    from dataengine.models.judge import sample_frame_indices

    rates = {row["key"]: row["value"] for row in smoke[1]["rows"] if "key" in row}
    expected = paper_vlm_tokens(720, 1280)  # openve.toml's [shards.vlm] budgets, 81 frames at 16 fps
    assert (rates["vlm.image_tokens"], rates["vlm.video_tokens"]) == (expected["image"], expected["video"])
    # the judge: [filter.judge] samples 2 fps of a 97-frame 24 fps clip, each frame at most 262144 px
    height, width = smart_resize(720, 1280, factor=32, min_pixels=4096, max_pixels=262144)
    frames = len(sample_frame_indices(97, 24.0, 2.0, 16))
    assert (height, width, frames) == (384, 672, 8)  # the recipe's own comment: 720x1280 -> 384x672
    assert rates["judge.video_tokens"] == 2 * (frames // 2) * (height // 32) * (width // 32)


@pytest.mark.process
@pytest.mark.slow
def test_the_block_is_measured_as_one_rank_of_each_sequence_parallel_degree(smoke) -> None:
    """The dit section's per-rank shares: ceil(L / N) tokens and H / N heads of the debug block (L = 16 condition
    tokens + a 2 x 4 x 4 grid, 4 heads), and the peak-memory-free CPU rows carry the plan's block memory."""
    rows = {row["metric"]: row for row in smoke[1]["rows"] if row["benchmark"] == "dit"}
    seq = 16 + 2 * 4 * 4
    for degree in (1, 2, 4):
        tokens = rows[f"SP {degree}: tokens per rank"]
        assert (
            tokens["value"] == math.ceil(seq / degree)
            and tokens.get("key") == f"dit.tokens_per_rank_sp{degree}"
        )
        assert f"{4 // degree} of 4 heads" in tokens["note"]
        assert rows[f"SP {degree}: block fwd+bwd"]["value"] > 0
        assert rows[f"SP {degree}: plan's block memory"]["value"] > 0
    assert rows["SDPA backend in the block"]["value"] == "flash (CPU)"


def test_real_profile_measures_the_plans_sequence_and_width() -> None:
    """The dit section's real workload is the paper run's: trainer plan's L for 81 frames at 720P and its
    condition tokens, the 14B block's width, the recipe's SP degree among those measured."""
    from benchmarks.bench_gpu import PROFILES
    from trainer.model import get_config
    from trainer.plan import PlanConfig, token_shape

    profile = PROFILES["real"]
    config = get_config(profile.dit_model)
    assert (config.dim, config.num_heads, config.ffn_dim) == (5120, 40, 13824)
    shape = token_shape(config, 81, 720, 1280, PlanConfig().num_condition_tokens)
    frames, height, width = profile.dit_grid
    assert profile.dit_condition + frames * height * width == shape.seq_len == 81_248
    assert set(profile.dit_sp_degrees) == {1, 2, 4, 8}
    assert sum(profile.time_limits.values()) <= 480 - 15  # the sections' limits leave time for the imports


def test_projection_of_the_sequence_parallel_recipe_against_a_hand_computation() -> None:
    """GPU-hours from given rates, recomputed from the recipes' numbers: samples per step are the global batch
    (8 GPUs / SP 2 replicas x batch x accumulation), the rate is the block's at SP 2 (the plan's tokens per GPU),
    FLOPs per sample by the block formula; the harvest is every OpenVE source's sampled frames."""
    import tomllib

    from benchmarks.bench_gpu import DATA_RECIPE, TRAIN_RECIPE, projection_rows

    train = tomllib.loads(TRAIN_RECIPE.read_text())["train"]
    portraits = tomllib.loads(DATA_RECIPE.read_text())["portraits"]
    sp = train["parallel"]["sequence_parallel"]
    global_batch = 8 // sp * train["data"]["batch_size"] * train["grad_accum"]
    assert (sp, global_batch) == (2, 8)  # the recipe's comment: 4 data-parallel replicas x 1 x 2
    seq = 21 * 45 * 80 + 45 * 80 + 2048  # 21 latent frames + the reference frame, 2 x 2 patches of 90 x 160
    rates = {
        "judge.pairs_per_s": 10.0,
        "detector.frames_per_s": 400.0,
        "sam2.frames_per_s": 20.0,
        "vlm.samples_per_s": 2.0,
        "vae.seconds_per_sample": 1.5,
        "dit.block_tflops": 300.0,
        "dit.tokens_per_rank_sp1": seq,
        "dit.block_tflops_sp2": 250.0,
        "dit.tokens_per_rank_sp2": math.ceil(seq / 2),
    }
    rows = [{"benchmark": "x", "metric": k, "value": v, "unit": "", "key": k} for k, v in rates.items()]
    projection = {row["metric"]: row for row in projection_rows(rows, num_gpus=8)}

    dim, ffn, layers = 5120, 13824, 40
    per_block = 2 * seq * (4 * dim * dim + 2 * dim * ffn) + 4 * seq * seq * dim  # forward FLOPs of one block
    flops = 4 * layers * per_block  # fwd + bwd + the checkpointed recompute; the plan adds the small rest
    train_row = projection[f"train: 8,000 steps x {global_batch} samples"]
    assert train_row["value"] == pytest.approx(8000 * global_batch * flops / 250e12 / 3600, rel=0.002)
    assert f"the plan's {math.ceil(seq / 2):,} tokens per GPU (SP 2)" in train_row["note"]

    # the detector's ticks that fall within a 97-frame 24 fps clip's span (96/24 = 4 s), at exact timestamps:
    # 0, 0.5, ..., 4.0 s at 2 fps, 9 frames
    span, rate = Fraction(96, 24), Fraction(portraits["detector"]["sample_fps"]).limit_denominator()
    sampled = sum(1 for k in range(1000) if k / rate <= span)
    harvest = 2_450_000 * sampled / 400 * portraits["resources"]["harvest_gpus"] / 3600
    assert projection["harvest: detect people in 2.45M source videos"]["value"] == pytest.approx(harvest)
    clips = 3 * portraits["pairs_per_type"]
    segment = clips * (portraits["num_frames"] / 20 + sampled / 400) / 3600
    assert projection[f"portraits: segment {clips:,} clips"]["value"] == pytest.approx(segment)
    parts = [
        2_450_000 / 10 / 3600,
        harvest,
        segment,
        30_000 * (1 / 2 + 1.5) / 3600,
        train_row["value"],
    ]
    assert projection["the paper's whole run"]["value"] == pytest.approx(sum(parts))
    # without the SP 2 measurement the SP 1 rate stands in, and says so
    del rates["dit.block_tflops_sp2"]
    rows = [{"benchmark": "x", "metric": k, "value": v, "unit": "", "key": k} for k, v in rates.items()]
    fallback = {row["metric"]: row for row in projection_rows(rows, num_gpus=8)}[train_row["metric"]]
    assert fallback["value"] == pytest.approx(train_row["value"] * 250 / 300)
    assert "SP 2 not measured" in fallback["note"]


def test_attention_backend_is_read_from_the_dispatched_op() -> None:
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from benchmarks.bench_gpu import attention_backends

    q = torch.randn(1, 2, 16, 8)
    assert attention_backends(lambda: F.scaled_dot_product_attention(q, q, q)) == ["flash (CPU)"]
    with sdpa_kernel([SDPBackend.MATH]):
        assert attention_backends(lambda: F.scaled_dot_product_attention(q, q, q)) == ["math"]
    assert attention_backends(lambda: q @ q.transpose(-1, -2)) == []


def test_random_weights_judge_equals_one_loaded_from_saved_weights(tmp_path) -> None:
    """The benchmark's Judge (from_pretrained redirected to a random build) is the ordinary one, weights aside."""
    from transformers import Qwen3VLForConditionalGeneration
    from transformers.video_utils import VideoMetadata

    from benchmarks.bench_gpu.model_configs import random_weights, write_model_folder
    from dataengine.models.judge import Judge, JudgeConfig

    folder = write_model_folder("qwen3vl_8b", tmp_path / "config_only", "debug")
    torch.manual_seed(0)
    with random_weights("cpu"):
        judge = Judge(JudgeConfig(model=str(folder), device="cpu", max_pixels_per_frame=64 * 64))
    saved = tmp_path / "saved"
    shutil.copytree(folder, saved)
    judge.model.save_pretrained(saved)
    reference = Judge(JudgeConfig(model=str(saved), device="cpu", max_pixels_per_frame=64 * 64))
    assert set(vars(judge)) == set(vars(reference))
    assert (judge.digit_ids, judge.axis_ids, judge.dtype) == (
        reference.digit_ids,
        reference.axis_ids,
        reference.dtype,
    )
    frames = np.random.default_rng(0).integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    clip = (
        frames,
        VideoMetadata(total_num_frames=4, fps=2.0, width=64, height=64, frames_indices=[0, 1, 2, 3]),
    )
    inputs = judge.processor_inputs([judge.prompt_text("Add a hat.")], [clip, clip])
    ours, theirs = judge.score_inputs(inputs), reference.score_inputs(inputs)
    np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-5)
    # a keyword the redirect cannot honour is an error, and outside the context the library's loader is back
    with random_weights("cpu"), pytest.raises(TypeError, match="device_map"):
        Qwen3VLForConditionalGeneration.from_pretrained(folder, device_map="auto")
    with pytest.raises(OSError):
        Qwen3VLForConditionalGeneration.from_pretrained(folder)  # config only: no weights to read
