"""Clip preparation: the frames the model trains on, decoded with decord and fitted to a resolution bucket.

:func:`plan_clip` is the one trainability check: from two probed videos (or a manifest row's numbers) it
decides whether a pair can become a training sample under a ``[shards.clip]`` recipe and how (frame
indices, frame rate, resolution bucket, latent shape), or rejects it. The filter's probe, the shard plan,
the shard step's decoder and ``trainer sample`` all call it, so a pair the filter keeps is a pair the
shards step encodes.

A clip has the longest ``4n + 1`` frames (the Wan VAE's causal first frame plus groups of four) its video
gives at the recipe's rate, at most ``num_frames`` and at least ``min_frames``: clips of different lengths
land in different latent-shape buckets, which the trainer batches one at a time. A pair's source and target
are sampled at the SAME frame indices and both are resized to cover the bucket nearest in aspect ratio,
then centre cropped to it, so pixel (t, y, x) of the source and of the target stay aligned. The reference
is the target's first prepared frame unless the manifest gives a ``reference_path`` (a PNG prepared the
same way).

Every failure is a :class:`ClipRejection` with one of ``REJECTION_REASONS``, never a crash.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from dataengine.media.video import VideoError, VideoInfo, probe, read_frames, sample_indices

# The latents' geometry (the Wan VAE's): channels, and a causal first frame plus one latent frame per 4
# frames, stride 8 in space. Clip arithmetic: the VAE encoder (``dataengine.models.vae``) imports it from here.
LATENT_CHANNELS = 16
TEMPORAL_STRIDE = 4
SPATIAL_STRIDE = 8


def latent_shape(num_frames: int, height: int, width: int) -> tuple[int, int, int]:
    """``(T', H', W')`` of a clip: the Wan VAE's causal first frame plus one latent frame per 4, stride 8."""
    if (num_frames - 1) % TEMPORAL_STRIDE or height % SPATIAL_STRIDE or width % SPATIAL_STRIDE:
        raise ValueError(
            f"a {num_frames}x{height}x{width} clip does not fit the Wan VAE: frames must be 4n + 1 "
            "and height and width multiples of 8"
        )
    return 1 + (num_frames - 1) // TEMPORAL_STRIDE, height // SPATIAL_STRIDE, width // SPATIAL_STRIDE


REJECTION_REASONS = (
    "missing_file",  # a source, target or reference file does not exist
    "undecodable",  # a file exists but cannot be decoded
    "too_short",  # fewer frames at the recipe's rate than the recipe's min_frames
    "too_small",  # fitting the bucket would upscale beyond ``max_upscale``
    "misaligned",  # source and target differ in fps, frame count or aspect ratio beyond the tolerances
    "manifest_mismatch",  # the decoded video does not match the manifest row the shard plan was made from
)


class ClipRejection(Exception):
    """A pair that cannot be prepared; ``reason`` is one of ``REJECTION_REASONS``."""

    def __init__(self, reason: str, detail: str):
        assert reason in REJECTION_REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ClipConfig:
    """How a pair's videos become the clips the model trains on (the ``[shards.clip]`` recipe table)."""

    num_frames: int = 81
    """The longest clip, in frames; must be ``4n + 1`` (the Wan VAE's causal first frame plus groups of 4)."""
    min_frames: int = 0
    """The shortest clip (``4n + 1``): a video with fewer than ``num_frames`` frames at the clip's rate gives
    the longest ``4n + 1`` it has, down to this; fewer is ``too_short``. 0: ``num_frames`` (one length)."""
    fps: float = 16.0
    """Frame rate the clip is resampled to (nearest frame); 0 keeps consecutive frames at the native rate."""
    short_clip_fps: Literal["fps", "native"] = "fps"
    """A video too short for ``num_frames`` frames at ``fps``: ``"fps"`` takes fewer frames at ``fps``;
    ``"native"`` takes consecutive frames at its own rate when that gives more (``fps`` when a clip is long
    enough, its native rate otherwise)."""
    buckets: tuple[tuple[int, int], ...] = ((720, 1280), (1280, 720), (960, 960))
    """Resolution buckets as ``(height, width)``, each a multiple of 16; a clip goes to the nearest aspect ratio."""
    max_upscale: float = 1.0
    """Largest resize factor allowed to cover a bucket; a smaller clip is rejected as ``too_small``."""
    max_frame_difference: int = 0
    """How many frames the source and target frame counts may differ by and still be aligned."""
    max_aspect_difference: float = 0.01
    """Relative aspect-ratio difference between source and target tolerated (both are fitted to one bucket)."""

    def __post_init__(self) -> None:
        if self.num_frames < 1 or (self.num_frames - 1) % 4:
            raise ValueError(f"clip.num_frames must be 4n + 1 (e.g. 17, 81), got {self.num_frames}")
        if self.min_frames and (self.min_frames < 1 or (self.min_frames - 1) % 4):
            raise ValueError(f"clip.min_frames must be 4n + 1 (e.g. 33, 65) or 0, got {self.min_frames}")
        if self.min_frames > self.num_frames:
            raise ValueError(
                f"clip.min_frames ({self.min_frames}) is more than clip.num_frames ({self.num_frames})"
            )
        if self.fps < 0:
            raise ValueError(f"clip.fps must be positive (or 0 for the native rate), got {self.fps}")
        if not self.buckets:
            raise ValueError("clip.buckets is empty: give at least one (height, width)")
        buckets = tuple(tuple(int(v) for v in b) for b in self.buckets)
        for bucket in buckets:
            if len(bucket) != 2 or bucket[0] % 16 or bucket[1] % 16 or min(bucket) <= 0:
                raise ValueError(
                    f"clip.buckets: {list(bucket)} is not a (height, width) pair of multiples of 16"
                )
        if len(set(buckets)) != len(buckets):
            raise ValueError(f"clip.buckets has duplicates: {[list(b) for b in buckets]}")
        object.__setattr__(self, "buckets", buckets)
        if self.max_upscale < 1.0:
            raise ValueError(f"clip.max_upscale must be >= 1.0, got {self.max_upscale}")

    @property
    def shortest(self) -> int:
        """The fewest frames a clip may have (``min_frames``, or ``num_frames`` when it is 0)."""
        return self.min_frames or self.num_frames

    @property
    def frame_counts(self) -> tuple[int, ...]:
        """Every clip length this recipe can produce, longest first."""
        return tuple(range(self.num_frames, self.shortest - 1, -4))


@dataclass(frozen=True)
class ClipPlan:
    """How a pair becomes a training clip (:func:`plan_clip`): which frames, at what rate, in which bucket."""

    indices: np.ndarray = field(repr=False)  # frame indices into the source and target videos
    fps: float  # frame rate of the prepared clip
    bucket: tuple[int, int]  # (H, W) the frames are fitted to

    @property
    def num_frames(self) -> int:
        return len(self.indices)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(T', H', W') of the clip's Wan VAE latents: the shard bucket it lands in."""

        return latent_shape(self.num_frames, *self.bucket)


@dataclass
class PreparedPair:
    """A pair's aligned clips, ready for the VAE and the VLM."""

    source: np.ndarray  # (T, H, W, 3) uint8
    target: np.ndarray  # (T, H, W, 3) uint8
    reference: np.ndarray  # (H, W, 3) uint8
    bucket: tuple[int, int]  # (H, W)
    fps: float  # frame rate of the prepared clips
    frame_indices: np.ndarray = field(repr=False)  # indices into the source/target videos


def choose_bucket(height: int, width: int, buckets: tuple[tuple[int, int], ...]) -> tuple[int, int]:
    """The bucket nearest in aspect ratio (log distance); ties go to the first listed."""
    if height <= 0 or width <= 0:
        raise ValueError(f"invalid size {width}x{height}")
    ratio = math.log(width / height)
    return min(buckets, key=lambda b: abs(math.log(b[1] / b[0]) - ratio))


def cover_size(height: int, width: int, bucket: tuple[int, int]) -> tuple[int, int, float]:
    """``(h, w, scale)``: the smallest resize of ``height x width`` (aspect kept) that covers ``bucket``."""
    scale = max(bucket[0] / height, bucket[1] / width)
    return max(bucket[0], round(height * scale)), max(bucket[1], round(width * scale)), scale


def centre_crop(array: np.ndarray, bucket: tuple[int, int]) -> np.ndarray:
    """The centre ``bucket`` (height, width) of ``array`` (T, H, W, ...); the extra row or column goes right/down."""
    height, width = array.shape[1:3]
    top, left = (height - bucket[0]) // 2, (width - bucket[1]) // 2
    return array[:, top : top + bucket[0], left : left + bucket[1]]


def resize_and_crop(frames: np.ndarray, bucket: tuple[int, int], chunk: int = 16) -> np.ndarray:
    """Resize ``frames`` (T, H, W, 3) uint8 to cover ``bucket`` (antialiased bilinear), then centre crop.

    The one resize of the project: clips for the shards, portrait and background clips for compositing,
    the source of ``trainer sample``. No resampling when the frames already have the bucket's size.
    """
    import torch
    import torch.nn.functional as F

    frames = np.asarray(frames)
    num_frames, height, width, _ = frames.shape
    new_h, new_w, _ = cover_size(height, width, bucket)
    if (new_h, new_w) == (height, width):
        return np.ascontiguousarray(centre_crop(frames, bucket))
    out = np.empty((num_frames, *bucket, 3), np.uint8)
    for start in range(0, num_frames, chunk):  # chunks bound the float32 copy at 720P
        x = torch.from_numpy(np.ascontiguousarray(frames[start : start + chunk])).permute(0, 3, 1, 2).float()
        x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)
        x = x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        out[start : start + chunk] = centre_crop(x, bucket)
    return out


def resize_and_crop_masks(masks: np.ndarray, bucket: tuple[int, int]) -> np.ndarray:
    """Masks (T, H, W) bool resized (nearest) and cropped exactly as :func:`resize_and_crop` does frames."""
    import torch
    import torch.nn.functional as F

    masks = np.asarray(masks).astype(bool)
    new_h, new_w, _ = cover_size(masks.shape[1], masks.shape[2], bucket)
    if (new_h, new_w) == masks.shape[1:3]:
        return np.ascontiguousarray(centre_crop(masks, bucket))
    resized = F.interpolate(
        torch.from_numpy(masks[:, None].astype(np.uint8)), size=(new_h, new_w), mode="nearest-exact"
    )
    return np.ascontiguousarray(centre_crop(resized[:, 0].numpy().astype(bool), bucket))


def resize_and_crop_box(
    box: tuple[float, float, float, float], height: int, width: int, bucket: tuple[int, int]
) -> tuple[float, float, float, float]:
    """A box ``(x0, y0, x1, y1)`` in pixels of a ``height x width`` frame, moved the way :func:`resize_and_crop`
    moves the frame's pixels (resize to cover, centre crop) and clipped to the ``bucket`` (height, width)."""
    new_h, new_w, _ = cover_size(height, width, bucket)
    top, left = (new_h - bucket[0]) // 2, (new_w - bucket[1]) // 2
    sx, sy = new_w / width, new_h / height
    x0, y0, x1, y1 = box
    return (
        min(max(x0 * sx - left, 0.0), bucket[1]),
        min(max(y0 * sy - top, 0.0), bucket[0]),
        min(max(x1 * sx - left, 0.0), bucket[1]),
        min(max(y1 * sy - top, 0.0), bucket[0]),
    )


def longest_clip(available: int) -> int:
    """The most frames of the form ``4n + 1`` that ``available`` frames hold (0 when there are none)."""
    return 1 + 4 * ((available - 1) // 4) if available >= 1 else 0


def clip_frames(info: VideoInfo, config: ClipConfig) -> tuple[np.ndarray, float]:
    """The frame indices (from the start) and the frame rate of the clip a video gives, or ``too_short``.

    At ``config.fps`` (or the native rate when it is 0) the video holds some number of frames (the ticks
    within its duration: :func:`dataengine.media.video.frames_at_rate`); the clip is the longest ``4n + 1`` of them,
    at most ``num_frames``. With ``short_clip_fps = "native"``, a video too
    short for ``num_frames`` at ``fps`` but denser than ``fps`` is taken at its native rate instead, when
    that gives more frames. Fewer than ``min_frames`` (``num_frames`` when 0) is ``too_short``."""
    native = np.arange(min(info.num_frames, config.num_frames))
    if not config.fps:
        indices, fps = native, info.fps
    else:
        indices = sample_indices(info.num_frames, info.fps, config.fps, max_frames=config.num_frames)
        fps = float(config.fps)
        if (
            len(indices) < config.num_frames
            and config.short_clip_fps == "native"
            and info.fps > config.fps
            and len(native) > len(indices)
        ):
            indices, fps = native, info.fps
    count = longest_clip(len(indices))
    if count < config.shortest:
        need = f"{config.shortest}" if config.shortest == config.num_frames else f"at least {config.shortest}"
        raise ClipRejection(
            "too_short",
            f"{info.num_frames} frames at {info.fps:g} fps give {len(indices)} at {fps:g} fps; need {need}",
        )
    return indices[:count], fps


def check_alignment(source: VideoInfo, target: VideoInfo, config: ClipConfig) -> None:
    """Raise ``misaligned`` when the target cannot be sampled at the source's indices and fitted alike."""
    if abs(source.fps - target.fps) > 0.01 * source.fps:
        raise ClipRejection("misaligned", f"source at {source.fps:g} fps, target at {target.fps:g} fps")
    if abs(source.num_frames - target.num_frames) > config.max_frame_difference:
        raise ClipRejection(
            "misaligned",
            f"source has {source.num_frames} frames, target {target.num_frames} "
            f"(max_frame_difference={config.max_frame_difference})",
        )
    src_ratio, tgt_ratio = source.width / source.height, target.width / target.height
    if abs(src_ratio / tgt_ratio - 1.0) > config.max_aspect_difference:
        raise ClipRejection(
            "misaligned",
            f"source is {source.width}x{source.height}, target {target.width}x{target.height}: aspect ratios differ",
        )


def plan_clip(source: VideoInfo, target: VideoInfo | None, config: ClipConfig) -> ClipPlan:
    """Whether a pair can become a training sample under ``config``, and how; else a :class:`ClipRejection`.

    The one trainability check (the filter's probe, the shard plan, the shard step's decoder and ``trainer
    sample`` call it): source and target aligned (fps, frame count, aspect ratio within the tolerances), long
    enough (:func:`clip_frames`), and large enough for their bucket without upscaling beyond
    ``max_upscale``. ``target`` None checks the source alone (a manifest row's numbers, a video to edit)."""
    target = source if target is None else target
    for role, info in (("source", source), ("target", target)):
        if info.num_frames <= 0 or info.fps <= 0 or info.width <= 0 or info.height <= 0:
            raise ClipRejection("undecodable", f"{role} has no valid size, fps or frame count: {info}")
    check_alignment(source, target, config)
    indices, fps = clip_frames(source, config)
    if indices.max() >= target.num_frames:
        raise ClipRejection(
            "misaligned", f"target has {target.num_frames} frames, need index {indices.max()}"
        )
    bucket = choose_bucket(source.height, source.width, config.buckets)
    for role, info in (("source", source), ("target", target)):
        scale = cover_size(info.height, info.width, bucket)[2]
        if scale > config.max_upscale:
            raise ClipRejection(
                "too_small",
                f"{role} is {info.width}x{info.height}: bucket {bucket[0]}x{bucket[1]} needs a {scale:.2f}x "
                f"upscale (max_upscale={config.max_upscale})",
            )
    return ClipPlan(indices, fps, bucket)


def load_reference(path: str | os.PathLike) -> np.ndarray:
    """Read a reference image (PNG or any PIL format) as (H, W, 3) uint8 RGB, or reject it."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise ClipRejection("missing_file", f"reference image missing: {path}")
    try:
        with Image.open(path) as image:
            return np.array(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise ClipRejection("undecodable", f"reference image {path}: {err}") from err


def _probe(path: str | os.PathLike, role: str) -> VideoInfo:
    try:
        return probe(path)
    except VideoError as err:
        raise ClipRejection(err.reason, f"{role} video {err.path}: {err.detail}") from err


def prepare_pair(
    source_path: str | os.PathLike,
    target_path: str | os.PathLike,
    reference_path: str | os.PathLike | None,
    config: ClipConfig,
    expected_shape: tuple[int, int, int] | None = None,
) -> PreparedPair:
    """Decode, sample and fit a pair's source, target and reference; raise :class:`ClipRejection` if impossible.

    ``expected_shape`` is the latent shape (T', H', W') the shard plan assigned from the manifest's numbers;
    decoded videos that give another one are a ``manifest_mismatch``.
    """
    plan = plan_clip(_probe(source_path, "source"), _probe(target_path, "target"), config)
    if expected_shape is not None and tuple(expected_shape) != plan.latent_shape:
        raise ClipRejection(
            "manifest_mismatch",
            f"source {source_path} gives a {plan.num_frames}-frame {plan.bucket[1]}x{plan.bucket[0]} clip "
            f"(latents {plan.latent_shape}); the manifest's numbers gave latents {tuple(expected_shape)}",
        )
    try:
        source = read_frames(source_path, plan.indices)
        target = read_frames(target_path, plan.indices)
    except VideoError as err:
        raise ClipRejection(err.reason, f"{err.path}: {err.detail}") from err
    source = resize_and_crop(source, plan.bucket)
    target = resize_and_crop(target, plan.bucket)
    if reference_path is not None and str(reference_path) != "":
        reference = resize_and_crop(load_reference(reference_path)[None], plan.bucket)[0]
    else:
        reference = target[0].copy()
    return PreparedPair(source, target, reference, plan.bucket, plan.fps, plan.indices)


def prepare_frames(
    source_path: str | os.PathLike,
    target_path: str | os.PathLike,
    reference_path: str | os.PathLike | None,
    frame_indices: np.ndarray | list[int],
    positions: np.ndarray | list[int],
    bucket: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray]:
    """Some frames of a pair :func:`prepare_pair` accepted, decoding only those: the prepared source frames at
    ``positions`` (indices into the prepared clip, whose video indices are ``frame_indices``) and the
    reference. Equal to ``pair.source[positions]`` and ``pair.reference``, for a stage that needs a few frames."""
    indices = np.asarray(frame_indices)[np.asarray(positions)]
    try:
        source = resize_and_crop(read_frames(source_path, indices), bucket)
        if reference_path is not None and str(reference_path) != "":
            reference = resize_and_crop(load_reference(reference_path)[None], bucket)[0]
        else:
            reference = resize_and_crop(read_frames(target_path, [int(frame_indices[0])]), bucket)[0]
    except VideoError as err:
        raise ClipRejection(err.reason, f"{err.path}: {err.detail}") from err
    return source, reference
