"""Typed recipes: every value checked against its field's type, all errors at once, one line from both CLIs."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from typing import Literal

import pytest

from dataengine.formats.recipe import RecipeError, build_config
from tests.helpers import REPO

ROOT = REPO


@dataclasses.dataclass(frozen=True)
class _Optim:
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: Literal["constant", "cosine"] = "cosine"


@dataclasses.dataclass(frozen=True)
class _Train:
    steps: int = 10
    batch_size: int = 1
    tensorboard: bool = False
    name: str = "run"
    init: str | None = None
    buckets: tuple[tuple[int, int], ...] = ((720, 1280),)
    optim: _Optim = dataclasses.field(default_factory=_Optim)

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")


def test_good_values_are_converted_and_bad_ones_all_reported_at_once():
    good = {"steps": 5, "optim": {"lr": 1, "betas": [0.8, 0.9]}, "buckets": [[64, 64]], "init": None}
    config = build_config(_Train, good, "train")
    assert config.optim.lr == 1.0 and isinstance(config.optim.lr, float)  # an int is a number
    assert config.optim.betas == (0.8, 0.9) and config.buckets == ((64, 64),)

    bad = {
        "steps": "abc",
        "batch_size": 2.5,
        "tensorboard": 1,
        "name": 7,
        "init": 3,
        "buckets": [[64, 64], [96]],
        "optim": {"lr": "1e-4", "betas": [0.9, 0.95, 0.99], "schedule": "linear"},
        "stesp": 3,
    }
    with pytest.raises(RecipeError) as caught:
        build_config(_Train, bad, "train", "recipes/x.toml")
    message = str(caught.value)
    assert "\n" not in message and message.startswith("recipe recipes/x.toml: 10 invalid values")
    for expected in (
        'train.steps = "abc": expected an integer',
        "train.batch_size = 2.5: expected an integer",
        "train.tensorboard = 1: expected true or false",
        "train.name = 7: expected a string",
        "train.init = 3: expected a string",  # optional: None or a string
        "train.buckets[1] = [96]: expected a list of 2 values",
        'train.optim.lr = "1e-4": expected a number',
        "train.optim.betas = [0.9, 0.95, 0.99]: expected a list of 2 values",
        'train.optim.schedule = "linear": expected one of "constant", "cosine"',
        "unknown key(s) ['stesp'] in [train]",
    ):
        assert expected in message, expected
    # the dataclass's own checks run too (with the valid values)
    with pytest.raises(RecipeError, match=r"\[train\] steps must be >= 0, got -1"):
        build_config(_Train, {"steps": -1}, "train")


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.process
def test_both_clis_print_a_bad_recipe_in_one_line_and_exit_2(tmp_path):
    data = _run("-m", "pipelines.cli", "shards", "manifests/demo.toml", "shards.clip.num_frames=16.0",
                "shards.writer.samples_per_shard=\"4\"")  # fmt: skip
    assert data.returncode == 2, data.stderr
    (line,) = data.stderr.strip().splitlines()
    assert line.startswith("error: recipe manifests/demo.toml: 2 invalid values")
    assert "shards.clip.num_frames = 16.0: expected an integer" in line
    assert 'shards.writer.samples_per_shard = "4": expected an integer' in line

    train = _run("-m", "trainer.cli", "fit", "manifests/train_debug.toml", 'train.optim.lr="1e-4"')
    assert train.returncode == 2, train.stderr
    (line,) = [line for line in train.stderr.strip().splitlines() if line.startswith("error:")]
    assert line == (
        'error: recipe manifests/train_debug.toml: 1 invalid value: train.optim.lr = "1e-4": expected a number'
    )
    assert "Traceback" not in train.stderr and "Traceback" not in data.stderr
