"""Portrait pair synthesis: the plan, the per-clip segmentation step and the per-pair compositing step.

MiVE's 6K portrait pairs (three edit types, 2000 each) come from portrait clips (a person in frame) and
background clips (no person). The blocks here know nothing of Ray (``pipelines/portraits.py`` wires them):

0. :func:`harvest_clip` (``dataengine harvest-portraits``): a person detector on a few sampled frames of
   any video finds a *portrait window* (one person, large enough, in every sampled frame) or a
   *background window* (nobody in any), or says why there is neither (``dataengine.models.detect.find_window``).
1. :func:`segment_portrait`: find the prompt (``prompt = "detector"``: the first sampled frame with a
   person, which starts the clip window; else the window starts at the given frame and the prompt is a fixed
   box or points), decode the window at the recipe's fps / frame count / resolution, segment the person
   (SAM2, or precomputed masks), keep the masks (bit-packed ``.npz``) and the prompt frame (PNG), and apply
   the gate.
2. :func:`check_background`: a background clip decodes and has at least one frame.
3. :func:`plan_pairs`: which portrait, which background, which instruction phrasing for each pair of each
   type, all drawn with the seed from the sorted accepted clips, so the same recipe and seed give the
   same pairs. A (portrait, background) combination is used at most once per type.
4. :func:`synthesize_pair`: composite (``dataengine.media.composite``), write source and target mp4 (H.264),
   the reference PNG (the target's first frame, lossless) and return the pair-manifest row.

Failures are values, not crashes: each step returns a row with ``reason`` set (one of the video reasons
``missing_file``, ``undecodable``, ``too_short``, the detector's ``no_person``, ``multiple_people``,
``person_too_small``, the harvest's ``no_window``, a precomputed masks or boxes file that does not fit
(``bad_masks_file``, ``bad_boxes_file``), ``no_prompt_box`` or the gate's reasons) and a ``detail``
naming the file and the frame. An error that is not the clip's own (out of memory, a model that does
not load, a bug) is not a row: it stops the job.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from dataengine.formats.atomic import atomic_path
from dataengine.formats.manifest import make_pair_id
from dataengine.formats.recipe import MissingInput, StageResources
from dataengine.media.clips import resize_and_crop, resize_and_crop_box, resize_and_crop_masks
from dataengine.media.composite import EDIT_TYPES, compose_pair, feather_alpha, loop_indices
from dataengine.media.video import VideoError, VideoInfo, probe, read_frames, sample_indices, write_mp4
from dataengine.models.detect import (
    ClipDetector,
    DetectorConfig,
    choose_prompt,
    detect_sampled,
    find_window,
    last_window_start,
    window_indices,
)
from dataengine.models.segment import (
    GateConfig,
    InputRejection,
    MaskFileReader,
    PersonSegmenter,
    SegmenterConfig,
    check_masks,
    load_masks,
    save_masks,
)

CATEGORIES = {
    "removal": "portrait_removal",
    "addition": "portrait_addition",
    "background": "portrait_background",
}
VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi")
PLAN_COLUMNS = [
    "pair_id",
    "category",
    "edit_type",
    "portrait",
    "background",
    "instruction",
    "source_path",
    "target_path",
    "reference_path",
]


@dataclass(frozen=True)
class InstructionsConfig:
    """Instruction phrasings per edit type (the ``[portraits.instructions]`` table); one is drawn per pair."""

    removal: tuple[str, ...] = (
        "Remove the person from the video.",
        "Erase the person and keep the background exactly as it is.",
        "Take the person out of the scene, leaving only the background.",
        "Delete the person from every frame and fill in the background behind them.",
        "Make the person disappear from the video.",
    )
    """Phrasings for person removal (source: person over B, target: B)."""
    addition: tuple[str, ...] = (
        "Add the person shown in the reference image to the video.",
        "Place a person in the scene, as in the reference image.",
        "Insert the person from the reference image into the video, moving naturally.",
        "Add a person in the foreground of this scene.",
        "Put the person from the reference frame into every frame of the video.",
    )
    """Phrasings for person addition (source: B, target: person over B)."""
    background: tuple[str, ...] = (
        "Replace the background behind the person with the scene in the reference image.",
        "Change the background to the one shown in the reference image, keeping the person unchanged.",
        "Keep the person and swap the background for a new scene.",
        "Put the person in front of a different background, as in the reference image.",
        "Change the setting behind the person to match the reference image.",
    )
    """Phrasings for background replacement (source: the portrait, target: person over B)."""

    def __post_init__(self) -> None:
        for edit_type in EDIT_TYPES:
            phrasings = tuple(str(p) for p in getattr(self, edit_type))
            if not phrasings or any(not p.strip() for p in phrasings):
                raise ValueError(f"portraits.instructions.{edit_type} needs at least one non-empty phrasing")
            object.__setattr__(self, edit_type, phrasings)


@dataclass(frozen=True)
class ResourcesConfig(StageResources):
    """Ray resources of the portrait pipeline (the ``[portraits.resources]`` table; ``placement`` stages:
    harvest (harvest-portraits), background, segment, composite)."""

    TABLE: ClassVar[str] = "portraits.resources"
    STAGES: ClassVar[tuple[str, ...]] = ("harvest", "background", "segment", "composite")

    segment_actors: int = 1
    """Segmentation actors (each loads the model once); one per GPU on a GPU node."""
    segment_gpus: float = 0.0
    """GPUs per segmentation actor (1 for SAM2-large on a GPU cluster, 0 on a CPU)."""
    segment_cpus: float = 1.0
    """CPUs per segmentation actor (decoding happens in the actor)."""
    harvest_actors: int = 1
    """Harvest actors (each loads the person detector once); one per GPU share on a GPU node."""
    harvest_gpus: float = 0.0
    """GPUs per harvest actor (a fraction: the detector is small, decoding dominates)."""
    harvest_cpus: float = 1.0
    """CPUs per harvest actor (decoding the sampled frames happens in the actor)."""
    composite_cpus: float = 1.0
    """CPUs per compositing + encoding task."""


@dataclass(frozen=True)
class HarvestConfig:
    """Where ``dataengine harvest-portraits`` finds videos to scan (the ``[portraits.harvest]`` table): one source."""

    videos_dir: str = ""
    """A folder of videos, searched recursively (``extensions``)."""
    manifest: str = ""
    """A pair manifest (Parquet, e.g. ``manifests/<run>/openve.parquet``): its distinct ``source_path`` videos."""
    openve_csv_dir: str = ""
    """OpenVE-3M's per-category CSVs: the distinct source videos (``original_video``) of every row."""
    openve_video_root: str = ""
    """The extracted OpenVE-3M video root the CSV paths are relative to (with ``openve_csv_dir``)."""
    max_clips: int = 0
    """Scan at most this many videos (the first in sorted order); 0: all."""

    def __post_init__(self) -> None:
        given = [k for k in ("videos_dir", "manifest", "openve_csv_dir") if getattr(self, k)]
        if len(given) > 1:
            raise ValueError(
                f"portraits.harvest: give one of videos_dir, manifest, openve_csv_dir; got {given}"
            )
        if self.openve_csv_dir and not self.openve_video_root:
            raise ValueError(
                "portraits.harvest.openve_csv_dir needs openve_video_root (where the videos are)"
            )
        if self.max_clips < 0:
            raise ValueError(f"portraits.harvest.max_clips must be >= 0, got {self.max_clips}")


