"""The shard loader: rank/worker split, one bucket per batch, VLM padding, seeded order, exact cursor resume."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from pathlib import Path

import pytest
import torch
import webdataset as wds

from dataengine.formats.shard_format import decode_sample
from tests.shard_builder import all_keys, build_shards
from trainer.data import DataConfig, ShardLoader, padding_report

SEQ_LENGTHS = (5, 8, 3, 6)


@pytest.fixture(scope="session")
def even_shards(tmp_path_factory) -> Path:
    """Two buckets whose sizes are multiples of a global batch of 4 (2 ranks x 2)."""
    return build_shards(
        tmp_path_factory.mktemp("even"), {(2, 4, 4): 8, (1, 4, 6): 4}, seq_lengths=SEQ_LENGTHS
    )


@pytest.fixture(scope="session")
def odd_shards(tmp_path_factory) -> Path:
    """A bucket of 5 (not a multiple of 4) and one of 2 (smaller than a global batch)."""
    return build_shards(tmp_path_factory.mktemp("odd"), {(2, 4, 4): 5, (1, 2, 2): 2}, seq_lengths=SEQ_LENGTHS)


@pytest.fixture(scope="session")
def decoded(even_shards) -> dict[str, dict[str, torch.Tensor]]:
    """The reference: every sample decoded independently through WebDataset's own tar iteration."""
    index = json.loads((even_shards / "index.json").read_text())
    reference = {}
    for shard in index["shards"]:
        for raw in wds.WebDataset(str(even_shards / shard["path"]), shardshuffle=False):
            key, tensors, _ = decode_sample(raw)
            reference[key] = tensors
    return reference


def take(loader: ShardLoader, num: int) -> list[list[str]]:
    try:
        return [batch["keys"] for batch in itertools.islice(loader, num)]
    finally:
        loader.close()  # its DataLoader workers stop now, not at a garbage collection in a later test


def epoch_of(shards: Path, rank: int, world: int, batch_size: int = 2, workers: int = 0, seed: int = 0):
    loader = ShardLoader(
        DataConfig(shards=str(shards), batch_size=batch_size, num_workers=workers), seed, rank, world
    )
    return [next(loader) for _ in range(loader.steps_per_epoch)], loader


def test_ranks_cover_every_sample_exactly_once_with_one_bucket_per_batch(even_shards, decoded):
    expected = sorted(all_keys(even_shards))
    bucket_of = {key: tuple(t["target_latents"].shape[1:]) for key, t in decoded.items()}
    per_rank = [epoch_of(even_shards, rank, world=2)[0] for rank in range(2)]
    assert len(per_rank[0]) == len(per_rank[1]) == 3  # 12 samples / global batch 4: ranks in lockstep
    seen = [key for batches in per_rank for batch in batches for key in batch["keys"]]
    assert sorted(seen) == expected
    for batches in per_rank:
        for batch in batches:
            assert batch["target_latents"].shape[0] == 2
            # one latent shape per batch: every sample of the batch comes from the same bucket
            assert len({bucket_of[key] for key in batch["keys"]}) == 1
            assert tuple(batch["target_latents"].shape[2:]) == bucket_of[batch["keys"][0]]
            assert batch["source_latents"].shape == batch["target_latents"].shape
            assert batch["reference_latents"].shape[2] == 1
    # the two ranks' batches at the same step come from the same bucket (one global batch)
    for b0, b1 in zip(*per_rank, strict=True):
        assert b0["target_latents"].shape == b1["target_latents"].shape


def test_worker_split_keeps_the_order_across_epochs(even_shards):
    def keys(rank: int, workers: int) -> list[list[str]]:
        config = DataConfig(shards=str(even_shards), batch_size=2, num_workers=workers)
        return take(
            ShardLoader(config, seed=0, rank=rank, world_size=2), 7
        )  # 3 batches per epoch: 2 epochs + 1

    per_rank = [keys(rank, workers=2) for rank in range(2)]
    assert per_rank[1] == keys(1, workers=0)
    for epoch in range(2):  # with workers, every epoch still covers every sample exactly once over the ranks
        seen = [key for batches in per_rank for batch in batches[3 * epoch : 3 * epoch + 3] for key in batch]
        assert sorted(seen) == sorted(all_keys(even_shards))


