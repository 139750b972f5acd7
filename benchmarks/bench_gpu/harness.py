"""The harness of ``make bench-gpu``: each section in its own process, forked from a server that imported
torch, transformers and diffusers once, under its own time limit and the run's total; the table, the JSON and
the Markdown; the command line (:func:`main`).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from benchmarks.bench_gpu import __doc__ as PACKAGE_DOC
from benchmarks.bench_gpu.common import (
    DEFAULT_OUT,
    PROFILES,
    SECTIONS,
    TOTAL_LIMIT_S,
    Bench,
    _is_oom,
    _row,
)
from benchmarks.bench_gpu.detector import bench_detector
from benchmarks.bench_gpu.dit import bench_dit
from benchmarks.bench_gpu.judge import bench_judge
from benchmarks.bench_gpu.projection import projection_rows
from benchmarks.bench_gpu.sam2 import bench_sam2
from benchmarks.bench_gpu.vae import bench_vae
from benchmarks.bench_gpu.vlm import bench_vlm

BENCHMARKS: dict[str, Callable[[Bench], Iterator[dict]]] = {
    "judge": bench_judge,
    "vlm": bench_vlm,
    "vae": bench_vae,
    "detector": bench_detector,
    "sam2": bench_sam2,
    "dit": bench_dit,
}


# ---------------------------------------------------------------------------------------------- the runner


def _write_json(path: Path, data: Any) -> None:
    from dataengine.formats.atomic import write_text

    write_text(path, json.dumps(data, indent=2, default=str))


def _section_process(name: str, bench: Bench, rows_path: Path) -> None:
    """A section's process: measure, writing the rows so far after each one; a failure is recorded and exit 1."""
    rows: list[dict] = []
    try:
        for row in BENCHMARKS[name](bench):
            rows.append(row)
            _write_json(rows_path, {"rows": rows, "status": "running"})
    except BaseException as err:  # noqa: BLE001 - anything that ends the section is its reason
        traceback.print_exc()
        reason = "out of memory: " if _is_oom(err) else ""
        _write_json(
            rows_path,
            {"rows": rows, "status": "failed", "reason": f"{reason}{type(err).__name__}: {err}"[:300]},
        )
        sys.exit(1)
    _write_json(rows_path, {"rows": rows, "status": "ok"})


def _ready() -> None:
    """A process that does nothing: starting it waits for the fork server's imports."""


def run_sections(
    bench: Bench, names: list[str], limits: dict[str, float], total_limit: float
) -> tuple[list[dict], dict, float]:
    """Run each section in its own process under its time limit; returns (rows, per-section status, seconds
    of the shared imports)."""
    context = multiprocessing.get_context("forkserver")
    # One import of the heavy libraries, shared by every section's process (each forks from the server).
    context.set_forkserver_preload(
        [
            "torch",
            "transformers.models.qwen3_vl.modeling_qwen3_vl",
            "transformers.models.sam2_video.modeling_sam2_video",
            "transformers.models.rt_detr_v2.modeling_rt_detr_v2",
            "diffusers.models.autoencoders.autoencoder_kl_wan",
            "diffusers.models.transformers.transformer_wan",
            "trainer.model",
            "benchmarks.bench_model",
            "dataengine.models.judge",
            "dataengine.models.detect",
        ]
    )
    start = time.monotonic()
    warm = context.Process(target=_ready)  # returns once the server has imported the modules above
    warm.start()
    warm.join()
    imports = time.monotonic() - start
    print(f"# imports shared by the sections: {imports:.1f} s", flush=True)
    deadline = start + total_limit
    rows: list[dict] = []
    status: dict[str, dict] = {}
    for name in names:
        rows_path = bench.work / f"{name}.rows.json"
        left = deadline - time.monotonic()
        limit = min(limits[name], left)
        if left <= 1:
            status[name] = {
                "status": "skipped",
                "reason": f"the run's {total_limit:g} s were spent",
                "seconds": 0.0,
            }
            rows.append(_row(name, "FAILED", "skipped", "", status[name]["reason"]))
            print(f"# {name}: skipped ({status[name]['reason']})", file=sys.stderr, flush=True)
            continue
        print(f"# {name}: running (limit {limit:.0f} s)", flush=True)
        start = time.monotonic()
        process = context.Process(
            target=_section_process, args=(name, bench, rows_path), name=f"bench_gpu.{name}"
        )
        process.start()
        process.join(limit)
        if process.is_alive():
            process.kill()
            process.join()
            outcome = {"status": "timeout", "reason": f"timed out after {limit:.0f} s (killed)"}
        elif process.exitcode == 0:
            outcome = {"status": "ok", "reason": None}
        else:
            outcome = {"status": "failed", "reason": f"exit code {process.exitcode}"}
            if process.exitcode < 0:
                outcome["reason"] += f" (killed by signal {-process.exitcode}: host out of memory?)"
        written = json.loads(rows_path.read_text()) if rows_path.exists() else {"rows": []}
        if written.get("status") == "failed":
            outcome["reason"] = written["reason"]
        outcome["seconds"] = round(time.monotonic() - start, 1)
        status[name] = outcome
        rows += written["rows"]
        if outcome["status"] != "ok":
            kept = len(written["rows"])
            rows.append(_row(name, "FAILED", outcome["status"], "", f"{outcome['reason']}; {kept} rows kept"))
            print(
                f"# {name}: {outcome['status']}: {outcome['reason']} ({kept} rows kept)",
                file=sys.stderr,
                flush=True,
            )
        else:
            print(f"# {name}: ok in {outcome['seconds']:.1f} s", flush=True)
    return rows, status, imports


