"""PartStore (the unit of resume) and Progress, without Ray."""

from __future__ import annotations

import pandas as pd

from pipelines.runtime import PartStore, Progress


def test_part_store_appends_resumes_and_ignores_partial_writes(tmp_path):
    store = PartStore(tmp_path / "scores")
    store.append(pd.DataFrame({"pair_id": ["b", "a"], "score": [1.0, 2.0]}))
    store.append(pd.DataFrame({"pair_id": ["c"], "score": [3.0]}))
    assert store.append(pd.DataFrame({"pair_id": [], "score": []})) is None
    # A killed writer leaves a temporary file: it is not a part and is cleaned up on reopen.
    (tmp_path / "scores" / ".part-x.parquet.tmp").write_bytes(b"half a parquet")
    store = PartStore(tmp_path / "scores")
    assert store.completed_ids() == {"a", "b", "c"}
    frame = store.read_all()
    assert frame["pair_id"].tolist() == ["a", "b", "c"]
    assert frame["score"].tolist() == [2.0, 1.0, 3.0]
    assert not list((tmp_path / "scores").glob(".*.tmp"))


def test_progress_counts_resumed_items_but_not_in_rate(capsys):
    progress = Progress(total=10, unit="pairs", description="scoring", initial=4)
    progress.update(3)
    progress.close()
    assert progress.done == 7
    err = capsys.readouterr().err
    assert "7/10 pairs" in err and "ETA" in err and "pairs/s" in err