def test_close_stops_the_workers_and_next_goes_on_at_the_cursor(even_shards):
    import multiprocessing

    config = DataConfig(shards=str(even_shards), batch_size=2, num_workers=2)
    expected = take(ShardLoader(DataConfig(shards=str(even_shards), batch_size=2), seed=0), 5)  # no workers
    with ShardLoader(config, seed=0) as loader:
        got = [next(loader)["keys"] for _ in range(2)]
        assert len(multiprocessing.active_children()) == 2  # its two DataLoader workers
        loader.close()
        assert multiprocessing.active_children() == []  # stopped now, not at a garbage collection
        assert loader.state_dict()["position"] == 2
        got += [next(loader)["keys"] for _ in range(3)]  # new workers, from the cursor on
        assert len(multiprocessing.active_children()) == 2
    assert multiprocessing.active_children() == []  # the with block closed it
    assert got == expected


def test_padding_repeats_only_what_the_report_says(odd_shards):
    batches, loader = epoch_of(odd_shards, rank=0, world=1, batch_size=4)
    seen = Counter(key for batch in batches for key in batch["keys"])
    assert set(seen) == set(all_keys(odd_shards))  # every sample at least once
    report = padding_report(loader.catalogue, 4)
    assert report == {"t2_h4_w4": 3, "t1_h2_w2": 2}
    assert sum(seen.values()) - len(seen) == sum(report.values())
    for batch in batches:
        assert batch["target_latents"].shape[0] == 4


def test_vlm_tokens_padded_with_mask_and_values_match_the_shards(even_shards, decoded):
    reference = decoded
    batches, _ = epoch_of(even_shards, rank=0, world=1, batch_size=4)
    for batch in batches:
        lengths = [reference[k]["vlm_first"].shape[0] for k in batch["keys"]]
        assert batch["vlm_first"].shape[1] == max(lengths)
        assert batch["vlm_mask"].sum(1).tolist() == lengths
        for i, key in enumerate(batch["keys"]):
            n = lengths[i]
            assert torch.equal(batch["vlm_first"][i, :n], reference[key]["vlm_first"])
            assert torch.equal(batch["vlm_last"][i, :n], reference[key]["vlm_last"])
            assert not batch["vlm_first"][i, n:].any()
            assert torch.equal(batch["target_latents"][i], reference[key]["target_latents"])


def test_seed_sets_the_order_and_epochs_differ(even_shards):
    def keys(seed: int, num: int = 6) -> list[list[str]]:
        return take(ShardLoader(DataConfig(shards=str(even_shards), batch_size=2), seed), num)

    assert keys(3) == keys(3)
    assert keys(3) != keys(4)
    first, second = keys(3)[:6], keys(3, 12)[6:]  # 6 steps per epoch at batch 2
    assert sorted(sum(first, [])) == sorted(sum(second, []))  # both epochs cover the same set
    assert first != second  # in another order


@pytest.mark.parametrize("stop", [2, 6, 8])  # mid-epoch, exactly at an epoch's end, in the second epoch
def test_cursor_resume_yields_exactly_the_remaining_samples(even_shards, stop):
    config = DataConfig(shards=str(even_shards), batch_size=2)
    uninterrupted = take(ShardLoader(config, seed=7, rank=1, world_size=2), 10)
    first = ShardLoader(config, seed=7, rank=1, world_size=2)
    head = take(first, stop)
    state = json.loads(json.dumps(first.state_dict()))  # plain data, as a checkpoint holds it
    resumed = ShardLoader(config, seed=7, rank=1, world_size=2)
    resumed.load_state_dict(state)
    assert head + take(resumed, 10 - stop) == uninterrupted


def test_missing_shard_and_wrong_count_are_clear_errors(tmp_path):
    shards = build_shards(tmp_path / "set", {(1, 2, 2): 3}, samples_per_shard=3)
    index = json.loads((shards / "index.json").read_text())
    index["shards"][0]["num_samples"] = 4
    index["num_samples"] = 4
    (shards / "index.json").write_text(json.dumps(index))
    loader = ShardLoader(DataConfig(shards=str(shards), batch_size=1, shuffle=False), seed=0)
    with pytest.raises(ValueError, match=r"shard-000000.tar holds 3 samples.*says 4"):
        take(loader, 1)
    (shards / index["shards"][0]["path"]).unlink()
    with pytest.raises(
        FileNotFoundError, match=r"shard t1_h2_w2/shard-000000.tar \(entry 0 of .*index.json\) is missing"
    ):
        ShardLoader(DataConfig(shards=str(shards)), seed=0)
