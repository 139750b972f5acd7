"""Validation while training (``[train.validation]``): the losses at fixed noise levels with fixed noise are the
same to the last bit when evaluated again on the same checkpoint, equal a float64 computation of the same
definition, and are what the training run logged. (Bitwise after a kill and resume: test_async_checkpoint.py.)"""

from __future__ import annotations

import pytest
import torch

from tests import watch_runs
from trainer.data import ShardCatalogue
from trainer.parallel import ParallelConfig, init_distributed, shutdown_distributed
from trainer.sample import load_dcp_model
from trainer.validation import ValidationConfig, Validator, load_validation_samples, validation_noise

pytestmark = [pytest.mark.process, pytest.mark.fit]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return watch_runs.reference_run(tmp_path_factory.getbasetemp())


def test_validation_losses_are_deterministic_and_match_a_float64_reference(reference, tmp_path):
    root = reference.parent.parent
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    runtime = init_distributed(ParallelConfig(backend="gloo"))  # a 1-rank group in this process
    try:
        model, _ = load_dcp_model(reference / "checkpoints" / "step-00000004", weights="model")
        config = ValidationConfig(every_steps=2, num_sigmas=4, samples=watch_runs.HELD_OUT)
        samples = load_validation_samples(config, ShardCatalogue(watch_runs.shards(root)))
        assert [s["keys"][0] for s in samples] == watch_runs.HELD_OUT
        validator = Validator(config, samples, shift=5.0, runtime=runtime, run_dir=tmp_path)
        first, second = validator.losses(model), validator.losses(model)
    finally:
        shutdown_distributed()
        torch.set_num_threads(threads)
    assert first == second  # the same noise, the same levels, the same arithmetic: every bit

    # what the training run logged at step 4 (its FSDP2 model, checkpointing on) for the same weights
    logged = watch_runs.metrics(reference)[4]
    for key, value in first.items():
        assert value == pytest.approx(logged[key], rel=1e-6), key

    # float64, written out from the definition: sigma_k = shift u / (1 + (shift - 1) u), u = (k + 1/2) / K
    model64 = model.double()
    with torch.no_grad():
        per_level = []
        for k in range(4):
            u = (k + 0.5) / 4
            sigma = 5.0 * u / (1 + 4.0 * u)
            losses = []
            for sample in samples:
                x0 = sample["target_latents"].double()
                noise = validation_noise(0, sample["keys"][0], k, tuple(x0.shape[1:])).double()[None]
                pred = model64(
                    (1 - sigma) * x0 + sigma * noise,
                    sample["source_latents"].double(),
                    sample["reference_latents"].double(),
                    torch.tensor([sigma * 1000.0], dtype=torch.float64),
                    sample["vlm_first"].double(),
                    sample["vlm_last"].double(),
                )
                losses.append(((pred - (noise - x0)) ** 2).mean().item())
            per_level.append(sum(losses) / len(losses))
    for k, value in enumerate(per_level):
        assert first[f"val_loss_s{k}"] == pytest.approx(value, rel=1e-5), k
    assert first["val_loss"] == pytest.approx(sum(per_level) / 4, rel=1e-5)
    # the levels differ: the noise level matters, and a loss at one level is not another's
    assert len({round(v, 6) for v in per_level}) == 4


def test_unknown_validation_sample_is_a_clear_error(reference):
    from trainer.validation import find_keys

    catalogue = ShardCatalogue(watch_runs.shards(reference.parent.parent))
    with pytest.raises(ValueError, match=r"train.validation.samples: \['no-such-pair'\]"):
        find_keys(catalogue, [watch_runs.HELD_OUT[0], "no-such-pair"])


def test_report_plots_the_validation_losses_beside_the_training_loss(reference):
    from dataengine.tools.run_report import RunFiles, training_section

    section = training_section(RunFiles(data=None, metrics=reference / "metrics.jsonl", evaluation=None))
    assert section.missing is None
    assert section.html.count("<svg") == 2 and "validation loss" in section.html
    last = watch_runs.metrics(reference)[watch_runs.STEPS]
    for level in range(4):  # each noise level's loss at the last evaluation, as logged
        assert f"{last[f'val_loss_s{level}']:.4f}" in section.html
    assert "forward + backward" in section.html and "checkpoint" in section.html


def test_the_run_renders_its_edit_with_the_weights_of_that_step(trained_debug_run, tmp_path):
    """The debug recipe renders one edit at the last step (``render_every_steps`` past the run's end): the mp4 the
    run wrote is the edit that the step's saved checkpoint gives through the same sampler, here in a fresh process
    state (a plain model loaded from DCP, not the run's FSDP2 one), decoded frame for frame."""
    import json

    import numpy as np

    from dataengine.formats.recipe import build_config
    from dataengine.media.video import read_frames

    run, step = trained_debug_run.run, trained_debug_run.steps
    written = sorted((run / "samples" / f"step-{step:08d}").glob("*.mp4"))
    resolved = json.loads((run / "recipe.resolved.json").read_text())
    config = build_config(ValidationConfig, resolved["train"]["validation"], "train.validation")
    assert config.render_every_steps > step and config.render_samples == len(written) == 1
    catalogue = ShardCatalogue(trained_debug_run.shards)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    runtime = init_distributed(ParallelConfig(backend="gloo"))
    try:
        model, _ = load_dcp_model(run / "checkpoints" / f"step-{step:08d}", weights="model")
        validator = Validator(
            config,
            load_validation_samples(config, catalogue),
            resolved["train"]["flow"]["shift"],
            runtime,
            tmp_path,
            catalogue.index.get("recipe") or {},
        )
        ours = validator.render(model, step, guidance_ok=True)
    finally:
        shutdown_distributed()
        torch.set_num_threads(threads)
    assert [p.name for p in ours] == [p.name for p in written]
    theirs, again = read_frames(written[0]), read_frames(ours[0])
    assert theirs.shape == again.shape and theirs.shape[0] == trained_debug_run.num_frames
    assert theirs.shape[1:3] == (trained_debug_run.height, trained_debug_run.width)
    # the same weights, noise and schedule: the same video, up to float summation order under FSDP2
    assert np.abs(theirs.astype(np.int16) - again.astype(np.int16)).mean() < 1.0
