"""``trainer sample`` and ``trainer export`` on a real (tiny) training run: the session's debug run
(``trained_debug_run``: the debug DiT trained four steps by ``trainer fit`` on shards whose index names the tiny
Wan VAE and the tiny Qwen3-VL)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dataengine.media.clips import resize_and_crop
from dataengine.media.video import probe, read_frames, write_mp4
from tests.helpers import REPO
from trainer.flow import Conditioning, euler_sample, shifted_sigmas
from trainer.sample import (
    SampleConfig,
    export_checkpoint,
    load_checkpoint,
    resolve_checkpoint,
    sample_video,
)

NUM_FRAMES, HEIGHT, WIDTH, FPS = 9, 32, 64, 12.0


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory, trained_debug_run) -> Path:
    """The session's debug run (``runs/tiny``: the debug DiT trained by ``trainer fit`` on shards whose index
    names the tiny VAE and Qwen3-VL) beside a source video and a reference image to edit."""
    assert (trained_debug_run.num_frames, trained_debug_run.height, trained_debug_run.width) == (
        NUM_FRAMES, HEIGHT, WIDTH,
    )  # fmt: skip
    root = tmp_path_factory.mktemp("sample")
    (root / "runs").mkdir()
    (root / "runs" / "tiny").symlink_to(trained_debug_run.run, target_is_directory=True)

    # smooth frames (H.264 keeps them): gradients and a moving square, taller than the bucket's aspect
    yy, xx = np.mgrid[0 : HEIGHT + 16, 0 : WIDTH + 16]
    frames = np.zeros((NUM_FRAMES + 3, HEIGHT + 16, WIDTH + 16, 3), dtype=np.uint8)
    for t in range(len(frames)):
        frames[t, ..., 0] = (xx * 3) % 256
        frames[t, ..., 1] = (yy * 4) % 256
        frames[t, 10:22, 4 + 3 * t : 16 + 3 * t, 2] = 255
    write_mp4(
        root / "source.mp4", frames, FPS
    )  # larger than the bucket and longer than the clip: resized, cut
    Image.fromarray(frames[0, ::-1]).save(root / "reference.png")
    return root


def test_shifted_schedule_is_wan_formula() -> None:
    sigmas = shifted_sigmas(4, 5.0)
    u = np.array([1.0, 0.75, 0.5, 0.25, 0.0])
    np.testing.assert_allclose(sigmas.numpy(), 5 * u / (1 + 4 * u), rtol=1e-12)
    assert sigmas[0] == 1.0 and sigmas[-1] == 0.0


def test_euler_recovers_x0_from_the_exact_velocity() -> None:
    """With the true velocity of the training path (x_t - x0) / sigma = noise - x0, Euler lands on x0."""
    x0 = torch.randn(1, 16, 3, 4, 6)

    class Oracle(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.anchor = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x, source, reference, timestep, first, last, sp=None):  # noqa: ANN001
            return (x - x0) / (timestep.view(-1, 1, 1, 1, 1) / 1000)

    cond = Conditioning(
        torch.zeros_like(x0), torch.zeros(1, 16, 1, 4, 6), torch.zeros(1, 2, 8), torch.zeros(1, 2, 8)
    )
    out = euler_sample(Oracle(), cond, num_steps=7, shift=5.0, seed=3)
    torch.testing.assert_close(out, x0, rtol=1e-5, atol=1e-5)


def test_sample_writes_edited_and_comparison_videos(trained_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "edited.mp4"
    result = sample_video(
        trained_run / "runs" / "tiny",
        trained_run / "source.mp4",
        "Add a red hat.",
        trained_run / "reference.png",
        out,
        compare=True,
        config=SampleConfig(num_steps=3),
    )
    info = probe(out)
    assert (info.num_frames, info.width, info.height) == (NUM_FRAMES, WIDTH, HEIGHT)
    assert info.fps == pytest.approx(
        FPS, rel=1e-3
    )  # the source's rate (the demo recipe keeps it: clip.fps = 0)
    assert result.num_condition_tokens > 0 and result.steps == 3 and result.shift == 5.0  # train.flow.shift
    compare = probe(result.compare)
    assert (compare.num_frames, compare.width, compare.height) == (NUM_FRAMES, 3 * WIDTH, HEIGHT)
    # the left third of the comparison is the source prepared as the shards step does (cover-resize + crop)
    source = resize_and_crop(read_frames(trained_run / "source.mp4", [4]), (HEIGHT, WIDTH))[0].astype(float)
    left = read_frames(result.compare, [4])[0][:, :WIDTH].astype(float)
    assert np.abs(left - source).mean() < 6  # two H.264 encodes (crf 18) of smooth frames


def test_export_round_trips(trained_run: Path, tmp_path: Path) -> None:
    kind, step_dir = resolve_checkpoint(trained_run / "runs" / "tiny")
    assert kind == "dcp" and step_dir.name == "step-00000004"  # the run's last checkpoint (4 steps)
    exported = export_checkpoint(step_dir, tmp_path / "exported")
    assert sorted(p.name for p in exported.iterdir()) == ["config.json", "model.safetensors", "sampling.json"]
    dcp_model, _ = load_checkpoint(step_dir)
    export_model, _ = load_checkpoint(exported)
    assert resolve_checkpoint(exported)[0] == "export"
    for (name, a), (_, b) in zip(
        dcp_model.state_dict().items(), export_model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    # the trained weights, not a fresh init: training moved them away from the seeded initialisation
    fresh = type(dcp_model)(dcp_model.config)
    assert not torch.equal(fresh.proj_out.weight, dcp_model.proj_out.weight)
    generator = torch.Generator().manual_seed(0)
    cond = Conditioning(
        torch.randn(1, 16, 3, 4, 6, generator=generator),
        torch.randn(1, 16, 1, 4, 6, generator=generator),
        torch.randn(1, 5, 64, generator=generator),
        torch.randn(1, 5, 64, generator=generator),
    )
    assert torch.equal(euler_sample(dcp_model, cond, 2, 5.0, 0), euler_sample(export_model, cond, 2, 5.0, 0))
    # read straight into bfloat16 (built on meta, each stored tensor converted in place): the float32 model
    # converted afterwards, bit for bit, from either format
    for checkpoint in (step_dir, exported):
        direct, _ = load_checkpoint(checkpoint, "cpu", torch.bfloat16)
        converted = load_checkpoint(checkpoint)[0].to(torch.bfloat16).state_dict()
        for name, value in direct.state_dict().items():
            assert value.dtype == torch.bfloat16 and torch.equal(value, converted[name]), name


def test_eval_loads_the_models_once_for_all_clips(trained_run: Path, tmp_path: Path, monkeypatch) -> None:
    """``trainer eval`` samples three clips with one DiT, one VAE and one VLM (loads counted at their
    constructors), and each clip is the video ``trainer sample`` makes of it alone."""
    import pandas as pd

    import dataengine.models.vae
    import dataengine.models.vlm
    import trainer.sample
    from trainer.eval import EvalConfig, sample_ours

    loads = {"dit": 0, "vae": 0, "vlm": 0}

    def counted(key, function):
        def wrapper(*args, **kwargs):
            loads[key] += 1
            return function(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(trainer.sample, "load_checkpoint", counted("dit", trainer.sample.load_checkpoint))
    monkeypatch.setattr(
        dataengine.models.vae, "WanVaeEncoder", counted("vae", dataengine.models.vae.WanVaeEncoder)
    )
    monkeypatch.setattr(
        dataengine.models.vlm, "Qwen3VLEncoder", counted("vlm", dataengine.models.vlm.Qwen3VLEncoder)
    )
    instructions = ["Add a red hat.", "Remove the square.", "Make it night."]
    pairs = pd.DataFrame(
        {
            "pair_id": ["a", "b", "c"],
            "source_path": [str(trained_run / "source.mp4")] * 3,
            "instruction": instructions,
            "reference_path": [str(trained_run / "reference.png")] * 3,
            "subset": ["simple"] * 3,
        }
    )
    config = EvalConfig(checkpoint=str(trained_run / "runs" / "tiny"), sample=SampleConfig(num_steps=2))
    videos, rejected = sample_ours(config, pairs, tmp_path / "ours")
    assert not rejected and sorted(videos) == ["a", "b", "c"]
    assert loads == {"dit": 1, "vae": 1, "vlm": 1}
    alone = tmp_path / "alone.mp4"
    sample_video(config.checkpoint, pairs.source_path[2], instructions[2], pairs.reference_path[2], alone,
                 config=SampleConfig(num_steps=2))  # fmt: skip
    assert loads == {"dit": 2, "vae": 2, "vlm": 2}
    indices = list(range(NUM_FRAMES))
    third, single = (read_frames(p, indices).astype(float) for p in (videos["c"], alone))
    assert np.abs(third - single).mean() < 2.0  # the same edit (two H.264 encodes of the same frames)


def test_sample_command_errors_name_the_file(trained_run: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from trainer.cli import app

    missing = tmp_path / "nope.mp4"
    result = CliRunner().invoke(
        app,
        ["sample", str(trained_run / "runs" / "tiny"), "--source", str(missing), "--instruction", "x",
         "--reference", str(trained_run / "reference.png"), "--out", str(tmp_path / "o.mp4")],
    )  # fmt: skip
    assert result.exit_code == 2 and "nope.mp4" in result.output


@pytest.mark.slow
def test_sample_under_torchrun_splits_the_steps_and_matches_one_process(
    trained_run: Path, tmp_path: Path
) -> None:
    """``torchrun --nproc-per-node 2 -m trainer.cli sample``: the 2 ranks form one sequence-parallel group
    for every denoising step (debug model: 4 heads, 2 per rank); rank 0 encodes, decodes and writes. Against
    ``trainer sample`` in one process: the latents agree to float32 rounding (tests/test_sequence_parallel.py:
    2.4e-7 of ~3.5; here the VAE decodes them to the same frames), but the H.264 encoding of the same frames
    is not bit-reproducible from one process to the next (libx264's threads: seen mean |diff| 0.88 of 255
    between two encodings), so the videos are compared within that; another seed changes them by ~23."""
    args = [
        "sample", str(trained_run / "runs" / "tiny"), "--source", str(trained_run / "source.mp4"),
        "--instruction", "Add a red hat.", "--reference", str(trained_run / "reference.png"), "--steps", "3",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    command = [*launcher, "-m", "trainer.cli", *args, "--out", str(tmp_path / "split.mp4")]
    run = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("wrote ") == 1 and "split over 2 processes" in run.stdout  # rank 0 only
    for seed in (0, 1):  # one process
        sample_video(trained_run / "runs" / "tiny", trained_run / "source.mp4", "Add a red hat.",
                     trained_run / "reference.png", tmp_path / f"seed{seed}.mp4",
                     config=SampleConfig(num_steps=3, seed=seed))  # fmt: skip
    indices = list(range(NUM_FRAMES))
    split, alone, seed1 = (
        read_frames(tmp_path / f"{n}.mp4", indices).astype(float) for n in ("split", "seed0", "seed1")
    )
    assert np.abs(split - alone).mean() < 2.0
    assert np.abs(seed1 - alone).mean() > 10.0


def test_source_and_reference_can_be_urls(trained_run: Path, tmp_path: Path) -> None:
    """``--source`` / ``--reference`` as URLs (a real HTTP server on 127.0.0.1): the same prepared inputs as
    the local files, and the command edits from them; an unreachable one is a clear error."""
    from typer.testing import CliRunner

    from dataengine.media.clips import ClipConfig
    from tests.range_server import RangeServer
    from trainer.cli import app
    from trainer.sample import prepare_source

    clip = ClipConfig(num_frames=NUM_FRAMES, fps=0.0, buckets=((HEIGHT, WIDTH),))
    local = prepare_source(trained_run / "source.mp4", trained_run / "reference.png", clip)
    with RangeServer(trained_run) as server:
        source, reference = f"{server.url}/source.mp4", f"{server.url}/reference.png"
        remote = prepare_source(source, reference, clip)
        assert all(np.array_equal(a, b) for a, b in zip(local[:2], remote[:2], strict=True))
        assert local[2] == remote[2]
        out = tmp_path / "from_urls.mp4"
        result = CliRunner().invoke(
            app,
            ["sample", str(trained_run / "runs" / "tiny"), "--source", source, "--instruction", "Add a red hat.",
             "--reference", reference, "--steps", "2", "--out", str(out)],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        assert probe(out).num_frames == NUM_FRAMES
        with pytest.raises(ValueError, match="cannot download .*/missing.png"):
            prepare_source(source, f"{server.url}/missing.png", clip)
