"""``trainer eval``: the paper's evaluation as a command: every method's edits scored by a VLM judge on six
dimensions, per-clip scores and a table of means per subset and method.

    trainer eval manifests/eval_mive.toml                       # the [eval] table of a recipe
    trainer eval manifests/demo.toml eval.checkpoint=runs/debug eval.max_per_subset=2

What it does, in order:

1. reads the evaluation set (CSV or Parquet): ``pair_id``, ``source_path``, ``instruction``,
   ``reference_path``, ``subset`` (the paper: ``simple`` / ``complex``; without the column, a pair
   manifest's ``category`` is the subset), optionally ``target_path`` (a ground truth, scored as the method
   ``target`` when ``score_targets``);
2. our checkpoint (``eval.checkpoint``), if given, edits every clip through ``trainer.sample.Sampler``
   (the same code as ``trainer sample``; the DiT, the VAE and the VLM are loaded once for all clips) into ``<output_dir>/videos/<method_name>/<pair_id>.mp4``; a clip
   sampled by an earlier run is kept, so an interrupted evaluation resumes;
3. every other method is a folder of ``<pair_id>.mp4`` (``[eval.methods]``: name = folder), matched by pair
   id; a pair a method has no video for is a rejection ``(pair_id, "eval", "missing_video", method)``;
4. the judge (``dataengine.models.judge.Judge`` with the ``eval-v1`` rubric: IA, CC, TS, PR, VA, SC, each 0-10, the
   expected value of the model's answer distribution, one prefill per batch) scores every edited clip
   against its source, reference image and instruction;
5. writes ``scores.parquet`` (per method and clip), ``table.parquet`` (means per method and subset, long
   form), ``table.md`` (the paper's layout: one row per method, the six dimensions per subset),
   ``rejections.parquet`` and ``summary.json`` (judge model, rubric version and a digest of its text,
   the resolved config);
6. with ``[eval.bench]``, the OpenVE-Bench-style protocol beside the six dimensions (:func:`run_bench`,
   the protocol's pieces in :mod:`trainer.openve_bench`): the benchmark's pairs from a user's folder, every
   method's edits scored on three axes 1-5 with the cap rule by the same judge model, ``bench_table.md`` per
   category and overall with the published scores as labelled reference rows.

See ``docs/evaluation.md``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from dataengine.models.judge import EVAL_RUBRIC, RUBRICS, JudgeConfig
from trainer.openve_bench import (
    AXES,
    CAPPED,
    CODES,
    REFERENCE_JUDGE,
    REFERENCE_ROWS,
    BenchConfig,
    bench_judge,
    bench_means,
    markdown_bench_table,
    read_bench_set,
    score_bench_methods,
)
from trainer.sample import SampleConfig

if TYPE_CHECKING:  # pandas is imported where it is used, so that ``trainer --help`` stays instant
    import pandas as pd

    from dataengine.formats.layout import EvalLayout

STAGE = "eval"
TARGET_METHOD = "target"
SET_COLUMNS = ["pair_id", "source_path", "instruction", "reference_path", "subset", "target_path"]


@dataclass
class EvalConfig:
    """The ``[eval]`` recipe table: the evaluation set, the methods and the judge."""

    pairs: str = ""
    """The evaluation set: CSV or Parquet with pair_id, source_path, instruction, reference_path, subset
    (or category), optional target_path. Relative paths are relative to the set's folder."""
    output_dir: str = ""
    """Folder for the sampled videos, per-clip scores, tables and summary; empty: ``eval/`` in the training
    run folder of ``checkpoint`` (``dataengine.formats.layout.TrainRunLayout.evaluation``)."""
    checkpoint: str = ""
    """Our model: a training run folder, DCP step folder or exported folder, sampled by this command.
    Empty: no sampling, only the methods' folders are scored."""
    method_name: str = "MiVE"
    """Name of our checkpoint's method in the tables."""
    methods: dict[str, str] = field(default_factory=dict)
    """Other methods: name = folder of ``<pair_id>.mp4`` edited videos (relative to the working directory)."""
    score_targets: bool = False
    """Also score the set's ``target_path`` videos as the method ``target`` (an upper reference)."""
    subsets: list[str] = field(default_factory=list)
    """Order of the subsets in the table (the paper: simple, complex); empty: sorted."""
    max_per_subset: int = 0
    """Evaluate at most this many pairs per subset, first ones in the set (0: all)."""
    vae: str = ""
    """Override the Wan VAE used for sampling (hub id or folder); empty: the one the checkpoint trained with."""
    vlm: str = ""
    """Override the Qwen3-VL encoder used for sampling; empty: the one the checkpoint trained with."""
    judge: JudgeConfig = field(default_factory=lambda: JudgeConfig(rubric_version=EVAL_RUBRIC))
    """The judge (``eval-v1`` rubric: the paper's six dimensions)."""
    sample: SampleConfig = field(default_factory=SampleConfig)
    """How our checkpoint samples (steps, shift, seed, device)."""
    bench: BenchConfig = field(default_factory=BenchConfig)
    """The OpenVE-Bench-style protocol beside the six dimensions (``trainer.openve_bench``): the benchmark's
    pairs folder, the methods' folders, the judge's mode; off while ``bench.pairs_dir`` is empty."""

    def __post_init__(self) -> None:
        if self.judge.rubric_version not in RUBRICS:
            raise ValueError(
                f"eval.judge.rubric_version {self.judge.rubric_version!r} is not one of {sorted(RUBRICS)}"
            )
        if not RUBRICS[self.judge.rubric_version].with_reference:
            raise ValueError(
                f"eval.judge.rubric_version {self.judge.rubric_version!r} does not show the reference image: "
                f"use {EVAL_RUBRIC!r}"
            )
        names = [*self.methods, *([self.method_name] if self.checkpoint else [])]
        names += [TARGET_METHOD] if self.score_targets else []
        if len(set(names)) != len(names):
            raise ValueError(f"eval: method names repeat: {names}")
        if self.max_per_subset < 0:
            raise ValueError(f"eval.max_per_subset must be >= 0, got {self.max_per_subset}")


