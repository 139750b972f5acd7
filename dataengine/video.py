"""Video I/O: PyAV writes H.264 mp4, decord probes and decodes.

Frames are ``uint8`` arrays of shape ``(T, H, W, 3)`` in RGB order everywhere in the project.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class VideoInfo:
    """What a probe of a video file tells."""

    num_frames: int
    fps: float
    width: int
    height: int


class VideoError(Exception):
    """A video could not be read. ``reason`` is one of the rejection reasons."""

    def __init__(self, path: str | os.PathLike, reason: str, detail: str):
        super().__init__(f"{reason}: {path}: {detail}")
        self.path = str(path)
        self.reason = reason
        self.detail = detail


def rgb_to_yuv420p(frame: np.ndarray) -> np.ndarray:
    """One (H, W, 3) uint8 RGB frame as a planar yuv420p array ((H * 3 / 2), W), BT.601 limited range.

    Done here rather than by PyAV's swscale conversion, whose output was seen to differ between worker
    processes for identical frames. With it, repeated runs wrote identical mp4 bytes in most trials, not
    all: another source of difference between processes remains, not found yet.
    """
    rgb = frame.astype(np.float32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = 16.0 + (65.738 * r + 129.057 * g + 25.064 * b) / 256.0
    cb = 128.0 + (-37.945 * r - 74.494 * g + 112.439 * b) / 256.0
    cr = 128.0 + (112.439 * r - 94.154 * g - 18.285 * b) / 256.0
    height, width = y.shape

    def subsample(plane: np.ndarray) -> np.ndarray:  # 2x2 mean, (H/2, W/2)
        return plane.reshape(height // 2, 2, width // 2, 2).mean(axis=(1, 3))

    planes = np.concatenate([y.ravel(), subsample(cb).ravel(), subsample(cr).ravel()])  # Y, then U, then V
    return np.clip(np.rint(planes), 0, 255).astype(np.uint8).reshape(height * 3 // 2, width)


def write_mp4(path: str | os.PathLike, frames: np.ndarray, fps: float, crf: int = 18) -> None:
    """Write ``frames`` (T, H, W, 3) uint8 RGB as an H.264 mp4 (yuv420p), atomically.

    H.264 with yuv420p needs even width and height.
    """
    import av

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(
            f"write_mp4({path}): expected (T, H, W, 3) uint8 frames, got {frames.shape} {frames.dtype}"
        )
    num_frames, height, width, _ = frames.shape
    if num_frames == 0:
        raise ValueError(f"write_mp4({path}): no frames")
    if height % 2 or width % 2:
        raise ValueError(f"write_mp4({path}): H.264 needs even sizes, got {width}x{height}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(tmp), mode="w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": str(crf), "preset": "veryfast"}
        for frame in frames:
            yuv = av.VideoFrame.from_ndarray(rgb_to_yuv420p(frame), format="yuv420p")
            for packet in stream.encode(yuv):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    os.replace(tmp, path)


def _open(path: str | os.PathLike):
    import decord

    path = Path(path)
    if not path.exists():
        raise VideoError(path, "missing_file", "no such file")
    if path.stat().st_size == 0:
        raise VideoError(path, "undecodable", "file is empty (0 bytes)")
    try:
        return decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    except Exception as err:  # decord raises DECORDError / RuntimeError for corrupt files
        raise VideoError(
            path, "undecodable", f"decord cannot open it: {str(err).splitlines()[0][:200]}"
        ) from err


def probe(path: str | os.PathLike, check_last_frame: bool = True) -> VideoInfo:
    """Frame count, fps and size of a video, read with decord.

    With ``check_last_frame`` the last frame is decoded too, so a truncated file whose header promises
    more frames than it holds is caught here rather than in a later stage.
    """
    reader = _open(path)
    num_frames = len(reader)
    if num_frames == 0:
        raise VideoError(path, "undecodable", "no decodable frames")
    height, width = reader[0].shape[:2]
    if check_last_frame:
        try:
            reader.seek(0)
            reader.get_batch([num_frames - 1]).asnumpy()
        except Exception as err:
            raise VideoError(
                path,
                "undecodable",
                f"last frame ({num_frames - 1}) does not decode: truncated? {str(err).splitlines()[0][:160]}",
            ) from err
    return VideoInfo(
        num_frames=num_frames, fps=float(reader.get_avg_fps()), width=int(width), height=int(height)
    )


def read_frames(path: str | os.PathLike, indices: list[int] | np.ndarray | None = None) -> np.ndarray:
    """Decode frames (all, or those at ``indices``) as (T, H, W, 3) uint8 RGB."""
    reader = _open(path)
    if indices is None:
        indices = range(len(reader))
    indices = [int(i) for i in indices]
    if indices and (min(indices) < 0 or max(indices) >= len(reader)):
        raise VideoError(path, "too_short", f"asked for frame {max(indices)} of a {len(reader)}-frame video")
    try:
        return reader.get_batch(indices).asnumpy()
    except Exception as err:
        raise VideoError(path, "undecodable", f"decode failed: {str(err).splitlines()[0][:200]}") from err


def sample_indices(
    num_frames: int, src_fps: float, target_fps: float, max_frames: int | None = None
) -> np.ndarray:
    """Indices that resample a ``num_frames`` clip at ``src_fps`` to ``target_fps`` (nearest frame)."""
    if target_fps <= 0 or src_fps <= 0:
        raise ValueError(f"fps must be positive, got src={src_fps} target={target_fps}")
    duration = num_frames / src_fps
    count = max(1, int(np.floor(duration * target_fps + 1e-6)))
    if max_frames is not None:
        count = min(count, max_frames)
    idx = np.floor(np.arange(count) * src_fps / target_fps + 1e-6).astype(np.int64)
    return np.clip(idx, 0, num_frames - 1)
