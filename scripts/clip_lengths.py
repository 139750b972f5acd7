"""The clip-length tables of docs/shards.md, computed with the rule the filter's probe and the shards step
use (``dataengine.media.clips.clip_frames``): ``python scripts/clip_lengths.py``.

For each way of sampling (16 fps with fewer frames, the native rate, the recipe's 16 fps when long enough
else native) it prints what a few clips become and, per frame rate, the shortest clip of 65..129 frames that
still gives ``min_frames`` (65, then 81).
"""

from __future__ import annotations

from dataengine.media.clips import ClipConfig, ClipRejection, clip_frames
from dataengine.media.video import VideoInfo

MODES = {
    "at 16 fps, fewer frames": {"fps": 16.0, "short_clip_fps": "fps"},
    "native rate": {"fps": 0.0},
    "16 fps if long enough, else native (the recipe)": {"fps": 16.0, "short_clip_fps": "native"},
}
EXAMPLES = ((65, 30.0), (65, 24.0), (100, 25.0), (97, 24.0), (121, 24.0), (129, 30.0), (129, 24.0))
RATES = (23.976, 24.0, 25.0, 29.97, 30.0)
FRAMES = range(65, 130)  # OpenVE-3M's clip lengths


def clip(frames: int, fps: float, min_frames: int, mode: dict) -> tuple[int, float] | None:
    config = ClipConfig(num_frames=81, min_frames=min_frames, **mode)
    try:
        indices, rate = clip_frames(VideoInfo(frames, fps, 1280, 720), config)
    except ClipRejection:
        return None
    return len(indices), rate


def main() -> None:
    print("| clip | " + " | ".join(MODES) + " |")
    print("|---" * (len(MODES) + 1) + "|")
    for frames, fps in EXAMPLES:
        cells = []
        for mode in MODES.values():
            count, rate = clip(frames, fps, 1, mode)
            cells.append(f"{count} at {rate:g} fps")
        span = (frames - 1) / fps
        print(f"| {frames} frames at {fps:g} fps ({span:.2f} s) | " + " | ".join(cells) + " |")
    for min_frames in (65, 81):
        print(f"\nkept with min_frames {min_frames} (shortest clip of 65..129 frames kept, per rate):\n")
        print("| mode | " + " | ".join(f"{r:g} fps" for r in RATES) + " |")
        print("|---" * (len(RATES) + 1) + "|")
        for name, mode in MODES.items():
            cells = []
            for fps in RATES:
                kept = [n for n in FRAMES if clip(n, fps, min_frames, mode)]
                cells.append(f"{min(kept)}+ frames" if kept else "none")
            print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
