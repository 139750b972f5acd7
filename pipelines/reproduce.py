"""``dataengine reproduce``: the whole run in one command, from the CSVs to the report.

    dataengine reproduce manifests/openve.toml --train manifests/train_mive_14b.toml          # the paper's run
    dataengine reproduce manifests/demo.toml --train manifests/train_debug.toml               # make demo
    dataengine reproduce manifests/openve.toml --train manifests/train_mive_14b.toml --dry-run --gpus-per-node 8

The steps, in order, each present when its recipe table is: ``filter``, ``harvest-portraits``,
``synth-portraits``, ``shards``, ``verify`` (the data recipe), ``plan``, ``fit`` (the training recipe),
``sample``, ``diagnose-layers``, ``eval`` (an ``[eval]`` / ``[diagnose]`` table), ``report``; a recipe's
``[[reproduce.steps]]`` adds steps of its own (the demo: generating its inputs, the SAM2 variant of the
portrait step). Overrides ``train.*`` go to the training recipe, the others to the data recipe.

1. **Up front** it prints every step: its command, inputs and outputs, whether it is already complete, and
   its projected GPU-hours (:func:`projection`: measured per-item rates from a ``bench_gpu.json`` when one is
   given, else the recipe's ``[reproduce.projection.<step>]`` assumptions, each labelled with its source).
2. **A step is complete** when its record ``manifests/<run>/reproduce/<step>.json`` holds the step's current
   fingerprint and its outputs exist. The fingerprint hashes the step's command, the recipe tables it reads
   and the fingerprint of the step before it, so a change upstream makes everything after it stale.
3. **Steps run in order** as subprocesses of the real CLI commands (each resumes on its own; ``fit`` with
   ``--resume``), their output shown and kept in ``<step>.log``. A step's record is written when it exits 0;
   on the first failure the run stops, printing the exact command that reruns that step; run again, it goes on
   from there, skipping every complete step.
4. **Training**: on one node it launches ``torchrun`` over the node's GPUs itself (one plain process on a CPU
   machine); on several (``--nodes N``) it prints the command for each node and waits for the final checkpoint
   (docs/reproduce.md says why).
5. **Ray**: the data jobs that use Ray join ``--ray-address`` / ``RAY_ADDRESS``; without one, a local Ray head
   is started for them (``ray start --head``) and stopped after the last of them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from dataengine.formats.recipe import UserError

STANDARD_STEPS = (
    "filter",
    "harvest-portraits",
    "synth-portraits",
    "shards",
    "verify",
    "plan",
    "fit",
    "sample",
    "diagnose-layers",
    "eval",
    "report",
)
RAY_STEPS = {"filter", "harvest-portraits", "synth-portraits", "shards"}
"""Commands that run on Ray Data (they join one Ray when several run)."""
WAIT_POLL_S = 10.0
"""How often a multi-node ``fit`` looks for the final checkpoint."""


# ---------------------------------------------------------------------------------------------------
# Steps
# ---------------------------------------------------------------------------------------------------


@dataclass
class Projection:
    """Projected GPU-hours of a step: ``items`` x ``seconds_each`` GPU-seconds, and where the rate came from."""

    items: float | None
    unit: str
    seconds_each: float | None
    source: str
    """``measured: ...`` (a bench_gpu.json), ``assumed: ...`` (the recipe), ``CPU`` or why there is none."""

    @property
    def gpu_hours(self) -> float | None:
        if self.seconds_each == 0:
            return 0.0
        if self.items is None or self.seconds_each is None:
            return None
        return self.items * self.seconds_each / 3600


@dataclass
class Step:
    """One command of the run, what it reads and writes, and what it is made from."""

    name: str
    argv: list[str]
    """The command as printed, starting with ``dataengine``, ``trainer``, ``torchrun`` or any program."""
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    """Paths that must exist for the step to count as complete (none: its record alone)."""
    settings: dict[str, Any] = field(default_factory=dict)
    """The recipe tables the step reads (part of its fingerprint)."""
    ray: bool = False
    resolve: Callable[[], list[str]] | None = None
    """Builds the argv at run time (a step whose arguments come from an earlier step's output)."""
    wait_for: str | None = None
    """Multi-node training: run nothing here, print ``per_node`` and wait for this path."""
    per_node: list[str] = field(default_factory=list)
    projection: Projection | None = None
    fingerprint: str = ""


PROGRAMS = {
    "dataengine": ["-m", "pipelines.cli"],
    "trainer": ["-m", "trainer.cli"],
    "torchrun": ["-m", "torch.distributed.run"],
}


def executable(argv: list[str]) -> list[str]:
    """The argv to run: ``dataengine`` / ``trainer`` / ``torchrun`` as this interpreter's console scripts (or
    ``python -m`` where the scripts are not installed beside it); anything else as given."""
    if not argv or argv[0] not in PROGRAMS:
        return list(argv)
    script = Path(sys.executable).with_name(argv[0])
    if script.is_file():
        return [str(script), *argv[1:]]
    return [sys.executable, *PROGRAMS[argv[0]], *argv[1:]]


def command_line(argv: list[str]) -> str:
    """The exact command a user can paste (what :func:`executable` runs)."""
    return shlex.join(executable(argv))


def _split_overrides(overrides: list[str]) -> tuple[list[str], list[str]]:
    data, train = [], []
    for item in overrides:
        (train if item.split("=", 1)[0].strip().startswith("train.") else data).append(item)
    return data, train


def _table(recipe: dict, *keys: str) -> dict:
    node: Any = recipe
    for key in keys:
        node = node.get(key) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else {}


@dataclass
class RunPlan:
    """The run's steps in order and where its records live."""

    steps: list[Step]
    records: Path
    data_recipe: dict
    train_recipe: dict | None
    num_gpus: int = 0
    """GPUs of the whole run (nodes x GPUs per node): the wall-clock hours printed beside the GPU-hours."""


def gpu_count() -> int:
    """GPUs of this machine that torch sees (0 without CUDA)."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def fit_launch(
    recipe: str, overrides: list[str], nodes: int, gpus_per_node: int, rdzv_endpoint: str
) -> tuple[list[str], list[str]]:
    """(the command this machine runs, the per-node commands of a multi-node run).

    One node with GPUs: ``torchrun --standalone`` over them; without: one ``trainer fit`` process; several
    nodes: nothing runs here (empty command) and one torchrun per node is printed, all meeting at
    ``rdzv_endpoint`` through torchrun's c10d rendezvous.
    """
    fit = ["-m", "trainer.cli", "fit", recipe, *overrides, "--resume"]
    if nodes > 1:
        if not rdzv_endpoint:
            raise UserError(
                f"--nodes {nodes}: give --rdzv-endpoint HOST:PORT (a port on the first node every node reaches)"
            )
        per_node = [
            shlex.join(
                [
                    "torchrun",
                    f"--nnodes={nodes}",
                    f"--nproc-per-node={max(gpus_per_node, 1)}",
                    "--rdzv-backend=c10d",
                    f"--rdzv-endpoint={rdzv_endpoint}",
                    f"--rdzv-id={Path(recipe).stem}",
                    *fit,
                ]
            )
        ]
        return [], per_node
    if gpus_per_node >= 1:
        return ["torchrun", "--standalone", f"--nproc-per-node={gpus_per_node}", *fit], []
    return ["trainer", "fit", recipe, *overrides, "--resume"], []


def plan_run(
    data_path: str,
    train_path: str | None,
    overrides: list[str],
    *,
    nodes: int = 1,
    gpus_per_node: int = 0,
    rdzv_endpoint: str = "",
    bench: dict | None = None,
) -> RunPlan:
    """Every step of the run, with inputs, outputs, settings, fingerprints and projections (reads only)."""
    from dataengine.formats.recipe import load_recipe

    data_over, train_over = _split_overrides(overrides)
    data = load_recipe(data_path, data_over)
    train = load_recipe(train_path, train_over) if train_path else None
    run = data.get("run")
    if not isinstance(run, str) or not run:
        raise UserError(f"{data_path}: set the top-level `run` name")
    filt, portraits, shards = _table(data, "filter"), _table(data, "portraits"), _table(data, "shards")
    manifests = Path(filt.get("output_root", "manifests"))
    run_dir = manifests / run
    shards_dir = str(shards.get("output") or Path("shards") / run)
    base = {"run": run}
    steps: list[Step] = []

    def data_step(name: str, table: str, inputs: list[str], outputs: list[str], *extra: str) -> None:
        steps.append(
            Step(
                name,
                ["dataengine", name, data_path, *data_over, *extra],
                inputs,
                outputs,
                {**base, table: _table(data, table)},
                ray=name in RAY_STEPS,
            )
        )

    if filt:
        data_step(
            "filter",
            "filter",
            [str(filt.get("csv_dir", "")), str(filt.get("video_root", ""))],
            [str(run_dir / "openve.parquet")],
        )
    harvest = _table(portraits, "harvest")
    if harvest and portraits.get("portrait_windows"):
        source = harvest.get("videos_dir") or harvest.get("openve_csv_dir") or ""
        data_step(
            "harvest-portraits",
            "portraits",
            [str(source)],
            [str(run_dir / "portrait_windows.parquet"), str(run_dir / "background_windows.parquet")],
        )
    if portraits:
        windows = [portraits.get("portrait_windows"), portraits.get("background_windows")]
        inputs = [str(w) for w in windows if w] or [
            str(portraits.get("people_dir", "")),
            str(portraits.get("backgrounds_dir", "")),
        ]
        data_step("synth-portraits", "portraits", inputs, [str(run_dir / "portraits.parquet")])
    if shards:
        data_step(
            "shards", "shards", [str(p) for p in shards.get("inputs", [])], [f"{shards_dir}/index.json"]
        )
        steps.append(
            Step("verify", ["dataengine", "verify", shards_dir], [shards_dir], [], {**base, "shards": shards})
        )

    train_table = _table(train, "train") if train else {}
    run_folder = ""
    if train:
        run_folder = str(Path(train_table.get("runs_dir", "runs")) / str(train_table.get("name", "debug")))
        total_gpus = max(nodes, 1) * gpus_per_node
        plan_args = ["--gpus", str(max(total_gpus, 1))]
        steps.append(
            Step(
                "plan",
                ["trainer", "plan", train_path, *train_over, *plan_args],
                [train_path],
                [],
                {"train": train_table},
            )
        )
        command, per_node = fit_launch(train_path, train_over, nodes, gpus_per_node, rdzv_endpoint)
        final = str(
            Path(run_folder)
            / str(_table(train_table, "checkpoint").get("folder", "checkpoints"))
            / f"step-{int(train_table.get('steps', 0)):08d}"
        )
        steps.append(
            Step(
                "fit",
                command,
                [str(_table(train_table, "data").get("shards", ""))],
                [final],
                {"train": train_table, "launch": {"nodes": nodes, "gpus_per_node": gpus_per_node}},
                wait_for=final if per_node else None,
                per_node=per_node,
            )
        )

    eval_source, eval_recipe, eval_over = None, "", []
    if "eval" in data:
        eval_source, eval_recipe, eval_over = data, data_path, list(data_over)
    elif train and "eval" in train:
        eval_source, eval_recipe, eval_over = train, train_path or "", list(train_over)
    eval_table = _table(eval_source, "eval") if eval_source else {}
    if eval_source is not None and not eval_table.get("checkpoint") and run_folder:
        eval_over.append(f"eval.checkpoint={json.dumps(run_folder)}")
    checkpoint = str(eval_table.get("checkpoint") or run_folder)
    if eval_source is not None and checkpoint:
        pairs = str(eval_table.get("pairs", ""))
        out = str(Path(checkpoint) / "samples" / "edited.mp4")
        steps.append(
            Step(
                "sample",
                ["trainer", "sample", checkpoint, "--source", f"<first pair of {pairs}>", "--compare"],
                [checkpoint, pairs],
                [out],
                {"eval": eval_table, "checkpoint": checkpoint},
                resolve=lambda: _sample_argv(checkpoint, pairs, out),
            )
        )
    if "diagnose" in data:
        steps.append(
            Step(
                "diagnose-layers",
                ["dataengine", "diagnose-layers", data_path, *data_over],
                [str(_table(data, "diagnose").get("clips", ""))],
                [str(Path("manifests") / run / "diagnose" / "layers.json")],
                {**base, "diagnose": _table(data, "diagnose")},
            )
        )
    if eval_source is not None:
        out_dir = eval_table.get("output_dir") or str(Path(checkpoint) / "eval")
        steps.append(
            Step(
                "eval",
                ["trainer", "eval", eval_recipe, *eval_over],
                [str(eval_table.get("pairs", "")), checkpoint],
                [str(Path(out_dir) / "summary.json")],
                {"eval": eval_table, "checkpoint": checkpoint},
            )
        )
    report = ["dataengine", "report", run, "--manifests-root", str(manifests)]
    if run_folder:
        report += ["--train-run", run_folder]
    steps.append(Step("report", report, [str(run_dir)], [str(run_dir / "report.html")], {**base}))

    steps = _with_extra_steps(steps, data, data_path, train_path)
    records = run_dir / "reproduce"
    previous = ""
    for step in steps:
        step.fingerprint = step_fingerprint(step, previous)
        previous = step.fingerprint
    assumptions = {
        **_table(data, "reproduce", "projection"),
        **_table(train or {}, "reproduce", "projection"),
    }
    for step in steps:
        step.projection = projection(
            step.name, data, train, assumptions, bench, max(nodes, 1) * gpus_per_node
        )
    return RunPlan(steps, records, data, train, max(nodes, 1) * gpus_per_node)


def _with_extra_steps(steps: list[Step], data: dict, data_path: str, train_path: str | None) -> list[Step]:
    """The recipe's ``[[reproduce.steps]]`` (name, command, outputs, inputs, before) placed before the named
    standard step (or at the end); ``{recipe}`` and ``{train}`` in a command are the two recipes' paths."""
    extra = _table(data, "reproduce").get("steps", [])
    names = {s.name for s in steps}
    for entry in extra:
        name, command = entry.get("name"), entry.get("command")
        where = f"{data_path}: [[reproduce.steps]] {name!r}"
        if not isinstance(name, str) or not name or name in names:
            raise UserError(f"{where}: needs a `name` not used by another step")
        if not isinstance(command, list) or not command or not all(isinstance(c, str) for c in command):
            raise UserError(f"{where}: `command` must be a list of strings")
        argv = [c.replace("{recipe}", data_path).replace("{train}", train_path or "") for c in command]
        step = Step(
            name,
            argv,
            [str(p) for p in entry.get("inputs", [])],
            [str(p) for p in entry.get("outputs", [])],
            {"command": argv},
            ray=bool(entry.get("ray", False)),
        )
        steps.insert(_position(steps, entry.get("before", "")), step)
        names.add(name)
    return steps


def _position(steps: list[Step], before: str) -> int:
    """Index to insert a step at: before the step named ``before``; for a standard step this run does not
    have, before the first standard step that comes after it; else at the end."""
    for i, step in enumerate(steps):
        if step.name == before:
            return i
    if before in STANDARD_STEPS:
        rank = STANDARD_STEPS.index(before)
        for i, step in enumerate(steps):
            if step.name in STANDARD_STEPS and STANDARD_STEPS.index(step.name) > rank:
                return i
    return len(steps)


def _sample_argv(checkpoint: str, pairs: str, out: str) -> list[str]:
    """``trainer sample`` of the evaluation set's first pair (read when the step runs: the set is an earlier
    step's output)."""
    import pandas as pd

    path = Path(pairs)
    if not path.is_file():
        raise UserError(f"sample: the evaluation set {path} does not exist (an earlier step writes it)")
    table = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, keep_default_na=False)
    if not len(table):
        raise UserError(f"sample: the evaluation set {path} has no rows")
    row = table.iloc[0]

    def resolve(value: str) -> str:
        return value if Path(value).is_absolute() else str(path.parent / value)

    return [
        "trainer",
        "sample",
        checkpoint,
        "--source",
        resolve(str(row["source_path"])),
        "--reference",
        resolve(str(row["reference_path"])),
        "--instruction",
        str(row["instruction"]),
        "--out",
        out,
        "--compare",
    ]


