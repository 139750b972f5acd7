"""Qwen3-VL as an encoder: the multiscale tokens MiVE conditions on.

``Qwen3VLEncoder`` runs ONE forward of Qwen3-VL over a chat message holding the reference image, the
source video and the instruction, and returns ``hidden_states[1]`` (the output of decoder layer 0) and
``hidden_states[-1]`` (after the final norm, equal to ``last_hidden_state``), both ``(S, D)`` bf16, plus
the type of each position (0 text, 1 image, 2 video, as ``shard_format.TOKEN_TYPES``).

The image and the video come before the instruction in the message so that, in the causal decoder,
the instruction's tokens attend to the visual content.

The recipe sets the pixel budgets and the fps the source clip is sampled at for the VLM; the sequence
length S follows from them: per 2 frames (temporal patch) ``(h / 32) * (w / 32)`` video tokens plus a
timestamp, ``(h / 32) * (w / 32)`` image tokens, and the text. A plain class: no Ray, no shards.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from dataengine.models.devices import DType, resolve_device, resolve_dtype

if TYPE_CHECKING:  # torch is imported where it is used: the CLI imports this module for its config
    import torch


@dataclass(frozen=True)
class Qwen3VLEncoderConfig:
    """Which Qwen3-VL to load and what it sees (the ``[shards.vlm]`` recipe table)."""

    model_id: str = "Qwen/Qwen3-VL-8B-Instruct"
    """Hub id or local folder (model + processor)."""
    image_min_pixels: int = 64 * 32 * 32
    """Smallest pixel count the reference image is resized to (the image processor's ``shortest_edge``)."""
    image_max_pixels: int = 512 * 32 * 32
    """Pixel budget of the reference image; tokens = pixels / 32^2 (about 512 here)."""
    video_min_pixels: int = 64 * 32 * 32
    """Smallest total pixel count of the sampled video frames (the video processor's ``shortest_edge``)."""
    video_max_pixels: int = 10 * 256 * 32 * 32
    """Pixel budget of all sampled video frames together; tokens = pixels / (2 * 32^2)."""
    video_fps: float = 2.0
    """Frames per second sampled from the prepared source clip for the VLM."""
    min_video_frames: int = 2
    """Fewest frames sampled from the clip (at least the temporal patch, 2)."""
    max_video_frames: int = 64
    """Most frames sampled from the clip."""
    dtype: DType = "bfloat16"
    """Compute dtype; the states are stored as bf16 either way."""
    device: str = "auto"
    """``auto`` (CUDA if available, else CPU), ``cpu`` or ``cuda:N``."""
    attn_implementation: str = "sdpa"
    """transformers attention backend (``sdpa``, ``eager``, ``flash_attention_2``)."""


@dataclass
class VlmStates:
    """One sample's Qwen3-VL tokens."""

    first: torch.Tensor  # (S, D) bf16: hidden_states[1]
    last: torch.Tensor  # (S, D) bf16: hidden_states[-1]
    token_types: torch.Tensor  # (S,) uint8: 0 text, 1 image, 2 video


def build_messages(instruction: str, with_image: bool = True) -> list[dict]:
    """The chat message of one sample: reference image (unless ``with_image`` is False), source video, then
    the instruction."""
    content = [{"type": "image"}] if with_image else []
    content += [{"type": "video"}, {"type": "text", "text": instruction}]
    return [{"role": "user", "content": content}]


def select_frames(num_frames: int, fps: float, config: Qwen3VLEncoderConfig) -> np.ndarray:
    """Indices of a clip's frames the VLM sees: ``video_fps`` per second spread evenly, as Qwen3-VL samples."""
    count = int(num_frames / fps * config.video_fps)
    count = min(max(count, config.min_video_frames), config.max_video_frames, num_frames)
    return np.linspace(0, num_frames - 1, count).round().astype(np.int64)


class Qwen3VLEncoder:
    """Qwen3-VL loaded once (model + processor); one forward per sample returns the first and last hidden states."""

    def __init__(self, config: Qwen3VLEncoderConfig):
        from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

        self.config = config
        self.device = resolve_device(config.device)
        self.processor = AutoProcessor.from_pretrained(config.model_id)
        model = Qwen3VLForConditionalGeneration.from_pretrained(
            config.model_id, dtype=resolve_dtype(config.dtype), attn_implementation=config.attn_implementation
        )
        # The LM head is not needed: keep the backbone (vision tower + decoder) only.
        self.model = model.model.to(self.device).eval().requires_grad_(False)
        self.hidden_size = int(model.config.text_config.hidden_size)
        self.num_layers = int(model.config.text_config.num_hidden_layers)

    def select_frames(self, num_frames: int, fps: float) -> np.ndarray:
        """Indices of the clip's frames the VLM sees (:func:`select_frames` with this encoder's config)."""
        return select_frames(num_frames, fps, self.config)

    def build_inputs(
        self,
        instruction: str,
        reference: np.ndarray | None,
        video: np.ndarray,
        video_fps: float,
        frame_indices: Sequence[int] | None = None,
    ) -> dict[str, torch.Tensor]:
        """The processor's model inputs; ``frame_indices`` says which clip frames ``video`` holds (else it samples).

        ``reference`` None leaves the image out of the message (the layer diagnostic looks at the video only).
        """
        if frame_indices is None:
            frame_indices = self.select_frames(len(video), video_fps)
            video = video[frame_indices]
        frame_indices = [int(i) for i in frame_indices]
        if len(frame_indices) != len(video):
            raise ValueError(f"{len(video)} video frames but {len(frame_indices)} frame indices")
        text = self.processor.apply_chat_template(
            build_messages(instruction, with_image=reference is not None),
            tokenize=False,
            add_generation_prompt=False,
        )
        metadata = {
            "total_num_frames": frame_indices[-1] + 1,
            "fps": float(video_fps),
            "frames_indices": frame_indices,
            "height": int(video.shape[1]),
            "width": int(video.shape[2]),
        }
        cfg = self.config
        images = {} if reference is None else {"images": [reference]}
        return self.processor(
            text=[text],
            **images,
            videos=[np.asarray(video)],
            return_tensors="pt",
            images_kwargs={
                "size": {"shortest_edge": cfg.image_min_pixels, "longest_edge": cfg.image_max_pixels}
            },
            videos_kwargs={
                "video_metadata": [metadata],
                "do_sample_frames": False,
                "size": {"shortest_edge": cfg.video_min_pixels, "longest_edge": cfg.video_max_pixels},
                "cap_pixels_per_frame": True,
            },
        )

    def token_types(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """(S,) uint8 position types: the processor's ``mm_token_type_ids`` (0 text, 1 image, 2 video)."""
        import torch

        from dataengine.formats.shard_format import TOKEN_TYPES

        ids = inputs["input_ids"][0]
        types = torch.full_like(ids, TOKEN_TYPES["text"])
        types[ids == self.processor.image_token_id] = TOKEN_TYPES["image"]
        types[ids == self.processor.video_token_id] = TOKEN_TYPES["video"]
        if "mm_token_type_ids" in inputs and not torch.equal(inputs["mm_token_type_ids"][0].to(types), types):
            raise RuntimeError("the processor's mm_token_type_ids disagree with the image/video pad tokens")
        return types.to(torch.uint8)

    def encode(
        self,
        instruction: str,
        reference: np.ndarray,
        video: np.ndarray,
        video_fps: float,
        frame_indices: Sequence[int] | None = None,
    ) -> VlmStates:
        """One forward over (reference image, source video, instruction).

        ``reference`` is (H, W, 3) uint8, ``video`` (N, H, W, 3) uint8 at ``video_fps``: the whole clip, or
        only the frames at ``frame_indices`` (from :meth:`select_frames`) when those are given.
        """
        import torch

        inputs = self.build_inputs(instruction, reference, video, video_fps, frame_indices)
        types = self.token_types(inputs)
        inputs = {k: v.to(self.device) for k, v in inputs.items() if isinstance(v, torch.Tensor)}
        with torch.no_grad():
            # Only layers 1 and -1 are kept (the others are None): no 37 x (S, D) copies at 8B.
            out = self.model(**inputs, output_hidden_states=[1, -1], use_cache=False, return_dict=True)
        hidden = out.hidden_states  # num_layers + 1 entries, (1, S, D) at the selected ones
        if len(hidden) != self.num_layers + 1:
            raise RuntimeError(f"expected {self.num_layers + 1} hidden states, got {len(hidden)}")
        first = hidden[1][0].to(torch.bfloat16).cpu()
        last = hidden[-1][0].to(torch.bfloat16).cpu()
        return VlmStates(first=first, last=last, token_types=types)
