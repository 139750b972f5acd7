"""synth-portraits: the seeded plan, the segmentation stage with a tiny SAM2, and the CLI on Ray end to end.

The end-to-end reference is the session's ``demo_run``: its synth-portraits job made the demo's pairs from the
portrait and background windows that harvest-portraits found in demo-data's generated pool. Its kill-then-resume
(the same job on the same inputs, killed once it has written its first pairs, resumed and compared with the demo
run's) runs on the two-node cluster of tests/test_ray_cluster.py. The
demo's windows hold no clip the gate rejects and no background shorter than a pair, so one small extra run
(joined to the session's Ray) covers those: a person who jumps every frame (rejected as unstable) and a
9-frame background that the compositor loops back and forth.

The pair pixels are checked against an independent computation: the generated clips' ground-truth masks,
a window-mean alpha written here, the background looped back and forth by an explicit formula, and the
alpha-blend formula in float64.
"""

from __future__ import annotations

import json
import subprocess
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dataengine.formats.manifest import PAIR_COLUMNS, read_pairs
from dataengine.media.video import read_frames
from dataengine.models.segment import GATE_REASONS, SegmenterConfig, load_masks
from dataengine.steps.portrait_pairs import CATEGORIES, InstructionsConfig, PortraitsConfig, plan_pairs
from dataengine.synthetic.portraits import SyntheticPortraitsConfig, generate_portraits
from tests.helpers import cli_env, dataengine

PAIRS_PER_TYPE = 1  # the small extra run's: its one good person and one background give 1 per type


@pytest.fixture(scope="session")
def portrait_data(tmp_path_factory):
    """A good person, one the gate must reject (``unstable``: the figure jumps every frame) and one background
    of 9 frames, shorter than a pair (17 frames): the cases the demo's windows do not hold."""
    root = tmp_path_factory.mktemp("portrait_inputs")
    config = SyntheticPortraitsConfig(
        num_people=1,
        num_backgrounds=1,
        background_frames=(9,),
        bad_people=("unstable",),
        seed=1,
        pool=(),
    )
    return generate_portraits(root, config)


def write_recipe(folder: Path, data, run: str, **extra: str) -> Path:
    lines = [
        f'run = "{run}"',
        "[portraits]",
        f'people_dir = "{data.root / "people"}"',
        f'backgrounds_dir = "{data.root / "backgrounds"}"',
        f'output_dir = "{folder / "pairs" / run}"',
        f"pairs_per_type = {PAIRS_PER_TYPE}",
        "num_frames = 17",
        "fps = 16.0",
        "width = 160",
        "height = 96",
        "feather_radius = 2",
        "[portraits.segmenter]",
        'backend = "mask_files"',
        "[portraits.resources]",
        "num_cpus = 2",
    ]
    path = folder / f"{run}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def cli(
    folder: Path, recipe: Path, *overrides: str, env: dict[str, str] | None = None, **popen
) -> subprocess.Popen:
    command = dataengine("synth-portraits", str(recipe), *overrides)
    return subprocess.Popen(
        command,
        cwd=folder,
        env=env or cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **popen,
    )


def run_cli(folder: Path, recipe: Path, *overrides: str, **env: str) -> str:
    """The job to its end (``env``: extra variables, e.g. ``RAY_ADDRESS`` to join a running Ray); its output."""
    process = cli(folder, recipe, *overrides, env=cli_env(**env))
    out, _ = process.communicate(timeout=400)
    assert process.returncode == 0, out
    return out


# ---------------------------------------------------------------------------------------------- plan