def step_fingerprint(step: Step, previous: str) -> str:
    """sha256 of the step's command, the recipe tables it reads and the fingerprint of the step before it."""
    payload = {"name": step.name, "argv": step.argv, "settings": step.settings, "previous": previous}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------------
# Projection
# ---------------------------------------------------------------------------------------------------


def _count(step: str, data: dict, train: dict | None, num_gpus: int) -> tuple[float | None, str, str]:
    """(items, unit, how counted) of a step whose count follows from the recipes; None where it does not."""
    portraits, filt = _table(data, "portraits"), _table(data, "filter")
    if step == "synth-portraits" and "pairs_per_type" in portraits:
        return 3 * portraits["pairs_per_type"], "clips", "3 edit types x [portraits] pairs_per_type"
    if step == "shards":
        cap = _table(filt, "selection").get("max_per_category")
        categories = filt.get("categories")
        if cap and categories and "pairs_per_type" in portraits:
            count = len(categories) * cap + 3 * portraits["pairs_per_type"]
            return count, "samples", "at most: categories x max_per_category + the portrait pairs"
    if step == "fit" and train:
        table = _table(train, "train")
        sp = int(_table(table, "parallel").get("sequence_parallel", 1))
        batch = int(_table(table, "data").get("batch_size", 1))
        replicas = max(num_gpus, 1) // sp
        samples = int(table.get("steps", 0)) * replicas * batch * int(table.get("grad_accum", 1))
        return samples, "samples", f"steps x ({max(num_gpus, 1)} GPUs / SP {sp}) x batch x accumulation"
    return None, "", ""


