"""The shard writer, the plan, per-sample validation, inspect and verify (no models: tensors made here)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import webdataset as wds
from shards_inputs import pair_row

from dataengine.formats.shard_format import (
    META_MEMBER,
    TENSORS_MEMBER,
    decode_sample,
    keys_sha256,
    read_index,
)
from dataengine.media.clips import ClipConfig
from dataengine.steps.shard_set import (
    ShardWriterConfig,
    inspect_manifest,
    inspect_shards,
    plan_shards,
    sample_bytes,
    samples_per_shard,
    validate_sample,
    verify_shards,
    write_index,
    write_shard,
)

SHAPE = (5, 8, 8)  # T', H', W' of 17 frames at 64x64


def make_tensors(seed: int, shape=SHAPE, tokens: int = 12, dim: int = 32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    t, h, w = shape
    return {
        "source_latents": torch.randn(16, t, h, w, generator=g).bfloat16(),
        "target_latents": torch.randn(16, t, h, w, generator=g).bfloat16(),
        "reference_latents": torch.randn(16, 1, h, w, generator=g).bfloat16(),
        "vlm_first": torch.randn(tokens, dim, generator=g).bfloat16(),
        "vlm_last": torch.randn(tokens, dim, generator=g).bfloat16(),
        "vlm_token_types": torch.tensor([0] * 4 + [1] * 4 + [2] * (tokens - 8), dtype=torch.uint8),
    }


def make_shard_set(root, num_samples: int = 5, per_shard: int = 3) -> dict:
    samples = [
        (
            f"{i:04d}pair",
            make_tensors(i),
            {"category": ["a", "b"][i % 2], "origin": "openve", "vlm_tokens": 12},
        )
        for i in range(num_samples)
    ]
    entries = []
    for number, start in enumerate(range(0, num_samples, per_shard)):
        # given in reverse: the writer sorts by key
        entries.append(
            write_shard(root, f"t5_h8_w8/shard-{number:06d}.tar", samples[start : start + per_shard][::-1])
        )
    write_index(root, entries, {"t5_h8_w8": list(SHAPE)}, 32, {"vae": "v", "vlm": "q"}, {"recipe": 1})
    return {key: (tensors, meta) for key, tensors, meta in samples}


def test_stock_webdataset_reads_every_sample_back(tmp_path):
    written = make_shard_set(tmp_path)
    index = read_index(tmp_path)
    urls = [str(tmp_path / s["path"]) for s in index["shards"]]
    seen = []
    for raw in wds.WebDataset(urls, shardshuffle=False):
        key, tensors, meta = decode_sample(raw)
        seen.append(key)
        expected_tensors, expected_meta = written[key]
        assert set(raw) >= {"__key__", TENSORS_MEMBER, META_MEMBER}
        for name, value in expected_tensors.items():
            assert torch.equal(tensors[name], value), name
        assert meta == expected_meta
    assert seen == sorted(written)  # sorted within each shard, shards in order
    assert index["num_samples"] == 5 and [s["num_samples"] for s in index["shards"]] == [3, 2]
    assert index["shards"][0]["keys_sha256"] == keys_sha256(["0000pair", "0001pair", "0002pair"])
    assert index["buckets"]["t5_h8_w8"] == {
        "latent_shape": [5, 8, 8],
        "num_samples": 5,
        "shards": [s["path"] for s in index["shards"]],
    }
    assert not list(tmp_path.rglob(".*.tmp"))


def test_same_samples_give_the_same_bytes(tmp_path):
    make_shard_set(tmp_path / "a")
    make_shard_set(tmp_path / "b")
    a, b = read_index(tmp_path / "a"), read_index(tmp_path / "b")
    assert [s["sha256"] for s in a["shards"]] == [s["sha256"] for s in b["shards"]]


def test_the_writer_writes_the_bytes_of_webdatasets_tar_writer(tmp_path):
    """Our tar writing (one write per member, sha256 in a thread) against webdataset's own TarWriter."""
    import hashlib
    import io

    from dataengine.formats.shard_format import encode_sample, encode_tensors

    samples = [(f"{i:04d}pair", make_tensors(i), {"i": i}) for i in range(3)]
    # tensors given as tensors for one sample and as their encoded member for the others
    given = [samples[0], *[(key, encode_tensors(t), meta) for key, t, meta in samples[1:]]]
    entry = write_shard(tmp_path, "b/shard-000000.tar", given[::-1])
    reference = io.BytesIO()
    with wds.TarWriter(reference, encoder=False, mtime=0.0, user="", group="", mode=0o444) as writer:
        for sample in samples:
            writer.write(encode_sample(*sample))
    ours = (tmp_path / "b/shard-000000.tar").read_bytes()
    assert ours == reference.getvalue()
    assert entry["bytes"] == len(ours) and entry["sha256"] == hashlib.sha256(ours).hexdigest()


