"""Synthetic portrait and background clips with a KNOWN person mask, and a tiny random SAM2.

A portrait clip is a drawn figure (a head ellipse over a torso ellipse that reaches the bottom of the
frame) swaying over a textured, slowly panning background; :func:`render_portrait` returns the frames
and the exact figure mask per frame, so a test knows the ground truth a segmenter should find. A
background clip is a textured scene that pans, with no figure. Everything is deterministic from a seed.

Variants that a quality gate must reject: ``scale`` shrinks or grows the figure (``mask_too_small``,
``mask_too_large``), ``teleport`` makes it jump every frame (``mask_unstable``), ``vanish_from`` removes
it from that frame on (``empty_mask``). Variants a person detector must sort out (:func:`render_people`
also returns each frame's true person boxes): ``enter_at`` (the person enters late), ``centre_x`` (off
centre), ``num_people`` 0 (absent) or 2.

:func:`generate_portraits` writes a dataset in the layout the ``[portraits]`` recipe reads::

    <root>/people/person_000.mp4            portrait clip (H.264)
    <root>/people/person_000.masks.npz      its ground-truth masks (bit-packed, see dataengine.models.segment)
    <root>/people/person_000.boxes.json     its true person boxes per frame (see dataengine.models.detect)
    <root>/backgrounds/background_000.mp4   background clip (and its .boxes.json: no box)
    <root>/pool/pool_000_late.mp4           a mixed pool for ``dataengine harvest-portraits`` (masks, boxes)

The pool holds the cases of ``POOL_KINDS``: a person throughout, entering late, off centre, absent,
leaving, passing through, two people, a small person, a clip too short for a window.

:func:`build_tiny_sam2` saves a tiny randomly initialised ``Sam2VideoModel`` with its
``Sam2VideoProcessor`` so ``from_pretrained(folder)`` loads both, offline. Usage::

    from dataengine.synthetic.portraits import SyntheticPortraitsConfig, build_tiny_sam2, generate_portraits
    generate_portraits("demo_data/portraits", SyntheticPortraitsConfig())
    build_tiny_sam2("demo_data/models/sam2")
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dataengine.media.video import write_mp4
from dataengine.models.detect import boxes_path, save_boxes
from dataengine.models.segment import MASKS_SUFFIX, save_masks


@dataclass(frozen=True)
class SyntheticPortraitsConfig:
    """What :func:`generate_portraits` writes."""

    num_people: int = 4
    """Portrait clips (a figure over a textured background)."""
    num_backgrounds: int = 3
    """Background clips (no figure)."""
    width: int = 160
    """Frame width in pixels (even, for H.264)."""
    height: int = 96
    """Frame height in pixels (even, for H.264)."""
    num_frames: int = 17
    """Frames per portrait clip."""
    background_frames: tuple[int, ...] = (9, 17, 25)
    """Frames per background clip, cycled: shorter ones are looped by the compositor, longer ones trimmed."""
    fps: float = 16.0
    """Frame rate of every clip."""
    seed: int = 0
    """Seed of the whole dataset."""
    bad_people: tuple[str, ...] = field(default_factory=tuple)
    """Extra portrait clips the gate must reject, by kind: ``empty``, ``small``, ``large``, ``unstable``."""
    pool: tuple[str, ...] = (
        "centred",
        "late",
        "off_centre",
        "absent",
        "absent",
        "leaves",
        "passing",
        "two_people",
        "small",
        "short",
    )
    """Clips of the harvest pool (``<root>/pool``), by kind (``POOL_KINDS``); empty for none."""
    pool_frames: int = 33
    """Frames per pool clip (``short`` ones have ``pool_short_frames``)."""
    pool_short_frames: int = 12
    """Frames of a ``short`` pool clip."""
    pool_enter_at: int = 8
    """Frame at which the person of a ``late`` clip enters."""
    pool_leave_at: int = 12
    """Frame at which the person of a ``leaves`` clip is gone."""
    pool_pass: tuple[int, int] = (6, 19)
    """Frames [first, last) in which the person of a ``passing`` clip is in view."""


# kind of bad portrait -> (render_portrait keyword arguments, the gate's rejection reason)
BAD_PORTRAITS = {
    "empty": ({"vanish_from": 5}, "empty_mask"),
    "small": ({"scale": 0.15}, "mask_too_small"),
    "large": ({"scale": 4.0}, "mask_too_large"),
    "unstable": ({"teleport": True}, "mask_unstable"),
}


# kind of pool clip -> render_people keyword arguments (filled from the config in generate_portraits)
POOL_KINDS = ("centred", "late", "off_centre", "absent", "leaves", "passing", "two_people", "small", "short")


def _pool_kwargs(kind: str, config: SyntheticPortraitsConfig) -> dict:
    if kind not in POOL_KINDS:
        raise ValueError(f"unknown pool kind {kind!r}; expected one of {POOL_KINDS}")
    return {
        "centred": {},
        "late": {"enter_at": config.pool_enter_at},
        "off_centre": {"centre_x": 0.16},
        "absent": {"num_people": 0},
        "leaves": {"vanish_from": config.pool_leave_at},
        "passing": {"enter_at": config.pool_pass[0], "vanish_from": config.pool_pass[1]},
        "two_people": {"num_people": 2},
        "small": {"scale": 0.15},
        "short": {"num_frames": config.pool_short_frames},
    }[kind]


def _texture(rng: np.random.Generator, num_frames: int, height: int, width: int, pan: float) -> np.ndarray:
    """A textured scene panning by ``pan`` pixels per frame: sinusoid mix plus fixed noise, (T, H, W, 3) uint8."""
    freqs = rng.uniform(0.02, 0.12, size=(3, 2))
    phases = rng.uniform(0, 2 * np.pi, size=(3,))
    base = rng.uniform(60, 190, size=(3,))
    noise = rng.normal(0, 10, size=(height, width + int(abs(pan) * num_frames) + 2, 3))
    y = np.arange(height, dtype=np.float64)[:, None]
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    for t in range(num_frames):
        offset = pan * t
        x = np.arange(width, dtype=np.float64)[None, :] + offset
        img = np.empty((height, width, 3), dtype=np.float64)
        for c in range(3):
            img[..., c] = base[c] + 45 * np.sin(freqs[c, 0] * x + freqs[c, 1] * y + phases[c])
        shift = int(round(offset)) % max(1, noise.shape[1] - width)
        img += noise[:, shift : shift + width]
        frames[t] = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return frames


def _ellipse(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def render_portrait(
    seed: int,
    num_frames: int,
    height: int,
    width: int,
    scale: float = 1.0,
    teleport: bool = False,
    vanish_from: int | None = None,
    enter_at: int | None = None,
    centre_x: float | None = None,
    num_people: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Figures swaying over a textured background: frames (T, H, W, 3) uint8 and masks (T, H, W) bool.

    The mask is exactly the set of pixels painted with the figures' colours. See :func:`render_people`.
    """
    frames, masks, _ = render_people(
        seed, num_frames, height, width, scale, teleport, vanish_from, enter_at, centre_x, num_people
    )
    return frames, masks


