"""Tiny shard sets for the trainer tests, written with ``webdataset.TarWriter`` + ``encode_sample``.

Follows the ``index.json`` contract of ``dataengine/formats/shard_format.py`` (buckets, per-shard counts, bytes,
sha256, samples sorted by ``pair_id`` within a shard). The latents carry a learnable relation (the target is
a fixed function of the source) so a model can overfit them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
import webdataset as wds

from dataengine.formats.shard_format import INDEX_NAME, bucket_name, encode_sample


def build_shards(
    out_dir: Path,
    buckets: dict[tuple[int, int, int], int],
    samples_per_shard: int = 3,
    vlm_dim: int = 32,
    seq_lengths: tuple[int, ...] = (5, 8, 3, 6),
    seed: int = 0,
) -> Path:
    """Write ``{latent_shape: num_samples}`` as a shard set into ``out_dir``; returns ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    index: dict = {
        "format_version": 1,
        "num_samples": 0,
        "latent_channels": 16,
        "vlm_dim": vlm_dim,
        "models": {"vae": "tests/tiny-vae", "vlm": "tests/tiny-vlm"},
        "recipe": {},
        "buckets": {},
        "shards": [],
    }
    counter = 0
    for shape, count in buckets.items():
        t, h, w = shape
        name = bucket_name(shape)
        samples = []
        for _ in range(count):
            pair_id = hashlib.sha256(f"{seed}-{counter}".encode()).hexdigest()[:20]
            seq = seq_lengths[counter % len(seq_lengths)]
            counter += 1
            source = torch.randn(16, t, h, w, generator=generator)
            reference = torch.randn(16, 1, h, w, generator=generator)
            target = 0.5 * source.flip(1) + 0.1 * reference  # learnable from the inputs
            tensors = {
                "source_latents": source.bfloat16(),
                "target_latents": target.bfloat16(),
                "reference_latents": reference.bfloat16(),
                "vlm_first": torch.randn(seq, vlm_dim, generator=generator).bfloat16(),
                "vlm_last": torch.randn(seq, vlm_dim, generator=generator).bfloat16(),
                "vlm_token_types": torch.zeros(seq, dtype=torch.uint8),
            }
            meta = {"instruction": f"edit {pair_id}", "category": "local_change", "origin": "openve"}
            samples.append((pair_id, tensors, meta))
        samples.sort(key=lambda s: s[0])
        shard_paths = []
        for start in range(0, len(samples), samples_per_shard):
            rel = f"{name}/shard-{start // samples_per_shard:06d}.tar"
            path = out_dir / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            chunk = samples[start : start + samples_per_shard]
            with wds.TarWriter(str(path)) as writer:
                for pair_id, tensors, meta in chunk:
                    writer.write(encode_sample(pair_id, tensors, meta))
            data = path.read_bytes()
            keys = "\n".join(s[0] for s in chunk).encode()
            index["shards"].append(
                {
                    "path": rel,
                    "bucket": name,
                    "num_samples": len(chunk),
                    "bytes": len(data),
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "keys_sha256": hashlib.sha256(keys).hexdigest(),
                }
            )
            shard_paths.append(rel)
        index["buckets"][name] = {"latent_shape": list(shape), "num_samples": count, "shards": shard_paths}
        index["num_samples"] += count
    (out_dir / INDEX_NAME).write_text(json.dumps(index, indent=2))
    return out_dir


def all_keys(out_dir: Path) -> list[str]:
    """Every ``pair_id`` of a shard set, read back independently with WebDataset's own tar iteration."""
    index = json.loads((out_dir / INDEX_NAME).read_text())
    keys = []
    for shard in index["shards"]:
        for sample in wds.WebDataset(str(out_dir / shard["path"]), shardshuffle=False):
            keys.append(sample["__key__"])
    return keys
