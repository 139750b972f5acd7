"""A tiny, randomly initialised Wan VAE (``AutoencoderKLWan``) in the diffusers layout, for tests and the demo.

``build_tiny_wan_vae(folder)`` writes ``folder/vae/`` (config + weights) so the folder loads through the
same path as ``Wan-AI/Wan2.1-T2V-14B-Diffusers``:
``AutoencoderKLWan.from_pretrained(folder, subfolder="vae")``. The architecture keeps the real one's
strides (temporal 4 with a causal first frame, spatial 8) and 16 latent channels with few, narrow
layers; ``latents_mean`` and ``latents_std`` are random and far from (0, 1), so a missing or wrong
normalisation shows in the tests.
"""

from __future__ import annotations

from pathlib import Path


def build_tiny_wan_vae(folder: str | Path, seed: int = 0, base_dim: int = 8) -> Path:
    """Save a tiny random ``AutoencoderKLWan`` to ``folder/vae`` and return ``folder``."""
    import torch
    from diffusers import AutoencoderKLWan

    folder = Path(folder)
    generator = torch.Generator().manual_seed(seed)
    z_dim = 16
    latents_mean = (torch.randn(z_dim, generator=generator) * 0.5).tolist()
    latents_std = (0.5 + torch.rand(z_dim, generator=generator) * 2.5).tolist()
    torch.manual_seed(seed)
    vae = AutoencoderKLWan(
        base_dim=base_dim,
        z_dim=z_dim,
        dim_mult=[1, 2, 2, 2],
        num_res_blocks=1,
        attn_scales=[],
        temperal_downsample=[False, True, True],
        latents_mean=[round(v, 4) for v in latents_mean],
        latents_std=[round(v, 4) for v in latents_std],
    ).eval()
    vae.save_pretrained(folder / "vae")
    return folder
