"""Synthetic portrait and background clips with a KNOWN person mask, and a tiny random SAM2.

A portrait clip is a drawn figure (a head ellipse over a torso ellipse that reaches the bottom of the
frame) swaying over a textured, slowly panning background; :func:`render_portrait` returns the frames
and the exact figure mask per frame, so a test knows the ground truth a segmenter should find. A
background clip is a textured scene that pans, with no figure. Everything is deterministic from a seed.

Variants that a quality gate must reject: ``scale`` shrinks or grows the figure (``mask_too_small``,
``mask_too_large``), ``teleport`` makes it jump every frame (``mask_unstable``), ``vanish_from`` removes
it from that frame on (``empty_mask``).

:func:`generate_portraits` writes a dataset in the layout the ``[portraits]`` recipe reads::

    <root>/people/person_000.mp4          portrait clip (H.264)
    <root>/people/person_000.masks.npz    its ground-truth masks (bit-packed, see dataengine.segment)
    <root>/backgrounds/background_000.mp4 background clip

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

from dataengine.segment import MASKS_SUFFIX, save_masks
from dataengine.video import write_mp4


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


# kind of bad portrait -> (render_portrait keyword arguments, the gate's rejection reason)
BAD_PORTRAITS = {
    "empty": ({"vanish_from": 5}, "empty_mask"),
    "small": ({"scale": 0.15}, "mask_too_small"),
    "large": ({"scale": 4.0}, "mask_too_large"),
    "unstable": ({"teleport": True}, "mask_unstable"),
}


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
) -> tuple[np.ndarray, np.ndarray]:
    """A figure swaying over a textured background: frames (T, H, W, 3) uint8 and masks (T, H, W) bool.

    The mask is exactly the set of pixels painted with the figure's colours.
    """
    rng = np.random.default_rng(seed)
    frames = _texture(rng, num_frames, height, width, pan=rng.uniform(-1.5, 1.5))
    skin = rng.uniform([150, 100, 80], [230, 180, 150])
    shirt = rng.uniform(20, 235, size=3)
    stripe = rng.uniform(0.3, 0.6)
    sway_amp, sway_freq, phase = rng.uniform(0.05, 0.12), rng.uniform(0.015, 0.04), rng.uniform(0, 2 * np.pi)
    head_ry = 0.16 * height * scale
    head_rx = 0.75 * head_ry
    torso_ry = 0.45 * height * scale
    torso_rx = 1.6 * head_rx
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    masks = np.zeros((num_frames, height, width), dtype=bool)
    for t in range(num_frames):
        if vanish_from is not None and t >= vanish_from:
            continue
        if teleport:  # a new place every frame: consecutive masks barely overlap
            cx = width * (0.2 if t % 2 == 0 else 0.8)
        else:
            cx = width * (0.5 + sway_amp * np.sin(sway_freq * 2 * np.pi * t + phase))
        head_cy = height - 2 * torso_ry * 0.8 - head_ry * 0.6
        head = _ellipse(yy, xx, head_cy, cx, head_ry, head_rx)
        torso = _ellipse(yy, xx, height - torso_ry * 0.6, cx, torso_ry, torso_rx)
        torso &= ~head
        frame = frames[t].astype(np.float64)
        frame[head] = skin
        stripes = (np.sin(yy * stripe) > 0)[..., None]
        frame[torso] = np.where(stripes[torso], shirt, 0.6 * shirt)
        frames[t] = np.clip(np.rint(frame), 0, 255).astype(np.uint8)
        masks[t] = head | torso
    return frames, masks


def render_background(seed: int, num_frames: int, height: int, width: int) -> np.ndarray:
    """A textured scene that pans, no figure: (T, H, W, 3) uint8."""
    rng = np.random.default_rng(seed)
    return _texture(rng, num_frames, height, width, pan=rng.uniform(-2.0, 2.0))


@dataclass
class SyntheticPortraits:
    """Paths written by :func:`generate_portraits` (ground-truth masks sit beside each portrait)."""

    root: Path
    people: list[Path]
    backgrounds: list[Path]
    expected_rejections: dict[str, str]
    """Portrait file name -> the gate's reason, for the ``bad_people`` clips."""


def generate_portraits(
    root: str | Path, config: SyntheticPortraitsConfig | None = None
) -> SyntheticPortraits:
    """Write portrait clips (with ``.masks.npz`` ground truth) and background clips under ``root``."""
    config = config or SyntheticPortraitsConfig()
    root = Path(root)
    people_dir, backgrounds_dir = root / "people", root / "backgrounds"
    people, backgrounds, expected = [], [], {}
    kinds: list[tuple[str, dict]] = [("good", {})] * config.num_people
    kinds += [(kind, BAD_PORTRAITS[kind][0]) for kind in config.bad_people]
    for i, (kind, kwargs) in enumerate(kinds):
        frames, masks = render_portrait(
            seed=config.seed * 10_000 + i,
            num_frames=config.num_frames,
            height=config.height,
            width=config.width,
            **kwargs,
        )
        name = f"person_{i:03d}" if kind == "good" else f"person_{i:03d}_{kind}"
        path = people_dir / f"{name}.mp4"
        write_mp4(path, frames, config.fps)
        save_masks(people_dir / f"{name}{MASKS_SUFFIX}", masks)
        people.append(path)
        if kind != "good":
            expected[path.name] = BAD_PORTRAITS[kind][1]
    for i in range(config.num_backgrounds):
        num_frames = config.background_frames[i % len(config.background_frames)]
        frames = render_background(config.seed * 10_000 + 5_000 + i, num_frames, config.height, config.width)
        path = backgrounds_dir / f"background_{i:03d}.mp4"
        write_mp4(path, frames, config.fps)
        backgrounds.append(path)
    return SyntheticPortraits(root=root, people=people, backgrounds=backgrounds, expected_rejections=expected)


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
