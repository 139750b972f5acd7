"""Finding the person: a detector on a few sampled frames of a clip, and the decisions made from its boxes.

Backends (``[portraits.detector] backend``), both read a clip's frames at given indices
(:meth:`detect_clip`) and return the person boxes of each frame:

- ``transformers`` (default): a COCO object detector through transformers' ``AutoModelForObjectDetection``
  + ``AutoImageProcessor``, loaded with ``from_pretrained`` from a hub id (``PekingU/rtdetr_v2_r50vd``,
  RT-DETRv2) or a folder; the boxes of its ``person`` class (``person_label``) are kept. The frames run in
  batches of ``batch_size``. Built once per worker, in the same Ray actor as SAM2.
- ``boxes_file``: boxes computed elsewhere (another detector, annotation, the ground truth of generated
  clips), read from ``<clip stem>.boxes.json`` beside each clip (:func:`save_boxes`, :func:`load_boxes`).

The decisions are pure functions of the boxes (tests give them detections, no model):

- :func:`choose_prompt`: the SAM2 prompt of a portrait. The prompt frame is the first sampled frame with a
  confident (``score >= threshold``) person covering at least ``min_box_area`` of the frame; the clip
  window (``num_frames`` at ``fps``) starts there. With several such people the ``policy`` keeps the
  largest, prompts one object per person (the mask is their union), or rejects the clip
  (``multiple_people``). No confident person: ``no_person``; only small ones: ``person_too_small``. Each
  detail names the frame (its index in the video and its time).
- :func:`classify_frame` and :func:`find_window`: the harvest. A sampled frame is ``person`` (exactly one
  confident person, large enough; smaller confident ones are ignored), ``empty`` (no person box scoring
  ``background_threshold`` or more), or it is neither (``multiple_people``, ``person_too_small``,
  ``uncertain``). A *portrait window* is a window whose sampled frames are all ``person``, a *background
  window* one whose sampled frames are all ``empty``; the earliest portrait window wins, else the earliest
  background window, else the clip is rejected with the reason that blocked it.

Boxes are ``(x0, y0, x1, y1)`` in pixels of the video's own frames, clipped to the frame.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from dataengine.formats.atomic import write_text
from dataengine.formats.recipe import MissingInput
from dataengine.media.video import VideoInfo, read_frames, sample_indices
from dataengine.models.devices import DType, load_pretrained, resolve_device, resolve_dtype
from dataengine.models.segment import InputRejection

BACKENDS = ("transformers", "boxes_file")
POLICIES = ("largest", "union", "reject")
PROMPT_REASONS = ("no_person", "multiple_people", "person_too_small")
FRAME_KINDS = ("person", "empty", "multiple_people", "person_too_small", "uncertain")
WINDOW_REASONS = ("too_short", "multiple_people", "person_too_small", "no_window")
BOXES_SUFFIX = ".boxes.json"


# ---------------------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class DetectorConfig:
    """The person detector, how its boxes are read, and the prompt policy (the ``[portraits.detector]`` table)."""

    backend: Literal["transformers", "boxes_file"] = "transformers"
    """``transformers`` (a COCO detector via ``AutoModelForObjectDetection``) or ``boxes_file``
    (``<clip>.boxes.json`` beside each clip)."""
    model: str = "PekingU/rtdetr_v2_r50vd"
    """Hub id or local folder of a transformers object-detection checkpoint with a person class."""
    person_label: str = "person"
    """The class name (in the model's ``id2label``, any case) whose boxes are people."""
    threshold: float = 0.5
    """Score from which a person box counts as a person."""
    background_threshold: float = 0.2
    """A frame is empty (background) only when no person box scores this much or more."""
    min_box_area: float = 0.02
    """Smallest fraction of the frame a person's box may cover (else ``person_too_small``)."""
    policy: Literal["largest", "union", "reject"] = "largest"
    """Several people at the prompt frame: ``largest`` (prompt the largest), ``union`` (one SAM2 object per
    person, the mask is their union) or ``reject`` (``multiple_people``)."""
    sample_fps: float = 2.0
    """Frames per second of the clip the detector looks at (nearest frames)."""
    batch_size: int = 16
    """Frames per detector forward."""
    device: str = "auto"
    """``auto`` (CUDA when the actor has a GPU, else CPU), ``cuda``, ``cuda:1`` or ``cpu``."""
    dtype: DType = "auto"
    """Inference dtype: ``auto`` (bfloat16 on CUDA, float32 on CPU), ``float32``, ``bfloat16`` or ``float16``."""

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"detector.backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.policy not in POLICIES:
            raise ValueError(f"detector.policy must be one of {POLICIES}, got {self.policy!r}")
        if not 0 <= self.background_threshold <= self.threshold <= 1:
            raise ValueError(
                "detector: need 0 <= background_threshold <= threshold <= 1, got "
                f"{self.background_threshold}, {self.threshold}"
            )
        if not 0 <= self.min_box_area <= 1:
            raise ValueError(f"detector.min_box_area must be in [0, 1], got {self.min_box_area}")
        if self.sample_fps <= 0:
            raise ValueError(f"detector.sample_fps must be positive, got {self.sample_fps}")
        if self.batch_size < 1:
            raise ValueError(f"detector.batch_size must be >= 1, got {self.batch_size}")


# ---------------------------------------------------------------------------------------------- detections


@dataclass(frozen=True)
class PersonBox:
    """One person box in pixels of the frame it was found in, and the detector's score."""

    x0: float
    y0: float
    x1: float
    y1: float
    score: float

    @classmethod
    def clipped(cls, box: Sequence[float], score: float, height: int, width: int) -> PersonBox:
        x0, y0, x1, y1 = (float(v) for v in box)
        return cls(
            min(max(x0, 0.0), width),
            min(max(y0, 0.0), height),
            min(max(x1, 0.0), width),
            min(max(y1, 0.0), height),
            float(score),
        )

    def area_fraction(self, height: int, width: int) -> float:
        return max(self.x1 - self.x0, 0.0) * max(self.y1 - self.y0, 0.0) / (height * width)

    def xyxy(self) -> tuple[float, float, float, float]:
        return (self.x0, self.y0, self.x1, self.y1)


@dataclass(frozen=True)
class FrameDetections:
    """The person boxes found in one sampled frame."""

    frame: int
    """Index of the frame in the video."""
    time_s: float
    """Its time in seconds (``frame / video fps``)."""
    boxes: tuple[PersonBox, ...]
    """Person boxes scoring ``background_threshold`` or more, highest score first."""

    def where(self) -> str:
        return f"frame {self.frame} ({self.time_s:.2f} s)"


def confident_people(
    frame: FrameDetections, config: DetectorConfig, height: int, width: int
) -> tuple[list[PersonBox], list[PersonBox]]:
    """The frame's confident person boxes split into (large enough, too small), each largest first."""
    confident = [b for b in frame.boxes if b.score >= config.threshold]
    confident.sort(key=lambda b: -b.area_fraction(height, width))
    large = [b for b in confident if b.area_fraction(height, width) >= config.min_box_area]
    small = [b for b in confident if b.area_fraction(height, width) < config.min_box_area]
    return large, small


# ---------------------------------------------------------------------------------------------- the prompt


@dataclass(frozen=True)
class Prompt:
    """Where and how SAM2 is prompted, or why the clip is rejected (``reason`` set)."""

    reason: str | None
    """``None`` when a prompt was found, else one of ``PROMPT_REASONS``."""
    detail: str
    """What was found, naming the frame; for the rejections file and the report."""
    frame: int = -1
    """The prompt frame's index in the video (the clip window starts there)."""
    time_s: float = math.nan
    """The prompt frame's time in seconds."""
    boxes: tuple[PersonBox, ...] = ()
    """The boxes to prompt SAM2 with: one object each (one box unless ``policy = "union"``)."""


def choose_prompt(
    frames: Sequence[FrameDetections], config: DetectorConfig, height: int, width: int
) -> Prompt:
    """The prompt frame and boxes from the detections of the sampled frames (in time order)."""
    first_small: tuple[FrameDetections, PersonBox] | None = None
    for frame in frames:
        large, small = confident_people(frame, config, height, width)
        if not large:
            if small and first_small is None:
                first_small = (frame, small[0])
            continue
        if len(large) > 1 and config.policy == "reject":
            return Prompt(
                "multiple_people",
                f"{len(large)} people at {frame.where()}, the first frame with a person (policy reject)",
                frame.frame,
                frame.time_s,
            )
        chosen = tuple(large) if config.policy == "union" else (large[0],)
        sizes = ", ".join(f"{b.area_fraction(height, width):.3f}" for b in chosen)
        detail = (
            f"prompt {frame.where()}: {len(chosen)} of {len(large)} people (policy {config.policy}), "
            f"box area {sizes} of the frame, score {min(b.score for b in chosen):.2f}"
        )
        return Prompt(None, detail, frame.frame, frame.time_s, chosen)
    span = (
        f"{len(frames)} sampled frames ({frames[0].time_s:.2f} s to {frames[-1].time_s:.2f} s)"
        if frames
        else "no sampled frame"
    )
    if first_small is not None:
        frame, box = first_small
        return Prompt(
            "person_too_small",
            f"largest person at {frame.where()} covers {box.area_fraction(height, width):.4f} of the frame "
            f"< min_box_area {config.min_box_area}; no larger person in {span}",
            frame.frame,
            frame.time_s,
        )
    return Prompt("no_person", f"no person scoring >= {config.threshold} in {span}")


# ---------------------------------------------------------------------------------------------- windows


def window_indices(
    num_video_frames: int, video_fps: float, start: int, num_frames: int, fps: float
) -> np.ndarray | None:
    """The clip window's frame indices: ``num_frames`` at ``fps`` (nearest frame) from frame ``start``; None
    when the video ends before the window does."""
    if not 0 <= start < num_video_frames:
        return None
    indices = start + sample_indices(num_video_frames - start, video_fps, fps, max_frames=num_frames)
    return indices if len(indices) == num_frames else None


def last_window_start(num_video_frames: int, video_fps: float, num_frames: int, fps: float) -> int | None:
    """The last frame a window of ``num_frames`` at ``fps`` can start at; None when the video is too short."""
    # a window that fits from some frame fits from every earlier one: bisect for the last such frame
    low, high = 0, num_video_frames - 1
    if window_indices(num_video_frames, video_fps, low, num_frames, fps) is None:
        return None
    while low < high:
        middle = (low + high + 1) // 2
        if window_indices(num_video_frames, video_fps, middle, num_frames, fps) is None:
            high = middle - 1
        else:
            low = middle
    return low


def classify_frame(frame: FrameDetections, config: DetectorConfig, height: int, width: int) -> str:
    """One of ``FRAME_KINDS`` for a sampled frame (see the module docstring)."""
    large, small = confident_people(frame, config, height, width)
    if len(large) == 1:
        return "person"
    if len(large) > 1:
        return "multiple_people"
    if small:
        return "person_too_small"
    return "empty" if not frame.boxes else "uncertain"


@dataclass(frozen=True)
class Window:
    """The harvest's verdict on one clip: a portrait or background window, or why there is none."""

    kind: str | None
    """``portrait``, ``background``, or None when rejected."""
    reason: str | None
    """None for a window, else one of ``WINDOW_REASONS``."""
    detail: str
    """Why the window qualified, or why none did (naming frames)."""
    start_frame: int = -1
    """First frame of the window in the video."""
    start_s: float = math.nan
    """Its time in seconds."""
    end_s: float = math.nan
    """Time of the window's last frame in seconds."""


def find_window(
    frames: Sequence[FrameDetections],
    config: DetectorConfig,
    height: int,
    width: int,
    num_video_frames: int,
    video_fps: float,
    num_frames: int,
    fps: float,
) -> Window:
    """The earliest portrait window, else the earliest background window, else a rejection.

    ``frames`` are the detections of the sampled frames in time order; a window starts at a sampled frame
    and holds ``num_frames`` frames at ``fps``; every sampled frame inside it must be ``person`` (portrait)
    or ``empty`` (background).
    """
    duration = f"{num_frames} frames at {fps:g} fps"
    kinds = [classify_frame(f, config, height, width) for f in frames]
    spans = []  # (sampled frame position, window) for every sampled frame a window can start at
    for i, frame in enumerate(frames):
        indices = window_indices(num_video_frames, video_fps, frame.frame, num_frames, fps)
        if indices is not None:
            inside = [j for j in range(i, len(frames)) if frames[j].frame <= indices[-1]]
            spans.append((i, indices, inside))
    if not spans:
        return Window(
            None,
            "too_short",
            f"{num_video_frames} frames at {video_fps:g} fps cannot hold a window of {duration}",
        )
    for kind in ("portrait", "background"):
        wanted = "person" if kind == "portrait" else "empty"
        for i, indices, inside in spans:
            if all(kinds[j] == wanted for j in inside):
                start, last = frames[i], int(indices[-1])
                if kind == "portrait":
                    boxes = [confident_people(frames[j], config, height, width)[0][0] for j in inside]
                    why = (
                        f"one person in all {len(inside)} sampled frames of the window; smallest box "
                        f"{min(b.area_fraction(height, width) for b in boxes):.3f} of the frame, lowest score "
                        f"{min(b.score for b in boxes):.2f}"
                    )
                else:
                    why = f"no person scoring >= {config.background_threshold} in all {len(inside)} sampled frames of the window"
                return Window(
                    kind,
                    None,
                    f"{why}; window {start.where()} to frame {last} ({last / video_fps:.2f} s), {duration}",
                    start.frame,
                    start.time_s,
                    last / video_fps,
                )
    # no window: name what blocked it
    counts = {k: kinds.count(k) for k in FRAME_KINDS}
    summary = ", ".join(f"{k} {v}" for k, v in counts.items() if v)
    for reason in sorted(("multiple_people", "person_too_small"), key=lambda k: -counts[k]):
        if counts[reason]:
            first = frames[kinds.index(reason)]
            return Window(
                None,
                reason,
                f"{counts[reason]} of {len(frames)} sampled frames are {reason} (first: {first.where()}); "
                f"sampled frames: {summary}",
            )
    return Window(
        None,
        "no_window",
        f"no window of {duration} with one person in every sampled frame or nobody in any; "
        f"sampled frames: {summary}",
    )


# ---------------------------------------------------------------------------------------------- boxes on disk


def boxes_path(clip_path: str | os.PathLike) -> Path:
    """``<clip stem>.boxes.json`` beside the clip."""
    clip_path = Path(clip_path)
    return clip_path.with_name(clip_path.stem + BOXES_SUFFIX)


def save_boxes(
    path: str | os.PathLike,
    boxes: Sequence[Sequence[Sequence[float]]],
    height: int,
    width: int,
) -> None:
    """Write per-frame person boxes ``[[x0, y0, x1, y1, score], ...]`` (one list per video frame), atomically."""
    frames = [[[float(v) for v in box] for box in frame] for frame in boxes]
    for t, frame in enumerate(frames):
        for box in frame:
            if len(box) != 5:
                raise ValueError(f"save_boxes({path}): frame {t} has a box of {len(box)} numbers, need 5")
    payload = {"height": int(height), "width": int(width), "num_frames": len(frames), "frames": frames}
    write_text(path, json.dumps(payload))


def load_boxes(path: str | os.PathLike) -> tuple[int, int, list[list[PersonBox]]]:
    """Read a boxes file: (height, width, per-frame boxes), every box checked."""
    path = Path(path)
    if not path.exists():
        raise MissingInput(f"boxes not found: {path}")
    try:
        data = json.loads(path.read_text())
        height, width, frames = int(data["height"]), int(data["width"]), data["frames"]
    except (ValueError, KeyError, TypeError) as err:
        raise InputRejection(
            "bad_boxes_file", f"{path} is not a boxes file (JSON with height, width, frames): {err}"
        ) from err
    out = []
    for t, frame in enumerate(frames):
        row = []
        for box in frame:
            if len(box) != 5 or not box[0] <= box[2] or not box[1] <= box[3]:
                raise InputRejection(
                    "bad_boxes_file", f"{path}: frame {t} has a bad box {box}; need [x0, y0, x1, y1, score]"
                )
            row.append(PersonBox.clipped(box[:4], box[4], height, width))
        out.append(row)
    return height, width, out


# ---------------------------------------------------------------------------------------------- backends


class ClipDetector(Protocol):
    """A clip's path, its probe and frame indices in, the person boxes of each of those frames out."""

    def detect_clip(
        self, path: str | os.PathLike, info: VideoInfo, indices: Sequence[int]
    ) -> list[list[PersonBox]]: ...


class TransformersPersonDetector:
    """A transformers object detector's person boxes, frames in batches of ``batch_size``.

    The model and processor load once, in the constructor: build it inside the worker (a Ray actor), never
    in the driver.
    """

    def __init__(self, config: DetectorConfig):
        import torch
        from transformers import AutoImageProcessor, AutoModelForObjectDetection

        self.config = config
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype, self.device)
        self.processor, self.model = load_pretrained(
            AutoImageProcessor, AutoModelForObjectDetection, config.model, self.dtype, self.device,
            what="the person detector",
            expected="a transformers object-detection checkpoint (hub id like PekingU/rtdetr_v2_r50vd, or a folder "
            "with config.json and preprocessor_config.json)",
        )  # fmt: skip
        labels = {int(i): str(name) for i, name in self.model.config.id2label.items()}
        self.person_ids = sorted(
            i for i, name in labels.items() if name.lower() == config.person_label.lower()
        )
        if not self.person_ids:
            shown = sorted(labels.values())[:12]
            raise ValueError(
                f"detector {config.model!r} has no class named {config.person_label!r} "
                f"(its labels include {shown}): set detector.person_label"
            )
        self._torch = torch

    def detect(self, frames: np.ndarray) -> list[list[PersonBox]]:
        """Person boxes scoring ``background_threshold`` or more per frame of ``frames`` (N, H, W, 3) uint8."""
        from types import SimpleNamespace

        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"detect: expected (N, H, W, 3) frames, got {frames.shape}")
        height, width = frames.shape[1:3]
        out: list[list[PersonBox]] = []
        for start in range(0, len(frames), self.config.batch_size):
            chunk = list(frames[start : start + self.config.batch_size])
            inputs = self.processor(images=chunk, return_tensors="pt")
            pixels = inputs["pixel_values"].to(self.device, self.dtype)
            with self._torch.inference_mode():
                raw = self.model(pixel_values=pixels)
            logits = SimpleNamespace(logits=raw.logits.float(), pred_boxes=raw.pred_boxes.float())
            results = self.processor.post_process_object_detection(
                logits,
                threshold=self.config.background_threshold,
                target_sizes=[(height, width)] * len(chunk),
            )
            for result in results:
                keep = [
                    PersonBox.clipped(box.tolist(), float(score), height, width)
                    for score, label, box in zip(
                        result["scores"], result["labels"], result["boxes"], strict=True
                    )
                    if int(label) in self.person_ids
                ]
                out.append(sorted(keep, key=lambda b: -b.score))
        return out

    def detect_clip(
        self, path: str | os.PathLike, info: VideoInfo, indices: Sequence[int]
    ) -> list[list[PersonBox]]:
        return self.detect(read_frames(path, indices))


