"""The Wan VAE and Qwen3-VL encoders, and a shard written through the pipeline's stages, against direct computations.

The references are the libraries' own models loaded directly (``AutoencoderKLWan``,
``Qwen3VLForConditionalGeneration``) with the normalisation done here in float64 from the saved
``config.json``, and frames decoded here with decord.
"""

from __future__ import annotations

import functools
import json

import decord
import numpy as np
import pandas as pd
import pytest
import torch
from shards_inputs import write_demo_manifests

from dataengine.media.clips import ClipConfig
from dataengine.models.vae import WanVaeConfig, WanVaeEncoder, latent_shape
from dataengine.models.vlm import Qwen3VLEncoder, Qwen3VLEncoderConfig
from dataengine.steps.shard_set import ShardWriterConfig, plan_shards, read_shard_samples


@pytest.fixture(scope="module")
def tiny_vae(tiny_models):
    return tiny_models.wan_vae


@pytest.fixture(scope="module")
def tiny_qwen(tiny_models):
    return tiny_models.qwen3vl


def _vlm_config(folder) -> Qwen3VLEncoderConfig:
    return Qwen3VLEncoderConfig(
        model_id=str(folder),
        image_min_pixels=32 * 32,
        image_max_pixels=64 * 64,
        video_min_pixels=2 * 32 * 32,
        video_max_pixels=8 * 64 * 64,
        video_fps=4.0,
        dtype="float32",
        device="cpu",
    )


@functools.cache
def _direct_vae(folder):
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan.from_pretrained(folder, subfolder="vae").eval()


@functools.cache
def _direct_qwen(folder):
    from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

    processor = AutoProcessor.from_pretrained(folder)
    return processor, Qwen3VLForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()


def _direct_latents(folder, frames: np.ndarray) -> torch.Tensor:
    """Direct AutoencoderKLWan encode; mean of the posterior; float64 normalisation from config.json."""
    vae = _direct_vae(folder)
    raw_config = json.loads((folder / "vae" / "config.json").read_text())
    mean = torch.tensor(raw_config["latents_mean"], dtype=torch.float64).view(1, -1, 1, 1, 1)
    std = torch.tensor(raw_config["latents_std"], dtype=torch.float64).view(1, -1, 1, 1, 1)
    x = torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1.0  # (1, 3, T, H, W)
    with torch.no_grad():
        mu = vae.encode(x).latent_dist.mean.double()
    return ((mu - mean) / std)[0]


def _assert_bf16_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.dtype == torch.bfloat16
    # bf16 keeps 8 bits of mantissa: relative error <= 2^-8 plus float32 conv noise
    torch.testing.assert_close(actual.double(), expected.double(), rtol=1e-2, atol=1e-2)


def test_wan_latents_equal_direct_encode_and_normalisation(tiny_vae):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (17, 32, 48, 3), dtype=np.uint8)
    encoder = WanVaeEncoder(WanVaeConfig(model_id=str(tiny_vae), dtype="float32", device="cpu"))
    latents = encoder.encode(frames)
    assert tuple(latents.shape) == (16, *latent_shape(17, 32, 48)) == (16, 5, 4, 6)
    expected = _direct_latents(tiny_vae, frames)
    _assert_bf16_close(latents, expected)
    # The normalisation is visible: the raw posterior mean is far from the stored latents.
    raw_config = json.loads((tiny_vae / "vae" / "config.json").read_text())
    std = torch.tensor(raw_config["latents_std"], dtype=torch.float64).view(-1, 1, 1, 1)
    mean = torch.tensor(raw_config["latents_mean"], dtype=torch.float64).view(-1, 1, 1, 1)
    raw = expected * std + mean
    assert (raw - latents.double()).abs().mean() > 0.1
    reference = encoder.encode(frames[:1])
    assert tuple(reference.shape) == (16, 1, 4, 6)
    _assert_bf16_close(reference, _direct_latents(tiny_vae, frames[:1]))


def test_wan_decode_inverts_the_normalisation(tiny_vae):
    encoder = WanVaeEncoder(WanVaeConfig(model_id=str(tiny_vae), dtype="float32", device="cpu"))
    latents = torch.randn(16, 2, 4, 4).to(torch.bfloat16)
    frames = encoder.decode(latents)
    assert frames.shape == (5, 32, 32, 3) and frames.dtype == np.uint8
    vae = _direct_vae(tiny_vae)
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    with torch.no_grad():
        pixels = vae.decode(latents.float()[None] * std + mean).sample[0]  # (3, T, H, W) in [-1, 1]
    expected = ((pixels.clamp(-1, 1) + 1) * 127.5).permute(1, 2, 3, 0).numpy()
    assert np.abs(frames.astype(np.float64) - expected).max() <= 1.0


def test_encoder_rejects_bad_clip_geometry(tiny_vae):
    encoder = WanVaeEncoder(WanVaeConfig(model_id=str(tiny_vae), dtype="float32", device="cpu"))
    with pytest.raises(ValueError, match="4n \\+ 1"):
        encoder.encode(np.zeros((16, 32, 32, 3), np.uint8))


