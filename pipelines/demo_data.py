"""``dataengine demo-data``: every input of the demo recipes, generated here (nothing is downloaded).

Writes under ``--out`` (``demo_data`` by default):
``openve/`` (OpenVE-style CSVs and clips, some rows broken on purpose), ``portraits/people`` and
``portraits/backgrounds`` and the harvest pool ``portraits/pool`` (generated clips with their ground-truth
masks and person boxes), ``openve_bench/`` (an OpenVE-Bench-style folder for ``trainer eval``'s
``[eval.bench]``), and ``models/``: tiny random Qwen3-VL (``qwen3vl``), open_clip (``open_clip``), SAM2
(``sam2``), RT-DETRv2 person detector (``detector``), Wan2.1 VAE (``wan_vae``) and Wan2.1 DiT (``wan``), each saved in its library's own format and loaded back through ``from_pretrained`` by the jobs.
"""

from __future__ import annotations

import time
from pathlib import Path

import typer


def demo_data_command(
    out: Path = typer.Option(Path("demo_data"), "--out", help="Folder to write the demo inputs into."),
) -> None:
    """Generate the demo's inputs: OpenVE-style data, portrait and background clips, tiny random models."""
    from dataengine.synthetic.detector import build_tiny_detector
    from dataengine.synthetic.openve import build_filter_demo
    from dataengine.synthetic.openve_bench import build_bench_demo
    from dataengine.synthetic.portraits import build_tiny_sam2, generate_portraits
    from dataengine.synthetic.wan_dit import build_tiny_wan_dit
    from dataengine.synthetic.wan_vae import build_tiny_wan_vae

    start = time.perf_counter()
    models = out / "models"
    steps = [
        ("OpenVE-style dataset, tiny Qwen3-VL and open_clip", lambda: build_filter_demo(out)),
        ("portrait, background and pool clips", lambda: generate_portraits(out / "portraits")),
        (
            "an OpenVE-Bench-style folder (pairs, references, two methods' edits)",
            lambda: build_bench_demo(out / "openve_bench", out / "openve" / "csv", out / "openve" / "videos"),
        ),
        ("tiny SAM2", lambda: build_tiny_sam2(models / "sam2")),
        ("tiny RT-DETRv2 person detector", lambda: build_tiny_detector(models / "detector")),
        ("tiny Wan2.1 VAE", lambda: build_tiny_wan_vae(models / "wan_vae")),
        ("tiny Wan2.1 DiT", lambda: build_tiny_wan_dit(models / "wan")),
    ]
    for label, step in steps:
        began = time.perf_counter()
        step()
        typer.echo(f"demo-data: {label} ({time.perf_counter() - began:.1f} s)")
    typer.echo(f"demo-data: wrote {out}/ in {time.perf_counter() - start:.1f} s")
