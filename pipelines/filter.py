"""``dataengine filter``: score OpenVE-3M with the Qwen3-VL judge on Ray and keep the best pairs per category.

Stages (Ray Data, streaming)::

    read CSVs (driver) -> probe both clips (CPU tasks) -> judge (actor pool, model loaded per actor)
        -> score parts appended as they finish (manifests/<run>/scores/) -> [near-duplicates] -> select

Outputs under ``<output_root>/<run>/``: ``openve.parquet`` (the pair manifest), ``rejections.parquet``,
``scores/`` (one row per finished pair: score, sub-scores, scorer, or the probe/scorer rejection),
``summary.json`` (per category: read, scored, kept, rejected by reason, score histogram) and
``filter_config.json`` (the resolved config). Every CSV row ends in exactly one of manifest and rejections.

Resume: every finished pair is in a complete part of ``scores/``; a rerun of the same command skips those
and scores only the rest, then selects over all of them, so a killed-then-resumed run gives the outputs of
an uninterrupted one. CPU-sized run (tiny random models, generated data; see ``make demo``)::

    .venv/bin/python -m pipelines.cli filter manifests/demo.toml
    .venv/bin/python -m pipelines.cli filter manifests/openve.toml --ray-address auto   # on a GPU cluster
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd
import typer

from dataengine.formats.atomic import write_text
from dataengine.formats.recipe import RecipeError, StageResources, UserError
from dataengine.media.clips import ClipConfig
from dataengine.models.dedup import DEDUP_STAGE, DedupConfig
from dataengine.models.judge import AXES, JudgeConfig
from dataengine.steps.openve_reader import READ_STAGE
from dataengine.steps.selection import SELECT_STAGE, SelectionConfig
from pipelines.runtime import PartStore
from pipelines.stage import (
    RayOptions,
    Stage,
    StageRun,
    Worker,
    guard_resume,
    is_rejected,
    run_resumable,
    stage_counts,
    stream_stages,
)

FILTER_STAGES = (READ_STAGE, "probe", "score", DEDUP_STAGE, SELECT_STAGE)
"""The stages of the filter's rejections, in order: the read, the runner's probe and score, then the
near-duplicate removal and the selection."""

# Memory a probe task reserves (decord holds one decoded frame at a time). Declaring it also keeps Ray
# Data from fusing the probe tasks into the judge actors when both ask for the same CPUs.
PROBE_MEMORY_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class FilterResources(StageResources):
    """Ray resources of the stages (the ``[filter.resources]`` recipe table; ``placement`` stages: probe, score,
    dedup)."""

    TABLE: ClassVar[str] = "filter.resources"
    STAGES: ClassVar[tuple[str, ...]] = ("probe", "score", "dedup")

    probe_batch_size: int = 32
    """Pairs per probe task (and per input block of the pipeline)."""
    score_actors: int = 1
    """Judge actors (one model copy each); with ``score_gpus = 1`` this is the number of GPUs used."""
    score_gpus: float = 1.0
    """GPUs reserved per judge actor (0 on a CPU-only machine)."""
    score_cpus: float = 1.0
    """CPUs reserved per judge actor (frame decoding and preprocessing run in it)."""
    dedup_gpus: float = 0.0
    """GPUs of the near-duplicate embedding actor; 0 embeds on the CPU in the driver (only the pairs above
    the threshold are embedded: starting an actor would cost more than the work)."""


MOVED_KEYS = {
    "probe_batch_size": "resources.probe_batch_size",
    "num_judges": "resources.score_actors",
    "gpus_per_judge": "resources.score_gpus",
    "cpus_per_judge": "resources.score_cpus",
    "placement": "resources.placement",
    "wait_for_resources_s": "resources.wait_for_resources_s",
    "dedup.num_gpus": "resources.dedup_gpus",
}
"""The ``[filter]`` keys that moved to the ``[filter.resources]`` table (old key -> new key)."""


@dataclass
class FilterConfig:
    """The ``[filter]`` recipe table: inputs, probe, judge, near-duplicates, selection and Ray resources."""

    csv_dir: str = ""
    """Folder holding the per-category CSVs (searched recursively; category = file name)."""
    video_root: str = ""
    """Folder the CSVs' relative video paths resolve against (the extracted OpenVE-3M video root)."""
    categories: tuple[str, ...] = ()
    """Categories to use; empty = every CSV found. A listed category without a CSV is an error."""
    min_frames: int = 65
    """Pairs whose source or edit has fewer frames are rejected as ``too_short``."""
    check_trainable: bool = True
    """Reject at the probe, before the judge and the cap, every pair the shards step would reject under
    ``clip`` (``misaligned``, ``too_short``, ``too_small``): the pairs kept are the pairs encoded."""
    clip: ClipConfig | None = None
    """The clip settings of that check. Unset: the same recipe's ``[shards.clip]`` (the shards step's own
    table); with neither (a recipe without ``[shards]``) pairs are not checked for trainability."""
    output_root: str = "manifests"
    """Outputs go to ``<output_root>/<run>/`` (``run`` is the recipe's top-level name)."""
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    """The Qwen3-VL judge (``[filter.judge]``)."""
    dedup: DedupConfig = field(default_factory=DedupConfig)
    """Near-duplicate removal before the cap (``[filter.dedup]``)."""
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    """Threshold and per-category cap (``[filter.selection]``)."""
    resources: FilterResources = field(default_factory=FilterResources)
    """Ray resources per stage (``[filter.resources]``)."""


