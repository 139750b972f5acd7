"""Harvesting portrait and background windows from a pool of generated clips, and segmenting a portrait from
the detector's prompt (true boxes, true masks: no model, no Ray).

The expectations follow from how the pool is generated (a person entering at frame 10, leaving at frame 12,
in view during frames 6-18 ...) with windows of 17 frames at 16 fps and the detector sampling 4 frames a
second (every 4th frame of the 16 fps clips).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from dataengine.detect import BoxFileReader, DetectorConfig
from dataengine.portraits import (
    HarvestConfig,
    PortraitsConfig,
    harvest_clip,
    harvest_inputs,
    segment_portrait,
)
from dataengine.segment import MaskFileReader, SegmenterConfig, load_masks
from dataengine.synthetic.portraits import SyntheticPortraitsConfig, generate_portraits

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
    root = tmp_path_factory.mktemp("pool")
    config = SyntheticPortraitsConfig(
        num_people=0, num_backgrounds=0, pool=tuple(EXPECTED), pool_enter_at=ENTER_AT
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
