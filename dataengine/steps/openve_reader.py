"""OpenVE-3M: read the per-category CSVs into pairs, and probe their videos.

OpenVE-3M ships one CSV per category (the category is the file name) with the columns
``original_video`` (source path), ``video`` (edited target path) and ``prompt`` (instruction), paths
relative to the extracted video root. The files are not uniform: ``,`` or ``;`` delimiters, a UTF-8 BOM,
CRLF line ends, extra columns, and instructions with quotes, delimiters and newlines (quoted). The reader
survives all of that; a row it cannot use becomes a rejection naming the file and row:

- ``malformed_row``: a required column is missing or empty, or the row has more fields than the header;
- ``duplicate_row``: the same (source, target, instruction) as an earlier row (the first one is kept).

Bytes that are not UTF-8 (crawled CSVs hold a few, e.g. a Windows-1252 "é" in a prompt) are read as
Windows-1252, byte by byte, and only those bytes: the rest of the field keeps its UTF-8 reading. The
fallback is lossless (each such byte maps to one character, and back) and recorded: every row that used it
is listed in :attr:`OpenVEReadResult.notes` (the filter prints them and keeps them in ``summary.json``).
A byte Windows-1252 does not define either (0x81, 0x8D, 0x8F, 0x90, 0x9D) makes the row a
``malformed_row``. Either way the rest of the file is read.

The probe opens both videos with decord (:func:`dataengine.media.video.probe`) and rejects a pair as
``missing_file``, ``undecodable`` (zero bytes, garbage, truncated) or ``too_short`` (fewer frames than the
recipe's minimum); given the shards recipe's clip settings it also rejects what the shards step would
(``dataengine.media.clips.plan_clip``: ``misaligned``, ``too_short``, ``too_small``), before any judge runs.

Each pair gets a stable ``pair_id`` from :func:`dataengine.formats.manifest.make_pair_id` over the paths as written
in the CSV and the instruction (CRLF inside it normalised to LF), so the id survives moving the dataset.
Rows that cannot be pairs get an id derived from their file and row.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from dataengine.formats.manifest import REJECTION_COLUMNS, make_pair_id
from dataengine.formats.recipe import MissingInput, UserError
from dataengine.media.clips import ClipConfig
from dataengine.media.video import VideoError, probe

ORIGIN = "openve"
SOURCE_COLUMN, TARGET_COLUMN, PROMPT_COLUMN = "original_video", "video", "prompt"
REQUIRED_COLUMNS = (SOURCE_COLUMN, TARGET_COLUMN, PROMPT_COLUMN)
DELIMITERS = (",", ";", "\t", "|")

READ_STAGE = "read"
PROBE_STAGE = "probe"

# Columns of the pairs frame the reader returns (the probe adds num_frames, fps, width, height).
PAIR_READ_COLUMNS = [
    "pair_id",
    "category",
    "instruction",
    "source_rel",
    "target_rel",
    "source_path",
    "target_path",
    "csv_file",
    "csv_row",
]
PROBE_COLUMNS = ["num_frames", "fps", "width", "height", "reason", "detail"]


@dataclass
class OpenVEReadResult:
    """The readable pairs and the rows that are not."""

    pairs: pd.DataFrame
    """One row per pair (``PAIR_READ_COLUMNS``): ids, category, instruction, resolved paths, CSV position."""
    rejections: pd.DataFrame
    """Rows that are not pairs: the contract's pair_id, stage, reason, detail, and their category."""
    rows_per_category: dict[str, int]
    """Data rows read per category (pairs + rejections)."""
    notes: list[str] = field(default_factory=list)
    """Rows read with the Windows-1252 fallback: file, row, the bytes and what they were read as."""


def find_csvs(csv_dir: str | Path, categories: list[str] | tuple[str, ...] | None = None) -> dict[str, Path]:
    """The per-category CSVs under ``csv_dir`` (searched recursively): category (file stem) -> path."""
    csv_dir = Path(csv_dir)
    if not csv_dir.is_dir():
        raise MissingInput(f"OpenVE CSV folder not found: {csv_dir}")
    found: dict[str, Path] = {}
    for path in sorted(csv_dir.rglob("*.csv")):
        if path.stem in found:
            raise UserError(f"two CSVs for category {path.stem!r}: {found[path.stem]} and {path}; keep one")
        found[path.stem] = path
    if categories:
        missing = [c for c in categories if c not in found]
        if missing:
            raise MissingInput(
                f"no CSV for categor{'y' if len(missing) == 1 else 'ies'} {missing} under {csv_dir}; "
                f"found: {sorted(found)}"
            )
        found = {c: found[c] for c in categories}
    if not found:
        raise MissingInput(f"no *.csv files under {csv_dir}")
    return found


