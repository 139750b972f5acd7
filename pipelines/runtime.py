"""What every Ray pipeline shares: starting Ray, resumable result parts, and a live progress display.

- :func:`init_ray` starts a local Ray instance by default, or joins a cluster given ``--ray-address``
  or ``RAY_ADDRESS``. The console stays quiet: Ray Data's own progress bars and info lines are off
  (:class:`Progress` shows the job's), the workers' output (FFmpeg's per-file messages, model-loading
  bars, library warnings) goes to Ray's log files (``/tmp/ray/session_latest/logs``), not the terminal,
  and a failure reaches the job as a rejection row or an exception, never as a printed line.
- :func:`quiet_native_stderr` drops the few lines Ray's C++ core prints in the driver that say nothing
  to a user of these jobs (``NATIVE_NOISE``); the ``dataengine`` command turns it on.
- :class:`PartStore` appends result parts (Parquet) as they finish, each written under a temporary
  name and renamed when complete, so a part on disk is always whole. After a kill, a rerun asks
  :meth:`PartStore.completed_ids` what is done and skips it (datatrove's completion markers, per item).
  Full levels of parts are merged into bigger parts as the store grows, so a restart reads few files.
- :class:`Progress` shows items done, items/s and ETA, live on a terminal, as periodic log lines otherwise.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from dataengine.formats.atomic import atomic_path

if TYPE_CHECKING:  # imported where used: the CLI's --help and start-up should not pay for pandas
    import pandas as pd
    import pyarrow as pa


def init_ray(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None) -> None:
    """Start (or join) Ray once per process.

    ``address`` (or ``RAY_ADDRESS``) joins an existing cluster, whose nodes must have this package
    installed; without it a local instance is started with ``num_cpus`` / ``num_gpus`` (all by default).
    """
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    # Worker output stays in Ray's log files: per-file FFmpeg messages and per-actor warnings are noise on a
    # terminal, and every failure reaches the driver as a rejection row or an exception anyway.
    common = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if address:
        ray.init(address=address, **common)
    else:
        # Ray turns token authentication on for a new local cluster (a secure default, kept) and says so
        # in a warning each run: drop that one message.
        logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(
            lambda record: not record.getMessage().startswith("Token authentication is enabled")
        )
        # Ray sizes the object store itself (30% of RAM); MIVE_RAY_OBJECT_STORE_BYTES caps it (the tests do).
        store = os.environ.get("MIVE_RAY_OBJECT_STORE_BYTES")
        kwargs = {
            "num_cpus": num_cpus,
            "num_gpus": num_gpus,
            "object_store_memory": int(store) if store else None,
        }
        ray.init(address="local", **{k: v for k, v in kwargs.items() if v is not None}, **common)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    for handler in logging.getLogger("ray.data").handlers:  # the console handler; the file ones keep all
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.WARNING)  # "execution finished in ..." lines
            handler.addFilter(lambda record: not record.getMessage().startswith("Progress bars disabled"))


NATIVE_NOISE = (
    # Ray Data creates every actor with its UDF in the object store and restarts enabled; Ray's core then
    # logs an error per actor (ray-project/ray#57733) although Ray Data keeps that object alive.
    r"core_worker\.cc:\d+: Actor with class name: .* has constructor arguments in the object store",
)
_PUMP = """
import re, sys
noise = [re.compile(p.encode()) for p in sys.argv[1:]]
for line in iter(sys.stdin.buffer.readline, b""):
    if not any(p.search(line) for p in noise):
        sys.stdout.buffer.write(line)
        sys.stdout.buffer.flush()
