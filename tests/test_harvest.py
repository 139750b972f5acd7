"""Harvesting portrait and background windows from a pool of generated clips, segmenting a portrait from the
detector's prompt (true boxes and masks; then the tiny random detector and SAM2 in one stage worker), and the
harvest job on Ray killed and resumed.

The expectations follow from how the pool is generated (a person entering at frame 10, leaving at frame 12,
in view during frames 6-18 ...) with windows of 17 frames at 16 fps and the detector sampling 4 frames a
second (every 4th frame of the 16 fps clips).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from dataengine.models.detect import BoxFileReader, DetectorConfig
from dataengine.models.segment import MaskFileReader, SegmenterConfig, load_masks
from dataengine.steps.portrait_pairs import (
    HarvestConfig,
    PortraitsConfig,
    clip_id,
    harvest_clip,
    harvest_inputs,
    segment_portrait,
)
from dataengine.synthetic.portraits import SyntheticPortraitsConfig, generate_portraits
from tests.helpers import cli_env, dataengine

ENTER_AT = 10  # the late person enters between sampled frames 8 and 12
EXPECTED = {  # kind -> (list or rejection reason, first frame of the window)
    "centred": ("portrait", 0),
    "late": ("portrait", 12),
    "off_centre": ("portrait", 0),
    "absent": ("background", 0),
    "leaves": ("background", 12),
    "passing": ("no_window", -1),
    "two_people": ("multiple_people", -1),
    "small": ("person_too_small", -1),
    "short": ("too_short", -1),
}


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """Every kind three times (distinct seeds): 27 clips, enough for a kill to land mid-harvest."""
    root = tmp_path_factory.mktemp("pool")
    config = SyntheticPortraitsConfig(
        num_people=0, num_backgrounds=0, pool=tuple(EXPECTED) * 3, pool_enter_at=ENTER_AT
    )
    return generate_portraits(root, config)


def portraits_config(pool, **detector) -> PortraitsConfig:
    return PortraitsConfig(
        num_frames=17,
        fps=16.0,
        width=160,
        height=96,
        detector=DetectorConfig(backend="boxes_file", sample_fps=4.0, **detector),
        segmenter=SegmenterConfig(backend="mask_files", prompt="detector"),
        harvest=HarvestConfig(videos_dir=str(pool.root / "pool")),
    )


def test_harvest_sorts_the_pool(pool):
    config = portraits_config(pool)
    reader = BoxFileReader(config.detector)
    inputs = harvest_inputs(config.harvest)
    assert [key for key, _ in inputs] == sorted(pool.pool)
    for key, path in inputs:
        row = harvest_clip(path, key, config, reader)
        outcome, start = EXPECTED[pool.pool[key]]
        assert (row["kind"] or row["reason"], row["start_frame"]) == (outcome, start), row["detail"]
        assert key in row["detail"]
        if row["kind"]:
            assert row["reason"] is None and row["start_s"] == start / 16.0
            assert row["end_s"] == (start + 16) / 16.0  # 17 frames at the clip's own 16 fps
    assert harvest_inputs(HarvestConfig(videos_dir=str(pool.root / "pool"), max_clips=2)) == inputs[:2]


def test_prompt_comes_from_where_the_person_is(pool, tmp_path):
    """The late and the off-centre person: the window starts at the prompt frame, the masks are the true ones
    at the window's frames, and the prompt box is the true mask's bounding box."""
    config = portraits_config(pool)
    reader, masks_reader = BoxFileReader(config.detector), MaskFileReader()
    for kind, start in (("late", 12), ("off_centre", 0)):
        name = next(n for n, k in pool.pool.items() if k == kind)
        path = pool.root / "pool" / name
        row = segment_portrait(path, name, config, tmp_path, masks_reader, detector=reader)
        assert row["reason"] is None and row["start_frame"] == start, row["detail"]
        truth = load_masks(path.with_name(path.stem + ".masks.npz"))
        np.testing.assert_array_equal(load_masks(row["masks_path"]), truth[start : start + 17])
        (x0, y0, x1, y1, score), *others = json.loads(row["prompt_boxes"])
        ys, xs = np.nonzero(truth[start])
        assert not others and score == 1.0
        assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        if kind == "off_centre":  # the fixed prior box (0.2 to 0.8 of the width) misses most of this person
            assert x0 < 0.2 * 160 and (xs < 0.2 * 160).mean() > 0.5
    # a harvested window's start is where the search begins: the same prompt frame
    late = next(n for n, k in pool.pool.items() if k == "late")
    again = segment_portrait(pool.root / "pool" / late, late, config, tmp_path, masks_reader, reader, 12)
    assert again["start_frame"] == 12
    with_prior = dataclasses.replace(config, segmenter=SegmenterConfig(backend="mask_files"))
    assert (
        segment_portrait(pool.root / "pool" / late, late, with_prior, tmp_path, masks_reader)["start_frame"]
        == 0
    )


@pytest.mark.parametrize(
    ("kind", "policy", "reason"),
    [
        ("absent", "largest", "no_person"),
        ("small", "largest", "person_too_small"),
        ("two_people", "reject", "multiple_people"),
        ("two_people", "union", None),
        ("short", "largest", "too_short"),
    ],
)
def test_detector_rejections_of_portraits(pool, tmp_path, kind, policy, reason):
    config = portraits_config(pool, policy=policy)
    name = next(n for n, k in pool.pool.items() if k == kind)
    row = segment_portrait(
        pool.root / "pool" / name, name, config, tmp_path, MaskFileReader(), BoxFileReader(config.detector)
    )
    assert row["reason"] == reason, row["detail"]
    if reason in ("no_person", "person_too_small", "multiple_people"):
        assert row["stage"] == "detect" and name in row["detail"] and "frame" in row["detail"]
    if kind == "two_people" and reason is None:
        assert len(json.loads(row["prompt_boxes"])) == 2


def test_one_segment_worker_holds_the_detector_and_sam2(pool, tmp_path, tiny_models):
    """The real loading path: a tiny random RT-DETRv2 and SAM2 in one stage worker. The prompt frame is the
    first sampled frame where a direct transformers call finds a person above the threshold chosen here."""
    import torch
    from transformers import AutoImageProcessor, AutoModelForObjectDetection

    from dataengine.media.video import read_frames
    from dataengine.models.detect import TransformersPersonDetector
    from dataengine.models.segment import Sam2VideoSegmenter
    from pipelines.portraits import SegmentWorker

    detector_dir, sam2_dir = tiny_models.detector, tiny_models.sam2
    name = next(n for n, k in pool.pool.items() if k == "centred")
    path = pool.root / "pool" / name
    sampled = list(range(0, 17, 4))  # the window must fit: starts 0..16 of 33 frames, every 4th sampled
    model = AutoModelForObjectDetection.from_pretrained(detector_dir).eval()
    processor = AutoImageProcessor.from_pretrained(detector_dir)
    with torch.inference_mode():
        outputs = model(**processor(images=list(read_frames(path, sampled)), return_tensors="pt"))
    results = processor.post_process_object_detection(outputs, threshold=0.0, target_sizes=[(96, 160)] * 5)
    best = [float(r["scores"][r["labels"] == 0].max()) for r in results]  # best person score per frame
    later = int(np.argmax(best[1:])) + 1
    assert best[later] > best[0], best  # the tiny model's seed gives a later frame a better person
    threshold = (best[0] + best[later]) / 2
    first = next(i for i, score in enumerate(best) if score >= threshold)

    config = dataclasses.replace(
        portraits_config(pool),
        detector=DetectorConfig(
            model=str(detector_dir),
            device="cpu",
            sample_fps=4.0,
            threshold=threshold,
            background_threshold=0.0,
            min_box_area=0.0,
        ),
        segmenter=SegmenterConfig(model=str(sam2_dir), prompt="detector", device="cpu"),
    )
    worker = SegmentWorker(config, str(tmp_path / "masks"))
    worker.setup()
    assert isinstance(worker.detector, TransformersPersonDetector)
    assert isinstance(worker.segmenter, Sam2VideoSegmenter)
    row = worker.process({"path": str(path), "portrait": name, "start_frame": 0})
    assert row["start_frame"] == sampled[first] > 0, row["detail"]
    assert load_masks(row["masks_path"]).shape == (17, 96, 160)
    assert len(json.loads(row["prompt_boxes"])) == 1  # policy largest


def harvest_cli(folder: Path, recipe: Path, **popen) -> subprocess.Popen:
    command = dataengine("harvest-portraits", str(recipe))
    return subprocess.Popen(
        command,
        cwd=folder,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **popen,
    )


@pytest.mark.ray
@pytest.mark.process
@pytest.mark.slow
def test_harvest_job_killed_then_resumed_sorts_every_clip(pool, tmp_path):
    import pandas as pd

    recipe = tmp_path / "harvest.toml"
    recipe.write_text(
        "\n".join(
            [
                'run = "h"',
                "[portraits]",
                "num_frames = 17",
                "fps = 16.0",
                "[portraits.detector]",
                'backend = "boxes_file"',
                "sample_fps = 4.0",
                "[portraits.harvest]",
                f'videos_dir = "{pool.root / "pool"}"',
                "[portraits.resources]",
                "num_cpus = 2",
            ]
        )
        + "\n"
    )
    run_dir = tmp_path / "manifests" / "h"
    process = harvest_cli(tmp_path, recipe, start_new_session=True)
    deadline = time.monotonic() + 300
    while not list((run_dir / ".harvest").glob("part-*.parquet")) and process.poll() is None:
        assert time.monotonic() < deadline, "no part written in 300 s"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # the driver and the Ray processes it started
    process.communicate(timeout=60)
    assert not (run_dir / "portrait_windows.parquet").exists(), "the run finished before the kill"
    num_done = len(pd.concat(pd.read_parquet(p) for p in (run_dir / ".harvest").glob("part-*.parquet")))
    assert 0 < num_done < len(pool.pool)

    process = harvest_cli(tmp_path, recipe)
    out, _ = process.communicate(timeout=400)
    assert process.returncode == 0, out
    assert f"{num_done} videos already scanned" in out and "clips/s" in out and "ETA" in out
    lists = {
        kind: pd.read_parquet(run_dir / f"{kind}_windows.parquet").set_index("clip")
        for kind in ("portrait", "background")
    }
    rejections = pd.read_parquet(run_dir / "harvest_rejections.parquet")
    reason_of = dict(zip(rejections["pair_id"], rejections["reason"], strict=True))  # pair_id: the clip's id
    for name, kind in pool.pool.items():  # every clip in exactly one list or the rejections
        outcome, start = EXPECTED[kind]
        cid = clip_id("pool", name)
        found = [k for k in lists if name in lists[k].index] + ([reason_of[cid]] if cid in reason_of else [])
        assert found == [outcome], (name, found)
        if outcome in lists:
            assert lists[outcome].loc[name, "start_frame"] == start
    assert len(rejections) + sum(len(v) for v in lists.values()) == len(pool.pool)
    summary = json.loads((run_dir / "harvest_summary.json").read_text())
    assert (
        summary["scanned"] == 27 and summary["portrait_windows"] == 9 and summary["background_windows"] == 6
    )
    # the runner's counts over both runs (killed and resumed): each rejection at its stage, as the
    # rejections file says; every video with a window kept
    stages = summary["stages"]
    assert list(stages) == ["probe", "harvest"] and stages["probe"]["in"] == 27
    recorded = {(stage, r): n for stage, count in stages.items() for r, n in count["rejected"].items()}
    assert recorded == {key: len(rows) for key, rows in rejections.groupby(["stage", "reason"])}
    assert stages["harvest"]["kept"] == 9 + 6
