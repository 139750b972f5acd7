"""`dataengine synth-portraits`: portrait + background clips -> MiVE's portrait edit pairs (removal, addition, background).

    dataengine synth-portraits manifests/demo.toml                      # generated clips, CPU, a minute
    dataengine synth-portraits manifests/openve.toml --ray-address auto  # the paper's 6K pairs on a GPU cluster

Stages (Ray Data; paths travel between stages, pixels are decoded where they are needed):

1. segment: an actor pool (``resources.segment_actors`` actors with ``resources.segment_gpus`` GPUs each,
   the model loaded once per actor, in the actor) segments every portrait clip and gates its masks;
   backgrounds are probed by CPU tasks.
2. plan (driver): pairs drawn with the seed from the accepted clips (``dataengine.portraits.plan_pairs``).
3. composite: CPU tasks composite, encode (H.264) and write each pair.

Every finished clip and pair is appended to a part under ``manifests/<run>/.portraits/`` as results
arrive: a rerun after a kill skips them and ends with the same outputs as an uninterrupted run.
Outputs: ``manifests/<run>/portraits.parquet`` (pair manifest), ``portrait_rejections.parquet``,
``portrait_plan.parquet`` (portrait, background and masks of each pair), ``portraits_summary.json``,
and the pair files under the recipe's ``output_dir``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

STORE_FLUSH_ROWS = 16
STORE_FLUSH_SECONDS = 5.0


class SegmentStage:
    """Ray Data callable class: loads the segmenter once per actor, then segments one portrait per row."""

    def __init__(self, config: Any, masks_dir: str):
        from dataengine.segment import MaskFileReader, build_segmenter

        self.config = config
        self.masks_dir = masks_dir
        backend = config.segmenter.backend
        self.segmenter = MaskFileReader() if backend == "mask_files" else build_segmenter(config.segmenter)

    def __call__(self, batch: Any) -> Any:
        import pandas as pd

        from dataengine.portraits import segment_portrait

        rows = [
            segment_portrait(path, rel, self.config, self.masks_dir, self.segmenter)
            for path, rel in zip(batch["path"], batch["rel"], strict=True)
        ]
        return pd.DataFrame(rows)


def _check_background(path: str, rel: str) -> dict[str, Any]:
    from dataengine.portraits import check_background

    return check_background(path, rel)


def composite_batch(batch: Any, config: Any) -> Any:
    import pandas as pd

    from dataengine.portraits import synthesize_pair

    rows = [synthesize_pair(row, row["masks_path"], config) for row in batch.to_dict("records")]
    return pd.DataFrame(rows)


class _Recorder:
    """Appends result rows to a PartStore in small parts, as they arrive."""

    def __init__(self, store: Any, progress: Any, num_items: int):
        self.store, self.progress = store, progress
        # about ten parts per stage on small runs, parts of STORE_FLUSH_ROWS rows on big ones
        self.flush_rows = max(1, min(STORE_FLUSH_ROWS, num_items // 10))
        self.buffer: list[dict[str, Any]] = []
        self.last = time.monotonic()

    def add(self, row: dict[str, Any]) -> None:
        self.buffer.append(row)
        self.progress.update(1)
        if len(self.buffer) >= self.flush_rows or time.monotonic() - self.last > STORE_FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        import pandas as pd

        if self.buffer:
            self.store.append(pd.DataFrame(self.buffer))
        self.buffer, self.last = [], time.monotonic()


def _collect_tasks(futures: list[Any], store: Any, description: str, unit: str) -> None:
    """Record the results of Ray task ``futures`` into ``store`` as they finish."""
    import ray

    from pipelines.runtime import Progress

    done = len(store.completed_ids())
    progress = Progress(done + len(futures), unit=unit, description=description, initial=done)
    recorder = _Recorder(store, progress, len(futures))
    try:
        while futures:
            ready, futures = ray.wait(futures, num_returns=1)
            recorder.add(ray.get(ready[0]))
    finally:
        recorder.flush()
    progress.close()


def _run_stage(items: list[dict[str, Any]], store: Any, description: str, unit: str, build) -> None:
    """Stream ``build(dataset)``'s rows into ``store`` with live progress (items already done are not in ``items``)."""
    import ray

    from pipelines.runtime import Progress

    done = len(store.completed_ids())
    progress = Progress(done + len(items), unit=unit, description=description, initial=done)
    recorder = _Recorder(store, progress, len(items))
    if items:
        ds = build(ray.data.from_items(items, override_num_blocks=max(1, len(items))))
        try:
            for batch in ds.iter_batches(batch_size=1, batch_format="pandas"):
                for row in batch.to_dict("records"):
                    recorder.add(row)
        finally:
            recorder.flush()
    progress.close()


