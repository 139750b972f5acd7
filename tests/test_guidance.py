"""Classifier-free guidance: the guided sampler against the formula computed here from the two passes, the
unconditional pass against training's dropped condition, training's condition dropout, and the refusal to
guide a model trained without it."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import torch
from safetensors.torch import save_file

from dataengine.formats.recipe import load_recipe
from tests.helpers import REPO
from tests.shard_builder import build_shards
from trainer.flow import Conditioning, euler_sample, shifted_sigmas
from trainer.model import MiVETransformer, get_config
from trainer.sample import (
    CONFIG_NAME,
    SAMPLING_NAME,
    WEIGHTS_NAME,
    SampleConfig,
    context_from_run,
    sample_video,
)
from trainer.train import fit, train_config_from_recipe


@pytest.fixture(scope="module")
def model() -> MiVETransformer:
    """The debug DiT with every weight random (a zero-initialised fusion would make the condition inert)."""
    torch.manual_seed(0)
    model = MiVETransformer(get_config("debug")).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.05)
    return model


def _conditioning(seed: int = 1) -> Conditioning:
    g = torch.Generator().manual_seed(seed)
    return Conditioning(
        torch.randn(1, 16, 2, 4, 6, generator=g),
        torch.randn(1, 16, 1, 4, 6, generator=g),
        torch.randn(1, 5, 64, generator=g),
        torch.randn(1, 5, 64, generator=g),
    )


def test_guided_sampler_equals_the_formula_from_two_passes(model):
    cond = _conditioning()
    scale, steps, shift, seed = 4.0, 3, 5.0, 7
    guided = euler_sample(model, cond, steps, shift, seed, guidance_scale=scale)

    # the same Euler integration written here, both passes explicit
    x = torch.randn(cond.source_latents.shape, generator=torch.Generator().manual_seed(seed))
    sigmas = shifted_sigmas(steps, shift).tolist()
    with torch.no_grad():
        for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:], strict=True):
            t = torch.full((1,), sigma * 1000.0)
            v_cond = model(x, cond.source_latents, cond.reference_latents, t, cond.vlm_first, cond.vlm_last)
            v_uncond = model(x, cond.source_latents, cond.reference_latents, t)
            assert (v_cond - v_uncond).abs().mean() > 1e-3  # the condition matters: the test can fail
            x = x + (sigma_next - sigma) * (v_uncond + scale * (v_cond - v_uncond))
    torch.testing.assert_close(guided, x, rtol=1e-5, atol=1e-5)

    # scale 1 is the unguided sampler; another scale changes the result
    plain = euler_sample(model, cond, steps, shift, seed)
    torch.testing.assert_close(euler_sample(model, cond, steps, shift, seed, guidance_scale=1.0), plain)
    assert (guided - plain).abs().mean() > 1e-3


def test_unconditional_pass_is_trainings_dropped_condition(model):
    """Sampling's unconditional velocity (no condition tokens) equals the model's output when every condition
    token is masked out, which is what a dropped condition is in training."""
    cond = _conditioning(2)
    x, t = torch.randn(1, 16, 2, 4, 6), torch.tensor([600.0])
    with torch.no_grad():
        none = model(x, cond.source_latents, cond.reference_latents, t)
        dropped = model(
            x,
            cond.source_latents,
            cond.reference_latents,
            t,
            cond.vlm_first,
            cond.vlm_last,
            torch.zeros(1, 5, dtype=torch.bool),
        )
    torch.testing.assert_close(dropped, none, rtol=1e-5, atol=1e-5)


@pytest.mark.fit
def test_training_drops_whole_conditions_and_records_the_probability(tmp_path, monkeypatch):
    masks: list[torch.Tensor] = []
    forward = MiVETransformer.forward

    def recording(self, *args, **kwargs):
        masks.append(args[6].detach().clone())
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(MiVETransformer, "forward", recording)
    shards = build_shards(tmp_path / "shards", {(1, 4, 4): 4}, vlm_dim=64, seed=5)
    overrides = [
        f'train.data.shards="{shards}"', f'train.runs_dir="{tmp_path / "runs"}"', 'train.name="drop"',
        "train.steps=4", "train.data.batch_size=2", "train.checkpoint.every_steps=0",
        "train.parallel.activation_checkpointing=false", "train.condition_dropout=0.5",
        # only the training forwards are recorded: no validation losses or rendered edits in this run
        "train.validation.every_steps=0", "train.validation.render_every_steps=0",
    ]  # fmt: skip
    recipe = load_recipe(REPO / "manifests" / "train_debug.toml", overrides)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: one thread, as test_train's in-process fits
    try:
        run_dir = fit(train_config_from_recipe(recipe), recipe=recipe)
    finally:
        torch.set_num_threads(threads)

    kept = [bool(row.any()) for mask in masks for row in mask]  # a dropped sample has no real token left
    assert len(kept) == 8 and 0 < sum(kept) < 8  # seeded: both happen in the 8 draws
    assert context_from_run(run_dir).condition_dropout == 0.5  # what sampling reads from the run


def test_guidance_is_refused_for_a_model_trained_without_dropout(model, tmp_path):
    folder = tmp_path / "export"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / WEIGHTS_NAME))
    (folder / CONFIG_NAME).write_text(json.dumps({"model_name": "debug", "model": asdict(model.config)}))
    missing = tmp_path / "none.png"
    for dropout, expected in ((0.0, "trained with train.condition_dropout = 0"), (0.1, "none.png")):
        (folder / SAMPLING_NAME).write_text(json.dumps({"flow_shift": 5.0, "condition_dropout": dropout}))
        with pytest.raises(
            ValueError, match=expected
        ):  # with dropout the check passes: the next error is the input's
            sample_video(folder, tmp_path / "x.mp4", "Add a hat.", missing, tmp_path / "out.mp4",
                         config=SampleConfig(guidance_scale=3.0))  # fmt: skip
