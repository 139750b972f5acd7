"""The person detector: a tiny random RT-DETRv2 through from_pretrained against a direct transformers call,
and the prompt / window decisions on detections written here (no model)."""

from __future__ import annotations

import numpy as np
import pytest

from dataengine.media.clips import resize_and_crop_box, resize_and_crop_masks
from dataengine.media.video import VideoInfo, probe
from dataengine.models.detect import (
    BoxFileReader,
    DetectorConfig,
    FrameDetections,
    PersonBox,
    boxes_path,
    build_detector,
    choose_prompt,
    classify_frame,
    find_window,
    last_window_start,
    load_boxes,
    save_boxes,
    window_indices,
)
from dataengine.models.segment import load_masks
from dataengine.synthetic.portraits import SyntheticPortraitsConfig, generate_portraits, render_people

H, W = 100, 200  # frame of the hand-written detections: 20,000 pixels


@pytest.fixture(scope="module")
def tiny_detector(tiny_models):
    return tiny_models.detector  # build_tiny_detector(folder), seed 0


def box(x0, y0, x1, y1, score=0.9) -> PersonBox:
    return PersonBox(x0, y0, x1, y1, score)


def frames_at(*per_frame: list[PersonBox], fps: float = 4.0, step: int = 1) -> list[FrameDetections]:
    """Detections of sampled frames 0, step, 2 step, ... of a video at ``fps``."""
    return [FrameDetections(i * step, i * step / fps, tuple(b)) for i, b in enumerate(per_frame)]


BIG = box(10, 10, 60, 90)  # 50 x 80 = 0.2 of the frame
BIGGER = box(100, 0, 180, 100)  # 0.4
SMALL = box(0, 0, 10, 10)  # 0.005
UNSURE = box(120, 10, 170, 90, score=0.3)  # between background_threshold and threshold


# ---------------------------------------------------------------------------------------------- the model


def test_tiny_detector_equals_a_direct_transformers_call(tiny_detector):
    import torch
    from transformers import AutoImageProcessor, AutoModelForObjectDetection

    frames, _, _ = render_people(seed=3, num_frames=5, height=96, width=160)
    config = DetectorConfig(model=str(tiny_detector), device="cpu", batch_size=2, background_threshold=0.3)
    ours = build_detector(config).detect(frames)  # batches of 2, 2 and 1 frames

    model = AutoModelForObjectDetection.from_pretrained(tiny_detector).eval()
    processor = AutoImageProcessor.from_pretrained(tiny_detector)
    with torch.inference_mode():
        outputs = model(**processor(images=list(frames), return_tensors="pt"))
    results = processor.post_process_object_detection(outputs, threshold=0.3, target_sizes=[(96, 160)] * 5)
    person = model.config.label2id["person"]
    assert len(ours) == 5
    num_other = 0
    for found, result in zip(ours, results, strict=True):
        keep = result["labels"] == person
        num_other += int((~keep).sum())
        want = np.clip(result["boxes"][keep].numpy(), 0, [160, 96, 160, 96])
        scores = result["scores"][keep].numpy()
        order = np.argsort(-scores, kind="stable")
        assert len(found) == keep.sum()
        np.testing.assert_allclose([b.xyxy() for b in found], want[order].reshape(-1, 4), atol=1e-3)
        np.testing.assert_allclose([b.score for b in found], scores[order], atol=1e-5)
    # the comparison can fail: people were found, and boxes of the other class were dropped
    assert sum(len(f) for f in ours) > 0 and num_other > 0


def test_detector_load_errors_are_clear(tiny_detector, tmp_path):
    with pytest.raises(OSError, match="cannot load the person detector"):
        build_detector(DetectorConfig(model=str(tmp_path / "missing"), device="cpu"))
    with pytest.raises(ValueError, match="no class named 'pedestrian'"):
        build_detector(DetectorConfig(model=str(tiny_detector), person_label="pedestrian", device="cpu"))
    with pytest.raises(ValueError, match="policy"):
        DetectorConfig(policy="everyone")
    with pytest.raises(ValueError, match="background_threshold"):
        DetectorConfig(threshold=0.3, background_threshold=0.5)


