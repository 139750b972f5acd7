"""One way to write a pipeline stage, run a list of them on Ray Data, and guard a resume.

Every job reads the same way: read inputs, plan, ``run_stages(items, [Stage(...), ...], store)``, write
outputs. Items are rows (dicts) of small columns: ids, paths, numbers, short strings. A stage that needs
pixels decodes them itself from the paths; nothing big travels between stages except a stage's product.

- :class:`Stage`: the declaration: a name (also the ``stage`` column of its rejections), what runs (a
  function ``fn(row, **kwargs) -> dict`` or a :class:`Worker` class), task or actor pool (``actors``),
  resources (``cpus``, ``gpus``, ``memory_bytes``, and custom Ray ``resources`` that pin it to a kind of
  node: a job's recipe ``placement`` table) and ``batch_size``.
- :class:`Worker`: a class stage. The constructor only stores small configs (they are pickled to every
  actor); :meth:`Worker.setup` loads models, once per actor, in the actor; :meth:`Worker.process` (one row)
  or :meth:`Worker.process_batch` (a batch, for batched models) returns each row's new columns.
- :class:`Rejected`: raise it to reject the current item. Any exception with ``reason`` and ``detail``
  attributes (``VideoError``, ``ClipRejection``) counts as one; any other exception becomes the stage's
  ``failure_reason``. A row returned with ``reason`` set is a rejection too.
- :func:`apply_stage`: the one wrapper. A failure on one item becomes that row's ``stage``, ``reason``,
  ``detail``; out-of-memory is re-raised (the job should stop, not reject everything after it); a failed
  batch is retried item by item so one bad item does not reject its neighbours; rows already rejected
  by an earlier stage pass through untouched.
- :func:`check_resources`: before any stage starts, each stage's task or actor must fit on some node of
  the cluster (a local Ray or a cluster without an autoscaler: a one-line error naming the stage and its
  recipe key; with an autoscaler: wait up to the recipe's limit).
- :func:`run_stages`: the one runner: builds the Ray Data pipeline, streams the results into a
  :class:`~pipelines.runtime.PartStore` in small parts as they arrive, and shows progress. Every stage
  records the Ray node that ran each row; at the end the runner prints which nodes ran each stage.
- :func:`run_resumable`: the runner with resume, what every job calls: given the store and its id column,
  it skips the items whose result is already stored, runs the stages over the rest, reads every result
  back, checks that each item has one, and counts per stage (in, kept, rejected by reason).
- :func:`guard_resume`: the one resume check: a run remembers the settings and inputs its stored results
  were made from (its fingerprint file); a rerun with others is refused, naming what differs.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from dataengine.formats.atomic import write_text
from dataengine.formats.recipe import StageResources, UserError
from pipelines.runtime import PartStore, Progress

Row = dict[str, Any]

FLUSH_ROWS = 256
"""Most rows per part written to a store (fewer on small runs: about ten parts per run)."""
FLUSH_SECONDS = 5.0
"""A part is written at least this often while results arrive: a kill loses at most this much work."""


class Rejected(Exception):
    """Raised by a stage to reject the current item.

    ``reason`` is the rejections' ``reason`` column (a short snake_case word a test can assert), ``detail``
    says what was wrong and names the file. ``stage`` overrides the name of the stage that raised it (a
    decode failure inside the VAE stage is still a ``decode`` rejection).
    """

    def __init__(self, reason: str, detail: str, stage: str | None = None):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.stage = stage


class Worker:
    """Base of a class stage. Keep ``__init__`` to storing small configs; load models in :meth:`setup`."""

    def setup(self) -> None:
        """Load models and other heavy state: called once per actor (or per task), in that process."""

    def process(self, row: Row) -> Row:
        """The new columns of one row (raise :class:`Rejected` to reject it)."""
        raise NotImplementedError(f"{type(self).__name__} implements neither process nor process_batch")

    def process_batch(self, rows: list[Row]) -> list[Row]:
        """The new columns of each row of a batch, in order (override for batched models)."""
        return [self.process(row) for row in rows]


class _FunctionWorker(Worker):
    def __init__(self, fn: Callable[..., Row], kwargs: Mapping[str, Any]):
        self.fn, self.kwargs = fn, dict(kwargs)

    def process(self, row: Row) -> Row:
        return self.fn(row, **self.kwargs)


@dataclass(frozen=True)
class Stage:
    """One step of a job: what runs, where (tasks or an actor pool), with which resources."""

    name: str
    """The stage's name: the ``stage`` column of the rejections it produces."""
    run: Callable[..., Row] | type[Worker]
    """A function ``fn(row, **kwargs) -> new columns``, or a :class:`Worker` class built with ``kwargs``."""
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    """Small, picklable arguments (configs) of the function or the worker's constructor."""
    actors: int = 0
    """0: Ray tasks (stateless CPU work); n > 0: a pool of n actors, each running ``setup`` once."""
    cpus: float = 1.0
    """CPUs reserved per task or actor (also torch's thread count there)."""
    gpus: float = 0.0
    """GPUs reserved per task or actor."""
    memory_bytes: int = 0
    """Memory reserved per task or actor (0: not declared)."""
    resources: Mapping[str, float] = field(default_factory=dict)
    """Custom Ray resources per task or actor, e.g. ``{"gpu_node": 1}``: the stage then runs only on nodes
    started with ``ray start --resources '{"gpu_node": N}'``. Jobs fill it from their recipe's ``placement``
    table (checked by :func:`dataengine.formats.recipe.check_placement`)."""
    batch_size: int = 1
    """Rows per call."""
    failure_reason: str = "error"
    """The ``reason`` of an item whose processing raised an exception that names none."""
    recipe_keys: Mapping[str, str] = field(default_factory=dict)
    """The recipe key that sets each resource (``"CPU"``, ``"GPU"``, ``"memory"``, ``"placement"`` for the
    custom ones), e.g. ``{"CPU": "shards.resources.vae_cpus"}``: named when the cluster cannot give it."""

    def asks(self) -> dict[str, float]:
        """What one task or actor of this stage asks Ray for, by Ray resource name."""
        asked = {"CPU": self.cpus, "GPU": self.gpus, "memory": float(self.memory_bytes), **self.resources}
        return {name: float(amount) for name, amount in asked.items() if amount}

    def key_of(self, resource: str) -> str:
        """The recipe key that sets ``resource`` (the stage's name when the job did not say)."""
        fallback = self.recipe_keys.get("placement") if resource not in ("CPU", "GPU", "memory") else None
        return self.recipe_keys.get(resource) or fallback or f"stage {self.name}'s {resource}"

    def __post_init__(self) -> None:
        if self.actors < 0 or self.batch_size < 1 or self.cpus < 0 or self.gpus < 0:
            raise ValueError(f"stage {self.name}: invalid resources {self}")
        if self.gpus > 0 and not self.actors:
            raise ValueError(f"stage {self.name}: a GPU stage must be an actor pool (actors > 0)")
        if any(amount <= 0 for amount in self.resources.values()):
            raise ValueError(f"stage {self.name}: custom resources must be > 0, got {dict(self.resources)}")

    def worker(self) -> Worker:
        """The stage's worker, not set up yet."""
        if isinstance(self.run, type) and issubclass(self.run, Worker):
            return self.run(**self.kwargs)
        return _FunctionWorker(self.run, self.kwargs)