def test_verify_passes_on_a_whole_set(tmp_path):
    make_shard_set(tmp_path)
    report = verify_shards(tmp_path)
    assert report.ok, report.problems
    assert (report.num_shards, report.num_samples) == (2, 5)


def test_verify_catches_a_truncated_tar(tmp_path):
    make_shard_set(tmp_path)
    path = tmp_path / "t5_h8_w8/shard-000000.tar"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    report = verify_shards(tmp_path)
    kinds = {p["problem"] for p in report.problems if p["shard"].endswith("000000.tar")}
    assert {"size", "sha256"} <= kinds and ({"decode", "count"} & kinds)
    assert not [p for p in report.problems if p["shard"].endswith("000001.tar")]


def test_verify_catches_a_changed_byte(tmp_path):
    make_shard_set(tmp_path)
    path = tmp_path / "t5_h8_w8/shard-000001.tar"
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x01  # inside a tensor payload: still decodes, the checksum tells
    path.write_bytes(bytes(data))
    report = verify_shards(tmp_path)
    assert [p["problem"] for p in report.problems] == ["sha256"]
    assert report.problems[0]["shard"] == "t5_h8_w8/shard-000001.tar"


def test_verify_reports_stray_files(tmp_path):
    make_shard_set(tmp_path)
    (tmp_path / "t5_h8_w8/.shard-000009.tar.tmp").write_bytes(b"x")
    report = verify_shards(tmp_path)
    assert [p["problem"] for p in report.problems] == ["stray"]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda t: t.update(source_latents=t["source_latents"][:, :4]), "bad_shape"),
        (lambda t: t.update(reference_latents=t["target_latents"]), "bad_shape"),
        (lambda t: t.update(target_latents=t["target_latents"].float()), "bad_dtype"),
        (lambda t: t["vlm_last"].__setitem__((3, 4), float("nan")), "non_finite"),
        (lambda t: t["source_latents"].__setitem__((0, 0, 0, 0), float("inf")), "non_finite"),
        (lambda t: t.update(vlm_token_types=t["vlm_token_types"][:-1]), "bad_shape"),
        (lambda t: t.update(vlm_first=t["vlm_first"][:, :16]), "bad_shape"),
        (lambda t: t["vlm_token_types"].__setitem__(0, 7), "bad_token_types"),
        (lambda t: t.pop("vlm_first"), "bad_shape"),
    ],
)
def test_validation_rejects_bad_samples(change, reason):
    tensors = make_tensors(0)
    assert validate_sample(tensors, SHAPE, 32) is None
    change(tensors)
    result = validate_sample(tensors, SHAPE, 32)
    assert result is not None and result[0] == reason, result