def render_people(
    seed: int,
    num_frames: int,
    height: int,
    width: int,
    scale: float = 1.0,
    teleport: bool = False,
    vanish_from: int | None = None,
    enter_at: int | None = None,
    centre_x: float | None = None,
    num_people: int = 1,
) -> tuple[np.ndarray, np.ndarray, list[list[tuple[int, int, int, int]]]]:
    """Frames, masks, and each frame's true person boxes ``(x0, y0, x1, y1)`` (pixels, x1 and y1 exclusive).

    The figures are present from frame ``enter_at`` (default 0) until before ``vanish_from`` (default: the
    end). One figure sways around ``centre_x`` (a fraction of the width; default the centre); two stand at
    0.28 and 0.72 of the width. A box is the bounding box of its figure's pixels.
    """
    if num_people not in (0, 1, 2):
        raise ValueError(f"render_people: num_people must be 0, 1 or 2, got {num_people}")
    rng = np.random.default_rng(seed)
    frames = _texture(rng, num_frames, height, width, pan=rng.uniform(-1.5, 1.5))
    looks = []
    for person in range(num_people):
        skin = rng.uniform([150, 100, 80], [230, 180, 150])
        shirt = rng.uniform(20, 235, size=3)
        stripe = rng.uniform(0.3, 0.6)
        sway = rng.uniform(0.05, 0.12), rng.uniform(0.015, 0.04), rng.uniform(0, 2 * np.pi)
        if num_people == 2:
            centre = (0.28, 0.72)[person]
            sway = (sway[0] / 3, *sway[1:])  # stay apart
        else:
            centre = 0.5 if centre_x is None else centre_x
        looks.append((skin, shirt, stripe, sway, centre))
    head_ry = 0.16 * height * scale
    head_rx = 0.75 * head_ry
    torso_ry = 0.45 * height * scale
    torso_rx = 1.6 * head_rx
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    masks = np.zeros((num_frames, height, width), dtype=bool)
    boxes: list[list[tuple[int, int, int, int]]] = [[] for _ in range(num_frames)]
    for t in range(num_frames):
        if (vanish_from is not None and t >= vanish_from) or (enter_at is not None and t < enter_at):
            continue
        frame = frames[t].astype(np.float64)
        for skin, shirt, stripe, (sway_amp, sway_freq, phase), centre in looks:
            if teleport:  # a new place every frame: consecutive masks barely overlap
                cx = width * (0.2 if t % 2 == 0 else 0.8)
            else:
                cx = width * (centre + sway_amp * np.sin(sway_freq * 2 * np.pi * t + phase))
            head_cy = height - 2 * torso_ry * 0.8 - head_ry * 0.6
            head = _ellipse(yy, xx, head_cy, cx, head_ry, head_rx)
            torso = _ellipse(yy, xx, height - torso_ry * 0.6, cx, torso_ry, torso_rx)
            person = head | torso
            torso &= ~head
            frame[head] = skin
            stripes = (np.sin(yy * stripe) > 0)[..., None]
            frame[torso] = np.where(stripes[torso], shirt, 0.6 * shirt)
            masks[t] |= person
            rows, cols = np.flatnonzero(person.any(axis=1)), np.flatnonzero(person.any(axis=0))
            if rows.size:
                boxes[t].append((int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1))
        frames[t] = np.clip(np.rint(frame), 0, 255).astype(np.uint8)
    return frames, masks, boxes