# -- the wrapper -------------------------------------------------------------------------------------


def is_rejected(row: Mapping[str, Any]) -> bool:
    """A row rejected by some stage: its ``reason`` is a non-empty string."""
    reason = row.get("reason")
    return isinstance(reason, str) and bool(reason)


def _out_of_memory(err: BaseException) -> bool:
    torch = sys.modules.get("torch")
    return isinstance(err, MemoryError) or (torch is not None and isinstance(err, torch.OutOfMemoryError))


def _rejection(stage: Stage, err: Exception) -> Row:
    reason = getattr(err, "reason", None)
    detail = getattr(err, "detail", None)
    if not (isinstance(reason, str) and reason):
        reason, detail = stage.failure_reason, f"{type(err).__name__}: {err}"
    return {
        "stage": getattr(err, "stage", None) or stage.name,
        "reason": reason,
        "detail": str(detail)[:1000],
    }


def _merge(stage: Stage, row: Row, out: Row | None) -> Row:
    merged = {**row, **(out or {})}
    if is_rejected(merged) and not merged.get("stage"):
        merged["stage"] = stage.name
    return merged


def apply_stage(stage: Stage, worker: Worker, rows: list[Row]) -> list[Row]:
    """Run ``worker`` (set up) over ``rows``: each result merged into its row, each failure a rejection."""
    todo = [i for i, row in enumerate(rows) if not is_rejected(row)]
    out = list(rows)
    if not todo:
        return out
    try:
        results = worker.process_batch([rows[i] for i in todo])
        if len(results) != len(todo):
            raise RuntimeError(f"stage {stage.name} returned {len(results)} rows for {len(todo)}")
        for i, result in zip(todo, results, strict=True):
            out[i] = _merge(stage, rows[i], result)
        return out
    except Exception as err:
        if _out_of_memory(err):
            raise
        if len(todo) == 1:
            out[todo[0]] = {**rows[todo[0]], **_rejection(stage, err)}
            return out
    for i in todo:  # the batch failed: find the item(s) that did, one at a time
        out[i] = apply_stage(stage, worker, [rows[i]])[0]
    return out