def run_portraits(
    config: Any, run: str, ray_address: str | None = None, manifests_root: str = "manifests"
) -> dict:
    """Segment, plan, composite and write everything of one run; returns the summary (also written as JSON)."""
    import pandas as pd
    import ray

    from dataengine.manifest import PAIR_COLUMNS, rejections_frame, write_pairs, write_rejections
    from dataengine.portraits import (
        CATEGORIES,
        PLAN_COLUMNS,
        clip_id,
        fingerprint,
        list_videos,
        plan_pairs,
    )
    from dataengine.recipe import config_to_dict
    from pipelines.runtime import PartStore, init_ray

    run_dir = Path(manifests_root) / run
    state = run_dir / ".portraits"
    pairs_root = config.pairs_root(run)
    people_dir, backgrounds_dir = Path(config.people_dir), Path(config.backgrounds_dir)
    portraits = list_videos(people_dir, config.extensions)
    backgrounds = list_videos(backgrounds_dir, config.extensions)
    resolved = config_to_dict(config)
    stamp = fingerprint(resolved, portraits, backgrounds)
    stamp_file = state / "fingerprint.json"
    if stamp_file.exists() and json.loads(stamp_file.read_text())["fingerprint"] != stamp:
        raise ValueError(
            f"{run_dir} holds a portraits run with another recipe or other input clips ({stamp_file}): "
            "use another run name, or delete that folder and the pairs under "
            f"{pairs_root} to start over"
        )
    state.mkdir(parents=True, exist_ok=True)
    stamp_file.write_text(json.dumps({"fingerprint": stamp}) + "\n")
    print(
        f"synth-portraits: {len(portraits)} portrait clips in {people_dir}, {len(backgrounds)} background clips in "
        f"{backgrounds_dir}; {config.pairs_per_type} pairs per type -> {pairs_root}"
    )

    res = config.resources
    init_ray(ray_address, num_cpus=res.num_cpus or None)
    ray.data.DataContext.get_current().execution_options.preserve_order = False

    # 1. probe the backgrounds (tasks, submitted first so they overlap the segmentation) and segment the
    #    portraits (actor pool)
    background_store = PartStore(state / "backgrounds", id_column="clip_id")
    done = background_store.completed_ids()
    probe_task = ray.remote(num_cpus=1)(_check_background)
    background_futures = [
        probe_task.remote(str(backgrounds_dir / rel), rel)
        for rel in backgrounds
        if clip_id("background", rel) not in done
    ]
    clip_store = PartStore(state / "portraits", id_column="clip_id")
    done = clip_store.completed_ids()
    todo = [
        {"path": str(people_dir / rel), "rel": rel}
        for rel in portraits
        if clip_id("portrait", rel) not in done
    ]
    masks_dir = str((pairs_root / "masks").resolve())
    _run_stage(
        todo,
        clip_store,
        "segment",
        "clips",
        lambda ds: ds.map_batches(
            SegmentStage,
            batch_size=1,
            batch_format="pandas",
            compute=ray.data.ActorPoolStrategy(size=res.segment_actors),
            num_cpus=res.segment_cpus,
            num_gpus=res.segment_gpus,
            fn_constructor_kwargs={"config": config, "masks_dir": masks_dir},
        ),
    )
    _collect_tasks(background_futures, background_store, "backgrounds", "clips")
    clip_columns = ["clip_id", "portrait", "reason", "stage", "detail", "masks_path", "mean_area", "min_iou"]
    clips = _with_columns(clip_store.read_all(), clip_columns)
    clips = clips[clips["portrait"].isin(portraits)]
    usable = _with_columns(
        background_store.read_all(), ["clip_id", "background", "reason", "stage", "detail"]
    )
    usable = usable[usable["background"].isin(backgrounds)]
    accepted = clips[clips["reason"].isna()]
    good_backgrounds = usable[usable["reason"].isna()]

    # 2. the plan
    plan, planned = plan_pairs(list(accepted["portrait"]), list(good_backgrounds["background"]), config, run)
    for edit_type, count in planned.items():
        if count < config.pairs_per_type:
            print(
                f"synth-portraits: WARNING only {count} distinct (portrait, background) combinations for "
                f"{edit_type}; {config.pairs_per_type} requested: add clips to reach it"
            )
    masks_of = dict(zip(accepted["portrait"], accepted["masks_path"], strict=True))
    plan_frame = pd.DataFrame(plan, columns=PLAN_COLUMNS)
    plan_frame["masks_path"] = [masks_of[p] for p in plan_frame["portrait"]]

    # 3. composite + encode (tasks); a recorded pair whose files went missing is redone
    pair_store = PartStore(state / "pairs", id_column="pair_id")
    recorded = _with_columns(pair_store.read_all(), [*PAIR_COLUMNS, "reason", "stage", "detail"])
    done = set(_still_valid(recorded)["pair_id"])
    todo = [row for row in plan_frame.to_dict("records") if row["pair_id"] not in done]
    print(
        f"synth-portraits: {len(plan_frame)} pairs planned, {len(done & set(plan_frame['pair_id']))} already done"
    )
    _run_stage(
        todo,
        pair_store,
        "pairs",
        "pairs",
        lambda ds: ds.map_batches(
            composite_batch,
            batch_size=1,
            batch_format="pandas",
            num_cpus=res.composite_cpus,
            fn_kwargs={"config": config},
        ),
    )

    # 4. outputs
    results = _with_columns(pair_store.read_all(), [*PAIR_COLUMNS, "reason", "stage", "detail"])
    results = results[results["pair_id"].isin(set(plan_frame["pair_id"]))]
    results = _still_valid(results)
    missing = set(plan_frame["pair_id"]) - set(results["pair_id"])
    if missing:
        raise RuntimeError(f"synth-portraits: {len(missing)} planned pairs have no result; rerun to resume")
    is_ok = results["reason"].isna()
    pairs = results[is_ok].sort_values(["category", "pair_id"], kind="stable").reset_index(drop=True)
    pairs["score"] = None
    rejected_rows = [
        {"pair_id": r["clip_id"], "stage": r["stage"], "reason": r["reason"], "detail": r["detail"]}
        for frame in (clips, usable)
        for r in frame[frame["reason"].notna()].to_dict("records")
    ]
    rejected_rows += [
        {"pair_id": r["pair_id"], "stage": r["stage"], "reason": r["reason"], "detail": r["detail"]}
        for r in results[~is_ok].to_dict("records")
    ]
    rejections = rejections_frame(sorted(rejected_rows, key=lambda r: (r["stage"], r["pair_id"])))
    models = {
        "segmenter": config.segmenter.model if config.segmenter.backend == "transformers" else "mask_files"
    }
    metadata = {"run": run, "config": resolved, "models": models, "step": "synth-portraits"}
    write_pairs(pairs[PAIR_COLUMNS], run_dir / "portraits.parquet", metadata=metadata)
    write_rejections(rejections, run_dir / "portrait_rejections.parquet", metadata=metadata)
    plan_out = plan_frame.sort_values(["category", "pair_id"], kind="stable").reset_index(drop=True)
    plan_out.to_parquet(run_dir / "portrait_plan.parquet", index=False)

    summary = {
        "run": run,
        "portraits": {
            "seen": len(portraits),
            "accepted": len(accepted),
            "rejected": {k: int(v) for k, v in clips["reason"].value_counts().sort_index().items()},
        },
        "backgrounds": {
            "seen": len(backgrounds),
            "usable": len(good_backgrounds),
            "rejected": {k: int(v) for k, v in usable["reason"].value_counts().sort_index().items()},
        },
        "types": {},
        "outputs": {
            "pairs": str(run_dir / "portraits.parquet"),
            "rejections": str(run_dir / "portrait_rejections.parquet"),
            "plan": str(run_dir / "portrait_plan.parquet"),
            "pair_files": str(pairs_root),
        },
    }
    for edit_type, category in CATEGORIES.items():
        of_type = results[results["category"] == category]
        summary["types"][edit_type] = {
            "category": category,
            "requested": config.pairs_per_type,
            "planned": planned[edit_type],
            "written": int(of_type["reason"].isna().sum()),
            "rejected": int(of_type["reason"].notna().sum()),
        }
    (run_dir / "portraits_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    _print_summary(summary, len(rejections))
    return summary


def _with_columns(frame: Any, columns: list[str]) -> Any:
    """A PartStore read (only the id column when nothing was recorded) with the expected columns."""
    for column in columns:
        if column not in frame.columns:
            frame[column] = None
    return frame


def _still_valid(results: Any) -> Any:
    """Recorded pair results that still hold: rejections, and written pairs whose files are all on disk."""
    import pandas as pd

    keep = [_rejected(r) or _exists(r) for r in results.to_dict("records")]
    return results[pd.Series(keep, index=results.index, dtype=bool)]


def _rejected(row: dict[str, Any]) -> bool:
    return isinstance(row["reason"], str) and bool(row["reason"])


def _exists(row: dict[str, Any]) -> bool:
    from dataengine.portraits import pair_files_exist

    return pair_files_exist(row)


def _print_summary(summary: dict, num_rejections: int) -> None:
    lines = [f"{'type':<12} {'category':<22} {'requested':>9} {'planned':>8} {'written':>8} {'rejected':>9}"]
    for edit_type, row in summary["types"].items():
        lines.append(
            f"{edit_type:<12} {row['category']:<22} {row['requested']:>9} {row['planned']:>8} "
            f"{row['written']:>8} {row['rejected']:>9}"
        )
    p, b = summary["portraits"], summary["backgrounds"]
    lines.append(f"portraits: {p['accepted']}/{p['seen']} accepted, rejected {p['rejected'] or '{}'}")
    lines.append(f"backgrounds: {b['usable']}/{b['seen']} usable, rejected {b['rejected'] or '{}'}")
    lines.append(
        f"{num_rejections} rejections -> {summary['outputs']['rejections']}; pairs -> {summary['outputs']['pairs']}"
    )
    print("\n".join(lines))


def synth_portraits_command(
    recipe: Annotated[
        Path, typer.Argument(help="Recipe TOML with a [portraits] table, e.g. manifests/demo.toml")
    ],
    overrides: Annotated[
        list[str] | None, typer.Argument(help="section.key=value overrides, e.g. portraits.pairs_per_type=10")
    ] = None,
    ray_address: Annotated[
        str | None, typer.Option(help="Join this Ray cluster (default: RAY_ADDRESS or local)")
    ] = None,
) -> None:
    """Synthesise portrait edit pairs (person removal, addition, background replacement); resumes after a kill."""
    from dataengine.portraits import PortraitsConfig
    from dataengine.recipe import load_step_config

    config, run = load_step_config(PortraitsConfig, recipe, "portraits", overrides)
    run_portraits(config, run, ray_address)
