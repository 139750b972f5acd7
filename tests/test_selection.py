"""Selection against an independent per-category computation (plain Python sort), ties included."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from dataengine.steps.selection import SelectionConfig, render_summary, score_histogram, select, summarize


def _scores(num: int = 3000, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "pair_id": [f"{i:06x}{rng.integers(0, 1 << 20):05x}" for i in rng.permutation(num)],
            "category": rng.choice(["global_style", "local_add", "local_remove"], size=num),
            # one decimal: many exact ties, and some exactly at the threshold
            "score": np.round(rng.uniform(7.0, 10.0, size=num), 1),
        }
    )
    frame.loc[rng.choice(num, 20, replace=False), "score"] = np.nan  # unscored
    return frame


def _reference(frame: pd.DataFrame, threshold: float, cap: int, duplicates: set[str]) -> list[str]:
    """Kept ids in (category, rank) order, with a plain per-category loop."""
    kept = []
    for category in sorted(frame["category"].unique()):
        rows = [
            (score, pid)
            for pid, cat, score in frame[["pair_id", "category", "score"]].itertuples(index=False)
            if cat == category and not np.isnan(score) and score >= threshold and pid not in duplicates
        ]
        rows.sort(key=lambda r: (-r[0], r[1]))
        kept.extend(pid for _, pid in rows[:cap])
    return kept


@pytest.mark.parametrize("threshold,cap", [(9.3, 40), (8.0, 100000), (9.0, 0), (11.0, 5)])
def test_select_matches_a_plain_sort(threshold, cap):
    frame = _scores()
    result = select(frame, SelectionConfig(threshold=threshold, max_per_category=cap))
    assert result.kept["pair_id"].tolist() == _reference(frame, threshold, cap, set())
    # every row lands in exactly one of kept and rejections
    assert len(result.kept) + len(result.rejections) == len(frame)
    assert set(result.kept["pair_id"]) | set(result.rejections["pair_id"]) == set(frame["pair_id"])
    scores = frame.set_index("pair_id")["score"]
    below = result.rejections[result.rejections["reason"] == "below_threshold"]
    assert (scores[below["pair_id"]].fillna(-1) < threshold).all()
    assert (scores[result.kept["pair_id"]] >= threshold).all()
    over = result.rejections[result.rejections["reason"] == "over_cap"]
    expected_over = ((scores >= threshold).groupby(frame.set_index("pair_id")["category"]).sum() - cap).clip(
        lower=0
    )
    assert len(over) == expected_over.sum()


def test_ties_are_broken_by_pair_id():
    frame = pd.DataFrame(
        {"pair_id": ["d", "b", "c", "a", "e"], "category": ["x"] * 5, "score": [9.5, 9.5, 9.5, 9.5, 9.9]}
    )
    result = select(frame, SelectionConfig(threshold=9.3, max_per_category=3))
    assert result.kept["pair_id"].tolist() == ["e", "a", "b"]
    assert result.kept["rank"].tolist() == [0, 1, 2]
    over = result.rejections.set_index("pair_id")
    assert over.loc["c", "reason"] == "over_cap" and "rank 4 in x" in over.loc["c", "detail"]


def test_score_equal_to_the_threshold_is_kept_and_missing_score_is_not():
    frame = pd.DataFrame({"pair_id": ["a", "b", "c"], "category": ["x"] * 3, "score": [9.3, 9.2999, np.nan]})
    result = select(frame, SelectionConfig(threshold=9.3, max_per_category=10))
    assert result.kept["pair_id"].tolist() == ["a"]
    details = result.rejections.set_index("pair_id")["detail"]
    assert "< threshold 9.3" in details["b"] and details["c"] == "no score"


def test_duplicates_are_removed_before_the_cap():
    frame = _scores(seed=1)
    passing = frame[frame["score"] >= 9.3]
    dups = set(passing["pair_id"].iloc[::3])
    duplicates = pd.DataFrame({"pair_id": sorted(dups), "detail": ["near-duplicate"] * len(dups)})
    result = select(frame, SelectionConfig(threshold=9.3, max_per_category=30), duplicates=duplicates)
    assert result.kept["pair_id"].tolist() == _reference(frame, 9.3, 30, dups)
    dropped = result.rejections[result.rejections["reason"] == "duplicate"]
    assert set(dropped["pair_id"]) == dups and (dropped["detail"] == "near-duplicate").all()
    assert len(result.kept) + len(result.rejections) == len(frame)


def test_summary_counts_and_histogram(capsys):
    frame = _scores(num=500)
    config = SelectionConfig(threshold=9.0, max_per_category=20)
    result = select(frame, config)
    scored = frame[frame["score"].notna()]
    read = frame.groupby("category").size().to_dict()
    summary = summarize(read, scored, result.kept, result.rejections, config)
    json.dumps(summary)  # JSON-serialisable
    for category, entry in summary["categories"].items():
        in_cat = frame[frame["category"] == category]
        assert entry["read"] == len(in_cat)
        assert entry["scored"] == in_cat["score"].notna().sum()
        assert entry["kept"] == min(20, (in_cat["score"] >= 9.0).sum())
        assert entry["rejected"]["below_threshold"] == (~(in_cat["score"] >= 9.0)).sum()
        counts, _ = np.histogram(in_cat["score"].dropna(), bins=20, range=(0, 10))
        assert entry["score_histogram"]["counts"] == counts.tolist()
        assert entry["read"] == entry["kept"] + sum(entry["rejected"].values())
    assert summary["total"]["kept"] == len(result.kept)
    render_summary(summary)
    out = capsys.readouterr().out
    assert "below_threshold" in out and "total" in out


def test_histogram_includes_ten_in_the_last_bin():
    hist = score_histogram(np.array([0.0, 9.99, 10.0, np.nan]), num_bins=10)
    assert hist["counts"] == [1, 0, 0, 0, 0, 0, 0, 0, 0, 2]