def _direct_vlm(
    folder, instruction: str, reference: np.ndarray, video: np.ndarray, indices: list[int], fps: float
):
    """A direct Qwen3VLForConditionalGeneration forward on processor inputs built here."""
    processor, model = _direct_qwen(folder)
    messages = [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "video"}, {"type": "text", "text": instruction}],
        }
    ]
    text = processor.apply_chat_template(messages, tokenize=False)
    inputs = processor(
        text=[text],
        images=[reference],
        videos=[video[indices]],
        return_tensors="pt",
        images_kwargs={"size": {"shortest_edge": 32 * 32, "longest_edge": 64 * 64}},
        videos_kwargs={
            "video_metadata": [{"fps": fps, "total_num_frames": len(video), "frames_indices": indices}],
            "do_sample_frames": False,
            "size": {"shortest_edge": 2 * 32 * 32, "longest_edge": 8 * 64 * 64},
            "cap_pixels_per_frame": True,
        },
    )
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
    assert len(out.hidden_states) == model.config.text_config.num_hidden_layers + 1
    return out.hidden_states[1][0], out.hidden_states[-1][0], inputs["mm_token_type_ids"][0], inputs


def test_vlm_states_equal_a_direct_forward(tiny_qwen):
    rng = np.random.default_rng(1)
    video = rng.integers(0, 256, (17, 64, 64, 3), dtype=np.uint8)
    reference = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    encoder = Qwen3VLEncoder(_vlm_config(tiny_qwen))
    indices = encoder.select_frames(17, 16.0)
    # 17 frames at 16 fps = 1.06 s at 4 fps -> 4 frames spread evenly over the clip
    assert indices.tolist() == np.linspace(0, 16, 4).round().astype(int).tolist()
    states = encoder.encode("Add a red hat.", reference, video, 16.0)
    first, last, types, inputs = _direct_vlm(
        tiny_qwen, "Add a red hat.", reference, video, indices.tolist(), 16.0
    )
    assert states.first.dtype == states.last.dtype == torch.bfloat16
    assert states.first.shape == first.shape == (inputs["input_ids"].shape[1], 64)
    _assert_bf16_close(states.first, first)
    _assert_bf16_close(states.last, last)
    assert torch.equal(states.token_types.long(), types.long())
    # the layout: one image (4 tokens of 64x64), a video of 2 temporal groups x 4 tokens, and text
    counts = torch.bincount(states.token_types.long(), minlength=3).tolist()
    assert counts[1] == 4 and counts[2] == 8 and counts[0] > 5
    # Passing only the selected frames (as the pipeline does) gives the same states.
    again = encoder.encode("Add a red hat.", reference, video[indices], 16.0, frame_indices=indices)
    assert torch.equal(again.first, states.first) and torch.equal(again.last, states.last)


def test_a_shard_holds_the_direct_computations(tmp_path, tiny_vae, tiny_qwen):
    """The pipeline's stages (without Ray) write a shard whose tensors equal direct computations on frames read here."""
    from pipelines.shards import ShardAssembler, ShardsConfig, shard_items, shard_stages
    from pipelines.stage import apply_stage

    openve, _portraits, _ = write_demo_manifests(tmp_path / "in", num_openve=2, num_portrait=0)
    pairs = pd.read_parquet(openve)
    pairs = pairs[pairs["source_path"].map(lambda p: "gone" not in p)]
    clip = ClipConfig(num_frames=17, fps=0.0, buckets=((64, 64),))
    config = ShardsConfig(
        clip=clip,
        vae=WanVaeConfig(model_id=str(tiny_vae), dtype="float32", device="cpu"),
        vlm=_vlm_config(tiny_qwen),
        writer=ShardWriterConfig(samples_per_shard=8),
    )
    plan, rejected = plan_shards(pairs, clip, config.writer, vlm_dim=64)
    assert not rejected and plan["shard"].nunique() == 1
    rows = shard_items(plan)
    for stage in shard_stages(config, vlm_dim=64):
        worker = stage.worker()
        worker.setup()  # the models load here, once per actor
        rows = apply_stage(stage, worker, rows)
    records = list(ShardAssembler(tmp_path / "out", plan).records(iter(rows)))
    assert len(records) == 1 and records[0]["entry"] and records[0]["rejections"] == "[]"

    samples = read_shard_samples(tmp_path / "out" / plan["shard"].iloc[0])
    assert [key for key, _, _ in samples] == sorted(plan["pair_id"])
    for key, tensors, meta in samples:
        row = plan.set_index("pair_id").loc[key]
        source = decord.VideoReader(row["source_path"]).get_batch(list(range(17))).asnumpy()
        target = decord.VideoReader(row["target_path"]).get_batch(list(range(17))).asnumpy()
        _assert_bf16_close(tensors["source_latents"], _direct_latents(tiny_vae, source))
        _assert_bf16_close(tensors["target_latents"], _direct_latents(tiny_vae, target))
        assert tuple(tensors["reference_latents"].shape) == (16, 1, 8, 8)
        _assert_bf16_close(tensors["reference_latents"], _direct_latents(tiny_vae, target[:1]))
        indices = np.linspace(0, 16, 4).round().astype(int).tolist()  # 17 frames at 16 fps, 4 fps for the VLM
        first, last, types, _ = _direct_vlm(tiny_qwen, row["instruction"], target[0], source, indices, 16.0)
        _assert_bf16_close(tensors["vlm_first"], first)
        _assert_bf16_close(tensors["vlm_last"], last)
        assert torch.equal(tensors["vlm_token_types"].long(), types.long())
        assert meta["instruction"] == row["instruction"] and meta["latent_shape"] == [5, 8, 8]
        assert meta["vlm_tokens"] == first.shape[0] and meta["reference"] == "target_first_frame"
