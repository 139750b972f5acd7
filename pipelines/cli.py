"""The ``dataengine`` command: the data-engine jobs (filter, harvest-portraits, synth-portraits, shards) and their tools
(inspect, verify, report, diagnose-layers).

Each job module in ``pipelines/`` defines its typer command function with light module-level imports
(torch, ray and transformers are imported inside the function), and is registered here.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import click
import typer
from typer.core import TyperGroup

# The jobs and tools in pipeline order: command name -> (module, function). A command's module is imported
# only when that command runs or prints its own --help, so ``dataengine --help`` answers without importing
# pandas, torch or ray: its listing reads each function's docstring from the module's source.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo-data": ("pipelines.demo_data", "demo_data_command"),
    "filter": ("pipelines.filter", "filter_command"),
    "harvest-portraits": ("pipelines.harvest", "harvest_portraits_command"),
    "synth-portraits": ("pipelines.portraits", "synth_portraits_command"),
    "shards": ("pipelines.shards", "shards_command"),
    "inspect": ("pipelines.shards", "inspect_command"),
    "verify": ("pipelines.shards", "verify_command"),
    "report": ("pipelines.report", "report_command"),
    "diagnose-layers": ("pipelines.diagnose", "diagnose_layers_command"),
    "reproduce": ("pipelines.reproduce", "reproduce_command"),
}


def command_help(name: str) -> str:
    """A command's docstring, read from its module's source without importing the module."""
    module, function = COMMANDS[name]
    path = Path(__file__).resolve().parent / (module.rsplit(".", 1)[1] + ".py")
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.FunctionDef) and node.name == function:
            return ast.get_docstring(node) or ""
    raise AssertionError(f"{path} has no function {function} (pipelines/cli.py COMMANDS names it)")


def load_command(name: str) -> click.Command:
    """The click command of one job, built from its typer function (imports the job's module)."""
    module, function = COMMANDS[name]
    single = typer.Typer(pretty_exceptions_show_locals=False, add_completion=False)
    single.command(name)(getattr(importlib.import_module(module), function))
    command = typer.main.get_command(single)
    command.name = name
    return command


class LazyGroup(TyperGroup):
    """Lists the commands from ``COMMANDS`` without importing them; loads a command when it is resolved."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        if ctx.resilient_parsing:  # shell completion: the real parameters
            return load_command(cmd_name)
        # the listing in ``dataengine --help`` needs the name and the help text only
        return click.Command(cmd_name, help=command_help(cmd_name))

    def resolve_command(self, ctx: click.Context, args: list[str]):
        cmd_name, _, rest = super().resolve_command(ctx, args)
        return cmd_name, load_command(cmd_name), rest


app = typer.Typer(
    name="dataengine",
    help="MiVE data engine: filter OpenVE-3M with a Qwen3-VL judge, synthesise portrait pairs, write WebDataset shards.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    cls=LazyGroup,
)


@app.callback()
def main() -> None:
    """MiVE data engine: filter OpenVE-3M with a Qwen3-VL judge, synthesise portrait pairs, write WebDataset shards."""


def entry_point() -> None:
    """The ``dataengine`` console script: the app, with user errors printed in one line (exit code 2)."""
    import os

    from dataengine.formats.recipe import run_cli
    from pipelines.runtime import quiet_native_stderr

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # per-model loading bars (also in the workers)
    quiet_native_stderr()
    run_cli(app)


if __name__ == "__main__":
    entry_point()
