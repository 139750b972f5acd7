"""`dataengine synth-portraits`: portrait + background clips -> MiVE's portrait edit pairs (removal, addition, background).

    dataengine synth-portraits manifests/demo.toml                      # generated clips, CPU, a minute
    dataengine synth-portraits manifests/openve.toml --ray-address auto  # the paper's 6K pairs on a GPU cluster

Stages (Ray Data; paths travel between stages, pixels are decoded where they are needed):

1. segment: an actor pool (``resources.segment_actors`` actors with ``resources.segment_gpus`` GPUs each,
   the models loaded once per actor, in the actor: SAM2, and the person detector when ``segmenter.prompt =
   "detector"``) prompts, segments and gates every portrait clip; backgrounds are probed by CPU tasks.
   The clips come from ``people_dir`` / ``backgrounds_dir``, or from the window lists of ``dataengine
   harvest-portraits`` (``portrait_windows`` / ``background_windows``).
2. plan (driver): pairs drawn with the seed from the accepted clips (``dataengine.steps.portrait_pairs.plan_pairs``).
3. composite: CPU tasks composite, encode (H.264) and write each pair.

Every finished clip and pair is appended to a part under ``manifests/<run>/.portraits/`` as results
arrive: a rerun after a kill skips them and ends with the same outputs as an uninterrupted run.
Outputs: ``manifests/<run>/portraits.parquet`` (pair manifest), ``portrait_rejections.parquet``,
``portrait_plan.parquet`` (portrait, background and masks of each pair), ``portraits_summary.json``,
and the pair files under the recipe's ``output_dir``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from pipelines.stage import RayOptions, Stage, StageRun, Worker, guard_resume, run_resumable

CLIP_COLUMNS = [
    "clip_id",
    "portrait",
    "path",
    "reason",
    "stage",
    "detail",
    "masks_path",
    "mean_area",
    "min_iou",
    "start_frame",
    "start_s",
    "prompt_boxes",
    "prompt_image",
]
BACKGROUND_COLUMNS = ["clip_id", "background", "path", "start_frame", "reason", "stage", "detail"]


# -- the stages -------------------------------------------------------------------------------------------


def check_background_row(row: dict[str, Any]) -> dict[str, Any]:
    """Background stage (CPU task): the clip decodes to its last frame."""
    from dataengine.steps.portrait_pairs import check_background

    return check_background(row["path"], row["background"])


class SegmentWorker(Worker):
    """Segment stage (actor pool): the segmenter and the person detector load once per actor, then each row's
    clip is prompted, segmented and gated."""

    def __init__(self, config: Any, masks_dir: str):
        self.config, self.masks_dir = config, masks_dir

    def setup(self) -> None:
        from dataengine.models.detect import build_detector
        from dataengine.models.segment import MaskFileReader, build_segmenter

        backend = self.config.segmenter.backend
        self.segmenter = (
            MaskFileReader() if backend == "mask_files" else build_segmenter(self.config.segmenter)
        )
        prompted = self.config.segmenter.prompt == "detector"
        self.detector = build_detector(self.config.detector) if prompted else None

    def process(self, row: dict[str, Any]) -> dict[str, Any]:
        from dataengine.steps.portrait_pairs import segment_portrait

        return segment_portrait(
            row["path"],
            row["portrait"],
            self.config,
            self.masks_dir,
            self.segmenter,
            self.detector,
            int(row.get("start_frame") or 0),
        )


def composite_row(row: dict[str, Any], config: Any) -> dict[str, Any]:
    """Composite stage (CPU task): composite, encode and write one planned pair; its manifest row."""
    from dataengine.steps.portrait_pairs import synthesize_pair

    return synthesize_pair(row, row["masks_path"], config)


# -- the job -------------------------------------------------------------------------------------------


def run_portraits(
    config: Any, run: str, ray_address: str | None = None, manifests_root: str = "manifests"
) -> dict:
    """Segment, plan, composite and write everything of one run; returns the summary (also written as JSON)."""
    from dataengine.formats.layout import RunLayout
    from dataengine.formats.manifest import PAIR_COLUMNS
    from dataengine.formats.recipe import config_to_dict
    from dataengine.steps.portrait_pairs import input_clips
    from pipelines.runtime import PartStore

    layout = RunLayout(run, manifests_root=Path(manifests_root), pairs_dir=config.pairs_root(run))
    portrait_clips, background_clips = input_clips(config, "portrait"), input_clips(config, "background")
    portraits, backgrounds = [c.key for c in portrait_clips], [c.key for c in background_clips]
    resolved = config_to_dict(config)
    settings = {k: v for k, v in resolved.items() if k not in ("resources", "harvest")}
    inputs = [f"portrait {c.key} {c.path} {c.start_frame}" for c in portrait_clips]
    inputs += [f"background {c.key} {c.path} {c.start_frame}" for c in background_clips]
    guard_resume(
        layout.portraits_fingerprint,
        settings,
        inputs,
        start_over=f"{layout.run_dir} and the pairs under {layout.pairs_dir}",
    )
    sources = (
        config.portrait_windows or config.people_dir,
        config.background_windows or config.backgrounds_dir,
    )
    print(
        f"synth-portraits: {len(portraits)} portrait clips from {sources[0]}, {len(backgrounds)} background clips "
        f"from {sources[1]}; {config.pairs_per_type} pairs per type -> {layout.pairs_dir}"
    )
    res, state = config.resources, layout.portraits_state
    ray = RayOptions.of(res, ray_address, "portraits.resources.wait_for_resources_s")

    # 1. probe the backgrounds (CPU tasks), then segment and gate the portraits (actor pool)
    background = Stage("background", check_background_row, **res.stage("background"))
    usable = run_resumable(
        clip_items("background", background_clips),
        [background],
        PartStore(state / "backgrounds", id_column="clip_id"),
        description="backgrounds",
        unit="clips",
        columns=BACKGROUND_COLUMNS,
        ray=ray,
    )
    masks_dir = str(layout.masks_dir.resolve())
    segment = Stage(
        "segment", SegmentWorker, kwargs={"config": config, "masks_dir": masks_dir}, **res.stage("segment")
    )
    clips = run_resumable(
        clip_items("portrait", portrait_clips),
        [segment],
        PartStore(state / "portraits", id_column="clip_id"),
        description="segment",
        unit="clips",
        columns=CLIP_COLUMNS,
        ray=ray,
    )

    # 2. the plan
    plan_frame, planned = plan_pairs_of(config, run, clips.results, usable.results)

    # 3. composite + encode (CPU tasks); a recorded pair whose files went missing is redone
    composite = Stage("composite", composite_row, kwargs={"config": config}, **res.stage("composite"))
    pairs = run_resumable(
        plan_frame.to_dict("records"),
        [composite],
        PartStore(state / "pairs", id_column="pair_id"),
        description="pairs",
        unit="pairs",
        columns=[*PAIR_COLUMNS, "reason", "stage", "detail"],
        still_valid=_still_valid,
        resumed=lambda done, todo: f"synth-portraits: {len(plan_frame)} pairs planned, {done} already done",
        ray=ray,
    )

    # 4. outputs
    summary = write_outputs(
        layout, config, resolved, portraits, backgrounds, clips, usable, plan_frame, planned, pairs.results
    )
    _print_summary(summary)
    return summary


def clip_items(kind: str, clips: list[Any]) -> list[dict[str, Any]]:
    """The rows of the input clips (``InputClip``) of one kind (``portrait`` or ``background``): the clip's
    id, name, path and window start."""
    from dataengine.steps.portrait_pairs import clip_id

    return [
        {"clip_id": clip_id(kind, c.key), kind: c.key, "path": c.path, "start_frame": c.start_frame}
        for c in clips
    ]


def plan_pairs_of(config: Any, run: str, clips: Any, usable: Any) -> tuple[Any, dict[str, int]]:
    """The planned pairs (``dataengine.steps.portrait_pairs.plan_pairs`` over the accepted clips) with each pair's
    portrait and background columns; and the number planned per edit type."""
    import pandas as pd

    from dataengine.steps.portrait_pairs import PLAN_COLUMNS, plan_pairs

    accepted = clips[clips["reason"].isna()]
    good_backgrounds = usable[usable["reason"].isna()]
    plan, planned = plan_pairs(list(accepted["portrait"]), list(good_backgrounds["background"]), config, run)
    for edit_type, count in planned.items():
        if count < config.pairs_per_type:
            print(
                f"synth-portraits: WARNING only {count} distinct (portrait, background) combinations for "
                f"{edit_type}; {config.pairs_per_type} requested: add clips to reach it"
            )
    plan_frame = pd.DataFrame(plan, columns=PLAN_COLUMNS)
    portrait_of = accepted.set_index("portrait")
    for column, source in (
        ("portrait_path", "path"),
        ("portrait_start", "start_frame"),
        ("masks_path", "masks_path"),
        ("prompt_image", "prompt_image"),
        ("prompt_boxes", "prompt_boxes"),
        ("prompt_s", "start_s"),
    ):
        plan_frame[column] = portrait_of[source].reindex(plan_frame["portrait"]).to_list()
    background_of = good_backgrounds.set_index("background")
    plan_frame["background_path"] = background_of["path"].reindex(plan_frame["background"]).to_list()
    starts = background_of["start_frame"].fillna(0).astype(int)
    plan_frame["background_start"] = starts.reindex(plan_frame["background"]).to_list()
    return plan_frame, planned


def rejection_rows(frame: Any, id_column: str) -> list[dict[str, Any]]:
    """The rejection rows (``pair_id``, ``stage``, ``reason``, ``detail``) of ``frame``'s rejected rows,
    each named by its ``id_column`` (a clip's ``clip_id``, a pair's ``pair_id``)."""
    return [
        {"pair_id": r[id_column], "stage": r["stage"], "reason": r["reason"], "detail": r["detail"]}
        for r in frame[frame["reason"].notna()].to_dict("records")
    ]


def write_outputs(
    layout: Any,
    config: Any,
    resolved: dict,
    portraits: list[str],
    backgrounds: list[str],
    clips: StageRun,
    usable: StageRun,
    plan_frame: Any,
    planned: dict[str, int],
    results: Any,
) -> dict:
    """The pair manifest, the rejections (clips and pairs), the plan and the summary; returns the summary."""
    from dataengine.formats.atomic import write_parquet, write_text
    from dataengine.formats.manifest import PAIR_COLUMNS, rejections_frame, write_pairs, write_rejections
    from dataengine.steps.portrait_pairs import CATEGORIES

    run = layout.run
    clip_rejected, background_rejected = clips.rejected(), usable.rejected()
    clips, usable = clips.results, usable.results
    accepted = clips[clips["reason"].isna()]
    good_backgrounds = usable[usable["reason"].isna()]
    is_ok = results["reason"].isna()
    pairs = results[is_ok].sort_values(["category", "pair_id"], kind="stable").reset_index(drop=True)
    pairs["score"] = None
    rejected_rows = rejection_rows(clips, "clip_id") + rejection_rows(usable, "clip_id")
    rejected_rows += rejection_rows(results, "pair_id")
    rejections = rejections_frame(sorted(rejected_rows, key=lambda r: (r["stage"], r["pair_id"])))
    models = {
        "segmenter": config.segmenter.model if config.segmenter.backend == "transformers" else "mask_files"
    }
    if config.segmenter.prompt == "detector":
        backend = config.detector.backend
        models["detector"] = config.detector.model if backend == "transformers" else "boxes_file"
    metadata = {"run": run, "config": resolved, "models": models, "step": "synth-portraits"}
    write_pairs(pairs[PAIR_COLUMNS], layout.portraits, metadata=metadata)
    write_rejections(rejections, layout.portrait_rejections, metadata=metadata)
    plan_out = plan_frame.sort_values(["category", "pair_id"], kind="stable").reset_index(drop=True)
    write_parquet(plan_out, layout.portrait_plan)

    summary = {
        "run": run,
        "portraits": {
            "seen": len(portraits),
            "accepted": len(accepted),
            "rejected": clip_rejected,
        },
        "backgrounds": {
            "seen": len(backgrounds),
            "usable": len(good_backgrounds),
            "rejected": background_rejected,
        },
        "types": {},
        "outputs": {
            "pairs": str(layout.portraits),
            "rejections": str(layout.portrait_rejections),
            "plan": str(layout.portrait_plan),
            "pair_files": str(layout.pairs_dir),
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
    summary["num_rejections"] = len(rejections)
    write_text(layout.portraits_summary, json.dumps(summary, indent=1) + "\n")
    return summary


def _still_valid(results: Any) -> Any:
    """Recorded pair results that still hold: rejections, and written pairs whose files are all on disk."""
    import pandas as pd

    keep = [_rejected(r) or _exists(r) for r in results.to_dict("records")]
    return results[pd.Series(keep, index=results.index, dtype=bool)]


def _rejected(row: dict[str, Any]) -> bool:
    return isinstance(row["reason"], str) and bool(row["reason"])


def _exists(row: dict[str, Any]) -> bool:
    from dataengine.steps.portrait_pairs import pair_files_exist

    return pair_files_exist(row)


def _print_summary(summary: dict) -> None:
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
        f"{summary['num_rejections']} rejections -> {summary['outputs']['rejections']}; "
        f"pairs -> {summary['outputs']['pairs']}"
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
    from dataengine.formats.recipe import load_step_config
    from dataengine.steps.portrait_pairs import PortraitsConfig

    config, run = load_step_config(PortraitsConfig, recipe, "portraits", overrides)
    run_portraits(config, run, ray_address)