def moved_keys(table: dict[str, Any] | None) -> list[str]:
    """One line per key of a ``[filter]`` table that moved to ``[filter.resources]``, naming its new key."""
    table = table or {}
    dedup = table.get("dedup") if isinstance(table.get("dedup"), dict) else {}
    lines = []
    for old, new in MOVED_KEYS.items():
        where, key = (dedup, old.removeprefix("dedup.")) if old.startswith("dedup.") else (table, old)
        if key in where:
            lines.append(f"filter.{old} moved to [filter.resources]: write filter.{new}")
    return lines


def build_filter_config(recipe: dict[str, Any]) -> tuple[FilterConfig, str]:
    """The filter config and the run name from a loaded recipe; local paths made absolute."""
    from dataengine.formats.recipe import build_config

    moved = moved_keys(recipe.get("filter"))
    if moved:
        raise RecipeError(moved, recipe.get("recipe_path", ""))
    config = build_config(FilterConfig, recipe.get("filter"), "filter", recipe.get("recipe_path", ""))
    run = str(recipe.get("run") or "")
    if not run:
        raise UserError(f"recipe {recipe.get('recipe_path', '')} has no top-level `run` name")
    if not config.csv_dir or not config.video_root:
        raise UserError("[filter] needs csv_dir and video_root (the OpenVE-3M CSV folder and video root)")

    def local(path: str) -> str:  # a hub id stays as is; an existing local path becomes absolute
        return str(Path(path).resolve()) if path and Path(path).exists() else path

    config.csv_dir, config.video_root = local(config.csv_dir), local(config.video_root)
    config.judge.model = local(config.judge.model)
    config.dedup.pretrained = local(config.dedup.pretrained)
    config.dedup.model_config = local(config.dedup.model_config)
    config.categories = tuple(config.categories)
    shards = recipe.get("shards")
    if config.check_trainable and config.clip is None and isinstance(shards, dict):
        clip = shards.get("clip")
        config.clip = build_config(ClipConfig, clip, "shards.clip", recipe.get("recipe_path", ""))
    if not config.check_trainable:
        config.clip = None
    return config, run


# -- the stages -------------------------------------------------------------------------------------------


def probe_row(row: dict[str, Any], min_frames: int, clip: ClipConfig | None) -> dict[str, Any]:
    """Probe stage (CPU task): num_frames, fps, width, height of the pair, or its rejection (unreadable,
    too short, or untrainable under ``clip``)."""
    from dataengine.steps.openve_reader import probe_pair

    where = f"row {row['csv_row']} of {row['csv_file']}"
    return probe_pair(row["source_path"], row["target_path"], min_frames, where, clip=clip)


