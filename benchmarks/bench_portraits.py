"""Portrait pairs: compositing + H.264 encoding frames/s on one core, segmentation and person-detection frames/s.

    python -m benchmarks.bench_portraits          # 720P compositing, 33 frames; tiny SAM2 on the CPU
    python -m benchmarks.bench_portraits --quick  # 17 frames

Compositing is measured the way a composite task runs it: feathered alpha, the blend, then both clips of
a pair encoded (source and target), on one thread. Segmentation uses the tiny random SAM2 (the real
checkpoint cannot be downloaded here), at the demo's 96x160 and at 720P input (the processor resizes to
the model's input size, so the frame size mostly costs preprocessing and mask upsampling). Detection uses
the tiny random RT-DETRv2 the same way (the processor resizes every frame to the model's input).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path


def _composite_rows(num_frames: int, height: int, width: int, radius: int) -> list[dict]:
    from dataengine.media.composite import compose_pair, feather_alpha
    from dataengine.media.video import write_mp4
    from dataengine.synthetic.portraits import render_background, render_portrait

    portrait, masks = render_portrait(seed=0, num_frames=num_frames, height=height, width=width)
    background = render_background(seed=1, num_frames=num_frames, height=height, width=width)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        alpha = feather_alpha(masks, radius)
        t_alpha = time.perf_counter() - start
        start = time.perf_counter()
        source, target = compose_pair("removal", portrait, alpha, background)
        t_blend = time.perf_counter() - start
        start = time.perf_counter()
        write_mp4(Path(folder) / "source.mp4", source, 16.0)
        write_mp4(Path(folder) / "target.mp4", target, 16.0)
        t_encode = time.perf_counter() - start
    total = t_alpha + t_blend + t_encode
    note = f"{num_frames} frames {width}x{height}, feather r={radius}, 1 torch thread; x264 threads: auto"
    name = f"portraits composite {height}p"
    for metric, seconds in (
        ("alpha", t_alpha),
        ("blend", t_blend),
        ("encode 2 clips", t_encode),
        ("total", total),
    ):
        rows.append(
            {
                "benchmark": name,
                "metric": f"{metric} frames/s",
                "value": round(num_frames / seconds, 1),
                "unit": "frames/s",
                "note": note,
            }
        )
    rows.append(
        {
            "benchmark": name,
            "metric": "pairs/hour/core",
            "value": round(3600 / (total * 81 / num_frames), 1),
            "unit": "pairs/h",
            "note": "81-frame pairs, extrapolated linearly in frames",
        }
    )
    return rows


def _segment_rows(num_frames: int) -> list[dict]:
    from dataengine.models.segment import Sam2VideoSegmenter, SegmenterConfig
    from dataengine.synthetic.portraits import build_tiny_sam2, render_portrait

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        model = build_tiny_sam2(Path(folder) / "sam2")
        segmenter = Sam2VideoSegmenter(SegmenterConfig(model=str(model), device="cpu"))
        for height, width in ((96, 160), (720, 1280)):
            frames, _ = render_portrait(seed=0, num_frames=num_frames, height=height, width=width)
            segmenter.segment(frames[:2])  # warm-up
            start = time.perf_counter()
            segmenter.segment(frames)
            seconds = time.perf_counter() - start
            rows.append(
                {
                    "benchmark": "portraits segment (tiny random SAM2, CPU)",
                    "metric": f"{height}p frames/s",
                    "value": round(num_frames / seconds, 1),
                    "unit": "frames/s",
                    "note": f"{num_frames} frames, model input 128x128, box prompt, propagate",
                }
            )
    return rows


def _detect_rows(num_frames: int) -> list[dict]:
    from dataengine.models.detect import DetectorConfig, TransformersPersonDetector
    from dataengine.synthetic.detector import build_tiny_detector
    from dataengine.synthetic.portraits import render_portrait

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        model = build_tiny_detector(Path(folder) / "detector")
        detector = TransformersPersonDetector(DetectorConfig(model=str(model), device="cpu", batch_size=8))
        for height, width in ((96, 160), (720, 1280)):
            frames, _ = render_portrait(seed=0, num_frames=num_frames, height=height, width=width)
            detector.detect(frames[:2])  # warm-up
            start = time.perf_counter()
            detector.detect(frames)
            seconds = time.perf_counter() - start
            rows.append(
                {
                    "benchmark": "portraits detect (tiny random RT-DETRv2, CPU)",
                    "metric": f"{height}p frames/s",
                    "value": round(num_frames / seconds, 1),
                    "unit": "frames/s",
                    "note": f"{num_frames} frames in batches of 8, model input 64x64, preprocessing + post-processing",
                }
            )
    return rows


def run(quick: bool = False) -> list[dict]:
    import torch

    torch.set_num_threads(1)
    num_frames = 17 if quick else 33
    rows = _composite_rows(num_frames, 720, 1280, radius=4)
    rows += _segment_rows(num_frames)
    rows += _detect_rows(num_frames)
    return rows


def main() -> None:
    rows = run(quick="--quick" in sys.argv)
    widths = [max(len(str(r.get(k, ""))) for r in rows) for k in ("benchmark", "metric", "value", "unit")]
    for row in rows:
        cells = [
            str(row.get(k, "")).ljust(w)
            for k, w in zip(("benchmark", "metric", "value", "unit"), widths, strict=True)
        ]
        print("  ".join(cells), " ", row.get("note", ""))


if __name__ == "__main__":
    main()
