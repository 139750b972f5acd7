"""The ``trainer`` command: train the MiVE DiT (``fit``), ``sample``, ``sample-trace``, ``plan``, ``export``
and ``eval``.

Each command is a small function here with light imports (torch and the model load inside it), so
``trainer --help`` is instant. Register a new command with ``app.command("name")(function)``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

LAUNCH_HELP = """
Run it on:

\b
  a CPU, one process (the debug recipe, minutes):
    trainer fit manifests/train_debug.toml
  one node, 8 GPUs (FSDP2 over the node; the recipe's sequence parallelism 2: 4 replicas x 2):
    torchrun --nproc-per-node 8 -m trainer.cli fit manifests/train_mive_14b.toml
  other sequence-parallel degrees (dividing the GPUs and the heads; keep the global batch):
    ... fit RECIPE train.parallel.sequence_parallel=4 train.grad_accum=4
  N nodes x 8 GPUs (the same command on every node; checkpoints on a shared filesystem):
    torchrun --nnodes N --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HEAD_HOST:29500 \\
        -m trainer.cli fit manifests/train_mive_14b.toml
  continue the latest complete checkpoint of a run:
    ... fit RECIPE --resume

\b
Overrides use the recipe's dotted keys, e.g.:
    trainer fit manifests/train_debug.toml train.steps=50 train.data.batch_size=2 train.name=try2
"""

app = typer.Typer(
    name="trainer",
    help="MiVE trainer: flow matching on precomputed shards, Wan2.1-initialised DiT, FSDP2 + DCP checkpoints.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    rich_markup_mode=None,
    epilog=LAUNCH_HELP,
)


@app.callback()
def main() -> None:
    """MiVE trainer: flow matching on precomputed shards, Wan2.1-initialised DiT, FSDP2 + DCP checkpoints.

    Commands take a recipe TOML (manifests/train_*.toml) plus key=value overrides.
    """


@app.command("fit", epilog=LAUNCH_HELP)
def fit_command(
    recipe: Annotated[
        Path, typer.Argument(help="Recipe TOML with a [train] table, e.g. manifests/train_debug.toml")
    ],
    overrides: Annotated[
        list[str] | None, typer.Argument(help="section.key=value overrides, e.g. train.steps=50")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the latest complete checkpoint in runs/<train.name>/")
    ] = False,
) -> None:
    """Train the MiVE DiT from shards: one log line per step, metrics.jsonl and checkpoints in runs/<name>/."""
    from dataengine.formats.recipe import RecipeError, load_recipe
    from trainer.train import configure_logging, fit, train_config_from_recipe

    configure_logging()
    try:
        recipe_data = load_recipe(recipe, overrides)
        config = train_config_from_recipe(recipe_data)
    except RecipeError as err:
        err.recipe_path = err.recipe_path or str(recipe)
        raise
    run_dir = fit(config, resume=resume, recipe=recipe_data)
    if os.environ.get("RANK", "0") == "0":
        typer.echo(f"done: {run_dir}")


from trainer.eval import eval_command  # noqa: E402
from trainer.plan import plan_command  # noqa: E402
from trainer.sample import export_command, sample_command  # noqa: E402
from trainer.sample_trace import sample_trace_command  # noqa: E402

app.command("plan")(plan_command)
app.command("sample")(sample_command)
app.command("export")(export_command)
app.command("eval")(eval_command)
app.command("sample-trace")(sample_trace_command)


def entry_point() -> None:
    """The ``trainer`` console script: the app, with user errors printed in one line (exit code 2)."""
    from dataengine.formats.recipe import run_cli

    run_cli(app)


if __name__ == "__main__":
    entry_point()
