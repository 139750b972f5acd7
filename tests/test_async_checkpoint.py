"""Background checkpoints (``train.checkpoint.async_save``): a run SIGKILLed while a save is being written
resumes from the last complete checkpoint, never the half-written one, and then equals the uninterrupted run:
its training losses, its validation losses (bitwise) and its EMA of the weights."""

from __future__ import annotations

import pytest
import torch

from tests import watch_runs

pytestmark = [pytest.mark.process, pytest.mark.fit]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return watch_runs.reference_run(tmp_path_factory.getbasetemp())


def test_uninterrupted_run_writes_every_checkpoint_and_the_time_split(reference):
    complete = sorted(p.name for p in (reference / "checkpoints").iterdir())
    # every step's background save was committed (the last one before the run ended), no partial left
    assert complete == [f"step-{s:08d}" for s in range(1, watch_runs.STEPS + 1)]
    rows = watch_runs.metrics(reference)
    for row in rows.values():
        phases = [row[f"{p}_s"] for p in ("data", "fwd_bwd", "optim", "checkpoint", "validation")]
        assert all(t >= 0 for t in phases) and sum(phases) <= row["step_time_s"] * 1.001
        assert row["checkpoint_s"] > 0  # every step saved
        # tokens/s from compute time alone (forward + backward + optimizer), not the whole step
        compute = row["fwd_bwd_s"] + row["optim_s"]
        assert row["samples_per_s"] == pytest.approx(2 / compute, rel=1e-9)
    assert [s for s, r in rows.items() if "val_loss" in r] == [2, 4, 6, 8]


@pytest.mark.slow
def test_sigkill_during_a_background_save_resumes_the_last_complete_checkpoint(reference, tmp_path):
    """The trainer's one-process SIGKILL and resume (``trainer fit``, then ``trainer fit --resume``), killed at
    the moment that matters for it: after complete checkpoints, while the next one is half-written."""
    root = tmp_path.parent.parent  # pytest's base temp folder: the shared shard set
    shards = watch_runs.shards(root)
    args = watch_runs.overrides(shards, tmp_path, "killed")
    at_kill = watch_runs.kill_during_a_save(args, tmp_path / "killed", after_step=2)
    assert at_kill["partial"], "no save was being written at the kill"
    last_complete = int(at_kill["complete"][-1].removeprefix("step-"))
    assert last_complete < watch_runs.STEPS

    result = watch_runs.run([*args, "--resume"])
    assert f"(step {last_complete}," in result.stderr  # "resumed from .../step-N (step N, data cursor ...)"
    ours, theirs = watch_runs.metrics(tmp_path / "killed"), watch_runs.metrics(reference)
    assert sorted(ours) == sorted(theirs)
    for step, row in theirs.items():
        # same process layout, same arithmetic: training and validation losses to the last bit
        for key in ("loss", "grad_norm", *(k for k in row if k.startswith("val_loss"))):
            assert ours[step][key] == row[key], (step, key)
    final = f"step-{watch_runs.STEPS:08d}"
    ema = watch_runs.read_entries(tmp_path / "killed" / "checkpoints" / final, "ema")
    expected = watch_runs.read_entries(reference / "checkpoints" / final, "ema")
    assert ema.keys() == expected.keys() and all(torch.equal(ema[k], expected[k]) for k in ema)
