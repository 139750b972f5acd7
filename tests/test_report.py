"""``dataengine report``: every section is there, every inlined image decodes, missing parts say "not run",
and the page renders in a real headless Chromium (skipped when it is not installed)."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dataengine.formats.layout import RunLayout
from dataengine.formats.manifest import make_pair_id, rejections_frame, write_pairs, write_rejections
from dataengine.media.video import write_mp4
from dataengine.models.judge import EVAL_RUBRIC, RUBRICS, JudgeConfig
from dataengine.models.segment import save_masks
from dataengine.steps.selection import SelectionConfig, summarize
from dataengine.steps.shard_set import survival_summary
from dataengine.tools.layer_diagnosis import DiagnoseConfig, write_diagnosis
from dataengine.tools.run_report import SECTION_TITLES, SECTIONS, ReportConfig, write_report
from pipelines.filter import FILTER_STAGES
from pipelines.harvest import STAGES as HARVEST_STAGES
from pipelines.portraits import SEGMENT_STAGES as PORTRAIT_CLIP_STAGES
from pipelines.shards import STAGES as SHARD_STAGES
from pipelines.stage import stage_counts
from tests.helpers import REPO
from tests.shard_builder import build_shards
from trainer.eval import EvalConfig, run_eval

CHROMIUM = Path("/usr/bin/chromium")


class PageParser(HTMLParser):
    """Collects section ids, image sources, external references, and the text of the page."""

    def __init__(self) -> None:
        super().__init__()
        self.section_ids: list[str] = []
        self.images: list[str] = []
        self.external: list[str] = []
        self.svgs = 0
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attrs_dict = dict(attrs)
        if tag == "section":
            self.section_ids.append(attrs_dict.get("id") or "")
        if tag == "img":
            self.images.append(attrs_dict.get("src") or "")
        if tag == "svg":
            self.svgs += 1
        for key in ("src", "href"):
            value = attrs_dict.get(key) or ""
            if value and not value.startswith(("data:", "#")):
                self.external.append(value)
        if tag == "link" or tag == "script":
            self.external.append(f"<{tag}>")

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(path: Path) -> PageParser:
    parser = PageParser()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def decode_data_uri(uri: str) -> Image.Image:
    header, payload = uri.split(",", 1)
    assert header == "data:image/png;base64", header
    image = Image.open(io.BytesIO(base64.b64decode(payload)))
    image.load()
    return image


def _clip(seed: int, frames: int = 9, height: int = 48, width: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, size=(1, height, width, 3), dtype=np.uint8)
    shift = (np.arange(frames)[:, None, None, None] * 7) % 255
    return ((base.astype(np.int32) + shift) % 255).astype(np.uint8)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run with every part: filter outputs, portrait outputs (mask, reference PNG), shards, a training run."""
    root = tmp_path_factory.mktemp("report")
    videos = root / "videos"
    run_dir = root / "manifests" / "tiny"
    openve_rows, scores_rows = [], []
    for i, category in enumerate(["local_add", "local_add", "local_add", "global_style", "global_style"]):
        source, target = videos / f"src{i}.mp4", videos / f"tgt{i}.mp4"
        write_mp4(source, _clip(i), fps=8)
        write_mp4(target, _clip(100 + i), fps=8)
        instruction = f"Add a red hat number {i}"
        row = {
            "pair_id": make_pair_id("openve", source.name, target.name, instruction),
            "origin": "openve",
            "category": category,
            "instruction": instruction,
            "source_path": str(source),
            "target_path": str(target),
            "reference_path": None,
            "score": 8.0 + i * 0.3,
            "num_frames": 9,
            "fps": 8.0,
            "width": 64,
            "height": 48,
        }
        openve_rows.append(row)
        scores_rows.append({"category": category, "score": row["score"]})
    openve = pd.DataFrame(openve_rows)
    write_pairs(openve, run_dir / "openve.parquet")
    rejections = rejections_frame(
        [
            {
                "pair_id": "a1",
                "stage": "probe",
                "reason": "missing_file",
                "detail": "source video missing: x.mp4",
            },
            {"pair_id": "a2", "stage": "select", "reason": "below_threshold", "detail": "score 3.1 < 7.0"},
            {"pair_id": "a3", "stage": "select", "reason": "below_threshold", "detail": "score 2.2 < 7.0"},
        ]
    )
    write_rejections(rejections, run_dir / "rejections.parquet")
    scores = pd.DataFrame(
        scores_rows + [{"category": "local_add", "score": 3.1}, {"category": "local_add", "score": 2.2}]
    )
    rejected = rejections.assign(category=["local_add"] * 3)
    summary = summarize(
        {"local_add": 6, "global_style": 2},
        scores,
        openve,
        rejected,
        SelectionConfig(threshold=7.0, max_per_category=4),
    )
    # what the job's runner records: per stage, the rows in, kept and rejected by reason
    outcomes = pd.concat([rejections, openve[["pair_id"]]], ignore_index=True)
    summary["stages"] = stage_counts(outcomes, FILTER_STAGES)
    (run_dir / "summary.json").write_text(json.dumps(summary))

    # portraits: one pair with a reference PNG and masks
    source, target = videos / "p_src.mp4", videos / "p_tgt.mp4"
    write_mp4(source, _clip(7), fps=8)
    write_mp4(target, _clip(8), fps=8)
    reference = root / "pairs" / "ref.png"
    reference.parent.mkdir(parents=True)
    Image.fromarray(_clip(9)[0]).save(reference)
    masks = np.zeros((9, 48, 64), dtype=bool)
    masks[:, 10:40, 20:44] = True
    save_masks(root / "pairs" / "p.masks.npz", masks)
    pair_id = make_pair_id("portrait", source.name, target.name, "Remove the person.")
    portraits = pd.DataFrame(
        [
            {
                "pair_id": pair_id,
                "origin": "portrait",
                "category": "portrait_removal",
                "instruction": "Remove the person.",
                "source_path": str(source),
                "target_path": str(target),
                "reference_path": str(reference),
                "score": None,
                "num_frames": 9,
                "fps": 8.0,
                "width": 64,
                "height": 48,
            }
        ]
    )
    write_pairs(portraits, run_dir / "portraits.parquet")
    clip_rejections = rejections_frame(
        [
            {"pair_id": "c1", "stage": "segment", "reason": "empty_mask", "detail": "frame 3"},
            {"pair_id": "c2", "stage": "probe", "reason": "too_short", "detail": "9 frames"},
        ]
    )
    write_rejections(clip_rejections, run_dir / "portrait_rejections.parquet")
    # synth-portraits' three counts: 1 background clip, 3 portrait clips, 1 planned pair
    clips = pd.concat([clip_rejections, pd.DataFrame({"pair_id": ["c0"]})], ignore_index=True)
    portrait_stages = {
        **stage_counts(pd.DataFrame({"pair_id": ["b0"]}), ["background"]),
        **stage_counts(clips, PORTRAIT_CLIP_STAGES),
        **stage_counts(pd.DataFrame({"pair_id": ["p0"]}), ["composite"]),
    }
    (run_dir / "portraits_summary.json").write_text(json.dumps({"run": "tiny", "stages": portrait_stages}))
    # harvest-portraits: 5 videos scanned, one unreadable, two with no window
    harvest_rejections = rejections_frame(
        [
            {"pair_id": "v1", "stage": "probe", "reason": "undecodable", "detail": "v1.mp4"},
            {"pair_id": "v2", "stage": "harvest", "reason": "no_window", "detail": "two people"},
            {"pair_id": "v3", "stage": "harvest", "reason": "no_window", "detail": "too small"},
        ]
    )
    write_rejections(harvest_rejections, run_dir / "harvest_rejections.parquet")
    videos_seen = pd.concat([harvest_rejections, pd.DataFrame({"pair_id": ["v0", "v4"]})], ignore_index=True)
    harvest_stages = stage_counts(videos_seen, HARVEST_STAGES)
    (run_dir / "harvest_summary.json").write_text(json.dumps({"run": "tiny", "stages": harvest_stages}))
    prompt_image = root / "pairs" / "p.prompt.png"
    Image.fromarray(np.full((48, 64, 3), 90, dtype=np.uint8)).save(prompt_image)
    plan = {
        "pair_id": pair_id,
        "masks_path": str(root / "pairs" / "p.masks.npz"),
        "prompt_image": str(prompt_image),
        "prompt_boxes": "[[20, 10, 44, 40, 0.93]]",
        "portrait_start": 12,
        "prompt_s": 0.75,
    }
    pd.DataFrame([plan]).to_parquet(run_dir / "portrait_plan.parquet")

    build_shards(root / "shards" / "tiny", {(3, 6, 8): 4, (3, 12, 20): 2}, samples_per_shard=2)
    # the shards step's survival summary: one OpenVE pair of local_add lost while decoding
    pairs = pd.concat([openve, portraits], ignore_index=True)
    lost = rejections_frame(
        [
            {
                "pair_id": openve["pair_id"].iloc[0],
                "stage": "decode",
                "reason": "missing_file",
                "detail": "gone",
            }
        ]
    )
    survival = survival_summary(pairs, pairs.assign(clip_frames=9), lost)
    survival["stages"] = stage_counts(pairs[["pair_id"]].merge(lost, on="pair_id", how="left"), SHARD_STAGES)
    (root / "shards" / "tiny" / "summary.json").write_text(json.dumps(survival))
    write_rejections(lost, root / "shards" / "tiny" / "rejections.parquet")
    train = root / "runs" / "debug"
    train.mkdir(parents=True)
    (train / "recipe.resolved.json").write_text(
        json.dumps({"train": {"data": {"shards": str(root / "shards" / "tiny")}}})
    )
    with (train / "metrics.jsonl").open("w") as handle:
        for step in range(1, 21):
            handle.write(
                json.dumps({"step": step, "loss": 1.5 / step**0.5, "grad_norm": 0.4, "samples_per_s": 2.0})
                + "\n"
            )

    # the layer diagnostic: two clips over five hidden states, R_mask falling with depth
    clip_rows = pd.DataFrame(
        [
            {"clip_id": clip, "hidden_state": h, "layer": f"decoder {h - 1}", "r_mask": 0.4 - 0.04 * h + d,
             "r_mask_any": 0.5, "uniform": 0.2, "num_text_tokens": 5, "num_visual_tokens": 30}
            for clip, d in (("a", 0.0), ("b", 0.01))
            for h in range(5)
        ]
    )  # fmt: skip
    write_diagnosis(
        RunLayout("tiny", root / "manifests").diagnosis, clip_rows, rejections_frame([]), DiagnoseConfig()
    )

    # the evaluation of the training run: the portrait pair, the target and one other method's video
    (root / "noise").mkdir()
    write_mp4(root / "noise" / f"{pair_id}.mp4", _clip(11), fps=8)
    eval_set = root / "eval_set.csv"
    portraits.assign(subset="simple").to_csv(eval_set, index=False)
    config = EvalConfig(pairs=str(eval_set), checkpoint=str(train), methods={"noise": str(root / "noise")},
                        score_targets=True)  # fmt: skip
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr("trainer.sample.Sampler", CopyingSampler)
    run_eval(config, judge=FixedJudge())
    monkeypatch.undo()
    return root


