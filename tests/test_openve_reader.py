"""The OpenVE reader and probe on generated CSVs and clips: every edge case the real files have."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dataengine.formats.manifest import make_pair_id
from dataengine.media.clips import ClipConfig
from dataengine.media.video import probe, read_frames
from dataengine.steps.openve_reader import find_csvs, probe_pairs, read_openve
from dataengine.synthetic.openve import BROKEN_KINDS, CATEGORIES, SyntheticOpenVEConfig, generate_openve


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    config = SyntheticOpenVEConfig(
        pairs_per_category=3, broken=tuple(BROKEN_KINDS), near_duplicates_per_category=1
    )
    return generate_openve(tmp_path_factory.mktemp("openve"), config)


@pytest.fixture(scope="module")
def read(dataset):
    return read_openve(dataset.csv_dir, dataset.video_root)


def _pandas_reference(path: Path) -> pd.DataFrame:
    """An independent parse: pandas' C parser with the delimiter read from the raw header bytes."""
    raw = path.read_bytes()
    header = raw.split(b"\n", 1)[0]
    sep = ";" if header.count(b";") > header.count(b",") else ","
    frame = pd.read_csv(path, sep=sep, encoding="utf-8-sig", dtype=str, keep_default_na=False)
    return frame[frame["prompt"].str.strip() != ""]  # the malformed row has no prompt


def test_generated_csvs_vary_like_the_real_ones(dataset):
    raw = {c: (dataset.csv_dir / f"{c}.csv").read_bytes() for c in CATEGORIES}
    assert any(r.startswith(b"\xef\xbb\xbf") for r in raw.values())  # BOM
    assert any(b"\r\n" in r for r in raw.values()) and any(b"\r\n" not in r for r in raw.values())
    headers = [r.lstrip(b"\xef\xbb\xbf").split(b"\n", 1)[0] for r in raw.values()]
    assert any(b";" in h for h in headers) and any(b"," in h for h in headers)
    assert any(h.count(b",") + h.count(b";") > 2 for h in headers)  # extra columns
    text = b"".join(raw.values()).decode("utf-8-sig")
    assert '""' in text  # an escaped quote inside a quoted prompt


def test_clips_have_motion_and_edits_differ(dataset):
    src = read_frames(dataset.video_root / "local_add/00000_src.mp4")
    edit = read_frames(dataset.video_root / "local_add/00000_edit.mp4")
    assert src.shape == edit.shape == (17, 64, 64, 3)
    motion = np.abs(src[1:].astype(float) - src[:-1].astype(float)).mean()
    assert motion > 2.0  # frames change over time
    assert np.abs(src.astype(float) - edit.astype(float)).mean() > 1.0  # the edit is visible


def test_every_row_is_a_pair_or_a_rejection(dataset, read):
    assert read.rows_per_category == dataset.rows_per_category
    assert len(read.pairs) + len(read.rejections) == dataset.num_rows
    ids = pd.concat([read.pairs["pair_id"], read.rejections["pair_id"]])
    assert not ids.duplicated().any()
    assert sorted(read.pairs["category"].unique()) == sorted(CATEGORIES)


def test_instructions_match_an_independent_pandas_parse(dataset, read):
    for category in CATEGORIES:
        reference = _pandas_reference(dataset.csv_dir / f"{category}.csv")
        ours = read.pairs[read.pairs["category"] == category].sort_values("csv_row")
        assert len(ours) == len(reference)
        expected = reference["prompt"].str.replace("\r\n", "\n").str.strip().tolist()
        assert ours["instruction"].tolist() == expected
        assert ours["source_rel"].tolist() == reference["original_video"].tolist()
        assert ours["target_rel"].tolist() == reference["video"].tolist()
    multiline = read.pairs["instruction"].str.contains("\n")
    assert multiline.any() and not read.pairs["instruction"].str.contains("\r").any()
    assert read.pairs["instruction"].str.contains('"').any()
    assert (
        read.pairs["instruction"].str.contains(";").any()
        and read.pairs["instruction"].str.contains(",").any()
    )


def test_paths_resolve_against_the_video_root_and_ids_are_stable(dataset, read):
    row = read.pairs.iloc[0]
    assert Path(row["source_path"]) == (dataset.video_root / row["source_rel"]).resolve()
    assert row["pair_id"] == make_pair_id("openve", row["source_rel"], row["target_rel"], row["instruction"])
    again = read_openve(dataset.csv_dir, dataset.video_root)
    pd.testing.assert_frame_equal(read.pairs, again.pairs)


