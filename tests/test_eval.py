"""``trainer eval`` on generated videos with the tiny random Qwen3-VL judge: the six-dimension rubric against
direct forwards, and the plumbing (methods matched by pair id, sampling through trainer.sample, rejections,
resume) and tables against pandas. The judge's weights are random: the values mean nothing."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from dataengine.media.video import write_mp4
from dataengine.models.judge import EVAL_RUBRIC, RUBRICS, Judge, JudgeConfig
from dataengine.synthetic.portraits import render_background, render_portrait
from trainer import eval as evaluation
from trainer.cli import app

AXES = RUBRICS[EVAL_RUBRIC].axes
SUBSETS = ["simple", "complex"]


@pytest.fixture(scope="module")
def judge(tiny_qwen3vl) -> Judge:
    config = JudgeConfig(
        model=str(tiny_qwen3vl), rubric_version=EVAL_RUBRIC, batch_size=2, fps=4.0, max_frames=4,
        max_pixels_per_frame=4096, dtype="float32", device="cpu",
    )  # fmt: skip
    return Judge(config)


@pytest.fixture(scope="module")
def eval_set(tmp_path_factory) -> pd.DataFrame:
    """Four pairs (two per subset): source, target, reference (target frame 0) and a noise method's videos
    (one pair left out on purpose)."""
    root = tmp_path_factory.mktemp("eval_set")
    rows = []
    (root / "noise").mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        source, _ = render_portrait(seed=i, num_frames=5, height=64, width=64)
        target = render_background(seed=10 + i, num_frames=5, height=64, width=64)
        pair_id = f"pair{i}"
        write_mp4(root / f"{pair_id}_source.mp4", source, 8.0)
        write_mp4(root / f"{pair_id}_target.mp4", target, 8.0)
        Image.fromarray(target[0]).save(root / f"{pair_id}_reference.png")
        if i != 3:
            write_mp4(
                root / "noise" / f"{pair_id}.mp4", rng.integers(0, 256, target.shape, dtype=np.uint8), 8.0
            )
        rows.append(
            {
                "pair_id": pair_id,
                "source_path": f"{pair_id}_source.mp4",  # relative to the set's folder
                "instruction": ["Remove the person.", "Replace the person with the background please."][
                    i % 2
                ],
                "reference_path": f"{pair_id}_reference.png",
                "subset": SUBSETS[i // 2],
                "target_path": f"{pair_id}_target.mp4",
            }
        )
    pd.DataFrame(rows).to_csv(root / "set.csv", index=False)
    return pd.DataFrame(rows).assign(root=str(root))


def _direct_axis_score(judge: Judge, pair: dict, axis: str) -> float:
    """One unbatched full forward over prompt + "<axis>: 1" with the reference image, float64 here."""
    text = judge.prompt_text(pair["instruction"]) + f"{axis}: 1"
    clips = [judge.load_clip(pair["source_path"]), judge.load_clip(pair["target_path"])]
    reference = np.array(Image.open(pair["reference_path"]).convert("RGB"))
    inputs = judge.processor_inputs([text], clips, [reference])
    assert "pixel_values" in inputs and inputs["input_ids"][0, -1].item() == judge.digit_ids[1]
    with torch.no_grad():
        logits = judge.model(**inputs).logits[0].double()
    p = torch.softmax(logits[-2], -1)[judge.digit_ids].tolist()
    q = torch.softmax(logits[-1], -1)[judge.digit_ids].tolist()
    probs = {0: p[0], 1: p[1] * (1 - sum(q)), 10: p[1] * q[0], **{s: p[s] for s in range(2, 10)}}
    return sum(s * v for s, v in probs.items()) / sum(probs.values())


def test_six_dimension_rubric_equals_direct_forwards(judge, eval_set):
    root = eval_set["root"].iloc[0]
    pairs = eval_set.head(2).copy()
    for column in ("source_path", "target_path", "reference_path"):
        pairs[column] = root + "/" + pairs[column]
    scores = judge.score_pairs(pairs)  # one batch, prompts of different lengths: pair 0 is left-padded
    assert list(scores.columns) == RUBRICS[EVAL_RUBRIC].result_columns and scores["reason"].isna().all()
    assert "Reference image:" in judge.prompt_text("x") and len(judge.axis_ids) == 6
    for axis in AXES:
        assert scores.loc[0, axis] == pytest.approx(_direct_axis_score(judge, pairs.iloc[0], axis), abs=1e-4)
    missing = pairs.head(1).assign(reference_path=root + "/none.png")
    assert judge.score_pairs(missing).loc[0, "reason"] == "scorer_error"


def test_eval_tables_methods_and_resume(judge, eval_set, tmp_path, monkeypatch):
    root = eval_set["root"].iloc[0]
    calls, loads = [], []

    class FakeSampler:
        """Stands in for the checkpoint: 'edits' by copying the source (the plumbing, not the model)."""

        def __init__(self, checkpoint, config=None, **_):
            self.checkpoint, self.config = checkpoint, config

        def __enter__(self):
            loads.append(self.checkpoint)
            return self

        def __exit__(self, *_):
            pass

        def sample(self, source, instruction, reference, out, compare=False):
            calls.append((self.checkpoint, source, instruction, reference, self.config.num_steps))
            shutil.copy(source, out)

    monkeypatch.setattr("trainer.sample.Sampler", FakeSampler)
    config = evaluation.EvalConfig(
        pairs=f"{root}/set.csv", output_dir=str(tmp_path / "eval"), checkpoint="runs/fake", method_name="ours",
        methods={"noise": f"{root}/noise"}, score_targets=True, subsets=SUBSETS, judge=judge.config,
        sample=evaluation.SampleConfig(num_steps=3),
    )  # fmt: skip
    summary = evaluation.run_eval(config, judge=judge)

    assert [c[1].rsplit("/", 1)[-1] for c in calls] == [f"pair{i}_source.mp4" for i in range(4)]
    assert loads == [
        "runs/fake"
    ]  # one load for the four clips (the real loads are counted in test_sample.py)
    assert calls[0][0] == "runs/fake" and calls[0][4] == 3 and calls[1][2] == eval_set["instruction"][1]
    scores = pd.read_parquet(tmp_path / "eval" / "scores.parquet")
    assert summary["methods"] == ["ours", "noise", "target"]
    assert scores.groupby("method").size().to_dict() == {"ours": 4, "noise": 3, "target": 4}
    noise = scores[scores["method"] == "noise"]
    assert noise["video_path"].tolist() == [f"{root}/noise/pair{i}.mp4" for i in range(3)]
    target = scores[scores["method"] == "target"].set_index("pair_id")
    assert target.loc["pair2", "video_path"] == f"{root}/pair2_target.mp4"
    assert target.loc["pair2", "subset"] == "complex"
    rejections = pd.read_parquet(tmp_path / "eval" / "rejections.parquet")
    assert rejections[["pair_id", "reason"]].values.tolist() == [["pair3", "missing_video"]]

    # the table: means per method and subset, recomputed here, in the paper's layout
    table = pd.read_parquet(tmp_path / "eval" / "table.parquet")
    expected = scores.groupby(["method", "subset"])[[*AXES, "score"]].mean()
    assert len(table) == 6
    for row in table.itertuples(index=False):
        np.testing.assert_allclose(
            [getattr(row, a) for a in (*AXES, "score")], expected.loc[(row.method, row.subset)]
        )
    assert table.set_index(["method", "subset"]).loc[("noise", "complex"), "num_clips"] == 1
    markdown = (tmp_path / "eval" / "table.md").read_text().splitlines()
    assert markdown[0].startswith("| Method | simple IA | simple CC |") and markdown[0].endswith(
        "complex SC | complex Avg |"
    )
    target_line = next(line for line in markdown if line.startswith("| target |"))
    cells = target_line.strip("| ").split(" | ")
    assert cells[1] == f"{expected.loc[('target', 'simple'), AXES[0]]:.2f}"
    assert cells[-1] == f"{expected.loc[('target', 'complex'), 'score']:.2f}"
    assert summary["rubric_version"] == EVAL_RUBRIC and len(summary["rubric_sha256"]) == 64

    # a rerun keeps the videos sampled by an earlier run (resume): only a missing one is sampled again
    calls.clear()
    (tmp_path / "eval" / "videos" / "ours" / "pair1.mp4").unlink()
    pairs = evaluation.read_eval_set(config.pairs)
    videos, rejected = evaluation.sample_ours(config, pairs, tmp_path / "eval" / "videos" / "ours")
    assert [c[1].rsplit("/", 1)[-1] for c in calls] == ["pair1_source.mp4"] and not rejected
    assert sorted(videos) == [f"pair{i}" for i in range(4)]
    # nothing left to sample: the checkpoint is not even loaded
    loads.clear()
    evaluation.sample_ours(config, pairs, tmp_path / "eval" / "videos" / "ours")
    assert loads == []


def test_eval_command_errors_name_the_input(tmp_path):
    recipe = tmp_path / "eval.toml"
    recipe.write_text(
        f'[eval]\npairs = "{tmp_path}/none.csv"\nscore_targets = true\noutput_dir = "{tmp_path}/out"\n'
    )
    result = CliRunner().invoke(app, ["eval", str(recipe)])
    assert result.exit_code == 2 and "none.csv" in result.output
    result = CliRunner().invoke(app, ["eval", str(recipe), "eval.judge.rubric_version=v1"])
    assert result.exit_code == 2 and "does not show the reference image" in result.output
    (tmp_path / "set.csv").write_text(
        "pair_id,source_path,instruction,reference_path,subset\na,s.mp4,,r.png,simple\n"
    )
    result = CliRunner().invoke(app, ["eval", str(recipe), f"eval.pairs={tmp_path}/set.csv"])
    assert result.exit_code == 2 and "empty instruction (row 2)" in result.output
    result = CliRunner().invoke(
        app, ["eval", str(recipe), "eval.output_dir=''", f"eval.checkpoint={tmp_path}"]
    )
    assert result.exit_code == 2 and "eval.output_dir is not set" in result.output
