"""The EMA of the weights (``train.ema_decay``) against a float64 reference computed from the parameter
trajectory the run saved (a checkpoint after every step), in one process and under sequence parallelism 2
killed during a save and resumed; ``trainer export --ema`` writes it."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tests import watch_runs

pytestmark = [pytest.mark.process, pytest.mark.fit]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return watch_runs.reference_run(tmp_path_factory.getbasetemp())


def _step(run_dir, step: int):
    return run_dir / "checkpoints" / f"step-{step:08d}"


def ema_reference(run_dir, first: int, last: int) -> dict[str, torch.Tensor]:
    """float64: the EMA saved at step ``first``, then ``ema <- d ema + (1 - d) param_k`` for the parameters
    saved at steps first + 1 .. last."""
    d = watch_runs.EMA_DECAY
    ema = {k: v.double() for k, v in watch_runs.read_entries(_step(run_dir, first), "ema").items()}
    for step in range(first + 1, last + 1):
        params = watch_runs.read_entries(_step(run_dir, step), "model")
        ema = {k: d * v + (1 - d) * params[k].double() for k, v in ema.items()}
    return ema


def assert_close_to_reference(ema: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert ema.keys() == expected.keys()
    for name, value in ema.items():
        # float32 averages of float32 parameters over 7 steps: rounding only (measured: < 1e-7 of the largest)
        scale = expected[name].abs().max().item()
        error = (value.double() - expected[name]).abs().max().item()
        assert error <= 1e-6 * max(scale, 1e-3), (name, error, scale)


def test_ema_equals_a_float64_reference_from_the_parameter_trajectory(reference):
    last = watch_runs.STEPS
    ema = watch_runs.read_entries(_step(reference, last), "ema")
    expected = ema_reference(reference, 1, last)
    assert_close_to_reference(ema, expected)
    # the average is not the parameters (decay 0.9 over 7 steps of lr 1e-3 moves them apart)
    params = watch_runs.read_entries(_step(reference, last), "model")
    assert max((ema[k] - params[k]).abs().max().item() for k in ema) > 1e-4


def test_export_ema_writes_the_average(reference, tmp_path):
    final = _step(reference, watch_runs.STEPS)
    out = tmp_path / "exported"
    watch_runs.run_trainer(["export", str(final), str(out), "--ema"])
    exported = load_file(out / "model.safetensors")
    ema = watch_runs.read_entries(final, "ema")
    assert exported.keys() == ema.keys() and all(torch.equal(exported[k], ema[k]) for k in ema)
    assert json.loads((out / "sampling.json").read_text())["weights"] == "ema"
    # what trainer sample and trainer eval read (``auto``: the EMA when saved); the library default stays
    # the trained weights
    from trainer.sample import load_checkpoint

    sampled, context = load_checkpoint(final, weights="auto")
    assert context.weights == "ema"
    assert all(torch.equal(value, ema[name]) for name, value in sampled.state_dict().items())
    trained = watch_runs.read_entries(final, "model")
    assert all(torch.equal(v, trained[k]) for k, v in load_checkpoint(final)[0].state_dict().items())


@pytest.mark.slow
def test_ema_resumes_exactly_under_sequence_parallelism(reference, tmp_path):
    """2 ranks sharing every sample, killed while a background save is written, resumed: the EMA equals the
    float64 reference of its own saved trajectory across the kill, and the 1-process run's."""
    root = tmp_path.parent.parent
    args = [
        *watch_runs.overrides(watch_runs.shards(root), tmp_path, "sp2"),
        "train.parallel.sequence_parallel=2",
    ]
    at_kill = watch_runs.kill_during_a_save(args, tmp_path / "sp2", after_step=2, torchrun_ranks=2)
    last_complete = int(at_kill["complete"][-1].removeprefix("step-"))
    assert last_complete < watch_runs.STEPS
    result = watch_runs.run([*args, "--resume"], torchrun_ranks=2)
    assert f"(step {last_complete}," in result.stderr
    run_dir, last = tmp_path / "sp2", watch_runs.STEPS
    ema = watch_runs.read_entries(_step(run_dir, last), "ema")
    assert_close_to_reference(ema, ema_reference(run_dir, 1, last))
    for name, value in watch_runs.read_entries(_step(reference, last), "ema").items():
        # SP changes summation orders only (the losses agree to 3e-7 relative): the averages agree closely
        assert torch.allclose(ema[name], value, rtol=1e-4, atol=1e-6), name
