"""PartStore (the unit of resume, and its compaction) and Progress, without Ray."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from pipelines.runtime import PartStore, Progress, part_level
from tests.helpers import REPO


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


# -- compaction ------------------------------------------------------------------------------------------


def _rows(start: int, count: int) -> pd.DataFrame:
    ids = [f"id{i:05d}" for i in range(start, start + count)]
    return pd.DataFrame({"pair_id": ids, "score": [i / 7 for i in range(start, start + count)]})


def _reference(count: int) -> pd.DataFrame:
    return _rows(0, count).sort_values("pair_id").reset_index(drop=True)


def _ids(store: PartStore) -> list[str]:
    return [i for p in store.parts() for i in pq.read_table(p, columns=["pair_id"]).column(0).to_pylist()]


def _check_every_row_once(folder, count: int) -> None:
    """The store reads as rows 0..count-1 exactly once, and holds no file but its parts."""
    store = PartStore(folder, fanout=4)
    ids = _ids(store)
    assert len(ids) == len(set(ids)) == count
    assert store.completed_ids() == set(_reference(count)["pair_id"])
    pd.testing.assert_frame_equal(store.read_all(), _reference(count))
    assert sorted(folder.iterdir()) == store.parts()  # reopening finished what a kill interrupted


def test_compaction_merges_full_levels_and_keeps_every_row_once(tmp_path):
    store = PartStore(tmp_path / "scores", fanout=4)
    for i in range(21):  # 21 parts of 3 rows: one part of 16 parts, one of 4, one appended
        store.append(_rows(3 * i, 3))
    assert sorted(part_level(p) for p in store.parts()) == [0, 1, 2]
    assert [pq.read_metadata(p).num_rows for p in sorted(store.parts(), key=part_level)] == [3, 12, 48]
    _check_every_row_once(tmp_path / "scores", 63)
    # a store written with a larger fanout (or before compaction existed) is compacted by compact()
    wide = PartStore(tmp_path / "wide", fanout=100)
    for i in range(9):
        wide.append(_rows(3 * i, 3))
    assert len(wide.parts()) == 9
    assert PartStore(tmp_path / "wide", fanout=4).compact() == 2
    assert sorted(part_level(p) for p in PartStore(tmp_path / "wide").parts()) == [0, 1, 1]
    _check_every_row_once(tmp_path / "wide", 27)


class _Killed(BaseException):
    """Stands for SIGKILL at one filesystem step: nothing after it runs."""


class _KillAfter:
    """Wraps ``os.replace`` and ``Path.unlink``: the first ``steps`` calls go through, the next raises."""

    def __init__(self, steps: int):
        self.left = steps
        self.replace, self.unlink = os.replace, Path.unlink

    def _step(self, real, *args, **kwargs):
        if self.left == 0:
            raise _Killed()
        self.left -= 1
        return real(*args, **kwargs)

    def install(self, patch: pytest.MonkeyPatch) -> None:
        patch.setattr(os, "replace", lambda *a, **k: self._step(self.replace, *a, **k))
        patch.setattr(Path, "unlink", lambda *a, **k: self._step(self.unlink, *a, **k))


def test_a_kill_at_any_step_of_a_merge_leaves_every_row_once(tmp_path, monkeypatch):
    """The merge of 4 parts is 5 steps (rename the merged part, delete the 4 inputs): killed before each."""
    for kill_at in range(6):
        folder = tmp_path / f"kill{kill_at}"
        store = PartStore(folder, fanout=5)
        for i in range(4):
            store.append(_rows(3 * i, 3))
        store.fanout = 4
        with monkeypatch.context() as patch:
            _KillAfter(kill_at).install(patch)
            with pytest.raises(_Killed) if kill_at < 5 else contextlib.nullcontext():
                store.compact()
        if kill_at == 0:  # killed before the rename: only the merged part's temporary file is left
            assert len(list(folder.glob(".*.tmp"))) == 1
        ids = _ids(store)  # read as it is, by a reader that does not reopen it
        assert len(ids) == len(set(ids)) == 12, f"killed before step {kill_at}"
        _check_every_row_once(folder, 12)


@pytest.mark.process
def test_sigkill_during_appends_and_merges_loses_no_acknowledged_row(tmp_path):
    """A real writer, killed at some moment of a loop of appends that merge every other part."""
    folder = tmp_path / "scores"
    writer = (
        "import sys, pandas as pd\n"
        "from pipelines.runtime import PartStore\n"
        f"store = PartStore({str(folder)!r}, fanout=2)\n"
        "for i in range(100000):\n"
        "    store.append(pd.DataFrame({'pair_id': [f'id{i:06d}'], 'score': [float(i)]}))\n"
        "    print(i, flush=True)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", writer], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        acknowledged = [int(process.stdout.readline()) for _ in range(60)]
        time.sleep(0.05)
    finally:
        process.kill()
        process.wait()
    ids = _ids(PartStore(folder, fanout=2))
    assert len(ids) == len(set(ids)), "a row is in two parts"
    numbers = sorted(int(i[2:]) for i in ids)
    assert numbers == list(range(len(numbers)))  # a prefix of the appends, none lost in between
    assert len(numbers) >= len(acknowledged)
    assert not list(folder.glob(".*.tmp"))
