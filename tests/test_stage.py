"""The shared stage code without Ray: the wrapper's rejections, the runner's parts, the resume guard."""

from __future__ import annotations

import pickle

import pandas as pd
import pytest
import torch

from dataengine.media.clips import ClipRejection
from pipelines import stage as stage_module
from pipelines.runtime import PartStore
from pipelines.stage import Rejected, Stage, Worker, apply_stage, guard_resume, is_rejected, run_stages


def halve(row: dict, divisor: int) -> dict:
    if row["x"] < 0:
        raise ValueError(f"negative x {row['x']}")
    if row["x"] == 3:
        raise Rejected("odd_three", f"x is three in {row['name']}")
    if row["x"] == 5:
        raise ClipRejection("too_short", f"{row['name']} has 5 frames")  # a block's own exception
    return {"half": row["x"] / divisor}


class BatchWorker(Worker):
    """A batched model: the whole batch fails when one item is bad."""

    def __init__(self, scale: float):
        self.scale = scale
        self.calls: list[int] = []

    def setup(self) -> None:
        self.model = torch.nn.Linear(1, 1)  # what a real stage would load here, never in __init__

    def process_batch(self, rows: list[dict]) -> list[dict]:
        self.calls.append(len(rows))
        if any(row["x"] < 0 for row in rows):
            raise RuntimeError("shape mismatch in the batch")
        return [{"y": row["x"] * self.scale} for row in rows]


def rows_of(*values: int) -> list[dict]:
    return [{"pair_id": f"p{i}", "name": f"clip{i}.mp4", "x": x} for i, x in enumerate(values)]


def test_one_bad_item_is_a_rejection_row_and_the_others_go_on():
    stage = Stage("halve", halve, kwargs={"divisor": 2})
    out = apply_stage(stage, stage.worker(), rows_of(4, -1, 3, 5, 8))
    assert [r.get("half") for r in out] == [2.0, None, None, None, 4.0]
    rejections = {r["pair_id"]: (r["stage"], r["reason"], r["detail"]) for r in out if is_rejected(r)}
    assert rejections == {
        "p1": ("halve", "error", "ValueError: negative x -1"),
        "p2": ("halve", "odd_three", "x is three in clip2.mp4"),
        "p3": ("halve", "too_short", "clip3.mp4 has 5 frames"),
    }
    assert all(r["name"] == f"clip{i}.mp4" for i, r in enumerate(out))  # input columns are kept


def test_a_failed_batch_is_retried_item_by_item_and_rejected_rows_pass_through():
    stage = Stage("scale", BatchWorker, kwargs={"scale": 10.0}, batch_size=4, failure_reason="encode_failed")
    worker = stage.worker()
    worker.setup()
    earlier = {"pair_id": "gone", "x": 1, "stage": "decode", "reason": "missing_file", "detail": "a.mp4"}
    out = apply_stage(stage, worker, [*rows_of(1, -2, 3), earlier])
    assert worker.calls == [3, 1, 1, 1]  # the batch of three usable rows, then each alone
    assert [r.get("y") for r in out[:3]] == [10.0, None, 30.0]
    assert (out[1]["stage"], out[1]["reason"]) == ("scale", "encode_failed")
    assert "shape mismatch" in out[1]["detail"]
    assert out[3] == earlier  # an earlier stage's rejection is not given to this one


def test_out_of_memory_stops_the_job_and_a_stage_can_name_another_stage():
    class Oom(Worker):
        def process(self, row: dict) -> dict:
            raise torch.OutOfMemoryError("CUDA out of memory")

    stage = Stage("vae", Oom)
    with pytest.raises(torch.OutOfMemoryError):
        apply_stage(stage, stage.worker(), rows_of(1, 2))

    def decode_fails(row: dict) -> dict:
        raise Rejected("undecodable", "decord and PyAV both failed", stage="decode")

    out = apply_stage(Stage("vae", decode_fails), Stage("vae", decode_fails).worker(), rows_of(1))
    assert (out[0]["stage"], out[0]["reason"]) == ("decode", "undecodable")


def test_a_stage_declaration_carries_no_model_and_checks_its_resources():
    stage = Stage("scale", BatchWorker, kwargs={"scale": 2.0}, actors=2, gpus=1.0, batch_size=8)
    worker = pickle.loads(pickle.dumps(stage)).worker()  # what each actor receives and builds
    assert not hasattr(worker, "model")  # loaded by setup(), in the actor
    with pytest.raises(ValueError, match="actor pool"):
        Stage("gpu task", halve, gpus=1.0)