@dataclass(frozen=True)
class PortraitsConfig:
    """The ``[portraits]`` recipe table: inputs, counts, output clip format, segmenter, gate, compositing."""

    people_dir: str = "demo_data/portraits/people"
    """Folder of portrait clips (a person in frame), searched recursively (unless ``portrait_windows``)."""
    backgrounds_dir: str = "demo_data/portraits/backgrounds"
    """Folder of background clips (no person), searched recursively (unless ``background_windows``)."""
    portrait_windows: str = ""
    """A harvest's portrait windows list (``manifests/<run>/portrait_windows.parquet``), read in place of
    ``people_dir``: each clip's window starts at its listed frame."""
    background_windows: str = ""
    """A harvest's background windows list, read in place of ``backgrounds_dir``."""
    output_dir: str = ""
    """Where pair videos, reference PNGs and masks go; empty: ``portrait_pairs/<run>``."""
    pairs_per_type: int = 2000
    """Pairs per edit type (removal, addition, background): the paper's 2000 each, 6000 in all."""
    seed: int = 0
    """Seed of the plan: same recipe + same seed + same inputs = same pairs."""
    num_frames: int = 81
    """Frames per pair clip: ``4n + 1`` for the Wan VAE, as in the ``[shards.clip]`` table."""
    fps: float = 16.0
    """Frame rate the clips are resampled to (nearest frame)."""
    width: int = 1280
    """Output width in pixels (a multiple of 16: a shards bucket)."""
    height: int = 720
    """Output height in pixels (a multiple of 16: a shards bucket)."""
    feather_radius: int = 4
    """Soft alpha edge: the mask averaged over a (2r+1)^2 window; 0 for a hard edge."""
    crf: int = 18
    """H.264 constant rate factor of the pair videos (lower is closer to lossless)."""
    extensions: tuple[str, ...] = VIDEO_EXTENSIONS
    """File extensions counted as videos in the input folders."""
    instructions: InstructionsConfig = field(default_factory=InstructionsConfig)
    """Instruction phrasings per edit type."""
    segmenter: SegmenterConfig = field(default_factory=SegmenterConfig)
    """The segmentation backend and its first-frame prompt."""
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    """The person detector (``segmenter.prompt = "detector"`` and the harvest) and its multi-person policy."""
    harvest: HarvestConfig = field(default_factory=HarvestConfig)
    """The videos ``dataengine harvest-portraits`` scans for portrait and background windows."""
    gate: GateConfig = field(default_factory=GateConfig)
    """The masks' quality gate."""
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    """Ray resources per stage."""

    def __post_init__(self) -> None:
        if self.num_frames < 1 or (self.num_frames - 1) % 4:
            raise ValueError(f"portraits.num_frames must be 4n + 1 (e.g. 17, 81), got {self.num_frames}")
        if self.fps <= 0:
            raise ValueError(f"portraits.fps must be positive, got {self.fps}")
        if self.width % 16 or self.height % 16 or self.width <= 0 or self.height <= 0:
            raise ValueError(
                f"portraits.width/height must be positive multiples of 16, got {self.width}x{self.height}"
            )
        if self.pairs_per_type < 0:
            raise ValueError(f"portraits.pairs_per_type must be >= 0, got {self.pairs_per_type}")
        if self.feather_radius < 0:
            raise ValueError(f"portraits.feather_radius must be >= 0, got {self.feather_radius}")
        object.__setattr__(self, "extensions", tuple(e.lower() for e in self.extensions))

    def pairs_root(self, run: str) -> Path:
        return Path(self.output_dir or f"portrait_pairs/{run}")


