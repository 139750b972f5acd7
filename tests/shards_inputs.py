"""Generated inputs for the shards tests: small videos whose frames say which frame they are, and pair manifests.

Frame ``t`` of a source clip is a uniform grey of value ``index_value(t)`` with a coloured band in its
left third; the target is the same with the grey inverted. After H.264 the mean grey of a frame gives its
index back, so a test can tell which source frames a prepared clip holds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from dataengine.formats.manifest import make_pair_id, write_pairs
from dataengine.media.video import write_mp4

GREY_STEP = 6


def index_value(t: int | np.ndarray) -> int | np.ndarray:
    """Grey level of source frame ``t`` (targets use ``255 - index_value(t)``)."""
    return 16 + GREY_STEP * np.asarray(t)


def index_of(frame: np.ndarray, target: bool = False) -> int:
    """The frame index a (source or target) frame shows, read back from its grey level (right two thirds)."""
    width = frame.shape[1]
    grey = float(frame[:, width // 3 :].mean())
    if target:
        grey = 255.0 - grey
    return int(round((grey - 16) / GREY_STEP))


def clip_frames(num_frames: int, height: int, width: int, target: bool = False, seed: int = 0) -> np.ndarray:
    """(T, H, W, 3) uint8 frames of a generated clip (see the module docstring)."""
    rng = np.random.default_rng(seed)
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    band = rng.integers(40, 215, size=3)
    for t in range(num_frames):
        value = int(index_value(t))
        frames[t] = 255 - value if target else value
        frames[t, :, : width // 3] = band
    return frames


def write_pair(
    folder: Path,
    name: str,
    num_frames: int = 17,
    height: int = 64,
    width: int = 64,
    fps: float = 16.0,
    target_frames: int | None = None,
    target_fps: float | None = None,
    target_size: tuple[int, int] | None = None,
    seed: int = 0,
) -> tuple[Path, Path]:
    """Write ``<name>_src.mp4`` and ``<name>_tgt.mp4`` into ``folder``; the target may differ to test alignment."""
    th, tw = target_size or (height, width)
    source = folder / f"{name}_src.mp4"
    target = folder / f"{name}_tgt.mp4"
    write_mp4(source, clip_frames(num_frames, height, width, seed=seed), fps)
    write_mp4(
        target, clip_frames(target_frames or num_frames, th, tw, target=True, seed=seed), target_fps or fps
    )
    return source, target


def pair_row(
    origin: str,
    category: str,
    instruction: str,
    source: Path,
    target: Path,
    num_frames: int,
    fps: float,
    width: int,
    height: int,
    reference: Path | None = None,
) -> dict:
    """A pair-manifest row (the contract's columns)."""
    return {
        "pair_id": make_pair_id(origin, source.name, target.name, instruction),
        "origin": origin,
        "category": category,
        "instruction": instruction,
        "source_path": str(source),
        "target_path": str(target),
        "reference_path": str(reference) if reference else None,
        "score": 9.5 if origin == "openve" else None,
        "num_frames": num_frames,
        "fps": fps,
        "width": width,
        "height": height,
    }


def write_demo_manifests(folder: Path, num_openve: int = 5, num_portrait: int = 3) -> tuple[Path, Path, dict]:
    """Two pair manifests over generated videos: 64x64 "OpenVE" pairs and 96x160 "portrait" pairs.

    One OpenVE row points at a missing file and one portrait row has a too-short clip, so a run has
    rejections. Returns the two manifest paths and ``{pair_id: expected rejection reason}``.
    """
    videos = folder / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    categories = ["local_add", "global_style", "background_change"]
    rows, expected = [], {}
    for i in range(num_openve):
        src, tgt = write_pair(videos, f"ove{i}", seed=i)
        rows.append(pair_row("openve", categories[i % 3], f"Add a hat {i}.", src, tgt, 17, 16.0, 64, 64))
    missing = pair_row(
        "openve",
        "local_remove",
        "Remove it.",
        videos / "gone_src.mp4",
        videos / "gone_tgt.mp4",
        17,
        16.0,
        64,
        64,
    )
    rows.append(missing)
    expected[missing["pair_id"]] = "missing_file"
    openve = folder / "openve.parquet"
    write_pairs(pd.DataFrame(rows), openve)

    rows = []
    for i in range(num_portrait):
        src, tgt = write_pair(videos, f"por{i}", height=96, width=160, seed=100 + i)
        rows.append(
            pair_row(
                "portrait",
                ["removal", "addition", "background"][i % 3],
                f"Replace the background {i}.",
                src,
                tgt,
                17,
                16.0,
                160,
                96,
            )
        )
    src, tgt = write_pair(videos, "por_short", num_frames=9, height=96, width=160, seed=7)
    # The manifest claims 17 frames: the plan keeps it, decoding finds 9 and rejects it.
    short = pair_row("portrait", "addition", "Add a dog.", src, tgt, 17, 16.0, 160, 96)
    rows.append(short)
    expected[short["pair_id"]] = "too_short"
    portraits = folder / "portraits.parquet"
    write_pairs(pd.DataFrame(rows), portraits)
    return openve, portraits, expected
