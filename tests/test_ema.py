"""The EMA of the weights (``train.ema_decay``) against a float64 reference computed from the parameter
trajectory the run saved (a checkpoint after every step), in one process; ``trainer export --ema`` writes it.
(Under sequence parallelism 2, killed during a save and resumed: test_train.py's sequence-parallel run, which
keeps an EMA too.)"""

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


def test_ema_equals_a_float64_reference_from_the_parameter_trajectory(reference):
    last = watch_runs.STEPS
    ema = watch_runs.read_entries(watch_runs.step_dir(reference, last), "ema")
    expected = watch_runs.ema_reference(reference, 1, last)
    watch_runs.assert_close_to_reference(ema, expected)
    # the average is not the parameters (decay 0.9 over 7 steps of lr 1e-3 moves them apart)
    params = watch_runs.read_entries(watch_runs.step_dir(reference, last), "model")
    assert max((ema[k] - params[k]).abs().max().item() for k in ema) > 1e-4


def test_export_ema_writes_the_average(reference, tmp_path):
    final = watch_runs.step_dir(reference, watch_runs.STEPS)
    out = tmp_path / "exported"
    from typer.testing import CliRunner

    from trainer.cli import app

    # `trainer export --ema`, the command run in this process
    result = CliRunner().invoke(app, ["export", str(final), str(out), "--ema"])
    assert result.exit_code == 0, result.output
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
