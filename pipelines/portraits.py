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
SEGMENT_STAGES = ("probe", "detect", "segment")
"""The stages of a portrait clip's rejections, in order (all in the segment actor)."""


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
    from pipelines.runtime import PartStore

    layout = RunLayout(run, manifests_root=Path(manifests_root), pairs_dir=config.pairs_root(run))
    state, ray = layout.portraits_state, RayOptions.of(config.resources, ray_address)

    # 1. read the clips; a rerun continues only with the same settings and clips
    portraits, backgrounds = read_clips(config, layout)
    inputs = resume_inputs(portraits, backgrounds)
    start_over = f"{layout.run_dir} and the pairs under {layout.pairs_dir}"
    guard_resume(layout.portraits_fingerprint, portraits_settings(config), inputs, start_over=start_over)

    # 2. probe the backgrounds (CPU tasks), then segment and gate the portraits (actor pool)
    background, segment, composite = portrait_stages(config, layout)
    usable = run_resumable(
        backgrounds,
        [background],
        PartStore(state / "backgrounds", id_column="clip_id"),
        description="backgrounds",
        unit="clips",
        columns=BACKGROUND_COLUMNS,
        ray=ray,
    )
    clips = run_resumable(
        portraits,
        [segment],
        PartStore(state / "portraits", id_column="clip_id"),
        description="segment",
        unit="clips",
        columns=CLIP_COLUMNS,
        stage_names=SEGMENT_STAGES,
        ray=ray,
    )

    # 3. the plan, then composite + encode (CPU tasks); a recorded pair whose files went missing is redone
    plan_frame, planned = plan_pairs_of(config, run, clips.results, usable.results)
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
    summary = write_outputs(layout, config, usable, clips, plan_frame, planned, pairs)
    _print_summary(summary)
    return summary


def portrait_stages(config: Any, layout: Any) -> list[Stage]:
    """background (CPU tasks, over the background clips), segment (an actor pool, over the portrait clips),
    composite (CPU tasks, over the planned pairs)."""
    res, masks_dir = config.resources, str(layout.masks_dir.resolve())
    return [
        Stage("background", check_background_row, **res.stage("background")),
        Stage(
            "segment",
            SegmentWorker,
            kwargs={"config": config, "masks_dir": masks_dir},
            **res.stage("segment"),
        ),
        Stage("composite", composite_row, kwargs={"config": config}, **res.stage("composite")),
    ]


def read_clips(config: Any, layout: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The rows of the portrait clips and of the background clips (:func:`clip_items`), from the harvest's
    window lists or the folders; says where they come from."""
    from dataengine.steps.portrait_pairs import input_clips

    portraits = clip_items("portrait", input_clips(config, "portrait"))
    backgrounds = clip_items("background", input_clips(config, "background"))
    sources = (
        config.portrait_windows or config.people_dir,
        config.background_windows or config.backgrounds_dir,
    )
    print(
        f"synth-portraits: {len(portraits)} portrait clips from {sources[0]}, {len(backgrounds)} background clips "
        f"from {sources[1]}; {config.pairs_per_type} pairs per type -> {layout.pairs_dir}"
    )
    return portraits, backgrounds


def portraits_settings(config: Any) -> dict[str, Any]:
    """What the stored clips and pairs depend on (the resume guard's settings): all but the resources and the
    harvest's source."""
    from dataengine.formats.recipe import config_to_dict

    return {k: v for k, v in config_to_dict(config).items() if k not in ("resources", "harvest")}


def resume_inputs(portraits: list[dict[str, Any]], backgrounds: list[dict[str, Any]]) -> list[str]:
    """The clips the stored results were made from (the resume guard's inputs): kind, name, path, start."""
    return [
        f"{kind} {row[kind]} {row['path']} {row['start_frame']}"
        for kind, rows in (("portrait", portraits), ("background", backgrounds))
        for row in rows
    ]


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
    usable: StageRun,
    clips: StageRun,
    plan_frame: Any,
    planned: dict[str, int],
    written: StageRun,
) -> dict:
    """The pair manifest, the rejections (clips and pairs), the plan and the summary; returns the summary.
    ``usable``, ``clips`` and ``written`` are the background, segment and composite runs."""
    from dataengine.formats.atomic import write_parquet, write_text
    from dataengine.formats.manifest import PAIR_COLUMNS, rejections_frame, write_pairs, write_rejections
    from dataengine.formats.recipe import config_to_dict
    from dataengine.steps.portrait_pairs import CATEGORIES

    run, results = layout.run, written.results
    pairs = results[results["reason"].isna()].sort_values(["category", "pair_id"], kind="stable")
    pairs = pairs.reset_index(drop=True).assign(score=None)
    rejected_rows = rejection_rows(clips.results, "clip_id") + rejection_rows(usable.results, "clip_id")
    rejected_rows += rejection_rows(results, "pair_id")
    rejections = rejections_frame(sorted(rejected_rows, key=lambda r: (r["stage"], r["pair_id"])))
    models = {
        "segmenter": config.segmenter.model if config.segmenter.backend == "transformers" else "mask_files"
    }
    if config.segmenter.prompt == "detector":
        backend = config.detector.backend
        models["detector"] = config.detector.model if backend == "transformers" else "boxes_file"
    metadata = {"run": run, "config": config_to_dict(config), "models": models, "step": "synth-portraits"}
    write_pairs(pairs[PAIR_COLUMNS], layout.portraits, metadata=metadata)
    write_rejections(rejections, layout.portrait_rejections, metadata=metadata)
    plan_out = plan_frame.sort_values(["category", "pair_id"], kind="stable").reset_index(drop=True)
    write_parquet(plan_out, layout.portrait_plan)

    clip_rejected, background_rejected = clips.rejected(), usable.rejected()
    num_clips, num_backgrounds = clips.counts[SEGMENT_STAGES[0]]["in"], usable.counts["background"]["in"]
    summary = {
        "run": run,
        "portraits": {
            "seen": num_clips,
            "accepted": num_clips - sum(clip_rejected.values()),
            "rejected": clip_rejected,
        },
        "backgrounds": {
            "seen": num_backgrounds,
            "usable": num_backgrounds - sum(background_rejected.values()),
            "rejected": background_rejected,
        },
        "stages": {**usable.counts, **clips.counts, **written.counts},
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