# ---------------------------------------------------------------------------------------------------
# 1. The evaluation set
# ---------------------------------------------------------------------------------------------------


def read_eval_set(path: str | os.PathLike, max_per_subset: int = 0) -> pd.DataFrame:
    """The evaluation set with ``SET_COLUMNS`` (``target_path`` None when absent), paths resolved."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"eval.pairs: evaluation set not found: {path}")
    table = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, keep_default_na=False)
    if "subset" not in table.columns and "category" in table.columns:
        table = table.assign(subset=table["category"])
    missing = [c for c in SET_COLUMNS[:5] if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; need {SET_COLUMNS[:5]} (subset or category)")
    first_row = 2 if path.suffix != ".parquet" else 0  # the line number in a CSV, else the row index
    for offset, row in enumerate(table.itertuples(index=False)):
        for column in ("pair_id", "source_path", "instruction", "reference_path", "subset"):
            value = getattr(row, column)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{path}: empty {column} (row {first_row + offset})")
    if table["pair_id"].duplicated().any():
        raise ValueError(
            f"{path}: pair_id {table.loc[table['pair_id'].duplicated(), 'pair_id'].iloc[0]} repeats"
        )

    def resolve(value: Any) -> str | None:
        if not isinstance(value, str) or not value:
            return None
        return str(Path(value) if Path(value).is_absolute() else path.parent / value)

    out = pd.DataFrame(
        {
            "pair_id": table["pair_id"].astype(str),
            "source_path": [resolve(v) for v in table["source_path"]],
            "instruction": table["instruction"].astype(str),
            "reference_path": [resolve(v) for v in table["reference_path"]],
            "subset": table["subset"].astype(str),
            "target_path": [resolve(v) for v in table["target_path"]] if "target_path" in table else None,
        }
    )
    if max_per_subset:
        out = out.groupby("subset", sort=False).head(max_per_subset).reset_index(drop=True)
    return out


# ---------------------------------------------------------------------------------------------------
# 2-3. The methods' videos
# ---------------------------------------------------------------------------------------------------


def sample_ours(config: EvalConfig, pairs: pd.DataFrame, folder: Path) -> tuple[dict[str, str], list[dict]]:
    """Edit every pair with our checkpoint into ``folder/<pair_id>.mp4`` (``trainer.sample.Sampler``: the DiT,
    the VAE and the VLM are loaded once for all clips, and not at all when every video is already there).

    Returns (pair_id -> video, rejections); a video already there (an earlier, interrupted run) is kept.
    """
    import contextlib

    from trainer.sample import Sampler

    videos, rejections = {}, []
    folder.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        sampler = None
        for row in pairs.itertuples(index=False):
            out = folder / f"{row.pair_id}.mp4"
            if not out.exists():
                if sampler is None:
                    sampler = stack.enter_context(
                        Sampler(
                            config.checkpoint,
                            config=config.sample,
                            vae_model=config.vae or None,
                            vlm_model=config.vlm or None,
                        )
                    )
                try:
                    sampler.sample(row.source_path, row.instruction, row.reference_path, out)
                except (ValueError, FileNotFoundError) as err:
                    rejections.append(
                        _rejection(row.pair_id, "sample_failed", f"{config.method_name}: {err}")
                    )
                    continue
            videos[row.pair_id] = str(out)
    return videos, rejections


def folder_videos(name: str, folder: str, pairs: pd.DataFrame) -> tuple[dict[str, str], list[dict]]:
    """A method's ``<pair_id>.mp4`` files; a pair without one is a ``missing_video`` rejection."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"eval.methods.{name}: folder not found: {root}")
    videos, rejections = {}, []
    for pair_id in pairs["pair_id"]:
        path = root / f"{pair_id}.mp4"
        if path.is_file():
            videos[pair_id] = str(path)
        else:
            rejections.append(_rejection(pair_id, "missing_video", f"{name}: no {path}"))
    return videos, rejections


