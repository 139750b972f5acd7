"""The shared foundation: pair-manifest contract, recipes, video I/O."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from dataengine.formats.manifest import (
    PAIR_COLUMNS,
    make_pair_id,
    read_metadata,
    read_pairs,
    rejections_frame,
    write_pairs,
    write_rejections,
)
from dataengine.formats.recipe import apply_overrides, build_config, load_recipe, load_step_config
from dataengine.media.video import VideoError, probe, read_frames, sample_indices, write_mp4


def _pairs(n: int) -> pd.DataFrame:
    rows = []
    for i in range(n):
        src, tgt, text = f"src/{i}.mp4", f"tgt/{i}.mp4", f"edit {i}"
        rows.append(
            {
                "pair_id": make_pair_id("openve", src, tgt, text),
                "origin": "openve",
                "category": "local_add",
                "instruction": text,
                "source_path": src,
                "target_path": tgt,
                "reference_path": None,
                "score": 9.5,
                "num_frames": 33,
                "fps": 16.0,
                "width": 64,
                "height": 64,
            }
        )
    return pd.DataFrame(rows)


def test_pair_id_is_stable_and_depends_on_every_field():
    base = make_pair_id("openve", "a.mp4", "b.mp4", "add a hat")
    assert base == make_pair_id("openve", "a.mp4", "b.mp4", "add a hat")
    variants = [
        ("portrait", "a.mp4", "b.mp4", "add a hat"),
        ("openve", "x.mp4", "b.mp4", "add a hat"),
        ("openve", "a.mp4", "x.mp4", "add a hat"),
        ("openve", "a.mp4", "b.mp4", "add a cap"),
    ]
    assert len({base, *(make_pair_id(*v) for v in variants)}) == 5
    # Field boundaries matter: moving a character between fields changes the id.
    assert make_pair_id("openve", "ab", "c", "t") != make_pair_id("openve", "a", "bc", "t")


def test_manifest_roundtrip_metadata_and_contract_errors(tmp_path):
    frame = _pairs(3)
    write_pairs(
        frame,
        tmp_path / "m.parquet",
        metadata={"recipe": {"threshold": 9.3}, "judge_model": "Qwen/Qwen3-VL-8B-Instruct"},
    )
    back = read_pairs(tmp_path / "m.parquet")
    assert list(back.columns) == PAIR_COLUMNS
    pd.testing.assert_frame_equal(back, frame.astype(back.dtypes.to_dict()), check_dtype=False)
    meta = read_metadata(tmp_path / "m.parquet")
    assert meta["recipe"] == {"threshold": 9.3} and meta["judge_model"] == "Qwen/Qwen3-VL-8B-Instruct"
    assert "tool_version" in meta and "created_unix" in meta
    with pytest.raises(ValueError, match="more than once"):
        write_pairs(pd.concat([frame, frame.iloc[:1]]), tmp_path / "dup.parquet")
    with pytest.raises(ValueError, match="missing columns"):
        write_pairs(frame.drop(columns=["fps"]), tmp_path / "bad.parquet")
    write_rejections(rejections_frame([]), tmp_path / "r.parquet")
    assert len(pd.read_parquet(tmp_path / "r.parquet")) == 0


@dataclasses.dataclass
class _Inner:
    size: int = 1


@dataclasses.dataclass
class _Config:
    threshold: float = 9.3
    categories: tuple[str, ...] = ()
    inner: _Inner = dataclasses.field(default_factory=_Inner)
    model: str | None = None


def test_recipe_overrides_and_unknown_keys(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text('run = "x"\n[filter]\nthreshold = 9\ncategories = ["a", "b"]\n[filter.inner]\nsize = 2\n')
    recipe = load_recipe(path, ["filter.threshold=8.5", "filter.model=Qwen/Qwen3-VL-8B-Instruct", "run=y"])
    config = build_config(_Config, recipe["filter"], "filter")
    assert config == _Config(
        threshold=8.5, categories=("a", "b"), inner=_Inner(2), model="Qwen/Qwen3-VL-8B-Instruct"
    )
    assert recipe["run"] == "y"
    assert isinstance(build_config(_Config, {"threshold": 9}).threshold, float)
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['treshold'\]"):
        build_config(_Config, {"treshold": 9.0}, "filter")
    with pytest.raises(ValueError, match="section.key=value"):
        apply_overrides({}, ["nonsense"])
    config, run = load_step_config(_Config, path, "filter", ["filter.threshold=7"])
    assert (config.threshold, config.inner, run) == (7.0, _Inner(2), "x")
    path.write_text("[filter]\nthreshold = 9\n")  # no `run`: the recipe's file name
    assert load_step_config(_Config, path, "filter")[1] == "r"


def _moving_square(num_frames: int, size: int = 64) -> np.ndarray:
    frames = np.zeros((num_frames, size, size, 3), np.uint8)
    for t in range(num_frames):
        frames[t, 10:30, 2 * t : 2 * t + 20] = (250, 40, 40)
    return frames


def test_video_write_probe_read_roundtrip(tmp_path):
    frames = _moving_square(17)
    write_mp4(tmp_path / "v.mp4", frames, fps=16)
    info = probe(tmp_path / "v.mp4")
    assert (info.num_frames, info.width, info.height) == (17, 64, 64)
    assert info.fps == pytest.approx(16.0)
    back = read_frames(tmp_path / "v.mp4", [0, 16])
    # H.264 is lossy: compare with a tolerance, and check the motion survived (square moved 32 px).
    assert np.abs(back.astype(int) - frames[[0, 16]].astype(int)).mean() < 6
    assert back[1, 20, 40, 0] > 200 and back[0, 20, 40, 0] < 60


def test_video_errors_carry_a_reason(tmp_path):
    with pytest.raises(VideoError) as err:
        probe(tmp_path / "missing.mp4")
    assert err.value.reason == "missing_file"
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(VideoError) as err:
        probe(tmp_path / "empty.mp4")
    assert err.value.reason == "undecodable" and "0 bytes" in err.value.detail
    write_mp4(tmp_path / "v.mp4", _moving_square(9), fps=8)
    data = (tmp_path / "v.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 3])
    with pytest.raises(VideoError) as err:
        probe(tmp_path / "cut.mp4")
    assert err.value.reason == "undecodable"
    with pytest.raises(VideoError) as err:
        read_frames(tmp_path / "v.mp4", [0, 20])
    assert err.value.reason == "too_short"


def test_sample_indices_resamples_by_time():
    assert sample_indices(32, 16, 8).tolist() == list(range(0, 32, 2))
    assert sample_indices(10, 10, 20).tolist() == [i // 2 for i in range(19)]  # 0.9 s: 19 ticks at 20 fps
    assert sample_indices(100, 25, 5, max_frames=3).tolist() == [0, 5, 10]


def test_yuv_conversion_matches_ffmpeg_and_encoding_is_byte_stable(tmp_path):
    import av

    from dataengine.media.video import rgb_to_yuv420p

    # A smooth frame (chroma is subsampled, and swscale's chroma filter differs from our 2x2 mean on noise).
    yy, xx = np.mgrid[0:34, 0:50]
    frame = np.stack([xx * 5, yy * 7, 255 - xx * 3 - yy * 2], axis=-1).astype(np.uint8)
    ours = rgb_to_yuv420p(frame)
    # FFmpeg's own conversion (swscale, BT.601 limited range) is the independent reference.
    theirs = av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(format="yuv420p").to_ndarray()
    assert ours.shape == theirs.shape == (51, 50)
    assert np.abs(ours[:34].astype(int) - theirs[:34].astype(int)).max() <= 1  # luma
    assert np.abs(ours[34:].astype(int) - theirs[34:].astype(int)).mean() < 1.0  # chroma
    frames = _moving_square(9)
    write_mp4(tmp_path / "a.mp4", frames, fps=8)
    write_mp4(tmp_path / "b.mp4", frames, fps=8)
    assert (tmp_path / "a.mp4").read_bytes() == (tmp_path / "b.mp4").read_bytes()


def test_a_clip_decord_cannot_decode_is_read_with_pyav(tmp_path):
    """decord returns 4-channel frames for some sizes (72x40 here) and fails; PyAV reads the same file."""
    import av

    ramp = np.linspace(0, 255, 72, dtype=np.float64)[None, :, None]
    frames = np.stack([np.broadcast_to(ramp + 4 * t, (40, 72, 3)) for t in range(17)]).clip(0, 255)
    frames = frames.astype(np.uint8)
    path = tmp_path / "narrow.mp4"
    write_mp4(path, frames, fps=16)
    import decord

    with pytest.raises(Exception, match="size must exactly match"):  # the decord failure this guards against
        decord.VideoReader(str(path)).get_batch([16]).asnumpy()
    info = probe(path)
    assert (info.num_frames, info.width, info.height, info.fps) == (17, 72, 40, 16.0)
    back = read_frames(path, [0, 16, 3])
    with av.open(str(path)) as container:  # the reference: PyAV's own decode of the same frames
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    np.testing.assert_array_equal(back, np.stack([decoded[0], decoded[16], decoded[3]]))
    assert np.abs(back.astype(int) - frames[[0, 16, 3]].astype(int)).mean() < 4  # and it is the clip

    (tmp_path / "garbage.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    with pytest.raises(VideoError) as err:
        probe(tmp_path / "garbage.mp4")
    assert err.value.reason == "undecodable"
    assert "decord:" in err.value.detail and "PyAV:" in err.value.detail  # both were tried
