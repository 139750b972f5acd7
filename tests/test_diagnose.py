"""The layer diagnostic: the token-to-pixel mapping against hand-built masks and the processor's own patches,
and R_mask against a float64 numpy computation from a direct transformers forward."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from dataengine.formats.layout import DiagnosisLayout
from dataengine.media.video import write_mp4
from dataengine.models.segment import save_masks
from dataengine.models.vlm import Qwen3VLEncoderConfig
from dataengine.synthetic.portraits import render_portrait
from dataengine.tools.layer_diagnosis import (
    DiagnoseConfig,
    LayerDiagnostic,
    TokenGrid,
    pick_layers,
    run_diagnosis,
    summarize,
    token_coverage,
)


def _vlm_config(folder, max_pixels: int = 4 * 96 * 128) -> Qwen3VLEncoderConfig:
    return Qwen3VLEncoderConfig(
        model_id=str(folder),
        video_min_pixels=2 * 32 * 32,
        video_max_pixels=max_pixels,
        video_fps=4.0,
        dtype="float32",
        device="cpu",
    )


def test_token_coverage_on_hand_built_masks():
    # 2 temporal groups x 2 x 3 tokens of 32 x 32 px over 3 frames (the last group pads frame 2 with itself)
    grid = TokenGrid(num_groups=2, rows=2, cols=3, frames_per_group=2, resized_height=64, resized_width=96)
    masks = np.zeros((3, 64, 96), dtype=bool)
    masks[0, 0:32, 32:64] = True  # token (0, 0, 1), on one of its two frames: 1/2
    masks[0:2, 32:48, 64:96] = True  # token (0, 1, 2): half its rows, both frames: 1/2
    masks[2, 40, 10] = True  # token (1, 1, 0): one pixel of 1024, on both (padded) frames
    area, touched = token_coverage(masks, grid)
    expected = np.zeros(12)
    expected[[1, 5, 9]] = [0.5, 0.5, 1 / 1024]
    np.testing.assert_allclose(area, expected, atol=1e-12)
    assert touched.tolist() == (expected > 0).tolist()

    # frames the processor resized: 48 x 80 px as 2 x 2 tokens, each 24 x 40 original pixels
    grid = TokenGrid(num_groups=1, rows=2, cols=2, frames_per_group=2, resized_height=64, resized_width=64)
    masks = np.zeros((2, 48, 80), dtype=bool)
    masks[:, :24, :] = True  # the top token row exactly
    masks[:, 24:36, 40:80] = True  # half of the bottom-right token
    area, touched = token_coverage(masks, grid)
    np.testing.assert_allclose(area, [1.0, 1.0, 0.0, 0.5], atol=1e-12)
    assert touched.tolist() == [True, True, False, True]
    with pytest.raises(ValueError, match="groups"):
        token_coverage(np.zeros((5, 48, 80), dtype=bool), grid)


def test_token_mapping_matches_the_processors_patches(tiny_qwen3vl):
    """Draw the mask into the video itself: a token's mean brightness in the processor's own patches
    (pixel_values_videos, un-normalised here) is the share of its pixels inside the mask."""
    diagnostic = LayerDiagnostic(DiagnoseConfig(vlm=_vlm_config(tiny_qwen3vl)))
    processor = diagnostic.processor.video_processor
    rng = np.random.default_rng(0)
    for num_frames, height, width, tolerance in ((5, 64, 96, 1e-5), (4, 48, 80, 0.15)):
        yy, xx = np.mgrid[:height, :width]
        masks = np.stack(
            [
                ((yy - rng.uniform(0, height)) / (height / 3)) ** 2
                + ((xx - rng.uniform(0, width)) / (width / 4)) ** 2
                < 1
                for _ in range(num_frames)
            ]
        )
        video = np.repeat((masks * 255).astype(np.uint8)[..., None], 3, axis=-1)
        inputs = diagnostic.encoder.build_inputs("Add a hat.", None, video, 4.0, list(range(num_frames)))
        grid = TokenGrid.from_processor(processor, inputs["video_grid_thw"][0].tolist())
        area, _ = token_coverage(masks, grid)

        # patches: (tokens * merge^2, C * temporal * patch * patch), merged tokens are merge^2 consecutive rows
        mean = torch.tensor(processor.image_mean).view(1, 3, 1)
        std = torch.tensor(processor.image_std).view(1, 3, 1)
        patches = inputs["pixel_values_videos"].view(grid.num_tokens * processor.merge_size**2, 3, -1)
        brightness = (patches * std + mean).mean(dim=(1, 2)).view(grid.num_tokens, -1).mean(dim=1)
        np.testing.assert_allclose(brightness.numpy(), area, atol=tolerance)
        assert grid.resized_height % 32 == 0 and (grid.rows, grid.cols) == (
            grid.resized_height // 32,
            grid.resized_width // 32,
        )


def _write_clip(folder, name: str, seed: int, with_masks: bool = True) -> str:
    frames, masks = render_portrait(seed=seed, num_frames=9, height=96, width=128)
    path = folder / f"{name}.mp4"
    write_mp4(path, frames, fps=8.0)
    if with_masks:
        save_masks(folder / f"{name}.masks.npz", masks)
    return str(path)


def _reference_r_mask(model, processor, inputs, masks: np.ndarray, instruction: str) -> list[float]:
    """float64 numpy from a direct forward: instruction tokens between the last <|vision_end|> and
    <|im_end|>, video tokens from mm_token_type_ids, 32 x 32 block means of the (unresized) masks."""
    with torch.no_grad():
        hidden = model.model(**inputs, output_hidden_states=True).hidden_states
    ids = inputs["input_ids"][0].numpy()
    tokenizer = processor.tokenizer
    start = np.flatnonzero(ids == tokenizer.convert_tokens_to_ids("<|vision_end|>"))[-1] + 1
    end = np.flatnonzero(ids == tokenizer.convert_tokens_to_ids("<|im_end|>"))[-1]
    assert tokenizer.decode(ids[start:end]) == instruction
    visual = np.flatnonzero(inputs["mm_token_type_ids"][0].numpy() == 2)
    num_frames, height, width = masks.shape
    padded = np.concatenate([masks, masks[-1:]]) if num_frames % 2 else masks
    blocks = padded.astype(np.float64).reshape(-1, 2, height // 32, 32, width // 32, 32).mean(axis=(1, 3, 5))
    weight = blocks.reshape(-1)
    assert len(weight) == len(visual)
    out = []
    for states in hidden:
        h = states[0].double().numpy()
        logits = h[start:end] @ h[visual].T / np.sqrt(h.shape[-1])
        logits -= logits.max(axis=1, keepdims=True)
        attention = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        out.append(float((attention @ weight).mean()))
    return out


def test_r_mask_against_float64_reference_and_outputs(tiny_qwen3vl, tmp_path):
    from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

    clips = [_write_clip(tmp_path, f"clip{i}", seed=i) for i in range(2)]
    clips.append(_write_clip(tmp_path, "nomask", seed=5, with_masks=False))
    instructions = ["Add a red hat to the person.", "Remove the person.", "Add a hat."]
    pd.DataFrame({"source_path": [c.split("/")[-1] for c in clips], "instruction": instructions}).to_csv(
        tmp_path / "clips.csv", index=False
    )
    config = DiagnoseConfig(clips=str(tmp_path / "clips.csv"), vlm=_vlm_config(tiny_qwen3vl))
    summary = run_diagnosis(config, DiagnosisLayout(tmp_path / "out"))

    # the clip without masks is a rejection; the others are measured
    rejections = pd.read_parquet(tmp_path / "out" / "rejections.parquet")
    assert rejections[["pair_id", "reason"]].values.tolist() == [["nomask", "masks_unavailable"]]
    clip_rows = pd.read_parquet(tmp_path / "out" / "clips.parquet")

    processor = AutoProcessor.from_pretrained(tiny_qwen3vl)
    model = Qwen3VLForConditionalGeneration.from_pretrained(tiny_qwen3vl, dtype=torch.float32).eval()
    diagnostic = LayerDiagnostic(config)
    per_clip = {}
    for i, name in enumerate(("clip0", "clip1")):
        frames, indices, masks, fps = diagnostic.load({"source_path": clips[i], "masks_path": None})
        assert frames.shape[1:3] == (96, 128)
        inputs = diagnostic.encoder.build_inputs(instructions[i], None, frames, fps, indices.tolist())
        assert inputs["video_grid_thw"][0, 1:].tolist() == [6, 8]  # 96 x 128 px: not resized
        reference = _reference_r_mask(model, processor, dict(inputs), masks, instructions[i])
        assert len(reference) == model.config.text_config.num_hidden_layers + 1
        got = clip_rows[clip_rows["clip_id"] == name].sort_values("hidden_state")["r_mask"].to_numpy()
        np.testing.assert_allclose(got, reference, atol=1e-5)
        per_clip[name] = reference
    assert len(set(np.round(per_clip["clip0"], 6))) > 1  # the layers differ: the test can tell them apart

    layers = pd.read_parquet(tmp_path / "out" / "layers.parquet")
    np.testing.assert_allclose(
        layers["r_mask"], np.mean([per_clip["clip0"], per_clip["clip1"]], axis=0), atol=1e-5
    )
    assert (layers["num_clips"] == 2).all()
    written = json.loads((tmp_path / "out" / "layers.json").read_text())
    assert written["pick"] == summary["pick"] and written["num_clips"] == 2
    assert (tmp_path / "out" / "r_mask.svg").read_text().startswith("<svg")


def test_pick_layers_and_summary():
    rows = []
    for clip, offset in (("a", 0.0), ("b", 0.02)):
        for index, value in enumerate([0.5, 0.37, 0.33, 0.3, 0.23]):  # hidden states 0..4
            rows.append(
                {
                    "clip_id": clip,
                    "hidden_state": index,
                    "layer": f"h{index}",
                    "r_mask": value + offset,
                    "r_mask_any": value,
                    "uniform": 0.2,
                }
            )
    layers = summarize(pd.DataFrame(rows))
    np.testing.assert_allclose(layers["r_mask"], [0.51, 0.38, 0.34, 0.31, 0.24])
    np.testing.assert_allclose(layers["r_mask_std"], 0.01)
    pick = pick_layers(layers)
    assert pick["hidden_states"] == [1, 4] and pick["monotone"] and pick["is_first_and_last"]
    layers.loc[2, "r_mask"] = 0.9  # a peak in the middle: it is picked, the curve is not monotone
    pick = pick_layers(layers)
    assert pick["hidden_states"] == [2, 4] and not pick["monotone"] and not pick["is_first_and_last"]
