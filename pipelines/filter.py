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
from typing import Any

import pandas as pd
import typer

from dataengine.dedup import DedupConfig
from dataengine.judge import AXES, RESULT_COLUMNS, JudgeConfig
from dataengine.selection import SelectionConfig

PROBE_FIELDS = ["num_frames", "fps", "width", "height"]
# Memory a probe task reserves (decord holds one decoded frame at a time). Declaring it also keeps Ray
# Data from fusing the probe tasks into the judge actors when both ask for the same CPUs.
PROBE_MEMORY_BYTES = 256 * 1024 * 1024
PART_COLUMNS = [*RESULT_COLUMNS, "stage", *PROBE_FIELDS]


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
    output_root: str = "manifests"
    """Outputs go to ``<output_root>/<run>/`` (``run`` is the recipe's top-level name)."""
    probe_batch_size: int = 32
    """Pairs per probe task (and per input block of the pipeline)."""
    num_judges: int = 1
    """Judge actors (one model copy each); with ``gpus_per_judge = 1`` this is the number of GPUs used."""
    gpus_per_judge: float = 1.0
    """GPUs reserved per judge actor (0 on a CPU-only machine)."""
    cpus_per_judge: float = 1.0
    """CPUs reserved per judge actor (frame decoding and preprocessing run in it)."""
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    """The Qwen3-VL judge (``[filter.judge]``)."""
    dedup: DedupConfig = field(default_factory=DedupConfig)
    """Near-duplicate removal before the cap (``[filter.dedup]``)."""
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    """Threshold and per-category cap (``[filter.selection]``)."""


def build_filter_config(recipe: dict[str, Any]) -> tuple[FilterConfig, str]:
    """The filter config and the run name from a loaded recipe; local paths made absolute."""
    from dataengine.recipe import build_config

    config = build_config(FilterConfig, recipe.get("filter"), "filter")
    run = str(recipe.get("run") or "")
    if not run:
        raise ValueError(f"recipe {recipe.get('recipe_path', '')} has no top-level `run` name")
    if not config.csv_dir or not config.video_root:
        raise ValueError("[filter] needs csv_dir and video_root (the OpenVE-3M CSV folder and video root)")

    def local(path: str) -> str:  # a hub id stays as is; an existing local path becomes absolute
        return str(Path(path).resolve()) if path and Path(path).exists() else path

    config.csv_dir, config.video_root = local(config.csv_dir), local(config.video_root)
    config.judge.model = local(config.judge.model)
    config.dedup.pretrained = local(config.dedup.pretrained)
    config.dedup.model_config = local(config.dedup.model_config)
    config.categories = tuple(config.categories)
    return config, run


# -- Ray stages: plain callables over pandas batches ----------------------------------------------------


def probe_batch(batch: pd.DataFrame, min_frames: int) -> pd.DataFrame:
    """Probe stage (CPU task): adds num_frames, fps, width, height, reason, detail."""
    from dataengine.openve import probe_pairs

    return probe_pairs(batch, min_frames)


def part_rows(probed: pd.DataFrame, scores: pd.DataFrame | None, scorer: JudgeConfig) -> pd.DataFrame:
    """The score-part rows of a probed batch: probe rejections and judge results, with probe fields."""
    rejected = probed[probed["reason"].notna()]
    rows = [
        pd.DataFrame(
            {
                "pair_id": rejected["pair_id"],
                "reason": rejected["reason"],
                "detail": rejected["detail"],
                "stage": "probe",
                "scorer_model": scorer.model,
                "rubric_version": scorer.rubric_version,
            }
        )
    ]
    if scores is not None and len(scores):
        rows.append(scores.assign(stage=scores["reason"].map(lambda r: None if pd.isna(r) else "score")))
    out = pd.concat([r for r in rows if len(r)], ignore_index=True) if any(len(r) for r in rows) else None
    if out is None:
        return pd.DataFrame(columns=PART_COLUMNS)
    out = out.merge(probed[["pair_id", *PROBE_FIELDS]], on="pair_id", how="left")
    for column in PART_COLUMNS:
        if column not in out.columns:
            out[column] = None
    return out[PART_COLUMNS]


class JudgeStage:
    """Judge stage (Ray actor): loads the model once, in the actor, then scores probed batches."""

    def __init__(self, config: JudgeConfig):
        from dataengine.judge import Judge

        self.config = config
        self.judge = Judge(config)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        usable = batch[batch["reason"].isna()]
        scores = self.judge.score_pairs(usable) if len(usable) else None
        return part_rows(batch, scores, self.config)