"""


def quiet_native_stderr(patterns: tuple[str, ...] = NATIVE_NOISE) -> None:
    """Drop lines matching ``patterns`` from what native code (Ray's C++ core) writes to this process's stderr.

    File descriptor 2 becomes a pipe to a small child process that forwards every other line to the
    real stderr; being a separate process, it still forwards the last lines of a process that crashes.
    Python's own ``sys.stderr`` (progress lines, tables, tracebacks) writes to the real stderr directly.
    Call it once, early, in a command-line entry point (not under pytest's output capture).
    """
    if getattr(quiet_native_stderr, "_on", False):
        return
    sys.stderr.flush()
    real = os.dup(2)
    pump = subprocess.Popen(
        [sys.executable, "-c", _PUMP, *patterns], stdin=subprocess.PIPE, stdout=real, close_fds=True
    )
    os.dup2(pump.stdin.fileno(), 2)
    pump.stdin.close()
    sys.stderr = io.TextIOWrapper(
        io.FileIO(real, "w", closefd=False),
        encoding=sys.stderr.encoding,
        errors="backslashreplace",
        line_buffering=True,
    )
    quiet_native_stderr._on = True


COMPACT_FANOUT = 64
"""Parts of one level that a store merges into one part of the next level (see :class:`PartStore`)."""
REPLACES_KEY = b"mive.replaces"
"""Parquet metadata key of a merged part: the JSON list of the part names it replaces."""
_LEVEL = re.compile(r"\.L(\d+)\.parquet$")


def part_level(path: Path) -> int:
    """0 for an appended part, k for a part made by merging parts of level k - 1."""
    found = _LEVEL.search(path.name)
    return int(found.group(1)) if found else 0


class PartStore:
    """A folder of Parquet parts appended as results finish; the unit of resume.

    Parts are named ``part-<time>-<random>.parquet`` and written atomically. Leftover temporary files
    from a killed run are ignored and removed. Rows are identified by ``id_column``.

    **Compaction** keeps the number of files small however many parts a run appends (OpenVE-3M's 2.45M
    pairs in parts of 64 would be 38,000 files, all read at every restart): once ``fanout`` parts of one
    level exist, :meth:`append` merges them into one part of the next level (``part-<time>-<random>.L1
    .parquet``, ...), so a store holds fewer than ``fanout`` parts per level and each row is rewritten once per
    level (2.45M rows in parts of 64: 41 files). A merged part is written under a temporary name, flushed to
    disk and renamed, and it names the parts it replaces in its Parquet metadata (``mive.replaces``); only
    then are they deleted. A kill between the rename and the last deletion leaves both on disk:
    :meth:`parts` leaves out every part that a merged part replaces, and opening the store deletes them.
    So at any moment the store reads as every row exactly once.
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        id_column: str = "pair_id",
        schema: pa.Schema | None = None,
        fanout: int = COMPACT_FANOUT,
    ):
        if fanout < 2:
            raise ValueError(f"PartStore fanout must be >= 2, got {fanout}")
        self.folder = Path(folder)
        self.id_column = id_column
        self.schema = schema
        """The parts' columns and types; None infers them from each part's rows."""
        self.fanout = fanout
        """Parts of one level merged into one of the next; the most parts a level holds is ``fanout - 1``."""
        self._replaces: dict[str, list[str]] = {}  # merged part name -> the names it replaces (immutable)
        self.folder.mkdir(parents=True, exist_ok=True)
        for leftover in self.folder.glob(".*.tmp"):
            leftover.unlink(missing_ok=True)
        replaced = self._replaced()
        for path in self.folder.glob("part-*.parquet"):  # finish the deletions a kill interrupted
            if path.name in replaced:
                path.unlink(missing_ok=True)

    def _replaced(self) -> set[str]:
        """Names of the parts that a merged part on disk replaces."""
        import pyarrow.parquet as pq

        replaced: set[str] = set()
        for path in self.folder.glob("part-*.L*.parquet"):
            if path.name not in self._replaces:
                metadata = pq.read_schema(path).metadata or {}
                self._replaces[path.name] = json.loads(metadata.get(REPLACES_KEY, b"[]"))
            replaced.update(self._replaces[path.name])
        return replaced

    def parts(self) -> list[Path]:
        """The complete parts, oldest first, without those a merged part replaces."""
        replaced = self._replaced()
        return sorted(p for p in self.folder.glob("part-*.parquet") if p.name not in replaced)

    def _write(self, table: pa.Table, name: str) -> Path:
        import pyarrow.parquet as pq

        with atomic_path(self.folder / name) as tmp:
            pq.write_table(table, tmp)
        return self.folder / name

    def append(self, frame: pd.DataFrame | pa.Table) -> Path | None:
        """Write one part atomically (empty frames write nothing), then compact if a level is full."""
        import pyarrow as pa

        table = frame if isinstance(frame, pa.Table) else pa.Table.from_pandas(frame, preserve_index=False)
        if table.num_rows == 0:
            return None
        path = self._write(table, f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet")
        self.compact()
        return path

    def append_rows(self, rows: list[dict]) -> Path | None:
        """Write ``rows`` as one part (only the schema's columns when the store has one)."""
        import pandas as pd
        import pyarrow as pa

        if not rows:
            return None
        if self.schema is not None:
            return self.append(pa.Table.from_pylist(rows, schema=self.schema))
        return self.append(pd.DataFrame(rows))

    def compact(self) -> int:
        """Merge every ``fanout`` parts of a level into one part of the next, level by level; returns the
        number of merges. :meth:`append` calls it; a store written before compaction existed (or with a
        larger fanout) is compacted by calling it once."""
        merges, level = 0, 0
        while True:
            parts = self.parts()
            if not any(part_level(p) >= level for p in parts):
                return merges
            same = [p for p in parts if part_level(p) == level]
            for start in range(0, len(same) - self.fanout + 1, self.fanout):
                self._merge(same[start : start + self.fanout], level + 1)
                merges += 1
            level += 1

    def _merge(self, parts: list[Path], level: int) -> Path:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.concat_tables([pq.ParquetFile(p).read() for p in parts], promote_options="permissive")
        names = [p.name for p in parts]
        metadata = {**(table.schema.metadata or {}), REPLACES_KEY: json.dumps(names).encode()}
        table = table.replace_schema_metadata(metadata)
        stamp = parts[0].name.split("-")[1]  # the oldest input's time: parts keep their order
        name = f"part-{stamp}-{uuid.uuid4().hex[:8]}.L{level}.parquet"
        with atomic_path(self.folder / name, fsync=True) as tmp:  # on disk before its inputs go
            pq.write_table(table, tmp)
        self._replaces[name] = names
        for part in parts:
            part.unlink(missing_ok=True)
        return self.folder / name

    def completed_ids(self) -> set[str]:
        """Ids of every row in a complete part."""
        import pyarrow.parquet as pq

        ids: set[str] = set()
        for part in self.parts():
            ids.update(pq.ParquetFile(part).read(columns=[self.id_column]).column(0).to_pylist())
        return ids

    def read_all(self) -> pd.DataFrame:
        """All rows of all parts, one row per id (the first part that holds it wins), sorted by id."""
        import pandas as pd
        import pyarrow as pa
        import pyarrow.parquet as pq

        parts = self.parts()
        if not parts:
            return pd.DataFrame(columns=[self.id_column])
        tables = [pq.ParquetFile(p).read() for p in parts]
        frame = pa.concat_tables(
            tables, promote_options="permissive"
        ).to_pandas()  # one conversion, not one per part
        frame = frame.drop_duplicates(subset=[self.id_column], keep="first")
        return frame.sort_values(self.id_column, kind="stable").reset_index(drop=True)


def _format_duration(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):
        return "--:--"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours:d}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


class Progress:
    """Items done of ``total``, items/s and ETA.

    ``initial`` counts items already done by an earlier (resumed) run: they count towards done but not
    towards the rate. On a terminal the line is redrawn in place; otherwise one line is logged every
    ``log_every_s`` seconds and at the end.
    """

    def __init__(
        self,
        total: int,
        unit: str = "items",
        description: str = "",
        initial: int = 0,
        log_every_s: float = 10.0,
    ):
        self.total = total
        self.unit = unit
        self.description = description
        self.done = initial
        self.initial = initial
        self.start = time.monotonic()
        self.log_every_s = log_every_s
        self._last_log = 0.0
        self.interactive = sys.stderr.isatty()
        self._render(force=True)

    @property
    def rate(self) -> float:
        elapsed = time.monotonic() - self.start
        return (self.done - self.initial) / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        rate = self.rate
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        percent = 100.0 * self.done / self.total if self.total else 100.0
        prefix = f"{self.description}: " if self.description else ""
        return (
            f"{prefix}{self.done}/{self.total} {self.unit} ({percent:5.1f}%) "
            f"| {rate:.2f} {self.unit}/s | elapsed {_format_duration(time.monotonic() - self.start)} "
            f"| ETA {_format_duration(eta)}"
        )

    def _render(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.interactive:
            sys.stderr.write("\r\033[K" + self.line())
            sys.stderr.flush()
        elif force or now - self._last_log >= self.log_every_s:
            print(self.line(), file=sys.stderr, flush=True)
            self._last_log = now

    def update(self, count: int = 1) -> None:
        self.done += count
        self._render()

    def close(self) -> None:
        if self.interactive:
            sys.stderr.write("\r\033[K" + self.line() + "\n")
            sys.stderr.flush()
        else:
            self._render(force=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
