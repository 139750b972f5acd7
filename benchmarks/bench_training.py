"""Trainer throughput on this machine: the shard loader alone, and full training steps of the debug DiT.

    python -m benchmarks.bench_training          # or: quick=True from benchmarks.run

Rows: loader samples/s (one process, and 2 loader workers), and the debug model's training step
(1 process, FSDP2 over 1 rank, float32) with activation checkpointing on and off: samples/s, tokens/s
and the step time; then tokens/s of the same run without and with sequence parallelism over 2 processes
(``torchrun``, gloo) and their ratio. CPU numbers: they check the loop's overhead, not GPU performance
(two gloo processes on two shared cores say little about NVLink all-to-alls: reported, not tuned for).
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.shard_builder import build_shards

LATENT_SHAPE = (5, 12, 20)  # the demo's 96 x 160 x 17-frame bucket
SEQ_LENGTHS = (40, 55, 33)


def _loader_rows(shards: Path, quick: bool) -> list[dict]:
    from trainer.data import DataConfig, ShardLoader

    rows = []
    num = 16 if quick else 48
    for workers in (0, 2):
        loader = ShardLoader(DataConfig(shards=str(shards), batch_size=2, num_workers=workers), seed=0)
        next(loader)  # start-up (workers, tar scan) not timed
        start = time.perf_counter()
        for _ in itertools.islice(loader, num):
            pass
        elapsed = time.perf_counter() - start
        rows.append(
            {
                "benchmark": "trainer.data",
                "metric": f"loader samples/s ({workers} workers, batch 2, latents {LATENT_SHAPE})",
                "value": round(2 * num / elapsed, 1),
                "unit": "samples/s",
            }
        )
    return rows


def _train_rows(shards: Path, runs: Path, quick: bool) -> list[dict]:
    from dataengine.formats.recipe import load_recipe
    from trainer.train import fit, train_config_from_recipe

    rows = []
    steps = 8 if quick else 24
    for checkpointing in (True, False):
        name = f"ac_{checkpointing}"
        recipe = load_recipe(
            Path(__file__).resolve().parent.parent / "manifests" / "train_debug.toml",
            [
                f'train.data.shards="{shards}"',
                f'train.runs_dir="{runs}"',
                f'train.name="{name}"',
                f"train.steps={steps}",
                "train.data.batch_size=2",
                "train.checkpoint.every_steps=0",
                f"train.parallel.activation_checkpointing={str(checkpointing).lower()}",
            ],
        )
        run_dir = fit(train_config_from_recipe(recipe), recipe=recipe)
        metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][2:]
        step_time = sorted(m["step_time_s"] for m in metrics)[len(metrics) // 2]
        note = f"debug DiT, CPU, batch 2, median of {len(metrics)} steps"
        label = "on" if checkpointing else "off"
        rows += [
            {
                "benchmark": "trainer.train",
                "metric": f"step time (activation checkpointing {label})",
                "value": round(step_time, 4),
                "unit": "s",
                "note": note,
            },
            {
                "benchmark": "trainer.train",
                "metric": f"tokens/s (activation checkpointing {label})",
                "value": round(sorted(m["tokens_per_s"] for m in metrics)[len(metrics) // 2]),
                "unit": "tokens/s",
                "note": note,
            },
        ]
    return rows


def _sequence_parallel_rows(shards: Path, runs: Path, quick: bool) -> list[dict]:
    """``trainer fit`` in 1 process and under ``torchrun`` with 2 processes sharing each sample (SP 2)."""
    repo = Path(__file__).resolve().parent.parent
    steps = 8 if quick else 24
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    tokens = {}
    for degree in (1, 2):
        launcher = [sys.executable]
        if degree > 1:
            launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={degree}"]
        command = [*launcher, "-m", "trainer.cli", "fit", str(repo / "manifests" / "train_debug.toml")]
        command += [
            f'train.data.shards="{shards}"', f'train.runs_dir="{runs}"', f'train.name="sp{degree}"',
            f"train.steps={steps}", "train.data.batch_size=2", "train.checkpoint.every_steps=0",
            f"train.parallel.sequence_parallel={degree}",
        ]  # fmt: skip
        subprocess.run(command, cwd=repo, env=env, check=True, capture_output=True)
        metrics = [
            json.loads(line) for line in (runs / f"sp{degree}" / "metrics.jsonl").read_text().splitlines()
        ]
        tokens[degree] = sorted(m["tokens_per_s"] for m in metrics[2:])[len(metrics[2:]) // 2]
    note = f"debug DiT, CPU, batch 2 per step, median of {steps - 2} steps, gloo"
    return [
        {"benchmark": "trainer.sp", "metric": "tokens/s, SP 1 (1 process)", "value": round(tokens[1]), "unit": "tokens/s", "note": note},
        {"benchmark": "trainer.sp", "metric": "tokens/s, SP 2 (2 processes)", "value": round(tokens[2]), "unit": "tokens/s", "note": note},
        {"benchmark": "trainer.sp", "metric": "tokens/s ratio SP 2 / SP 1", "value": round(tokens[2] / tokens[1], 3), "unit": "x", "note": "2 cores shared by both processes"},
    ]  # fmt: skip


def run(quick: bool = False) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        shards = build_shards(
            Path(tmp) / "shards", {LATENT_SHAPE: 8}, vlm_dim=64, seq_lengths=SEQ_LENGTHS, samples_per_shard=4
        )
        runs = Path(tmp) / "runs"
        return (
            _loader_rows(shards, quick)
            + _train_rows(shards, runs, quick)
            + _sequence_parallel_rows(shards, runs, quick)
        )


if __name__ == "__main__":
    rows = run()
    width = max(len(r["metric"]) for r in rows)
    print(f"{'benchmark':<15} {'metric':<{width}} {'value':>10} unit")
    for r in rows:
        print(
            f"{r['benchmark']:<15} {r['metric']:<{width}} {r['value']:>10} {r['unit']}  {r.get('note', '')}"
        )