class CopyingSampler:
    """Stands in for ``trainer.sample.Sampler``: 'edits' by copying the source (the report shows videos, not the
    model's quality)."""

    def __init__(self, *_args, **_kwargs) -> None:
        pass

    def __enter__(self) -> CopyingSampler:
        return self

    def __exit__(self, *_exc) -> None:
        pass

    def sample(self, source, instruction, reference, out, compare=False) -> None:
        shutil.copy(source, out)


class FixedJudge:
    """Stands in for the VLM judge: every axis of every clip gets 7.0 (the report shows numbers, not the judge)."""

    rubric = RUBRICS[EVAL_RUBRIC]
    config = JudgeConfig(model="fixed", rubric_version=EVAL_RUBRIC)

    def score_pairs(self, pairs: pd.DataFrame) -> pd.DataFrame:
        rows = [
            {"pair_id": pid, "score": 7.0, **dict.fromkeys(self.rubric.axes, 7.0), "answer_mass": 1.0,
             "scorer_model": "fixed", "rubric_version": EVAL_RUBRIC, "reason": None, "detail": None}
            for pid in pairs["pair_id"]
        ]  # fmt: skip
        return pd.DataFrame(rows, columns=self.rubric.result_columns)


def _config(root: Path, run: str = "tiny") -> ReportConfig:
    return ReportConfig(
        run=run,
        manifests_root=str(root / "manifests"),
        shards_root=str(root / "shards"),
        runs_root=str(root / "runs"),
    )


