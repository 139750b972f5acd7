"""A synthetic OpenVE-3M-style dataset: per-category CSVs and short mp4 pairs with real motion.

The layout mirrors OpenVE-3M as released (see ``../shared/design/MIVE.md``)::

    <root>/csv/<category>.csv            one CSV per category, columns original_video, video, prompt
    <root>/videos/<category>/<i>_src.mp4 source clip
    <root>/videos/<category>/<i>_edit.mp4 edited clip (a plausible edit of the source)

Paths in the CSVs are relative to ``<root>/videos``. The CSVs vary the way the real ones do: ``,`` and
``;`` delimiters, a UTF-8 BOM, CRLF line ends, extra and reordered columns, and instructions holding
quotes, delimiters and newlines. A clip is a moving textured background with a moving square; the edited
clip applies the category's edit to the same scene (restyle, new background, recoloured or removed square,
an added circle, a subtitle band), so source and target move together.

``broken`` injects one broken row per kind listed (``BROKEN_KINDS``), appended to the categories in turn;
:attr:`SyntheticOpenVE.expected_rejections` says which reason the reader/probe must give each of them
(``misaligned`` and ``too_small`` need the probe's trainability check against clip settings whose bucket
is the clips' size). ``lengths`` gives the good pairs OpenVE's spread of frame counts and rates.
Everything is deterministic from ``seed``. Usage::

    from dataengine.synthetic.openve import BROKEN_KINDS, SyntheticOpenVEConfig, generate_openve
    data = generate_openve("demo_data/openve", SyntheticOpenVEConfig(pairs_per_category=8, broken=tuple(BROKEN_KINDS)))

:func:`build_filter_demo` writes everything ``manifests/demo.toml``'s ``[filter]`` reads.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dataengine.media.video import write_mp4

CATEGORIES = (
    "global_style",
    "background_change",
    "local_change",
    "local_remove",
    "local_add",
    "subtitle_edit",
)

# kind of broken row -> the rejection reason the reader or the probe must give it
BROKEN_KINDS = {
    "missing_file": "missing_file",
    "zero_byte": "undecodable",
    "truncated": "undecodable",
    "garbage": "undecodable",
    "too_short": "too_short",
    "malformed_row": "malformed_row",
    # the two below are rejected by the probe's trainability check (the recipe's [shards.clip]), not by
    # the reader: a target of another size and frame count, and a pair smaller than its bucket
    "misaligned": "misaligned",
    "too_small": "too_small",
}

# per category: (delimiter, BOM, line terminator, columns in file order)
_CSV_STYLES = {
    "global_style": (",", False, "\n", ["original_video", "video", "prompt"]),
    "background_change": (";", True, "\r\n", ["original_video", "video", "prompt"]),
    "local_change": (",", False, "\r\n", ["id", "prompt", "original_video", "video", "edited_type"]),
    "local_remove": (";", False, "\n", ["original_video", "video", "prompt", "aesthetic"]),
    "local_add": (",", True, "\n", ["original_video", "video", "prompt"]),
    "subtitle_edit": (";", False, "\r\n", ["video", "original_video", "prompt", "notes"]),
}

_PROMPTS = {
    "global_style": [
        'Turn the whole video into a "retro poster" look, with flat colours; keep the motion.',
        "Restyle every frame as a posterised print, swapping warm and cool tones.",
        'Apply a "night-vision" style, high contrast, to the full clip',
    ],
    "background_change": [
        "Replace the background with a different striped pattern, keep the square unchanged.",
        'Change the backdrop to "ocean waves"; the moving square stays as it is.',
        "Swap the background for new moving stripes.\nDo not alter the square or its path.",
    ],
    "local_change": [
        "Change the colour of the moving square to a bright new colour, nothing else.",
        'Recolour the square; make it look "painted", keep the background, motion, and size.',
        "Make the square a different colour;\nleave everything else untouched.",
    ],
    "local_remove": [
        "Remove the moving square and fill in the background behind it.",
        'Erase the "square" object; the stripes must continue naturally, frame by frame.',
        "Delete the square from every frame, keep the textured background.",
    ],
    "local_add": [
        "Add a round ball that moves across the scene in the opposite direction.",
        'Insert a "bouncing" circle, keep the square and background as they are; thanks.',
        "Add a circle moving from right to left.\nIt should pass behind nothing; keep the rest.",
    ],
    "subtitle_edit": [
        "Add a subtitle band at the bottom of the video with white text blocks.",
        'Put a caption bar reading "hello, world" at the bottom; keep the rest.',
        "Insert subtitles at the bottom;\nthe caption should stay for the whole clip.",
    ],
}


@dataclass
class SyntheticOpenVEConfig:
    """What the synthetic OpenVE-style dataset holds."""

    pairs_per_category: int = 4
    """Good pairs written per category (before near-duplicates and broken rows)."""
    categories: tuple[str, ...] = CATEGORIES
    """Categories to write, each as ``<category>.csv``."""
    width: int = 64
    """Frame width in pixels (even, for H.264)."""
    height: int = 64
    """Frame height in pixels (even, for H.264)."""
    num_frames: int = 17
    """Frames per clip (a 4n+1 count, as the VAE wants)."""
    fps: float = 8.0
    """Frame rate of the clips."""
    near_duplicates_per_category: int = 0
    """Extra pairs per category that are near-copies (a few pixels of noise) of the category's first pair."""
    broken: tuple[str, ...] = ()
    """Broken rows to append, one per kind listed (keys of ``BROKEN_KINDS``), spread over the categories."""
    short_frames: int = 5
    """Frame count of the clips of a ``too_short`` row."""
    lengths: tuple[tuple[int, float], ...] = ()
    """``(frames, fps)`` of the good pairs in turn, category after category (OpenVE-3M: 65-129 frames at
    24-30 fps); empty: every pair has ``num_frames`` at ``fps``."""
    seed: int = 0
    """Seed of everything random: scenes, prompts, noise."""