def _rejection(pair_id: str, reason: str, detail: str) -> dict[str, str]:
    return {"pair_id": pair_id, "stage": STAGE, "reason": reason, "detail": detail[:500]}


# ---------------------------------------------------------------------------------------------------
# 4-5. Scores and tables
# ---------------------------------------------------------------------------------------------------


def score_methods(judge: Any, pairs: pd.DataFrame, videos: dict[str, dict[str, str]]) -> pd.DataFrame:
    """Per-clip scores: one judge pass per method over (source, reference, that method's video, instruction)."""
    import pandas as pd

    frames = []
    for method, paths in videos.items():
        rows = pairs[pairs["pair_id"].isin(paths)].copy()
        if not len(rows):
            continue
        rows["target_path"] = rows["pair_id"].map(paths)
        scores = judge.score_pairs(rows)
        scores.insert(0, "method", method)
        for position, column in enumerate(
            ("subset", "video_path", "source_path", "reference_path", "instruction")
        ):
            scores.insert(
                2 + position, column, rows["target_path" if column == "video_path" else column].to_numpy()
            )
        frames.append(scores)
    if not frames:
        return pd.DataFrame(
            columns=["method", "pair_id", "subset", "video_path", *judge.rubric.result_columns[1:]]
        )
    return pd.concat(frames, ignore_index=True)


def mean_table(
    scores: pd.DataFrame, axes: tuple[str, ...], subsets: list[str], methods: list[str]
) -> pd.DataFrame:
    """Means per method and subset (scored clips only), long form: method, subset, the axes, score, num_clips."""
    scored = scores[scores["reason"].isna()]
    table = (
        scored.groupby(["method", "subset"], sort=False)[[*axes, "score"]]
        .mean()
        .join(scored.groupby(["method", "subset"], sort=False).size().rename("num_clips"))
        .reset_index()
    )
    order = {name: i for i, name in enumerate(methods)}
    position = {name: i for i, name in enumerate(subsets)}
    table = table.assign(_m=table["method"].map(order), _s=table["subset"].map(position))
    return table.sort_values(["_m", "_s"]).drop(columns=["_m", "_s"]).reset_index(drop=True)


def markdown_table(
    table: pd.DataFrame, axes: tuple[str, ...], codes: tuple[str, ...], subsets: list[str]
) -> str:
    """The paper's layout: one row per method; per subset the six dimensions and their mean (Avg)."""
    header = ["Method"] + [f"{subset} {code}" for subset in subsets for code in (*codes, "Avg")]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, rows in table.groupby("method", sort=False):
        cells = [str(method)]
        for subset in subsets:
            match = rows[rows["subset"] == subset]
            values = [*axes, "score"]
            cells += [f"{match.iloc[0][v]:.2f}" for v in values] if len(match) else ["-"] * len(values)
        lines.append("| " + " | ".join(cells) + " |")
    counts = ", ".join(
        f"{m} / {s}: {int(n)}" for m, s, n in table[["method", "subset", "num_clips"]].itertuples(index=False)
    )
    return "\n".join(lines) + f"\n\nClips scored per method and subset: {counts}.\n"


def output_layout(config: EvalConfig) -> EvalLayout:
    """Where the evaluation writes: ``eval.output_dir``, else ``eval/`` in the checkpoint's training run."""
    from dataengine.formats.layout import EvalLayout, TrainRunLayout

    if config.output_dir:
        return EvalLayout(Path(config.output_dir))
    run = TrainRunLayout.containing(config.checkpoint) if config.checkpoint else None
    if run is None:
        raise ValueError(
            "eval.output_dir is not set and eval.checkpoint is not in a training run folder: set it"
        )
    return run.evaluation