def test_the_runner_streams_records_into_parts(tmp_path, monkeypatch):
    """run_stages without Ray: Ray's part (stream_stages) replaced by the wrapper run in this process."""
    stage = Stage("halve", halve, kwargs={"divisor": 2})

    def in_process(items, stages, **_):
        yield from apply_stage(stages[0], stages[0].worker(), items)

    monkeypatch.setattr(stage_module, "stream_stages", in_process)
    store = PartStore(tmp_path / "parts")
    items = rows_of(*range(6, 36))  # 30 items: parts of 3 rows (a tenth of the run)
    run_stages(items, [stage], store, description="test")
    assert len(store.parts()) == 10 and store.completed_ids() == {r["pair_id"] for r in items}
    frame = store.read_all()
    assert frame.set_index("pair_id")["half"].to_dict() == {r["pair_id"]: r["x"] / 2 for r in items}

    # collect: one stored record per group of rows (what the shard writer does per shard)
    def per_ten(rows):
        group = []
        for row in rows:
            group.append(row["pair_id"])
            if len(group) == 10:
                yield {"pair_id": ",".join(group)}
                group = []

    grouped = PartStore(tmp_path / "grouped")
    run_stages(items, [stage], grouped, description="test", collect=per_ten)
    assert len(grouped.read_all()) == 3


def test_resume_guard_refuses_other_settings_or_inputs_and_names_what_changed(tmp_path):
    path = tmp_path / "run" / "fingerprint.json"
    settings = {"judge": {"model": "a", "fps": 2.0}, "buckets": ((720, 1280),)}
    guard_resume(path, settings, ["x.mp4", "y.mp4"], start_over="the run folder")
    guard_resume(path, {"buckets": [[720, 1280]], "judge": {"fps": 2.0, "model": "a"}}, ["x.mp4", "y.mp4"],
                 start_over="-")  # fmt: skip
    with pytest.raises(ValueError, match=r"judge\.model: 'a' -> 'b'.*delete the run folder"):
        guard_resume(path, {**settings, "judge": {"model": "b", "fps": 2.0}}, ["x.mp4", "y.mp4"],
                     start_over="the run folder")  # fmt: skip
    with pytest.raises(ValueError, match="the inputs differ"):
        guard_resume(path, settings, ["x.mp4"], start_over="-")


def test_part_store_with_a_schema_keeps_its_columns_and_types(tmp_path):
    import pyarrow as pa

    schema = pa.schema([("pair_id", pa.string()), ("score", pa.float64()), ("reason", pa.string())])
    store = PartStore(tmp_path, schema=schema)
    store.append_rows([{"pair_id": "a", "score": None, "reason": "missing_file", "extra": [1]}])
    store.append_rows([{"pair_id": "b", "score": 3, "reason": None}])
    frame = store.read_all()
    assert list(frame.columns) == ["pair_id", "score", "reason"]
    pd.testing.assert_series_equal(frame["score"], pd.Series([None, 3.0], name="score", dtype="float64"))


def test_a_placement_table_names_stages_of_the_job_and_positive_amounts():
    """``placement`` (stage -> custom Ray resources) is checked when the recipe is read; a Stage refuses
    non-positive amounts. That the resources reach Ray is tests/test_ray_cluster.py's part."""
    from dataengine.formats.recipe import RecipeError, build_config
    from pipelines.shards import ShardsResources

    resources = build_config(ShardsResources, {"placement": {"vae": {"gpu_node": 1}}}, "shards.resources")
    assert resources.placement == {"vae": {"gpu_node": 1.0}}
    with pytest.raises(
        RecipeError, match=r"names no stage of this job: \['judge'\]; its stages are \['vae', 'vlm'\]"
    ):
        build_config(ShardsResources, {"placement": {"judge": {"gpu_node": 1}}}, "shards.resources")
    with pytest.raises(
        RecipeError, match=r"placement\.vae = \{'gpu_node': 0\.0\}: give each custom resource"
    ):
        build_config(ShardsResources, {"placement": {"vae": {"gpu_node": 0}}}, "shards.resources")
    with pytest.raises(ValueError, match="custom resources must be > 0"):
        Stage("halve", halve, resources={"gpu_node": -1})


def _in_process(monkeypatch, ran: list[str]) -> None:
    """Ray's part (stream_stages) replaced by the wrapper run in this process; ``ran`` gets each item's id."""

    def in_process(items, stages, **_):
        ran.extend(item["pair_id"] for item in items)
        rows = list(items)
        for stage in stages:
            rows = apply_stage(stage, stage.worker(), rows)
        yield from rows

    monkeypatch.setattr(stage_module, "stream_stages", in_process)