# ---------------------------------------------------------------------------------------------- inputs


def list_videos(folder: str | os.PathLike, extensions: tuple[str, ...] = VIDEO_EXTENSIONS) -> list[str]:
    """Video files under ``folder`` (recursive, hidden files skipped), as sorted POSIX paths relative to it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingInput(f"input folder not found: {folder}")
    found = [
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix.lower() in extensions
        and not any(part.startswith(".") for part in p.parts)
    ]
    return sorted(found)


def harvest_inputs(
    harvest: HarvestConfig, extensions: tuple[str, ...] = VIDEO_EXTENSIONS
) -> list[tuple[str, str]]:
    """``(key, path)`` of every video the harvest scans, sorted by key, at most ``max_clips``.

    The key is the path as the source lists it: relative to ``videos_dir``, the manifest's ``source_path``,
    or OpenVE's ``original_video``; a video listed by several rows is scanned once.
    """
    if harvest.videos_dir:
        folder = Path(harvest.videos_dir)
        found = [(rel, str(folder / rel)) for rel in list_videos(folder, extensions)]
    elif harvest.manifest:
        from dataengine.formats.manifest import read_pairs

        sources = read_pairs(harvest.manifest)["source_path"].dropna().unique()
        found = [(str(p), str(p)) for p in sources]
    elif harvest.openve_csv_dir:
        from dataengine.steps.openve_reader import read_openve

        pairs = read_openve(harvest.openve_csv_dir, harvest.openve_video_root).pairs
        found = list(dict(zip(pairs["source_rel"], pairs["source_path"], strict=True)).items())
    else:
        raise ValueError(
            "portraits.harvest: set videos_dir (a folder of videos), manifest (a pair manifest) or "
            "openve_csv_dir + openve_video_root (OpenVE-3M) to say what to scan"
        )
    found.sort()
    return found[: harvest.max_clips] if harvest.max_clips else found


WINDOW_COLUMNS = [
    "clip_id",
    "clip",
    "path",
    "start_frame",
    "start_s",
    "end_s",
    "num_sampled",
    "video_frames",
    "video_fps",
    "width",
    "height",
    "detail",
]
"""Columns of the harvest's window lists: the clip as its source names it, its path, the window and why it
qualified (``detail``)."""


@dataclass(frozen=True)
class InputClip:
    """A portrait or background clip the job reads: from a folder (whole clip) or a harvest's window list."""

    key: str
    """Its name in the plan and the pair ids: the path relative to the folder, or the list's ``clip``."""
    path: str
    """Where the video is."""
    start_frame: int = 0
    """Where its window may start (a listed window's first frame)."""