def sniff_delimiter(header_line: str, path: Path) -> str:
    """The delimiter that splits the header into fields holding the required columns.

    The header is plain column names (no quotes, no newlines), so it decides unambiguously where
    ``csv.Sniffer`` on prompts full of commas and semicolons would not.
    """
    for delimiter in DELIMITERS:
        fields = [f.strip().strip('"') for f in header_line.split(delimiter)]
        if all(c in fields for c in REQUIRED_COLUMNS):
            return delimiter
    raise UserError(
        f"{path}: header {header_line.strip()[:200]!r} does not hold the columns {list(REQUIRED_COLUMNS)} "
        f"with any of the delimiters {DELIMITERS}"
    )


def _resolve(video_root: Path, rel: str) -> str:
    path = Path(rel)
    return str(path if path.is_absolute() else video_root / path)


def _row_id(category: str, row: int) -> str:
    """Id of a row that is not a pair (malformed or repeated): unique per file and row."""
    return make_pair_id(ORIGIN, f"{category}.csv", f"row {row}", "")


def _undo_escapes(text: str) -> tuple[str, bytes]:
    """``text`` read with ``surrogateescape``: its non-UTF-8 bytes decoded as Windows-1252 instead, and those
    bytes (raises ``UnicodeDecodeError`` for a byte Windows-1252 does not define)."""
    try:
        text.encode("utf-8")  # the common case: nothing escaped
        return text, b""
    except UnicodeEncodeError:
        pass
    out, raw, escaped = [], bytearray(), bytearray()
    for char in text + "\0":  # a sentinel flushes the last run
        if "\udc80" <= char <= "\udcff":
            escaped.append(ord(char) - 0xDC00)
            continue
        if escaped:
            out.append(bytes(escaped).decode("cp1252"))
            raw += escaped
            escaped = bytearray()
        out.append(char)
    return "".join(out)[:-1], bytes(raw)


def read_category_csv(
    path: Path, category: str, video_root: Path, notes: list[str] | None = None
) -> tuple[list[dict], list[dict]]:
    """Read one category CSV into pair rows and rejection rows (fallback decodings appended to ``notes``)."""
    notes = notes if notes is not None else []
    # utf-8-sig drops a BOM; surrogateescape keeps a non-UTF-8 byte as a marker, resolved per row below
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as handle:
        header_line = handle.readline()
        delimiter = sniff_delimiter(header_line, path)
        handle.seek(0)
        reader = csv.reader(handle, delimiter=delimiter, quotechar='"', doublequote=True, strict=False)
        header = [h.strip() for h in next(reader)]
        where = {c: header.index(c) for c in REQUIRED_COLUMNS}
        pairs: list[dict] = []
        rejections: list[dict] = []
        row = 0
        for fields in reader:
            if not fields or all(not f.strip() for f in fields):
                continue  # blank line
            row += 1
            position = f"row {row} (line {reader.line_num}) of {path.name}"
            values = {c: fields[i].strip() if i < len(fields) else "" for c, i in where.items()}
            problem, row_notes = None, []
            try:
                for column, value in values.items():
                    text, raw = _undo_escapes(value)
                    if raw:
                        values[column] = text
                        row_notes.append(
                            f"{position}: {column} has bytes {raw.hex(' ')} that are not UTF-8, "
                            f"read as Windows-1252: {text!r}"
                        )
            except UnicodeDecodeError as err:
                problem = f"{column} is neither UTF-8 nor Windows-1252 ({err.reason} at byte 0x{err.object[err.start]:02x})"
            empty = [c for c, v in values.items() if not v]
            if problem or empty or len(fields) > len(header):
                problem = problem or (
                    f"{len(fields)} fields but the header has {len(header)} (unquoted delimiter?)"
                    if len(fields) > len(header)
                    else f"no value for {empty}"
                )
                rejections.append(
                    {
                        "pair_id": _row_id(category, row),
                        "stage": READ_STAGE,
                        "reason": "malformed_row",
                        "detail": f"{problem}: {position}",
                        "category": category,
                    }
                )
                continue
            notes.extend(row_notes)
            instruction = values[PROMPT_COLUMN].replace("\r\n", "\n")
            source_rel, target_rel = values[SOURCE_COLUMN], values[TARGET_COLUMN]
            pairs.append(
                {
                    "pair_id": make_pair_id(ORIGIN, source_rel, target_rel, instruction),
                    "category": category,
                    "instruction": instruction,
                    "source_rel": source_rel,
                    "target_rel": target_rel,
                    "source_path": _resolve(video_root, source_rel),
                    "target_path": _resolve(video_root, target_rel),
                    "csv_file": path.name,
                    "csv_row": row,
                }
            )
    return pairs, rejections