def test_pair_id_does_not_depend_on_delimiter_bom_or_line_ends(tmp_path):
    prompt = 'Make it "blue", then; fade\nout'
    lf = tmp_path / "a" / "local_change.csv"
    crlf = tmp_path / "b" / "local_change.csv"
    lf.parent.mkdir()
    crlf.parent.mkdir()
    lf.write_text(f'original_video,video,prompt\nx/s.mp4,x/t.mp4,"{prompt.replace(chr(34), 2 * chr(34))}"\n')
    quoted = prompt.replace('"', '""').replace("\n", "\r\n")
    crlf.write_bytes(
        (f'\ufeffextra;prompt;original_video;video\r\n1;"{quoted}";x/s.mp4;x/t.mp4\r\n').encode()
    )
    first = read_openve(lf.parent, tmp_path).pairs
    second = read_openve(crlf.parent, tmp_path).pairs
    assert first["instruction"].tolist() == second["instruction"].tolist() == [prompt]
    assert first["pair_id"].tolist() == second["pair_id"].tolist()


def test_absolute_paths_are_kept(tmp_path):
    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "global_style.csv").write_text(
        "original_video,video,prompt\n/data/s.mp4,t.mp4,restyle\n"
    )
    pairs = read_openve(tmp_path / "csv", tmp_path / "videos").pairs
    assert pairs["source_path"].tolist() == ["/data/s.mp4"]
    assert pairs["target_path"].tolist() == [str((tmp_path / "videos" / "t.mp4").resolve())]


def test_malformed_and_repeated_rows_are_rejections_naming_file_and_row(tmp_path):
    (tmp_path / "local_add.csv").write_text(
        "original_video,video,prompt\n"
        "a.mp4,b.mp4,add a hat\n"
        "a.mp4,,add a hat\n"  # row 2: no target
        "c.mp4,d.mp4\n"  # row 3: no prompt column at all
        "\n"  # blank line: not a row
        "e.mp4,f.mp4,add a cat,unquoted, comma\n"  # row 4: more fields than the header
        "a.mp4,b.mp4,add a hat\n"  # row 5: the same pair as row 1
    )
    result = read_openve(tmp_path, tmp_path)
    assert result.pairs["csv_row"].tolist() == [1]
    reasons = result.rejections["reason"].tolist()
    assert reasons == ["malformed_row", "malformed_row", "malformed_row", "duplicate_row"]
    details = result.rejections["detail"].tolist()
    assert "row 2 (line 3) of local_add.csv" in details[0] and "video" in details[0]
    assert "row 3 (line 4) of local_add.csv" in details[1] and "prompt" in details[1]
    assert "row 4 (line 6) of local_add.csv" in details[2] and "fields" in details[2]
    assert "row 1 of local_add.csv" in details[3] and "row 5 of local_add.csv" in details[3]
    assert set(result.rejections["stage"]) == {"read"}
    assert result.rows_per_category == {"local_add": 5}


