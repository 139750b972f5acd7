"""Selection of the scored pairs: threshold, optional near-duplicate removal, per-category cap; the summary.

The rule (MiVE: keep score >= 9.3, at most 4000 per category):

1. a pair whose score is below ``threshold`` (or missing) is rejected as ``below_threshold``;
2. pairs marked as near-duplicates (see :mod:`dataengine.models.dedup`, run on the pairs that passed 1) are
   rejected as ``duplicate``;
3. within each category the rest are ranked by score, highest first, ties broken by ``pair_id``
   (ascending), and those ranked beyond ``max_per_category`` are rejected as ``over_cap``.

Everything is vectorised (one boolean mask and one sort of the pairs above the threshold), so 2.45M rows
take about a second. :func:`summarize` counts, per category, what was read, scored, kept and rejected (by
reason), with a histogram of the scores; :func:`render_summary` prints it as a rich table.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

SELECT_STAGE = "select"
EARLY_STAGES = ("read", "probe")
"""The stages that reject a row before the judge sees it: the CSV reader and the probe (trainability included)."""


@dataclass
class SelectionConfig:
    """How scored pairs become the kept set."""

    threshold: float = 9.3
    """Minimum pair score (mean of the judge's three 0-10 sub-scores) to keep a pair."""
    max_per_category: int = 4000
    """Most pairs kept per category, highest scores first (ties by pair_id)."""


@dataclass
class SelectionResult:
    """The kept pairs and the selection's rejections."""

    kept: pd.DataFrame
    """The input rows that were kept, ordered by category then rank, with a ``rank`` column (0-based)."""
    rejections: pd.DataFrame
    """pair_id, stage, reason, detail, category for every input row not kept."""


def select(
    scored: pd.DataFrame,
    config: SelectionConfig,
    duplicates: pd.DataFrame | None = None,
) -> SelectionResult:
    """Apply threshold, near-duplicate removal and the per-category cap to ``scored``.

    ``scored`` needs ``pair_id``, ``category`` and ``score`` (NaN for a pair without a score);
    ``duplicates`` (``pair_id``, ``detail``) lists the pairs a near-duplicate removal dropped.
    """
    if config.max_per_category < 0:
        raise ValueError(f"max_per_category must be >= 0, got {config.max_per_category}")
    missing = [c for c in ("pair_id", "category", "score") if c not in scored.columns]
    if missing:
        raise ValueError(f"select() needs columns {missing}")
    scores = scored["score"].to_numpy(dtype=np.float64, na_value=np.nan)
    above = scores >= config.threshold  # NaN compares False: a missing score is below the threshold

    below = scored.loc[~above, ["pair_id", "category"]]
    below_scores = pd.Series(scores[~above], index=below.index)
    below_detail = (
        "score " + below_scores.round(4).astype(str) + f" < threshold {config.threshold:g}"
    ).where(below_scores.notna(), "no score")
    parts = [below.assign(reason="below_threshold", detail=below_detail.to_numpy())]

    candidates = scored.loc[above]
    if duplicates is not None and len(duplicates):
        is_duplicate = candidates["pair_id"].isin(duplicates["pair_id"])
        detail = candidates.loc[is_duplicate, ["pair_id"]].merge(
            duplicates[["pair_id", "detail"]], on="pair_id"
        )
        dropped = candidates.loc[is_duplicate, ["pair_id", "category"]].merge(
            detail, on="pair_id", how="left"
        )
        parts.append(dropped.assign(reason="duplicate"))
        candidates = candidates.loc[~is_duplicate]

    # Highest score first, ties by pair_id: one stable sort on (category, -score, pair_id).
    ranked = candidates.sort_values(
        ["category", "score", "pair_id"], ascending=[True, False, True], kind="stable"
    ).reset_index(drop=True)
    rank = ranked.groupby("category", sort=False).cumcount().to_numpy()
    within = rank < config.max_per_category
    kept = ranked.loc[within].assign(rank=rank[within]).reset_index(drop=True)
    over = ranked.loc[~within, ["pair_id", "category"]]
    over_detail = (
        "rank "
        + pd.Series(rank[~within] + 1, index=over.index).astype(str)
        + " in "
        + over["category"]
        + f" beyond the cap of {config.max_per_category}"
    )
    parts.append(over.assign(reason="over_cap", detail=over_detail))

    rejections = pd.concat(parts, ignore_index=True)
    rejections["stage"] = SELECT_STAGE
    rejections = rejections[["pair_id", "stage", "reason", "detail", "category"]]
    return SelectionResult(kept=kept, rejections=rejections)


def score_histogram(scores: pd.Series | np.ndarray, num_bins: int = 20) -> dict[str, list]:
    """Counts of ``scores`` in ``num_bins`` equal bins over [0, 10] (the last bin includes 10)."""
    values = np.asarray(scores, dtype=np.float64)
    values = values[np.isfinite(values)]
    counts, edges = np.histogram(values, bins=num_bins, range=(0.0, 10.0))
    return {"edges": [round(float(e), 6) for e in edges], "counts": [int(c) for c in counts]}


def summarize(
    rows_per_category: dict[str, int],
    scores: pd.DataFrame,
    kept: pd.DataFrame,
    rejections: pd.DataFrame,
    config: SelectionConfig,
    num_bins: int = 20,
) -> dict:
    """The per-category summary: read, probed, scored, kept, rejected by reason, score histogram, and totals.

    ``scores`` has ``category`` and ``score`` for every scored pair; ``kept`` and ``rejections`` have
    ``category`` (and ``reason``, ``stage``). ``probed`` counts the rows that passed the read and the probe
    (the pairs sent to the judge).
    """
    categories = sorted(set(rows_per_category) | set(kept["category"]) | set(rejections["category"]))
    reasons = sorted(rejections["reason"].unique()) if len(rejections) else []
    by_reason = rejections.groupby(["category", "reason"]).size() if len(rejections) else pd.Series(dtype=int)
    scored_count = scores.groupby("category").size() if len(scores) else pd.Series(dtype=int)
    kept_count = kept.groupby("category").size() if len(kept) else pd.Series(dtype=int)
    early = rejections[rejections["stage"].isin(EARLY_STAGES)] if len(rejections) else rejections
    early_count = early.groupby("category").size() if len(early) else pd.Series(dtype=int)
    out: dict = {
        "threshold": config.threshold,
        "max_per_category": config.max_per_category,
        "categories": {},
    }
    for category in categories:
        rejected = {r: int(by_reason.get((category, r), 0)) for r in reasons}
        cat_scores = scores.loc[scores["category"] == category, "score"]
        out["categories"][category] = {
            "read": int(rows_per_category.get(category, 0)),
            "probed": int(rows_per_category.get(category, 0)) - int(early_count.get(category, 0)),
            "scored": int(scored_count.get(category, 0)),
            "kept": int(kept_count.get(category, 0)),
            "rejected": {r: n for r, n in rejected.items() if n},
            "score_mean": float(cat_scores.mean()) if len(cat_scores) else None,
            "score_histogram": score_histogram(cat_scores, num_bins),
        }
    totals = {
        "read": int(sum(rows_per_category.values())),
        "probed": int(sum(rows_per_category.values())) - len(early),
        "scored": int(len(scores)),
        "kept": int(len(kept)),
        "rejected": {r: int((rejections["reason"] == r).sum()) for r in reasons},
        "score_histogram": score_histogram(scores["score"] if len(scores) else np.array([]), num_bins),
    }
    out["total"] = totals
    return out


_BARS = " ▁▂▃▄▅▆▇█"


def _sparkline(counts: list[int]) -> str:
    peak = max(counts) if counts else 0
    if peak == 0:
        return " " * len(counts)
    return "".join(_BARS[int(np.ceil(c / peak * (len(_BARS) - 1)))] for c in counts)


def render_summary(summary: dict, title: str = "OpenVE filter") -> None:
    """Print the summary as a rich table (one row per category and a total row)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    reasons = list(summary["total"]["rejected"])
    table = Table(
        title=escape(
            f"{title}: threshold {summary['threshold']:g}, at most {summary['max_per_category']} per category"
        )
    )
    table.add_column("category")
    for name in ("read", "probed", "scored", "kept", *reasons):
        table.add_column(name, justify="right")
    table.add_column("scores 0..10")
    rows = list(summary["categories"].items()) + [("total", summary["total"])]
    for name, entry in rows:
        table.add_row(
            name,
            str(entry["read"]),
            str(entry["probed"]),
            str(entry["scored"]),
            str(entry["kept"]),
            *[str(entry["rejected"].get(r, 0)) for r in reasons],
            _sparkline(entry["score_histogram"]["counts"]),
            end_section=name == rows[-2][0] if len(rows) > 1 else False,
        )
    console = Console()
    if not console.is_terminal:  # logs and captured output: do not squeeze the table into 80 columns
        console = Console(width=200)
    console.print(table)
    clips = summary.get("clips")
    if clips and clips.get("frames"):
        rates = ", ".join(f"{k} fps: {v}" for k, v in clips["fps"].items())
        frames = clips["frames"]
        console.print(
            f"videos as probed: {rates}; {frames['min']}-{frames['max']} frames (median {frames['median']:g})",
            markup=False,
        )
    if clips and clips.get("kept_clip_frames") is not None:
        lengths = ", ".join(f"{k} frames: {v}" for k, v in clips["kept_clip_frames"].items()) or "none"
        console.print(f"kept pairs' training clips under [shards.clip]: {lengths}", markup=False)
