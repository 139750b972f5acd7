"""Segmentation: a tiny random SAM2 end to end through from_pretrained, the masks' file format, the gate."""

from __future__ import annotations

import numpy as np
import pytest

from dataengine.media.video import probe
from dataengine.models.segment import (
    GATE_REASONS,
    GateConfig,
    MaskFileReader,
    SegmenterConfig,
    build_segmenter,
    check_masks,
    consecutive_iou,
    load_masks,
    save_masks,
)
from dataengine.synthetic.portraits import (
    BAD_PORTRAITS,
    SyntheticPortraitsConfig,
    generate_portraits,
    render_portrait,
)


@pytest.fixture(scope="session")
def tiny_sam2(tiny_models):
    return tiny_models.sam2  # build_tiny_sam2(folder), seed 0


@pytest.fixture(scope="module")
def clip():
    frames, masks = render_portrait(seed=11, num_frames=5, height=72, width=104)
    return frames, masks


@pytest.mark.parametrize("prompt", ["box", "points"])
def test_tiny_sam2_gives_one_mask_per_frame_of_the_frame_size(tiny_sam2, clip, prompt):
    frames, _ = clip
    segmenter = build_segmenter(SegmenterConfig(model=str(tiny_sam2), prompt=prompt, device="cpu"))
    masks = segmenter.segment(frames)
    assert masks.shape == frames.shape[:3] and masks.dtype == bool


def direct_sam2_logits(model_dir, frames: np.ndarray, boxes: list[list[float]]) -> np.ndarray:
    """transformers' own documented video loop, one object per box: logits (T, objects, H, W)."""
    import torch
    from transformers import Sam2VideoModel, Sam2VideoProcessor

    model = Sam2VideoModel.from_pretrained(model_dir).eval()
    processor = Sam2VideoProcessor.from_pretrained(model_dir)
    height, width = frames.shape[1:3]
    logits = []
    with torch.inference_mode():
        session = processor.init_video_session(video=list(frames), inference_device="cpu")
        processor.add_inputs_to_inference_session(
            inference_session=session,
            frame_idx=0,
            obj_ids=list(range(7, 7 + len(boxes))),
            input_boxes=[boxes],
        )
        for out in model.propagate_in_video_iterator(inference_session=session, start_frame_idx=0):
            logits.append(
                processor.post_process_masks([out.pred_masks], [[height, width]], binarize=False)[0][:, 0]
            )
    return torch.stack(logits).numpy()


@pytest.mark.process
def test_tiny_sam2_masks_equal_a_direct_transformers_run(tiny_sam2, clip):
    """Our wrapper against the direct loop: the config's fixed box, and two detector boxes (mask = union)."""
    frames, _ = clip
    height, width = frames.shape[1:3]
    config = SegmenterConfig(
        model=str(tiny_sam2), prompt="box", prompt_box=(0.1, 0.2, 0.6, 0.9), mask_threshold=0.0
    )
    ours = build_segmenter(config).segment(frames)
    reference = direct_sam2_logits(
        tiny_sam2, frames, [[0.1 * width, 0.2 * height, 0.6 * width, 0.9 * height]]
    )
    assert reference.shape == (*ours.shape[:1], 1, *ours.shape[1:])
    # a random model's logits can sit near 0: compare where the reference is clearly decided
    decided = np.abs(reference[:, 0]) > 1e-3
    np.testing.assert_array_equal(ours[decided], reference[:, 0][decided] > 0)

    boxes = [[4.0, 10.0, 40.0, 70.0], [55.0, 6.0, 100.0, 72.0]]
    detector_config = SegmenterConfig(model=str(tiny_sam2), prompt="detector", mask_threshold=0.0)
    segmenter = build_segmenter(detector_config)
    ours = segmenter.segment(frames, boxes)
    reference = direct_sam2_logits(tiny_sam2, frames, boxes)
    assert reference.shape[1] == 2
    decided = (np.abs(reference) > 1e-3).all(axis=1)
    union = (reference > 0).any(axis=1)
    np.testing.assert_array_equal(ours[decided], union[decided])
    # the union differs from either object alone somewhere (else the check above could not fail)
    assert (union != (reference[:, 0] > 0)).any() or (union != (reference[:, 1] > 0)).any()
    with pytest.raises(ValueError, match="needs the detector's boxes"):
        segmenter.segment(frames)


