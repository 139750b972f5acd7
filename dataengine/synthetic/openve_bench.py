"""A small OpenVE-Bench-style folder for the demo's ``[eval.bench]``: pairs of the generated OpenVE-style set
laid out as the benchmark's table reads (``id``, ``original_video``, ``prompt``, ``edited_type``), with a
reference image each (the target's first frame: what an image editor would give, so our model can edit the
source), and two methods' folders of ``<id>.mp4``: ``source`` (no edit at all) and ``target`` (the generated
edit). A real run points ``[eval.bench] pairs_dir`` at the benchmark's own folder instead.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd


def build_bench_demo(
    root: str | Path, csv_dir: str | Path, video_root: str | Path, per_category: int = 1
) -> Path:
    """Write the folder under ``root`` from the OpenVE-style set at ``csv_dir`` / ``video_root``: the first
    ``per_category`` pairs of each category whose source and target decode with the same frame count and
    size. Returns ``root``."""
    from PIL import Image

    from dataengine.media.video import VideoError, probe, read_frames
    from dataengine.steps.openve_reader import read_openve

    root = Path(root)
    methods = {name: root / "methods" / name for name in ("source", "target")}
    for folder in (root / "videos", root / "references", *methods.values()):
        folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for category, group in read_openve(csv_dir, video_root).pairs.groupby("category", sort=True):
        kept = 0
        for row in group.itertuples(index=False):
            if kept == per_category:
                break
            try:
                source, target = probe(row.source_path), probe(row.target_path)
            except (VideoError, FileNotFoundError, OSError):
                continue
            if (source.num_frames, source.width, source.height) != (
                target.num_frames,
                target.width,
                target.height,
            ):
                continue
            pair_id = f"{category}_{kept:03d}"
            shutil.copyfile(row.source_path, root / "videos" / f"{pair_id}.mp4")
            shutil.copyfile(row.source_path, methods["source"] / f"{pair_id}.mp4")
            shutil.copyfile(row.target_path, methods["target"] / f"{pair_id}.mp4")
            Image.fromarray(read_frames(row.target_path, [0])[0]).save(root / "references" / f"{pair_id}.png")
            rows.append(
                {
                    "id": pair_id,
                    "original_video": f"videos/{pair_id}.mp4",
                    "prompt": row.instruction,
                    "edited_type": category,
                    "reference_path": f"references/{pair_id}.png",
                }
            )
            kept += 1
    if not rows:
        raise ValueError(f"{csv_dir}: no pair whose clips decode alike: nothing to lay out as a benchmark")
    pd.DataFrame(rows).to_csv(root / "pairs.csv", index=False)
    return root