def test_full_report_has_every_section_and_its_images_load(full_run: Path) -> None:
    path, sections = write_report(_config(full_run))
    assert [s.key for s in sections] == list(SECTIONS)
    assert all(s.missing is None for s in sections), [s.missing for s in sections]
    page = parse(path)
    assert page.section_ids == list(SECTIONS)
    assert page.external == []  # self-contained: no external asset
    assert page.svgs == 4  # funnel, score histogram, loss curve, R_mask against depth
    text = " ".join(page.text)
    for title in SECTION_TITLES.values():
        assert title in text
    assert "not run" not in text
    # 3 categories: local_add and global_style 2 pairs each (3 cells), the portrait pair 5 cells (with its
    # prompt frame and mask), the evaluated pair: source, reference and the three methods' edits
    assert len(page.images) == 2 * 3 + 2 * 3 + 5 + 5
    for uri in page.images:
        image = decode_data_uri(uri)
        assert image.width == 160 and image.height == 120  # 64x48 clips scaled to 160 wide
    # the mask thumbnail really is the mask: white inside the box, black outside
    html = path.read_text()
    mask_uri = html.split('alt="person mask (frame 0)"')[0].rsplit('src="', 1)[1].split('"')[0]
    mask = np.asarray(decode_data_uri(mask_uri).convert("L"))
    assert mask[60, 80] > 200 and mask[5, 5] < 50
    # the prompt frame shows its box in red along the mask's edges (x 20..43, y 10..39 at 64x48: x2.5 here)
    label = "prompt frame 12 (0.75 s) + box"
    prompt_uri = html.split(f'alt="{label}"')[0].rsplit('src="', 1)[1].split('"')[0]
    prompt = np.asarray(decode_data_uri(prompt_uri).convert("RGB")).astype(int)
    on_edge, inside, outside = prompt[50, 51], prompt[60, 80], prompt[5, 5]
    assert on_edge[0] > 180 and on_edge[1] < 120, on_edge
    assert abs(inside - 90).max() < 5 and abs(outside - 90).max() < 5
    # counts, reasons and shard numbers come from the inputs
    assert "below_threshold" in text and "missing_file" in text and "empty_mask" in text
    assert "portrait_removal" in text
    assert "t3_h6_w8" in text and "t3_h12_w20" in text
    assert "loss 1.5000 -> 0.3354" in text
    # the layer diagnostic's table and pick, the evaluation's table and captions
    assert "hidden states [1, 4]" in text and "0.4050" in text  # hidden state 0: mean of 0.40 and 0.41
    assert "simple IA" in text and "MiVE: IA 7.0 CC 7.0 TS 7.0 PR 7.0 VA 7.0 SC 7.0 · Avg 7.00" in text
    assert "noise: IA 7.0" in text and "target: IA 7.0" in text


