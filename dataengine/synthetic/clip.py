"""A tiny, randomly initialised open_clip model, for tests and the demo's near-duplicate removal.

``build_tiny_open_clip(folder)`` writes ``<folder>/TinyClip.json`` (an open_clip model config) and
``<folder>/tiny_clip.safetensors`` (its random weights). They load through open_clip's own API, the path
that loads real checkpoints::

    open_clip.add_model_config(folder / "TinyClip.json")
    model, _, preprocess = open_clip.create_model_and_transforms("TinyClip", pretrained=str(checkpoint))

or, from a recipe, ``[filter.dedup] model = "TinyClip"``, ``model_config = ".../TinyClip.json"``,
``pretrained = ".../tiny_clip.safetensors"``.
"""

from __future__ import annotations

import json
from pathlib import Path

TINY_CLIP_NAME = "TinyClip"

TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
}


def build_tiny_open_clip(folder: str | Path, seed: int = 0) -> tuple[Path, Path]:
    """Save the tiny config and random weights; returns (config json, safetensors checkpoint)."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config_path = folder / f"{TINY_CLIP_NAME}.json"
    config_path.write_text(json.dumps(TINY_CLIP_CONFIG, indent=2))
    open_clip.add_model_config(config_path)
    torch.manual_seed(seed)
    model = open_clip.create_model(TINY_CLIP_NAME, pretrained=None)
    checkpoint = folder / "tiny_clip.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(checkpoint))
    return config_path, checkpoint
