"""The Qwen3-VL judge: the score formula on logits we control, and the batched two-forward scoring on a
tiny random Qwen3-VL against direct full forwards computed here."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from dataengine.models.judge import AXES, Judge, JudgeConfig, expected_scores, sample_frame_indices
from dataengine.steps.openve_reader import read_openve
from dataengine.synthetic.openve import SyntheticOpenVEConfig, generate_openve


@pytest.fixture(scope="module")
def judge(tiny_qwen3vl) -> Judge:
    return Judge(JudgeConfig(model=str(tiny_qwen3vl), batch_size=3, fps=4.0, max_frames=4))


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> pd.DataFrame:
    data = generate_openve(tmp_path_factory.mktemp("judge_data"), SyntheticOpenVEConfig(pairs_per_category=2))
    return read_openve(data.csv_dir, data.video_root).pairs.head(5).reset_index(drop=True)


def _logits_from_probs(vocab: int, probs: dict[int, float]) -> torch.Tensor:
    """Logits whose softmax is ``probs``, the rest of the mass on the last token (never a digit here)."""
    out = torch.full((vocab,), -1e4, dtype=torch.float64)  # exp(-1e4) underflows to exactly 0
    out[vocab - 1] = math.log(max(1.0 - sum(probs.values()), 1e-300))
    for t, p in probs.items():
        out[t] = math.log(p)
    return out


def test_expected_score_on_controlled_logits():
    digits = list(range(3, 13))  # token id of "d" is 3 + d
    tok = {d: 3 + d for d in range(10)}
    first = _logits_from_probs(20, {tok[9]: 0.5, tok[1]: 0.3, tok[8]: 0.1})  # 0.1 on non-digits
    after_one = _logits_from_probs(20, {tok[0]: 0.6, tok[5]: 0.1})  # "10" 0.6, "15" 0.1, "1" 0.3
    expected, mass = expected_scores(first[None], after_one[None], digits)
    # by hand: P(9)=.5, P(8)=.1, P(10)=.3*.6=.18, P(1)=.3*.3=.09 ("15" and non-digits are not scores)
    hand_mass = 0.5 + 0.1 + 0.18 + 0.09
    hand = (9 * 0.5 + 8 * 0.1 + 10 * 0.18 + 1 * 0.09) / hand_mass
    assert mass.item() == pytest.approx(hand_mass, abs=1e-6)
    assert expected.item() == pytest.approx(hand, abs=1e-5)


def test_expected_score_edge_cases():
    digits = list(range(10))
    certain_ten = expected_scores(
        _logits_from_probs(12, {1: 1 - 1e-9})[None], _logits_from_probs(12, {0: 1 - 1e-9})[None], digits
    )
    certain_one = expected_scores(
        _logits_from_probs(12, {1: 1 - 1e-9})[None], _logits_from_probs(12, {10: 1 - 1e-9})[None], digits
    )
    certain_zero = expected_scores(
        _logits_from_probs(12, {0: 1 - 1e-9})[None], _logits_from_probs(12, {0: 1 - 1e-9})[None], digits
    )
    assert certain_ten[0].item() == pytest.approx(10.0, abs=1e-4)
    assert certain_one[0].item() == pytest.approx(1.0, abs=1e-4)
    assert certain_zero[0].item() == pytest.approx(0.0, abs=1e-4)
    batch = torch.stack([_logits_from_probs(12, {7: 0.9}), _logits_from_probs(12, {2: 0.4, 3: 0.4})])
    expected, _ = expected_scores(batch, batch, digits)
    assert expected[1].item() == pytest.approx(2.5, abs=1e-5)  # rows are independent


def test_sample_frame_indices_cover_the_clip():
    idx = sample_frame_indices(num_frames=129, src_fps=24.0, fps=2.0, max_frames=16)
    assert len(idx) == 10 and idx[0] == 0 and idx[-1] == 128 and np.all(np.diff(idx) > 0)
    assert len(sample_frame_indices(1000, 24.0, 2.0, max_frames=16)) == 16
    assert len(sample_frame_indices(3, 24.0, 2.0, max_frames=16)) == 2  # at least two frames


def _reference_axis_score(judge: Judge, row: pd.Series, axis: str) -> tuple[float, float]:
    """One unbatched full forward over prompt + "<axis>: 1", scored with float64 arithmetic here."""
    text = judge.prompt_text(row["instruction"]) + f"{axis}: 1"
    clips = [judge.load_clip(row["source_path"]), judge.load_clip(row["target_path"])]
    inputs = judge.processor_inputs([text], clips)
    assert inputs["input_ids"][0, -1].item() == judge.digit_ids[1]
    with torch.no_grad():
        logits = judge.model(**inputs).logits[0].double()
    p = torch.softmax(logits[-2], -1)[judge.digit_ids].tolist()
    q = torch.softmax(logits[-1], -1)[judge.digit_ids].tolist()
    probs = {0: p[0], 1: p[1] * (1 - sum(q)), 10: p[1] * q[0], **{s: p[s] for s in range(2, 10)}}
    mass = sum(probs.values())
    return sum(s * v for s, v in probs.items()) / mass, mass


def test_batched_scores_equal_direct_forwards(judge, pairs):
    scores = judge.score_pairs(pairs)  # batches of 3 and 2, instructions of different lengths: left padding
    assert scores["pair_id"].tolist() == pairs["pair_id"].tolist()
    assert scores["reason"].isna().all()
    for i in (0, 2, 4):
        masses = []
        for axis in AXES:
            reference, mass = _reference_axis_score(judge, pairs.iloc[i], axis)
            assert scores.loc[i, axis] == pytest.approx(reference, abs=1e-4)
            masses.append(mass)
        assert scores.loc[i, "score"] == pytest.approx(np.mean([scores.loc[i, a] for a in AXES]), abs=1e-9)
        assert scores.loc[i, "answer_mass"] == pytest.approx(np.mean(masses), rel=1e-3)
    assert (scores["scorer_model"] == judge.config.model).all() and (scores["rubric_version"] == "v1").all()
    assert ((scores["score"] >= 0) & (scores["score"] <= 10)).all()


def test_a_failing_pair_is_a_scorer_error_and_the_rest_are_scored(judge, pairs, monkeypatch):
    broken = pairs.head(3).copy()
    broken.loc[1, "target_path"] = "/nonexistent/clip.mp4"
    scores = judge.score_pairs(broken)
    assert scores["reason"].fillna("ok").tolist() == ["ok", "scorer_error", "ok"]
    assert "clip.mp4" in scores.loc[1, "detail"] and pd.isna(scores.loc[1, "score"])
    clean = judge.score_pairs(pairs.head(3))
    assert scores.loc[0, "score"] == pytest.approx(clean.loc[0, "score"], abs=1e-4)

    # a forward that fails for one pair: the batch is retried pair by pair
    original = judge.score_inputs

    def flaky(inputs):
        texts = judge.processor.tokenizer.batch_decode(inputs["input_ids"])
        if any(pairs.loc[2, "instruction"][:30] in t for t in texts):
            raise RuntimeError("CUDA out of memory (simulated)")
        return original(inputs)

    monkeypatch.setattr(judge, "score_inputs", flaky)
    retried = judge.score_pairs(pairs.head(3))
    assert retried["reason"].fillna("ok").tolist() == ["ok", "ok", "scorer_error"]
    assert "out of memory" in retried.loc[2, "detail"]
    assert retried.loc[0, "score"] == pytest.approx(clean.loc[0, "score"], abs=1e-4)


def test_config_errors_are_clear(tiny_qwen3vl):
    with pytest.raises(ValueError, match="rubric_version"):
        Judge(JudgeConfig(model=str(tiny_qwen3vl), rubric_version="v99"))
    with pytest.raises(ValueError, match="dtype"):
        Judge(JudgeConfig(model=str(tiny_qwen3vl), dtype="float8"))


def test_cpu_runs_in_float32(judge):
    assert judge.dtype == torch.float32 and next(judge.model.parameters()).dtype == torch.float32
