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

A shard set is read from a local folder or from a URL that fsspec knows (``https://``, ``s3://`` with the
``s3`` extra, ``gs://`` with ``gcs``, ``hf://``, ``file://``, ``memory://``): :func:`shard_set_location`
resolves either to a filesystem and a root, :func:`read_index` reads ``index.json`` there, and
:func:`scan_members` finds each sample's members in a tar by reading only its headers, so a reader then
fetches each member with one ranged read and never downloads a whole tar.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from dataengine.formats.layout import INDEX_NAME
from dataengine.formats.recipe import MissingInput, UserError

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


def shard_set_location(location: str | os.PathLike) -> tuple[Any, str]:
    """The fsspec filesystem and the folder of a shard set given as its folder or its ``index.json``, as a
    local path or a URL; the folder is the filesystem's own path (for ``https://`` the URL itself)."""
    import fsspec

    try:
        fs, root = fsspec.core.url_to_fs(str(location))
    except (ImportError, ValueError) as err:
        raise ValueError(
            f"cannot open {location}: {err} (s3:// needs `uv sync --extra s3`, gs:// `--extra gcs`)"
        ) from err
    root = root.rstrip("/")
    if posixpath.basename(root) == INDEX_NAME:
        root = posixpath.dirname(root)
    return fs, root


def join(root: str, relative: str) -> str:
    """``relative`` (a path from ``index.json``) under a shard set's folder, for any filesystem."""
    return f"{root}/{relative}"


def read_index(location: str | os.PathLike) -> dict[str, Any]:
    """Read a shard set's ``index.json`` (``location``: the file or its folder, local or a URL)."""
    fs, root = shard_set_location(location)
    path = join(root, INDEX_NAME)
    try:
        index = json.loads(fs.cat_file(path))
    except FileNotFoundError:
        raise MissingInput(
            f"no {INDEX_NAME} at {path}: is this a finished shard set? (index.json is written last)"
        ) from None
    if index.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {index.get('format_version')} is not {FORMAT_VERSION}")
    return index


def _server(url: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.netloc else url


def _short_read(path: str, start: int, end: int, got: int) -> ValueError:
    """The error for a ranged read that did not return the bytes it asked for."""
    return UserError(
        f"{_server(path)} answered a request for bytes {start}-{end - 1} of {path} with {got} bytes, "
        f"not {end - start}: it does not serve byte ranges (or the file changed). The loader reads samples "
        "by offset: serve the shard set from a server that answers Range with 206 Partial Content (an "
        "object store, a CDN, nginx), or copy it to a local folder"
    )


def ranged_read(fs: Any, path: str, start: int, end: int) -> bytes:
    """Bytes ``start`` to ``end`` (exclusive) of ``path``, checked: exactly ``end - start`` of them."""
    data = fs.cat_file(path, start=start, end=end)
    if len(data) != end - start:
        raise _short_read(path, start, end, len(data))
    return data


def check_range_requests(fs: Any, path: str) -> None:
    """On ``http(s)://``, ask for one byte of ``path`` and check that the server answers ``206 Partial
    Content``; a server that ignores ``Range`` (Python's ``http.server``, some proxies) answers 200 with the
    whole file, which a ranged reader would take for the range. Stops at once, naming the server, before a
    byte of the body is read. Other filesystems read ranges themselves: nothing to check."""
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    if not {"http", "https"} & set(protocols):
        return
    from fsspec.asyn import sync

    async def first_byte() -> tuple[int, dict[str, str]]:
        session = await fs.set_session()
        kwargs = dict(fs.kwargs)
        headers = {**kwargs.pop("headers", {}), "Range": "bytes=0-0"}
        async with session.get(fs.encode_url(path), headers=headers, **kwargs) as response:
            return response.status, dict(response.headers)

    status, headers = sync(fs.loop, first_byte)
    if status == 206:
        return
    if status == 404:
        raise MissingInput(f"{path}: not found (404 from {_server(path)}): is the shard set at this URL?")
    if status != 200:
        raise UserError(f"{_server(path)} answered {status} to a request for byte 0 of {path}")
    software = f" ({headers['Server']})" if headers.get("Server") else ""
    raise UserError(
        f"{_server(path)}{software} ignores range requests: asked for byte 0 of {path}, it answered "
        f"200 with {headers.get('Content-Length', 'all the')} bytes. The loader reads samples by "
        "offset: serve the shard set from a server that answers Range with 206 Partial Content (an object "
        "store, a CDN, nginx), or copy it to a local folder"
    )


class RangedFile(io.RawIOBase):
    """A read-only, seekable file over any fsspec filesystem that fetches only what is read.

    A read outside the bytes fetched last is one ranged read of at least ``window`` bytes from there on:
    :mod:`tarfile` reading a tar's member headers (a byte before each header, then the pax and the ustar
    header blocks) costs one request per member, and the members' contents are never fetched.
    """

    def __init__(self, fs: Any, path: str, size: int, window: int = 2048):
        super().__init__()
        self.fs, self.path, self.size, self.window = fs, path, size, window
        self.position = 0
        self.start, self.data = 0, b""
        self.requests = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        self.position = base + offset
        return self.position

    def readinto(self, buffer: Any) -> int:
        count = min(len(buffer), max(0, self.size - self.position))
        if count == 0:
            return 0
        end = self.position + count
        if not (self.start <= self.position and end <= self.start + len(self.data)):
            self.start = self.position
            stop = min(self.size, self.position + max(count, self.window))
            self.data = ranged_read(self.fs, self.path, self.start, stop)
            self.requests += 1
        offset = self.position - self.start
        buffer[:count] = self.data[offset : offset + count]
        self.position = end
        return count


def scan_members(fs: Any, path: str, size: int) -> list[tuple[str, dict[str, tuple[int, int]]]]:
    """Each sample of a tar as ``(key, {member: (offset, size)})``, in order, from its headers alone.

    Members are grouped into samples with WebDataset's own key rule; raises ``ValueError`` naming the tar
    when it is not a readable tar.
    """
    import tarfile

    from webdataset.tariterators import base_plus_ext

    samples: list[tuple[str, dict[str, tuple[int, int]]]] = []
    try:
        with RangedFile(fs, path, size) as handle, tarfile.open(fileobj=handle, mode="r:") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                key, member = base_plus_ext(info.name)
                if key is None:
                    continue
                if not samples or samples[-1][0] != key:
                    samples.append((key, {}))
                samples[-1][1][member] = (info.offset_data, info.size)
    except (tarfile.TarError, EOFError) as err:
        raise ValueError(f"shard {path} is not a readable tar: {err}") from err
    return samples


def read_members(
    fs: Any, path: str, members: Mapping[str, tuple[int, int]], names: Sequence[str]
) -> dict[str, bytes]:
    """The bytes of the ``names`` members of one sample: one ranged read each, concurrent where the
    filesystem is asynchronous (HTTP, S3, GCS)."""
    wanted = [name for name in names if name in members]
    starts = [members[name][0] for name in wanted]
    ends = [members[name][0] + members[name][1] for name in wanted]
    blobs = fs.cat_ranges([path] * len(wanted), starts, ends)
    for name, blob, start, end in zip(wanted, blobs, starts, ends, strict=True):
        if isinstance(blob, Exception):
            raise ValueError(f"shard {path}: member {name} could not be read: {blob}") from blob
        if len(blob) != end - start:
            raise _short_read(path, start, end, len(blob))
    return dict(zip(wanted, blobs, strict=True))