def markdown_table(rows: list[dict]) -> str:
    """Rows as a Markdown table (the same cells as the printed table)."""
    lines = ["| benchmark | metric | value | unit | note |", "|---|---|---|---|---|"]
    for row in rows:
        value = row["value"]
        if isinstance(value, float):
            value = f"{value:,.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
        cells = [row["benchmark"], row["metric"], value, row["unit"], row.get("note", "")]
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def _device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(device)
        return f"{props.name} ({props.total_memory / 2**30:.0f} GiB)"
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=PACKAGE_DOC, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "out", type=Path, nargs="?", default=DEFAULT_OUT, help="folder for bench_gpu.json and .md"
    )
    parser.add_argument(
        "--profile", choices=sorted(PROFILES), default="real", help="real sizes (GPU) or debug (CPU smoke)"
    )
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cuda, cuda:N or cpu")
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}"
    )
    parser.add_argument(
        "--gpus", type=int, default=8, help="GPUs the projection spreads the paper's run over"
    )
    parser.add_argument(
        "--total-limit", type=float, default=TOTAL_LIMIT_S, help="seconds for all sections together"
    )
    parser.add_argument(
        "--time-limit",
        action="append",
        default=[],
        metavar="SECTION=SECONDS",
        help="override a section's limit",
    )
    args = parser.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import tempfile

    import torch

    from benchmarks.run import format_table
    from dataengine.models.devices import resolve_device

    profile = PROFILES[args.profile]
    device = str(resolve_device(args.device))
    if profile.model_size == "real" and not device.startswith("cuda"):
        print(
            f"error: the real profile builds the 8.8B Qwen3-VL and 14B-wide DiT blocks and needs a CUDA GPU "
            f"(device {device}); on a CPU run `--profile debug --device cpu`",
            file=sys.stderr,
        )
        return 2
    names = [name.strip() for name in args.sections.split(",") if name.strip()]
    unknown = sorted(set(names) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {unknown}; known: {list(SECTIONS)}")
    limits = dict(profile.time_limits)
    for item in args.time_limit:
        name, _, seconds = item.partition("=")
        if name not in SECTIONS or not seconds:
            parser.error(
                f"--time-limit {item!r}: expected SECTION=SECONDS with SECTION one of {list(SECTIONS)}"
            )
        limits[name] = float(seconds)

    header = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "device": _device_name(device),
        "torch": torch.__version__,
        "profile": args.profile,
        "command": " ".join(
            ["python", "-m", "benchmarks.bench_gpu", *(sys.argv[1:] if argv is None else argv)]
        ),
    }
    print(f"# bench_gpu: {header['device']}, torch {header['torch']}, profile {args.profile}", flush=True)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as work:
        bench = Bench(profile=profile, device=device, work=Path(work))
        rows, status, imports = run_sections(bench, names, limits, args.total_limit)
    rows += projection_rows(rows, args.gpus)
    header["seconds"] = round(time.monotonic() - start, 1)
    header["imports_seconds"] = round(imports, 1)
    print(format_table(rows))
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / "bench_gpu.json", {**header, "sections": status, "rows": rows})
    section_lines = [
        f"- {name}: {s['status']} in {s['seconds']} s" + (f" ({s['reason']})" if s["reason"] else "")
        for name, s in status.items()
    ]
    (out / "bench_gpu.md").write_text(
        f"# bench_gpu, {header['date']}\n\n{header['device']}, torch {header['torch']}, profile {args.profile}, "
        f"{header['seconds']} s ({header['imports_seconds']} s of shared imports): `{header['command']}`\n\n"
        + "\n".join(section_lines)
        + "\n\n"
        + markdown_table(rows)
        + "\n"
    )
    print(
        f"# wrote {out / 'bench_gpu.json'} and {out / 'bench_gpu.md'} in {header['seconds']:.0f} s",
        flush=True,
    )
    return 0 if all(s["status"] == "ok" for s in status.values()) else 1


def run(quick: bool = False) -> list[dict]:
    """``make bench``: the real profile where CUDA is available (about 8 minutes), else a row saying to use a GPU."""
    import tempfile

    import torch

    if not torch.cuda.is_available():
        return [
            _row(
                "gpu",
                "skipped",
                "no CUDA",
                "",
                "make bench-gpu OUT=folder on a GPU machine (benchmarks/RESULTS.md)",
            )
        ]
    with tempfile.TemporaryDirectory() as folder:
        main([folder])
        return json.loads((Path(folder) / "bench_gpu.json").read_text())["rows"]
