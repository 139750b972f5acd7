"""Person segmentation through one small interface, the masks' file format, and the masks' quality gate.

:class:`PersonSegmenter` is the interface: ``segment(frames)`` takes a clip ``(T, H, W, 3)`` uint8 RGB and
returns one boolean mask per frame ``(T, H, W)``. Backends:

- ``transformers`` (default): SAM2 through transformers' official port (``Sam2VideoModel`` +
  ``Sam2VideoProcessor``), loaded with ``from_pretrained`` from a hub id (``facebook/sam2.1-hiera-large``)
  or a folder. The first frame is prompted (see :class:`SegmenterConfig`): with a fixed box or points, or
  with the person boxes of a detector (``prompt = "detector"``, one SAM2 object per box, the mask is their
  union; ``dataengine.models.detect`` finds them); the model propagates the objects through the clip.
- ``mask_files``: masks computed elsewhere (another segmenter, a matting model, hand annotation, the
  ground truth of generated clips), read from ``<clip stem>.masks.npz`` beside each clip by
  :class:`MaskFileReader`. It needs the clip's path, so it is not a ``PersonSegmenter``.

Masks are stored bit-packed in a compressed ``.npz`` (:func:`save_masks`, :func:`load_masks`): about
1/8 of a byte per pixel before compression, no pickle.

The gate (:func:`check_masks`) rejects a clip whose masks are empty on some frame (``empty_mask``),
cover too little or too much of the frame on average (``mask_too_small``, ``mask_too_large``) or jump
between consecutive frames (``mask_unstable``: IoU under the recipe's ``min_iou``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from dataengine.formats.atomic import atomic_path
from dataengine.formats.recipe import MissingInput
from dataengine.models.devices import DType, load_pretrained, resolve_device, resolve_dtype


class InputRejection(ValueError):
    """One clip's input that cannot be used (a masks or boxes file of the wrong shape, no prompt box);
    ``reason`` is the rejection reason a step records for that clip (the job goes on)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


GATE_REASONS = ("empty_mask", "mask_too_small", "mask_too_large", "mask_unstable")
MASKS_SUFFIX = ".masks.npz"
BACKENDS = ("transformers", "mask_files")
PROMPTS = ("box", "points", "detector")


# ---------------------------------------------------------------------------------------------- configs


@dataclass(frozen=True)
class SegmenterConfig:
    """Which segmenter runs and how its first frame is prompted (the ``[portraits.segmenter]`` table)."""

    backend: Literal["transformers", "mask_files"] = "transformers"
    """``transformers`` (SAM2 via ``Sam2VideoModel``) or ``mask_files`` (``<clip>.masks.npz`` beside each clip)."""
    model: str = "facebook/sam2.1-hiera-large"
    """Hub id or local folder of a transformers SAM2 video checkpoint (``Sam2VideoModel``)."""
    device: str = "auto"
    """``auto`` (CUDA when the actor has a GPU, else CPU), ``cuda``, ``cuda:1`` or ``cpu``."""
    dtype: DType = "auto"
    """Inference dtype: ``auto`` (bfloat16 on CUDA, float32 on CPU), ``float32``, ``bfloat16`` or ``float16``."""
    prompt: Literal["box", "points", "detector"] = "box"
    """First-frame prompt: ``box`` (``prompt_box``), ``points`` (``prompt_points``, all positive) or ``detector``
    (the person boxes of the ``[portraits.detector]``, whose prompt frame starts the clip window)."""
    prompt_box: tuple[float, float, float, float] = (0.2, 0.05, 0.8, 1.0)
    """The person prior as a box ``(x0, y0, x1, y1)`` in fractions of the frame: a centred, standing subject."""
    prompt_points: tuple[tuple[float, float], ...] = ((0.5, 0.35), (0.5, 0.7))
    """Positive points ``(x, y)`` in fractions of the frame (head and torso of a centred subject)."""
    mask_threshold: float = 0.0
    """Logit above which a pixel belongs to the person."""

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"segmenter.backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.prompt not in PROMPTS:
            raise ValueError(f"segmenter.prompt must be one of {PROMPTS}, got {self.prompt!r}")
        box = tuple(float(v) for v in self.prompt_box)
        if len(box) != 4 or not (0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1):
            raise ValueError(
                f"segmenter.prompt_box must be (x0, y0, x1, y1) fractions with x0<x1, y0<y1; got {box}"
            )
        object.__setattr__(self, "prompt_box", box)
        points = tuple(tuple(float(v) for v in p) for p in self.prompt_points)
        if not points or any(len(p) != 2 or not all(0 <= v <= 1 for v in p) for p in points):
            raise ValueError(f"segmenter.prompt_points must be (x, y) fractions in [0, 1]; got {points}")
        object.__setattr__(self, "prompt_points", points)


