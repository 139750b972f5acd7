"""The OpenVE-Bench-style protocol of ``trainer eval``: the cap rule and the means against cases worked by hand,
the 1-5 score over the answer distribution against a float64 computation, reading the benchmark's folder, and
several methods scored in one run with the tiny random Qwen3-VL: a method's scores do not depend on which
other methods are present, in the expected-value and in the sampling mode."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from dataengine.formats.layout import EvalLayout, RunLayout
from dataengine.models.judge import EVAL_RUBRIC, Judge, JudgeConfig, expected_scores, sampled_scores
from dataengine.steps.openve_reader import read_openve
from dataengine.synthetic.openve import SyntheticOpenVEConfig, generate_openve
from dataengine.tools.run_report import ReportConfig, RunFiles, evaluation_section
from trainer.eval import EvalConfig, eval_config_from_recipe, run_bench, run_eval
from trainer.openve_bench import (
    AXES,
    OVERALL,
    REFERENCE_ROWS,
    BenchConfig,
    apply_cap,
    bench_means,
    read_bench_set,
)

IC, CD, VQ = AXES


def test_cap_rule_and_means_worked_by_hand():
    scores = pd.DataFrame(
        [
            # method, pair, category, IC, CD, VQ
            ("m", "p1", "add", 2.0, 4.0, 3.0),  # capped to (2, 2, 2): mean 2
            ("m", "p2", "add", 5.0, 3.0, 4.0),  # nothing capped: mean 4
            ("m", "p3", "style", 1.0, 5.0, 5.0),  # capped to (1, 1, 1): mean 1
            ("m", "p4", "style", 3.5, 4.25, 1.0),  # CD capped to 3.5: (3.5 + 3.5 + 1) / 3 = 8 / 3
            ("m", "p5", "style", None, None, None),  # a rejection: not counted
            ("n", "p1", "add", 4.0, 4.0, 4.0),  # at the cap: kept, mean 4
        ],
        columns=["method", "pair_id", "category", IC, CD, VQ],
    )
    capped = apply_cap(scores)
    assert capped[CD].tolist()[:4] == [2.0, 3.0, 1.0, 3.5]
    assert capped[VQ].tolist()[:4] == [2.0, 4.0, 1.0, 1.0]
    assert capped[f"{CD}_raw"].tolist()[:4] == [4.0, 3.0, 5.0, 4.25]  # the judge's values are kept
    assert capped["score"].tolist()[:4] == pytest.approx([2.0, 4.0, 1.0, 8 / 3])
    assert math.isnan(capped.loc[4, "score"])

    table = bench_means(capped, ["style", "add"], ["m", "n"])
    got = {(r.method, r.category): (r.score, r.num_clips) for r in table.itertuples(index=False)}
    # by hand: add (2 + 4) / 2 = 3; style (1 + 8/3) / 2 = 11/6; overall over the 4 scored samples
    # (2 + 4 + 1 + 8/3) / 4 = 29/12, not the mean of the two category means (29/12 = 2.4167 vs 2.4583)
    assert got[("m", "add")] == (pytest.approx(3.0), 2)
    assert got[("m", "style")] == (pytest.approx(11 / 6), 2)
    assert got[("m", OVERALL)] == (pytest.approx(29 / 12), 4)
    assert got[("n", "add")] == (pytest.approx(4.0), 1) and ("n", "style") not in got
    assert table["method"].tolist() == ["m", "m", "m", "n", "n"]  # methods, then categories, in order
    assert table["category"].tolist()[:3] == ["style", "add", OVERALL]
    ic = table.set_index(["method", "category"]).loc[("m", OVERALL), IC]
    assert ic == pytest.approx((2 + 5 + 1 + 3.5) / 4)


def test_scores_on_the_one_to_five_scale_match_a_float64_computation():
    generator = torch.Generator().manual_seed(0)
    vocab, digits = 40, list(range(20, 30))  # the token of digit d is 20 + d
    first, after_one = torch.randn(6, vocab, generator=generator), torch.randn(6, vocab, generator=generator)
    expected, mass = expected_scores(first, after_one, digits, scale=(1, 5))

    p = torch.softmax(first.double(), -1)[:, digits].numpy()
    q = torch.softmax(after_one.double(), -1)[:, digits].numpy()
    probs = np.stack(
        [p[:, 1] * (1 - q.sum(1)), p[:, 2], p[:, 3], p[:, 4], p[:, 5]], axis=1
    )  # "1" alone, 2..5
    np.testing.assert_allclose(mass.numpy(), probs.sum(1), rtol=1e-5)
    np.testing.assert_allclose(expected.numpy(), (probs * np.arange(1, 6)).sum(1) / probs.sum(1), rtol=1e-5)

    # sampling: the inverse CDF of the tempered distribution; u just below a CDF step picks that score
    temperature = 0.7
    pt = torch.softmax(first.double() / temperature, -1)[:, digits].numpy()
    qt = torch.softmax(after_one.double() / temperature, -1)[:, digits].numpy()
    tempered = np.stack([pt[:, 1] * (1 - qt.sum(1)), pt[:, 2], pt[:, 3], pt[:, 4], pt[:, 5]], axis=1)
    cdf = np.cumsum(tempered / tempered.sum(1, keepdims=True), axis=1)
    for k in range(5):
        u = np.clip(cdf[:, k] - 1e-4, 0, None)
        draws, _ = sampled_scores(first, after_one, digits, u.tolist(), temperature, scale=(1, 5))
        hand = 1 + (cdf < u[:, None]).sum(1)  # the first score whose CDF reaches u
        np.testing.assert_array_equal(draws.numpy(), hand.astype(np.float32))


def test_read_bench_set_takes_openve_names_and_names_bad_rows(tmp_path):
    folder = tmp_path / "bench"
    (folder / "videos").mkdir(parents=True)
    pd.DataFrame(
        {
            "id": ["a1", "a2", "b1"],
            "original_video": ["videos/a1.mp4", "/abs/a2.mp4", "videos/b1.mp4"],
            "prompt": ["add a hat", "add a dog", "make it a watercolour"],
            "edited_type": ["local_add", "local_add", "global_style"],
        }
    ).to_csv(folder / "bench.csv", index=False)
    pairs = read_bench_set(folder)
    assert pairs["pair_id"].tolist() == ["a1", "a2", "b1"]
    assert pairs["source_path"].tolist() == [
        str(folder / "videos/a1.mp4"),
        "/abs/a2.mp4",
        str(folder / "videos/b1.mp4"),
    ]
    assert pairs["category"].tolist() == ["local_add", "local_add", "global_style"]
    assert pairs["reference_path"].isna().all()
    assert read_bench_set(folder, max_per_category=1)["pair_id"].tolist() == ["a1", "b1"]

    (folder / "bench.csv").write_text("id,original_video,prompt,edited_type\na1,videos/a1.mp4,,local_add\n")
    with pytest.raises(ValueError, match=r"bench.csv: empty prompt \(row 2\)"):
        read_bench_set(folder)
    (folder / "other.jsonl").write_text("{}\n")
    with pytest.raises(ValueError, match="eval.bench.metadata"):
        read_bench_set(folder)
    (folder / "bench.csv").unlink()
    (folder / "other.jsonl").write_text(
        json.dumps({"id": "x", "original_video": "v.mp4", "prompt": "p"}) + "\n"
    )
    with pytest.raises(ValueError, match="no column for category"):
        read_bench_set(folder)


@pytest.fixture(scope="module")
def bench_folder(tmp_path_factory):
    """A benchmark folder of 4 pairs in 2 categories (OpenVE's column names) and three methods' folders: A
    edits all 4 (the generated targets), B 3 of them (the sources: no edit), C 2 (targets of other pairs)."""
    root = tmp_path_factory.mktemp("openve_bench")
    data = generate_openve(root / "data", SyntheticOpenVEConfig(pairs_per_category=2))
    pairs = read_openve(data.csv_dir, data.video_root).pairs
    pairs = pairs.groupby("category", sort=True).head(2).head(4).reset_index(drop=True)
    folder = root / "bench"
    folder.mkdir()
    pd.DataFrame(
        {
            "id": pairs["pair_id"],
            "original_video": pairs["source_path"],
            "prompt": pairs["instruction"],
            "edited_type": pairs["category"],
        }
    ).to_csv(folder / "pairs.csv", index=False)
    methods = {}
    for name, count, column in (("A", 4, "target_path"), ("B", 3, "source_path"), ("C", 2, "target_path")):
        out = root / "methods" / name
        out.mkdir(parents=True)
        for i, row in enumerate(pairs.head(count).itertuples(index=False)):
            video = getattr(row, column) if name != "C" else pairs.loc[(i + 1) % len(pairs), column]
            (out / f"{row.pair_id}.mp4").symlink_to(video)
        methods[name] = str(out)
    return folder, methods, pairs


@pytest.fixture(scope="module")
def bench_judge_model(tiny_qwen3vl) -> Judge:
    config = JudgeConfig(
        model=str(tiny_qwen3vl), rubric_version=EVAL_RUBRIC, fps=4.0, max_frames=4, max_pixels_per_frame=4096,
        batch_size=2, dtype="float32", device="cpu",
    )  # fmt: skip
    return Judge(config)


def _run(tmp_path, name, bench_folder, judge, methods, **bench):
    folder, all_methods, _ = bench_folder
    config = EvalConfig(
        output_dir=str(tmp_path / name),
        judge=judge.config,
        bench=BenchConfig(pairs_dir=str(folder), methods={m: all_methods[m] for m in methods}, **bench),
    )
    summary = run_eval(config, judge=judge)["bench"]
    layout = EvalLayout(tmp_path / name)
    return summary, pd.read_parquet(layout.bench_scores), layout


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_methods_scores_do_not_depend_on_the_others(tmp_path, bench_folder, bench_judge_model, temperature):
    alone, alone_scores, _ = _run(
        tmp_path, "alone", bench_folder, bench_judge_model, ["A"], temperature=temperature
    )
    together, scores, layout = _run(
        tmp_path, "together", bench_folder, bench_judge_model, ["C", "A", "B"], temperature=temperature
    )
    columns = ["pair_id", "category", "score", *AXES, *(f"{a}_raw" for a in AXES)]
    mine = scores[scores["method"] == "A"][columns].reset_index(drop=True)
    pd.testing.assert_frame_equal(mine, alone_scores[columns].reset_index(drop=True), check_exact=True)
    assert scores.groupby("method").size().to_dict() == {"A": 4, "B": 3, "C": 2}
    assert scores["reason"].isna().all()

    raw = scores[[f"{a}_raw" for a in AXES]].to_numpy()
    assert ((raw >= 1) & (raw <= 5)).all()
    if temperature > 0:  # sampled answers are integers
        np.testing.assert_array_equal(raw, np.round(raw))
    capped = scores[list(AXES)].to_numpy()
    assert (capped[:, 1:] <= capped[:, :1] + 1e-12).all()  # the cap rule holds on what is written
    np.testing.assert_allclose(scores["score"], capped.mean(axis=1))

    # the table: A's overall is the mean of its samples, the same in both runs; the reference rows are there
    overall = {r["method"]: r["score"] for r in together["table"] if r["category"] == OVERALL}
    assert overall["A"] == pytest.approx(alone_scores["score"].mean(), abs=1e-12)
    assert overall["A"] == pytest.approx(next(r["score"] for r in alone["table"] if r["category"] == OVERALL))
    text = layout.bench_table_markdown.read_text()
    for ref in REFERENCE_ROWS:
        assert f"| {ref['method']} | Gemini-2.5-Pro |" in text and f"{ref['overall']:.2f}" in text
    assert "do not compare directly" in text
    assert together["mode"] == ("expected value" if temperature == 0 else "sampled at temperature 1")
    assert together["methods"] == ["C", "A", "B"]

    # the report's evaluation section shows the benchmark table per category and a few pairs side by side
    section = evaluation_section(RunFiles(RunLayout("bench"), None, layout), ReportConfig(run="bench"))
    assert section.missing is None and "OpenVE-Bench-style protocol" in section.html
    assert "six dimensions" not in section.html  # not run here
    for method, score in overall.items():
        assert f"<td>{method}</td>" in section.html and f"<td class=num>{score:.2f}</td>" in section.html
    assert "Runway Aleph" in section.html and "do not compare directly" in section.html
    assert section.html.count('class="pair"') == 3 and section.html.count("<figure") >= 3 * 2


def test_bench_table_in_a_recipe_and_errors(tmp_path, bench_folder):
    folder, methods, _ = bench_folder
    recipe = {"eval": {"output_dir": str(tmp_path), "bench": {"pairs_dir": str(folder), "methods": methods}}}
    config = eval_config_from_recipe(recipe)
    assert config.bench.methods == methods and config.bench.temperature == 0.0
    with pytest.raises(ValueError, match="eval.bench.temperature"):
        BenchConfig(temperature=-1.0)
    with pytest.raises(ValueError, match="set eval.pairs .* or eval.bench.pairs_dir"):
        run_eval(EvalConfig(output_dir=str(tmp_path)))
    bad = EvalConfig(
        output_dir=str(tmp_path), bench=BenchConfig(pairs_dir=str(folder), categories=["local_add"])
    )
    with pytest.raises(ValueError, match="does not list the set's category"):
        run_bench(bad, EvalLayout(tmp_path))
