"""The ``dataengine`` command: the data-engine jobs (filter, harvest-portraits, synth-portraits, shards) and their tools
(inspect, verify, report, diagnose-layers).

Each job module in ``pipelines/`` defines its typer command function with light module-level imports
(torch, ray and transformers are imported inside the function), and is registered here.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="dataengine",
    help="MiVE data engine: filter OpenVE-3M with a Qwen3-VL judge, synthesise portrait pairs, write WebDataset shards.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

# Job registrations (one line each, kept in pipeline order).
from pipelines.demo_data import demo_data_command  # noqa: E402
from pipelines.diagnose import diagnose_layers_command  # noqa: E402
from pipelines.filter import filter_command  # noqa: E402
from pipelines.harvest import harvest_portraits_command  # noqa: E402
from pipelines.portraits import synth_portraits_command  # noqa: E402
from pipelines.report import report_command  # noqa: E402
from pipelines.shards import inspect_command, shards_command, verify_command  # noqa: E402

app.command("demo-data")(demo_data_command)
app.command("filter")(filter_command)
app.command("harvest-portraits")(harvest_portraits_command)
app.command("synth-portraits")(synth_portraits_command)
app.command("shards")(shards_command)
app.command("inspect")(inspect_command)
app.command("verify")(verify_command)
app.command("report")(report_command)
app.command("diagnose-layers")(diagnose_layers_command)


def entry_point() -> None:
    """The ``dataengine`` console script: the app, with user errors printed in one line (exit code 2)."""
    import os

    from dataengine.recipe import run_cli
    from pipelines.runtime import quiet_native_stderr

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # per-model loading bars (also in the workers)
    quiet_native_stderr()
    run_cli(app)


if __name__ == "__main__":
    entry_point()