def test_the_runner_resumes_reads_back_and_counts_per_stage(tmp_path, monkeypatch):
    """run_resumable: a second run over the same items runs none of them again and returns the same
    results; the counts follow each item through the stages (in, kept, rejected by reason)."""
    from pipelines.stage import run_resumable

    def plus_one(row: dict) -> dict:
        if row["half"] > 10:
            raise Rejected("too_big", f"{row['name']}: half {row['half']} > 10")
        return {"y": row["half"] + 1}

    stages = [Stage("halve", halve, kwargs={"divisor": 2}), Stage("plus_one", plus_one)]
    items = rows_of(1, 3, 5, 8, 30, 40, -1)  # rejected: 3, 5 (halve), -1 (error), 30 and 40 (plus_one)
    ran: list[str] = []
    _in_process(monkeypatch, ran)
    first = run_resumable(items, stages, PartStore(tmp_path / "parts"), description="test", columns=["y"])
    assert sorted(ran) == sorted(r["pair_id"] for r in items)
    assert first.counts == {
        "halve": {"in": 7, "kept": 4, "rejected": {"error": 1, "odd_three": 1, "too_short": 1}},
        "plus_one": {"in": 4, "kept": 2, "rejected": {"too_big": 2}},
    }
    assert first.rejected() == {"error": 1, "odd_three": 1, "too_big": 2, "too_short": 1}
    assert first.results.set_index("pair_id")["y"].dropna().to_dict() == {"p0": 1.5, "p3": 5.0}

    ran.clear()
    lines: list[str] = []
    again = run_resumable(
        items,
        stages,
        PartStore(tmp_path / "parts"),
        description="test",
        columns=["y"],
        resumed=lambda done, todo: lines.append(f"{done} done, {todo} to go"),
    )
    assert ran == [] and lines == ["7 done, 0 to go"] and again.num_done == 7
    pd.testing.assert_frame_equal(again.results, first.results)
    assert again.counts == first.counts


def test_the_runner_counts_items_where_a_record_holds_several(tmp_path, monkeypatch):
    """``collect`` stores one record per group of three items (as the shard writer stores one per shard):
    ``item_outcomes`` turns the stored records back into one row per item, and the counts are over items."""
    import json

    from pipelines.stage import run_resumable

    _in_process(monkeypatch, [])
    items = [{**row, "group": f"g{i // 3}"} for i, row in enumerate(rows_of(2, 3, 4, 5, 6, 8))]

    def per_group(rows):
        groups: dict[str, list[dict]] = {}
        for row in rows:
            group = groups.setdefault(row["group"], [])
            group.append(row)
            if len(group) == 3:
                rejected = [
                    [r["pair_id"], r["stage"], r["reason"]]
                    for r in groups.pop(row["group"])
                    if is_rejected(r)
                ]
                yield {"group": row["group"], "rejected": json.dumps(rejected)}

    def outcomes(records: pd.DataFrame) -> pd.DataFrame:
        rejected = [r for record in records["rejected"] for r in json.loads(record)]
        frame = pd.DataFrame(rejected, columns=["pair_id", "stage", "reason"])
        return pd.DataFrame({"pair_id": [item["pair_id"] for item in items]}).merge(frame, how="left")

    stages = [Stage("halve", halve, kwargs={"divisor": 2})]
    store = PartStore(tmp_path / "groups", id_column="group")
    run = run_resumable(items, stages, store, description="test", columns=["rejected"], collect=per_group,
                        item_outcomes=outcomes)  # fmt: skip
    assert len(run.results) == 2  # two records
    assert run.counts == {"halve": {"in": 6, "kept": 4, "rejected": {"odd_three": 1, "too_short": 1}}}
    again = run_resumable(items, stages, store, description="test", columns=["rejected"], collect=per_group)
    assert again.counts == {"halve": {"in": 2, "kept": 2, "rejected": {}}}  # without it: the records


def test_the_runner_redoes_what_no_longer_holds_and_names_what_is_missing(tmp_path, monkeypatch):
    from pipelines.stage import run_resumable

    items = rows_of(2, 4, 6)
    ran: list[str] = []
    _in_process(monkeypatch, ran)
    store = PartStore(tmp_path / "parts")
    run_resumable(items, [Stage("halve", halve, kwargs={"divisor": 2})], store, description="test")
    ran.clear()  # p1's recorded result no longer holds (its file went missing) until it is redone
    checks: list[int] = []

    def still_valid(frame: pd.DataFrame) -> pd.DataFrame:
        checks.append(len(frame))
        return frame[frame["pair_id"] != "p1"] if len(checks) == 1 else frame

    run_resumable(items, [Stage("halve", halve, kwargs={"divisor": 2})], store, description="test",
                  still_valid=still_valid)  # fmt: skip
    assert ran == ["p1"] and checks == [3, 3]  # read before the run and after it

    def lose_one(items, stages, **_):  # a stream that ends early: the item has no result
        yield from apply_stage(stages[0], stages[0].worker(), items[:-1])

    monkeypatch.setattr(stage_module, "stream_stages", lose_one)
    with pytest.raises(RuntimeError, match=r"test: 1 of 2 have no result .* \(e\.g\. q1\)"):
        run_resumable(
            [{"pair_id": "q0", "name": "a", "x": 2}, {"pair_id": "q1", "name": "b", "x": 4}],
            [Stage("halve", halve, kwargs={"divisor": 2})],
            PartStore(tmp_path / "other"),
            description="test",
        )