class JudgeWorker(Worker):
    """Judge stage (actor pool): the Qwen3-VL judge loads once per actor, then scores batches of pairs."""

    def __init__(self, config: JudgeConfig):
        self.config = config

    def setup(self) -> None:
        from dataengine.models.judge import Judge

        self.judge = Judge(self.config)

    def process_batch(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        scores = self.judge.score_pairs(pd.DataFrame(rows)).drop(columns="pair_id")
        return scores.astype(object).where(scores.notna(), None).to_dict("records")


class EmbedWorker(Worker):
    """Near-duplicate embedding stage (actor pool on GPUs): open_clip loads once per actor."""

    def __init__(self, config: DedupConfig):
        self.config = config

    def setup(self) -> None:
        from dataengine.models.dedup import ClipEmbedder

        self.embedder = ClipEmbedder(self.config)

    def process_batch(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        vectors = self.embedder.embed_pairs(pd.DataFrame(rows))
        return [{"embedding": [float(v) for v in vector]} for vector in vectors]


def scoring_stages(config: FilterConfig) -> list[Stage]:
    """probe (CPU tasks) -> score (an actor pool of judges)."""
    res = config.resources
    return [
        Stage(
            "probe",
            probe_row,
            kwargs={"min_frames": config.min_frames, "clip": config.clip},
            batch_size=res.probe_batch_size,
            memory_bytes=PROBE_MEMORY_BYTES,
            **res.stage("probe"),
        ),
        Stage(
            "score",
            JudgeWorker,
            kwargs={"config": config.judge},
            batch_size=config.judge.batch_size,
            failure_reason="scorer_error",
            **res.stage("score"),
        ),
    ]


def part_schema():
    """Columns of the score parts: the judge's results, the rejecting stage and the probe's fields."""
    import pyarrow as pa

    return pa.schema(
        [
            ("pair_id", pa.string()),
            ("score", pa.float64()),
            *[(axis, pa.float64()) for axis in AXES],
            ("answer_mass", pa.float64()),
            ("scorer_model", pa.string()),
            ("rubric_version", pa.string()),
            ("reason", pa.string()),
            ("detail", pa.string()),
            ("stage", pa.string()),
            ("num_frames", pa.int64()),
            ("fps", pa.float64()),
            ("width", pa.int64()),
            ("height", pa.int64()),
        ]
    )


def scoring_settings(config: FilterConfig) -> dict[str, Any]:
    """What a stored score depends on (the resume guard's settings): the probe and the judge, not the
    batching, devices or selection (a rerun with another threshold reuses the scores)."""
    from dataengine.formats.recipe import config_to_dict

    judge = {k: v for k, v in config_to_dict(config.judge).items() if k not in ("batch_size", "device")}
    clip = config_to_dict(config.clip) if config.clip is not None else None
    return {"video_root": config.video_root, "min_frames": config.min_frames, "clip": clip, "judge": judge}


def embed_candidates(config: FilterConfig, candidates: pd.DataFrame, ray: RayOptions) -> Any:
    """open_clip pair embeddings of ``candidates`` (rows aligned).

    With ``resources.dedup_gpus > 0`` they are computed in a Ray actor on a GPU; on CPU in this process: only
    the pairs above the threshold are embedded, and starting an actor would cost more than the work.
    """
    import numpy as np

    if config.resources.dedup_gpus <= 0:
        from dataengine.models.dedup import ClipEmbedder

        return ClipEmbedder(config.dedup).embed_pairs(candidates)
    stage = Stage(
        "dedup",
        EmbedWorker,
        kwargs={"config": config.dedup},
        actors=1,
        batch_size=config.dedup.batch_size,
        **config.resources.stage("dedup"),
    )
    items = candidates[["pair_id", "source_path", "target_path"]].to_dict("records")
    rows = {r["pair_id"]: r for r in stream_stages(items, [stage], **ray.kwargs())}
    failed = [r for r in rows.values() if is_rejected(r)]
    if failed:
        raise RuntimeError(f"near-duplicate embedding failed for {len(failed)} pairs: {failed[0]['detail']}")
    return np.stack([np.asarray(rows[p]["embedding"], dtype=np.float32) for p in candidates["pair_id"]])


# -- the job -------------------------------------------------------------------------------------------


def run_filter(config: FilterConfig, run: str, ray_address: str | None = None) -> dict:
    """The whole job; returns the summary (also written to ``summary.json``)."""
    from dataengine.steps.openve_reader import read_openve

    started = time.monotonic()
    layout = start_run(config, run)
    ray = RayOptions.of(config.resources, ray_address)

    # 1. read
    read = read_openve(config.csv_dir, config.video_root, config.categories or None)
    num_rows, num_csvs = sum(read.rows_per_category.values()), len(read.rows_per_category)
    print(f"read {num_rows} rows from {num_csvs} CSVs in {config.csv_dir}")
    for note in read.notes:
        print(f"read: {note}")

    # 2. probe + score what is not done yet (scores are keyed by pair_id, a hash of the pair's content)
    guard_resume(layout.scores_fingerprint, scoring_settings(config), start_over=str(layout.run_dir))
    store = PartStore(layout.scores, schema=part_schema())
    scoring = run_resumable(
        read.pairs.to_dict("records"),
        scoring_stages(config),
        store,
        description="probe+judge",
        unit="pairs",
        resumed=lambda done, todo: (
            f"resuming: {done} pairs already scored in {store.folder}, {todo} to go" if done else None
        ),
        ray=ray,
    )
    probed = read.pairs.merge(scoring.results, on="pair_id", how="inner")  # each read pair: score or reason

    # 3. near-duplicates among the pairs above the threshold, then selection
    selection = select_pairs(config, probed[probed["reason"].isna()], ray)

    # 4. outputs
    summary = write_outputs(layout, config, run, read, probed, scoring, selection)
    print(
        f"wrote {layout.openve} ({summary['total']['kept']} pairs), rejections.parquet "
        f"({sum(summary['total']['rejected'].values())}), summary.json in {time.monotonic() - started:.1f} s"
    )
    return summary


def start_run(config: FilterConfig, run: str) -> Any:
    """The run's folders (a ``RunLayout``), with the resolved config written into it."""
    from dataengine.formats.layout import RunLayout
    from dataengine.formats.recipe import config_to_dict

    layout = RunLayout(run, manifests_root=Path(config.output_root))
    layout.run_dir.mkdir(parents=True, exist_ok=True)
    layout.filter_config.write_text(json.dumps({"run": run, "filter": config_to_dict(config)}, indent=2))
    return layout


def select_pairs(config: FilterConfig, scored: pd.DataFrame, ray: RayOptions) -> Any:
    """Near-duplicate removal among the pairs at or above the threshold (``[filter.dedup]``), then the
    threshold and the per-category cap: the ``SelectionResult`` (kept pairs ranked, the others rejected)."""
    from dataengine.models.dedup import find_near_duplicates
    from dataengine.steps.selection import select

    duplicates = None
    if config.dedup.enabled:
        candidates = scored[scored["score"] >= config.selection.threshold].reset_index(drop=True)
        if len(candidates):
            embeddings = embed_candidates(config, candidates, ray)
            duplicates = find_near_duplicates(
                candidates, embeddings, config.dedup.cosine_threshold, config.selection.max_per_category
            )
            print(f"near-duplicates: {len(duplicates)} of {len(candidates)} candidates")
    selection = select(scored[["pair_id", "category", "score"]], config.selection, duplicates)
    if duplicates is not None:
        selection.rejections.loc[selection.rejections["reason"] == "duplicate", "stage"] = "dedup"
    return selection


def filter_stage_counts(read: Any, scoring: StageRun, selection: Any) -> dict[str, dict[str, Any]]:
    """Per stage, in order, the CSV rows in, kept and rejected by reason: the read, the runner's probe and
    score, then the near-duplicate removal and the selection (the driver's steps, counted the same way)."""
    read_rows = pd.concat([read.rejections, read.pairs[["pair_id"]]], ignore_index=True)
    selected = pd.concat([selection.rejections, selection.kept[["pair_id"]]], ignore_index=True)
    return {
        **stage_counts(read_rows, FILTER_STAGES[:1]),
        **scoring.counts,
        **stage_counts(selected, FILTER_STAGES[3:]),
    }


def write_outputs(
    layout: Any,
    config: FilterConfig,
    run: str,
    read: Any,
    probed: pd.DataFrame,
    scoring: StageRun,
    selection: Any,
) -> dict:
    """The pair manifest, the rejections (read, probe/score, selection) and the summary; returns the summary."""
    from dataengine.formats.manifest import PAIR_COLUMNS, write_pairs, write_rejections
    from dataengine.formats.recipe import config_to_dict
    from dataengine.steps.openve_reader import ORIGIN
    from dataengine.steps.selection import render_summary, summarize

    scored, failed = probed[probed["reason"].isna()], probed[probed["reason"].notna()]
    manifest = selection.kept[["pair_id", "rank"]].merge(scored, on="pair_id", how="left")
    manifest = manifest.sort_values(["category", "rank"], kind="stable").assign(
        origin=ORIGIN, reference_path=None
    )
    manifest = manifest.astype({"num_frames": "int32", "width": "int32", "height": "int32"})[PAIR_COLUMNS]
    rejections = pd.concat(
        [
            read.rejections,
            failed[["pair_id", "stage", "reason", "detail", "category"]],
            selection.rejections,
        ],
        ignore_index=True,
    ).sort_values("pair_id", kind="stable")
    num_rows = sum(read.rows_per_category.values())
    assert len(manifest) + len(rejections) == num_rows, "a row was lost or counted twice"
    assert not set(manifest["pair_id"]) & set(rejections["pair_id"])

    metadata = {
        "run": run,
        "config": config_to_dict(config),
        "models": {
            "judge": config.judge.model,
            "dedup": config.dedup.model if config.dedup.enabled else None,
        },
        "rubric_version": config.judge.rubric_version,
    }
    write_pairs(manifest.reset_index(drop=True), layout.openve, metadata)
    write_rejections(rejections.reset_index(drop=True), layout.rejections, metadata)
    summary = summarize(
        read.rows_per_category, scored[["category", "score"]], manifest, rejections, config.selection
    )
    summary.update({"run": run, "judge": config.judge.model, "rubric_version": config.judge.rubric_version})
    summary["stages"] = filter_stage_counts(read, scoring, selection)
    summary["clips"] = clip_statistics(probed, manifest, config.clip)
    summary["read_notes"] = read.notes
    write_text(layout.summary, json.dumps(summary, indent=2))
    render_summary(summary, title=f"dataengine filter [{run}]")
    return summary


def clip_statistics(probed: pd.DataFrame, manifest: pd.DataFrame, clip: ClipConfig | None) -> dict[str, Any]:
    """What the probe found in the videos (their frame rates and frame counts, every pair whose videos it
    read) and, under the trainability check's clip settings, how many frames each kept pair's training clip
    will have (its frame-count bucket at the shards step)."""
    from dataengine.media.clips import plan_clip
    from dataengine.media.video import VideoInfo

    read = probed[probed["num_frames"].notna()]
    frames = read["num_frames"].astype(int)
    out: dict[str, Any] = {
        "fps": {
            f"{k:g}": int(v) for k, v in sorted(read["fps"].astype(float).round(2).value_counts().items())
        },
        "frames": {"min": int(frames.min()), "max": int(frames.max()), "median": float(frames.median())}
        if len(frames)
        else {},
        "kept_clip_frames": None,
    }
    if clip is not None:
        lengths = [
            plan_clip(
                VideoInfo(int(r.num_frames), float(r.fps), int(r.width), int(r.height)), None, clip
            ).num_frames
            for r in manifest.itertuples()
        ]
        out["kept_clip_frames"] = {
            str(k): int(v) for k, v in sorted(pd.Series(lengths, dtype=int).value_counts().items())
        }
    return out


def filter_command(
    recipe: Path = typer.Argument(..., help="Recipe TOML with a \\[filter] table, e.g. manifests/demo.toml."),
    overrides: list[str] = typer.Argument(
        None,
        help="section.key=value overrides, e.g. filter.selection.threshold=9.0 filter.resources.score_actors=8.",
    ),
    ray_address: str | None = typer.Option(
        None, "--ray-address", help="Join this Ray cluster (or set RAY_ADDRESS); default: start a local one."
    ),
) -> None:
    """Score OpenVE-3M pairs with the Qwen3-VL judge and keep the best per category.

    Reads the per-category CSVs, probes every clip (CPU tasks), scores usable pairs with an actor pool of
    judges (GPUs per actor from the recipe), optionally drops near-duplicates, keeps score >= threshold
    and at most N per category. Writes <output_root>/<run>/openve.parquet, rejections.parquet, scores/,
    summary.json. Killed? Run the same command again: finished pairs are not scored twice.
    """
    from dataengine.formats.recipe import load_recipe

    config, run = build_filter_config(load_recipe(recipe, overrides or []))
    run_filter(config, run, ray_address)