def read_openve(
    csv_dir: str | Path, video_root: str | Path, categories: list[str] | tuple[str, ...] | None = None
) -> OpenVEReadResult:
    """Read every category CSV under ``csv_dir``; video paths resolve against ``video_root``."""
    video_root = Path(video_root).resolve()
    all_pairs: list[dict] = []
    all_rejections: list[dict] = []
    rows_per_category: dict[str, int] = {}
    notes: list[str] = []
    for category, path in find_csvs(csv_dir, categories).items():
        pairs, rejections = read_category_csv(path, category, video_root, notes)
        rows_per_category[category] = len(pairs) + len(rejections)
        all_pairs.extend(pairs)
        all_rejections.extend(rejections)
    frame = pd.DataFrame(all_pairs, columns=PAIR_READ_COLUMNS)
    frame["csv_row"] = frame["csv_row"].astype("int64")
    # The same pair listed twice (within or across files) is kept once; later copies are rejections.
    repeated = frame["pair_id"].duplicated(keep="first")
    if repeated.any():
        first_row = frame.drop_duplicates("pair_id").set_index("pair_id")
        for _, item in frame[repeated].iterrows():
            first = first_row.loc[item["pair_id"]]
            all_rejections.append(
                {
                    "pair_id": _row_id(item["category"], int(item["csv_row"])),
                    "stage": READ_STAGE,
                    "reason": "duplicate_row",
                    "detail": (
                        f"same source, target and prompt as row {first['csv_row']} of {first['csv_file']}: "
                        f"row {item['csv_row']} of {item['csv_file']}"
                    ),
                    "category": item["category"],
                }
            )
        frame = frame[~repeated].reset_index(drop=True)
    rejections = pd.DataFrame(all_rejections, columns=[*REJECTION_COLUMNS, "category"])
    return OpenVEReadResult(
        pairs=frame, rejections=rejections, rows_per_category=rows_per_category, notes=notes
    )


def probe_pair(
    source_path: str, target_path: str, min_frames: int, where: str = "", clip: ClipConfig | None = None
) -> dict[str, object]:
    """Probe both videos of a pair: frame count (the smaller), fps, size, or the rejection reason.

    Returns a dict with ``PROBE_COLUMNS``; ``reason`` is None for a usable pair. With ``clip`` (a shards
    recipe's ``[shards.clip]``) a usable pair must also be trainable under it (``dataengine.media.clips.plan_clip``:
    ``misaligned``, ``too_short``, ``too_small``), so the judge never sees, and the cap never keeps, a pair
    the shards step would reject. ``where`` (e.g. "row 17 of local_add.csv") ends every detail message.
    """
    from dataengine.media.clips import ClipRejection, plan_clip

    suffix = f" ({where})" if where else ""
    infos = {}
    for role, path in (("source", source_path), ("target", target_path)):
        try:
            infos[role] = probe(path)
        except VideoError as err:
            return {
                "num_frames": None,
                "fps": None,
                "width": None,
                "height": None,
                "reason": err.reason,
                "detail": f"{role} video: {err.detail}: {path}{suffix}",
            }
    source, target = infos["source"], infos["target"]
    num_frames = min(source.num_frames, target.num_frames)
    result: dict[str, object] = {
        "num_frames": num_frames,
        "fps": source.fps,
        "width": source.width,
        "height": source.height,
        "reason": None,
        "detail": None,
    }
    if num_frames < min_frames:
        short = "source" if source.num_frames <= target.num_frames else "target"
        result["reason"] = "too_short"
        result["detail"] = (
            f"{short} video has {num_frames} frames, fewer than min_frames={min_frames}: "
            f"{source_path if short == 'source' else target_path}{suffix}"
        )
    elif clip is not None:
        try:
            plan_clip(source, target, clip)
        except ClipRejection as err:
            result["reason"] = err.reason
            result["detail"] = f"untrainable under [shards.clip]: {err.detail}: {source_path}{suffix}"
    return result


def probe_pairs(pairs: pd.DataFrame, min_frames: int, clip: ClipConfig | None = None) -> pd.DataFrame:
    """Probe every pair of a frame (``PAIR_READ_COLUMNS``); returns it with ``PROBE_COLUMNS`` added."""
    results = [
        probe_pair(src, tgt, min_frames, where=f"row {row} of {name}", clip=clip)
        for src, tgt, row, name in zip(
            pairs["source_path"], pairs["target_path"], pairs["csv_row"], pairs["csv_file"], strict=True
        )
    ]
    probed = pd.DataFrame(results, columns=PROBE_COLUMNS, index=pairs.index)
    out = pd.concat([pairs, probed], axis=1)
    out["num_frames"] = out["num_frames"].astype("Int64")
    out["width"] = out["width"].astype("Int64")
    out["height"] = out["height"].astype("Int64")
    out["fps"] = out["fps"].astype("Float64")
    return out
