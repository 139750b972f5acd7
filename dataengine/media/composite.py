"""Compositing a segmented person onto a background clip: pure numpy/torch functions, no model.

Shapes: frames ``(T, H, W, 3)`` uint8 RGB, masks ``(T, H, W)`` bool, alpha ``(T, H, W)`` float32 in [0, 1].

- :func:`feather_alpha`: a soft edge: the mask averaged over a ``(2r+1) x (2r+1)`` window (integer counts,
  so alpha is exactly 1 where the whole window is person and exactly 0 where none of it is).
- resizing to cover ``(height, width)`` then centre cropping is :func:`dataengine.media.clips.resize_and_crop`
  (frames) and :func:`dataengine.media.clips.resize_and_crop_masks` (masks), shared with the shards step.
- :func:`loop_indices`: a background shorter than the portrait is looped back and forth (no jump cut);
  a longer one is trimmed.
- :func:`blend`: ``round(alpha * foreground + (1 - alpha) * background)``.
- :func:`compose_pair`: the three edit types, frame-aligned (frame i of source and target is the same moment):

  ============== =================================== ===================================
  edit type      source                              target
  ============== =================================== ===================================
  ``removal``    the person over background B        background B
  ``addition``   background B                        the person over background B
  ``background`` the original portrait clip          the person over background B
  ============== =================================== ===================================
"""

from __future__ import annotations

import numpy as np

EDIT_TYPES = ("removal", "addition", "background")


def feather_alpha(masks: np.ndarray, radius: int) -> np.ndarray:
    """Soft alpha (T, H, W) float32: the fraction of person pixels in the (2r+1)^2 window around each pixel.

    The frame border is extended by repeating the edge pixels. ``radius = 0`` gives the mask itself.
    """
    masks = np.asarray(masks).astype(bool)
    if masks.ndim != 3:
        raise ValueError(f"feather_alpha: expected (T, H, W) masks, got {masks.shape}")
    if radius < 0:
        raise ValueError(f"feather_alpha: radius must be >= 0, got {radius}")
    if radius == 0:
        return masks.astype(np.float32)
    k = 2 * radius + 1
    padded = np.pad(masks.astype(np.int32), ((0, 0), (radius, radius), (radius, radius)), mode="edge")
    # window sums by cumulative sums along H then W (exact integer counts)
    cum = np.cumsum(np.pad(padded, ((0, 0), (1, 0), (0, 0))), axis=1)
    rows = cum[:, k:, :] - cum[:, :-k, :]  # (T, H, W + 2r)
    cum = np.cumsum(np.pad(rows, ((0, 0), (0, 0), (1, 0))), axis=2)
    counts = cum[:, :, k:] - cum[:, :, :-k]  # (T, H, W)
    return (counts / np.float32(k * k)).astype(np.float32)


def loop_indices(num_available: int, num_frames: int) -> np.ndarray:
    """Indices of ``num_frames`` frames from a ``num_available``-frame clip: trimmed, or looped back and forth.

    E.g. 4 available, 9 wanted: 0 1 2 3 2 1 0 1 2.
    """
    if num_available < 1 or num_frames < 1:
        raise ValueError(
            f"loop_indices: need at least one frame, got {num_available} available, {num_frames} wanted"
        )
    if num_available == 1:
        return np.zeros(num_frames, dtype=np.int64)
    period = 2 * (num_available - 1)
    phase = np.arange(num_frames) % period
    return np.where(phase < num_available, phase, period - phase).astype(np.int64)


def fit_background(background: np.ndarray, num_frames: int, height: int, width: int) -> np.ndarray:
    """A background clip looped or trimmed to ``num_frames`` and fitted to ``height x width``."""
    background = np.asarray(background)
    from dataengine.media.clips import resize_and_crop

    return resize_and_crop(background[loop_indices(background.shape[0], num_frames)], (height, width))


def blend(foreground: np.ndarray, background: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``round(alpha * foreground + (1 - alpha) * background)`` per pixel and channel, uint8 (T, H, W, 3)."""
    if foreground.shape != background.shape or foreground.shape[:3] != alpha.shape:
        raise ValueError(
            f"blend: foreground {foreground.shape}, background {background.shape} and alpha {alpha.shape} do not match"
        )
    out = np.empty_like(foreground, dtype=np.uint8)
    for t in range(foreground.shape[0]):  # frame by frame keeps the float32 working set small
        a = alpha[t, :, :, None]
        mixed = a * foreground[t].astype(np.float32) + (1.0 - a) * background[t].astype(np.float32)
        out[t] = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
    return out


def compose_pair(
    edit_type: str, portrait: np.ndarray, alpha: np.ndarray, background: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(source, target) frames of one edit type; all inputs already share (T, H, W)."""
    if edit_type not in EDIT_TYPES:
        raise ValueError(f"unknown edit type {edit_type!r}; expected one of {EDIT_TYPES}")
    if portrait.shape != background.shape:
        raise ValueError(f"compose_pair: portrait {portrait.shape} and background {background.shape} differ")
    composite = blend(portrait, background, alpha)
    if edit_type == "removal":
        return composite, background
    if edit_type == "addition":
        return background, composite
    return portrait, composite