# ---------------------------------------------------------------------------------------------- the prompt


def test_prompt_frame_is_the_first_with_a_large_confident_person():
    config = DetectorConfig()
    detections = frames_at([], [UNSURE], [SMALL], [BIG, SMALL], [BIGGER], step=4)
    prompt = choose_prompt(detections, config, H, W)
    assert prompt.reason is None and (prompt.frame, prompt.time_s) == (12, 3.0)
    assert prompt.boxes == (BIG,)  # the small confident one beside it is ignored
    assert "frame 12 (3.00 s)" in prompt.detail


@pytest.mark.parametrize(
    ("policy", "reason", "boxes"),
    [("largest", None, (BIGGER,)), ("union", None, (BIGGER, BIG)), ("reject", "multiple_people", ())],
)
def test_multi_person_policies(policy, reason, boxes):
    detections = frames_at([], [BIG, BIGGER, SMALL], [BIG])
    prompt = choose_prompt(detections, DetectorConfig(policy=policy), H, W)
    assert prompt.reason == reason and prompt.boxes == boxes and prompt.frame == 1
    if reason:
        assert "2 people at frame 1 (0.25 s)" in prompt.detail


def test_prompt_rejections_name_the_frame():
    config = DetectorConfig(min_box_area=0.02)
    too_small = choose_prompt(frames_at([], [UNSURE], [SMALL], [SMALL]), config, H, W)
    assert too_small.reason == "person_too_small" and too_small.frame == 2
    assert "frame 2 (0.50 s) covers 0.0050" in too_small.detail
    nobody = choose_prompt(frames_at([], [UNSURE], []), config, H, W)
    assert nobody.reason == "no_person" and "3 sampled frames (0.00 s to 0.50 s)" in nobody.detail
    # the thresholds move the verdicts: a looser one accepts what the defaults reject
    assert choose_prompt(frames_at([SMALL]), DetectorConfig(min_box_area=0.001), H, W).reason is None
    assert choose_prompt(frames_at([UNSURE]), DetectorConfig(threshold=0.25), H, W).frame == 0
    assert choose_prompt([], config, H, W).reason == "no_person"


# ---------------------------------------------------------------------------------------------- windows


