"""Test support: tiny random Wan2.1 DiT checkpoints in the diffusers and the original layout.

The diffusers layout comes from diffusers' own ``WanTransformer3DModel.save_pretrained``; the original
layout is written here (safetensors shards + ``*.safetensors.index.json``) with the original Wan key names,
checked against diffusers' own converter ``convert_wan_transformer_to_diffusers`` in the tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import WanTransformer3DModel
from safetensors.torch import save_file

from trainer.model import MiVEConfig

# diffusers name fragment -> original Wan name fragment (the inverse of diffusers' converter table)
_TO_ORIGINAL = [
    ("condition_embedder.time_embedder.linear_1", "time_embedding.0"),
    ("condition_embedder.time_embedder.linear_2", "time_embedding.2"),
    ("condition_embedder.text_embedder.linear_1", "text_embedding.0"),
    ("condition_embedder.text_embedder.linear_2", "text_embedding.2"),
    ("condition_embedder.time_proj", "time_projection.1"),
    (".attn1.", ".self_attn."),
    (".attn2.", ".cross_attn."),
    (".to_out.0.", ".o."),
    (".to_q.", ".q."),
    (".to_k.", ".k."),
    (".to_v.", ".v."),
    ("ffn.net.0.proj", "ffn.0"),
    ("ffn.net.2", "ffn.2"),
    (".norm2.", ".norm3."),  # diffusers' norm2 is the cross-attention norm, the original's norm3
]


def tiny_diffusers_wan(config: MiVEConfig, seed: int = 0, text_dim: int = 32) -> WanTransformer3DModel:
    """A diffusers Wan DiT with ``config``'s dimensions and every parameter random (norm weights near 1)."""
    torch.manual_seed(seed)
    model = WanTransformer3DModel(
        patch_size=config.patch_size,
        num_attention_heads=config.num_heads,
        attention_head_dim=config.head_dim,
        in_channels=config.latent_channels,
        out_channels=config.latent_channels,
        text_dim=text_dim,
        freq_dim=config.freq_dim,
        ffn_dim=config.ffn_dim,
        num_layers=config.num_layers,
        cross_attn_norm=True,
        eps=config.eps,
    )
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                param.copy_(1 + 0.2 * torch.randn_like(param))
            else:
                param.copy_(0.1 * torch.randn_like(param))
    return model.eval()


def diffusers_to_original(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a diffusers Wan state dict to the original Wan2.1 layout."""
    out = {}
    for name, tensor in state_dict.items():
        new = name
        if new == "scale_shift_table":
            new = "head.modulation"
        elif new.startswith("proj_out."):
            new = "head.head." + new.removeprefix("proj_out.")
        elif new.endswith(".scale_shift_table"):
            new = new.replace(".scale_shift_table", ".modulation")
        for old, replacement in _TO_ORIGINAL:
            new = new.replace(old, replacement)
        out[new] = tensor
    return out


def save_sharded(state_dict: dict[str, torch.Tensor], folder: Path, num_shards: int, stem: str) -> list[str]:
    """Write ``state_dict`` as ``num_shards`` safetensors files plus ``<stem>.safetensors.index.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    names = sorted(state_dict)
    weight_map = {}
    files = []
    for i in range(num_shards):
        file = f"{stem}-{i + 1:05d}-of-{num_shards:05d}.safetensors"
        part = {n: state_dict[n].contiguous() for n in names[i::num_shards]}
        save_file(part, str(folder / file))
        weight_map.update(dict.fromkeys(part, file))
        files.append(file)
    index = {
        "metadata": {"total_size": sum(t.numel() * t.element_size() for t in state_dict.values())},
        "weight_map": weight_map,
    }
    (folder / f"{stem}.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return files
