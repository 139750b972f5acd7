"""A tiny, randomly initialised Qwen3-VL with an offline processor, for tests and the demo.

``build_tiny_qwen3vl(folder)`` writes a folder that loads through exactly the code path of the real
``Qwen/Qwen3-VL-8B-Instruct``: ``Qwen3VLForConditionalGeneration.from_pretrained(folder)`` and
``AutoProcessor.from_pretrained(folder)``. Nothing is downloaded:

- the tokenizer is a byte-level BPE trained here on a small corpus, wrapped in transformers'
  ``Qwen2Tokenizer`` with Qwen's pre-tokenizer (so digits are single tokens, as in the real model) and
  Qwen's special tokens (``<|im_start|>``, ``<|vision_start|>``, ``<|image_pad|>``, ``<|video_pad|>`` ...);
- the image and video processors are transformers' Qwen2-VL image processor and Qwen3-VL video
  processor with the real model's patch 16, temporal patch 2, merge 2, and small pixel budgets;
- the chat template has the structure of Qwen3-VL-Instruct's for text, image and video content.

The weights are random: outputs mean nothing, but shapes, token layout and code paths are the real ones.
"""

from __future__ import annotations

import json
from pathlib import Path

# The structure of Qwen3-VL-Instruct's chat template for plain text, image and video contents
# (no tools, no reasoning). No default system prompt, as in the real Instruct template.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- else %}{%- for content in message['content'] %}"
    "{%- if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif content['type'] == 'video' or 'video' in content %}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{%- elif 'text' in content %}{{- content['text'] }}"
    "{%- endif %}{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

_CORPUS = """
You are a strict judge of video edits. Score each criterion from 0 to 10.
Instruction compliance: does the edited video carry out the instruction in every frame?
Preservation: are the unedited content, identity and details of the source kept?
Visual quality and temporal stability: is the edited video sharp, free of artifacts and flicker?
Answer with the three scores only. compliance: 9 preservation: 10 quality: 8
Remove the red car from the street. Add a hat to the man. Change the background to a beach at sunset.
Replace the sky with a starry night. Make it look like a watercolor painting. Turn the dog into a cat.
Edit the subtitle text to say hello world. Remove the person walking on the left.
The source video, the edited video, the reference image, the instruction.
0 1 2 3 4 5 6 7 8 9 10 seconds frame video image person background style local global
"""


def train_tokenizer(vocab_size: int):
    """A byte-level BPE tokenizer with Qwen's pre-tokenizer, special tokens and chat template (see the module docstring)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    bpe.train_from_iterator([line for line in _CORPUS.splitlines() if line] * 4, trainer=trainer)
    model_json = json.loads(bpe.to_str())["model"]
    vocab: dict[str, int] = model_json["vocab"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model_json["merges"]]
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges)
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS[1:]})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_qwen3vl(
    folder: str | Path,
    seed: int = 0,
    hidden_size: int = 64,
    num_layers: int = 2,
    vision_depth: int = 2,
    vocab_size: int = 512,
) -> Path:
    """Save a tiny random Qwen3-VL (``Qwen3VLForConditionalGeneration``) and its processor into ``folder``."""
    import torch
    from transformers import (
        Qwen2VLImageProcessor,
        Qwen3VLConfig,
        Qwen3VLForConditionalGeneration,
        Qwen3VLProcessor,
        Qwen3VLVideoProcessor,
    )

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(vocab_size)
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in SPECIAL_TOKENS}
    num_heads = 4
    config = Qwen3VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": hidden_size,
            "intermediate_size": hidden_size * 2,
            "num_hidden_layers": num_layers,
            "num_attention_heads": num_heads,
            "num_key_value_heads": 2,
            "head_dim": hidden_size // num_heads,
            "max_position_embeddings": 4096,
            # mrope sections (t, h, w) over head_dim // 2 rotary frequencies, as in the real model
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 5_000_000.0,
                "mrope_section": [2, 3, 3],
                "mrope_interleaved": True,
            },
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": vision_depth,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": hidden_size,
            "patch_size": 16,
            "temporal_patch_size": 2,
            "spatial_merge_size": 2,
            "num_position_embeddings": 256,
            "deepstack_visual_indexes": list(range(min(vision_depth, 2))),
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.save_pretrained(folder)

    # The real model's patch geometry with small pixel budgets so tiny tests stay fast.
    image_processor = Qwen2VLImageProcessor(
        patch_size=16,
        temporal_patch_size=2,
        merge_size=2,
        size={"shortest_edge": 32 * 32, "longest_edge": 128 * 128},
    )
    video_processor = Qwen3VLVideoProcessor(
        patch_size=16,
        temporal_patch_size=2,
        merge_size=2,
        size={"shortest_edge": 32 * 32 * 2, "longest_edge": 128 * 128 * 8},
        fps=2,
        min_frames=2,
        max_frames=16,
        cap_pixels_per_frame=True,
    )
    processor = Qwen3VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(folder)
    return folder
