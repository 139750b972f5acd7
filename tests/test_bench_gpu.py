"""`make bench-gpu` end to end on a CPU with the debug configs (the real sizes need a GPU: benchmarks/RESULTS.md)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


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


@pytest.mark.slow
def test_a_killed_section_leaves_the_others_rows_and_says_why(smoke) -> None:
    proc, result, out = smoke
    assert proc.returncode == 1, proc.stderr[-2000:]  # a section failed
    status = {name: s["status"] for name, s in result["sections"].items()}
    assert status == {"judge": "ok", "vlm": "ok", "vae": "timeout", "sam2": "ok", "dit": "ok"}
    rows = result["rows"]
    failed = [row for row in rows if row["metric"] == "FAILED"]
    assert [row["benchmark"] for row in failed] == ["vae"] and "timed out" in failed[0]["note"]
    assert "vae: timeout: timed out" in proc.stderr
    rates = {row["key"]: row["value"] for row in rows if "key" in row}
    for key in ("judge.pairs_per_s", "vlm.samples_per_s", "sam2.frames_per_s", "dit.block_tflops"):
        assert isinstance(rates[key], float) and rates[key] > 0, key
    assert "vae.seconds_per_sample" not in rates
    # one printed table and the same rows in the Markdown file
    for name in ("judge", "vlm", "vae", "sam2", "dit", "projection"):
        assert f"\n{name} " in proc.stdout
    markdown = (out / "bench_gpu.md").read_text()
    assert sum(line.startswith("| ") for line in markdown.splitlines()) == len(rows) + 1  # + the header
    # the projection: GPU-hours from the measured rates; the shards step needs the VAE's rate, so it is n/a
    projection = {row["metric"]: row for row in rows if row["benchmark"] == "projection"}
    filter_hours = projection["filter: judge 2.45M pairs"]["value"]
    assert filter_hours == pytest.approx(2_450_000 / rates["judge.pairs_per_s"] / 3600)
    assert projection["shards: encode 30K samples"]["value"] == "n/a"
    assert projection["the paper's whole run"]["value"] == "n/a"


@pytest.mark.slow
def test_token_counts_are_those_of_the_recipe_budgets(smoke) -> None:
    """Vision tokens per judge pair and per encoder sample, against the processors' own arithmetic."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    from benchmarks.bench_shards import paper_vlm_tokens
    from dataengine.judge import sample_frame_indices

    rates = {row["key"]: row["value"] for row in smoke[1]["rows"] if "key" in row}
    expected = paper_vlm_tokens(720, 1280)  # openve.toml's [shards.vlm] budgets, 81 frames at 16 fps
    assert (rates["vlm.image_tokens"], rates["vlm.video_tokens"]) == (expected["image"], expected["video"])
    # the judge: [filter.judge] samples 2 fps of a 97-frame 24 fps clip, each frame at most 262144 px
    height, width = smart_resize(720, 1280, factor=32, min_pixels=4096, max_pixels=262144)
    frames = len(sample_frame_indices(97, 24.0, 2.0, 16))
    assert (height, width, frames) == (384, 672, 8)  # the recipe's own comment: 720x1280 -> 384x672
    assert rates["judge.video_tokens"] == 2 * (frames // 2) * (height // 32) * (width // 32)


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

    from dataengine.judge import Judge, JudgeConfig
    from dataengine.model_configs import random_weights, write_model_folder

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