def test_plan_is_seeded_distinct_and_independent_of_input_order():
    portraits = [f"p{i}.mp4" for i in range(4)]
    backgrounds = [f"b{i}.mp4" for i in range(3)]
    config = PortraitsConfig(pairs_per_type=5, seed=7)
    plan, planned = plan_pairs(portraits, backgrounds, config, "r")
    again, _ = plan_pairs(portraits[::-1], backgrounds[::-1], config, "r")
    assert plan == again
    assert planned == {"removal": 5, "addition": 5, "background": 5}
    frame = pd.DataFrame(plan)
    assert frame["pair_id"].is_unique
    assert set(frame["category"]) == set(CATEGORIES.values())
    for edit_type, rows in frame.groupby("edit_type"):
        assert not rows.duplicated(["portrait", "background"]).any()
        assert set(rows["instruction"]) <= set(getattr(InstructionsConfig(), edit_type))
    other, _ = plan_pairs(portraits, backgrounds, PortraitsConfig(pairs_per_type=5, seed=8), "r")
    assert [r["pair_id"] for r in other] != [r["pair_id"] for r in plan]
    # more pairs than distinct combinations: capped at 4 x 3
    _, capped = plan_pairs(portraits, backgrounds, PortraitsConfig(pairs_per_type=50), "r")
    assert capped == {"removal": 12, "addition": 12, "background": 12}


@pytest.mark.process
def test_config_rejects_bad_frame_counts_and_unknown_keys(tmp_path, portrait_data):
    with pytest.raises(ValueError, match="4n \\+ 1"):
        PortraitsConfig(num_frames=16)
    recipe = write_recipe(tmp_path, portrait_data, "bad")
    out = subprocess.run(
        dataengine("synth-portraits", str(recipe), "portraits.pairs_per_typo=3"),
        cwd=tmp_path,
        env=cli_env(),
        capture_output=True,
        text=True,
    )
    assert out.returncode != 0 and "pairs_per_typo" in out.stderr + out.stdout


# ---------------------------------------------------------------------------------------------- segmentation stage


def test_segment_stage_runs_a_tiny_sam2_from_its_folder(tmp_path, portrait_data, tiny_models):
    from pipelines.portraits import SegmentWorker

    model = tiny_models.sam2
    config = PortraitsConfig(
        num_frames=17, width=160, height=96, segmenter=SegmenterConfig(model=str(model), device="cpu")
    )
    worker = SegmentWorker(config, str(tmp_path / "masks"))
    worker.setup()  # the model loads here, once per actor
    path = portrait_data.people[0]
    row = worker.process({"path": str(path), "portrait": path.name})
    masks = load_masks(row["masks_path"])
    assert masks.shape == (17, 96, 160)
    assert row["reason"] is None or row["reason"] in GATE_REASONS
    assert str(path) in row["detail"]


# ---------------------------------------------------------------------------------------------- end to end


def window_mean(masks: np.ndarray, radius: int) -> np.ndarray:
    padded = np.pad(masks.astype(np.float64), ((0, 0), (radius, radius), (radius, radius)), mode="edge")
    total = np.zeros(masks.shape)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            total += padded[:, dy : dy + masks.shape[1], dx : dx + masks.shape[2]]
    return total / (2 * radius + 1) ** 2


def expected_pair(row: dict) -> tuple[np.ndarray, np.ndarray]:
    """Source and target frames computed here from the generated clips and their ground-truth masks: the
    portrait's 17 frames from its window's start, the background from its window's start looped back and
    forth (the row is a pair's plan row: portrait_path, portrait_start, background_path, background_start)."""
    portrait_path, start = Path(row["portrait_path"]), int(row["portrait_start"])
    portrait = read_frames(portrait_path).astype(np.float64)[start : start + 17]
    masks = load_masks(portrait_path.with_name(portrait_path.stem + ".masks.npz"))[start : start + 17]
    assert len(portrait) == len(masks) == 17
    background = read_frames(row["background_path"]).astype(np.float64)[int(row["background_start"]) :]
    n = len(background)
    order = [0]  # 0, 1, ..., n-1, n-2, ..., 1, 0, 1, ...
    step = 1
    while len(order) < 17:
        if not 0 <= order[-1] + step < n:
            step = -step
        order.append(order[-1] + step)
    background = background[order]
    alpha = window_mean(masks, 2)[..., None]
    composite = np.rint(alpha * portrait + (1 - alpha) * background)
    return {
        "portrait_removal": (composite, background),
        "portrait_addition": (background, composite),
        "portrait_background": (portrait, composite),
    }[row["category"]]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-12)))


