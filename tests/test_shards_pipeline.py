"""`dataengine shards` end to end through the CLI on a local Ray: outputs and verify (its resume after a SIGKILL is
in tests/test_ray_cluster.py, on a two-node cluster).

The uninterrupted run is the session's ``demo_run`` (its ``shards`` step, shards/demo), read only: the demo's
filtered OpenVE pairs (64x64) and portrait pairs (96x160), one bucket each. A second run of the same recipe
on the same inputs is killed with SIGKILL once its first shard is recorded and then rerun on the two-node cluster
(tests/test_ray_cluster.py): it must end with the demo run's ``index.json`` (apart from its creation time, output
and resources), stage counts and rejections. The demo's inputs all decode (the filter probed them), so the
decode rejections are checked on a small run of their own: one good pair, a row whose file is missing and a
clip shorter than its manifest says.
"""

from __future__ import annotations

import json
import subprocess
import tomllib
from pathlib import Path

import pandas as pd
import pytest
import webdataset as wds
from shards_inputs import write_demo_manifests

from dataengine.formats.manifest import read_pairs
from dataengine.formats.shard_format import decode_sample, read_index
from tests.helpers import cli_env, dataengine

pytestmark = [pytest.mark.ray, pytest.mark.process, pytest.mark.slow]


_env = cli_env
_cli = dataengine


def _run(cwd: Path, *args: str, ray_address: str = "") -> subprocess.CompletedProcess:
    """A CLI run to its end; with ``ray_address``, joined to that Ray instead of starting its own."""
    cwd.mkdir(parents=True, exist_ok=True)
    env = _env(RAY_ADDRESS=ray_address)
    result = subprocess.run(_cli(*args), cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _invoke(*args: str):
    """A quick command (verify, inspect) through the CLI's own app, in this process."""
    from typer.testing import CliRunner

    from pipelines.cli import app

    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result


def _manifests(demo_run) -> pd.DataFrame:
    """The pairs the demo run's shards step read: its recipe's [shards] inputs."""
    inputs = tomllib.loads(demo_run.recipe.read_text())["shards"]["inputs"]
    assert [Path(p).name for p in inputs] == ["openve.parquet", "portraits.parquet"]
    return pd.concat([read_pairs(p) for p in inputs], ignore_index=True)


def test_run_writes_verified_shards_and_rejections(demo_run, ray_session, tmp_path):
    uninterrupted = demo_run.shards
    pairs = _manifests(demo_run)
    index = read_index(uninterrupted)
    # every pair of the two manifests, none rejected: the filter and the portrait step kept decodable pairs
    assert index["num_samples"] == len(pairs)
    assert sorted(index["buckets"]) == ["t5_h12_w20", "t5_h8_w8"]
    num_64x64 = ((pairs["width"] == 64) & (pairs["height"] == 64)).sum()
    assert index["buckets"]["t5_h8_w8"]["num_samples"] == num_64x64
    assert index["buckets"]["t5_h12_w20"]["latent_shape"] == [5, 12, 20]
    rejections = pd.read_parquet(uninterrupted / "rejections.parquet")
    assert rejections.empty
    # the runner's counts per sample (its records are shards)
    stages = json.loads((uninterrupted / "summary.json").read_text())["stages"]
    assert list(stages) == ["plan", "decode", "vae", "vlm", "validate"]
    assert stages["plan"] == {"in": len(pairs), "kept": len(pairs), "rejected": {}}
    assert stages["decode"] == {"in": len(pairs), "kept": len(pairs), "rejected": {}}
    assert stages["validate"]["kept"] == index["num_samples"]

    # the stock WebDataset reader reads every sample back
    urls = [str(uninterrupted / s["path"]) for s in index["shards"]]
    samples = [decode_sample(raw) for raw in wds.WebDataset(urls, shardshuffle=False)]
    assert len(samples) == len(pairs)
    for _key, tensors, meta in samples:
        t, h, w = meta["latent_shape"]
        assert tuple(tensors["source_latents"].shape) == (16, t, h, w)
        assert tuple(tensors["reference_latents"].shape) == (16, 1, h, w)
        assert tensors["vlm_first"].shape == tensors["vlm_last"].shape == (meta["vlm_tokens"], 64)

    verify = _invoke("verify", str(uninterrupted))
    assert "OK" in verify.stdout
    inspect = _invoke("inspect", str(uninterrupted), "--json")
    summary = json.loads(inspect.stdout)
    assert summary["origins"] == pairs["origin"].value_counts().to_dict()
    assert set(summary["origins"]) == {"openve", "portrait"}
    assert summary["rejections"] == {}

    # rows that fail while decoding (a missing file, a clip shorter than the manifest says): the demo recipe
    # on one good pair and those two, joined to the session's Ray (the recipe's paths are absolute)
    openve, portraits, expected = write_demo_manifests(tmp_path / "inputs", num_openve=1, num_portrait=0)
    inputs = json.dumps([str(openve), str(portraits)])
    out = tmp_path / "shards" / "broken"
    _run(tmp_path, "shards", str(demo_run.recipe), f"shards.inputs={inputs}", f"shards.output='{out}'",
         ray_address=ray_session)  # fmt: skip
    num_rows = len(read_pairs(openve)) + len(read_pairs(portraits))
    rejections = pd.read_parquet(out / "rejections.parquet")
    assert dict(zip(rejections["pair_id"], rejections["reason"], strict=True)) == expected
    assert set(rejections["stage"]) == {"decode"}
    stages = json.loads((out / "summary.json").read_text())["stages"]
    assert stages["plan"] == {"in": num_rows, "kept": num_rows, "rejected": {}}
    assert stages["decode"] == {
        "in": num_rows, "kept": num_rows - 2, "rejected": {"missing_file": 1, "too_short": 1}
    }  # fmt: skip
    assert stages["validate"]["kept"] == read_index(out)["num_samples"] == num_rows - 2
    inspect = _invoke("inspect", str(out), "--json")
    assert json.loads(inspect.stdout)["rejections"] == {"missing_file": 1, "too_short": 1}