def test_missing_csvs_and_columns_are_clear_errors(tmp_path):
    (tmp_path / "global_style.csv").write_text("source,target,text\na,b,c\n")
    with pytest.raises(ValueError, match=r"global_style\.csv.*original_video"):
        read_openve(tmp_path, tmp_path)
    with pytest.raises(FileNotFoundError, match="local_add"):
        find_csvs(tmp_path, ["local_add"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no \*\.csv"):
        find_csvs(tmp_path / "empty")


# the demo recipe's [shards.clip]: the generated clips' own size and length
DEMO_CLIP = ClipConfig(num_frames=17, fps=0.0, buckets=((64, 64),))


def test_probe_gives_each_broken_row_its_reason(dataset, read):
    probed = probe_pairs(read.pairs, min_frames=9, clip=DEMO_CLIP)
    rejected = {(r.category, int(r.csv_row)): r.reason for r in probed[probed["reason"].notna()].itertuples()}
    for _, r in read.rejections.iterrows():
        category = next(c for c in CATEGORIES if f"of {c}.csv" in r["detail"])
        row = int(r["detail"].split("row ")[1].split(" ")[0])
        rejected[(category, row)] = r["reason"]
    assert rejected == dataset.expected_rejections
    for detail in probed.loc[probed["reason"].notna(), "detail"]:
        assert ".mp4" in detail and ".csv)" in detail  # names the video and the CSV row


def test_untrainable_pairs_pass_a_probe_without_clip_settings(dataset, read):
    untrainable = {k for k, v in dataset.expected_rejections.items() if v in ("misaligned", "too_small")}
    assert len(untrainable) == 2
    rows = read.pairs[
        [
            (c, int(r)) in untrainable
            for c, r in zip(read.pairs["category"], read.pairs["csv_row"], strict=True)
        ]
    ]
    assert probe_pairs(rows, min_frames=9)["reason"].isna().all()
    checked = probe_pairs(rows, min_frames=9, clip=DEMO_CLIP)
    assert sorted(checked["reason"]) == ["misaligned", "too_small"]
    misaligned = checked.loc[checked["reason"] == "misaligned", "detail"].iloc[0]
    assert "source has 17 frames, target 25" in misaligned and "_src.mp4" in misaligned


def test_probe_reads_frames_fps_and_size(dataset, read):
    good = probe_pairs(read.pairs.head(2), min_frames=9)
    assert good["reason"].isna().all()
    info = probe(good["source_path"].iloc[0])
    assert (good["num_frames"].iloc[0], good["width"].iloc[0], good["height"].iloc[0]) == (17, 64, 64)
    assert info.num_frames == 17 and abs(good["fps"].iloc[0] - 8.0) < 1e-6


def test_min_frames_is_the_recipe_value(read):
    head = read.pairs.head(1)
    assert probe_pairs(head, min_frames=17)["reason"].isna().all()
    assert probe_pairs(head, min_frames=18)["reason"].tolist() == ["too_short"]


def test_a_byte_that_is_not_utf8_does_not_stop_the_read(tmp_path):
    """A Windows-1252 "é" in one prompt (as crawled CSVs have) is read as "é" and recorded; a byte that is
    neither UTF-8 nor Windows-1252 makes its row a malformed_row naming file and row; the rest is read."""
    csv_dir = tmp_path / "csv"
    csv_dir.mkdir()
    lines = [
        "original_video,video,prompt",
        "a.mp4,b.mp4,Add a caf\u00e9 sign",  # written as Windows-1252 below: one byte 0xE9
        "c.mp4,d.mp4,Make it \u2019snowy\u2019",  # written as UTF-8 (a multi-byte character)
        "e.mp4,f.mp4,BROKEN",
        "g.mp4,h.mp4,Remove the dog",
    ]
    raw = "\n".join(lines).encode("utf-8").replace("caf\u00e9".encode(), "caf\u00e9".encode("cp1252"))
    raw = raw.replace(b"BROKEN", b"bad \x81 byte")  # 0x81: undefined in Windows-1252
    (csv_dir / "local_add.csv").write_bytes(raw)
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")  # the file really is not UTF-8

    read = read_openve(csv_dir, tmp_path)
    assert read.pairs["instruction"].tolist() == [
        "Add a caf\u00e9 sign",
        "Make it \u2019snowy\u2019",
        "Remove the dog",
    ]
    assert read.pairs["pair_id"].iloc[0] == make_pair_id("openve", "a.mp4", "b.mp4", "Add a caf\u00e9 sign")
    assert len(read.notes) == 1 and "row 1" in read.notes[0] and "local_add.csv" in read.notes[0]
    assert "e9" in read.notes[0]
    (rejection,) = read.rejections.to_dict("records")
    assert rejection["reason"] == "malformed_row" and rejection["stage"] == "read"
    assert (
        "row 3" in rejection["detail"]
        and "local_add.csv" in rejection["detail"]
        and "0x81" in rejection["detail"]
    )
    assert read.rows_per_category == {"local_add": 4}


def test_the_judge_never_sees_a_pair_the_probe_rejects(dataset, read):
    """The filter's own stages (probe, then score) over every read pair, without Ray: the judge stage's
    worker is replaced by one that counts what it is given."""
    from pipelines.filter import FilterConfig, scoring_stages
    from pipelines.stage import Worker, apply_stage

    class CountingJudge(Worker):
        def __init__(self):
            self.seen: list[str] = []

        def process_batch(self, rows):
            self.seen += [r["pair_id"] for r in rows]
            return [{"score": 9.5} for _ in rows]

    config = FilterConfig(csv_dir="x", video_root="x", min_frames=9, clip=DEMO_CLIP)
    probe, score = scoring_stages(config)
    rows = apply_stage(probe, probe.worker(), read.pairs.to_dict("records"))
    judge = CountingJudge()
    rows = apply_stage(score, judge, rows)
    rejected = {r["pair_id"]: r["reason"] for r in rows if r.get("reason")}
    assert {"misaligned", "too_small", "too_short", "missing_file", "undecodable"} <= set(rejected.values())
    assert sorted(judge.seen) == sorted(set(read.pairs["pair_id"]) - set(rejected))
    assert len(judge.seen) == len(read.pairs) - sum(
        v != "malformed_row" for v in dataset.expected_rejections.values()
    )