def read_windows(path: str | os.PathLike) -> list[InputClip]:
    """The clips of a window list written by ``dataengine harvest-portraits``, sorted by key."""
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise MissingInput(f"window list not found: {path} (run dataengine harvest-portraits first)")
    frame = pd.read_parquet(path)
    missing = [c for c in ("clip", "path", "start_frame") if c not in frame.columns]
    if missing:
        raise ValueError(f"{path} is not a window list: columns {missing} are missing")
    clips = [InputClip(str(r.clip), str(r.path), int(r.start_frame)) for r in frame.itertuples(index=False)]
    return sorted(clips, key=lambda c: c.key)


def input_clips(config: PortraitsConfig, kind: str) -> list[InputClip]:
    """The ``portrait`` or ``background`` clips of a run: the harvest's window list if the recipe names one,
    else every video of the folder (whole clips)."""
    windows = config.portrait_windows if kind == "portrait" else config.background_windows
    if windows:
        return read_windows(windows)
    folder = Path(config.people_dir if kind == "portrait" else config.backgrounds_dir)
    return [InputClip(rel, str(folder / rel)) for rel in list_videos(folder, config.extensions)]


def clip_id(kind: str, rel_path: str) -> str:
    """Stable id of an input clip (``portrait`` or ``background``) from its path relative to its folder."""
    return hashlib.sha256(f"{kind}\x1f{rel_path}".encode()).hexdigest()[:20]


def _window(path: str | os.PathLike, info: VideoInfo, start: int, config: PortraitsConfig) -> np.ndarray:
    """The ``num_frames`` frame indices at ``fps`` from frame ``start``, or ``too_short``."""
    indices = window_indices(info.num_frames, info.fps, start, config.num_frames, config.fps)
    if indices is None:
        raise VideoError(
            path,
            "too_short",
            f"{info.num_frames} frames at {info.fps:g} fps cannot give {config.num_frames} frames at "
            f"{config.fps:g} fps from frame {start}",
        )
    return indices


def load_portrait(path: str | os.PathLike, config: PortraitsConfig, start_frame: int = 0) -> np.ndarray:
    """The portrait's ``num_frames`` frames at ``fps`` from ``start_frame``, fitted to ``height x width``:
    (T, H, W, 3) uint8."""
    indices = _window(path, probe(path), start_frame, config)
    return resize_and_crop(read_frames(path, indices), (config.height, config.width))