# -- Ray glue -------------------------------------------------------------------------------------------


def _scalar(value: Any) -> Any:
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()  # numpy scalar -> Python
    if value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    return value


def frame_rows(frame: pd.DataFrame) -> list[Row]:
    """A pandas batch as rows of plain Python values (missing values as None)."""
    return [{k: _scalar(v) for k, v in row.items()} for row in frame.to_dict("records")]


NODE_PREFIX = "_node:"
"""Rows leave each stage with a ``_node:<stage>`` column: the Ray node that ran it (removed by the runner)."""


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def _tagged(stage: Stage, rows: list[Row], node: str) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    frame[NODE_PREFIX + stage.name] = node
    return frame


class _ActorStage:
    """Ray Data's callable class for an actor-pool stage: builds and sets up the worker once, in the actor."""

    def __init__(self, stage: Stage):
        self.stage = stage
        self.worker = stage.worker()
        self.worker.setup()
        self.node = _node_id()

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        return _tagged(self.stage, apply_stage(self.stage, self.worker, frame_rows(batch)), self.node)


def _task_stage(batch: pd.DataFrame, stage: Stage) -> pd.DataFrame:
    worker = stage.worker()
    worker.setup()
    return _tagged(stage, apply_stage(stage, worker, frame_rows(batch)), _node_id())


def placement_report(nodes: Mapping[str, Mapping[str, int]]) -> str:
    """One line saying which Ray nodes ran each stage (``stage -> node id -> rows``), each node named by the
    custom resources it was started with, e.g. ``score: 5 rows on node 75d4a353 (gpu_node)``."""
    import ray

    standard = ("CPU", "GPU", "memory", "object_store_memory", "node:", "accelerator_type:")
    labels = {}
    for node in ray.nodes():
        custom = sorted(k for k in node.get("Resources", {}) if not k.startswith(standard))
        labels[node["NodeID"]] = f" ({', '.join(custom)})" if custom else ""
    parts = []
    for stage, counts in nodes.items():
        where = ", ".join(
            f"{rows} rows on node {node[:8]}{labels.get(node, '')}" for node, rows in sorted(counts.items())
        )
        parts.append(f"{stage}: {where}")
    return "where the stages ran: " + "; ".join(parts)


