"""Clip preparation: frame sampling, source/target alignment, bucket fitting, reference, rejections."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from PIL import Image
from shards_inputs import clip_frames, index_of, write_pair

from dataengine.media.clips import (
    ClipConfig,
    ClipRejection,
    choose_bucket,
    plan_clip,
    prepare_pair,
    resize_and_crop,
)
from dataengine.media.clips import clip_frames as frames_at_rate
from dataengine.media.video import VideoInfo, sample_indices, write_mp4
from dataengine.media.video import frames_at_rate as count_at_rate


def test_config_validates_frame_count_and_buckets():
    with pytest.raises(ValueError, match="4n \\+ 1"):
        ClipConfig(num_frames=80)
    with pytest.raises(ValueError, match="multiples of 16"):
        ClipConfig(buckets=((720, 1270),))
    assert ClipConfig(num_frames=17, buckets=[[64, 64]]).buckets == ((64, 64),)


def test_bucket_is_nearest_in_aspect_ratio():
    buckets = ((720, 1280), (1280, 720), (960, 960))
    assert choose_bucket(1080, 1920, buckets) == (720, 1280)
    assert choose_bucket(1920, 1080, buckets) == (1280, 720)
    assert choose_bucket(1000, 1100, buckets) == (960, 960)
    assert choose_bucket(700, 1000, buckets) == (720, 1280)  # 1.43: |log 1.43 - log 1.78| = 0.22 < 0.36


def test_source_and_target_sampled_at_the_same_indices(tmp_path):
    # 40 frames at 32 fps resampled to 16 fps: every other frame, 0, 2, ..., 32.
    src, tgt = write_pair(tmp_path, "p", num_frames=40, fps=32.0)
    config = ClipConfig(num_frames=17, fps=16.0, buckets=((64, 64),))
    pair = prepare_pair(src, tgt, None, config)
    expected = list(range(0, 34, 2))
    assert pair.frame_indices.tolist() == expected
    assert pair.source.shape == pair.target.shape == (17, 64, 64, 3)
    assert [index_of(f) for f in pair.source] == expected
    assert [index_of(f, target=True) for f in pair.target] == expected
    assert pair.fps == 16.0
    # The reference defaults to the target's first prepared frame.
    np.testing.assert_array_equal(pair.reference, pair.target[0])


def test_native_rate_takes_consecutive_frames(tmp_path):
    src, tgt = write_pair(tmp_path, "p", num_frames=21, fps=10.0)
    pair = prepare_pair(src, tgt, None, ClipConfig(num_frames=17, fps=0.0, buckets=((64, 64),)))
    assert [index_of(f) for f in pair.source] == list(range(17))
    assert pair.fps == pytest.approx(10.0)


def test_resize_and_centre_crop_match_an_independent_resize():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (2, 96, 128, 3), dtype=np.uint8)
    frames = np.repeat(
        np.repeat(frames[:, ::8, ::8], 8, axis=1), 8, axis=2
    )  # smooth blocks: resampling agrees
    out = resize_and_crop(frames, (32, 32))
    # cover 32x32 from 96x128: scale 1/3 -> 32x43, centre crop columns 5..37
    ref = np.stack(
        [np.asarray(Image.fromarray(f).resize((43, 32), Image.Resampling.BILINEAR)) for f in frames]
    )
    ref = ref[:, :, 5:37]
    assert out.shape == (2, 32, 32, 3)
    assert np.abs(out.astype(int) - ref.astype(int)).mean() < 6.0


def test_crop_keeps_the_centre(tmp_path):
    # 64 x 96 (w) into a 64x64 bucket: no resize, the 16 columns on each side go.
    frames = np.zeros((5, 64, 96, 3), np.uint8)
    frames[:, :, :16] = 255
    frames[:, :, -16:] = 128
    frames[:, :, 16:-16] = 60
    out = resize_and_crop(frames, (64, 64))
    np.testing.assert_array_equal(out, np.full((5, 64, 64, 3), 60, np.uint8))


def test_reference_from_the_manifest_is_fitted_like_the_clips(tmp_path):
    src, tgt = write_pair(tmp_path, "p", num_frames=17, height=64, width=64)
    image = np.zeros((128, 128, 3), np.uint8)
    image[:, :, 0] = 200
    path = tmp_path / "ref.png"
    Image.fromarray(image).save(path)
    pair = prepare_pair(src, tgt, path, ClipConfig(num_frames=17, fps=16.0, buckets=((64, 64),)))
    assert pair.reference.shape == (64, 64, 3)
    np.testing.assert_array_equal(pair.reference[..., 0], 200)


def _reason(src, tgt, config, reference=None, expected_shape=None) -> str:
    with pytest.raises(ClipRejection) as info:
        prepare_pair(src, tgt, reference, config, expected_shape=expected_shape)
    return info.value.reason


def test_rejections_have_reasons(tmp_path):
    config = ClipConfig(num_frames=17, fps=16.0, buckets=((64, 64),))
    src, tgt = write_pair(tmp_path, "ok", num_frames=17)
    assert _reason(tmp_path / "nope.mp4", tgt, config) == "missing_file"
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video" * 100)
    assert _reason(src, garbage, config) == "undecodable"
    short_src, short_tgt = write_pair(tmp_path, "short", num_frames=9)
    assert _reason(short_src, short_tgt, config) == "too_short"
    a, b = write_pair(tmp_path, "counts", num_frames=17, target_frames=21)
    assert _reason(a, b, config) == "misaligned"
    a, b = write_pair(tmp_path, "rates", num_frames=17, target_fps=24.0)
    assert _reason(a, b, config) == "misaligned"
    a, b = write_pair(tmp_path, "aspect", num_frames=17, target_size=(64, 96))
    assert _reason(a, b, config) == "misaligned"
    small_src, small_tgt = write_pair(tmp_path, "small", num_frames=17, height=32, width=32)
    assert _reason(small_src, small_tgt, config) == "too_small"
    assert _reason(src, tgt, config, reference=tmp_path / "missing.png") == "missing_file"
    bad_png = tmp_path / "bad.png"
    bad_png.write_bytes(b"\x89PNG broken")
    assert _reason(src, tgt, config, reference=bad_png) == "undecodable"
    wide = ClipConfig(num_frames=17, fps=16.0, buckets=((64, 64), (64, 128)))
    assert _reason(src, tgt, wide, expected_shape=(5, 8, 16)) == "manifest_mismatch"  # the 64x128 bucket
    longer = ClipConfig(num_frames=33, min_frames=9, fps=16.0, buckets=((64, 64),))
    assert _reason(src, tgt, longer, expected_shape=(9, 8, 8)) == "manifest_mismatch"  # 33 frames, not 17


def test_frame_difference_tolerance(tmp_path):
    a, b = write_pair(tmp_path, "p", num_frames=17, target_frames=18)
    strict = ClipConfig(num_frames=17, fps=16.0, buckets=((64, 64),))
    with pytest.raises(ClipRejection):
        prepare_pair(a, b, None, strict)
    loose = ClipConfig(num_frames=17, fps=16.0, buckets=((64, 64),), max_frame_difference=1)
    pair = prepare_pair(a, b, None, loose)
    assert [index_of(f, target=True) for f in pair.target] == list(range(17))


def test_truncated_video_is_undecodable(tmp_path):
    path = tmp_path / "full.mp4"
    write_mp4(path, clip_frames(17, 64, 64), 16.0)
    data = path.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 3])
    config = ClipConfig(num_frames=17, fps=16.0, buckets=((64, 64),))
    with pytest.raises(ClipRejection) as info:
        prepare_pair(cut, path, None, config)
    assert info.value.reason in ("undecodable", "too_short", "misaligned")


def clip_from_timestamps(frames: int, fps: str, mode: str, longest: int = 81) -> tuple[list[int], Fraction]:
    """The paper recipe's clip (docs/shards.md) worked from timestamps, in exact fractions: frame i of the
    video is at i / fps; a 16 fps tick k / 16 is in the clip while it is not after the last frame's time and
    shows the latest frame not after it. "native" takes consecutive frames when 16 fps gives fewer than
    ``longest`` and the video has more; then the longest 4n + 1 of them, at most ``longest``."""
    rate, tick = Fraction(fps), Fraction(1, 16)
    times = [Fraction(i) / rate for i in range(frames)]
    indices: list[int] = []
    while len(indices) * tick <= times[-1]:
        t = len(indices) * tick
        indices.append(max(i for i, time in enumerate(times) if time <= t))
    clip_rate = Fraction(16)
    if mode == "native" and len(indices) < longest and rate > 16 and frames > len(indices):
        indices, clip_rate = list(range(frames)), rate
    count = max(n for n in range(1, min(len(indices), longest) + 1) if n % 4 == 1)
    return indices[:count], clip_rate


RATES = ("23.976", "24", "25", "29.97", "30")  # OpenVE-3M's rates; its clips have 65 to 129 frames


@pytest.mark.parametrize("fps", RATES)
@pytest.mark.parametrize("mode", ["fps", "native"])
def test_frame_count_rule_from_timestamps(fps, mode):
    config = ClipConfig(num_frames=81, min_frames=33, fps=16.0, short_clip_fps=mode)
    for frames in range(65, 130):
        info = VideoInfo(frames, float(fps), 1280, 720)
        expected, rate = clip_from_timestamps(frames, fps, mode)
        indices, got_rate = frames_at_rate(info, config)
        assert (indices.tolist(), got_rate) == (expected, pytest.approx(float(rate))), (frames, fps, mode)
        assert plan_clip(info, None, config).latent_shape == (len(range(0, len(expected), 4)), 90, 160)


def test_frame_counts_of_the_issue():
    # 97 frames at 24 fps span 4 s: 65 ticks at 16 fps (floor(N / f * 16) counted 64, hence 61 frames)
    assert count_at_rate(97, 24.0, 16.0) == 65
    assert len(sample_indices(97, 24.0, 16.0)) == 65
    paper = ClipConfig(num_frames=81, min_frames=65, fps=16.0, short_clip_fps="native")
    indices, rate = frames_at_rate(VideoInfo(97, 24.0, 1280, 720), ClipConfig(num_frames=81, min_frames=65))
    assert (len(indices), rate, indices[-1]) == (65, 16.0, 96)  # the last tick (4 s) shows the last frame
    # 121 frames at 24 fps span 5 s: 81 frames at 16 fps, not the native-rate fallback
    indices, rate = frames_at_rate(VideoInfo(121, 24.0, 1280, 720), paper)
    assert (len(indices), rate, indices[-1]) == (81, 16.0, 120)
    # upsampling: 10 frames at 10 fps span 0.9 s, 19 ticks at 20 fps
    assert sample_indices(10, 10.0, 20.0).tolist() == [i // 2 for i in range(19)]


def test_frame_count_rule_limits():
    info = VideoInfo(65, 30.0, 1280, 720)
    with pytest.raises(ClipRejection, match="need at least 65") as err:  # 33 frames at 16 fps
        frames_at_rate(info, ClipConfig(num_frames=81, min_frames=65, fps=16.0))
    assert err.value.reason == "too_short"
    with pytest.raises(ClipRejection, match="need 81"):  # min_frames 0: exactly num_frames
        frames_at_rate(info, ClipConfig(num_frames=81, fps=0.0))
    indices, rate = frames_at_rate(
        VideoInfo(72, 24.0, 64, 64), ClipConfig(num_frames=81, min_frames=17, fps=0.0)
    )
    assert (len(indices), rate) == (69, 24.0)  # native: 72 -> 69
    with pytest.raises(ValueError, match="min_frames"):
        ClipConfig(num_frames=81, min_frames=35)
    with pytest.raises(ValueError, match="more than"):
        ClipConfig(num_frames=33, min_frames=81)
    assert ClipConfig(num_frames=81, min_frames=65).frame_counts == (81, 77, 73, 69, 65)


def test_pair_shorter_than_num_frames_gets_the_longest_clip_it_has(tmp_path):
    src, tgt = write_pair(tmp_path, "p", num_frames=30, fps=8.0)
    config = ClipConfig(num_frames=33, min_frames=9, fps=0.0, buckets=((64, 64),))
    pair = prepare_pair(src, tgt, None, config, expected_shape=(8, 8, 8))  # 29 frames -> T' = 8
    assert pair.source.shape == pair.target.shape == (29, 64, 64, 3)
    assert [index_of(f) for f in pair.source] == list(range(29))
    assert [index_of(f, target=True) for f in pair.target] == list(range(29))