def projection(
    step: str, data: dict, train: dict | None, assumptions: dict, bench: dict | None, num_gpus: int
) -> Projection:
    """GPU-hours of ``step``: its item count (from the recipes, else the assumption's ``items``) times its
    GPU-seconds per item, measured (a ``bench_gpu.json``'s projection row for the step) or assumed (the
    recipe's ``[reproduce.projection.<step>]`` or ``[reproduce.projection.default]`` ``gpu_seconds_each``, with
    its ``note``)."""
    assumed = assumptions.get(step, assumptions.get("default"))
    assumed = assumed if isinstance(assumed, dict) else {}
    items, unit, counted = _count(step, data, train, num_gpus)
    if items is None and "items" in assumed:
        items, unit, counted = assumed["items"], assumed.get("unit", "items"), "as the recipe states"
    measured = None
    for row in (bench or {}).get("rows", []):
        if row.get("step") == step and isinstance(row.get("gpu_seconds_each"), int | float):
            measured = row
    if measured is not None:
        where = ", ".join(str(bench[k]) for k in ("device", "date") if bench and bench.get(k))
        source = f"measured: bench_gpu.json ({where}) at the paper recipe's settings; {counted}"
        return Projection(items, unit, float(measured["gpu_seconds_each"]), source)
    if "gpu_seconds_each" in assumed:
        seconds, note = (
            float(assumed["gpu_seconds_each"]),
            assumed.get("note", "the recipe's [reproduce.projection]"),
        )
        if seconds == 0:
            return Projection(items, unit, 0.0, f"CPU: {note}")
        return Projection(items, unit, seconds, "; ".join(p for p in (f"assumed: {note}", counted) if p))
    if step in {"verify", "plan", "report"}:
        return Projection(0, "", 0.0, "CPU")
    return Projection(items, unit, None, "no rate: give --bench bench_gpu.json or [reproduce.projection]")


