"""`dataengine filter` end to end through the CLI on the demo recipe (generated data, tiny models, local Ray):
the outputs' contract (its SIGKILLed-then-resumed run is in tests/test_ray_cluster.py, on a two-node cluster).

The uninterrupted run is the session's ``demo_run`` (its ``filter`` step, manifests/demo/), read only: the
demo data's 6 pairs and a near-copy per category with one broken row of each kind, and the recipe's cap of 4,
make every stage reject something (the broken rows at read and probe, near-copies as duplicate, the rest of a
category as over_cap).
"""

from __future__ import annotations

import json
import tomllib
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from dataengine.formats.manifest import PAIR_COLUMNS, read_metadata, read_pairs
from dataengine.steps.openve_reader import read_openve
from tests.helpers import REPO, cli_env

pytestmark = [pytest.mark.ray, pytest.mark.process, pytest.mark.slow]

ROOT = REPO


def _selection(demo_run) -> dict:
    """The demo recipe's [filter.selection] (threshold, max_per_category)."""
    return tomllib.loads(demo_run.recipe.read_text())["filter"]["selection"]


_env = cli_env


def test_cli_help_explains_the_command():
    from typer.testing import CliRunner

    from pipelines.cli import app

    result = CliRunner().invoke(app, ["filter", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for word in ("recipe", "[filter] table", "--ray-address", "threshold", "Killed"):
        assert word in result.stdout


def test_every_row_ends_in_the_manifest_or_the_rejections(demo_run, tiny_models):
    folder, stdout = demo_run.manifests, demo_run.stdout["filter"]
    data = demo_run.openve
    manifest = read_pairs(folder / "openve.parquet")
    rejections = pd.read_parquet(folder / "rejections.parquet")
    assert list(manifest.columns) == PAIR_COLUMNS
    assert len(manifest) + len(rejections) == data.num_rows
    assert not set(manifest["pair_id"]) & set(rejections["pair_id"])
    assert not rejections["pair_id"].duplicated().any()
    # the broken rows got their reasons, at the read and probe stages
    early = rejections[rejections["stage"].isin(["read", "probe"])]
    assert Counter(early["reason"]) == Counter(data.expected_rejections.values())
    assert set(rejections["reason"]) <= {
        "below_threshold", "over_cap", "duplicate", "missing_file", "undecodable", "too_short",
        "scorer_error", "malformed_row", "duplicate_row", "misaligned", "too_small",
    }  # fmt: skip
    assert (manifest["origin"] == "openve").all() and manifest["reference_path"].isna().all()
    assert (manifest["num_frames"] == 17).all() and (manifest["width"] == 64).all()
    meta = read_metadata(folder / "openve.parquet")
    # the recipe's judge, demo_data/models/qwen3vl: a link to the session's tiny model, recorded resolved
    judge = tomllib.loads(demo_run.recipe.read_text())["filter"]["judge"]["model"]
    assert Path(judge) == demo_run.data / "models" / "qwen3vl"
    assert meta["models"]["judge"] == str(tiny_models.qwen3vl) and meta["rubric_version"] == "v1"
    assert "dataengine filter" in stdout and "over_cap" in stdout
    # the per-stage counts the summary records: each stage takes in what the ones before it kept, and its
    # rejections by reason are the rejections file's, counted here
    summary = json.loads((folder / "summary.json").read_text())
    assert list(summary["stages"]) == ["read", "probe", "score", "dedup", "select"]
    remaining = data.num_rows
    for stage, count in summary["stages"].items():
        mine = rejections[rejections["stage"] == stage]
        by_reason = {reason: len(rows) for reason, rows in mine.groupby("reason")}
        assert count == {"in": remaining, "kept": remaining - len(mine), "rejected": by_reason}, stage
        remaining -= len(mine)
    assert remaining == len(manifest) and summary["stages"]["dedup"]["rejected"]["duplicate"] > 0
    assert summary["total"]["probed"] == summary["stages"]["probe"]["kept"]
    assert summary["total"]["scored"] == summary["stages"]["score"]["kept"]


def test_selection_matches_an_independent_pandas_computation(demo_run):
    folder = demo_run.manifests
    data = demo_run.openve
    scores = pd.concat([pd.read_parquet(p) for p in sorted((folder / "scores").glob("part-*.parquet"))])
    pairs = read_openve(data.csv_dir, data.video_root).pairs
    scored = scores[scores["reason"].isna()].merge(pairs[["pair_id", "category"]], on="pair_id")
    rejections = pd.read_parquet(folder / "rejections.parquet")
    duplicates = set(rejections.loc[rejections["reason"] == "duplicate", "pair_id"])
    assert duplicates, "the planted near-copies should be found"
    threshold, cap = _selection(demo_run)["threshold"], _selection(demo_run)["max_per_category"]
    passing = scored[(scored["score"] >= threshold) & ~scored["pair_id"].isin(duplicates)]
    # the demo's data and cap make the cap bite: some category has more passing pairs than it keeps
    assert passing["category"].value_counts().max() > cap
    expected = (
        passing.sort_values(["category", "score", "pair_id"], ascending=[True, False, True])
        .groupby("category")
        .head(cap)
    )
    manifest = read_pairs(folder / "openve.parquet")
    assert manifest["pair_id"].tolist() == expected["pair_id"].tolist()
    assert manifest["score"].tolist() == pytest.approx(expected["score"].tolist(), abs=0)
    summary = json.loads((folder / "summary.json").read_text())
    for category, entry in summary["categories"].items():
        assert entry["read"] == data.rows_per_category[category]
        assert entry["kept"] == (manifest["category"] == category).sum() <= cap
        assert entry["read"] == entry["kept"] + sum(entry["rejected"].values())
        assert entry["scored"] == (scored["category"] == category).sum()


def test_resuming_with_another_judge_is_refused(tmp_path):
    from dataclasses import replace

    from pipelines.filter import FilterConfig, FilterResources, scoring_settings
    from pipelines.stage import guard_resume

    config = FilterConfig(csv_dir="c", video_root="v")
    guard_resume(tmp_path / "f.json", scoring_settings(config), start_over="x")
    # resources, batching and selection do not change a stored score: resuming with them is allowed
    again = replace(
        config, resources=FilterResources(score_actors=8), judge=replace(config.judge, batch_size=3)
    )
    guard_resume(tmp_path / "f.json", scoring_settings(again), start_over="x")
    other = replace(config, judge=replace(config.judge, model="other/model"))
    with pytest.raises(ValueError, match="other/model.*new run name"):
        guard_resume(tmp_path / "f.json", scoring_settings(other), start_over="x")