@dataclass
class SyntheticOpenVE:
    """Where the generated dataset lies, and what the reader must make of it."""

    root: Path
    csv_dir: Path
    video_root: Path
    rows_per_category: dict[str, int] = field(default_factory=dict)
    """Data rows written to each CSV (broken ones included)."""
    expected_rejections: dict[tuple[str, int], str] = field(default_factory=dict)
    """(category, 1-based data row) -> rejection reason, for the broken rows."""
    near_duplicates: dict[tuple[str, int], int] = field(default_factory=dict)
    """(category, data row of a near-duplicate) -> data row of the pair it copies."""

    @property
    def num_rows(self) -> int:
        return sum(self.rows_per_category.values())


@dataclass
class _Scene:
    """One clip's content: a drifting two-frequency stripe texture and a bouncing square."""

    colors: np.ndarray  # (2, 3) float, the texture's two colours
    freq: np.ndarray  # (2,) cycles per pixel along x and y
    drift: np.ndarray  # (2,) texture drift in pixels per frame along x and y
    square_size: int
    square_color: np.ndarray  # (3,)
    square_start: np.ndarray  # (2,) x, y of the top-left corner
    square_velocity: np.ndarray  # (2,) pixels per frame
    edit_seed: int  # seeds what the edit draws (new background, subtitle words): a copied scene edits alike


