"""``trainer plan`` counts what validation, the EMA and background checkpoints add (docs/training.md): the EMA
is 4 bytes per parameter / GPUs in every phase, a background save holds the float32 state (12 or 16 bytes per
parameter / GPUs) in host memory, and a validation step stays below the training peak."""

from __future__ import annotations

import math

from dataengine.formats.recipe import load_recipe
from trainer.model import count_parameters, get_config
from trainer.plan import PlanConfig, plan_from_recipe

RECIPE = "manifests/train_mive_14b.toml"


def test_plan_counts_ema_staging_and_validation():
    plan = PlanConfig(num_gpus=8, gpu_memory_gib=80)
    plain = plan_from_recipe(load_recipe(RECIPE, []), plan, from_shards=False)
    watched = plan_from_recipe(
        load_recipe(
            RECIPE,
            ["train.ema_decay=0.999", "train.checkpoint.async_save=true", "train.validation.every_steps=250"],
        ),
        plan,
        from_shards=False,
    )
    params = count_parameters(get_config("mive_14b")).total  # 10.09 B, counted on the meta device
    shard = math.ceil(params / 8)
    assert watched.memory.ema == 4 * shard and plain.memory.ema == 0
    for phase, value in plain.memory.phases.items():  # the EMA lives through every phase
        assert watched.memory.phases[phase] - value == 4 * shard, phase
    assert watched.staging_host_bytes == 16 * shard and plain.staging_host_bytes == 0
    assert 0 < watched.validation_bytes + watched.memory.ema < watched.memory.tensors
    assert plain.validation_bytes == 0