@dataclass(frozen=True)
class GateConfig:
    """When a clip's masks are good enough to composite (the ``[portraits.gate]`` table)."""

    min_area: float = 0.03
    """Smallest mean fraction of the frame the person may cover (else ``mask_too_small``)."""
    max_area: float = 0.7
    """Largest mean fraction of the frame the person may cover (else ``mask_too_large``)."""
    min_iou: float = 0.6
    """Smallest IoU allowed between the masks of consecutive frames (else ``mask_unstable``)."""

    def __post_init__(self) -> None:
        if not 0 <= self.min_area < self.max_area <= 1:
            raise ValueError(
                f"gate: need 0 <= min_area < max_area <= 1, got {self.min_area}, {self.max_area}"
            )
        if not 0 <= self.min_iou <= 1:
            raise ValueError(f"gate.min_iou must be in [0, 1], got {self.min_iou}")


# ---------------------------------------------------------------------------------------------- masks on disk


def save_masks(path: str | os.PathLike, masks: np.ndarray) -> None:
    """Write boolean masks (T, H, W) bit-packed into a compressed ``.npz``, atomically."""
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"save_masks({path}): expected (T, H, W) masks, got shape {masks.shape}")
    with atomic_path(path, keep_suffix=True) as tmp:  # np.savez keeps a name that ends in .npz
        np.savez_compressed(tmp, bits=np.packbits(masks.astype(bool), axis=-1), shape=np.asarray(masks.shape))


def load_masks(path: str | os.PathLike) -> np.ndarray:
    """Read masks written by :func:`save_masks`: (T, H, W) bool."""
    path = Path(path)
    if not path.exists():
        raise MissingInput(f"masks not found: {path}")
    with np.load(path, allow_pickle=False) as data:
        if "bits" not in data or "shape" not in data:
            raise InputRejection(
                "bad_masks_file", f"{path} is not a masks file: expected arrays 'bits' and 'shape'"
            )
        num_frames, height, width = (int(v) for v in data["shape"])
        return (
            np.unpackbits(data["bits"], axis=-1, count=width).astype(bool).reshape(num_frames, height, width)
        )


# ---------------------------------------------------------------------------------------------- the gate


@dataclass(frozen=True)
class MaskVerdict:
    """What the gate says of one clip's masks."""

    reason: str | None
    """``None`` when accepted, else one of ``GATE_REASONS``."""
    detail: str
    """The numbers behind the verdict, for the rejections file."""
    mean_area: float
    min_iou: float


def consecutive_iou(masks: np.ndarray) -> np.ndarray:
    """IoU of frame i and frame i + 1 masks, (T - 1,); two empty masks count as IoU 1."""
    masks = masks.reshape(masks.shape[0], -1).astype(bool)
    inter = np.logical_and(masks[1:], masks[:-1]).sum(axis=1)
    union = np.logical_or(masks[1:], masks[:-1]).sum(axis=1)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def check_masks(masks: np.ndarray, gate: GateConfig) -> MaskVerdict:
    """Apply the gate to masks (T, H, W): the first failing check gives the reason, in ``GATE_REASONS`` order."""
    masks = np.asarray(masks).astype(bool)
    areas = masks.reshape(masks.shape[0], -1).mean(axis=1)
    mean_area = float(areas.mean())
    ious = consecutive_iou(masks)
    min_iou = float(ious.min()) if ious.size else 1.0
    numbers = f"mean area {mean_area:.4f}, min consecutive IoU {min_iou:.3f}"
    empty = np.flatnonzero(areas == 0)
    if empty.size:
        return MaskVerdict(
            "empty_mask",
            f"no person pixel on {empty.size} of {len(areas)} frames (first: {empty[0]}); {numbers}",
            mean_area,
            min_iou,
        )
    if mean_area < gate.min_area:
        return MaskVerdict(
            "mask_too_small", f"mean area {mean_area:.4f} < min_area {gate.min_area}", mean_area, min_iou
        )
    if mean_area > gate.max_area:
        return MaskVerdict(
            "mask_too_large", f"mean area {mean_area:.4f} > max_area {gate.max_area}", mean_area, min_iou
        )
    if min_iou < gate.min_iou:
        worst = int(np.argmin(ious))
        return MaskVerdict(
            "mask_unstable",
            f"IoU of frames {worst} and {worst + 1} is {min_iou:.3f} < min_iou {gate.min_iou}",
            mean_area,
            min_iou,
        )
    return MaskVerdict(None, numbers, mean_area, min_iou)


# ---------------------------------------------------------------------------------------------- backends


Box = tuple[float, float, float, float]


