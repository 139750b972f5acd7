"""The demo's tiny Wan2.1 DiT has the debug model's dimensions, so `trainer fit` can initialise from it."""

from __future__ import annotations

import inspect

import torch

from dataengine.synthetic.wan_dit import build_tiny_wan_dit
from trainer.model import MiVETransformer, get_config
from trainer.wan_weights import load_wan_weights


def test_tiny_wan_dit_loads_into_the_debug_model(tmp_path):
    config = get_config("debug")
    defaults = {k: p.default for k, p in inspect.signature(build_tiny_wan_dit).parameters.items()}
    assert (
        defaults["dim"],
        defaults["num_layers"],
        defaults["num_heads"],
        defaults["ffn_dim"],
        defaults["freq_dim"],
    ) == (
        config.dim,
        config.num_layers,
        config.num_heads,
        config.ffn_dim,
        config.freq_dim,
    )
    folder = build_tiny_wan_dit(tmp_path / "wan", seed=3)
    assert len(list((folder / "transformer").glob("*.safetensors"))) > 1  # sharded like the real checkpoint
    model = MiVETransformer(config)
    report = load_wan_weights(model, str(folder), subfolder="transformer")
    from diffusers import WanTransformer3DModel

    reference = WanTransformer3DModel.from_pretrained(folder, subfolder="transformer")
    torch.testing.assert_close(model.blocks[0].attn.to_q.weight, reference.blocks[0].attn1.to_q.weight)
    assert any("attn2" in name for name in report.left_out)
