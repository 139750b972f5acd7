"""Fail at start, not never: before any stage starts, each stage's task or actor is compared with what the
Ray cluster's nodes have; a cluster that cannot grow stops the job with one line naming the stage, the
recipe key, what it asked for and what there is."""

from __future__ import annotations

import subprocess

import pytest

from dataengine.formats.recipe import UserError
from pipelines.stage import Stage, check_resources, unmet_resources
from tests.helpers import REPO, cli_env, dataengine

GIB = 2**30
NODES = [
    {"CPU": 2.0, "memory": 8.0 * GIB},
    {"CPU": 16.0, "GPU": 1.0, "memory": 64.0 * GIB, "gpu_node": 1.0},
]


def _fn(row: dict) -> dict:
    return row


def test_a_stage_fits_when_one_node_has_everything_it_asks_for():
    fits = [
        Stage("probe", _fn, cpus=2.0),
        Stage("vae", _fn, actors=1, cpus=4.0, gpus=0.25, resources={"gpu_node": 1.0}),
        Stage("big", _fn, cpus=16.0, memory_bytes=64 * GIB),
    ]
    assert unmet_resources(fits, NODES) == []


def test_what_fits_nowhere_is_named_with_its_recipe_key():
    keys = {"CPU": "shards.resources.vae_cpus", "placement": "shards.resources.placement.vae"}
    vae = Stage("vae", _fn, actors=1, cpus=32.0, recipe_keys=keys)
    (line,) = unmet_resources([vae], NODES)
    assert line == (
        "stage vae asks for 32 CPU per actor (shards.resources.vae_cpus) but no node has more than 16 CPU"
    )
    pinned = Stage("vae", _fn, actors=1, cpus=1.0, resources={"cpu_node": 1.0}, recipe_keys=keys)
    assert (
        "1 cpu_node per actor (shards.resources.placement.vae) but no node has more than 0 cpu_node"
        in (unmet_resources([pinned], NODES)[0])
    )
    # enough of each on some node, but never all on one: 4 CPUs and the small node's label
    split = Stage("probe", _fn, cpus=4.0, resources={"small": 1.0})
    assert unmet_resources([split], [{"CPU": 2.0, "small": 1.0}, {"CPU": 8.0}]) == [
        "stage probe asks for 4 CPU per task (stage probe's CPU) but no node has more than 8 CPU; "
        "1 small per task (stage probe's small) but no node has more than 1 small"
    ]
    memory = Stage("judge", _fn, actors=1, memory_bytes=128 * GIB)
    assert "128 GiB of memory per actor" in unmet_resources([memory], NODES)[0]


def test_the_filters_stages_are_named_by_their_filter_resources_keys(monkeypatch):
    """The filter's resources are a ``[filter.resources]`` table like the other jobs': each stage that fits
    nowhere names its key there (the dedup actor too), and ``RayOptions`` names the table's wait."""
    import pandas as pd

    import pipelines.filter as filter_module
    from pipelines.filter import FilterConfig, FilterResources, embed_candidates, scoring_stages
    from pipelines.stage import RayOptions

    resources = FilterResources(
        probe_batch_size=8,
        score_actors=2,
        score_cpus=32.0,
        score_gpus=2.0,
        placement={"probe": {"cpu_node": 1}},
    )
    probe, score = scoring_stages(FilterConfig(resources=resources))
    assert (probe.batch_size, score.actors) == (8, 2)
    assert unmet_resources([probe, score], NODES) == [
        "stage probe asks for 1 cpu_node per task (filter.resources.placement.probe) but no node has more "
        "than 0 cpu_node",
        "stage score asks for 32 CPU per actor (filter.resources.score_cpus) but no node has more than 16 CPU; "
        "2 GPU per actor (filter.resources.score_gpus) but no node has more than 1 GPU",
    ]
    ray = RayOptions.of(resources, None)
    assert (ray.num_cpus, ray.wait_key) == (None, "filter.resources.wait_for_resources_s")

    asked = []  # the dedup stage, as embed_candidates hands it to Ray

    def embed_on_ray(items, stages, **_):
        asked.extend(stages)
        return iter([{"pair_id": item["pair_id"], "embedding": [1.0, 0.0]} for item in items])

    monkeypatch.setattr(filter_module, "stream_stages", embed_on_ray)
    candidates = pd.DataFrame([{"pair_id": "p", "source_path": "s.mp4", "target_path": "t.mp4"}])
    embeddings = embed_candidates(FilterConfig(resources=FilterResources(dedup_gpus=4.0)), candidates, ray)
    assert embeddings.shape == (1, 2)
    assert unmet_resources(asked, NODES) == [
        "stage dedup asks for 4 GPU per actor (filter.resources.dedup_gpus) but no node has more than 1 GPU"
    ]


