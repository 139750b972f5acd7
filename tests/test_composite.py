"""Compositing checked pixel by pixel against the alpha-blend formula computed here, in float64."""

from __future__ import annotations

import numpy as np
import pytest

from dataengine.media.clips import resize_and_crop, resize_and_crop_masks
from dataengine.media.composite import (
    EDIT_TYPES,
    blend,
    compose_pair,
    feather_alpha,
    fit_background,
    loop_indices,
)
from dataengine.synthetic.portraits import render_background, render_portrait

T, H, W = 5, 48, 64


@pytest.fixture(scope="module")
def scene():
    portrait, masks = render_portrait(seed=3, num_frames=T, height=H, width=W)
    background = render_background(seed=4, num_frames=T, height=H, width=W)
    return portrait, masks, background


def reference_alpha(masks: np.ndarray, radius: int) -> np.ndarray:
    """Window mean by an explicit loop over the (2r+1)^2 offsets, edges repeated (float64)."""
    padded = np.pad(masks.astype(np.float64), ((0, 0), (radius, radius), (radius, radius)), mode="edge")
    total = np.zeros(masks.shape, dtype=np.float64)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            total += padded[:, dy : dy + masks.shape[1], dx : dx + masks.shape[2]]
    return total / (2 * radius + 1) ** 2


def reference_blend(fg: np.ndarray, bg: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha.astype(np.float64)[..., None]
    return np.rint(a * fg.astype(np.float64) + (1 - a) * bg.astype(np.float64))


@pytest.mark.parametrize("radius", [0, 1, 3])
def test_feather_alpha_is_the_window_mean(scene, radius):
    _, masks, _ = scene
    alpha = feather_alpha(masks, radius)
    assert alpha.shape == masks.shape and alpha.dtype == np.float32
    np.testing.assert_allclose(alpha, reference_alpha(masks, radius), atol=1e-6)
    # deep inside the person alpha is exactly 1, far outside exactly 0, and the edge is soft
    assert (alpha == 1).sum() > 0 and (alpha == 0).sum() > 0
    if radius:
        assert ((alpha > 0) & (alpha < 1)).sum() > 0


@pytest.mark.parametrize("edit_type", EDIT_TYPES)
def test_compose_pair_matches_the_alpha_blend_formula(scene, edit_type):
    portrait, masks, background = scene
    alpha = feather_alpha(masks, 2)
    source, target = compose_pair(edit_type, portrait, alpha, background)
    expected_composite = reference_blend(portrait, background, alpha)
    expected = {
        "removal": (expected_composite, background),
        "addition": (background, expected_composite),
        "background": (portrait, expected_composite),
    }[edit_type]
    for got, want in zip((source, target), expected, strict=True):
        assert got.shape == (T, H, W, 3) and got.dtype == np.uint8
        diff = np.abs(got.astype(np.int64) - want.astype(np.int64))
        # float32 vs float64 may round a value sitting on .5 the other way: never more than 1 level
        assert diff.max() <= 1
        assert (diff > 0).mean() < 1e-3


def test_removal_target_is_the_background_and_background_keeps_the_person(scene):
    portrait, masks, background = scene
    alpha = feather_alpha(masks, 2)
    _, removal_target = compose_pair("removal", portrait, alpha, background)
    np.testing.assert_array_equal(removal_target, background)
    source, target = compose_pair("background", portrait, alpha, background)
    np.testing.assert_array_equal(source, portrait)
    inside = alpha == 1
    outside = alpha == 0
    assert inside.any() and outside.any()
    np.testing.assert_array_equal(target[inside], portrait[inside])
    np.testing.assert_array_equal(target[outside], background[outside])
    # and the person was actually placed somewhere the background differs from the portrait
    assert (portrait[inside] != background[inside]).any()


def test_blend_rejects_mismatched_shapes(scene):
    portrait, masks, background = scene
    with pytest.raises(ValueError, match="do not match"):
        blend(portrait, background[:2], feather_alpha(masks, 1))


def test_loop_indices_trim_and_mirror():
    np.testing.assert_array_equal(loop_indices(10, 4), [0, 1, 2, 3])
    np.testing.assert_array_equal(loop_indices(4, 9), [0, 1, 2, 3, 2, 1, 0, 1, 2])
    np.testing.assert_array_equal(loop_indices(1, 3), [0, 0, 0])
    with pytest.raises(ValueError):
        loop_indices(0, 3)


def test_fit_background_loops_and_covers_the_frame():
    background = render_background(seed=1, num_frames=3, height=30, width=40)
    fitted = fit_background(background, num_frames=6, height=48, width=48)
    assert fitted.shape == (6, 48, 48, 3)
    # looped back and forth: frame 4 is source frame 0 again, frame 3 is frame 1
    np.testing.assert_array_equal(fitted[4], fitted[0])
    np.testing.assert_array_equal(fitted[3], fitted[1])
    # cover then centre crop: 30x40 -> 48x64, then columns 8..56
    import torch
    import torch.nn.functional as F

    chunk = torch.from_numpy(background[:1]).permute(0, 3, 1, 2).float()
    want = F.interpolate(chunk, size=(48, 64), mode="bilinear", antialias=True).round().clamp(0, 255)
    want = want.to(torch.uint8).permute(0, 2, 3, 1).numpy()[0, :, 8:56]
    np.testing.assert_array_equal(fitted[0], want)


def test_masks_are_resized_and_cropped_like_frames():
    masks = np.zeros((2, 30, 40), dtype=bool)
    masks[:, 10:20, 15:25] = True
    fitted = resize_and_crop_masks(masks, (48, 48))
    assert fitted.shape == (2, 48, 48)
    # scale 1.6, then 8 columns cropped on the left: rows 16..32, columns 16..32
    ys, xs = np.nonzero(fitted[0])
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (16, 31, 16, 31)
    frames = np.zeros((1, 30, 40, 3), dtype=np.uint8)
    assert resize_and_crop(frames, (48, 48)).shape == (1, 48, 48, 3)