def read_bench(path: str | os.PathLike | None) -> dict | None:
    """A ``bench_gpu.json`` (``make bench-gpu``) or None."""
    if not path:
        return None
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"--bench: {path} does not exist (make bench-gpu OUT=folder writes folder/bench_gpu.json)"
        )
    try:
        bench = json.loads(path.read_text())
    except ValueError as err:
        raise UserError(f"--bench: {path} is not JSON: {err}") from err
    if not isinstance(bench, dict) or not isinstance(bench.get("rows"), list):
        raise UserError(f"--bench: {path} has no `rows` list: is it bench_gpu.json?")
    return bench


# ---------------------------------------------------------------------------------------------------
# State
# ---------------------------------------------------------------------------------------------------


def record_path(plan: RunPlan, step: Step) -> Path:
    return plan.records / f"{step.name}.json"


def status(plan: RunPlan, step: Step) -> str:
    """``done``, ``to run``, ``stale`` (made with other settings or inputs) or ``outputs missing``."""
    path = record_path(plan, step)
    if not path.exists():
        return "to run"
    try:
        recorded = json.loads(path.read_text())
    except ValueError:
        return "to run"
    if recorded.get("fingerprint") != step.fingerprint:
        return "stale"
    if not all(Path(p).exists() for p in step.outputs):
        return "outputs missing"
    return "done"