class EmbedStage:
    """Near-duplicate embedding stage (Ray actor): open_clip loads once, in the actor."""

    def __init__(self, config: DedupConfig):
        from dataengine.dedup import ClipEmbedder

        self.embedder = ClipEmbedder(config)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        vectors = self.embedder.embed_pairs(batch)
        return pd.DataFrame({"pair_id": batch["pair_id"].to_numpy(), "embedding": list(vectors)})


# -- the job -------------------------------------------------------------------------------------------


def _part_table(frame: pd.DataFrame):
    import pyarrow as pa

    schema = pa.schema(
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
    frame = frame[PART_COLUMNS].astype(object).where(frame[PART_COLUMNS].notna(), None)
    return pa.Table.from_pandas(frame, schema=schema, preserve_index=False)


def score_pending(config: FilterConfig, pending: pd.DataFrame, store, progress) -> None:
    """Probe and score ``pending`` pairs on Ray, appending each finished block to ``store``."""
    import ray

    blocks = [
        pending.iloc[i : i + config.probe_batch_size] for i in range(0, len(pending), config.probe_batch_size)
    ]
    dataset = ray.data.from_pandas(blocks)
    dataset = dataset.map_batches(
        probe_batch,
        fn_kwargs={"min_frames": config.min_frames},
        batch_size=config.probe_batch_size,
        batch_format="pandas",
        num_cpus=1,
        memory=PROBE_MEMORY_BYTES,
    )
    dataset = dataset.map_batches(
        JudgeStage,
        fn_constructor_kwargs={"config": config.judge},
        compute=ray.data.ActorPoolStrategy(size=config.num_judges),
        batch_size=config.judge.batch_size,
        batch_format="pandas",
        num_gpus=config.gpus_per_judge,
        num_cpus=config.cpus_per_judge,
    )
    for batch in dataset.iter_batches(batch_format="pandas", batch_size=None):
        store.append(_part_table(batch))
        progress.update(len(batch))


def embed_candidates(config: FilterConfig, candidates: pd.DataFrame) -> Any:
    """open_clip pair embeddings of ``candidates`` (rows aligned).

    With ``dedup.num_gpus > 0`` they are computed in a Ray actor on a GPU; on CPU in this process: only
    the pairs above the threshold are embedded, and starting an actor would cost more than the work.
    """
    import numpy as np
    import ray

    if config.dedup.num_gpus <= 0:
        from dataengine.dedup import ClipEmbedder

        return ClipEmbedder(config.dedup).embed_pairs(candidates)

    dataset = ray.data.from_pandas(candidates[["pair_id", "source_path", "target_path"]])
    dataset = dataset.map_batches(
        EmbedStage,
        fn_constructor_kwargs={"config": config.dedup},
        compute=ray.data.ActorPoolStrategy(size=1),
        batch_size=config.dedup.batch_size,
        batch_format="pandas",
        num_gpus=config.dedup.num_gpus,
    )
    embedded = dataset.to_pandas().set_index("pair_id").loc[candidates["pair_id"]]
    return np.stack([np.asarray(v, dtype=np.float32) for v in embedded["embedding"]])


def _check_scorer(results: pd.DataFrame, config: FilterConfig, folder: Path) -> None:
    scorers = results.loc[results["stage"].ne("probe"), ["scorer_model", "rubric_version"]].drop_duplicates()
    expected = (config.judge.model, config.judge.rubric_version)
    other = [tuple(r) for r in scorers.itertuples(index=False) if tuple(r) != expected]
    if other:
        raise ValueError(
            f"{folder} holds scores from {other}, but the recipe asks for {expected}: "
            "use a new run name, or delete that folder to rescore"
        )


def run_filter(config: FilterConfig, run: str, ray_address: str | None = None) -> dict:
    """The whole job; returns the summary (also written to ``summary.json``)."""
    from dataengine.dedup import find_near_duplicates
    from dataengine.manifest import PAIR_COLUMNS, write_pairs, write_rejections
    from dataengine.openve import ORIGIN, read_openve
    from dataengine.recipe import config_to_dict
    from dataengine.selection import render_summary, select, summarize
    from pipelines.runtime import PartStore, Progress, init_ray

    started = time.monotonic()
    out_dir = Path(config.output_root) / run
    out_dir.mkdir(parents=True, exist_ok=True)
    resolved = config_to_dict(config)
    (out_dir / "filter_config.json").write_text(json.dumps({"run": run, "filter": resolved}, indent=2))

    # 1. read
    read = read_openve(config.csv_dir, config.video_root, config.categories or None)
    pairs = read.pairs
    print(
        f"read {len(pairs) + len(read.rejections)} rows from {len(read.rows_per_category)} CSVs in {config.csv_dir}"
    )

    # 2. probe + score what is not done yet
    store = PartStore(out_dir / "scores")
    done = store.completed_ids()
    pending = pairs[~pairs["pair_id"].isin(done)]
    if done:
        print(f"resuming: {len(done)} pairs already scored in {store.folder}, {len(pending)} to go")
    if len(pending):
        init_ray(ray_address)
        with Progress(
            len(pairs), unit="pairs", description="probe+judge", initial=len(pairs) - len(pending)
        ) as bar:
            score_pending(config, pending, store, bar)
    results = store.read_all()
    _check_scorer(results, config, store.folder)
    missing = set(pairs["pair_id"]) - set(results["pair_id"])
    if missing:
        raise RuntimeError(
            f"{len(missing)} pairs have no result in {store.folder} after scoring (e.g. {min(missing)})"
        )
    results = results[results["pair_id"].isin(set(pairs["pair_id"]))]
    info = pairs.merge(results, on="pair_id", how="inner")
    failed = info[info["reason"].notna()]
    scored = info[info["reason"].isna()]

    # 3. near-duplicates among the pairs above the threshold, then selection
    duplicates = None
    if config.dedup.enabled:
        candidates = scored[scored["score"] >= config.selection.threshold].reset_index(drop=True)
        if len(candidates):
            if config.dedup.num_gpus > 0:
                init_ray(ray_address)
            embeddings = embed_candidates(config, candidates)
            duplicates = find_near_duplicates(
                candidates, embeddings, config.dedup.cosine_threshold, config.selection.max_per_category
            )
            print(f"near-duplicates: {len(duplicates)} of {len(candidates)} candidates")
    selection = select(scored[["pair_id", "category", "score"]], config.selection, duplicates)
    if duplicates is not None:
        selection.rejections.loc[selection.rejections["reason"] == "duplicate", "stage"] = "dedup"

    # 4. outputs
    manifest = selection.kept[["pair_id", "rank"]].merge(scored, on="pair_id", how="left")
    manifest = manifest.sort_values(["category", "rank"], kind="stable").assign(
        origin=ORIGIN, reference_path=None
    )
    manifest["num_frames"] = manifest["num_frames"].astype("int32")
    manifest["width"] = manifest["width"].astype("int32")
    manifest["height"] = manifest["height"].astype("int32")
    manifest = manifest[PAIR_COLUMNS]
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
        "config": resolved,
        "models": {
            "judge": config.judge.model,
            "dedup": config.dedup.model if config.dedup.enabled else None,
        },
        "rubric_version": config.judge.rubric_version,
    }
    write_pairs(manifest.reset_index(drop=True), out_dir / "openve.parquet", metadata)
    write_rejections(rejections.reset_index(drop=True), out_dir / "rejections.parquet", metadata)
    summary = summarize(
        read.rows_per_category,
        scored[["category", "score"]],
        manifest,
        rejections,
        config.selection,
    )
    summary.update({"run": run, "judge": config.judge.model, "rubric_version": config.judge.rubric_version})
    tmp = out_dir / ".summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    tmp.replace(out_dir / "summary.json")
    render_summary(summary, title=f"dataengine filter [{run}]")
    print(
        f"wrote {out_dir}/openve.parquet ({len(manifest)} pairs), rejections.parquet ({len(rejections)}), "
        f"summary.json in {time.monotonic() - started:.1f} s"
    )
    return summary


def filter_command(
    recipe: Path = typer.Argument(..., help="Recipe TOML with a \\[filter] table, e.g. manifests/demo.toml."),
    overrides: list[str] = typer.Argument(
        None, help="section.key=value overrides, e.g. filter.selection.threshold=9.0 filter.num_judges=8."
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
    from dataengine.recipe import load_recipe

    config, run = build_filter_config(load_recipe(recipe, overrides or []))
    run_filter(config, run, ray_address)
