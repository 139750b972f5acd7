"""``dataengine diagnose-layers``: which VLM layers to feed the DiT, measured (``R_mask`` per layer; see
:mod:`dataengine.tools.layer_diagnosis` and ``docs/diagnostics.md``).

    dataengine diagnose-layers manifests/demo.toml                     # the tiny random Qwen3-VL, CPU
    dataengine diagnose-layers manifests/openve.toml diagnose.clips=eval/portraits.csv \\
        diagnose.vlm.model_id=Qwen/Qwen3-VL-8B-Instruct diagnose.segmenter.backend=transformers

Writes ``manifests/<run>/diagnose/``: ``layers.parquet``, ``layers.json`` (with the layer pair it would pick),
``clips.parquet``, ``rejections.parquet`` and ``r_mask.svg``. One process, no Ray: a few dozen clips, one
forward each.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dataengine.formats.recipe import UserError


def diagnose_layers_command(
    recipe: Annotated[
        Path, typer.Argument(help="Recipe TOML with a [diagnose] table, e.g. manifests/demo.toml")
    ],
    overrides: Annotated[
        list[str] | None, typer.Argument(help="section.key=value overrides, e.g. diagnose.scale=none")
    ] = None,
) -> None:
    """Measure R_mask, the share of the instruction's attention on the person, at every VLM layer."""
    from dataengine.formats.layout import RunLayout
    from dataengine.formats.recipe import load_step_config
    from dataengine.tools.layer_diagnosis import DiagnoseConfig, run_diagnosis

    config, run = load_step_config(DiagnoseConfig, recipe, "diagnose", overrides)
    if not config.clips:
        raise UserError(f"recipe {recipe}: set diagnose.clips (a CSV or Parquet of source_path, instruction)")
    out = RunLayout(run).diagnosis
    summary = run_diagnosis(config, out, progress=True)
    for layer in summary.get("layers", []):
        typer.echo(
            f"  hidden state {layer['hidden_state']:>3} {layer['layer']:<26} R_mask {layer['r_mask']:.4f} "
            f"(any-overlap {layer['r_mask_any']:.4f}, uniform {layer['uniform']:.4f})"
        )
    pick = summary.get("pick")
    if pick:
        typer.echo(
            f"pick: hidden states {pick['hidden_states']} (highest R_mask at {pick['highest']['hidden_state']}, "
            f"lowest at {pick['lowest']['hidden_state']}; monotone: {pick['monotone']}, "
            f"first and last: {pick['is_first_and_last']})"
        )
    typer.echo(
        f"diagnose-layers: {summary['num_clips']} clips measured, {summary['num_rejected']} rejected; "
        f"wrote {out.folder}/"
    )
    if not summary["num_clips"]:  # a diagnosis of nothing is a failed job, whatever the reasons
        typer.echo(
            f"error: diagnose-layers measured no clip of {config.clips}: every clip was rejected, see "
            f"{out.rejections}",
            err=True,
        )
        raise typer.Exit(1)