def render_background(seed: int, num_frames: int, height: int, width: int) -> np.ndarray:
    """A textured scene that pans, no figure: (T, H, W, 3) uint8."""
    rng = np.random.default_rng(seed)
    return _texture(rng, num_frames, height, width, pan=rng.uniform(-2.0, 2.0))


@dataclass
class SyntheticPortraits:
    """Paths written by :func:`generate_portraits` (ground-truth masks and boxes sit beside each clip)."""

    root: Path
    people: list[Path]
    backgrounds: list[Path]
    expected_rejections: dict[str, str]
    """Portrait file name -> the gate's reason, for the ``bad_people`` clips."""
    pool: dict[str, str] = field(default_factory=dict)
    """Pool clip file name -> its kind (``POOL_KINDS``)."""


def _write_clip(path: Path, frames: np.ndarray, masks: np.ndarray | None, boxes: list, fps: float) -> None:
    """The clip, its masks (unless None) and its true boxes (score 1)."""
    write_mp4(path, frames, fps)
    if masks is not None:
        save_masks(path.with_name(path.stem + MASKS_SUFFIX), masks)
    save_boxes(boxes_path(path), [[[*b, 1.0] for b in frame] for frame in boxes], *frames.shape[1:3])


def generate_portraits(
    root: str | Path, config: SyntheticPortraitsConfig | None = None
) -> SyntheticPortraits:
    """Write portrait clips, background clips and the harvest pool under ``root``, with their masks and boxes."""
    config = config or SyntheticPortraitsConfig()
    root = Path(root)
    people_dir, backgrounds_dir = root / "people", root / "backgrounds"
    people, backgrounds, expected = [], [], {}
    kinds: list[tuple[str, dict]] = [("good", {})] * config.num_people
    kinds += [(kind, BAD_PORTRAITS[kind][0]) for kind in config.bad_people]
    size = {"height": config.height, "width": config.width}
    for i, (kind, kwargs) in enumerate(kinds):
        clip = render_people(seed=config.seed * 10_000 + i, num_frames=config.num_frames, **size, **kwargs)
        name = f"person_{i:03d}" if kind == "good" else f"person_{i:03d}_{kind}"
        path = people_dir / f"{name}.mp4"
        _write_clip(path, *clip, config.fps)
        people.append(path)
        if kind != "good":
            expected[path.name] = BAD_PORTRAITS[kind][1]
    for i in range(config.num_backgrounds):
        num_frames = config.background_frames[i % len(config.background_frames)]
        frames = render_background(config.seed * 10_000 + 5_000 + i, num_frames, **size)
        path = backgrounds_dir / f"background_{i:03d}.mp4"
        _write_clip(path, frames, None, [[]] * num_frames, config.fps)
        backgrounds.append(path)
    pool = {}
    for i, kind in enumerate(config.pool):
        kwargs = {"num_frames": config.pool_frames, **_pool_kwargs(kind, config)}
        clip = render_people(seed=config.seed * 10_000 + 7_000 + i, **size, **kwargs)
        path = root / "pool" / f"pool_{i:03d}_{kind}.mp4"
        _write_clip(path, *clip, config.fps)
        pool[path.name] = kind
    return SyntheticPortraits(
        root=root, people=people, backgrounds=backgrounds, expected_rejections=expected, pool=pool
    )