def _pipeline(items: list[Row], stages: Sequence[Stage]) -> Any:
    import ray

    first = stages[0].batch_size if stages else 1
    dataset = ray.data.from_items(items, override_num_blocks=max(1, math.ceil(len(items) / first)))
    for stage in stages:
        resources = {"num_cpus": stage.cpus, "batch_size": stage.batch_size, "batch_format": "pandas"}
        if stage.gpus:
            resources["num_gpus"] = stage.gpus
        if stage.memory_bytes:
            resources["memory"] = stage.memory_bytes
        if stage.resources:
            resources["resources"] = dict(stage.resources)
        if stage.actors:
            dataset = dataset.map_batches(
                _ActorStage,
                fn_constructor_kwargs={"stage": stage},
                compute=ray.data.ActorPoolStrategy(size=stage.actors),
                **resources,
            )
        else:
            dataset = dataset.map_batches(_task_stage, fn_kwargs={"stage": stage}, **resources)
    return dataset


def _amount(resource: str, value: float) -> str:
    if resource == "memory" or resource == "object_store_memory":
        return f"{value / 2**30:.3g} GiB of memory"
    return f"{value:g} {resource}"


def unmet_resources(stages: Sequence[Stage], nodes: Sequence[Mapping[str, float]]) -> list[str]:
    """For each stage whose one task or actor fits on none of ``nodes`` (each node's total resources), one
    sentence naming the stage, the recipe key, what it asks for and what the largest node has."""
    problems = []
    for stage in stages:
        asked = stage.asks()
        if any(all(node.get(name, 0.0) >= amount for name, amount in asked.items()) for node in nodes):
            continue
        short = [n for n, a in asked.items() if max((node.get(n, 0.0) for node in nodes), default=0.0) < a]
        short = short or list(asked)  # enough of each on some node, never all on one
        per = "actor" if stage.actors else "task"
        parts = []
        for name in short:
            most = max((node.get(name, 0.0) for node in nodes), default=0.0)
            parts.append(
                f"{_amount(name, asked[name])} per {per} ({stage.key_of(name)}) but no node has more than "
                f"{_amount(name, most)}"
            )
        problems.append(f"stage {stage.name} asks for " + "; ".join(parts))
    return problems


def _node_resources() -> list[dict[str, float]]:
    import ray

    return [dict(node.get("Resources", {})) for node in ray.nodes() if node.get("Alive")]


def _cluster_can_grow() -> bool:
    """Whether an autoscaler may add nodes to the Ray cluster this process joined: Ray Data's own test (a
    node type of the autoscaler's published cluster config with room to scale up); a local instance or a
    cluster started by hand publishes none."""
    from ray.data._internal.cluster_autoscaler.util import is_autoscaling_enabled

    return is_autoscaling_enabled()


def check_resources(
    stages: Sequence[Stage], *, local: bool, wait_s: float, wait_key: str = "", poll_s: float = 5.0
) -> None:
    """Before any stage starts: every stage's task or actor must fit on some node of the Ray cluster, or the
    job would wait for ever. A local instance or a cluster without an autoscaler cannot grow: raise a
    :class:`~dataengine.formats.recipe.UserError` (one line: the stage, the recipe key, asked and available). Where
    an autoscaler may add nodes, say so and wait up to ``wait_s`` seconds (``wait_key``) for them."""
    from dataengine.formats.recipe import UserError

    problems = unmet_resources(stages, _node_resources())
    if not problems:
        return
    where = "this machine's local Ray instance" if local else "the Ray cluster"
    if local or wait_s <= 0 or not _cluster_can_grow():
        grow = "" if local else " (it has no autoscaler to add a node)"
        raise UserError(
            f"{'; '.join(problems)}, on {where}{grow}: lower the recipe value, or run on a larger machine "
            "or cluster"
        )
    print(
        f"{'; '.join(problems)}: an autoscaler watches the cluster; waiting up to {wait_s:g} s for a node "
        f"({wait_key or 'the job wait limit'})",
        flush=True,
    )
    deadline = time.monotonic() + wait_s
    while problems and time.monotonic() < deadline:
        time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))
        problems = unmet_resources(stages, _node_resources())
    if problems:
        raise UserError(
            f"{'; '.join(problems)}: no node that fits came within {wait_s:g} s ({wait_key}): lower the "
            "recipe value, raise the wait, or add nodes of that size to the cluster"
        )


