"""Shards: write throughput against a raw write, bytes per sample at the paper's settings, encode samples/s.

    python -m benchmarks.bench_shards [--quick]

1. **Write**: ``dataengine.steps.shard_set.write_shard`` (tar + sha256 + fsync + rename) of encoded samples with the
   paper's tensor shapes, as the shards job's writer gets them, against a raw sequential write (+ fsync) of
   the same bytes; the safetensors encoding (done in the VLM actors) timed apart.
2. **Bytes per sample** at the paper's settings (81 frames, 720P buckets of ``manifests/openve.toml``),
   from the shapes: latents ``16 x (2T' + 1) x H' x W'`` bf16 and two ``S x 4096`` bf16 VLM states, with
   S from Qwen3-VL's own processors at the recipe's pixel budgets (plus an estimate of the text tokens).
3. **Encode** samples/s of the tiny random Wan VAE and Qwen3-VL on this machine's CPU (the real models
   need a GPU; none is used here).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

# Text tokens of one sample besides the instruction: chat markers, vision start/end, and per temporal
# group of the video a "<t seconds>" timestamp (about 6 tokens) and its start/end markers.
_TEMPLATE_TOKENS = 3 + 2 + 2 + 2
_PER_VIDEO_GROUP_TOKENS = 8
_INSTRUCTION_TOKENS = 55  # OpenVE instructions average about 40 words; about 1.35 BPE tokens per word


def _paper_tensors(
    seed: int, shape: tuple[int, int, int], tokens: int, dim: int = 4096
) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    t, h, w = shape
    return {
        "source_latents": torch.randn(16, t, h, w, generator=g).bfloat16(),
        "target_latents": torch.randn(16, t, h, w, generator=g).bfloat16(),
        "reference_latents": torch.randn(16, 1, h, w, generator=g).bfloat16(),
        "vlm_first": torch.randn(tokens, dim, generator=g).bfloat16(),
        "vlm_last": torch.randn(tokens, dim, generator=g).bfloat16(),
        "vlm_token_types": torch.zeros(tokens, dtype=torch.uint8),
    }


def bench_write(quick: bool) -> list[dict]:
    """The shard writer against a raw sequential write of the same bytes, both ending in fsync.

    The shards job encodes each sample's tensors (safetensors) in its VLM actors, beside validation, so the
    writer in the driver gets bytes: ``write_shard`` of encoded samples is what the job's writer does;
    encoding is timed apart. Best of three runs each (the page cache and other processes make single
    runs noisy).
    """
    from concurrent.futures import ThreadPoolExecutor

    from dataengine.formats.shard_format import encode_sample, encode_tensors
    from dataengine.steps.shard_set import write_shard

    num_samples = 3 if quick else 8
    shape, tokens = (21, 90, 160), 2100
    tensors = [(f"{i:020d}", _paper_tensors(i, shape, tokens), {"i": i}) for i in range(num_samples)]
    start = time.perf_counter()
    samples = [(key, encode_tensors(t, key), meta) for key, t, meta in tensors]
    encode_s = time.perf_counter() - start
    raw = [
        b
        for key, data, meta in samples
        for b in encode_sample(key, data, meta).values()
        if isinstance(b, bytes)
    ]
    total = sum(len(b) for b in raw)
    raw_s, shard_s, pair_s = [], [], []
    with tempfile.TemporaryDirectory(dir=os.environ.get("MIVE_BENCH_DIR")) as folder:
        write_shard(folder, "warmup/shard-000000.tar", [("warmup", _paper_tensors(0, (1, 2, 2), 2, 8), {})])
        for attempt in range(3):
            start = time.perf_counter()
            with open(Path(folder) / f"raw{attempt}.bin", "wb") as handle:
                for block in raw:
                    handle.write(block)
                handle.flush()
                os.fsync(handle.fileno())
            raw_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            entry = write_shard(folder, f"t21_h90_w160/shard-{attempt:06d}.tar", samples)
            shard_s.append(time.perf_counter() - start)
            start = time.perf_counter()  # two shards at once, as the job's writer (writer_threads = 2)
            with ThreadPoolExecutor(2) as pool:
                list(pool.map(lambda n: write_shard(folder, f"two/shard-{n:06d}.tar", samples), range(2)))
            pair_s.append(time.perf_counter() - start)
            for path in Path(folder).rglob("*"):  # keep the disk footprint at one shard
                if path.is_file() and path.name != "shard-000000.tar":
                    path.unlink()
    mib = total / 2**20
    note = f"{num_samples} samples of {total / num_samples / 2**20:.1f} MiB (81 frames 720P, S={tokens}), best of 3"
    return [
        {
            "benchmark": "shards.write",
            "metric": "write_shard (encoded samples)",
            "value": mib / min(shard_s),
            "unit": "MiB/s",
            "note": note,
        },
        {
            "benchmark": "shards.write",
            "metric": "raw sequential write",
            "value": mib / min(raw_s),
            "unit": "MiB/s",
            "note": "same bytes, one file + fsync",
        },
        {
            "benchmark": "shards.write",
            "metric": "write_shard / raw",
            "value": min(raw_s) / min(shard_s),
            "unit": "ratio",
            "note": "tar headers + sha256 (in a second thread) + rename",
        },
        {
            "benchmark": "shards.write",
            "metric": "2 shards at once / raw",
            "value": min(raw_s) / (min(pair_s) / 2),
            "unit": "ratio",
            "note": "the job's writer: writer_threads = 2 (more cores, more threads)",
        },
        {
            "benchmark": "shards.write",
            "metric": "safetensors encode (in the VLM actors)",
            "value": mib / encode_s,
            "unit": "MiB/s",
            "note": "per actor, in parallel with the writer",
        },
        {
            "benchmark": "shards.write",
            "metric": "tar overhead",
            "value": entry["bytes"] / total - 1.0,
            "unit": "fraction",
            "note": "tar headers and padding",
        },
    ]


def paper_vlm_tokens(height: int, width: int, num_frames: int = 81, fps: float = 16.0) -> dict[str, int]:
    """S of one sample at ``manifests/openve.toml``'s VLM budgets, from Qwen3-VL's own processors."""
    from transformers import Qwen2VLImageProcessor, Qwen3VLVideoProcessor

    from dataengine.formats.recipe import build_config, load_recipe
    from dataengine.models.vlm import Qwen3VLEncoderConfig, select_frames

    recipe = load_recipe(Path(__file__).resolve().parents[1] / "manifests/openve.toml")
    vlm = build_config(Qwen3VLEncoderConfig, recipe["shards"]["vlm"], "shards.vlm")
    image = Qwen2VLImageProcessor(patch_size=16, temporal_patch_size=2, merge_size=2)
    video = Qwen3VLVideoProcessor(
        patch_size=16, temporal_patch_size=2, merge_size=2, cap_pixels_per_frame=True
    )
    image_patches = image.get_number_of_image_patches(
        height, width, {"size": {"shortest_edge": vlm.image_min_pixels, "longest_edge": vlm.image_max_pixels}}
    )
    frames = len(select_frames(num_frames, fps, vlm))
    video_patches = video.get_num_of_video_patches(
        frames,
        height,
        width,
        {"size": {"shortest_edge": vlm.video_min_pixels, "longest_edge": vlm.video_max_pixels}},
    )
    groups = -(-frames // 2)
    image_tokens, video_tokens = image_patches // 4, video_patches // 4
    text_tokens = _TEMPLATE_TOKENS + groups * _PER_VIDEO_GROUP_TOKENS + _INSTRUCTION_TOKENS
    return {
        "image": image_tokens,
        "video": video_tokens,
        "text": text_tokens,
        "frames": frames,
        "S": image_tokens + video_tokens + text_tokens,
    }


def bench_bytes_per_sample() -> list[dict]:
    from dataengine.models.vae import latent_shape
    from dataengine.steps.shard_set import sample_bytes

    rows = []
    for height, width in ((720, 1280), (960, 960), (1280, 720)):
        shape = latent_shape(81, height, width)
        tokens = paper_vlm_tokens(height, width)
        total = sample_bytes(shape, tokens["S"], 4096)
        latents = sample_bytes(shape, 0, 4096)
        note = (
            f"latents {shape} {latents / 2**20:.1f} MiB + VLM S={tokens['S']} (image {tokens['image']}, "
            f"video {tokens['video']} from {tokens['frames']} frames, text ~{tokens['text']}) x 4096"
        )
        rows.append(
            {
                "benchmark": "shards.bytes",
                "metric": f"bytes/sample {height}x{width}",
                "value": total / 2**20,
                "unit": "MiB",
                "note": note,
            }
        )
        if (height, width) == (720, 1280):
            rows.append(
                {
                    "benchmark": "shards.bytes",
                    "metric": "S (VLM tokens) 720x1280",
                    "value": float(tokens["S"]),
                    "unit": "tokens",
                    "note": "openve.toml budgets; text is an estimate",
                }
            )
            rows.append(
                {
                    "benchmark": "shards.bytes",
                    "metric": "30K samples 720x1280",
                    "value": 30_000 * total / 2**40,
                    "unit": "TiB",
                    "note": "the paper's training set",
                }
            )
    return rows


def bench_encode(quick: bool) -> list[dict]:
    from dataengine.models.vae import WanVaeConfig, WanVaeEncoder
    from dataengine.models.vlm import Qwen3VLEncoder, Qwen3VLEncoderConfig
    from dataengine.synthetic.qwen3vl import build_tiny_qwen3vl
    from dataengine.synthetic.wan_vae import build_tiny_wan_vae

    repeats = 3 if quick else 10
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        vae = WanVaeEncoder(
            WanVaeConfig(
                model_id=str(build_tiny_wan_vae(Path(folder) / "vae")), dtype="float32", device="cpu"
            )
        )
        vlm = Qwen3VLEncoder(
            Qwen3VLEncoderConfig(
                model_id=str(build_tiny_qwen3vl(Path(folder) / "qwen")),
                image_min_pixels=1024,
                image_max_pixels=4096,
                video_min_pixels=2048,
                video_max_pixels=16384,
                video_fps=4.0,
                dtype="float32",
                device="cpu",
            )
        )
        for frames, size in ((17, 64), (81, 128)) if not quick else ((17, 64),):
            clips = rng.integers(0, 256, (2, frames, size, size, 3), dtype=np.uint8)
            vae.encode(clips)  # warm-up
            start = time.perf_counter()
            for _ in range(repeats):
                vae.encode(clips)
                vae.encode(clips[1, :1])
            vae_rate = repeats / (time.perf_counter() - start)
            vlm.encode("Add a red hat to the man.", clips[1, 0], clips[0], 16.0)  # warm-up
            start = time.perf_counter()
            for _ in range(repeats):
                vlm.encode("Add a red hat to the man.", clips[1, 0], clips[0], 16.0)
            vlm_rate = repeats / (time.perf_counter() - start)
            note = f"{frames} frames {size}x{size}, tiny random models, CPU {torch.get_num_threads()} threads"
            rows.append(
                {
                    "benchmark": "shards.encode",
                    "metric": f"VAE samples/s ({frames}f {size}px)",
                    "value": vae_rate,
                    "unit": "samples/s",
                    "note": note + "; source+target+reference",
                }
            )
            rows.append(
                {
                    "benchmark": "shards.encode",
                    "metric": f"VLM samples/s ({frames}f {size}px)",
                    "value": vlm_rate,
                    "unit": "samples/s",
                    "note": note,
                }
            )
    return rows


def run(quick: bool = False) -> list[dict]:
    return bench_write(quick) + bench_bytes_per_sample() + bench_encode(quick)


if __name__ == "__main__":
    import argparse

    from benchmarks.run import format_table

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    print(format_table(run(parser.parse_args().quick)))