class PersonSegmenter(Protocol):
    """Frames in, one person mask per frame out."""

    def segment(self, frames: np.ndarray, boxes: Sequence[Box] | None = None) -> np.ndarray:
        """``frames`` (T, H, W, 3) uint8 RGB -> masks (T, H, W) bool; ``boxes`` prompt frame 0 in pixels."""
        ...


class Sam2VideoSegmenter:
    """SAM2 via transformers: prompt frame 0 (the config's box or points, or given person boxes), propagate.

    The model and processor load once, in the constructor: build it inside the worker (a Ray actor),
    never in the driver.
    """

    def __init__(self, config: SegmenterConfig):
        import torch
        from transformers import Sam2VideoModel, Sam2VideoProcessor

        self.config = config
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype, self.device)
        self.processor, self.model = load_pretrained(
            Sam2VideoProcessor, Sam2VideoModel, config.model, self.dtype, self.device,
            what="SAM2",
            expected="a transformers SAM2 video checkpoint (hub id like facebook/sam2.1-hiera-large, or a folder with "
            "config.json and processor_config.json)",
        )  # fmt: skip
        self._torch = torch

    def prompt_for(self, height: int, width: int, boxes: Sequence[Box] | None = None) -> dict:
        """Frame 0's prompt in pixels, as ``add_inputs_to_inference_session`` keywords (``obj_ids`` included).

        ``boxes`` (pixels ``(x0, y0, x1, y1)``, from a detector) prompt one object each; without them the
        config's fixed box or points prompt one object.
        """
        if boxes is not None:
            if not boxes:
                raise InputRejection(
                    "no_prompt_box", "segment: an empty list of prompt boxes (the detector found no person)"
                )
            return {
                "obj_ids": list(range(1, len(boxes) + 1)),
                "input_boxes": [[[float(v) for v in box] for box in boxes]],
            }
        if self.config.prompt == "detector":
            raise ValueError('segmenter.prompt = "detector" needs the detector\'s boxes; none were given')
        if self.config.prompt == "box":
            x0, y0, x1, y1 = self.config.prompt_box
            return {"obj_ids": 1, "input_boxes": [[[x0 * width, y0 * height, x1 * width, y1 * height]]]}
        points = [[x * width, y * height] for x, y in self.config.prompt_points]
        return {"obj_ids": 1, "input_points": [[points]], "input_labels": [[[1] * len(points)]]}

    def segment(self, frames: np.ndarray, boxes: Sequence[Box] | None = None) -> np.ndarray:
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"segment: expected (T, H, W, 3) frames, got {frames.shape}")
        num_frames, height, width, _ = frames.shape
        prompt = self.prompt_for(height, width, boxes)
        masks = np.zeros((num_frames, height, width), dtype=bool)
        with self._torch.inference_mode():
            session = self.processor.init_video_session(
                video=list(frames), inference_device=self.device, dtype=self.dtype
            )
            self.processor.add_inputs_to_inference_session(inference_session=session, frame_idx=0, **prompt)
            for output in self.model.propagate_in_video_iterator(
                inference_session=session, start_frame_idx=0
            ):
                logits = self.processor.post_process_masks(
                    [output.pred_masks.float()], original_sizes=[[height, width]], binarize=False
                )[0]  # (num_objects, 1, H, W)
                person = (logits[:, 0] > self.config.mask_threshold).any(dim=0)  # union of the objects
                masks[output.frame_idx] = person.cpu().numpy()
        return masks


class MaskFileReader:
    """Precomputed masks: ``<clip stem>.masks.npz`` beside each clip, (T, H, W) at the clip's own frames and size."""

    def masks_path(self, clip_path: str | os.PathLike) -> Path:
        clip_path = Path(clip_path)
        return clip_path.with_name(clip_path.stem + MASKS_SUFFIX)

    def read(self, clip_path: str | os.PathLike, num_frames: int, height: int, width: int) -> np.ndarray:
        """The clip's masks, checked against its frame count and size."""
        path = self.masks_path(clip_path)
        if not path.exists():
            raise MissingInput(
                f"segmenter.backend = mask_files but {path} does not exist (masks of {clip_path})"
            )
        masks = load_masks(path)
        if masks.shape != (num_frames, height, width):
            raise InputRejection(
                "bad_masks_file",
                f"{path} holds masks of shape {masks.shape} but {clip_path} has {num_frames} frames of {width}x{height}",
            )
        return masks


def build_segmenter(config: SegmenterConfig) -> PersonSegmenter:
    """The model backend named by ``config.backend`` (loads the model: call it in the worker)."""
    if config.backend == "transformers":
        return Sam2VideoSegmenter(config)
    raise ValueError(
        f"segmenter.backend {config.backend!r} has no model to build (mask_files reads files instead)"
    )