def start_cluster(
    stages: Sequence[Stage],
    ray_address: str | None = None,
    num_cpus: int | None = None,
    resource_wait_s: float = 0.0,
    resource_wait_key: str = "",
) -> None:
    """Start or join Ray and :func:`check_resources` for ``stages`` (once per process is enough; cheap again)."""
    import os

    from pipelines.runtime import init_ray

    init_ray(ray_address, num_cpus=num_cpus)
    local = not (ray_address or os.environ.get("RAY_ADDRESS"))
    check_resources(stages, local=local, wait_s=resource_wait_s, wait_key=resource_wait_key)


def stream_stages(
    items: list[Row],
    stages: Sequence[Stage],
    *,
    ordered: bool = False,
    ray_address: str | None = None,
    num_cpus: int | None = None,
    resource_wait_s: float = 0.0,
    resource_wait_key: str = "",
) -> Iterator[Row]:
    """The result rows of ``stages`` over ``items``, as they finish (in ``items``' order when ``ordered``).

    Before the first stage starts, :func:`check_resources` checks that the cluster can run every stage
    (waiting up to ``resource_wait_s`` where an autoscaler may add nodes)."""
    if not items:
        return
    import ray

    start_cluster(stages, ray_address, num_cpus, resource_wait_s, resource_wait_key)
    ray.data.DataContext.get_current().execution_options.preserve_order = ordered
    nodes: dict[str, Counter[str]] = {stage.name: Counter() for stage in stages}
    for batch in _pipeline(items, stages).iter_batches(batch_format="pandas", batch_size=None):
        for row in frame_rows(batch):
            for key in [k for k in row if k.startswith(NODE_PREFIX)]:
                node = row.pop(key)
                if node is not None:
                    nodes[key.removeprefix(NODE_PREFIX)][node] += 1
            yield row
    print(placement_report(nodes), flush=True)