def build_tiny_sam2(out_dir: str | Path, seed: int = 0, image_size: int = 128) -> Path:
    """Save a tiny random ``Sam2VideoModel`` and its ``Sam2VideoProcessor`` into ``out_dir``.

    The shapes keep the constraints of the real model that the code relies on: the memory encoder's
    64 output channels (hard-wired in the memory attention) are a divisor of the 128-wide hidden size,
    the feature pyramid is the image size / 4, 8, 16, and no global-attention block opens a stage.
    """
    import torch
    from transformers import (
        Sam2HieraDetConfig,
        Sam2ImageProcessor,
        Sam2VideoConfig,
        Sam2VideoMaskDecoderConfig,
        Sam2VideoModel,
        Sam2VideoProcessor,
        Sam2VideoPromptEncoderConfig,
        Sam2VideoVideoProcessor,
        Sam2VisionConfig,
    )

    if image_size % 32:
        raise ValueError(f"build_tiny_sam2: image_size must be a multiple of 32, got {image_size}")
    hidden = 128
    size = image_size
    backbone = Sam2HieraDetConfig(
        hidden_size=8,
        image_size=[size, size],
        blocks_per_stage=[1, 1, 2, 1],
        embed_dim_per_stage=[8, 16, 32, 64],
        num_attention_heads_per_stage=[1, 1, 2, 2],
        window_size_per_stage=[4, 4, 4, 4],
        global_attention_blocks=[3],
        window_positional_embedding_background_size=[2, 2],
    )
    vision = Sam2VisionConfig(
        backbone_config=backbone,
        backbone_channel_list=[64, 32, 16, 8],
        backbone_feature_sizes=[[size // 4] * 2, [size // 8] * 2, [size // 16] * 2],
        fpn_hidden_size=hidden,
    )
    config = Sam2VideoConfig(
        vision_config=vision,
        prompt_encoder_config=Sam2VideoPromptEncoderConfig(
            hidden_size=hidden, image_size=size, patch_size=16, mask_input_channels=4
        ),
        mask_decoder_config=Sam2VideoMaskDecoderConfig(
            hidden_size=hidden, mlp_dim=64, num_hidden_layers=1, num_attention_heads=2, iou_head_hidden_dim=32
        ),
        image_size=size,
        num_maskmem=3,
        memory_attention_hidden_size=hidden,
        memory_attention_num_layers=1,
        memory_attention_feed_forward_hidden_size=64,
        memory_attention_rope_feat_sizes=[size // 16, size // 16],
        memory_encoder_hidden_size=hidden,
        memory_encoder_output_channels=64,
        mask_downsampler_embed_dim=hidden,
        memory_fuser_embed_dim=hidden,
        memory_fuser_intermediate_dim=64,
        memory_fuser_num_layers=1,
    )
    torch.manual_seed(seed)
    model = Sam2VideoModel(config).eval()
    processor = Sam2VideoProcessor(
        image_processor=Sam2ImageProcessor(
            size={"height": size, "width": size}, mask_size={"height": size // 4, "width": size // 4}
        ),
        video_processor=Sam2VideoVideoProcessor(size={"height": size, "width": size}),
    )
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir
