"""Writing, validating, inspecting and verifying WebDataset shard sets (format: ``dataengine.formats.shard_format``).

- :func:`plan_shards` assigns every manifest row to a shard up front, from the manifest alone: rows are
  bucketed by the latent shape their size gives, sorted by ``pair_id`` and cut into shards of a fixed
  count per bucket. The plan is a pure function of the inputs and the recipe, so a resumed run redoes
  exactly the unfinished shards and ends with the same shards as an uninterrupted one.
- :func:`validate_sample` checks a sample against the VAE's arithmetic before it is written; a bad one
  becomes a rejection with a reason.
- :func:`write_shard` writes one tar with ``webdataset.TarWriter`` under a temporary name, renames it
  when complete and returns its ``index.json`` entry; :func:`write_index` writes ``index.json`` last.
- :func:`inspect_shards` / :func:`inspect_manifest` say what a shard set or a pair manifest holds;
  :func:`verify_shards` re-reads every tar, checks its sha256 and that every sample decodes. Both read a
  shard set from a local folder or a URL (``dataengine.formats.shard_format.shard_set_location``).
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from dataengine.formats.atomic import atomic_path, write_text
from dataengine.formats.layout import INDEX_NAME
from dataengine.media.clips import ClipConfig, ClipRejection, plan_clip
from dataengine.media.video import VideoInfo
from dataengine.models.vae import LATENT_CHANNELS

if TYPE_CHECKING:  # torch (and shard_format, which imports it) load where used: the CLI imports this module
    import torch

META_MEMBER = "meta.json"  # as dataengine.formats.shard_format.META_MEMBER

# Per-sample overhead in a tar beyond the tensors: 3 tar headers, safetensors header, meta.json.
_SAMPLE_OVERHEAD_BYTES = 4096


@dataclass(frozen=True)
class ShardWriterConfig:
    """How samples are grouped into tars (the ``[shards.writer]`` recipe table)."""

    target_shard_mb: float = 1024.0
    """Target size of one tar in MiB; the plan puts ``target / estimated sample size`` samples in each."""
    samples_per_shard: int = 0
    """Fixed number of samples per tar; 0 derives it from ``target_shard_mb``."""
    vlm_tokens_estimate: int = 2048
    """VLM sequence length assumed when estimating a sample's size for the plan (not a limit)."""

    def __post_init__(self) -> None:
        if self.samples_per_shard < 0 or self.target_shard_mb <= 0 or self.vlm_tokens_estimate <= 0:
            raise ValueError(f"invalid writer settings: {self}")


def sample_bytes(latent_shape_: tuple[int, int, int], vlm_tokens: int, vlm_dim: int) -> int:
    """Bytes of one sample's tensors: three bf16 latents (the reference with T' = 1), two bf16 (S, D) states, S types."""
    t, h, w = latent_shape_
    latents = LATENT_CHANNELS * (2 * t + 1) * h * w * 2
    vlm = 2 * vlm_tokens * vlm_dim * 2 + vlm_tokens
    return latents + vlm


def samples_per_shard(config: ShardWriterConfig, latent_shape_: tuple[int, int, int], vlm_dim: int) -> int:
    """How many samples of this latent shape go into one tar."""
    if config.samples_per_shard:
        return config.samples_per_shard
    estimate = sample_bytes(latent_shape_, config.vlm_tokens_estimate, vlm_dim) + _SAMPLE_OVERHEAD_BYTES
    return max(1, int(config.target_shard_mb * 2**20 // estimate))


def shard_path(bucket: str, number: int) -> str:
    """Path of a shard relative to the shard set's folder."""
    return f"{bucket}/shard-{number:06d}.tar"


def rejection(pair_id: str, stage: str, reason: str, detail: str) -> dict[str, str]:
    """One rejections row (``dataengine.formats.manifest.REJECTION_SCHEMA``)."""
    return {"pair_id": pair_id, "stage": stage, "reason": reason, "detail": detail}


def plan_shards(
    pairs: pd.DataFrame, clip: ClipConfig, writer: ShardWriterConfig, vlm_dim: int
) -> tuple[pd.DataFrame, list[dict[str, str]]]:
    """Assign each row of ``pairs`` to a shard, from the manifest's sizes alone.

    Returns the plan (the pair columns plus ``bucket``, ``latent_shape``, ``clip_frames``, ``clip_height``,
    ``clip_width`` and ``shard``, sorted by shard then ``pair_id``) and the rows rejected already here (a
    duplicate ``pair_id``, or untrainable by the manifest's own numbers: ``dataengine.media.clips.plan_clip``).
    """
    rejected: list[dict[str, str]] = []
    pairs = pairs.sort_values("pair_id", kind="stable").reset_index(drop=True)
    duplicated = pairs["pair_id"].duplicated()
    for row in pairs[duplicated].itertuples():
        rejected.append(
            rejection(row.pair_id, "plan", "duplicate_pair", "pair_id already planned from an earlier row")
        )
    pairs = pairs[~duplicated].reset_index(drop=True)

    keep, clips = [], []
    for row in pairs.itertuples():
        info = VideoInfo(int(row.num_frames), float(row.fps), int(row.width), int(row.height))
        try:
            if info.num_frames <= 0 or info.fps <= 0 or info.width <= 0 or info.height <= 0:
                raise ClipRejection("manifest_mismatch", f"manifest row has no valid size/fps/frames: {info}")
            clips.append(plan_clip(info, None, clip))
        except ClipRejection as err:
            rejected.append(rejection(row.pair_id, "plan", err.reason, err.detail))
            continue
        keep.append(row.Index)

    from dataengine.formats.shard_format import bucket_name

    plan = pairs.loc[keep].reset_index(drop=True)
    plan["clip_height"] = [c.bucket[0] for c in clips]
    plan["clip_width"] = [c.bucket[1] for c in clips]
    plan["clip_frames"] = [c.num_frames for c in clips]
    plan["latent_shape"] = [list(c.latent_shape) for c in clips]
    plan["bucket"] = [bucket_name(c.latent_shape) for c in clips]
    plan = plan.sort_values(["bucket", "pair_id"], kind="stable").reset_index(drop=True)
    shards = []
    for name, group in plan.groupby("bucket", sort=True):
        per_shard = samples_per_shard(writer, tuple(group["latent_shape"].iloc[0]), vlm_dim)
        shards.extend(shard_path(name, i // per_shard) for i in range(len(group)))
    plan["shard"] = shards
    return plan, rejected


def survival_summary(pairs: pd.DataFrame, plan: pd.DataFrame, rejections: pd.DataFrame) -> dict[str, Any]:
    """What became of the pairs the shards step was given, per category: in, encoded, rejected by reason,
    and the clip lengths (frames) of the encoded samples.

    ``pairs`` are the input manifests' rows, ``plan`` the planned samples (``plan_shards``), ``rejections``
    every rejection of the run: the plan's (rows never planned, a repeated ``pair_id`` among them) and the
    stages' (planned pairs that failed). So every input row is counted once: encoded, or one rejection."""
    failed = set(rejections.loc[rejections["stage"] != "plan", "pair_id"])
    encoded = plan[~plan["pair_id"].isin(failed)]
    first = pairs.drop_duplicates("pair_id").set_index("pair_id")
    rejections = rejections.assign(
        origin=rejections["pair_id"].map(first["origin"]),
        category=rejections["pair_id"].map(first["category"]),
    )
    reasons = sorted(rejections["reason"].unique()) if len(rejections) else []

    def entry(rows: pd.DataFrame, done: pd.DataFrame, lost: pd.DataFrame) -> dict[str, Any]:
        return {
            "in": len(rows),
            "encoded": len(done),
            "rejected": {r: int(n) for r, n in sorted(Counter(lost["reason"]).items())},
            "frames": {str(k): int(v) for k, v in sorted(Counter(done["clip_frames"]).items())},
        }

    out: dict[str, Any] = {"categories": {}}
    for (origin, category), rows in pairs.groupby(["origin", "category"], sort=True):
        done = encoded[(encoded["origin"] == origin) & (encoded["category"] == category)]
        lost = rejections[(rejections["origin"] == origin) & (rejections["category"] == category)]
        out["categories"][f"{origin}/{category}"] = entry(rows, done, lost)
    out["total"] = entry(pairs, encoded, rejections)
    out["total"]["rejected"] = {r: out["total"]["rejected"].get(r, 0) for r in reasons}
    if out["total"]["in"] != out["total"]["encoded"] + len(rejections):
        raise RuntimeError(
            f"{len(pairs)} input rows but {len(encoded)} encoded + {len(rejections)} rejected: a pair was lost"
        )
    return out


def render_survival(summary: Mapping[str, Any], title: str) -> None:
    """Print :func:`survival_summary` as a table: one row per category and a total row."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    reasons = list(summary["total"]["rejected"])
    table = Table(title=escape(title))
    table.add_column("category")
    for name in ("in", "encoded", *reasons):
        table.add_column(name, justify="right")
    table.add_column("clip frames: samples")
    rows = [*summary["categories"].items(), ("total", summary["total"])]
    for i, (name, entry) in enumerate(rows):
        table.add_row(
            name,
            str(entry["in"]),
            str(entry["encoded"]),
            *[str(entry["rejected"].get(r, 0)) for r in reasons],
            " ".join(f"{k}:{v}" for k, v in entry["frames"].items()),
            end_section=i == len(rows) - 2,
        )
    console = Console()
    if not console.is_terminal:  # logs and captured output: do not squeeze the table into 80 columns
        console = Console(width=200)
    console.print(table)


def validate_sample(
    tensors: Mapping[str, torch.Tensor], latent_shape_: tuple[int, int, int], vlm_dim: int | None = None
) -> tuple[str, str] | None:
    """``(reason, detail)`` when a sample does not match the VAE's arithmetic or the VLM contract, else ``None``.

    Latents must be bf16 ``(16, T', H', W')`` (the reference ``(16, 1, H', W')``), the VLM states bf16 ``(S, D)``
    with ``S == len(vlm_token_types)`` and token types in ``TOKEN_TYPES``; every value finite.
    """
    import torch

    from dataengine.formats.shard_format import TENSOR_KEYS, TOKEN_TYPES

    missing = [k for k in TENSOR_KEYS if k not in tensors]
    if missing:
        return "bad_shape", f"missing tensors {missing}"
    t, h, w = latent_shape_
    expected = {
        "source_latents": (LATENT_CHANNELS, t, h, w),
        "target_latents": (LATENT_CHANNELS, t, h, w),
        "reference_latents": (LATENT_CHANNELS, 1, h, w),
    }
    for key, shape in expected.items():
        if tuple(tensors[key].shape) != shape:
            return "bad_shape", f"{key} is {tuple(tensors[key].shape)}, expected {shape}"
    first, last, types = tensors["vlm_first"], tensors["vlm_last"], tensors["vlm_token_types"]
    if first.ndim != 2 or first.shape != last.shape or first.shape[0] == 0:
        return (
            "bad_shape",
            f"vlm_first {tuple(first.shape)} and vlm_last {tuple(last.shape)} are not the same (S, D)",
        )
    if vlm_dim is not None and first.shape[1] != vlm_dim:
        return "bad_shape", f"VLM states have D = {first.shape[1]}, expected {vlm_dim}"
    if types.ndim != 1 or types.shape[0] != first.shape[0]:
        return "bad_shape", f"vlm_token_types {tuple(types.shape)} does not match S = {first.shape[0]}"
    for key in (*expected, "vlm_first", "vlm_last"):
        if tensors[key].dtype != torch.bfloat16:
            return "bad_dtype", f"{key} is {tensors[key].dtype}, expected torch.bfloat16"
        if not bool(torch.isfinite(tensors[key]).all()):
            count = int((~torch.isfinite(tensors[key])).sum())
            return "non_finite", f"{key} has {count} non-finite values"
    if types.dtype != torch.uint8 or not bool(
        torch.isin(types, torch.tensor(list(TOKEN_TYPES.values()))).all()
    ):
        return "bad_token_types", f"vlm_token_types must be uint8 in {sorted(TOKEN_TYPES.values())}"
    return None


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22, fs: Any = None) -> str:
    """sha256 of a whole file, read in ``chunk``-byte blocks; ``fs``: an fsspec filesystem (default: local)."""
    digest = hashlib.sha256()
    with fs.open(path, "rb") if fs is not None else open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_shard(
    root: str | os.PathLike,
    relative_path: str,
    samples: Iterable[tuple[str, Mapping[str, torch.Tensor] | bytes, dict]],
) -> dict[str, Any]:
    """Write ``samples`` (``(pair_id, tensors, meta)``, written sorted by ``pair_id``) to ``root/relative_path``.

    ``tensors`` is a mapping of tensors or its encoded member (``shard_format.encode_tensors``: the shards
    job encodes in its actors, so the writer only moves bytes). The tar is written under a temporary name and
    renamed when complete; tar headers carry no time or owner, so the same samples always give the same
    bytes (those of ``webdataset.TarWriter``, which ``tests/test_shards.py`` checks). Each member goes to
    the file in one write, and its sha256 is computed in a second thread as the next one is written.
    Returns the shard's ``index.json`` entry.
    """
    from concurrent.futures import ThreadPoolExecutor

    from dataengine.formats.shard_format import encode_sample, keys_sha256

    ordered = sorted(samples, key=lambda s: s[0])
    if not ordered:
        raise ValueError(f"shard {relative_path}: no samples to write")
    with atomic_path(Path(root) / relative_path) as tmp:  # the tar is flushed to disk before its rename
        digest, num_bytes = hashlib.sha256(), 0
        with open(tmp, "wb") as handle, ThreadPoolExecutor(1) as hasher:  # one thread: blocks hashed in order

            def write(block: bytes) -> None:
                nonlocal num_bytes
                handle.write(block)  # file writes and sha256 of large blocks release the GIL: they overlap
                hasher.submit(digest.update, block)
                num_bytes += len(block)

            for pair_id, tensors, meta in ordered:
                sample = encode_sample(pair_id, tensors, meta)
                for name in sorted(k for k in sample if k != "__key__"):
                    data = sample[name]
                    write(_tar_header(f"{pair_id}.{name}", len(data)))
                    write(data)
                    if len(data) % tarfile.BLOCKSIZE:
                        write(tarfile.NUL * (tarfile.BLOCKSIZE - len(data) % tarfile.BLOCKSIZE))
            write(tarfile.NUL * (2 * tarfile.BLOCKSIZE))  # end of archive, then pad to a whole record
            if num_bytes % tarfile.RECORDSIZE:
                write(tarfile.NUL * (tarfile.RECORDSIZE - num_bytes % tarfile.RECORDSIZE))
            hasher.shutdown(wait=True)
            handle.flush()
            os.fsync(handle.fileno())
    return {
        "path": relative_path,
        "bucket": relative_path.split("/")[0],
        "num_samples": len(ordered),
        "bytes": num_bytes,
        "sha256": digest.hexdigest(),
        "keys_sha256": keys_sha256([s[0] for s in ordered]),
    }


def _tar_header(name: str, size: int) -> bytes:
    """A member's tar header as ``webdataset.TarWriter(mtime=0.0, user="", group="", mode=0o444)`` writes it."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uname, info.gname = size, 0.0, 0o444, "", ""
    return info.tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape")


def write_index(
    root: str | os.PathLike,
    shards: list[dict[str, Any]],
    bucket_shapes: Mapping[str, list[int]],
    vlm_dim: int,
    models: Mapping[str, str],
    recipe: Mapping[str, Any],
) -> dict[str, Any]:
    """Write ``index.json`` (atomically, last) listing ``shards`` sorted by path; returns the index."""
    from dataengine.formats.shard_format import FORMAT_VERSION

    shards = sorted(shards, key=lambda s: s["path"])
    buckets: dict[str, dict[str, Any]] = {}
    for entry in shards:
        bucket = buckets.setdefault(
            entry["bucket"],
            {"latent_shape": list(bucket_shapes[entry["bucket"]]), "num_samples": 0, "shards": []},
        )
        bucket["num_samples"] += entry["num_samples"]
        bucket["shards"].append(entry["path"])
    index = {
        "format_version": FORMAT_VERSION,
        "num_samples": sum(s["num_samples"] for s in shards),
        "latent_channels": LATENT_CHANNELS,
        "vlm_dim": vlm_dim,
        "models": dict(models),
        "recipe": recipe,
        "buckets": dict(sorted(buckets.items())),
        "shards": shards,
        "created_unix": round(time.time(), 3),
    }
    write_text(Path(root) / INDEX_NAME, json.dumps(index, indent=1, sort_keys=False) + "\n")
    return index


def iter_tar_samples(path: str | os.PathLike) -> Iterable[dict[str, Any]]:
    """Raw samples (``__key__`` + member bytes) of a WebDataset tar, in order, without webdataset's decoders.

    Raises ``tarfile.TarError`` (or ``EOFError``) on a truncated or corrupt tar.
    """
    current: dict[str, Any] | None = None
    with tarfile.open(path, mode="r:") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, _, suffix = member.name.partition(".")
            if current is not None and current["__key__"] != key:
                yield current
                current = None
            if current is None:
                current = {"__key__": key}
            handle = tar.extractfile(member)
            data = handle.read() if handle is not None else b""
            if len(data) != member.size:
                raise EOFError(f"{path}: member {member.name} has {len(data)} of {member.size} bytes")
            current[suffix] = data
    if current is not None:
        yield current


@dataclass
class VerifyReport:
    """What :func:`verify_shards` found: ``problems`` is empty when every shard is whole and decodes."""

    num_shards: int = 0
    num_samples: int = 0
    num_bytes: int = 0
    problems: list[dict[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_shards(location: str | os.PathLike) -> VerifyReport:
    """Re-read every shard listed in ``index.json``: size, sha256, sample count, keys and that every sample decodes.

    ``location`` is the shard set's folder or ``index.json``, local or a URL (a remote tar is downloaded to
    a temporary file once and checked there). Also reports tars the index does not list and leftover
    temporary files, where the filesystem can list its files (local, S3, GCS, memory; not plain HTTP).
    """
    import tempfile

    from dataengine.formats.shard_format import (
        decode_sample,
        join,
        keys_sha256,
        read_index,
        shard_set_location,
    )

    fs, root = shard_set_location(location)
    index = read_index(location)
    local = "file" in fs.protocol
    report = VerifyReport()
    listed = set()
    for entry in index["shards"]:
        rel = entry["path"]
        listed.add(rel)
        url = join(root, rel)
        report.num_shards += 1

        def problem(kind: str, detail: str, rel: str = rel) -> None:
            report.problems.append({"shard": rel, "problem": kind, "detail": detail})

        if not fs.exists(url):
            problem("missing", "listed in index.json but not found")
            continue
        size = fs.size(url)
        report.num_bytes += size
        if size != entry["bytes"]:
            problem("size", f"{size} bytes, index.json says {entry['bytes']} (truncated or appended?)")
        keys: list[str] = []
        with tempfile.TemporaryDirectory(prefix="verify_") as tmp:
            path = Path(url) if local else Path(tmp) / "shard.tar"
            if not local:
                fs.get_file(url, str(path))
            digest = sha256_file(path)
            if digest != entry["sha256"]:
                problem(
                    "sha256", f"sha256 {digest[:16]}... differs from index.json's {entry['sha256'][:16]}..."
                )
            shape = tuple(index["buckets"][entry["bucket"]]["latent_shape"])
            try:
                for raw in iter_tar_samples(path):
                    key, tensors, _meta = decode_sample(raw)
                    keys.append(key)
                    invalid = validate_sample(tensors, shape, index.get("vlm_dim"))
                    if invalid is not None:
                        problem("sample", f"{key}: {invalid[0]}: {invalid[1]}")
            except Exception as err:  # a truncated tar, a corrupted member: report, verify the others
                problem("decode", f"after {len(keys)} samples: {type(err).__name__}: {str(err)[:200]}")
        report.num_samples += len(keys)
        if len(keys) != entry["num_samples"]:
            problem("count", f"{len(keys)} samples decoded, index.json says {entry['num_samples']}")
        elif keys_sha256(keys) != entry["keys_sha256"]:
            problem("keys", "sample keys differ from index.json's keys_sha256")
    try:
        found = sorted(fs.find(root, withdirs=False))
    except Exception:  # a filesystem that cannot list (plain HTTP): no stray-file check
        found = []
    for path in found:
        rel = path[len(root) :].lstrip("/")
        name = rel.rsplit("/", 1)[-1]
        if name.startswith(".") and name.endswith(".tmp"):
            report.problems.append(
                {"shard": rel, "problem": "stray", "detail": "temporary file of an unfinished write"}
            )
        elif name.endswith(".tar") and rel not in listed:
            report.problems.append({"shard": rel, "problem": "stray", "detail": "tar not in index.json"})
    return report


def _tar_metas(fs: Any, path: str, size: int) -> Iterable[tuple[str, dict[str, Any]]]:
    """``(key, meta)`` of each sample: the tar's headers, then one ranged read per ``meta.json`` member."""
    from dataengine.formats.shard_format import read_members, scan_members

    for key, members in scan_members(fs, path, size):
        if META_MEMBER in members:
            yield key, json.loads(read_members(fs, path, members, [META_MEMBER])[META_MEMBER])


def inspect_shards(location: str | os.PathLike) -> dict[str, Any]:
    """What a shard set holds: samples per bucket, category and origin, bytes per sample, shapes and S.

    ``location``: the folder or ``index.json``, local or a URL; only tar headers and ``meta.json`` members
    are read (ranged reads), never the tensors.
    """
    from dataengine.formats.shard_format import join, read_index, shard_set_location

    fs, root = shard_set_location(location)
    index = read_index(location)
    by_category: Counter[str] = Counter()
    by_origin: Counter[str] = Counter()
    tokens: list[int] = []
    for entry in index["shards"]:
        for _key, meta in _tar_metas(fs, join(root, entry["path"]), int(entry["bytes"])):
            by_category[meta.get("category", "?")] += 1
            by_origin[meta.get("origin", "?")] += 1
            tokens.append(int(meta.get("vlm_tokens", 0)))
    num_samples = int(index["num_samples"])
    num_bytes = sum(int(s["bytes"]) for s in index["shards"])
    buckets = {
        name: {
            "latent_shape": bucket["latent_shape"],
            "num_samples": bucket["num_samples"],
            "num_shards": len(bucket["shards"]),
            "bytes": sum(int(s["bytes"]) for s in index["shards"] if s["bucket"] == name),
        }
        for name, bucket in index["buckets"].items()
    }
    rejections = None
    if fs.exists(join(root, "rejections.parquet")):
        with fs.open(join(root, "rejections.parquet"), "rb") as handle:
            rejections = pd.read_parquet(handle)
    return {
        "kind": "shards",
        "path": str(location),
        "num_samples": num_samples,
        "num_shards": len(index["shards"]),
        "bytes": num_bytes,
        "bytes_per_sample": num_bytes / num_samples if num_samples else 0.0,
        "buckets": buckets,
        "categories": dict(sorted(by_category.items())),
        "origins": dict(sorted(by_origin.items())),
        "vlm_dim": index.get("vlm_dim"),
        "vlm_tokens": {
            "min": int(min(tokens)) if tokens else 0,
            "mean": float(np.mean(tokens)) if tokens else 0.0,
            "max": int(max(tokens)) if tokens else 0,
        },
        "models": index.get("models", {}),
        "rejections": dict(Counter(rejections["reason"])) if rejections is not None else {},
    }


def inspect_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """What a pair manifest holds: rows per origin and category, frame counts, fps, sizes and scores."""
    from dataengine.formats.manifest import read_metadata, read_pairs

    pairs = read_pairs(path)
    sizes = Counter(f"{w}x{h}" for w, h in zip(pairs["width"], pairs["height"], strict=True))
    scores = pairs["score"].dropna()

    def stats(series: pd.Series) -> dict[str, float]:
        if series.empty:
            return {}
        return {"min": float(series.min()), "mean": float(series.mean()), "max": float(series.max())}

    metadata = read_metadata(path)
    return {
        "kind": "manifest",
        "path": str(path),
        "num_pairs": len(pairs),
        "origins": dict(sorted(Counter(pairs["origin"]).items())),
        "categories": dict(sorted(Counter(pairs["category"]).items())),
        "num_frames": stats(pairs["num_frames"]),
        "fps": stats(pairs["fps"]),
        "sizes": dict(sizes.most_common(10)),
        "score": stats(scores),
        "with_reference": int(pairs["reference_path"].notna().sum()),
        "metadata": {k: v for k, v in metadata.items() if k in ("tool_version", "created_unix", "models")},
    }


def read_shard_samples(path: str | os.PathLike) -> list[tuple[str, dict[str, torch.Tensor], dict[str, Any]]]:
    """Every ``(key, tensors, meta)`` of one tar, in order (a small helper for tools and tests)."""
    from dataengine.formats.shard_format import decode_sample

    return [decode_sample(raw) for raw in iter_tar_samples(path)]


def tensors_from_bytes(data: bytes) -> dict[str, torch.Tensor]:
    """safetensors bytes -> tensors (nothing is unpickled)."""
    from safetensors.torch import load

    return load(data)


def tensors_to_bytes(tensors: Mapping[str, torch.Tensor]) -> bytes:
    """tensors -> safetensors bytes."""
    from safetensors.torch import save

    return save({k: v.contiguous().cpu() for k, v in tensors.items()})