def run_eval(config: EvalConfig, judge: Any | None = None) -> dict[str, Any]:
    """The six dimensions (when ``eval.pairs`` is set) and the OpenVE-Bench-style protocol (when
    ``eval.bench.pairs_dir`` is), one judge model for both; returns the six-dimension summary with the
    benchmark's under ``bench``."""
    if not config.pairs and not config.bench.pairs_dir:
        raise ValueError("eval: set eval.pairs (the six dimensions) or eval.bench.pairs_dir (the benchmark)")
    summary: dict[str, Any] = {}
    if config.pairs:
        summary, judge = run_six_dimensions(config, judge)
    if config.bench.pairs_dir:
        summary["bench"] = run_bench(config, output_layout(config), judge)
    return summary


def run_six_dimensions(config: EvalConfig, judge: Any | None = None) -> tuple[dict[str, Any], Any]:
    """The paper's six-dimension evaluation (see the module docstring); returns (what ``summary.json``
    holds, the judge, for the benchmark to share its model)."""
    from dataengine.formats.manifest import rejections_frame, write_rejections, write_table, write_text
    from dataengine.models.judge import Judge

    out = output_layout(config)
    pairs = read_eval_set(config.pairs, config.max_per_subset)
    subsets = list(config.subsets) or sorted(pairs["subset"].unique())
    unknown = sorted(set(pairs["subset"]) - set(subsets))
    if unknown:
        raise ValueError(f"eval.subsets {subsets} does not list the set's subset(s) {unknown}")

    videos: dict[str, dict[str, str]] = {}
    rejections: list[dict] = []
    if config.checkpoint:
        videos[config.method_name], rejected = sample_ours(config, pairs, out.videos(config.method_name))
        rejections += rejected
    for name, folder in config.methods.items():
        videos[name], rejected = folder_videos(name, folder, pairs)
        rejections += rejected
    if config.score_targets:
        if pairs["target_path"].isna().any():
            raise ValueError(f"eval.score_targets is set but {config.pairs} has rows without target_path")
        videos[TARGET_METHOD] = dict(zip(pairs["pair_id"], pairs["target_path"], strict=True))
    if not videos:
        raise ValueError("eval: nothing to score: give eval.checkpoint, eval.methods or eval.score_targets")

    judge = judge or Judge(config.judge)
    rubric = judge.rubric
    scores = score_methods(judge, pairs, videos)
    for row in scores[scores["reason"].notna()].itertuples(index=False):
        rejections.append(_rejection(row.pair_id, "scorer_error", f"{row.method}: {row.detail}"))
    table = mean_table(scores, rubric.axes, subsets, list(videos))

    write_table(scores, out.scores)
    write_table(table, out.table)
    write_text(out.table_markdown, markdown_table(table, rubric.axes, rubric.codes, subsets))
    write_rejections(rejections_frame(rejections), out.rejections)
    summary = {
        "judge_model": judge.config.model,
        "rubric_version": rubric.version,
        "rubric_sha256": hashlib.sha256(rubric.text.encode()).hexdigest(),
        "axes": dict(zip(rubric.codes, rubric.axes, strict=True)),
        "methods": list(videos),
        "subsets": subsets,
        "num_pairs": int(len(pairs)),
        "num_scored": int(scores["reason"].isna().sum()),
        "num_rejected": len(rejections),
        "table": table.to_dict("records"),
        "config": asdict(config),
    }
    summary["output"] = str(out.folder)
    write_text(out.summary, json.dumps(summary, indent=2, default=str) + "\n")
    return summary, judge


# ---------------------------------------------------------------------------------------------------
# 6. The OpenVE-Bench-style protocol
# ---------------------------------------------------------------------------------------------------


