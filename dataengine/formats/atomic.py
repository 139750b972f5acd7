"""The one way to write a file so that a reader, or a rerun after a kill, never sees half of it.

Write to a temporary name beside the file (``.<name>.tmp``, or ``.<stem>.tmp<suffix>`` where the writer
needs the extension, e.g. an encoder choosing its container), then rename it over the file: a rename within
one folder is atomic, so the file is either the old one or the whole new one. A leftover temporary file
from a killed writer starts with a dot and ends in ``.tmp``; a resuming job may delete it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def temporary_name(path: Path, keep_suffix: bool = False) -> Path:
    """The temporary name a write of ``path`` goes to before its rename."""
    if keep_suffix:
        return path.with_name(f".{path.stem}.tmp{path.suffix}")
    return path.with_name(f".{path.name}.tmp")


@contextmanager
def atomic_path(path: str | os.PathLike, *, keep_suffix: bool = False, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s content to; on success it is renamed over ``path``.

    The parent folder is created. ``fsync`` flushes the file to disk before the rename (for a file whose
    rename lets other data be deleted). On an exception the temporary file is removed and ``path`` is
    untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path, keep_suffix)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a small text file (a JSON summary, a Markdown table, an SVG) atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_parquet(frame, path: str | os.PathLike) -> None:
    """Write a pandas DataFrame as Parquet (no index) atomically."""
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)