def load_background(path: str | os.PathLike, config: PortraitsConfig, start_frame: int = 0) -> np.ndarray:
    """The background at ``fps`` from ``start_frame``, looped back and forth or trimmed to ``num_frames``,
    fitted to the frame."""
    info = probe(path)
    if not 0 <= start_frame < info.num_frames:
        raise VideoError(path, "too_short", f"starts at frame {start_frame} of {info.num_frames}")
    available = start_frame + sample_indices(info.num_frames - start_frame, info.fps, config.fps)
    wanted = available[loop_indices(len(available), config.num_frames)]
    unique, inverse = np.unique(wanted, return_inverse=True)
    return resize_and_crop(read_frames(path, unique)[inverse], (config.height, config.width))


# ---------------------------------------------------------------------------------------------- step 1, 2


def segment_portrait(
    path: str | os.PathLike,
    rel_path: str,
    config: PortraitsConfig,
    masks_dir: str | os.PathLike,
    segmenter: PersonSegmenter | MaskFileReader,
    detector: ClipDetector | None = None,
    start_frame: int = 0,
) -> dict[str, Any]:
    """Prompt, segment and gate one portrait clip; the row says accepted (``reason`` None) or why not.

    ``start_frame`` is where the clip's window may start (a harvested window's start; 0 for a whole clip).
    With ``segmenter.prompt = "detector"`` the ``detector`` looks at the frames sampled from there on whose
    window still fits, and the prompt frame it picks starts the window; otherwise the window starts at
    ``start_frame``. The masks (at the output's frames and size) go to ``masks_dir/<clip_id>.masks.npz`` and
    the prompt frame to ``<clip_id>.prompt.png``, also for a clip the gate rejects, for inspection; the row
    holds the prompt boxes in output pixels (``prompt_boxes``, JSON ``[[x0, y0, x1, y1, score], ...]``).
    """
    from PIL import Image

    cid = clip_id("portrait", rel_path)
    row: dict[str, Any] = {
        "clip_id": cid,
        "portrait": rel_path,
        "reason": None,
        "stage": "segment",
        "detail": "",
        "masks_path": None,
        "mean_area": float("nan"),
        "min_iou": float("nan"),
        "start_frame": start_frame,
        "start_s": float("nan"),
        "prompt_boxes": "[]",
        "prompt_image": None,
    }
    height, width = config.height, config.width
    try:
        info = probe(path)
        boxes = None
        prompt_detail = ""
        start = start_frame
        if config.segmenter.prompt == "detector":
            if detector is None:
                raise AssertionError('segmenter.prompt = "detector" but no detector was built')
            last = last_window_start(info.num_frames, info.fps, config.num_frames, config.fps)
            if last is None or last < start_frame:
                _window(path, info, start_frame, config)  # raises too_short with the numbers
            sampled = detect_sampled(detector, path, info, config.detector.sample_fps, start_frame, last)
            prompt = choose_prompt(sampled, config.detector, info.height, info.width)
            if prompt.reason is not None:
                return {
                    **row,
                    "stage": "detect",
                    "reason": prompt.reason,
                    "detail": f"portrait {path}: {prompt.detail}",
                }
            start, prompt_detail = prompt.frame, f"; {prompt.detail}"
            boxes = [
                (*resize_and_crop_box(b.xyxy(), info.height, info.width, (height, width)), b.score)
                for b in prompt.boxes
            ]
        elif config.segmenter.prompt == "box" and config.segmenter.backend == "transformers":
            x0, y0, x1, y1 = config.segmenter.prompt_box
            boxes = [(x0 * width, y0 * height, x1 * width, y1 * height, float("nan"))]
        indices = _window(path, info, start, config)
        if isinstance(segmenter, MaskFileReader):
            raw = segmenter.read(path, info.num_frames, info.height, info.width)
            masks = resize_and_crop_masks(raw[indices], (height, width))
            first = resize_and_crop(read_frames(path, indices[:1]), (height, width))[0]
        else:
            frames = resize_and_crop(read_frames(path, indices), (height, width))
            prompt_boxes = [b[:4] for b in boxes] if config.segmenter.prompt == "detector" else None
            masks = segmenter.segment(frames, prompt_boxes)
            first = frames[0]
    except VideoError as err:
        return {**row, "stage": "probe", "reason": err.reason, "detail": f"portrait {path}: {err.detail}"}
    except MissingInput as err:  # precomputed masks or boxes missing
        return {**row, "reason": "missing_file", "detail": f"portrait {path}: {err}"}
    except InputRejection as err:  # precomputed masks or boxes of the wrong shape, no prompt box
        return {**row, "reason": err.reason, "detail": f"portrait {path}: {err}"}
    masks_path = Path(masks_dir) / f"{cid}.masks.npz"
    save_masks(masks_path, masks)
    image_path = Path(masks_dir) / f"{cid}.prompt.png"
    with atomic_path(image_path, keep_suffix=True) as tmp:
        Image.fromarray(first).save(tmp)
    verdict = check_masks(masks, config.gate)
    return {
        **row,
        "reason": verdict.reason,
        "detail": f"portrait {path}: {verdict.detail}{prompt_detail}",
        "masks_path": str(masks_path.resolve()),
        "mean_area": verdict.mean_area,
        "min_iou": verdict.min_iou,
        "start_frame": int(start),
        "start_s": start / info.fps,
        "prompt_boxes": json.dumps(
            [
                [round(float(v), 2) for v in b[:4]] + [None if b[4] != b[4] else round(b[4], 3)]
                for b in boxes or []
            ]
        ),
        "prompt_image": str(image_path.resolve()),
    }


