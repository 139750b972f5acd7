"""The runs the validation / EMA / asynchronous-checkpoint tests share: the debug recipe on a tiny shard set with
validation (two samples held out of the training shards by id), an EMA and background checkpoints after every
step. The uninterrupted run is built once per test session and read by several test files. Also the EMA's
float64 reference from a run's saved parameter trajectory (test_ema.py, and test_train.py's sequence-parallel
run)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from tests.helpers import REPO, process_tree
from tests.shard_builder import build_shards

RECIPE = REPO / "manifests" / "train_debug.toml"
STEPS = 8
EMA_DECAY = 0.9
# build_shards names sample i sha256("<seed>-<i>")[:20]: samples 0 and 4 are the first of each bucket
HELD_OUT = [hashlib.sha256(f"0-{i}".encode()).hexdigest()[:20] for i in (0, 4)]


def env() -> dict[str, str]:
    out = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    out.pop("RANK", None)
    out.pop("WORLD_SIZE", None)
    return out


def shards(root: Path) -> Path:
    folder = root / "watch_shards"
    if not (folder / "index.json").exists():
        build_shards(folder, {(2, 4, 4): 4, (1, 4, 6): 4}, vlm_dim=64, seq_lengths=(5, 8, 3, 7))
    return folder


def overrides(shard_set: Path, runs: Path, name: str) -> list[str]:
    return [
        f'train.data.shards="{shard_set}"',
        f'train.runs_dir="{runs}"',
        f'train.name="{name}"',
        f"train.steps={STEPS}",
        "train.data.batch_size=2",
        "train.checkpoint.every_steps=1",
        "train.checkpoint.keep_last=0",
        "train.checkpoint.async_save=true",
        f"train.ema_decay={EMA_DECAY}",
        "train.validation.every_steps=2",
        "train.validation.num_sigmas=4",
        "train.validation.render_every_steps=0",  # the tiny shard set records no VAE to decode with
        f"train.validation.samples={json.dumps(HELD_OUT)}",
    ]


def command(args: list[str], torchrun_ranks: int = 0) -> list[str]:
    launcher = [sys.executable, "-m", "trainer.cli"]
    if torchrun_ranks:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                    f"--nproc-per-node={torchrun_ranks}", "-m", "trainer.cli"]  # fmt: skip
    return [*launcher, "fit", str(RECIPE), *args]


def run(args: list[str], torchrun_ranks: int = 0) -> subprocess.CompletedProcess:
    result = subprocess.run(
        command(args, torchrun_ranks), env=env(), cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def reference_run(root: Path) -> Path:
    """The uninterrupted 1-process run (built once under ``root``, pytest's base temp folder)."""
    run_dir = root / "watch_runs" / "reference"
    if not (run_dir / "checkpoints" / f"step-{STEPS:08d}").exists():
        run(overrides(shards(root), root / "watch_runs", "reference"))
    return run_dir


def metrics(run_dir: Path) -> dict[int, dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    assert [r["step"] for r in rows] == sorted({r["step"] for r in rows}), "steps not unique and ordered"
    return {row["step"]: row for row in rows}


def read_entries(step_dir: Path, prefix: str) -> dict[str, torch.Tensor]:
    """The ``<prefix>.*`` tensors of a DCP checkpoint, whole (any number of ranks wrote them)."""
    import torch.distributed.checkpoint as dcp

    from trainer.checkpoint import DataOnlyLoadPlanner, DataOnlyReader

    reader = DataOnlyReader(str(step_dir))
    meta = reader.read_metadata().state_dict_metadata
    state = {
        k.removeprefix(prefix + "."): torch.empty(m.size, dtype=m.properties.dtype)
        for k, m in meta.items()
        if k.startswith(prefix + ".") and hasattr(m, "size")
    }
    wrapped = {prefix: state}
    dcp.load(wrapped, storage_reader=reader, planner=DataOnlyLoadPlanner(), no_dist=True)
    return wrapped[prefix]


def kill_during_a_save(args: list[str], run_dir: Path, after_step: int, torchrun_ranks: int = 0) -> dict:
    """Start a run and SIGKILL it (with every process it started) while the background save of a step after
    ``after_step`` is being written (its ``.partial`` folder exists). Returns what was on disk at the kill."""
    process = subprocess.Popen(
        command(args, torchrun_ranks), env=env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    folder = run_dir / "checkpoints"
    deadline = time.monotonic() + 300
    partial = []
    while process.poll() is None and time.monotonic() < deadline:
        partial = [p for p in folder.glob(".step-*.partial") if int(p.name[6:14]) > after_step]
        if partial:
            for pid in process_tree(process.pid):  # torchrun starts its workers in sessions of their own
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            break
        time.sleep(0.002)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed during a save"
    complete = sorted(p.name for p in folder.glob("step-*") if (p / ".metadata").exists())
    return {"partial": [p.name for p in partial], "complete": complete}


def step_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step-{step:08d}"


def ema_reference(run_dir: Path, first: int, last: int, d: float = EMA_DECAY) -> dict[str, torch.Tensor]:
    """float64: the EMA saved at step ``first``, then ``ema <- d ema + (1 - d) param_k`` for the parameters
    saved at steps first + 1 .. last."""
    ema = {k: v.double() for k, v in read_entries(step_dir(run_dir, first), "ema").items()}
    for step in range(first + 1, last + 1):
        params = read_entries(step_dir(run_dir, step), "model")
        ema = {k: d * v + (1 - d) * params[k].double() for k, v in ema.items()}
    return ema


def assert_close_to_reference(ema: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert ema.keys() == expected.keys()
    for name, value in ema.items():
        # float32 averages of float32 parameters: rounding only (measured over 7 steps: < 1e-7 of the largest)
        scale = expected[name].abs().max().item()
        error = (value.double() - expected[name]).abs().max().item()
        assert error <= 1e-6 * max(scale, 1e-3), (name, error, scale)
