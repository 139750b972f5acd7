"""Benchmarks of `dataengine filter` (a printed table; not timed tests).

1. selection over 2.45M synthetic score rows (OpenVE-3M's size): seconds and rows/s, summary included;
2. the judge: pairs/s of our single-pass scoring (prefill + one tiny continuation) against a
   ``generate()``-then-parse baseline on the same tiny Qwen3-VL and the same inputs, as a ratio;
3. Ray overhead: pairs/s of probe + judge through the Ray pipeline against the same blocks in-process.

On a CPU with the tiny random model these numbers measure overheads, not the 8B model's cost::

    .venv/bin/python -m benchmarks.bench_filter            # full
    .venv/bin/python -m benchmarks.bench_filter --quick    # smaller sizes
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from dataengine.synthetic.openve import CATEGORIES

OPENVE_ROWS = 2_450_000


def bench_selection(num_rows: int) -> list[dict]:
    from dataengine.selection import SelectionConfig, select, summarize

    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "pair_id": np.char.mod("%020x", rng.integers(0, 2**62, size=num_rows)).astype(object),
            "category": rng.choice(CATEGORIES, size=num_rows),
            "score": np.clip(rng.normal(8.3, 0.9, size=num_rows), 0, 10).round(3),  # ~13% above 9.3, ties
        }
    )
    config = SelectionConfig(threshold=9.3, max_per_category=4000)
    start = time.perf_counter()
    result = select(frame, config)
    selected = time.perf_counter() - start
    summarize(frame.groupby("category").size().to_dict(), frame, result.kept, result.rejections, config)
    total = time.perf_counter() - start
    note = f"{num_rows:,} rows, {len(result.kept)} kept"
    return [
        {"benchmark": "selection", "metric": "select seconds", "value": selected, "unit": "s", "note": note},
        {"benchmark": "selection", "metric": "select rows/s", "value": num_rows / selected, "unit": "rows/s"},
        {"benchmark": "selection", "metric": "select + summary seconds", "value": total, "unit": "s"},
    ]


ANSWER = "instruction_compliance: 9\npreservation: 10\nquality: 8"
ANSWER_PATTERN = re.compile(r"(instruction_compliance|preservation|quality)\s*:\s*(\d+)")


def _generate_scores(judge, inputs: dict, max_new_tokens: int) -> list[float]:
    """The baseline: sample the answer text greedily, then parse the three integers out of it."""
    import torch

    inputs = {k: v.to(judge.device) for k, v in inputs.items()}
    with torch.inference_mode():
        out = judge.model.generate(
            **inputs, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, do_sample=False
        )
    texts = judge.processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    scores = []
    for text in texts:
        found = {axis: int(value) for axis, value in ANSWER_PATTERN.findall(text)}
        scores.append(float(np.mean(list(found.values()))) if len(found) == 3 else float("nan"))
    return scores


def bench_judge(work: Path, num_pairs: int, batch_size: int) -> list[dict]:
    from dataengine.judge import Judge, JudgeConfig
    from dataengine.openve import read_openve
    from dataengine.synthetic.openve import SyntheticOpenVEConfig, generate_openve
    from dataengine.synthetic.qwen3vl import build_tiny_qwen3vl

    model = build_tiny_qwen3vl(work / "qwen3vl")
    per_category = -(-num_pairs // len(CATEGORIES))
    data = generate_openve(work / "judge_data", SyntheticOpenVEConfig(pairs_per_category=per_category))
    pairs = read_openve(data.csv_dir, data.video_root).pairs.head(num_pairs)
    judge = Judge(JudgeConfig(model=str(model), fps=4.0, max_frames=4, batch_size=batch_size))
    batches = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs.iloc[start : start + batch_size]
        texts = [judge.prompt_text(t) for t in chunk["instruction"]]
        clips = [
            judge.load_clip(p)
            for s, t in zip(chunk["source_path"], chunk["target_path"], strict=True)
            for p in (s, t)
        ]
        batches.append(judge.processor_inputs(texts, clips))
    answer_tokens = (
        len(judge.processor.tokenizer.encode(ANSWER, add_special_tokens=False)) + 1
    )  # + <|im_end|>

    judge.score_inputs(batches[0])  # warm-up
    start = time.perf_counter()
    for inputs in batches:
        judge.score_inputs(inputs)
    single = len(pairs) / (time.perf_counter() - start)

    _generate_scores(judge, batches[0], answer_tokens)
    start = time.perf_counter()
    for inputs in batches:
        _generate_scores(judge, inputs, answer_tokens)
    generated = len(pairs) / (time.perf_counter() - start)
    note = (
        f"{len(pairs)} pairs, batch {batch_size}, tiny random Qwen3-VL on {judge.device}, inputs preprocessed"
    )
    return [
        {
            "benchmark": "judge",
            "metric": "single-pass pairs/s",
            "value": single,
            "unit": "pairs/s",
            "note": note,
        },
        {
            "benchmark": "judge",
            "metric": "generate+parse pairs/s",
            "value": generated,
            "unit": "pairs/s",
            "note": f"{answer_tokens} new tokens (a full three-line answer), greedy",
        },
        {
            "benchmark": "judge",
            "metric": "single-pass / generate speed-up",
            "value": single / generated,
            "unit": "x",
        },
    ]


def bench_ray_overhead(work: Path, num_pairs: int, batch_size: int) -> list[dict]:
    """End-to-end pairs/s (model load and actor start included) and the marginal pairs/s between a run of
    ``num_pairs // 3`` and one of ``num_pairs`` pairs (the steady state, fixed costs cancelled)."""
    import ray

    from dataengine.judge import Judge, JudgeConfig
    from dataengine.openve import probe_pairs, read_openve
    from dataengine.synthetic.openve import SyntheticOpenVEConfig, generate_openve
    from pipelines.filter import FilterConfig, score_pending
    from pipelines.runtime import PartStore, Progress, init_ray

    model = work / "qwen3vl"
    per_category = -(-num_pairs // len(CATEGORIES))
    data = generate_openve(work / "ray_data", SyntheticOpenVEConfig(pairs_per_category=per_category))
    pairs = read_openve(data.csv_dir, data.video_root).pairs.head(num_pairs)
    judge_config = JudgeConfig(model=str(model), fps=4.0, max_frames=4, batch_size=batch_size)
    sizes = (max(1, num_pairs // 3), num_pairs)

    # in-process: the same blocks, one after the other
    start = time.perf_counter()
    judge = Judge(judge_config)
    load = time.perf_counter() - start
    in_process = {}
    for size in (small_warmup := sizes[0], *sizes):  # the first run warms caches and is discarded
        start = time.perf_counter()
        probed = probe_pairs(pairs.head(size), min_frames=9)
        judge.score_pairs(probed[probed["reason"].isna()])
        in_process[size] = time.perf_counter() - start
    del judge

    config = FilterConfig(
        csv_dir=str(data.csv_dir),
        video_root=str(data.video_root),
        min_frames=9,
        probe_batch_size=batch_size,
        num_judges=1,
        gpus_per_judge=0.0,
        judge=judge_config,
    )
    init_ray(None)
    through_ray = {}
    for k, size in enumerate((small_warmup, *sizes)):  # the first run warms caches and is discarded
        store = PartStore(work / f"ray_scores_{k}")
        start = time.perf_counter()
        with Progress(size, unit="pairs", description="ray", log_every_s=1e9) as bar:
            score_pending(config, pairs.head(size), store, bar)
        through_ray[size] = time.perf_counter() - start
    ray.shutdown()

    small, full = sizes
    e2e_local = full / (load + in_process[full])
    e2e_ray = full / through_ray[full]
    # a marginal rate needs the bigger run to take longer; on a noisy machine it may not: NaN then
    gap_local, gap_ray = in_process[full] - in_process[small], through_ray[full] - through_ray[small]
    marginal_local = (full - small) / gap_local if gap_local > 0 else float("nan")
    marginal_ray = (full - small) / gap_ray if gap_ray > 0 else float("nan")
    note = f"{full} pairs, 1 CPU judge actor, batch {batch_size}; model load and actor start included"
    marginal_note = f"marginal rate between {small} and {full} pairs: fixed costs cancel"
    return [
        {
            "benchmark": "ray overhead",
            "metric": "in-process pairs/s",
            "value": e2e_local,
            "unit": "pairs/s",
            "note": note,
        },
        {"benchmark": "ray overhead", "metric": "Ray pipeline pairs/s", "value": e2e_ray, "unit": "pairs/s"},
        {
            "benchmark": "ray overhead",
            "metric": "Ray / in-process",
            "value": e2e_ray / e2e_local,
            "unit": "x",
        },
        {
            "benchmark": "ray overhead",
            "metric": "Ray fixed cost (start, actor, model load)",
            "value": through_ray[full] - full / marginal_ray,
            "unit": "s",
        },
        {
            "benchmark": "ray overhead",
            "metric": "steady in-process pairs/s",
            "value": marginal_local,
            "unit": "pairs/s",
            "note": marginal_note,
        },
        {
            "benchmark": "ray overhead",
            "metric": "steady Ray pairs/s",
            "value": marginal_ray,
            "unit": "pairs/s",
        },
        {
            "benchmark": "ray overhead",
            "metric": "steady Ray / in-process",
            "value": marginal_ray / marginal_local,
            "unit": "x",
        },
    ]


def run(quick: bool = False) -> list[dict]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    rows = bench_selection(OPENVE_ROWS // 10 if quick else OPENVE_ROWS)
    with tempfile.TemporaryDirectory(prefix="bench_filter_") as tmp:
        work = Path(tmp)
        rows += bench_judge(work, num_pairs=8 if quick else 24, batch_size=4)
        rows += bench_ray_overhead(work, num_pairs=12 if quick else 36, batch_size=4)
    return rows


def _print_table(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="dataengine filter benchmarks")
    for name in ("benchmark", "metric", "value", "unit", "note"):
        table.add_column(name, justify="right" if name == "value" else "left")
    for row in rows:
        value = row["value"]
        if value != value:  # NaN
            table.add_row(row["benchmark"], row["metric"], "n/a", row["unit"], row.get("note", ""))
            continue
        table.add_row(
            row["benchmark"],
            row["metric"],
            f"{value:,.3f}" if value < 100 else f"{value:,.0f}",
            row["unit"],
            row.get("note", ""),
        )
    Console(width=200).print(table)


if __name__ == "__main__":
    _print_table(run(quick="--quick" in sys.argv))
