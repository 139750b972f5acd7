"""The ``trainer plan`` command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from trainer.plan.common import PlanConfig
from trainer.plan.recommend import plan_from_recipe
from trainer.plan.report import format_plan

# ---------------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------------


def plan_command(
    recipe: Annotated[Path, typer.Argument(help="Training recipe TOML with a [train] table")],
    overrides: Annotated[
        list[str] | None, typer.Argument(help="section.key=value overrides, e.g. train.data.batch_size=2")
    ] = None,
    gpus: Annotated[int, typer.Option("--gpus", help="GPUs the run is sharded over")] = PlanConfig.num_gpus,
    gpu_memory_gib: Annotated[
        float, typer.Option("--gpu-memory-gib", help="Memory of one GPU in GiB")
    ] = PlanConfig.gpu_memory_gib,
    frames: Annotated[
        int | None,
        typer.Option(
            "--frames",
            help="Frames per clip (4n + 1). Default: the largest bucket of the recipe's shard set if it exists, "
            f"else {PlanConfig.num_frames}",
        ),
    ] = None,
    height: Annotated[
        int | None,
        typer.Option(
            "--height", help=f"Clip height in pixels (default as --frames, else {PlanConfig.height})"
        ),
    ] = None,
    width: Annotated[
        int | None,
        typer.Option("--width", help=f"Clip width in pixels (default as --frames, else {PlanConfig.width})"),
    ] = None,
    condition_tokens: Annotated[
        int, typer.Option("--condition-tokens", help="Qwen3-VL tokens per sample")
    ] = PlanConfig.num_condition_tokens,
    reserved_gib: Annotated[
        float, typer.Option("--reserved-gib", help="Per-GPU memory not available to tensors")
    ] = PlanConfig.reserved_gib,
    mfu: Annotated[
        float, typer.Option("--mfu", help="Model FLOPs utilisation assumed for the step time")
    ] = PlanConfig.mfu,
    peak_tflops: Annotated[
        float, typer.Option("--peak-tflops", help="Dense bf16 peak of one GPU, TFLOP/s")
    ] = PlanConfig.peak_tflops,
    trace: Annotated[
        bool,
        typer.Option(
            "--trace",
            help="Also run one real training step on fake tensors (no GPU, no memory) with a fake process group "
            "of --gpus ranks, and print its memory per phase beside the plan's (about a minute on 2 cores)",
        ),
    ] = False,
) -> None:
    """Parameters, FLOPs, throughput and per-GPU memory of a recipe; whether it fits, what is recommended and
    what to change if it does not fit.

    The clip shape is the largest bucket of the recipe's shard set (train.data.shards) when one is there,
    since the trainer batches one bucket at a time and the longest clips set the peak; --frames, --height or
    --width plan another shape instead.

    Exit code 0 when it fits, 1 when it does not, 2 on a bad recipe or option.
    """
    from dataengine.formats.recipe import load_recipe

    try:
        from_shards = frames is None and height is None and width is None
        plan = PlanConfig(
            gpus,
            gpu_memory_gib,
            PlanConfig.num_frames if frames is None else frames,
            PlanConfig.height if height is None else height,
            PlanConfig.width if width is None else width,
            condition_tokens,
            reserved_gib,
            mfu,
            peak_tflops,
        )
        recipe_data = load_recipe(recipe, overrides)
        result = plan_from_recipe(recipe_data, plan, from_shards=from_shards)
    except (ValueError, FileNotFoundError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(code=2) from err
    typer.echo(format_plan(result))
    if trace:
        from trainer.trace import format_trace, trace_report
        from trainer.train import train_config_from_recipe

        s = result.shape
        report = trace_report(
            train_config_from_recipe(recipe_data),
            (s.latent_frames, s.latent_height, s.latent_width),
            s.num_condition,
            plan.num_gpus,
        )
        typer.echo(format_trace(report, result.memory, plan.num_gpus))
    raise typer.Exit(code=0 if result.fits else 1)
