"""Video I/O: PyAV writes H.264 mp4, decord probes and decodes (PyAV when decord cannot).

Frames are ``uint8`` arrays of shape ``(T, H, W, 3)`` in RGB order everywhere in the project.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from dataengine.formats.atomic import atomic_path


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
    rate = Fraction(fps).limit_denominator(1001)
    with atomic_path(path, keep_suffix=True) as tmp, av.open(str(tmp), mode="w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": str(crf), "preset": "veryfast"}
        for frame in frames:
            yuv = av.VideoFrame.from_ndarray(rgb_to_yuv420p(frame), format="yuv420p")
            for packet in stream.encode(yuv):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def local_file(location: str | os.PathLike, folder: str | os.PathLike) -> Path:
    """``location`` as a local file: a path as it is; a URL (``https://``, ``s3://``, ``hf://``, ...: fsspec)
    downloaded into ``folder`` under its own name (decoders read local files)."""
    from dataengine.formats.layout import is_url

    text = str(location)
    if not is_url(text) or text.startswith("file://"):
        return Path(text.removeprefix("file://"))
    import shutil

    import fsspec

    target = Path(folder) / (text.split("?")[0].rstrip("/").rsplit("/", 1)[-1] or "download")
    try:
        with fsspec.open(text, "rb") as source, open(target, "wb") as out:
            shutil.copyfileobj(source, out, 1 << 22)
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot download {text}: {type(err).__name__}: {err}") from err
    return target


def _first_line(err: BaseException, limit: int = 200) -> str:
    return (str(err).splitlines() or [type(err).__name__])[0][:limit]


def _check_exists(path: str | os.PathLike) -> None:
    path = Path(path)
    if not path.exists():
        raise VideoError(path, "missing_file", "no such file")
    if path.stat().st_size == 0:
        raise VideoError(path, "undecodable", "file is empty (0 bytes)")


def _open(path: str | os.PathLike):
    import decord

    decord.logging.set_level(decord.logging.QUIET)  # FFmpeg's per-file messages: the error below says it
    try:
        return decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    except Exception as err:  # decord raises DECORDError / RuntimeError for corrupt files
        raise VideoError(path, "undecodable", f"decord cannot open it: {_first_line(err)}") from err


def _probe_decord(path: str | os.PathLike, check_last_frame: bool) -> VideoInfo:
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
                f"last frame ({num_frames - 1}) does not decode: truncated? {_first_line(err, 160)}",
            ) from err
    return VideoInfo(
        num_frames=num_frames, fps=float(reader.get_avg_fps()), width=int(width), height=int(height)
    )


def _read_decord(path: str | os.PathLike, indices: list[int] | None) -> np.ndarray:
    reader = _open(path)
    indices = list(range(len(reader))) if indices is None else indices
    if indices and (min(indices) < 0 or max(indices) >= len(reader)):
        raise VideoError(path, "too_short", f"asked for frame {max(indices)} of a {len(reader)}-frame video")
    try:
        frames = reader.get_batch(indices).asnumpy()
    except Exception as err:
        raise VideoError(path, "undecodable", f"decode failed: {_first_line(err)}") from err
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise VideoError(path, "undecodable", f"decord returned frames of shape {frames.shape}")
    return frames


def _decode_av(
    path: str | os.PathLike, wanted: set[int] | None, to_the_end: bool = False
) -> tuple[dict[int, np.ndarray], int, float]:
    """PyAV: the frames at ``wanted`` (all when None) as RGB arrays, the number of frames decoded (up to the
    last wanted one, or all with ``to_the_end``: then fewer than the container declares is an error) and
    the fps."""
    import av

    frames: dict[int, np.ndarray] = {}
    count = 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0.0)
        last = max(wanted) if wanted and not to_the_end else None
        for count, frame in enumerate(container.decode(stream), start=1):
            if wanted is None or count - 1 in wanted:
                frames[count - 1] = frame.to_ndarray(format="rgb24")
            if last is not None and count - 1 >= last:
                break
        declared = int(stream.frames or 0)
        if (to_the_end or wanted is None) and declared and count < declared:
            raise ValueError(f"{count} of the {declared} frames the container declares decode: truncated?")
    return frames, count, fps


def _fallback(path: str | os.PathLike, decord_error: VideoError, read):
    """Try PyAV where decord failed (decord mis-decodes some frame sizes, e.g. 72x40: 4 channels); a
    video both fail on is ``undecodable`` with both reasons."""
    if decord_error.reason == "too_short":
        raise decord_error
    try:
        return read()
    except VideoError:
        raise
    except Exception as err:
        raise VideoError(
            path, "undecodable", f"decord: {decord_error.detail}; PyAV: {_first_line(err)}"
        ) from err


def probe(path: str | os.PathLike, check_last_frame: bool = True) -> VideoInfo:
    """Frame count, fps and size of a video, read with decord (PyAV when decord fails).

    With ``check_last_frame`` the last frame is decoded too, so a truncated file whose header promises
    more frames than it holds is caught here rather than in a later stage.
    """
    _check_exists(path)
    try:
        return _probe_decord(path, check_last_frame)
    except VideoError as err:
        decord_error = err

    def with_av() -> VideoInfo:  # decodes every frame: counts what really decodes, the last one included
        frames, count, fps = _decode_av(path, {0}, to_the_end=True)
        if count == 0:
            raise ValueError("no decodable frames")
        height, width = frames[0].shape[:2]
        return VideoInfo(num_frames=count, fps=fps, width=int(width), height=int(height))

    return _fallback(path, decord_error, with_av)


def read_frames(path: str | os.PathLike, indices: list[int] | np.ndarray | None = None) -> np.ndarray:
    """Decode frames (all, or those at ``indices``) as (T, H, W, 3) uint8 RGB, with decord (PyAV when it fails)."""
    _check_exists(path)
    indices = None if indices is None else [int(i) for i in indices]
    try:
        return _read_decord(path, indices)
    except VideoError as err:
        decord_error = err

    def with_av() -> np.ndarray:
        frames, count, _ = _decode_av(path, None if indices is None else set(indices))
        order = list(range(count)) if indices is None else indices
        missing = [i for i in order if i not in frames]
        if missing:
            raise VideoError(path, "too_short", f"asked for frame {max(missing)} of a {count}-frame video")
        if not order:
            raise ValueError("no decodable frames")
        return np.stack([frames[i] for i in order])

    return _fallback(path, decord_error, with_av)


def frames_at_rate(num_frames: int, src_fps: float, rate: float) -> int:
    """How many frames a clip of ``num_frames`` frames at ``src_fps`` holds at ``rate``: the ticks ``k / rate``
    (k = 0, 1, ...) that fall within its duration, from its first frame's time (0) to its last one's
    (``(num_frames - 1) / src_fps``). The one frame-count rule of the project: 97 frames at 24 fps span 4 s,
    65 ticks at 16 fps; 121 frames at 24 fps span 5 s, 81 ticks."""
    if rate <= 0 or src_fps <= 0:
        raise ValueError(f"fps must be positive, got src={src_fps} target={rate}")
    if num_frames < 1:
        return 0
    return int(np.floor((num_frames - 1) * rate / src_fps + 1e-6)) + 1  # 1e-6: 23.976 * k / 16 exact ticks


def sample_indices(
    num_frames: int, src_fps: float, target_fps: float, max_frames: int | None = None
) -> np.ndarray:
    """Indices that resample a ``num_frames`` clip at ``src_fps`` to ``target_fps``: for each of the
    :func:`frames_at_rate` ticks, the frame shown at that time (the latest frame whose time is not after it)."""
    count = max(1, frames_at_rate(num_frames, src_fps, target_fps))
    if max_frames is not None:
        count = min(count, max_frames)
    idx = np.floor(np.arange(count) * src_fps / target_fps + 1e-6).astype(np.int64)
    assert num_frames < 1 or idx[-1] <= num_frames - 1, (num_frames, src_fps, target_fps)
    return np.clip(idx, 0, max(num_frames - 1, 0))