def harvest_clip(
    path: str | os.PathLike, key: str, config: PortraitsConfig, detector: ClipDetector
) -> dict[str, Any]:
    """Scan one video for a portrait or background window (``HARVEST_COLUMNS``; ``kind`` None and ``reason``
    set when there is neither). ``key`` names the clip as its source lists it (its id is a hash of it)."""
    row: dict[str, Any] = {
        "clip_id": clip_id("pool", key),
        "clip": key,
        "path": str(Path(path).resolve()),
        "kind": None,
        "reason": None,
        "stage": "harvest",
        "detail": "",
        "start_frame": -1,
        "start_s": float("nan"),
        "end_s": float("nan"),
        "num_sampled": 0,
        "video_frames": -1,
        "video_fps": float("nan"),
        "width": -1,
        "height": -1,
    }
    try:
        info = probe(path)
        row.update(video_frames=info.num_frames, video_fps=info.fps, width=info.width, height=info.height)
        sampled = detect_sampled(detector, path, info, config.detector.sample_fps)
    except VideoError as err:
        return {**row, "stage": "probe", "reason": err.reason, "detail": f"{path}: {err.detail}"}
    except MissingInput as err:  # precomputed boxes missing
        return {**row, "reason": "missing_file", "detail": f"{path}: {err}"}
    except InputRejection as err:  # precomputed boxes of the wrong shape
        return {**row, "reason": err.reason, "detail": f"{path}: {err}"}
    window = find_window(
        sampled,
        config.detector,
        info.height,
        info.width,
        info.num_frames,
        info.fps,
        config.num_frames,
        config.fps,
    )
    return {
        **row,
        "kind": window.kind,
        "reason": window.reason,
        "detail": f"{path}: {window.detail}",
        "start_frame": window.start_frame,
        "start_s": window.start_s,
        "end_s": window.end_s,
        "num_sampled": len(sampled),
    }


def check_background(path: str | os.PathLike, rel_path: str) -> dict[str, Any]:
    """A background is usable when it exists and decodes to the last frame (any length: it is looped)."""
    row = {
        "clip_id": clip_id("background", rel_path),
        "background": rel_path,
        "reason": None,
        "stage": "background",
    }
    try:
        info = probe(path)
    except VideoError as err:
        return {**row, "reason": err.reason, "detail": f"background {path}: {err.detail}"}
    return {**row, "detail": f"{info.num_frames} frames at {info.fps:g} fps, {info.width}x{info.height}"}


# ---------------------------------------------------------------------------------------------- step 3