def run_bench(config: EvalConfig, out: EvalLayout, judge: Any | None = None) -> dict[str, Any]:
    """The benchmark-style evaluation of ``config.bench`` into ``out`` (the protocol's pieces are
    :mod:`trainer.openve_bench`'s); returns ``bench_summary.json``'s content."""
    from dataengine.formats.manifest import rejections_frame, write_rejections, write_table, write_text

    bench = config.bench
    pairs = read_bench_set(bench.pairs_dir, bench.metadata, bench.max_per_category)
    categories = list(bench.categories) or sorted(pairs["category"].unique())
    unknown = sorted(set(pairs["category"]) - set(categories))
    if unknown:
        raise ValueError(
            f"eval.bench.categories {categories} does not list the set's category(ies) {unknown}"
        )
    videos: dict[str, dict[str, str]] = {}
    rejections: list[dict] = []
    if config.checkpoint:
        if pairs["reference_path"].isna().any():
            print(
                f"eval.bench: {config.method_name} is not sampled on the benchmark: its pairs need a reference_path "
                "(the edited first frame) for every row; score its edits through eval.bench.methods instead",
                flush=True,
            )
        else:
            folder = out.bench_videos(config.method_name)
            videos[config.method_name], rejected = sample_ours(config, pairs, folder)
            rejections += rejected
    for name, folder in bench.methods.items():
        videos[name], rejected = folder_videos(name, folder, pairs)
        rejections += rejected
    if not videos:
        raise ValueError(
            "eval.bench: nothing to score: give eval.bench.methods (or a checkpoint and references)"
        )

    judge = bench_judge(bench, config.judge, judge)
    scores = score_bench_methods(judge, pairs, videos)
    for row in scores[scores["reason"].notna()].itertuples(index=False):
        rejections.append(_rejection(row.pair_id, "scorer_error", f"{row.method}: {row.detail}"))
    table = bench_means(scores, categories, list(videos))
    mode = "expected value" if bench.temperature == 0 else f"sampled at temperature {bench.temperature:g}"
    write_table(scores, out.bench_scores)
    write_table(table, out.bench_table)
    write_text(out.bench_table_markdown, markdown_bench_table(table, categories, judge.config.model, mode))
    write_rejections(rejections_frame(rejections), out.bench_rejections)
    summary = {
        "judge_model": judge.config.model,
        "rubric_version": judge.rubric.version,
        "rubric_sha256": hashlib.sha256(judge.rubric.text.encode()).hexdigest(),
        "mode": mode,
        "axes": dict(zip(CODES, AXES, strict=True)),
        "cap_rule": f"{', '.join(CAPPED)} <= {AXES[0]}",
        "methods": list(videos),
        "categories": categories,
        "num_pairs": int(len(pairs)),
        "num_scored": int(scores["score"].notna().sum()),
        "num_rejected": len(rejections),
        "table": table.to_dict("records"),
        "reference_rows": [{**r, "judge": REFERENCE_JUDGE} for r in REFERENCE_ROWS],
        "pairs_dir": str(bench.pairs_dir),
    }
    write_text(out.bench_summary, json.dumps(summary, indent=2, default=str) + "\n")
    return summary


# ---------------------------------------------------------------------------------------------------
# Command
# ---------------------------------------------------------------------------------------------------


def eval_config_from_recipe(recipe: dict[str, Any]) -> EvalConfig:
    """The ``[eval]`` table of a recipe as an :class:`EvalConfig` (unknown keys are an error)."""
    from dataengine.formats.recipe import build_config

    if "eval" not in recipe:
        raise ValueError(f"recipe {recipe.get('recipe_path', '')} has no [eval] table")
    table = dict(recipe["eval"])
    table["judge"] = {
        "rubric_version": EVAL_RUBRIC,
        **(table.get("judge") or {}),
    }  # the eval's rubric by default
    return build_config(EvalConfig, table, "eval", recipe.get("recipe_path", ""))


def eval_command(
    recipe: Annotated[Path, typer.Argument(help="Recipe TOML with an [eval] table")],
    overrides: Annotated[
        list[str] | None, typer.Argument(help="section.key=value overrides, e.g. eval.checkpoint=runs/debug")
    ] = None,
) -> None:
    """Score every method's edits with a VLM judge on six dimensions (IA CC TS PR VA SC, 0-10); tables per subset."""
    from dataengine.formats.recipe import load_recipe

    try:
        config = eval_config_from_recipe(load_recipe(recipe, overrides))
        summary = run_eval(config)
    except (ValueError, FileNotFoundError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(code=2) from err
    out = output_layout(config)
    if "num_scored" in summary:
        typer.echo(out.table_markdown.read_text().rstrip())
        typer.echo(
            f"scored {summary['num_scored']} clips of {summary['num_pairs']} pairs x {len(summary['methods'])} methods "
            f"({summary['num_rejected']} rejected) with {summary['judge_model']} rubric {summary['rubric_version']}; "
            f"wrote {out.folder}/: scores.parquet, table.parquet, table.md, summary.json"
        )
    if "bench" in summary:
        bench = summary["bench"]
        typer.echo("\n" + out.bench_table_markdown.read_text().rstrip())
        typer.echo(
            f"benchmark: scored {bench['num_scored']} clips of {bench['num_pairs']} pairs x {len(bench['methods'])} "
            f"methods ({bench['num_rejected']} rejected), {bench['mode']}; wrote {out.folder}/: bench_scores.parquet, "
            "bench_table.parquet, bench_table.md, bench_summary.json"
        )