def test_masks_round_trip_bit_packed(tmp_path):
    rng = np.random.default_rng(0)
    masks = rng.random((3, 7, 13)) > 0.5  # a width that is not a multiple of 8
    save_masks(tmp_path / "m.masks.npz", masks)
    np.testing.assert_array_equal(load_masks(tmp_path / "m.masks.npz"), masks)
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="not a masks file"):
        load_masks(tmp_path / "other.npz")
    with pytest.raises(FileNotFoundError, match="nope"):
        load_masks(tmp_path / "nope.npz")


def test_consecutive_iou_against_a_direct_count():
    a = np.zeros((3, 4, 4), dtype=bool)
    a[0, :2, :2] = True  # 4 pixels
    a[1, :2, :3] = True  # 6 pixels, 4 shared with frame 0
    # frame 2 empty: IoU(1, 2) = 0 / 6
    np.testing.assert_allclose(consecutive_iou(a), [4 / 6, 0.0])
    assert consecutive_iou(np.zeros((2, 3, 3), dtype=bool))[0] == 1.0


@pytest.mark.parametrize("kind", sorted(BAD_PORTRAITS))
def test_gate_reasons_on_ground_truth_masks(kind):
    kwargs, reason = BAD_PORTRAITS[kind]
    _, masks = render_portrait(seed=5, num_frames=17, height=96, width=160, **kwargs)
    verdict = check_masks(masks, GateConfig())
    assert verdict.reason == reason and verdict.reason in GATE_REASONS
    assert verdict.detail


def test_gate_accepts_a_good_clip_and_follows_its_thresholds():
    _, masks = render_portrait(seed=5, num_frames=17, height=96, width=160)
    verdict = check_masks(masks, GateConfig())
    assert verdict.reason is None
    area = masks.mean()
    assert verdict.mean_area == pytest.approx(area)
    assert check_masks(masks, GateConfig(min_area=area + 0.01)).reason == "mask_too_small"
    assert check_masks(masks, GateConfig(max_area=area - 0.01)).reason == "mask_too_large"
    assert check_masks(masks, GateConfig(min_iou=verdict.min_iou + 0.01)).reason == "mask_unstable"
    assert check_masks(masks, GateConfig(min_iou=verdict.min_iou)).reason is None


def test_generated_clips_ship_their_masks_and_the_reader_checks_them(tmp_path):
    data = generate_portraits(
        tmp_path, SyntheticPortraitsConfig(num_people=1, num_backgrounds=1, bad_people=("small",), pool=())
    )
    reader = MaskFileReader()
    for path in data.people:
        info = probe(path)
        masks = reader.read(path, info.num_frames, info.height, info.width)
        expected = data.expected_rejections.get(path.name)
        assert check_masks(masks, GateConfig()).reason == expected
    info = probe(data.people[0])
    with pytest.raises(ValueError, match="holds masks of shape"):
        reader.read(data.people[0], info.num_frames + 1, info.height, info.width)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        reader.read(data.backgrounds[0], 1, 2, 2)


def test_config_errors_are_clear(tiny_sam2):
    with pytest.raises(ValueError, match="backend"):
        SegmenterConfig(backend="magic")
    with pytest.raises(ValueError, match="prompt_box"):
        SegmenterConfig(prompt_box=(0.8, 0.1, 0.2, 0.9))
    with pytest.raises(ValueError, match="min_area"):
        GateConfig(min_area=0.5, max_area=0.4)
    with pytest.raises(OSError, match="cannot load SAM2"):
        build_segmenter(SegmenterConfig(model=str(tiny_sam2.parent / "missing")))
