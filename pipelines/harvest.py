"""`dataengine harvest-portraits`: any pool of videos -> portrait windows and background windows for synth-portraits.

    dataengine harvest-portraits manifests/demo.toml                      # generated pool, true boxes, CPU
    dataengine harvest-portraits manifests/openve.toml --ray-address auto  # OpenVE-3M's source videos, GPUs

One stage (Ray Data actor pool, ``resources.harvest_actors`` actors with ``resources.harvest_gpus`` GPUs
each; the person detector loads once per actor, in the actor): each video is probed, the detector looks at
its frames sampled at ``detector.sample_fps``, and ``dataengine.models.detect.find_window`` finds the earliest
portrait window (one large enough person in every sampled frame), else the earliest background window
(nobody in any), else says why neither exists. The window is the ``[portraits]`` ``num_frames`` at ``fps``.

Every scanned video is appended to a part under ``manifests/<run>/.harvest/`` as its result arrives: a
rerun after a kill skips them (a rerun with other detector settings or another video source is refused).
Outputs: ``manifests/<run>/portrait_windows.parquet`` and ``background_windows.parquet`` (the lists
``[portraits] portrait_windows`` / ``background_windows`` read), ``harvest_rejections.parquet`` (every other
video, with its reason) and ``harvest_summary.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from pipelines.stage import RayOptions, Stage, StageRun, Worker, guard_resume, run_resumable

RESULT_COLUMNS = ["clip_id", "clip", "path", "kind", "reason", "stage", "detail"]
STAGES = ("probe", "harvest")
"""The stages of a video's rejections, in order (both in the harvest actor)."""


class HarvestWorker(Worker):
    """Harvest stage (actor pool): the detector loads once per actor, then each row's video is scanned."""

    def __init__(self, config: Any):
        self.config = config

    def setup(self) -> None:
        from dataengine.models.detect import build_detector

        self.detector = build_detector(self.config.detector)

    def process(self, row: dict[str, Any]) -> dict[str, Any]:
        from dataengine.steps.portrait_pairs import harvest_clip

        return harvest_clip(row["path"], row["clip"], self.config, self.detector)


def harvest_settings(config: Any) -> dict[str, Any]:
    """What the stored results depend on: the detector's decisions, the window, and where videos come from."""
    from dataengine.formats.recipe import config_to_dict

    detector = {k: v for k, v in config_to_dict(config.detector).items() if k not in ("device", "batch_size")}
    source = {k: v for k, v in config_to_dict(config.harvest).items() if k != "max_clips"}
    window = {"num_frames": config.num_frames, "fps": config.fps, "extensions": list(config.extensions)}
    return {"detector": detector, "source": source, "window": window}


def run_harvest(
    config: Any, run: str, ray_address: str | None = None, manifests_root: str = "manifests"
) -> dict:
    """Scan the recipe's video pool and write the window lists, rejections and summary; returns the summary."""
    from dataengine.formats.layout import RunLayout
    from dataengine.steps.portrait_pairs import WINDOW_COLUMNS, clip_id, harvest_inputs
    from pipelines.runtime import PartStore

    layout = RunLayout(run, manifests_root=Path(manifests_root))
    inputs = harvest_inputs(config.harvest, config.extensions)
    guard_resume(
        layout.harvest_fingerprint,
        harvest_settings(config),
        start_over=f"{layout.harvest_state} (and the window lists beside it)",
    )
    detector = config.detector
    print(
        f"harvest-portraits: {len(inputs)} videos; detector {detector.backend} "
        f"{detector.model if detector.backend == 'transformers' else '(<clip>.boxes.json)'} at "
        f"{detector.sample_fps:g} frames/s; windows of {config.num_frames} frames at {config.fps:g} fps"
    )

    # 1. read, 2. the one stage, resumed
    items = [{"clip_id": clip_id("pool", key), "clip": key, "path": path} for key, path in inputs]
    stage = Stage("harvest", HarvestWorker, kwargs={"config": config}, **config.resources.stage("harvest"))
    scan = run_resumable(
        items,
        [stage],
        PartStore(layout.harvest_state, id_column="clip_id"),
        description="harvest",
        unit="clips",
        columns=[*RESULT_COLUMNS, *WINDOW_COLUMNS],
        stage_names=STAGES,
        resumed=lambda done, todo: f"harvest-portraits: {done} videos already scanned" if done else None,
        ray=RayOptions.of(config.resources, ray_address),
    )

    # 3. write: the two window lists, the rejections, the summary
    return write_outputs(layout, run, scan)


def write_outputs(layout: Any, run: str, scan: StageRun) -> dict:
    """The portrait and background window lists, the rejections and the summary; returns the summary."""
    from dataengine.formats.atomic import write_parquet, write_text
    from dataengine.formats.manifest import rejections_frame, write_rejections
    from dataengine.steps.portrait_pairs import WINDOW_COLUMNS
    from pipelines.portraits import rejection_rows

    results, lists = scan.results, {}
    for kind, path in (("portrait", layout.portrait_windows), ("background", layout.background_windows)):
        windows = results[results["kind"] == kind].sort_values("clip", kind="stable")[WINDOW_COLUMNS]
        windows = windows.astype({"start_frame": "int64", "video_frames": "int64", "num_sampled": "int64"})
        write_parquet(windows.reset_index(drop=True), path)
        lists[kind] = len(windows)
    rejected = sorted(rejection_rows(results[results["kind"].isna()], "clip_id"), key=lambda r: r["pair_id"])
    metadata = {"run": run, "step": "harvest-portraits"}
    write_rejections(rejections_frame(rejected), layout.harvest_rejections, metadata=metadata)
    summary = {
        "run": run,
        "scanned": scan.counts[STAGES[0]]["in"],
        "portrait_windows": lists["portrait"],
        "background_windows": lists["background"],
        "rejected": scan.rejected(),
        "stages": scan.counts,
        "outputs": {
            "portrait_windows": str(layout.portrait_windows),
            "background_windows": str(layout.background_windows),
            "rejections": str(layout.harvest_rejections),
        },
    }
    write_text(layout.harvest_summary, json.dumps(summary, indent=1) + "\n")
    print(
        f"harvest-portraits: {len(results)} videos: {lists['portrait']} portrait windows -> "
        f"{layout.portrait_windows}, {lists['background']} background windows -> {layout.background_windows}, "
        f"{sum(summary['rejected'].values())} rejected {summary['rejected'] or '{}'} -> {layout.harvest_rejections}"
    )
    return summary


def harvest_portraits_command(
    recipe: Annotated[
        Path, typer.Argument(help="Recipe TOML with a [portraits] table and its [portraits.harvest] source")
    ],
    overrides: Annotated[
        list[str] | None,
        typer.Argument(help="section.key=value overrides, e.g. portraits.harvest.videos_dir=my_videos"),
    ] = None,
    ray_address: Annotated[
        str | None, typer.Option(help="Join this Ray cluster (default: RAY_ADDRESS or local)")
    ] = None,
) -> None:
    """Find portrait windows (one person) and background windows (nobody) in a pool of videos; resumes after a kill."""
    from dataengine.formats.recipe import load_step_config
    from dataengine.steps.portrait_pairs import PortraitsConfig

    config, run = load_step_config(PortraitsConfig, recipe, "portraits", overrides)
    run_harvest(config, run, ray_address)
