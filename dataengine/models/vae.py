"""The Wan2.1 VAE as an encoder of clips into normalised latents, and back.

``WanVaeEncoder`` loads ``AutoencoderKLWan`` through diffusers' ``from_pretrained`` (the hub id
``Wan-AI/Wan2.1-T2V-14B-Diffusers`` with subfolder ``vae``, or a local folder of the same layout) and:

- ``encode(frames)``: uint8 ``(T, H, W, 3)`` -> bf16 ``(16, T', H', W')`` with ``T' = 1 + (T - 1) / 4``,
  ``H' = H / 8``, ``W' = W / 8``: pixels mapped to [-1, 1], the posterior's mean (not a sample), then
  normalised per channel, ``z = (mu - latents_mean) / latents_std`` (the config's values);
- ``decode(latents)``: the inverse, normalised latents -> uint8 frames (used by ``trainer sample``).

A plain class: no Ray and no shard knowledge, so sampling reuses it as is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from dataengine.media.clips import (
    LATENT_CHANNELS as LATENT_CHANNELS,  # the latents' geometry: clip arithmetic
)
from dataengine.media.clips import latent_shape as latent_shape
from dataengine.models.devices import DType, resolve_device, resolve_dtype

if TYPE_CHECKING:  # torch is imported where it is used: the CLI imports this module for its config
    import torch


@dataclass(frozen=True)
class WanVaeConfig:
    """Which Wan VAE to load and how to run it (the ``[shards.vae]`` recipe table)."""

    model_id: str = "Wan-AI/Wan2.1-T2V-14B-Diffusers"
    """Hub id or local folder in the diffusers layout."""
    subfolder: str = "vae"
    """Subfolder of ``model_id`` holding the VAE ("" for a folder that is the VAE itself)."""
    dtype: DType = "float32"
    """Compute dtype (``float32``, ``bfloat16``); latents are always stored as bf16."""
    device: str = "auto"
    """``auto`` (CUDA if available, else CPU), ``cpu`` or ``cuda:N``."""
    tiling: bool = False
    """Encode/decode in overlapping spatial tiles to bound memory at high resolution."""
    slicing: bool = False
    """Encode/decode a batch one clip at a time to bound memory."""


class WanVaeEncoder:
    """``AutoencoderKLWan`` loaded once; encodes uint8 clips to normalised bf16 latents and decodes them back."""

    def __init__(self, config: WanVaeConfig):
        import torch
        from diffusers import AutoencoderKLWan

        self.config = config
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype)
        self.vae = AutoencoderKLWan.from_pretrained(
            config.model_id, subfolder=config.subfolder or None, torch_dtype=self.dtype
        )
        self.vae.to(self.device).eval().requires_grad_(False)
        if config.tiling:
            self.vae.enable_tiling()
        if config.slicing:
            self.vae.use_slicing = True
        vae_config = self.vae.config
        if vae_config.z_dim != LATENT_CHANNELS:
            raise ValueError(f"{config.model_id}: z_dim {vae_config.z_dim}, expected {LATENT_CHANNELS}")
        # (1, C, 1, 1, 1) to broadcast over (B, C, T', H', W')
        self.latents_mean = torch.tensor(vae_config.latents_mean, dtype=torch.float32).view(1, -1, 1, 1, 1)
        self.latents_std = torch.tensor(vae_config.latents_std, dtype=torch.float32).view(1, -1, 1, 1, 1)

    def encode(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 frames ``(T, H, W, 3)`` (or a batch ``(B, T, H, W, 3)``) -> bf16 ``(16, T', H', W')`` (or batched)."""
        import torch

        with torch.no_grad():
            return self._encode(frames)

    def _encode(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        import torch

        x = torch.as_tensor(np.asarray(frames) if not isinstance(frames, torch.Tensor) else frames)
        batched = x.ndim == 5
        if not batched:
            x = x[None]
        if x.ndim != 5 or x.shape[-1] != 3 or x.dtype != torch.uint8:
            raise ValueError(
                f"expected uint8 frames (T, H, W, 3) or (B, T, H, W, 3), got {tuple(x.shape)} {x.dtype}"
            )
        latent_shape(*x.shape[1:4])  # validates the clip's geometry
        # (B, T, H, W, 3) uint8 -> (B, 3, T, H, W) in [-1, 1]
        pixels = x.permute(0, 4, 1, 2, 3).to(self.device, torch.float32).div_(127.5).sub_(1.0).to(self.dtype)
        mu = self.vae.encode(pixels).latent_dist.mean.float().cpu()  # (B, 16, T', H', W')
        latents = ((mu - self.latents_mean) / self.latents_std).to(torch.bfloat16)
        return latents if batched else latents[0]

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """Normalised latents ``(16, T', H', W')`` (or batched) -> uint8 frames ``(T, H, W, 3)`` (or batched)."""
        import torch

        with torch.no_grad():
            return self._decode(latents)

    def _decode(self, latents: torch.Tensor) -> np.ndarray:
        import torch

        z = latents.float().cpu()
        batched = z.ndim == 5
        if not batched:
            z = z[None]
        if z.ndim != 5 or z.shape[1] != LATENT_CHANNELS:
            raise ValueError(
                f"expected latents (16, T', H', W') or (B, 16, T', H', W'), got {tuple(latents.shape)}"
            )
        raw = z * self.latents_std + self.latents_mean
        pixels = self.vae.decode(raw.to(self.device, self.dtype)).sample.float().cpu()  # (B, 3, T, H, W)
        frames = ((pixels.clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1).numpy()
        return frames if batched else frames[0]