def plan_pairs(
    portraits: list[str], backgrounds: list[str], config: PortraitsConfig, run: str
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The pairs to make: per type, distinct (portrait, background) combinations and phrasings drawn with the seed.

    ``portraits`` and ``backgrounds`` are the accepted clips' relative paths (sorted here, so the order
    they come in does not matter). Returns the plan rows and, per type, how many could be planned (fewer
    than ``pairs_per_type`` when the inputs do not give enough distinct combinations).
    """
    portraits, backgrounds = sorted(set(portraits)), sorted(set(backgrounds))
    root = config.pairs_root(run).resolve()
    rows, planned = [], {}
    num_combinations = len(portraits) * len(backgrounds)
    for type_index, edit_type in enumerate(EDIT_TYPES):
        rng = np.random.default_rng([config.seed, type_index])
        count = min(config.pairs_per_type, num_combinations)
        planned[edit_type] = count
        if count == 0:
            continue
        combos = rng.choice(num_combinations, size=count, replace=False)
        phrasings = getattr(config.instructions, edit_type)
        choices = rng.integers(0, len(phrasings), size=count)
        category = CATEGORIES[edit_type]
        for combo, choice in zip(combos.tolist(), choices.tolist(), strict=True):
            portrait, background = portraits[combo // len(backgrounds)], backgrounds[combo % len(backgrounds)]
            instruction = phrasings[choice]
            pair_id = make_pair_id("portrait", portrait, f"{edit_type}:{background}", instruction)
            folder = root / category / pair_id
            rows.append(
                {
                    "pair_id": pair_id,
                    "category": category,
                    "edit_type": edit_type,
                    "portrait": portrait,
                    "background": background,
                    "instruction": instruction,
                    "source_path": str(folder / "source.mp4"),
                    "target_path": str(folder / "target.mp4"),
                    "reference_path": str(folder / "reference.png"),
                }
            )
    return rows, planned


# ---------------------------------------------------------------------------------------------- step 4


def synthesize_pair(plan_row: dict[str, Any], masks_path: str, config: PortraitsConfig) -> dict[str, Any]:
    """Composite one planned pair and write its files; returns its manifest row, or a rejection (``reason`` set).

    Beside ``PLAN_COLUMNS`` the row names the clips' files and windows: ``portrait_path``, ``portrait_start``
    (the segmented window's first frame), ``background_path``, ``background_start``.
    """
    from PIL import Image

    portrait_path, background_path = plan_row["portrait_path"], plan_row["background_path"]
    row = {
        "pair_id": plan_row["pair_id"],
        "origin": "portrait",
        "category": plan_row["category"],
        "instruction": plan_row["instruction"],
        "source_path": plan_row["source_path"],
        "target_path": plan_row["target_path"],
        "reference_path": plan_row["reference_path"],
        "score": None,
        "num_frames": config.num_frames,
        "fps": float(config.fps),
        "width": config.width,
        "height": config.height,
        "reason": None,
        "stage": "composite",
        "detail": "",
    }
    try:
        portrait = load_portrait(portrait_path, config, int(plan_row["portrait_start"]))
        background = load_background(background_path, config, int(plan_row["background_start"]))
    except VideoError as err:
        return {**row, "reason": err.reason, "detail": f"{err.path}: {err.detail}"}
    masks = load_masks(masks_path)
    if masks.shape != portrait.shape[:3]:
        raise ValueError(
            f"masks {masks_path} are {masks.shape}, portrait {portrait_path} fits to {portrait.shape[:3]}"
        )
    alpha = feather_alpha(masks, config.feather_radius)
    source, target = compose_pair(plan_row["edit_type"], portrait, alpha, background)
    write_mp4(row["source_path"], source, config.fps, crf=config.crf)
    write_mp4(row["target_path"], target, config.fps, crf=config.crf)
    reference = Path(row["reference_path"])
    with atomic_path(reference, keep_suffix=True) as tmp:
        Image.fromarray(target[0]).save(tmp)
    return row


def pair_files_exist(row: dict[str, Any]) -> bool:
    """All three files of a written pair are on disk (a resumed run redoes a pair whose files went missing)."""
    return all(Path(row[k]).exists() for k in ("source_path", "target_path", "reference_path"))


def fingerprint(config_dict: dict[str, Any], portraits: list[str], backgrounds: list[str]) -> str:
    """What a run's results depend on: the resolved config and the input clip lists."""
    payload = json.dumps(
        {"config": config_dict, "portraits": portraits, "backgrounds": backgrounds}, sort_keys=True
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