class BoxFileReader:
    """Precomputed boxes: ``<clip stem>.boxes.json`` beside each clip, one list per video frame."""

    def __init__(self, config: DetectorConfig | None = None):
        self.config = config or DetectorConfig(backend="boxes_file")

    def read(self, clip_path: str | os.PathLike, info: VideoInfo) -> list[list[PersonBox]]:
        """The clip's boxes, one list per video frame, checked against its frame count and size."""
        path = boxes_path(clip_path)
        if not path.exists():
            raise MissingInput(
                f"detector.backend = boxes_file but {path} does not exist (boxes of {clip_path})"
            )
        height, width, frames = load_boxes(path)
        if (len(frames), height, width) != (info.num_frames, info.height, info.width):
            raise InputRejection(
                "bad_boxes_file",
                f"{path} holds boxes of {len(frames)} frames of {width}x{height} but {clip_path} has "
                f"{info.num_frames} frames of {info.width}x{info.height}",
            )
        return frames

    def detect_clip(
        self, path: str | os.PathLike, info: VideoInfo, indices: Sequence[int]
    ) -> list[list[PersonBox]]:
        frames = self.read(path, info)
        floor = self.config.background_threshold
        return [sorted((b for b in frames[i] if b.score >= floor), key=lambda b: -b.score) for i in indices]


def build_detector(config: DetectorConfig) -> ClipDetector:
    """The backend named by ``config.backend`` (the transformers one loads its model: call it in the worker)."""
    if config.backend == "transformers":
        return TransformersPersonDetector(config)
    return BoxFileReader(config)


def detect_sampled(
    detector: ClipDetector,
    path: str | os.PathLike,
    info: VideoInfo,
    sample_fps: float,
    start: int = 0,
    last: int | None = None,
) -> list[FrameDetections]:
    """Detections on the frames sampled at ``sample_fps`` (nearest frames, from frame 0) that lie between
    frame ``start`` and frame ``last`` (inclusive; default the end)."""
    last = info.num_frames - 1 if last is None else last
    sampled = np.unique(
        sample_indices(info.num_frames, info.fps, sample_fps)
    )  # sample_fps > fps repeats frames
    indices = [int(i) for i in sampled if start <= i <= last]
    if not indices:
        return []
    boxes = detector.detect_clip(path, info, indices)
    return [FrameDetections(i, i / info.fps, tuple(b)) for i, b in zip(indices, boxes, strict=True)]