def run_stages(
    items: list[Row],
    stages: Sequence[Stage],
    store: PartStore,
    *,
    description: str,
    unit: str = "items",
    num_done: int = 0,
    collect: Callable[[Iterator[Row]], Iterator[Row]] | None = None,
    ordered: bool = False,
    ray_address: str | None = None,
    num_cpus: int | None = None,
    resource_wait_s: float = 0.0,
    resource_wait_key: str = "",
) -> None:
    """Run ``stages`` over ``items`` on Ray Data and append the results to ``store`` as they arrive.

    ``num_done`` items finished by an earlier run count towards the progress. ``collect`` turns the
    stream of result rows into the records stored (default: the rows themselves); the shard writer uses
    it to store one record per written shard. Parts are written every ``FLUSH_ROWS`` records (about a
    tenth of the run on small runs) or ``FLUSH_SECONDS``, so a kill loses little and a rerun skips the rest.
    """
    progress = Progress(num_done + len(items), unit=unit, description=description, initial=num_done)

    def counted() -> Iterator[Row]:
        rows = stream_stages(
            items,
            stages,
            ordered=ordered,
            ray_address=ray_address,
            num_cpus=num_cpus,
            resource_wait_s=resource_wait_s,
            resource_wait_key=resource_wait_key,
        )
        for row in rows:
            progress.update(1)
            yield row

    records = collect(counted()) if collect is not None else counted()
    flush_rows = max(1, min(FLUSH_ROWS, len(items) // 10))
    buffer: list[Row] = []
    last = time.monotonic()
    try:
        for record in records:
            buffer.append(record)
            if len(buffer) >= flush_rows or time.monotonic() - last > FLUSH_SECONDS:
                store.append_rows(buffer)
                buffer, last = [], time.monotonic()
    finally:
        store.append_rows(buffer)
        progress.close()


# -- resume ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RayOptions:
    """Where a job's stages run: the Ray cluster, the local instance's size, the wait for resources."""

    address: str | None = None
    """Join this Ray cluster (or ``RAY_ADDRESS``); None starts a local instance."""
    num_cpus: int | None = None
    """CPUs of a local instance (None: all); ignored when joining a cluster."""
    wait_s: float = 0.0
    """How long to wait for an autoscaler to add a node a stage needs (:func:`check_resources`)."""
    wait_key: str = ""
    """The recipe key of ``wait_s``, named in the message."""

    @classmethod
    def of(cls, resources: StageResources, address: str | None) -> RayOptions:
        """The options of a job from its ``[<step>.resources]`` table: the local instance's ``num_cpus`` (0:
        all) and ``wait_for_resources_s``, named by its recipe key."""
        wait_key = f"{resources.TABLE}.wait_for_resources_s"
        return cls(address, resources.num_cpus or None, resources.wait_for_resources_s, wait_key)

    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :func:`run_stages` and :func:`stream_stages`."""
        return {
            "ray_address": self.address,
            "num_cpus": self.num_cpus,
            "resource_wait_s": self.wait_s,
            "resource_wait_key": self.wait_key,
        }


def with_columns(frame: pd.DataFrame, columns: Iterable[str]) -> pd.DataFrame:
    """``frame`` with every one of ``columns`` (missing ones filled with None): a store that recorded only
    rejections, or nothing, still reads with the columns a job expects."""
    for column in columns:
        if column not in frame.columns:
            frame[column] = None
    return frame


def stage_counts(results: pd.DataFrame, stages: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per stage, in pipeline order: items that reached it (``in``), passed it (``kept``) and its rejections
    by reason (``rejected``), from the results' ``stage`` and ``reason`` columns. A rejection names a
    stage of ``stages`` or another one (a ``decode`` raised inside the VAE stage): those follow, in name order.
    """
    if "reason" in results.columns and len(results):
        rejected = results[results["reason"].map(lambda r: isinstance(r, str) and bool(r))]
    else:
        rejected = results.iloc[0:0].assign(stage=None, reason=None)
    names = list(stages) + sorted(set(rejected["stage"].dropna()) - set(stages))
    counts, remaining = {}, len(results)
    for name in names:
        mine = rejected[rejected["stage"] == name]
        by_reason = {str(k): int(v) for k, v in mine["reason"].value_counts().sort_index().items()}
        counts[name] = {"in": remaining, "kept": remaining - len(mine), "rejected": by_reason}
        remaining -= len(mine)
    return counts


@dataclass
class StageRun:
    """What :func:`run_resumable` returns: every item's stored result and the counts over the whole run."""

    results: pd.DataFrame
    """One row per id of the items (this run's and the earlier runs' results), sorted by id."""
    counts: dict[str, dict[str, Any]]
    """:func:`stage_counts` of ``results`` (or of the items' outcomes): per stage, in order, ``in``, ``kept``
    and ``rejected`` by reason; what a job's summary records under ``stages``."""
    num_done: int
    """Ids whose results an earlier run had stored (skipped by this one)."""

    def describe(self) -> str:
        """One line: per stage, items in, kept and rejected by reason."""
        parts = []
        for name, count in self.counts.items():
            rejected = ", ".join(f"{reason} {n}" for reason, n in count["rejected"].items())
            parts.append(
                f"{name} {count['in']} in, {count['kept']} kept"
                + (f" (rejected: {rejected})" if rejected else "")
            )
        return "; ".join(parts)

    def rejected(self) -> dict[str, int]:
        """Rejections by reason, over every stage, in reason order."""
        total: Counter[str] = Counter()
        for count in self.counts.values():
            total.update(count["rejected"])
        return dict(sorted(total.items()))


def run_resumable(
    items: list[Row],
    stages: Sequence[Stage],
    store: PartStore,
    *,
    description: str,
    unit: str = "items",
    columns: Iterable[str] = (),
    still_valid: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
    resumed: Callable[[int, int], str | None] | None = None,
    stage_names: Sequence[str] | None = None,
    collect: Callable[[Iterator[Row]], Iterator[Row]] | None = None,
    item_outcomes: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
    ordered: bool = False,
    ray: RayOptions = RayOptions(),
) -> StageRun:
    """Run ``stages`` over the ``items`` whose result ``store`` does not hold yet; every item's result.

    An item's id is its ``store.id_column`` value (several items may share one: the shard writer stores
    one record per shard). The stored results are read with ``columns``; ``still_valid`` drops recorded
    results that no longer hold (a written file that went missing), so their items run again.
    ``resumed(num_done_ids, num_todo_items)`` is the line printed before the run (None: nothing). After
    the run every id must have a result, or a ``RuntimeError`` names one that has none. The counts are over
    the results (``stage_names``: the stages in order; default the stages'), or, where a stored record is
    not one item (the shard writer stores one per shard), over ``item_outcomes(results)``: one row per
    item with the ``stage`` and ``reason`` of its rejection (none when it passed every stage).
    """
    id_column = store.id_column
    wanted = {item[id_column] for item in items}

    def stored() -> pd.DataFrame:
        frame = with_columns(store.read_all(), [id_column, *columns])
        return still_valid(frame) if still_valid is not None else frame

    done = set(stored()[id_column]) & wanted
    todo = [item for item in items if item[id_column] not in done]
    line = resumed(len(done), len(todo)) if resumed is not None else None
    if line:
        print(line, flush=True)
    run_stages(
        todo,
        stages,
        store,
        description=description,
        unit=unit,
        num_done=len(items) - len(todo),
        collect=collect,
        ordered=ordered,
        **ray.kwargs(),
    )
    results = stored()
    results = results[results[id_column].isin(wanted)].reset_index(drop=True)
    missing = wanted - set(results[id_column])
    if missing:
        raise RuntimeError(
            f"{description}: {len(missing)} of {len(wanted)} have no result in {store.folder} after the run "
            f"(e.g. {min(missing)}): rerun the same command to resume"
        )
    names = [stage.name for stage in stages] if stage_names is None else stage_names
    outcomes = item_outcomes(results) if item_outcomes is not None else results
    run = StageRun(results, stage_counts(outcomes, names), len(done))
    if run.counts:
        print(f"{description}: {run.describe()}", flush=True)
    return run


def fingerprint(settings: Mapping[str, Any], inputs: Iterable[str] = ()) -> str:
    """sha256 of the settings (JSON, sorted keys) and the inputs (one per line, in the order given)."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for item in inputs:
        digest.update(f"{item}\n".encode())
    return digest.hexdigest()


def _flatten(settings: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def guard_resume(
    path: str | Path, settings: Mapping[str, Any], inputs: Iterable[str] = (), *, start_over: str
) -> None:
    """Record what a run's stored results are made from, or refuse to continue them with something else.

    ``path`` is the run's fingerprint file (a ``RunLayout`` ``*_fingerprint``); ``settings`` the parts of
    the resolved recipe the stored results depend on (not resources, not output paths); ``inputs`` the
    items they were computed over (the input files, or the plan) when results are not keyed by their
    content. The first call writes the file; a later one with a different fingerprint raises ``ValueError``
    naming the settings that differ and saying to delete ``start_over`` to begin again.
    """
    path = Path(path)
    settings = json.loads(json.dumps(settings, default=str))  # plain data: tuples become lists
    stamp = fingerprint(settings, inputs)
    if path.exists():
        recorded = json.loads(path.read_text())
        if recorded.get("fingerprint") != stamp:
            old, new = _flatten(recorded.get("settings", {})), _flatten(settings)
            changed = [
                f"{k}: {old.get(k)!r} -> {new.get(k)!r}"
                for k in sorted({*old, *new})
                if old.get(k) != new.get(k)
            ]
            what = "; ".join(changed[:5]) if changed else "the inputs differ"
            raise UserError(
                f"{path.parent} holds results made with other settings or inputs ({what}): use a new run "
                f"name, or delete {start_over} to start over"
            )
        return
    write_text(
        path, json.dumps({"fingerprint": stamp, "settings": settings}, indent=1, sort_keys=True) + "\n"
    )
