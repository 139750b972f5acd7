"""The shard sample format: what one WebDataset sample holds, shared by the shards step and the trainer.

A sample is a WebDataset record with key ``pair_id`` and two members:

- ``tensors.safetensors``: ``source_latents``, ``target_latents`` (bf16, ``(16, T', H', W')``),
  ``reference_latents`` (bf16, ``(16, 1, H', W')``), ``vlm_first`` and ``vlm_last`` (bf16, ``(S, D_vlm)``:
  Qwen3-VL ``hidden_states[1]`` and ``hidden_states[-1]``), ``vlm_token_types`` (uint8, ``(S,)``:
  0 text, 1 image, 2 video);
- ``meta.json``: instruction, category, origin, shapes, model ids, frame count, fps, resolution.

Tensors go through safetensors only: reading a shard never unpickles anything.
Shards are grouped in buckets (one latent shape per bucket); ``index.json``, written last, lists them:

    {
      "format_version": 1,
      "num_samples": 123,
      "latent_channels": 16, "vlm_dim": 4096,
      "models": {"vae": "<hub id or folder>", "vlm": "<hub id or folder>"},
      "recipe": {...the resolved [shards] recipe...},
      "buckets": {"t21_h90_w160": {"latent_shape": [21, 90, 160], "num_samples": 100,
                                    "shards": ["t21_h90_w160/shard-000000.tar", ...]}},
      "shards": [{"path": "t21_h90_w160/shard-000000.tar", "bucket": "t21_h90_w160",
                  "num_samples": 50, "bytes": 123456, "sha256": "<hex>", "keys_sha256": "<hex>"}]
    }

Shard paths are relative to the folder holding ``index.json``. Samples within a shard keep a
deterministic order (sorted by ``pair_id``), so the same inputs give the same shards.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from dataengine.layout import INDEX_NAME

TENSORS_MEMBER = "tensors.safetensors"
META_MEMBER = "meta.json"
FORMAT_VERSION = 1

LATENT_KEYS = ("source_latents", "target_latents", "reference_latents")
VLM_KEYS = ("vlm_first", "vlm_last", "vlm_token_types")
TENSOR_KEYS = LATENT_KEYS + VLM_KEYS
TOKEN_TYPES = {"text": 0, "image": 1, "video": 2}


def bucket_name(latent_shape: tuple[int, int, int]) -> str:
    """Name of the bucket of a latent shape (T', H', W'), e.g. ``t21_h90_w160``."""
    t, h, w = latent_shape
    return f"t{t}_h{h}_w{w}"


def keys_sha256(keys: list[str]) -> str:
    """The ``keys_sha256`` of a shard's index entry: sha256 of its sample keys in order, joined by newlines."""
    return hashlib.sha256("\n".join(keys).encode("utf-8")).hexdigest()


def encode_tensors(tensors: Mapping[str, torch.Tensor], key: str = "") -> bytes:
    """The ``tensors.safetensors`` member of a sample: exactly ``TENSOR_KEYS``, contiguous, on the CPU."""
    missing = [k for k in TENSOR_KEYS if k not in tensors]
    if missing:
        raise ValueError(f"sample {key}: missing tensors {missing}")
    return save_safetensors({k: tensors[k].contiguous().cpu() for k in TENSOR_KEYS})


def encode_sample(
    pair_id: str, tensors: Mapping[str, torch.Tensor] | bytes, meta: dict[str, Any]
) -> dict[str, Any]:
    """A WebDataset sample dict (``__key__`` plus member bytes); ``tensors`` may be :func:`encode_tensors`' bytes."""
    return {
        "__key__": pair_id,
        TENSORS_MEMBER: tensors if isinstance(tensors, bytes) else encode_tensors(tensors, pair_id),
        META_MEMBER: json.dumps(meta, sort_keys=True).encode("utf-8"),
    }


def decode_sample(sample: dict[str, Any]) -> tuple[str, dict[str, torch.Tensor], dict[str, Any]]:
    """Inverse of :func:`encode_sample` on a raw (undecoded) WebDataset sample dict."""
    key = sample["__key__"]
    try:
        tensors = load_safetensors(sample[TENSORS_MEMBER])
        meta = json.loads(sample[META_MEMBER])
    except KeyError as err:
        raise ValueError(f"sample {key}: member {err} missing (members: {sorted(sample)})") from err
    return key, tensors, meta


def read_index(path: str | Path) -> dict[str, Any]:
    """Read a shard set's ``index.json`` (``path`` is the file or its folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / INDEX_NAME
    if not path.exists():
        raise FileNotFoundError(
            f"no {INDEX_NAME} at {path}: is this a finished shard set? (index.json is written last)"
        )
    index = json.loads(path.read_text())
    if index.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {index.get('format_version')} is not {FORMAT_VERSION}")
    return index