def check_run(
    run_dir: Path, out: str, pairs_per_type: int, portraits: list[str], backgrounds: list[str]
) -> None:
    """A finished synth-portraits run: its manifest, rejections, summary and stage counts agree with the input
    clips it was given (``portraits`` and ``backgrounds`` by name), and every pair's pixels match the formula."""
    from PIL import Image

    pairs = read_pairs(run_dir / "portraits.parquet")
    assert list(pairs.columns)[: len(PAIR_COLUMNS)] == PAIR_COLUMNS
    assert (pairs["origin"] == "portrait").all() and pairs["score"].isna().all()
    assert pairs["category"].value_counts().to_dict() == {c: pairs_per_type for c in CATEGORIES.values()}
    assert (pairs[["num_frames", "width", "height"]] == [17, 160, 96]).all().all()
    plan = pd.read_parquet(run_dir / "portrait_plan.parquet").set_index("pair_id")
    rejections = pd.read_parquet(run_dir / "portrait_rejections.parquet")
    summary = json.loads((run_dir / "portraits_summary.json").read_text())
    num_rejected = len(rejections)
    assert summary["portraits"]["seen"] == len(portraits)
    assert summary["portraits"]["accepted"] == len(portraits) - num_rejected
    assert summary["portraits"]["rejected"] == rejections["reason"].value_counts().to_dict()
    assert all(t["written"] == pairs_per_type for t in summary["types"].values())
    # the runner's counts per stage: a rejected clip at its stage (as the rejections file says), every
    # background usable, every planned pair written
    stages = summary["stages"]
    assert list(stages) == ["background", "probe", "detect", "segment", "composite"]
    recorded = {(stage, r): n for stage, count in stages.items() for r, n in count["rejected"].items()}
    assert recorded == {key: len(rows) for key, rows in rejections.groupby(["stage", "reason"])}
    assert (
        stages["probe"]["in"] == len(portraits) and stages["segment"]["kept"] == len(portraits) - num_rejected
    )
    assert stages["background"]["in"] == stages["background"]["kept"] == summary["backgrounds"]["seen"]
    assert summary["backgrounds"]["seen"] == len(backgrounds) > 0
    num_pairs = 3 * pairs_per_type
    assert stages["composite"] == {"in": num_pairs, "kept": num_pairs, "rejected": {}}
    assert "portrait_removal" in out and "ETA" in out

    for row in pairs.to_dict("records"):
        row = {**row, **plan.loc[row["pair_id"]].to_dict()}
        want_source, want_target = expected_pair(row)
        source, target = read_frames(row["source_path"]), read_frames(row["target_path"])
        assert source.shape == target.shape == (17, 96, 160, 3)
        assert psnr(source, want_source) > 32, row["category"]
        assert psnr(target, want_target) > 32, row["category"]
        # the check can fail: source and target differ by far more than the codec's error
        assert psnr(want_source, want_target) < 25
        reference = np.asarray(Image.open(row["reference_path"]))
        assert np.abs(reference.astype(np.int64) - want_target[0].astype(np.int64)).max() <= 1


def demo_windows(demo_run) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """The demo's input windows (portraits, backgrounds, as harvest-portraits listed them) and its pairs per type."""
    recipe = tomllib.loads(demo_run.recipe.read_text())["portraits"]
    return (
        pd.read_parquet(recipe["portrait_windows"]),
        pd.read_parquet(recipe["background_windows"]),
        recipe["pairs_per_type"],
    )


