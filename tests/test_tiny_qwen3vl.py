"""The tiny Qwen3-VL builder writes a folder that loads through the real from_pretrained path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image


@pytest.fixture(scope="module")
def tiny_qwen(tiny_models):
    return tiny_models.qwen3vl  # build_tiny_qwen3vl(folder), seed 0


def test_loads_and_runs_with_image_and_video(tiny_qwen):
    from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

    processor = AutoProcessor.from_pretrained(tiny_qwen)
    model = Qwen3VLForConditionalGeneration.from_pretrained(tiny_qwen).eval()
    assert type(processor).__name__ == "Qwen3VLProcessor"
    # Qwen tokenises digits one at a time: "10" is two tokens, as in the real tokenizer.
    assert processor.tokenizer.tokenize("10") == ["1", "0"]

    messages = [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "video"}, {"type": "text", "text": "Add a hat."}],
        }
    ]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text.endswith("<|im_start|>assistant\n")
    image = Image.fromarray(np.full((64, 64, 3), 127, np.uint8))
    video = np.random.default_rng(0).integers(0, 255, (8, 64, 64, 3), dtype=np.uint8)
    inputs = processor(
        text=[text],
        images=[image],
        videos=[video],
        return_tensors="pt",
        videos_kwargs={
            "video_metadata": [{"fps": 16, "total_num_frames": 8, "frames_indices": list(range(8))}],
            "do_sample_frames": False,
        },
    )
    types = inputs["mm_token_type_ids"][0]
    # 64x64 image: (64/16)^2 patches merged 2x2 -> 4 image tokens; video: 8 frames / temporal patch 2 = 4 x 4 tokens.
    assert int((types == 1).sum()) == 4
    assert int((types == 2).sum()) == 16
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
    assert len(out.hidden_states) == model.config.text_config.num_hidden_layers + 1
    assert out.logits.shape[:2] == inputs["input_ids"].shape