def test_window_indices_against_a_direct_formula():
    # 30 fps video resampled to 16 fps: frame k of the window is start + floor(k * 30 / 16)
    indices = window_indices(100, 30.0, 7, 17, 16.0)
    np.testing.assert_array_equal(indices, [7 + (k * 30) // 16 for k in range(17)])
    last = last_window_start(100, 30.0, 17, 16.0)
    assert window_indices(100, 30.0, last, 17, 16.0) is not None
    assert window_indices(100, 30.0, last + 1, 17, 16.0) is None
    assert last_window_start(20, 30.0, 17, 16.0) is None


def test_frame_kinds():
    config = DetectorConfig()
    kinds = [
        classify_frame(f, config, H, W) for f in frames_at([BIG, SMALL], [BIG, BIGGER], [SMALL], [UNSURE], [])
    ]
    assert kinds == ["person", "multiple_people", "person_too_small", "uncertain", "empty"]


def window(*per_frame, frames: int = 40, length: int = 9):
    """Windows of ``length`` frames in a 4 fps, ``frames``-frame video, every video frame sampled."""
    return find_window(frames_at(*per_frame), DetectorConfig(), H, W, frames, 4.0, length, 4.0)


def test_portrait_window_starts_where_the_person_appears():
    late = window(*[[]] * 3, *[[BIG]] * 12, frames=15)
    assert (late.kind, late.start_frame, late.start_s) == ("portrait", 3, 0.75)
    assert late.end_s == (3 + 8) / 4.0 and "window frame 3 (0.75 s)" in late.detail
    # a person who leaves after 9 sampled frames still gives the window at 0; after 8, not
    assert window(*[[BIG]] * 9, *[[]] * 6, frames=15).start_frame == 0
    background = window(*[[BIG]] * 8, *[[]] * 9, frames=17)
    assert (background.kind, background.start_frame) == ("background", 8)


def test_portrait_wins_over_background_and_rejections_say_why():
    both = window(*[[]] * 9, *[[BIG]] * 9, frames=18)
    assert (both.kind, both.start_frame) == ("portrait", 9)
    short = window(*[[BIG]] * 5, frames=5)
    assert short.reason == "too_short" and short.kind is None
    crowd = window(*[[BIG, BIGGER]] * 5, *[[SMALL]] * 3, *[[]] * 2, frames=10)
    assert (
        crowd.reason == "multiple_people" and "5 of 10" in crowd.detail and "frame 0 (0.00 s)" in crowd.detail
    )
    tiny = window(*[[BIG, BIGGER]] * 2, *[[SMALL]] * 5, frames=10)
    assert tiny.reason == "person_too_small" and "first: frame 2 (0.50 s)" in tiny.detail
    mixed = window(*[[]] * 4, *[[BIG]] * 4, *[[UNSURE]] * 4, frames=12)
    assert mixed.reason == "no_window" and "person 4, empty 4, uncertain 4" in mixed.detail


# ---------------------------------------------------------------------------------------------- boxes files


def test_boxes_file_round_trip_and_errors(tmp_path):
    boxes = [[[1, 2, 30, 40, 0.9], [5, 5, 6, 6, 0.1]], []]
    save_boxes(tmp_path / "c.boxes.json", boxes, height=48, width=64)
    height, width, frames = load_boxes(tmp_path / "c.boxes.json")
    assert (height, width) == (48, 64)
    assert [[(*b.xyxy(), b.score) for b in f] for f in frames] == [
        [tuple(map(float, b)) for b in f] for f in boxes
    ]
    reader = BoxFileReader(DetectorConfig(backend="boxes_file", background_threshold=0.2))
    clip = tmp_path / "c.mp4"
    found = reader.detect_clip(clip, VideoInfo(2, 16.0, 64, 48), [1, 0])
    assert found == [[], [frames[0][0]]]  # in the order asked, the low-score box below the floor dropped
    with pytest.raises(ValueError, match="2 frames of 64x48 but .* 3 frames"):
        reader.detect_clip(clip, VideoInfo(3, 16.0, 64, 48), [0])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        reader.detect_clip(tmp_path / "other.mp4", VideoInfo(2, 16.0, 64, 48), [0])
    (tmp_path / "bad.boxes.json").write_text('{"height": 4, "width": 4, "frames": [[[3, 0, 1, 2, 1.0]]]}')
    with pytest.raises(ValueError, match="frame 0 has a bad box"):
        load_boxes(tmp_path / "bad.boxes.json")


def test_generated_boxes_are_the_masks_bounding_boxes(tmp_path):
    data = generate_portraits(
        tmp_path,
        SyntheticPortraitsConfig(num_people=0, num_backgrounds=1, pool=("late", "two_people", "absent")),
    )
    for name, kind in data.pool.items():
        path = tmp_path / "pool" / name
        info = probe(path)
        masks = load_masks(path.with_name(path.stem + ".masks.npz"))
        boxes = BoxFileReader().read(path, info)
        for t, (mask, frame) in enumerate(zip(masks, boxes, strict=True)):
            assert len(frame) == {"late": int(t >= 8), "two_people": 2, "absent": 0}[kind]
            if frame:  # the union of the boxes' extents is the mask's bounding box
                ys, xs = np.nonzero(mask)
                extent = (min(b.x0 for b in frame), min(b.y0 for b in frame))
                extent += (max(b.x1 for b in frame), max(b.y1 for b in frame))
                assert extent == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    assert boxes_path(data.backgrounds[0]).exists()


def test_box_follows_its_frame_through_resize_and_crop():
    _, masks, boxes = render_people(seed=2, num_frames=1, height=120, width=200, centre_x=0.3)
    fitted = resize_and_crop_masks(masks, (96, 96))[0]  # cover 96x96: scale 0.8, crop 32 columns each side
    ys, xs = np.nonzero(fitted)
    got = resize_and_crop_box(boxes[0][0], 120, 200, (96, 96))
    np.testing.assert_allclose(got, (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1), atol=1.5)