def test_the_filters_old_resource_keys_name_their_new_ones():
    from dataengine.formats.recipe import RecipeError, load_recipe
    from pipelines.filter import build_filter_config

    old = ["filter.num_judges=8", "filter.gpus_per_judge=1", "filter.dedup.num_gpus=1", "filter.placement={}"]
    with pytest.raises(RecipeError) as caught:
        build_filter_config(load_recipe(REPO / "manifests" / "demo.toml", old))
    message = str(caught.value)
    assert message.startswith("recipe ") and "4 invalid values" in message
    for moved in (
        "filter.num_judges moved to [filter.resources]: write filter.resources.score_actors",
        "filter.gpus_per_judge moved to [filter.resources]: write filter.resources.score_gpus",
        "filter.placement moved to [filter.resources]: write filter.resources.placement",
        "filter.dedup.num_gpus moved to [filter.resources]: write filter.resources.dedup_gpus",
    ):
        assert moved in message, message
    config, _ = build_filter_config(
        load_recipe(REPO / "manifests" / "demo.toml", ["filter.resources.score_actors=3"])
    )
    assert config.resources.score_actors == 3


def test_a_local_instance_stops_at_once(monkeypatch):
    import pipelines.stage as stage_module

    monkeypatch.setattr(stage_module, "_node_resources", lambda: [{"CPU": 2.0}])
    stage = Stage("vae", _fn, actors=1, cpus=4.0, recipe_keys={"CPU": "shards.resources.vae_cpus"})
    with pytest.raises(
        UserError, match=r"stage vae asks for 4 CPU .*vae_cpus.* more than 2 CPU, on this machine"
    ):
        check_resources([stage], local=True, wait_s=600)


def test_an_autoscaler_is_waited_for_up_to_the_recipe_limit(monkeypatch, capsys):
    import pipelines.stage as stage_module

    grown = iter(
        [[{"CPU": 2.0}], [{"CPU": 2.0}], [{"CPU": 2.0}, {"CPU": 8.0}]]
    )  # a node joins on the 3rd look
    monkeypatch.setattr(stage_module, "_node_resources", lambda: next(grown))
    monkeypatch.setattr(stage_module, "_cluster_can_grow", lambda: True)
    stage = Stage("vae", _fn, actors=1, cpus=4.0)
    check_resources(
        [stage], local=False, wait_s=60, wait_key="shards.resources.wait_for_resources_s", poll_s=0
    )
    assert "waiting up to 60 s for a node (shards.resources.wait_for_resources_s)" in capsys.readouterr().out
    monkeypatch.setattr(stage_module, "_node_resources", lambda: [{"CPU": 2.0}])
    with pytest.raises(UserError, match=r"no node that fits came within 0.01 s \(key\)"):
        check_resources([stage], local=False, wait_s=0.01, wait_key="key", poll_s=0)
    monkeypatch.setattr(stage_module, "_cluster_can_grow", lambda: False)  # joined, no autoscaler
    with pytest.raises(UserError, match="it has no autoscaler"):
        check_resources([stage], local=False, wait_s=60)


@pytest.mark.process
@pytest.mark.ray
def test_a_stage_asking_for_more_cpus_than_the_ray_has_exits_2_naming_it(tmp_path, ray_session):
    """``dataengine harvest-portraits`` with ``harvest_cpus = 64`` joining the tests' local Ray (4 CPUs, no
    autoscaler): exit 2 and one line, before the stage starts (the one video is not even a video)."""
    import ray

    most = max(node["Resources"].get("CPU", 0) for node in ray.nodes() if node["Alive"])
    pool = tmp_path / "pool"
    pool.mkdir()
    (pool / "clip.mp4").write_bytes(b"never decoded: the job stops before its stage starts")
    result = subprocess.run(
        dataengine(
            "harvest-portraits",
            str(REPO / "manifests" / "demo.toml"),
            "run=edges",
            f'portraits.harvest.videos_dir="{pool}"',
            "portraits.resources.harvest_cpus=64",
        ),
        cwd=tmp_path,
        env=cli_env(RAY_ADDRESS=ray_session, OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert errors[0].startswith(
        "error: stage harvest asks for 64 CPU per actor (portraits.resources.harvest_cpus) but no node has "
        f"more than {most:g} CPU, on the Ray cluster (it has no autoscaler to add a node)"
    ), errors[0]
    assert not (tmp_path / "manifests" / "edges" / "harvest" / "windows.parquet").exists()