def _random_scene(rng: np.random.Generator, width: int, height: int) -> _Scene:
    size = max(4, min(width, height) // 4)
    return _Scene(
        colors=rng.uniform(30, 225, size=(2, 3)),
        freq=rng.uniform(0.04, 0.15, size=2),
        drift=rng.uniform(-1.5, 1.5, size=2),
        square_size=size,
        square_color=rng.uniform(0, 255, size=3),
        square_start=np.array([rng.uniform(0, width - size), rng.uniform(0, height - size)]),
        square_velocity=rng.uniform(1.0, 3.0, size=2) * rng.choice([-1, 1], size=2),
        edit_seed=int(rng.integers(0, 2**31)),
    )


def _bounce(start: float, velocity: float, t: np.ndarray, span: float) -> np.ndarray:
    """Positions of a point moving at ``velocity`` that reflects off 0 and ``span``."""
    if span <= 0:
        return np.zeros_like(t, dtype=np.float64)
    pos = np.mod(start + velocity * t, 2 * span)
    return np.where(pos > span, 2 * span - pos, pos)


def _background(scene: _Scene, num_frames: int, height: int, width: int) -> np.ndarray:
    t = np.arange(num_frames, dtype=np.float64)[:, None, None]
    y = np.arange(height, dtype=np.float64)[None, :, None]
    x = np.arange(width, dtype=np.float64)[None, None, :]
    phase = scene.freq[0] * (x - scene.drift[0] * t) + scene.freq[1] * (y - scene.drift[1] * t)
    mix = 0.5 + 0.5 * np.sin(2 * np.pi * phase)  # (T, H, W)
    return scene.colors[0] * mix[..., None] + scene.colors[1] * (1 - mix[..., None])  # (T, H, W, 3)


def _paint_square(frames: np.ndarray, scene: _Scene, color: np.ndarray) -> None:
    num_frames, height, width, _ = frames.shape
    t = np.arange(num_frames, dtype=np.float64)
    size = scene.square_size
    xs = _bounce(scene.square_start[0], scene.square_velocity[0], t, width - size)
    ys = _bounce(scene.square_start[1], scene.square_velocity[1], t, height - size)
    for i in range(num_frames):
        x, y = int(round(xs[i])), int(round(ys[i]))
        frames[i, y : y + size, x : x + size] = color


def _paint_circle(frames: np.ndarray, scene: _Scene) -> None:
    num_frames, height, width, _ = frames.shape
    radius = max(3, scene.square_size // 2)
    yy, xx = np.mgrid[0:height, 0:width]
    for i in range(num_frames):
        cx = width - 1 - radius - (i * 2.0) % max(1, width - 2 * radius)
        cy = height / 2 + (height / 4) * np.sin(i / 3.0)
        mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= radius**2
        frames[i][mask] = 255 - scene.square_color


def _paint_subtitle(frames: np.ndarray, rng: np.random.Generator) -> None:
    num_frames, height, width, _ = frames.shape
    band = max(6, height // 6)
    frames[:, height - band :, :] = 20.0
    x = 3
    while x < width - 4:  # "words": white blocks of varying length
        length = int(rng.integers(3, 9))
        frames[:, height - band + 2 : height - 2, x : min(width - 3, x + length)] = 235.0
        x += length + 3


def _render(scene: _Scene, num_frames: int, height: int, width: int) -> np.ndarray:
    frames = _background(scene, num_frames, height, width)
    _paint_square(frames, scene, scene.square_color)
    return frames


def _render_edit(category: str, scene: _Scene, num_frames: int, height: int, width: int) -> np.ndarray:
    rng = np.random.default_rng(scene.edit_seed)
    if category == "global_style":
        frames = _render(scene, num_frames, height, width)[..., ::-1]  # swap warm and cool
        return np.round(frames / 64.0) * 64.0  # posterise to a few levels
    if category == "background_change":
        new_bg = _random_scene(rng, width, height)
        frames = _background(new_bg, num_frames, height, width)
        _paint_square(frames, scene, scene.square_color)
        return frames
    if category == "local_change":
        frames = _background(scene, num_frames, height, width)
        _paint_square(frames, scene, 255.0 - scene.square_color)
        return frames
    if category == "local_remove":
        return _background(scene, num_frames, height, width)
    if category == "local_add":
        frames = _render(scene, num_frames, height, width)
        _paint_circle(frames, scene)
        return frames
    if category == "subtitle_edit":
        frames = _render(scene, num_frames, height, width)
        _paint_subtitle(frames, rng)
        return frames
    raise ValueError(f"unknown category {category!r}; expected one of {CATEGORIES}")


def _to_uint8(frames: np.ndarray) -> np.ndarray:
    return np.clip(np.round(frames), 0, 255).astype(np.uint8)


def _write_pair(
    video_root: Path,
    category: str,
    index: int,
    config: SyntheticOpenVEConfig,
    rng: np.random.Generator,
    num_frames: int,
    scene: _Scene | None = None,
    noise: float = 0.0,
    fps: float | None = None,
    scale: int = 1,
) -> tuple[str, str, _Scene]:
    """Render and write one pair (at ``1 / scale`` of the configured size); returns the CSV (relative)
    paths and the scene."""
    height, width = config.height // scale, config.width // scale
    scene = scene or _random_scene(rng, width, height)
    source = _render(scene, num_frames, height, width)
    target = _render_edit(category, scene, num_frames, height, width)
    if noise:
        source = source + rng.normal(0, noise, size=source.shape)
        target = target + rng.normal(0, noise, size=target.shape)
    src_rel = f"{category}/{index:05d}_src.mp4"
    tgt_rel = f"{category}/{index:05d}_edit.mp4"
    write_mp4(video_root / src_rel, _to_uint8(source), fps=fps or config.fps)
    write_mp4(video_root / tgt_rel, _to_uint8(target), fps=fps or config.fps)
    return src_rel, tgt_rel, scene


def _csv_text(rows: list[dict[str, str]], columns: list[str], delimiter: str, terminator: str) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, delimiter=delimiter, lineterminator=terminator)
    writer.writeheader()
    for row in rows:
        if "__raw__" in row:  # a malformed line, written as is
            buffer.write(row["__raw__"] + terminator)
        else:
            writer.writerow({c: row.get(c, "") for c in columns})
    return buffer.getvalue()


def generate_openve(root: str | Path, config: SyntheticOpenVEConfig | None = None) -> SyntheticOpenVE:
    """Write the synthetic dataset under ``root`` (CSVs in ``csv/``, clips in ``videos/``)."""
    config = config or SyntheticOpenVEConfig()
    unknown = sorted(set(config.broken) - set(BROKEN_KINDS))
    if unknown:
        raise ValueError(f"unknown broken row kind(s) {unknown}; known: {sorted(BROKEN_KINDS)}")
    unknown = sorted(set(config.categories) - set(CATEGORIES))
    if unknown:
        raise ValueError(f"unknown categories {unknown}; known: {list(CATEGORIES)}")
    root = Path(root)
    csv_dir, video_root = root / "csv", root / "videos"
    csv_dir.mkdir(parents=True, exist_ok=True)
    out = SyntheticOpenVE(root=root, csv_dir=csv_dir, video_root=video_root)

    broken_by_category: dict[str, list[str]] = {c: [] for c in config.categories}
    for k, kind in enumerate(config.broken):
        broken_by_category[config.categories[k % len(config.categories)]].append(kind)

    for c_index, category in enumerate(config.categories):
        rng = np.random.default_rng([config.seed, c_index])
        prompts = _PROMPTS[category]
        rows: list[dict[str, str]] = []
        first_scene: _Scene | None = None

        def add_row(src: str, tgt: str, prompt: str, category: str = category, rows: list = rows) -> int:
            rows.append(
                {
                    "original_video": src,
                    "video": tgt,
                    "prompt": prompt,
                    "id": f"{category}-{len(rows):05d}",
                    "edited_type": category,
                    "aesthetic": f"{5 + (len(rows) % 5) * 0.5:.1f}",
                    "notes": "synthetic; generated",
                }
            )
            return len(rows)  # 1-based data row

        for i in range(config.pairs_per_category):
            k = c_index * config.pairs_per_category + i  # through the list, category after category
            frames, fps = (
                config.lengths[k % len(config.lengths)] if config.lengths else (config.num_frames, None)
            )
            src, tgt, scene = _write_pair(video_root, category, i, config, rng, frames, fps=fps)
            first_scene = first_scene or scene
            add_row(src, tgt, f"{prompts[i % len(prompts)]} (clip {i})" if i >= len(prompts) else prompts[i])
        index = config.pairs_per_category
        for d in range(config.near_duplicates_per_category):
            if first_scene is None:
                break
            src, tgt, _ = _write_pair(
                video_root, category, index, config, rng, config.num_frames, scene=first_scene, noise=2.0
            )
            row = add_row(src, tgt, f"{prompts[0]} (variant {d + 1})")
            out.near_duplicates[(category, row)] = 1
            index += 1
        for kind in broken_by_category[category]:
            src_rel = f"{category}/{index:05d}_src.mp4"
            tgt_rel = f"{category}/{index:05d}_edit.mp4"
            prompt = f"{prompts[0]} (broken: {kind})"
            if kind == "too_short":
                _write_pair(video_root, category, index, config, rng, config.short_frames)
            elif kind == "too_small":  # half the size: its bucket would need a 2x upscale
                _write_pair(video_root, category, index, config, rng, config.num_frames, scale=2)
            elif kind == "misaligned":  # the target has another size and frame count (a wrong file)
                _write_pair(video_root, category, index, config, rng, config.num_frames)
                other = _render(_random_scene(rng, config.width * 2, config.height), config.num_frames + 8,
                                config.height, config.width * 2)  # fmt: skip
                write_mp4(video_root / tgt_rel, _to_uint8(other), fps=config.fps)
            elif kind != "malformed_row":
                _write_pair(video_root, category, index, config, rng, config.num_frames)
                target = video_root / tgt_rel
                if kind == "missing_file":
                    target.unlink()
                elif kind == "zero_byte":
                    target.write_bytes(b"")
                elif kind == "truncated":
                    data = target.read_bytes()
                    target.write_bytes(data[: len(data) * 2 // 5])
                elif kind == "garbage":
                    target.write_bytes(rng.integers(0, 256, size=4096, dtype=np.uint8).tobytes())
            if kind == "malformed_row":
                delimiter = _CSV_STYLES[category][0]
                rows.append({"__raw__": delimiter.join([src_rel, tgt_rel])})  # prompt column missing
                row = len(rows)
            else:
                row = add_row(src_rel, tgt_rel, prompt)
            out.expected_rejections[(category, row)] = BROKEN_KINDS[kind]
            index += 1

        delimiter, bom, terminator, columns = _CSV_STYLES[category]
        text = _csv_text(rows, columns, delimiter, terminator)
        (csv_dir / f"{category}.csv").write_bytes(("\ufeff" if bom else "").encode() + text.encode("utf-8"))
        out.rows_per_category[category] = len(rows)
    return out


def build_filter_demo(demo_dir: str | Path = "demo_data") -> SyntheticOpenVE:
    """Write the inputs of the demo recipe's ``[filter]``: the dataset at ``<demo_dir>/openve`` (6 pairs and
    a near-copy per category, one broken row of each kind), the tiny Qwen3-VL at ``<demo_dir>/models/qwen3vl``
    and the tiny open_clip at ``<demo_dir>/models/open_clip`` (models are kept when already there)."""
    from dataengine.synthetic.clip import build_tiny_open_clip
    from dataengine.synthetic.qwen3vl import build_tiny_qwen3vl

    demo_dir = Path(demo_dir)
    config = SyntheticOpenVEConfig(
        pairs_per_category=6, near_duplicates_per_category=1, broken=tuple(BROKEN_KINDS)
    )
    data = generate_openve(demo_dir / "openve", config)
    if not (demo_dir / "models" / "qwen3vl" / "config.json").exists():
        build_tiny_qwen3vl(demo_dir / "models" / "qwen3vl")
    if not (demo_dir / "models" / "open_clip" / "tiny_clip.safetensors").exists():
        build_tiny_open_clip(demo_dir / "models" / "open_clip")
    return data
