"""Render a report page in headless Chromium and check the screenshot is not blank.

    python scripts/screenshot_report.py manifests/demo/report.html manifests/demo/report.png

Uses Debian's Chromium (``apt-get install -y chromium``) with a fresh profile, no network services and no
GPU. Exit code 0 when the PNG was written and is not blank (a blank page is one flat colour), 1 otherwise.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"


def screenshot(page: Path, out: Path, width: int = 1280, height: int = 3000, timeout: float = 120.0) -> Path:
    """Write a ``width`` x ``height`` PNG of ``page`` to ``out`` with headless Chromium."""
    if not Path(CHROMIUM).exists():
        raise FileNotFoundError(f"{CHROMIUM} not found: install it with `apt-get install -y chromium`")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        command = [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            f"--screenshot={out.resolve()}",
            f"--window-size={width},{height}",
            page.resolve().as_uri(),
        ]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0 or not out.exists():
        raise RuntimeError(f"chromium failed (exit {result.returncode}): {result.stderr[-2000:]}")
    return out


def blank_fraction(png: Path) -> float:
    """Fraction of pixels equal to the most common colour (1.0 for a blank page)."""
    import numpy as np
    from PIL import Image

    pixels = np.asarray(Image.open(png).convert("RGB")).reshape(-1, 3)
    _, counts = np.unique(pixels, axis=0, return_counts=True)
    return float(counts.max() / len(pixels))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", type=Path, help="the HTML page")
    parser.add_argument("out", type=Path, nargs="?", help="the PNG (default: beside the page)")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=3000)
    args = parser.parse_args()
    out = args.out or args.page.with_suffix(".png")
    screenshot(args.page, out, args.width, args.height)
    blank = blank_fraction(out)
    print(f"wrote {out}: {blank:.1%} of the pixels are the background colour")
    if blank > 0.995:
        print("the screenshot is blank", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