def write_record(plan: RunPlan, step: Step, argv: list[str], started: float) -> None:
    path = record_path(plan, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "step": step.name,
        "fingerprint": step.fingerprint,
        "command": command_line(argv) if argv else step.per_node,
        "outputs": step.outputs,
        "settings": step.settings,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "seconds": round(time.time() - started, 1),
    }
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True, default=str) + "\n")
    tmp.replace(path)


def _hours(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.1f}" if value >= 0.05 or value == 0 else f"{value:.3f}"


def format_plan(plan: RunPlan, selected: list[str]) -> str:
    """The up-front table: step, state, GPU-hours, command, inputs -> outputs, and the projection's sources."""
    lines = [f"{'step':<20} {'state':<16} {'GPU-h':>8}    command / inputs -> outputs"]
    total, complete = 0.0, True
    for step in plan.steps:
        state = status(plan, step) if step.name in selected else "not selected"
        hours = step.projection.gpu_hours if step.projection else None
        if step.name in selected and state != "done":
            total += hours or 0.0
            complete = complete and hours is not None
        lines.append(f"{step.name:<20} {state:<16} {_hours(hours):>8}    {shlex.join(step.argv)}")
        for node in step.per_node:
            lines.append(f"{'':<47}on every node: {node}")
        lines.append(
            f"{'':<47}{', '.join(step.inputs) or '-'} -> {', '.join(step.outputs) or '(its record)'}"
        )
    lines.append("")
    lines.append("projected GPU-hours, per step:")
    cpu = [s.name for s in plan.steps if s.projection and s.projection.source.startswith("CPU")]
    for step in plan.steps:
        p = step.projection
        if p is None or step.name in cpu:
            continue
        count = f"{p.items:,.0f} {p.unit}" if p.items is not None else "count n/a"
        each = f"{p.seconds_each:g} GPU-s each" if p.seconds_each is not None else "rate n/a"
        lines.append(f"  {step.name:<18} {_hours(p.gpu_hours):>8} GPU-h = {count} x {each} ({p.source})")
    if cpu:
        lines.append(f"  on the CPU (0 GPU-h): {', '.join(cpu)}")
    suffix = "" if complete else " (steps without a rate not counted)"
    wall = (
        f", about {_hours(total / plan.num_gpus)} h on {plan.num_gpus} GPUs"
        if plan.num_gpus and total
        else ""
    )
    lines.append(f"  still to run: {_hours(total)} GPU-h{wall}{suffix}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------------


class LocalRay:
    """A local Ray head (``ray start --head --block``) for the data jobs to join, started on first use, with
    token authentication as Ray turns it on for a cluster (the head and every job read one token file). Its
    workers run in the working folder, so the recipes' relative paths mean the same to them."""

    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None
        self.env: dict[str, str] = {}
        self.folder: Path | None = None

    def start(self) -> dict[str, str]:
        """The environment a job needs to join it (``RAY_ADDRESS`` and the token)."""
        if self.process is not None:
            return self.env
        import secrets
        import socket
        import tempfile

        def free_port() -> int:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                return s.getsockname()[1]

        port = free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="ray-head-"))
        log, token = self.folder / "ray.log", self.folder / "auth_token"
        token.write_text(secrets.token_hex(32) + "\n")
        auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
        ray = Path(sys.executable).with_name("ray")
        command = [str(ray) if ray.is_file() else "ray", "start", "--head", "--block"]
        command += ["--disable-usage-stats", "--node-ip-address=127.0.0.1", f"--port={port}"]
        command += ["--include-dashboard=false", f"--dashboard-agent-listen-port={free_port()}"]
        with log.open("w") as out:
            self.process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **auth}
            )
        while "block forever" not in log.read_text(errors="replace"):
            if self.process.poll() is not None:
                raise RuntimeError(f"ray start failed:\n{log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.2)
        self.env = {"RAY_ADDRESS": f"127.0.0.1:{port}", **auth}
        print(f"started a local Ray head at {self.env['RAY_ADDRESS']} for the data jobs", flush=True)
        return self.env

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None
        if self.folder is not None:
            import shutil

            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None


def run_logged(argv: list[str], log: Path, env: dict[str, str]) -> int:
    """Run ``argv``, its output printed and written to ``log``; its exit code."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        process = subprocess.Popen(
            executable(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True, bufsize=1
        )
        assert process.stdout is not None
        for line in process.stdout:
            sys.stdout.write(line)
            out.write(line)
            out.flush()
        return process.wait()


def wait_for_path(path: str, poll: float = WAIT_POLL_S) -> None:
    """Block until ``path`` exists (a multi-node run's final checkpoint)."""
    last = 0.0
    while not Path(path).exists():
        if time.monotonic() - last > 600:
            print(f"waiting for {path} ...", flush=True)
            last = time.monotonic()
        time.sleep(poll)


def select_steps(
    plan: RunPlan, steps: Iterable[str] | None, start: str | None, until: str | None
) -> list[str]:
    """Names of the steps to run: ``steps`` (a subset) else all, cut to ``start``..``until``."""
    names = [s.name for s in plan.steps]
    for name in [*(steps or []), *(n for n in (start, until) if n)]:
        if name not in names:
            raise UserError(f"no step {name!r} in this run: its steps are {', '.join(names)}")
    chosen = [n for n in names if not steps or n in steps]
    if start:
        chosen = [n for n in chosen if names.index(n) >= names.index(start)]
    if until:
        chosen = [n for n in chosen if names.index(n) <= names.index(until)]
    return chosen


def execute(plan: RunPlan, selected: list[str], ray_address: str | None, rerun_hint: str) -> int:
    """Run the selected steps that are not complete, in order; 0, or the failed step's exit code."""
    ray = LocalRay()
    address = ray_address or os.environ.get("RAY_ADDRESS", "")

    def terminated(signum: int, frame: Any) -> None:  # a SIGTERM stops the local Ray head too (finally below)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminated)
    pending = [s for s in plan.steps if s.name in selected and status(plan, s) != "done"]
    last_ray = max((i for i, s in enumerate(pending) if s.ray), default=-1)
    try:
        for index, step in enumerate(pending):
            started = time.time()
            print(f"\n=== {step.name}", flush=True)
            env = dict(os.environ)
            if step.ray:
                env.update({"RAY_ADDRESS": address} if address else ray.start())
            if step.wait_for:
                print(f"{step.name}: start this on every node, then this command waits for {step.wait_for}:")
                for line in step.per_node:
                    print(f"  {line}", flush=True)
                wait_for_path(step.wait_for)
                write_record(plan, step, [], started)
                continue
            try:
                argv = step.resolve() if step.resolve else step.argv
            except UserError as err:
                print(f"error: {err}", file=sys.stderr, flush=True)
                return 2
            code = run_logged(argv, plan.records / f"{step.name}.log", env)
            if code != 0:
                print(
                    f"\n{step.name} failed (exit {code}); its output is in {plan.records / (step.name + '.log')}.\n"
                    f"Rerun that step alone:\n  {command_line(argv)}\n"
                    f"or the whole run, which goes on from there:\n  {rerun_hint}",
                    file=sys.stderr,
                    flush=True,
                )
                return code
            write_record(plan, step, argv, started)
            print(f"=== {step.name}: done in {time.time() - started:.0f} s", flush=True)
            if index == last_ray:
                ray.stop()
    finally:
        ray.stop()
    return 0


# ---------------------------------------------------------------------------------------------------
# Command
# ---------------------------------------------------------------------------------------------------


def reproduce_command(
    recipe: Annotated[Path, typer.Argument(help="The data recipe, e.g. manifests/openve.toml")],
    overrides: Annotated[
        list[str] | None,
        typer.Argument(
            help="key=value overrides: train.* to the training recipe, the rest to the data recipe"
        ),
    ] = None,
    train: Annotated[
        Path | None, typer.Option("--train", help="The training recipe, e.g. manifests/train_mive_14b.toml")
    ] = None,
    bench: Annotated[
        Path | None,
        typer.Option("--bench", help="bench_gpu.json (make bench-gpu): measured rates for the projection"),
    ] = None,
    steps: Annotated[
        str | None, typer.Option("--steps", help="Only these steps, comma-separated (e.g. filter,shards)")
    ] = None,
    start: Annotated[str | None, typer.Option("--from", help="Start at this step")] = None,
    until: Annotated[str | None, typer.Option("--until", help="Stop after this step")] = None,
    nodes: Annotated[int, typer.Option("--nodes", help="Nodes that train (more than 1: print and wait)")] = 1,
    gpus_per_node: Annotated[
        int | None, typer.Option("--gpus-per-node", help="GPUs per node (default: the ones torch sees here)")
    ] = None,
    rdzv_endpoint: Annotated[
        str, typer.Option("--rdzv-endpoint", help="HOST:PORT where the nodes of a multi-node fit meet")
    ] = "",
    ray_address: Annotated[
        str | None,
        typer.Option("--ray-address", help="Ray for the data jobs (default RAY_ADDRESS, else a local head)"),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the steps and the projection, run nothing")
    ] = False,
) -> None:
    """The whole run in one command: filter, portraits, shards, verify, plan, fit, sample, eval, report; resumable."""
    if nodes < 1:
        raise UserError(f"--nodes must be >= 1, got {nodes}")
    # the GPUs matter to the training steps only (torch is imported to count them)
    gpus = gpus_per_node if gpus_per_node is not None else (gpu_count() if train else 0)
    plan = plan_run(
        str(recipe),
        str(train) if train else None,
        list(overrides or []),
        nodes=nodes,
        gpus_per_node=gpus,
        rdzv_endpoint=rdzv_endpoint,
        bench=read_bench(bench),
    )
    chosen = [s.strip() for s in steps.split(",") if s.strip()] if steps else None
    selected = select_steps(plan, chosen, start, until)
    where = f"{nodes} node(s) x {gpus} GPU(s)" if gpus else "CPU only (no GPU seen)"
    print(f"reproduce: {recipe}{f' + {train}' if train else ''}, {where}; records in {plan.records}/\n")
    print(format_plan(plan, selected), flush=True)
    if dry_run:
        return
    rerun = command_line(["dataengine", *sys.argv[1:]])
    code = execute(plan, selected, ray_address, rerun)
    if code:
        raise typer.Exit(code)
    print(f"\nreproduce: every selected step is complete ({len(selected)}); records in {plan.records}/")
