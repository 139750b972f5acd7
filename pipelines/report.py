"""``dataengine report RUN``: one self-contained HTML page of a run (counts, rejections, scores, thumbnails,
shards, loss curve); see :mod:`dataengine.tools.run_report`.

    dataengine report demo                       # -> manifests/demo/report.html
    dataengine report openve --train-run runs/mive_14b --out /tmp/openve.html
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def report_command(
    run: Annotated[str, typer.Argument(help="Run name of the data recipe (manifests/<run>/, shards/<run>/)")],
    out: Annotated[
        Path | None, typer.Option("--out", help="Output HTML (default: <manifests-root>/<run>/report.html)")
    ] = None,
    train_run: Annotated[
        Path | None,
        typer.Option(
            "--train-run",
            help="Training run folder with metrics.jsonl (default: the run trained on shards/<run>)",
        ),
    ] = None,
    manifests_root: Annotated[
        Path, typer.Option("--manifests-root", help="Folder of the run folders")
    ] = Path("manifests"),
    shards_root: Annotated[Path, typer.Option("--shards-root", help="Folder of the shard sets")] = Path(
        "shards"
    ),
    runs_root: Annotated[Path, typer.Option("--runs-root", help="Folder of the training runs")] = Path(
        "runs"
    ),
    pairs_per_category: Annotated[
        int, typer.Option("--pairs-per-category", help="Thumbnails per category")
    ] = 2,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the pairs shown")] = 0,
) -> None:
    """Write one self-contained HTML page: counts, rejections, score histogram, sample pairs, shards, loss curve."""
    from dataengine.tools.run_report import SECTION_TITLES, ReportConfig, write_report

    config = ReportConfig(
        run=run,
        manifests_root=str(manifests_root),
        shards_root=str(shards_root),
        train_run=str(train_run) if train_run else None,
        runs_root=str(runs_root),
        pairs_per_category=pairs_per_category,
        seed=seed,
    )
    path, sections = write_report(config, out)
    for section in sections:
        status = section.missing or "ok"
        typer.echo(f"  {SECTION_TITLES[section.key]:<22} {status}")
    typer.echo(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB): open it in a browser")