def _pairs(tmp_path) -> pd.DataFrame:
    rows = []
    for i in range(7):
        rows.append(
            pair_row(
                "openve",
                "local_add",
                f"edit {i}",
                tmp_path / f"s{i}.mp4",
                tmp_path / f"t{i}.mp4",
                17,
                16.0,
                64,
                64,
            )
        )
    for i in range(3):
        rows.append(
            pair_row(
                "portrait",
                "addition",
                f"edit {i}",
                tmp_path / f"ps{i}.mp4",
                tmp_path / f"pt{i}.mp4",
                17,
                16.0,
                160,
                96,
            )
        )
    rows.append(
        pair_row("openve", "local_add", "short", tmp_path / "x.mp4", tmp_path / "y.mp4", 9, 16.0, 64, 64)
    )
    rows.append(
        pair_row("openve", "local_add", "small", tmp_path / "u.mp4", tmp_path / "v.mp4", 17, 16.0, 32, 32)
    )
    rows.append(dict(rows[0]))  # a duplicate pair_id
    return pd.DataFrame(rows)


def test_plan_is_deterministic_and_bucketed(tmp_path):
    pairs = _pairs(tmp_path)
    clip = ClipConfig(num_frames=17, fps=16.0, buckets=((64, 64), (96, 160)))
    writer = ShardWriterConfig(samples_per_shard=3)
    plan, rejected = plan_shards(pairs, clip, writer, vlm_dim=32)
    shuffled, rejected2 = plan_shards(pairs.sample(frac=1.0, random_state=3), clip, writer, vlm_dim=32)
    pd.testing.assert_frame_equal(plan, shuffled)
    assert rejected == rejected2
    assert sorted(r["reason"] for r in rejected) == ["duplicate_pair", "too_short", "too_small"]
    # 7 pairs of 64x64 -> 3 + 3 + 1; 3 pairs of 96x160 -> 3
    assert plan.groupby("shard").size().to_dict() == {
        "t5_h12_w20/shard-000000.tar": 3,
        "t5_h8_w8/shard-000000.tar": 3,
        "t5_h8_w8/shard-000001.tar": 3,
        "t5_h8_w8/shard-000002.tar": 1,
    }
    for _, group in plan.groupby("shard"):
        assert list(group["pair_id"]) == sorted(group["pair_id"])
    assert len(plan) + len(rejected) == len(pairs)  # every row ends in exactly one of them


def test_samples_per_shard_from_the_target_size():
    # the paper's settings: 81 frames at 720x1280 -> (21, 90, 160) latents, S = 2100, D = 4096
    shape = (21, 90, 160)
    expected = 16 * 2 * 21 * 90 * 160 * 2 + 16 * 90 * 160 * 2 + 2 * 2100 * 4096 * 2 + 2100
    assert sample_bytes(shape, 2100, 4096) == expected
    per = samples_per_shard(ShardWriterConfig(target_shard_mb=2048, vlm_tokens_estimate=2100), shape, 4096)
    assert per == (2048 * 2**20) // (expected + 4096)
    assert samples_per_shard(ShardWriterConfig(samples_per_shard=5), shape, 4096) == 5


def test_inspect_shards_counts(tmp_path):
    make_shard_set(tmp_path)
    summary = inspect_shards(tmp_path)
    assert summary["num_samples"] == 5 and summary["categories"] == {"a": 3, "b": 2}
    total = sum(s.stat().st_size for s in tmp_path.rglob("*.tar"))
    assert summary["bytes"] == total and summary["bytes_per_sample"] == pytest.approx(total / 5)
    assert summary["buckets"]["t5_h8_w8"]["latent_shape"] == [5, 8, 8]
    json.dumps(summary)  # printable as JSON


def test_inspect_manifest_counts(tmp_path):
    from dataengine.formats.manifest import write_pairs

    pairs = _pairs(tmp_path).drop_duplicates("pair_id")
    write_pairs(pairs, tmp_path / "pairs.parquet")
    summary = inspect_manifest(tmp_path / "pairs.parquet")
    assert summary["num_pairs"] == len(pairs) == 12
    assert summary["origins"] == {"openve": 9, "portrait": 3}
    assert summary["sizes"]["64x64"] == 8 and summary["sizes"]["160x96"] == 3
    assert summary["num_frames"]["min"] == 9
    np.testing.assert_allclose(summary["score"]["mean"], 9.5)
