"""The pair manifest and the rejections: the currency between the data-engine steps.

A pair manifest is a Parquet file with one row per edit pair (see ``PAIR_SCHEMA``); every input row of
a step ends in exactly one of the manifest or the rejections (``REJECTION_SCHEMA``), never silently
dropped. Both carry key-value metadata (tool version, resolved config, model ids, creation time).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from dataengine.formats.atomic import atomic_path
from dataengine.formats.atomic import write_text as write_text  # its home is dataengine.formats.atomic
from dataengine.formats.recipe import MissingInput, UserError

TOOL_VERSION = "0.1.0"

ORIGINS = ("openve", "portrait")

PAIR_SCHEMA = pa.schema(
    [
        pa.field("pair_id", pa.string(), nullable=False),
        pa.field("origin", pa.string(), nullable=False),
        pa.field("category", pa.string(), nullable=False),
        pa.field("instruction", pa.string(), nullable=False),
        pa.field("source_path", pa.string(), nullable=False),
        pa.field("target_path", pa.string(), nullable=False),
        pa.field("reference_path", pa.string(), nullable=True),
        pa.field("score", pa.float64(), nullable=True),
        pa.field("num_frames", pa.int32(), nullable=False),
        pa.field("fps", pa.float64(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
    ]
)
PAIR_COLUMNS = PAIR_SCHEMA.names

REJECTION_SCHEMA = pa.schema(
    [
        pa.field("pair_id", pa.string(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string(), nullable=True),
    ]
)
REJECTION_COLUMNS = REJECTION_SCHEMA.names


def make_pair_id(origin: str, source: str, target: str, instruction: str) -> str:
    """Stable id of an edit pair: a hash of what defines it, independent of row order or run.

    Paths should be given as they appear in the input (relative to the dataset root) so the id does
    not change when the dataset moves.
    """
    payload = "\x1f".join([origin, source, target, instruction]).encode("utf-8")
    return hashlib.sha256(payload).hexdigest()[:20]


def _metadata(extra: Mapping[str, Any] | None) -> dict[bytes, bytes]:
    meta = {"tool_version": TOOL_VERSION, "created_unix": f"{time.time():.3f}"}
    for key, value in (extra or {}).items():
        meta[key] = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return {k.encode(): v.encode() for k, v in meta.items()}


def _write_table(
    df: pd.DataFrame, schema: pa.Schema, path: str | os.PathLike, metadata: Mapping[str, Any] | None
):
    missing = [c for c in schema.names if c not in df.columns]
    if missing:
        raise ValueError(f"cannot write {path}: missing columns {missing}")
    table = pa.Table.from_pandas(df[schema.names], schema=schema, preserve_index=False)
    table = table.replace_schema_metadata(_metadata(metadata))
    with atomic_path(path) as tmp:  # a reader never sees a half-written manifest
        pq.write_table(table, tmp)


def write_pairs(df: pd.DataFrame, path: str | os.PathLike, metadata: Mapping[str, Any] | None = None) -> None:
    """Write a pair manifest (atomically), checking the contract's columns and uniqueness of pair_id."""
    if df["pair_id"].duplicated().any():
        dup = df.loc[df["pair_id"].duplicated(), "pair_id"].iloc[0]
        raise ValueError(f"cannot write {path}: pair_id {dup} appears more than once")
    bad = set(df["origin"]) - set(ORIGINS)
    if bad:
        raise ValueError(f"cannot write {path}: unknown origin(s) {sorted(bad)}; expected one of {ORIGINS}")
    _write_table(df, PAIR_SCHEMA, path, metadata)


def write_table(df: pd.DataFrame, path: str | os.PathLike, metadata: Mapping[str, Any] | None = None) -> None:
    """Write any table (atomically) as Parquet, with the key-value metadata of the manifests."""
    _write_table(df, pa.Schema.from_pandas(df, preserve_index=False), path, metadata)


def write_rejections(
    df: pd.DataFrame, path: str | os.PathLike, metadata: Mapping[str, Any] | None = None
) -> None:
    """Write the rejections (atomically): pair_id, stage, reason, detail."""
    _write_table(df, REJECTION_SCHEMA, path, metadata)


def rejections_frame(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """A rejections DataFrame with the contract's columns, also when ``rows`` is empty."""
    return pd.DataFrame(list(rows), columns=REJECTION_COLUMNS)


def read_pairs(path: str | os.PathLike) -> pd.DataFrame:
    """Read a pair manifest, failing clearly when it does not follow the contract."""
    path = Path(path)
    if not path.exists():
        raise MissingInput(f"pair manifest not found: {path}")
    table = pq.read_table(path)
    missing = [c for c in PAIR_COLUMNS if c not in table.column_names]
    if missing:
        raise UserError(f"{path} is not a pair manifest: missing columns {missing}")
    return table.to_pandas()


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The key-value metadata of a manifest or rejections file, JSON values decoded."""
    raw = pq.read_schema(path).metadata or {}
    out: dict[str, Any] = {}
    for key, value in raw.items():
        k, v = key.decode(), value.decode()
        if k == "pandas":
            continue
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out