def _table_rows(html: str) -> list[list[str]]:
    rows = re.findall(r"<tr>(.*?)</tr>", html)
    return [re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", row) for row in rows]


def test_funnel_follows_each_category_from_csv_rows_to_samples(full_run: Path) -> None:
    _, sections = write_report(_config(full_run))
    funnel = next(s for s in sections if s.key == "funnel")
    rows = {row[0]: row[1:] for row in _table_rows(funnel.html.split("<h3>Lost")[0])}
    # read / probed (one probe rejection) / scored / kept (two below the threshold) / encoded (one lost)
    assert rows["category"] == ["read", "probed", "scored", "kept", "encoded"]
    assert rows["local_add"] == ["6", "5", "5", "3", "2"]
    assert rows["global_style"] == ["2", "2", "2", "2", "2"]
    assert rows["total (OpenVE)"] == ["8", "7", "7", "5", "4"]
    assert rows["portrait_removal"] == ["", "", "", "1", "1"]
    assert "Lost at the shards step" in funnel.html and "missing_file 1" in funnel.html
    assert funnel.html.count("<rect") == 5 + 5 * 3 + 2  # legend, 3 full rows, the portrait's two bars


def _counted(rejections: pd.DataFrame, num_items: int, stages: tuple[str, ...]) -> list[list[str]]:
    """The rows a job's stage table should show, counted here from its rejections file: each stage takes in
    what the stages before it kept."""
    rows, remaining = [], num_items
    for stage in stages:
        mine = rejections[rejections["stage"] == stage]
        by_reason = mine.groupby("reason").size().sort_index()
        rejected = ", ".join(f"{reason} {n}" for reason, n in by_reason.items())
        rows.append([stage, str(remaining), str(remaining - len(mine)), rejected])
        remaining -= len(mine)
    return rows


def test_each_jobs_stage_table_shows_the_counts_it_recorded(full_run: Path) -> None:
    _, sections = write_report(_config(full_run))
    section = next(s for s in sections if s.key == "stages")
    tables = dict(re.findall(r"<h3>(.*?)</h3>(<table>.*?</table>)", section.html))
    assert list(tables) == ["filter", "harvest-portraits", "synth-portraits", "shards"]
    shown = {job: _table_rows(html)[1:] for job, html in tables.items()}
    assert _table_rows(tables["filter"])[0] == ["stage", "in", "kept", "rejected"]
    run_dir = full_run / "manifests" / "tiny"

    # the filter and the shards step: every input row ends kept or rejected once, so the rejections file
    # and the number of rows give every number of the table
    rejections = pd.read_parquet(run_dir / "rejections.parquet")
    num_rows = len(pd.read_parquet(run_dir / "openve.parquet")) + len(rejections)
    assert shown["filter"] == _counted(rejections, num_rows, FILTER_STAGES)
    assert shown["filter"][1] == ["probe", "8", "7", "missing_file 1"]  # the fixture's one probe rejection
    pairs = pd.concat([pd.read_parquet(run_dir / name) for name in ("openve.parquet", "portraits.parquet")])
    lost = pd.read_parquet(full_run / "shards" / "tiny" / "rejections.parquet")
    assert shown["shards"] == _counted(lost, len(pairs), SHARD_STAGES)
    harvested = pd.read_parquet(run_dir / "harvest_rejections.parquet")
    assert shown["harvest-portraits"] == _counted(harvested, 5, HARVEST_STAGES)

    # synth-portraits counts three kinds of items: background clips, portrait clips, planned pairs
    clip_rejections = pd.read_parquet(run_dir / "portrait_rejections.parquet")
    portraits = {row[0]: row for row in shown["synth-portraits"]}
    assert list(portraits) == ["background", *PORTRAIT_CLIP_STAGES, "composite"]
    assert [portraits[s] for s in PORTRAIT_CLIP_STAGES] == _counted(clip_rejections, 3, PORTRAIT_CLIP_STAGES)
    assert portraits["background"] == ["background", "1", "1", ""]
    assert portraits["composite"] == ["composite", "1", "1", ""]


def test_missing_parts_say_not_run(tmp_path: Path, full_run: Path) -> None:
    # only the training run exists: every data section says "not run", the loss curve is drawn
    path, sections = write_report(
        ReportConfig(
            run="absent",
            manifests_root=str(tmp_path),
            shards_root=str(tmp_path),
            train_run=str(full_run / "runs" / "debug"),
        )
    )
    status = {s.key: s.missing for s in sections}
    assert status["training"] is None and status["evaluation"] is None  # eval/ of the training run
    for key in ("counts", "funnel", "stages", "rejections", "scores", "pairs", "shards", "layers"):
        assert status[key] and status[key].startswith("not run"), status
    text = " ".join(parse(path).text)
    assert text.count("not run") == 8


def test_broken_video_shows_in_place_of_its_thumbnail(tmp_path: Path, full_run: Path) -> None:
    run_dir = tmp_path / "manifests" / "broken"
    pairs = pd.read_parquet(full_run / "manifests" / "tiny" / "openve.parquet").head(1)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    pairs["source_path"] = str(broken)
    write_pairs(pairs, run_dir / "openve.parquet")
    path, sections = write_report(
        ReportConfig(run="broken", manifests_root=str(tmp_path / "manifests"), shards_root=str(tmp_path))
    )
    page = parse(path)
    assert len(page.images) == 2  # target and reference still load
    assert "VideoError" in " ".join(page.text)


def test_report_command(full_run: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pipelines.cli import app

    out = tmp_path / "page.html"
    result = CliRunner().invoke(
        app,
        [
            "report",
            "tiny",
            "--out",
            str(out),
            "--manifests-root",
            str(full_run / "manifests"),
            "--shards-root",
            str(full_run / "shards"),
            "--runs-root",
            str(full_run / "runs"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert out.exists() and "wrote" in result.output and "not run" not in result.output


@pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is not installed")
@pytest.mark.process
def test_page_renders_in_headless_chromium(full_run: Path, tmp_path: Path) -> None:
    path, _ = write_report(_config(full_run), tmp_path / "report.html")
    shot = tmp_path / "shot.png"
    run = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "screenshot_report.py"), str(path), str(shot)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    image = np.asarray(Image.open(shot).convert("RGB"))
    assert image.shape[1] == 1280
    assert image.std() > 10  # not blank: text, charts and thumbnails are drawn
