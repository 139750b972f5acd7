"""An OpenVE-Bench-style protocol for ``trainer eval``, beside the paper's six dimensions (``[eval.bench]``).

The field compares instruction-guided video editors on OpenVE-Bench: pairs of (source video, instruction,
category), each method's edit scored by a VLM judge on three axes, 1 to 5. This module scores any number of
methods' edits of such a set with one Qwen3-VL judge (``dataengine.models.judge`` rubric ``openve-bench-v1``, our
own wording of the three axes) and writes the benchmark-style table:

1. **The set** (:func:`read_bench_set`): a folder the user provides, holding one table (CSV, JSON or JSONL)
   with a pair id, the source video, the instruction and the category (OpenVE's column names
   ``original_video``, ``prompt``, ``edited_type`` are read too), and optionally a ``reference_path`` (an
   edited first frame, which our model needs to edit the source). Paths are relative to the folder.
2. **The methods**: folders of ``<pair_id>.mp4`` (``[eval.bench.methods]``), and our checkpoint, sampled
   into ``bench_videos/<method_name>/`` when the set has a reference image for every pair.
3. **The axes and the cap rule** (:func:`apply_cap`): instruction compliance (IC), consistency (CD) and
   visual quality (VQ), 1-5; the second and third may not exceed the first (an edit that does not do what
   was asked is not rewarded for leaving the video alone). A sample's score is the mean of the three capped
   axes; a category's is the mean of its samples; the overall score is the mean over all samples
   (:func:`bench_means`).
4. **The judge's score**: by default each axis is the expected value of the model's answer distribution over
   1..5 from one pass (as the filter's judge); ``temperature`` > 0 samples each axis' answer instead, as a
   generating judge does (seeded per pair, so a draw never depends on the batch or on the other methods).
5. **The table** (:func:`markdown_bench_table`): our scored methods per category and overall, then the
   published overall scores as reference rows, each labelled with its judge and source. Rows from different
   judges do not compare directly, and the table says so.

Every method is scored in its own judge passes over its own clips, so a method's scores do not depend on
which other methods are in the run.

This module is the protocol's pieces; :func:`trainer.eval.run_bench` runs them (reads the set, gathers the
methods' videos with the six dimensions' code, scores, writes the files), so nothing here imports the command.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from dataengine.models.judge import JudgeConfig

AXES = ("instruction_compliance", "consistency", "visual_quality")
CODES = ("IC", "CD", "VQ")
CAPPED = AXES[1:]
"""The axes that may not exceed the first (the benchmark's cap rule)."""
OVERALL = "Overall"

# Published overall scores on OpenVE-Bench (judge Gemini-2.5-Pro): reference rows of the table.
REFERENCE_ROWS: tuple[dict[str, Any], ...] = (
    {"method": "Runway Aleph", "overall": 3.49, "source": "OpenVE-3M paper (arXiv 2512.07826)"},
    {"method": "Kiwi-Edit", "overall": 3.02, "source": "Kiwi-Edit paper (arXiv 2603.02175), about 3.02"},
    {"method": "OpenVE-Edit", "overall": 2.50, "source": "OpenVE-3M paper (arXiv 2512.07826)"},
    {"method": "Lucy-Edit", "overall": 2.22, "source": "OpenVE-3M paper (arXiv 2512.07826)"},
    {"method": "ICVE", "overall": 2.18, "source": "OpenVE-3M paper (arXiv 2512.07826)"},
    {"method": "DITTO", "overall": 2.13, "source": "OpenVE-3M paper (arXiv 2512.07826)"},
    {"method": "VACE-14B", "overall": 1.57, "source": "OpenVE-3M paper (arXiv 2512.07826)"},
    {"method": "InsViE", "overall": 1.45, "source": "OpenVE-3M paper (arXiv 2512.07826)"},
)
REFERENCE_JUDGE = "Gemini-2.5-Pro"

# Column names read from the benchmark's table: ours first, then the names OpenVE's files use.
COLUMN_ALIASES = {
    "pair_id": ("pair_id", "id", "sample_id", "index"),
    "source_path": ("source_path", "original_video", "source_video", "source"),
    "instruction": ("instruction", "prompt", "edit_prompt"),
    "category": ("category", "edited_type", "edit_type", "type"),
    "reference_path": ("reference_path", "reference_image", "reference"),
}
TABLE_SUFFIXES = (".csv", ".json", ".jsonl", ".parquet")


@dataclass
class BenchConfig:
    """The ``[eval.bench]`` table: the benchmark's pairs, the methods, the judge's mode."""

    pairs_dir: str = ""
    """Folder of the benchmark's pairs (its table and videos); empty: no benchmark-style evaluation."""
    metadata: str = ""
    """The table in that folder (CSV, JSON, JSONL or Parquet); empty: the only such file at its top level."""
    methods: dict[str, str] = field(default_factory=dict)
    """Methods to score: name = folder of ``<pair_id>.mp4`` edited videos."""
    categories: list[str] = field(default_factory=list)
    """Order of the categories in the table; empty: sorted."""
    max_per_category: int = 0
    """Score at most this many pairs per category, the first ones (0: all)."""
    temperature: float = 0.0
    """0: the single-pass expected-value score (default); > 0: each axis sampled at this temperature."""
    seed: int = 0
    """Seed of the sampled scores."""
    judge_model: str = ""
    """The judge (a Qwen3-VL checkpoint); empty: ``[eval.judge] model``."""

    def __post_init__(self) -> None:
        if self.max_per_category < 0:
            raise ValueError(f"eval.bench.max_per_category must be >= 0, got {self.max_per_category}")
        if self.temperature < 0:
            raise ValueError(f"eval.bench.temperature must be >= 0, got {self.temperature}")


# ---------------------------------------------------------------------------------------------------
# The set
# ---------------------------------------------------------------------------------------------------


def _read_table(path: Path) -> pd.DataFrame:
    import pandas as pd

    if path.suffix == ".csv":
        return pd.read_csv(path, keep_default_na=False, dtype=str)
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    if path.suffix == ".jsonl":
        return pd.read_json(path, lines=True, dtype=False)
    data = json.loads(path.read_text())
    if isinstance(data, dict):  # {"pairs": [...]} or {id: {...}}
        data = next((v for v in data.values() if isinstance(v, list)), None) or [
            {"pair_id": k, **v} for k, v in data.items() if isinstance(v, dict)
        ]
    return pd.DataFrame(data)


def bench_table_path(folder: str | os.PathLike, metadata: str = "") -> Path:
    """The benchmark's table in ``folder``: ``metadata`` when given, else its only CSV/JSON/JSONL/Parquet file."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"eval.bench.pairs_dir: folder not found: {root}")
    if metadata:
        path = root / metadata
        if not path.is_file():
            raise FileNotFoundError(f"eval.bench.metadata: {path} not found")
        return path
    found = sorted(p for p in root.iterdir() if p.is_file() and p.suffix in TABLE_SUFFIXES)
    if len(found) != 1:
        names = ", ".join(p.name for p in found) or "none"
        raise ValueError(
            f"eval.bench.pairs_dir {root}: expected one table (CSV, JSON, JSONL or Parquet) at its top level, "
            f"found {names}: set eval.bench.metadata to the one to read"
        )
    return found[0]


def read_bench_set(folder: str | os.PathLike, metadata: str = "", max_per_category: int = 0) -> pd.DataFrame:
    """The benchmark's pairs: ``pair_id``, ``source_path``, ``instruction``, ``category``, ``reference_path``
    (None where the set has none), paths resolved against the folder."""
    import pandas as pd

    path = bench_table_path(folder, metadata)
    table = _read_table(path)
    columns: dict[str, str] = {}
    for name, aliases in COLUMN_ALIASES.items():
        match = next((a for a in aliases if a in table.columns), None)
        if match is not None:
            columns[name] = match
        elif name != "reference_path":
            raise ValueError(
                f"{path}: no column for {name} (one of {', '.join(aliases)}); its columns: {list(table.columns)}"
            )
    first_row = 2 if path.suffix == ".csv" else 0
    for name in ("pair_id", "source_path", "instruction", "category"):
        for offset, value in enumerate(table[columns[name]]):
            if value is None or (isinstance(value, float) and value != value) or not str(value).strip():
                raise ValueError(f"{path}: empty {columns[name]} (row {first_row + offset})")
    ids = table[columns["pair_id"]].astype(str)
    if ids.duplicated().any():
        raise ValueError(f"{path}: {columns['pair_id']} {ids[ids.duplicated()].iloc[0]} repeats")
    root = path.parent

    def resolve(value: Any) -> str | None:
        if not isinstance(value, str) or not value:
            return None
        return str(Path(value) if Path(value).is_absolute() else root / value)

    references = (
        [resolve(v) for v in table[columns["reference_path"]]] if "reference_path" in columns else None
    )
    out = pd.DataFrame(
        {
            "pair_id": ids,
            "source_path": [resolve(str(v)) for v in table[columns["source_path"]]],
            "instruction": table[columns["instruction"]].astype(str),
            "category": table[columns["category"]].astype(str),
            "reference_path": references,
        }
    )
    if max_per_category:
        out = out.groupby("category", sort=False).head(max_per_category).reset_index(drop=True)
    return out


# ---------------------------------------------------------------------------------------------------
# The protocol's arithmetic
# ---------------------------------------------------------------------------------------------------


def apply_cap(scores: pd.DataFrame) -> pd.DataFrame:
    """The cap rule and the per-sample mean: ``consistency`` and ``visual_quality`` become at most
    ``instruction_compliance``; ``score`` is the mean of the three capped axes. The judge's own values are
    kept as ``<axis>_raw``. Rows without scores (rejections) keep NaN."""
    out = scores.copy()
    first = AXES[0]
    for axis in AXES:
        out[f"{axis}_raw"] = out[axis].astype(float)
    for axis in CAPPED:
        out[axis] = out[[f"{axis}_raw", f"{first}_raw"]].min(axis=1, skipna=False)
    out[first] = out[f"{first}_raw"]
    out["score"] = out[list(AXES)].mean(axis=1, skipna=False)
    return out


def bench_means(scores: pd.DataFrame, categories: list[str], methods: list[str]) -> pd.DataFrame:
    """Per method: the mean of its scored samples per category and over all of them (``Overall``), long
    form: method, category, score, the three axes, num_clips. Rows follow ``methods`` and ``categories``."""
    import pandas as pd

    scored = scores[scores["score"].notna()]
    rows = []
    for method in methods:
        mine = scored[scored["method"] == method]
        for category in [*categories, OVERALL]:
            part = mine if category == OVERALL else mine[mine["category"] == category]
            if not len(part):
                continue
            means = part[[*AXES, "score"]].mean()
            rows.append({"method": method, "category": category, **means.to_dict(), "num_clips": len(part)})
    return pd.DataFrame(rows, columns=["method", "category", *AXES, "score", "num_clips"])


def markdown_bench_table(table: pd.DataFrame, categories: list[str], judge_model: str, mode: str) -> str:
    """One row per scored method (per category and overall), then the published reference rows."""
    header = ["Method", "Judge", *categories, OVERALL, "Source"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, rows in table.groupby("method", sort=False):
        cells = [str(method), f"{judge_model} ({mode})"]
        for category in [*categories, OVERALL]:
            match = rows[rows["category"] == category]
            cells.append(f"{match.iloc[0]['score']:.2f}" if len(match) else "-")
        lines.append("| " + " | ".join([*cells, "this run"]) + " |")
    for ref in REFERENCE_ROWS:
        cells = [
            ref["method"],
            REFERENCE_JUDGE,
            *(["-"] * len(categories)),
            f"{ref['overall']:.2f}",
            ref["source"],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    counts = ", ".join(
        f"{m}: {int(n)}"
        for m, c, n in table[["method", "category", "num_clips"]].itertuples(index=False)
        if c == OVERALL
    )
    note = (
        f"\nScores 1-5: the mean of instruction compliance, consistency and visual quality, the last two capped at "
        f"the first. Rows from different judges do not compare directly: this run's rows were scored by "
        f"{judge_model}, the reference rows by {REFERENCE_JUDGE} as published (overall only). "
        f"Clips scored per method: {counts or 'none'}.\n"
    )
    return "\n".join(lines) + "\n" + note


# ---------------------------------------------------------------------------------------------------
# The judge and the scores
# ---------------------------------------------------------------------------------------------------


def bench_judge(bench: BenchConfig, judge_config: JudgeConfig, judge: Any | None = None) -> Any:
    """The benchmark's judge: ``judge`` (the six-dimension one, whose model it shares) with the benchmark's
    rubric and mode, or a new one when none is given or the benchmark names another model. ``judge_config``
    is ``[eval.judge]``, whose model the benchmark takes unless ``bench.judge_model`` names another."""
    import dataclasses

    from dataengine.models.judge import BENCH_RUBRIC, Judge

    judge_config = dataclasses.replace(
        judge_config,
        model=bench.judge_model or judge_config.model,
        rubric_version=BENCH_RUBRIC,
        temperature=bench.temperature,
        seed=bench.seed,
    )
    if (
        judge is not None
        and getattr(judge, "config", None) is not None
        and judge.config.model == judge_config.model
    ):
        return judge.with_config(judge_config)
    return Judge(judge_config)


def score_bench_methods(judge: Any, pairs: pd.DataFrame, videos: dict[str, dict[str, str]]) -> pd.DataFrame:
    """Per method and clip: the judge's three axes, capped, and the sample's mean; one judge pass per method."""
    import pandas as pd

    frames = []
    for method, paths in videos.items():
        rows = pairs[pairs["pair_id"].isin(paths)].copy()
        if not len(rows):
            continue
        rows["target_path"] = rows["pair_id"].map(paths)
        scores = judge.score_pairs(rows[["pair_id", "instruction", "source_path", "target_path"]])
        scores = scores.merge(
            rows[["pair_id", "category", "source_path", "target_path", "instruction"]], on="pair_id"
        )
        scores = scores.rename(columns={"target_path": "video_path"})
        scores.insert(0, "method", method)
        frames.append(apply_cap(scores))
    if not frames:
        return pd.DataFrame(columns=["method", "pair_id", "category", "score", *AXES, "reason", "detail"])
    return pd.concat(frames, ignore_index=True)
