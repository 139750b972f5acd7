"""`make bench`: run every ``benchmarks/bench_*.py`` and print one table.

Each module (or package, like ``bench_gpu``) exposes ``run(quick: bool = False) -> list[dict]`` whose rows hold ``benchmark``, ``metric``,
``value``, ``unit`` and optionally ``note``. ``python -m benchmarks.run [NAME ...] [--quick]`` runs a
subset; ``--json PATH`` also writes the rows. Record GPU figures in ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import time
import traceback
from pathlib import Path

import torch


def format_table(rows: list[dict]) -> str:
    """A plain-text table of benchmark rows."""
    headers = ["benchmark", "metric", "value", "unit", "note"]
    cells = []
    for row in rows:
        value = row.get("value")
        if isinstance(value, float):
            value = f"{value:,.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
        cells.append(
            [
                str(row.get("benchmark", "")),
                str(row.get("metric", "")),
                str(value),
                str(row.get("unit", "")),
                str(row.get("note", "")),
            ]
        )
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(cell, widths, strict=True)) for cell in cells]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "names", nargs="*", help="benchmark modules to run (e.g. filter shards); all by default"
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()
    folder = Path(__file__).parent
    found = [p for p in folder.glob("bench_*") if p.suffix == ".py" or (p / "__init__.py").exists()]
    names = args.names or sorted(p.stem.removeprefix("bench_") for p in found)
    device = (
        torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    )
    print(f"# benchmarks on {device}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}")
    rows: list[dict] = []
    for name in names:
        module = importlib.import_module(f"benchmarks.bench_{name}")
        start = time.perf_counter()
        try:
            rows += module.run(quick=args.quick)
        except Exception as err:  # one broken benchmark must not hide the others
            traceback.print_exc()
            rows.append(
                {
                    "benchmark": name,
                    "metric": "error",
                    "value": type(err).__name__,
                    "unit": "",
                    "note": str(err)[:80],
                }
            )
        print(f"# {name}: {time.perf_counter() - start:.1f} s", flush=True)
    print(format_table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2, default=str))


if __name__ == "__main__":
    main()
