"""A tiny, randomly initialised Wan2.1 DiT saved in the diffusers layout, for the demo's ``trainer fit``.

The defaults are the trainer's ``debug`` model dimensions (``trainer.model.get_config("debug")``; a test
keeps them equal), so ``train.init = "demo_data/models/wan"`` exercises the same Wan weight loader that
reads ``Wan-AI/Wan2.1-T2V-14B-Diffusers`` on a real run.
"""

from __future__ import annotations

from pathlib import Path


def build_tiny_wan_dit(
    folder: str | Path,
    seed: int = 0,
    dim: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    ffn_dim: int = 256,
    freq_dim: int = 64,
    text_dim: int = 32,
) -> Path:
    """Save a random ``WanTransformer3DModel`` to ``folder/transformer`` (sharded) and return ``folder``."""
    import torch
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    model = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=num_heads,
        attention_head_dim=dim // num_heads,
        in_channels=16,
        out_channels=16,
        text_dim=text_dim,
        freq_dim=freq_dim,
        ffn_dim=ffn_dim,
        num_layers=num_layers,
        cross_attn_norm=True,
    )
    folder = Path(folder)
    # Several shards, like the real checkpoint, so the loader's shard-by-shard path runs.
    model.save_pretrained(folder / "transformer", max_shard_size="200KB")
    return folder
