"""`dataengine shards` end to end through the CLI on a local Ray: outputs, verify, and resume after a SIGKILL.

Two runs of the same recipe, each from its own working folder (outputs go to ``shards/<run>`` there):
one uninterrupted, one killed with SIGKILL once its first shard is recorded and then rerun. The two
must end with the same ``index.json`` apart from its creation time, and the same rejections.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import webdataset as wds
from shards_inputs import write_demo_manifests

from dataengine.formats.shard_format import decode_sample, read_index
from tests.helpers import REPO, cli_env, dataengine

pytestmark = [pytest.mark.ray, pytest.mark.process, pytest.mark.slow]


@pytest.fixture(scope="module")
def recipe(tmp_path_factory, tiny_models) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("shards_pipeline")
    openve, portraits, expected = write_demo_manifests(root / "inputs", num_openve=4, num_portrait=2)
    vae, qwen = tiny_models.wan_vae, tiny_models.qwen3vl
    # The demo recipe with this test's inputs and models; one sample per shard so a kill lands mid-run.
    text = (REPO / "manifests/demo.toml").read_text()
    text = text.replace("manifests/demo/openve.parquet", str(openve))
    text = text.replace("manifests/demo/portraits.parquet", str(portraits))
    text = text.replace("demo_data/models/wan_vae", str(vae)).replace("demo_data/models/qwen3vl", str(qwen))
    text = text.replace("samples_per_shard = 4", "samples_per_shard = 1")
    path = root / "recipe.toml"
    path.write_text(text)
    assert str(openve) in text and str(qwen) in text and "samples_per_shard = 1" in text
    return path, expected


_env = cli_env
_cli = dataengine


def _run(cwd: Path, *args: str, ray_address: str = "") -> subprocess.CompletedProcess:
    """A CLI run to its end; with ``ray_address``, joined to that Ray instead of starting its own."""
    cwd.mkdir(parents=True, exist_ok=True)
    env = _env(RAY_ADDRESS=ray_address)
    result = subprocess.run(_cli(*args), cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _comparable(index: dict) -> dict:
    return {k: v for k, v in index.items() if k != "created_unix"}


@pytest.fixture(scope="module")
def uninterrupted(recipe, tmp_path_factory, ray_session) -> Path:
    # the reference run joins the session's Ray (the recipe's paths are absolute; the shard writer is the
    # driver); the killed and the resumed runs below start their own, as a user's run does
    cwd = tmp_path_factory.mktemp("uninterrupted")
    _run(cwd, "shards", str(recipe[0]), ray_address=ray_session)
    return cwd / "shards" / "demo"


def test_run_writes_verified_shards_and_rejections(uninterrupted, recipe):
    index = read_index(uninterrupted)
    # 4 + 2 good pairs, two rejected while decoding (a missing file, a clip shorter than the manifest says)
    assert index["num_samples"] == 6
    assert sorted(index["buckets"]) == ["t5_h12_w20", "t5_h8_w8"]
    assert index["buckets"]["t5_h8_w8"]["num_samples"] == 4
    assert index["buckets"]["t5_h12_w20"]["latent_shape"] == [5, 12, 20]
    rejections = pd.read_parquet(uninterrupted / "rejections.parquet")
    assert dict(zip(rejections["pair_id"], rejections["reason"], strict=True)) == recipe[1]
    assert set(rejections["stage"]) == {"decode"}
    # the runner's counts per sample (its records are shards): the 8 pairs, the two decode rejections
    stages = json.loads((uninterrupted / "summary.json").read_text())["stages"]
    assert list(stages) == ["plan", "decode", "vae", "vlm", "validate"]
    assert stages["plan"] == {"in": 8, "kept": 8, "rejected": {}}
    assert stages["decode"] == {"in": 8, "kept": 6, "rejected": {"missing_file": 1, "too_short": 1}}
    assert stages["validate"]["kept"] == index["num_samples"]

    # the stock WebDataset reader reads every sample back
    urls = [str(uninterrupted / s["path"]) for s in index["shards"]]
    samples = [decode_sample(raw) for raw in wds.WebDataset(urls, shardshuffle=False)]
    assert len(samples) == 6
    for _key, tensors, meta in samples:
        t, h, w = meta["latent_shape"]
        assert tuple(tensors["source_latents"].shape) == (16, t, h, w)
        assert tuple(tensors["reference_latents"].shape) == (16, 1, h, w)
        assert tensors["vlm_first"].shape == tensors["vlm_last"].shape == (meta["vlm_tokens"], 64)

    verify = _run(uninterrupted.parent.parent, "verify", str(uninterrupted))
    assert "OK" in verify.stdout
    inspect = _run(uninterrupted.parent.parent, "inspect", str(uninterrupted), "--json")
    summary = json.loads(inspect.stdout)
    assert summary["origins"] == {"openve": 4, "portrait": 2}
    assert summary["rejections"] == {"missing_file": 1, "too_short": 1}


def test_resume_after_kill_equals_an_uninterrupted_run(uninterrupted, recipe, tmp_path):
    out = tmp_path / "shards" / "demo"
    parts = out / ".parts"
    with (tmp_path / "killed.log").open("w") as log:
        process = subprocess.Popen(
            _cli("shards", str(recipe[0])),
            cwd=tmp_path,
            env=_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the kill takes Ray's local processes with it
        )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and process.poll() is None:
            if parts.exists() and list(parts.glob("part-*.parquet")):
                break
            time.sleep(0.05)
        assert process.poll() is None, (
            "the run ended before it could be killed:\n" + (tmp_path / "killed.log").read_text()[-3000:]
        )
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert not (out / "index.json").exists()
    done_before = sorted(p.relative_to(out).as_posix() for p in out.rglob("shard-*.tar"))
    num_records = len(list(parts.glob("part-*.parquet")))
    assert 1 <= num_records < 8, "the kill must land mid-run"
    stamps = {p: (out / p).stat().st_mtime_ns for p in done_before}
    # recorded at the kill (a tar renamed but killed before its record is redone on resume, rightly)
    recorded = {json.loads(e)["path"] for e in pd.read_parquet(parts)["entry"] if e}

    resumed = _run(tmp_path, "shards", str(recipe[0]))
    assert f"{num_records} shards already done" in resumed.stdout, resumed.stdout
    stages = json.loads((out / "summary.json").read_text())["stages"]  # counted over both runs' records
    assert stages == json.loads((uninterrupted / "summary.json").read_text())["stages"]
    assert _comparable(read_index(out)) == _comparable(read_index(uninterrupted))
    pd.testing.assert_frame_equal(
        pd.read_parquet(out / "rejections.parquet"), pd.read_parquet(uninterrupted / "rejections.parquet")
    )
    # shards recorded before the kill were not rewritten
    for path in done_before:
        if path in recorded:
            assert (out / path).stat().st_mtime_ns == stamps[path]
    assert not list(out.rglob(".*.tmp"))