@pytest.mark.ray
@pytest.mark.process
@pytest.mark.slow
def test_cli_writes_pairs_whose_pixels_match_the_formula(demo_run):
    # the demo run: every portrait window of the pool is a person the gate accepts; its backgrounds are longer
    # than a pair (trimmed), from the window's start
    portrait_windows, background_windows, pairs_per_type = demo_windows(demo_run)
    run_dir = demo_run.manifests
    assert pairs_per_type > 1 and len(portrait_windows) > 1
    assert pd.read_parquet(run_dir / "portrait_rejections.parquet").empty
    check_run(
        run_dir,
        demo_run.stdout["synth-portraits"],
        pairs_per_type,
        list(portrait_windows["clip"]),
        list(background_windows["clip"]),
    )
    plan = pd.read_parquet(run_dir / "portrait_plan.parquet")
    assert set(plan["portrait"]) == set(portrait_windows["clip"])
    # each portrait from the start of its window (where the person is in every sampled frame)
    window_start = portrait_windows.set_index("clip")["start_frame"]
    assert plan["portrait_start"].tolist() == window_start.reindex(plan["portrait"]).tolist()
    assert plan["background_start"].nunique() > 1  # windows starting at the clip's start and later
    lengths = {
        read_frames(p).shape[0] - s
        for p, s in zip(plan["background_path"], plan["background_start"], strict=True)
    }
    assert min(lengths) > 17 and len(lengths) > 1, lengths  # trimmed, from backgrounds of several lengths


@pytest.mark.process
@pytest.mark.slow
def test_cli_rejects_the_unstable_person_and_loops_a_short_background(portrait_data, tmp_path, ray_session):
    # the smallest extra input, for what the demo's windows do not hold: the unstable person is rejected with
    # its reason and never used, and the 9-frame background is looped back and forth
    out = run_cli(tmp_path, write_recipe(tmp_path, portrait_data, "gate"), RAY_ADDRESS=ray_session)
    run_dir = tmp_path / "manifests" / "gate"
    people = [p.name for p in portrait_data.people]
    check_run(run_dir, out, PAIRS_PER_TYPE, people, [p.name for p in portrait_data.backgrounds])
    rejections = pd.read_parquet(run_dir / "portrait_rejections.parquet")
    (bad_name, bad_reason), *_ = portrait_data.expected_rejections.items()
    assert rejections["reason"].tolist() == [bad_reason] and bad_name in rejections["detail"].iloc[0]
    summary = json.loads((run_dir / "portraits_summary.json").read_text())
    assert summary["portraits"] == {"seen": 2, "accepted": 1, "rejected": {bad_reason: 1}}
    assert summary["stages"]["probe"]["in"] == 2 and summary["stages"]["segment"]["kept"] == 1
    plan = pd.read_parquet(run_dir / "portrait_plan.parquet")
    assert bad_name not in set(plan["portrait"])
    assert {read_frames(p).shape[0] for p in plan["background_path"]} == {9}  # shorter than a pair: looped


def test_recorded_pairs_are_redone_when_their_files_are_gone(tmp_path):
    from pipelines.portraits import _still_valid

    empty = pd.DataFrame(columns=[*PAIR_COLUMNS, "reason", "stage", "detail"])
    assert _still_valid(empty).empty and list(_still_valid(empty).columns) == list(empty.columns)
    files = {k: tmp_path / f"{k}.bin" for k in ("source_path", "target_path", "reference_path")}
    for path in files.values():
        path.write_bytes(b"x")
    written = {"pair_id": "a", "reason": None, **{k: str(v) for k, v in files.items()}}
    gone = {**written, "pair_id": "b", "target_path": str(tmp_path / "missing.mp4")}
    rejected = {**gone, "pair_id": "c", "reason": "undecodable"}
    assert list(_still_valid(pd.DataFrame([written, gone, rejected]))["pair_id"]) == ["a", "c"]
