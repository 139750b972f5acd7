"""The run report: one self-contained HTML page to look at a run's data rather than read numbers about it.

:func:`build_report` reads what the steps of a run wrote and renders one page with everything inlined (CSS,
SVG charts, thumbnails as base64 PNG data URIs: no external asset, it opens from a mail attachment):

1. per-category counts (pairs kept by the filter and the portrait step; read / scored / kept when the
   filter's ``summary.json`` is there) and rejections by stage and reason; per job (filter,
   harvest-portraits, synth-portraits, shards), the items each stage took in, kept and rejected by reason,
   as the job's runner counted them (its summary's ``stages``);
2. the score histogram of the judge's scores (inline SVG), with the selection threshold;
3. thumbnails of a seeded sample of pairs: source, target, reference, and for portraits the prompt frame
   with SAM2's prompt box(es) drawn on it (the detector's, or the fixed prior) next to the person mask;
4. shard statistics from ``index.json`` (buckets, samples, shards, bytes, models);
5. the loss curve of the training run from ``metrics.jsonl`` (inline SVG);
6. the layer diagnostic (``dataengine diagnose-layers``): R_mask against depth and the layer pair it picks;
7. the evaluation of the training run (``trainer eval``, in its ``eval/`` folder): the six-dimension table of
   means per method and subset, and a few pairs side by side (source, reference, every method's edit) with
   their scores; and the OpenVE-Bench-style table per category and overall, with the published reference rows
   labelled by judge, and a few of its pairs side by side (source, every method's edit with its three axes).

Every part degrades on its own: a step that did not run shows "not run" and the file it looked for; an
unreadable video or image shows what failed in place of its thumbnail. Nothing here imports Ray or torch.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dataengine.formats.layout import INDEX_NAME, EvalLayout, RunLayout, TrainRunLayout

SECTIONS = (
    "counts",
    "funnel",
    "stages",
    "rejections",
    "scores",
    "pairs",
    "shards",
    "training",
    "layers",
    "evaluation",
)
SECTION_TITLES = {
    "counts": "Pairs per category",
    "funnel": "From CSV rows to shard samples",
    "stages": "Each job's stages",
    "rejections": "Rejections by reason",
    "scores": "Score histogram",
    "pairs": "Sample pairs",
    "shards": "Shards",
    "training": "Training loss",
    "layers": "VLM layers (R_mask)",
    "evaluation": "Evaluation",
}


@dataclass
class ReportConfig:
    """Where a run's outputs are and how much of them the page shows (the ``dataengine report`` options)."""

    run: str
    """Run name: the ``run`` of the data recipe (``manifests/<run>/``, ``shards/<run>/``)."""
    manifests_root: str = "manifests"
    """Folder holding ``<run>/openve.parquet``, ``portraits.parquet``, rejections and summaries."""
    shards_root: str = "shards"
    """Folder holding ``<run>/index.json``."""
    train_run: str | None = None
    """Training run folder with ``metrics.jsonl``; None looks in ``runs/`` for a run trained on
    ``shards/<run>`` (its ``recipe.resolved.json``), else ``runs/<run>``."""
    runs_root: str = "runs"
    """Folder holding the training runs (for the search above)."""
    pairs_per_category: int = 2
    """Pairs shown per category in the thumbnails section."""
    thumbnail_width: int = 160
    """Width in pixels of each thumbnail (height keeps the aspect ratio)."""
    seed: int = 0
    """Seed of the sample of pairs shown."""
    eval_pairs: int = 3
    """Evaluated pairs shown side by side (the first ones of the evaluation set)."""


@dataclass
class Section:
    """One part of the page: ``html`` when its inputs exist, else ``missing`` says what was looked for."""

    key: str
    html: str = ""
    missing: str | None = None
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------
# Small renderers: escaping, tables, images, SVG charts
# ---------------------------------------------------------------------------------------------------


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def table(
    header: list[str], rows: list[list[Any]], numeric_from: int = 1, numeric_to: int | None = None
) -> str:
    """An HTML table; columns ``numeric_from`` to ``numeric_to`` (exclusive; None: the last) are right-aligned."""
    numeric_to = len(header) if numeric_to is None else numeric_to
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(
            f"<td{' class=num' if numeric_from <= i < numeric_to else ''}>{esc(v)}</td>"
            for i, v in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def png_data_uri(image: np.ndarray, width: int) -> str:
    """(H, W, 3) or (H, W) uint8 -> a ``data:image/png;base64,...`` URI, resized to ``width`` pixels wide."""
    from PIL import Image

    picture = Image.fromarray(np.ascontiguousarray(image))
    height = max(1, round(picture.height * width / picture.width))
    picture = picture.convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    if not math.isfinite(low) or not math.isfinite(high) or high <= low:
        return [low]
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    start = math.ceil(low / step) * step
    return [start + i * step for i in range(int((high - start) / step + 1e-9) + 1)]


def histogram_svg(
    edges: list[float], counts: list[int], threshold: float | None = None, title: str = ""
) -> str:
    """Bars of ``counts`` over ``edges`` (len(counts) + 1) as an inline SVG, with an optional threshold line."""
    width, height, left, bottom, top, right = 640, 260, 48, 36, 24, 12
    plot_w, plot_h = width - left - right, height - top - bottom
    lo, hi = edges[0], edges[-1]
    peak = max(max(counts), 1)
    x = lambda v: left + (v - lo) / (hi - lo) * plot_w  # noqa: E731
    y = lambda c: top + plot_h - c / peak * plot_h  # noqa: E731
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="{esc(title)}">'
    ]
    parts.append(f'<text x="{left}" y="16" class="t">{esc(title)}</text>')
    for count, a, b in zip(counts, edges[:-1], edges[1:], strict=True):
        if count:
            parts.append(
                f'<rect class="bar" x="{x(a) + 0.5:.1f}" y="{y(count):.1f}" width="{max(x(b) - x(a) - 1, 0.5):.1f}" '
                f'height="{top + plot_h - y(count):.1f}"><title>[{a:g}, {b:g}): {count}</title></rect>'
            )
    parts.append(
        f'<line class="axis" x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}"/>'
    )
    parts.append(f'<line class="axis" x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}"/>')
    for tick in _nice_ticks(lo, hi, 10):
        parts.append(
            f'<text x="{x(tick):.1f}" y="{top + plot_h + 16}" class="tick" text-anchor="middle">{tick:g}</text>'
        )
    for tick in _nice_ticks(0, peak, 4):
        parts.append(
            f'<text x="{left - 6}" y="{y(tick) + 4:.1f}" class="tick" text-anchor="end">{tick:g}</text>'
        )
    if threshold is not None and lo <= threshold <= hi:
        parts.append(
            f'<line class="threshold" x1="{x(threshold):.1f}" y1="{top}" x2="{x(threshold):.1f}" y2="{top + plot_h}"/>'
            f'<text x="{x(threshold) + 4:.1f}" y="{top + 12}" class="tick">threshold {threshold:g}</text>'
        )
    parts.append(
        f'<text x="{left + plot_w / 2}" y="{height - 4}" class="tick" text-anchor="middle">score</text>'
    )
    parts.append("</svg>")
    return "".join(parts)


FUNNEL_STAGES = ("read", "probed", "scored", "kept", "encoded")
_FUNNEL_COLOURS = ("#9aa9c2", "#7390bd", "#4a78c2", "#2f5aa0", "#c2410c")


def funnel_svg(rows: list[tuple[str, list[int | None]]], title: str) -> str:
    """One block of bars per row (category), one bar per :data:`FUNNEL_STAGES` step, lengths to one scale;
    a step a row does not go through (None) is left out."""
    bar, gap, right, top = 11, 10, 70, 40
    left = max(170, 7 * max((len(label) for label, _ in rows), default=0) + 16)  # room for the labels
    width = left + 590
    plot_w = width - left - right
    peak = max([v for _, values in rows for v in values if v is not None] + [1])
    height = top + len(rows) * (len(FUNNEL_STAGES) * bar + gap) + 8
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="{esc(title)}">',
        f'<text x="8" y="16" class="t">{esc(title)}</text>',
    ]
    for i, (stage, colour) in enumerate(zip(FUNNEL_STAGES, _FUNNEL_COLOURS, strict=True)):
        x = left + i * 92
        parts.append(f'<rect x="{x}" y="24" width="10" height="10" fill="{colour}"/>')
        parts.append(f'<text x="{x + 14}" y="33" class="tick">{stage}</text>')
    y = top
    for label, values in rows:
        parts.append(
            f'<text x="{left - 8}" y="{y + len(FUNNEL_STAGES) * bar / 2 + 4:.1f}" class="tick" '
            f'text-anchor="end">{esc(label)}</text>'
        )
        for stage, colour, value in zip(FUNNEL_STAGES, _FUNNEL_COLOURS, values, strict=True):
            if value is not None:
                length = max(value / peak * plot_w, 0.5)
                parts.append(
                    f'<rect x="{left}" y="{y}" width="{length:.1f}" height="{bar - 2}" fill="{colour}">'
                    f"<title>{esc(label)}: {stage} {value}</title></rect>"
                    f'<text x="{left + length + 4:.1f}" y="{y + bar - 3}" class="tick">{value}</text>'
                )
            y += bar
        y += gap
    parts.append("</svg>")
    return "".join(parts)


def line_svg(xs: list[float], ys: list[float], title: str, x_label: str, y_label: str) -> str:
    """A polyline of ``ys`` over ``xs`` as an inline SVG (log scale on y when it spans over 2 decades)."""
    width, height, left, bottom, top, right = 640, 280, 56, 36, 24, 16
    plot_w, plot_h = width - left - right, height - top - bottom
    values = np.asarray(ys, dtype=np.float64)
    log = bool(np.all(values > 0) and values.max() / values.min() > 100)
    shown = np.log10(values) if log else values
    x_lo, x_hi = min(xs), max(xs)
    y_lo, y_hi = float(shown.min()), float(shown.max())
    if x_hi == x_lo:
        x_hi = x_lo + 1
    if y_hi == y_lo:
        y_lo, y_hi = y_lo - 0.5, y_hi + 0.5
    pad = (y_hi - y_lo) * 0.05
    y_lo, y_hi = y_lo - pad, y_hi + pad
    px = lambda v: left + (v - x_lo) / (x_hi - x_lo) * plot_w  # noqa: E731
    py = lambda v: top + plot_h - (v - y_lo) / (y_hi - y_lo) * plot_h  # noqa: E731
    points = " ".join(f"{px(a):.1f},{py(b):.1f}" for a, b in zip(xs, shown, strict=True))
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="{esc(title)}">'
    ]
    parts.append(f'<text x="{left}" y="16" class="t">{esc(title)}{" (log scale)" if log else ""}</text>')
    parts.append(
        f'<line class="axis" x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}"/>'
    )
    parts.append(f'<line class="axis" x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}"/>')
    for tick in _nice_ticks(x_lo, x_hi, 8):
        parts.append(
            f'<text x="{px(tick):.1f}" y="{top + plot_h + 16}" class="tick" text-anchor="middle">{tick:g}</text>'
        )
    for tick in _nice_ticks(y_lo, y_hi, 5):
        label = f"{10**tick:.3g}" if log else f"{tick:.3g}"
        parts.append(
            f'<line class="grid" x1="{left}" y1="{py(tick):.1f}" x2="{left + plot_w}" y2="{py(tick):.1f}"/>'
        )
        parts.append(
            f'<text x="{left - 6}" y="{py(tick) + 4:.1f}" class="tick" text-anchor="end">{label}</text>'
        )
    if len(xs) == 1:
        parts.append(f'<circle class="dot" cx="{px(xs[0]):.1f}" cy="{py(shown[0]):.1f}" r="3"/>')
    parts.append(f'<polyline class="line" points="{points}"/>')
    parts.append(
        f'<text x="{left + plot_w / 2}" y="{height - 4}" class="tick" text-anchor="middle">{esc(x_label)}</text>'
    )
    parts.append(
        f'<text x="12" y="{top + plot_h / 2}" class="tick" text-anchor="middle" '
        f'transform="rotate(-90 12 {top + plot_h / 2})">{esc(y_label)}</text>'
    )
    parts.append("</svg>")
    return "".join(parts)


# ---------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------


@dataclass
class RunFiles:
    """What the page reads: the data run's files (``dataengine.formats.layout.RunLayout``) and the training metrics."""

    data: RunLayout
    metrics: Path | None
    evaluation: EvalLayout | None

    @classmethod
    def locate(cls, config: ReportConfig) -> RunFiles:
        data = RunLayout(
            config.run,
            manifests_root=Path(config.manifests_root),
            shards_dir=Path(config.shards_root) / config.run,
        )
        metrics = find_metrics(config)
        evaluation = TrainRunLayout(metrics.parent).evaluation if metrics is not None else None
        return cls(data=data, metrics=metrics, evaluation=evaluation)


def find_metrics(config: ReportConfig) -> Path | None:
    """``metrics.jsonl`` of the training run: the given folder, else a run trained on ``shards/<run>``,
    else ``runs/<run>``. None when there is none."""
    if config.train_run:
        return TrainRunLayout(Path(config.train_run)).metrics
    runs = Path(config.runs_root)
    shards = (Path(config.shards_root) / config.run).resolve()
    if runs.is_dir():
        for folder in sorted(p for p in runs.iterdir() if p.is_dir()):
            train_run = TrainRunLayout(folder)
            try:
                data_shards = json.loads(train_run.resolved_recipe.read_text())["train"]["data"]["shards"]
            except (OSError, ValueError, KeyError, TypeError):
                continue
            path = Path(data_shards)
            if path.name == INDEX_NAME:
                path = path.parent
            if path.resolve() == shards and train_run.metrics.exists():
                return train_run.metrics
    return TrainRunLayout(runs / config.run).metrics


def _read_parquet(path: Path) -> pd.DataFrame | None:
    return pd.read_parquet(path) if path.exists() else None


# ---------------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------------


def counts_section(files: RunFiles) -> Section:
    openve, portraits = _read_parquet(files.data.openve), _read_parquet(files.data.portraits)
    summary = json.loads(files.data.summary.read_text()) if files.data.summary.exists() else None
    if openve is None and portraits is None:
        return Section(
            "counts", missing=f"not run: neither {files.data.openve} nor {files.data.portraits} exists"
        )
    parts = []
    frames = [f for f in (openve, portraits) if f is not None]
    pairs = pd.concat(frames, ignore_index=True)
    counts = pairs.groupby(["origin", "category"]).size().reset_index(name="pairs")
    rows = [[r.origin, r.category, int(r.pairs)] for r in counts.itertuples()]
    rows.append(["total", "", int(counts["pairs"].sum())])
    parts.append(table(["origin", "category", "pairs kept"], rows, numeric_from=2))
    if summary is not None:
        reasons = list(summary.get("total", {}).get("rejected", {}))
        rows = []
        for category, entry in list(summary.get("categories", {}).items()) + [
            ("total", summary.get("total", {}))
        ]:
            rejected = entry.get("rejected", {})
            mean = entry.get("score_mean")
            rows.append(
                [category, entry.get("read", ""), entry.get("scored", ""), entry.get("kept", "")]
                + [rejected.get(r, 0) for r in reasons]
                + ["" if mean is None else f"{mean:.2f}"]
            )
        parts.append(
            f"<h3>OpenVE filter: threshold {esc(summary.get('threshold'))}, at most "
            f"{esc(summary.get('max_per_category'))} per category</h3>"
        )
        parts.append(table(["category", "read", "scored", "kept", *reasons, "mean score"], rows))
    notes = []
    if openve is None:
        notes.append(f"filter not run: {files.data.openve} missing")
    if portraits is None:
        notes.append(f"synth-portraits not run: {files.data.portraits} missing")
    return Section("counts", html="".join(parts), notes=notes)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text()) if path.exists() else None
    except ValueError:
        return None


def funnel_section(files: RunFiles) -> Section:
    """Per category, how many pairs each step let through: CSV rows read, probed (readable and trainable),
    scored by the judge, kept by the selection, encoded into shards. From the filter's and the shards step's
    summaries; a portrait category enters at "kept" (the portraits job's pairs)."""
    filtered = _read_json(files.data.summary)
    sharded = _read_json(files.data.shards_summary)
    if filtered is None and sharded is None:
        return Section(
            "funnel", missing=f"not run: neither {files.data.summary} nor {files.data.shards_summary} exists"
        )
    encoded_by = {k: v.get("encoded") for k, v in (sharded or {}).get("categories", {}).items()}
    rows: list[tuple[str, list[int | None]]] = []
    lost: list[list[Any]] = []
    if filtered is not None:
        openve_encoded = sum(v or 0 for k, v in encoded_by.items() if k.startswith("openve/"))
        entries = list(filtered.get("categories", {}).items()) + [
            ("total (OpenVE)", filtered.get("total", {}))
        ]
        for category, entry in entries:
            encoded = (
                encoded_by.get(f"openve/{category}", 0)
                if entry is not filtered.get("total")
                else openve_encoded
            )
            counts = [entry.get(k) for k in ("read", "probed", "scored", "kept")]
            rows.append((category, [*counts, encoded if sharded is not None else None]))
    for key, entry in (sharded or {}).get("categories", {}).items():
        if not key.startswith("openve/"):  # portrait categories are named portrait_*
            rows.append((key.split("/", 1)[1], [None, None, None, entry.get("in"), entry.get("encoded")]))
    for key, entry in (sharded or {}).get("categories", {}).items():
        if entry.get("rejected"):
            reasons = ", ".join(f"{r} {n}" for r, n in entry["rejected"].items())
            lost.append([key, entry.get("in"), entry.get("encoded"), reasons])
    header = ["category", *FUNNEL_STAGES]
    parts = [
        funnel_svg(rows, "pairs through each step, per category"),
        table(header, [[label, *["" if v is None else v for v in values]] for label, values in rows]),
    ]
    notes = []
    if sharded is None:
        notes.append(f"shards not run: {files.data.shards_summary} missing")
    elif lost:
        parts.append("<h3>Lost at the shards step</h3>")
        parts.append(table(["category", "in", "encoded", "rejected"], lost, numeric_from=1, numeric_to=3))
    else:
        parts.append("<p>Every pair the filter and the portraits job kept was encoded.</p>")
    if filtered is None:
        notes.append(f"filter not run: {files.data.summary} missing")
    return Section("funnel", html="".join(parts), notes=notes)


def job_summaries(files: RunFiles) -> list[tuple[str, Path]]:
    """Each data job and the summary it writes, in the order they run."""
    data = files.data
    return [
        ("filter", data.summary),
        ("harvest-portraits", data.harvest_summary),
        ("synth-portraits", data.portraits_summary),
        ("shards", data.shards_summary),
    ]


def stages_section(files: RunFiles) -> Section:
    """Per job, one table: each stage, the items it took in, kept and rejected by reason, as the job's runner
    counted them (the ``stages`` of its summary). A job whose items change between stages (synth-portraits:
    background clips, portrait clips, then planned pairs) starts a new count at each."""
    parts, notes, found = [], [], []
    for job, path in job_summaries(files):
        summary = _read_json(path)
        if summary is None:
            notes.append(f"{job} not run: {path} missing")
            continue
        found.append(path)
        stages = summary.get("stages")
        if not stages:
            notes.append(f"{job}: {path} records no per-stage counts (written before they were recorded)")
            continue
        rows = [
            [stage, count["in"], count["kept"], ", ".join(f"{r} {n}" for r, n in count["rejected"].items())]
            for stage, count in stages.items()
        ]
        parts.append(f"<h3>{esc(job)}</h3>")
        parts.append(table(["stage", "in", "kept", "rejected"], rows, numeric_from=1, numeric_to=3))
    if not found:
        where = ", ".join(str(path) for _, path in job_summaries(files))
        return Section("stages", missing=f"not run: none of {where} exists")
    return Section("stages", html="".join(parts), notes=notes)


def rejections_section(files: RunFiles) -> Section:
    frames = [
        frame.assign(step=step)
        for step, path in (
            ("filter", files.data.rejections),
            ("synth-portraits", files.data.portrait_rejections),
        )
        if (frame := _read_parquet(path)) is not None
    ]
    if not frames:
        return Section(
            "rejections",
            missing=f"not run: neither {files.data.rejections} nor {files.data.portrait_rejections} exists",
        )
    rejections = pd.concat(frames, ignore_index=True)
    if not len(rejections):
        return Section("rejections", html="<p>No rejections: every input row was kept.</p>")
    counts = rejections.groupby(["step", "stage", "reason"]).size().reset_index(name="count")
    examples = rejections.groupby(["step", "stage", "reason"])["detail"].first()
    rows = [
        [r.step, r.stage, r.reason, int(r.count), str(examples[(r.step, r.stage, r.reason)] or "")[:160]]
        for r in counts.sort_values("count", ascending=False, kind="stable").itertuples()
    ]
    return Section(
        "rejections",
        html=table(["step", "stage", "reason", "count", "example"], rows, numeric_from=3, numeric_to=4)
        + f"<p>{len(rejections)} rejections in total.</p>",
    )


def scores_section(files: RunFiles) -> Section:
    summary = json.loads(files.data.summary.read_text()) if files.data.summary.exists() else None
    histogram = (summary or {}).get("total", {}).get("score_histogram")
    threshold = (summary or {}).get("threshold")
    if histogram is None:
        openve = _read_parquet(files.data.openve)
        if openve is None or openve["score"].isna().all():
            return Section(
                "scores", missing=f"not run: no {files.data.summary} and no scores in {files.data.openve}"
            )
        counts, edges = np.histogram(openve["score"].dropna().to_numpy(float), bins=20, range=(0.0, 10.0))
        histogram = {"edges": edges.tolist(), "counts": counts.tolist()}
        note = "kept pairs only (summary.json missing)"
    else:
        note = "every scored pair, before the threshold and the cap"
    total = int(sum(histogram["counts"]))
    svg = histogram_svg(
        histogram["edges"], histogram["counts"], threshold, f"Qwen3-VL judge scores ({total} pairs)"
    )
    return Section("scores", html=svg + f"<p>{esc(note)}.</p>")


def _first_frame(path: str) -> np.ndarray:
    from dataengine.media.video import read_frames

    return read_frames(path, [0])[0]


def _middle_frame(path: str) -> np.ndarray:
    from dataengine.media.video import probe, read_frames

    return read_frames(path, [probe(path, check_last_frame=False).num_frames // 2])[0]


def _image(path: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _mask(path: str) -> np.ndarray:
    from dataengine.models.segment import load_masks

    mask = load_masks(path)[0]
    return mask.astype(np.uint8) * 255


def _prompt_frame(path_and_boxes: tuple[str, str]) -> np.ndarray:
    """The saved prompt frame with its prompt boxes (JSON ``[[x0, y0, x1, y1, score], ...]``) drawn in red."""
    from PIL import Image, ImageDraw

    path, boxes = path_and_boxes
    with Image.open(path) as image:
        picture = image.convert("RGB")
    draw = ImageDraw.Draw(picture)
    line = max(1, round(picture.width / 160))  # about one pixel wide in the thumbnail
    for x0, y0, x1, y1, *_ in json.loads(boxes or "[]"):
        draw.rectangle([x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)], outline=(255, 32, 32), width=line)
    return np.asarray(picture)


def _thumbnail(label: str, load, path: Any, width: int) -> str:
    if path is None or (isinstance(path, float) and math.isnan(path)):
        return f'<figure class="thumb missing"><div>none</div><figcaption>{esc(label)}</figcaption></figure>'
    try:
        uri = png_data_uri(load(path), width)
    except Exception as err:  # a broken file shows what failed in its place: the page is still written
        return (
            f'<figure class="thumb missing"><div>{esc(type(err).__name__)}: {esc(str(err)[:120])}</div>'
            f"<figcaption>{esc(label)}</figcaption></figure>"
        )
    return f'<figure class="thumb"><img src="{uri}" alt="{esc(label)}"><figcaption>{esc(label)}</figcaption></figure>'


def pairs_section(files: RunFiles, config: ReportConfig) -> Section:
    frames = [
        f for f in (_read_parquet(files.data.openve), _read_parquet(files.data.portraits)) if f is not None
    ]
    if not frames:
        return Section(
            "pairs", missing=f"not run: neither {files.data.openve} nor {files.data.portraits} exists"
        )
    pairs = pd.concat(frames, ignore_index=True)
    if not len(pairs):
        return Section("pairs", html="<p>No pairs were kept.</p>")
    plan = _read_parquet(files.data.portrait_plan)
    plan_of = plan.set_index("pair_id").to_dict("index") if plan is not None else {}
    rng = np.random.default_rng(config.seed)
    rows = []
    for (origin, category), group in pairs.sort_values("pair_id").groupby(["origin", "category"], sort=True):
        chosen = group.iloc[np.sort(rng.permutation(len(group))[: config.pairs_per_category])]
        for row in chosen.itertuples():
            width = config.thumbnail_width
            reference = (
                row.reference_path if isinstance(row.reference_path, str) and row.reference_path else None
            )
            cells = [
                _thumbnail("source (middle frame)", _middle_frame, row.source_path, width),
                _thumbnail("target (middle frame)", _middle_frame, row.target_path, width),
                _thumbnail("reference", _image, reference, width)
                if reference
                else _thumbnail("reference = target frame 0", _first_frame, row.target_path, width),
            ]
            if origin == "portrait":
                planned = plan_of.get(row.pair_id, {})
                image = planned.get("prompt_image")
                prompt = (image, planned.get("prompt_boxes")) if isinstance(image, str) and image else None
                start, start_s = planned.get("portrait_start"), planned.get("prompt_s")
                where = "prompt frame + box"
                if isinstance(start, int | float) and start == start and start >= 0:
                    seconds = (
                        f" ({start_s:.2f} s)" if isinstance(start_s, float) and start_s == start_s else ""
                    )
                    where = f"prompt frame {int(start)}{seconds} + box"
                cells.append(_thumbnail(where, _prompt_frame, prompt, width))
                cells.append(_thumbnail("person mask (frame 0)", _mask, planned.get("masks_path"), width))
            score = "" if pd.isna(row.score) else f" · score {row.score:.2f}"
            rows.append(
                f'<div class="pair"><div class="caption"><b>{esc(category)}</b> ({esc(origin)}{esc(score)}) '
                f"<code>{esc(row.pair_id)}</code><br>{esc(row.instruction)}</div>"
                f'<div class="thumbs">{"".join(cells)}</div></div>'
            )
    return Section(
        "pairs",
        html=f"<p>{config.pairs_per_category} pair(s) per category, drawn with seed {config.seed}.</p>"
        + "".join(rows),
    )


def shards_section(files: RunFiles) -> Section:
    if not files.data.shards_index.exists():
        return Section("shards", missing=f"not run: {files.data.shards_index} does not exist")
    try:
        from dataengine.formats.shard_format import read_index

        index = read_index(files.data.shards_index)
    except ValueError as err:
        return Section("shards", missing=f"unreadable: {err}")
    shards = index.get("shards", [])
    by_bucket: dict[str, dict[str, int]] = {}
    for entry in shards:
        stats = by_bucket.setdefault(entry["bucket"], {"shards": 0, "samples": 0, "bytes": 0})
        stats["shards"] += 1
        stats["samples"] += int(entry["num_samples"])
        stats["bytes"] += int(entry["bytes"])
    rows = []
    for name, bucket in sorted(index.get("buckets", {}).items()):
        stats = by_bucket.get(name, {"shards": 0, "samples": 0, "bytes": 0})
        rows.append(
            [
                name,
                "x".join(str(v) for v in bucket.get("latent_shape", [])),
                stats["samples"],
                stats["shards"],
                f"{stats['bytes'] / 2**20:.2f}",
                f"{stats['bytes'] / max(stats['samples'], 1) / 2**20:.3f}",
            ]
        )
    total_bytes = sum(int(e["bytes"]) for e in shards)
    rows.append(
        ["total", "", int(index.get("num_samples", 0)), len(shards), f"{total_bytes / 2**20:.2f}", ""]
    )
    models = index.get("models", {})
    return Section(
        "shards",
        html=table(
            ["bucket", "latent T'xH'xW'", "samples", "shards", "MiB", "MiB / sample"], rows, numeric_from=2
        )
        + "<p>"
        + " · ".join(f"{esc(k)}: <code>{esc(v)}</code>" for k, v in models.items())
        + f" · latent channels {esc(index.get('latent_channels'))} · VLM width {esc(index.get('vlm_dim'))}</p>",
    )


def training_section(files: RunFiles) -> Section:
    if files.metrics is None or not files.metrics.exists():
        return Section("training", missing=f"not run: {files.metrics} does not exist")
    rows = []
    for number, line in enumerate(files.metrics.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                return Section("training", missing=f"unreadable: {files.metrics} line {number} is not JSON")
    rows = [r for r in rows if isinstance(r.get("loss"), int | float) and "step" in r]
    if not rows:
        return Section("training", missing=f"no steps logged yet in {files.metrics}")
    steps, losses = [r["step"] for r in rows], [float(r["loss"]) for r in rows]
    last = rows[-1]
    facts = [
        f"{len(rows)} logged steps, last step {last['step']}",
        f"loss {losses[0]:.4f} -> {losses[-1]:.4f}",
    ]
    for key, label, fmt in (
        ("grad_norm", "grad norm", ".3f"),
        ("samples_per_s", "samples/s", ".2f"),
        ("tflops_per_device", "TFLOP/s per device", ".3g"),
        ("peak_memory_gib", "peak memory GiB", ".2f"),
    ):
        if isinstance(last.get(key), int | float):
            facts.append(f"{label} {last[key]:{fmt}}")
    svg = line_svg(steps, losses, "flow-matching loss", "step", "loss")
    svg += _validation_svg(rows)
    timed = [r for r in rows if isinstance(r.get("fwd_bwd_s"), int | float)]
    if timed:  # where a step's time went, averaged over the logged steps (trainer.steptime)
        means = {p: sum(r[f"{p}_s"] for r in timed) / len(timed) for p in STEP_PHASES}
        facts.append(
            "mean step: " + ", ".join(f"{label} {means[p]:.3f} s" for p, label in STEP_PHASES.items())
        )
    return Section(
        "training", html=svg + f"<p>{esc(' · '.join(facts))}. Source: <code>{esc(files.metrics)}</code></p>"
    )


STEP_PHASES = {
    "data": "data wait",
    "fwd_bwd": "forward + backward",
    "optim": "optimizer",
    "checkpoint": "checkpoint",
    "validation": "validation",
}


def _validation_svg(rows: list[dict]) -> str:
    """The validation losses (mean over the noise levels) beside the training loss, and a table of each
    level's loss at the first and the last evaluation; empty without validation rows."""
    evaluated = [r for r in rows if isinstance(r.get("val_loss"), int | float)]
    if not evaluated:
        return ""
    svg = line_svg(
        [r["step"] for r in evaluated],
        [float(r["val_loss"]) for r in evaluated],
        "validation loss (fixed samples, noise and levels)",
        "step",
        "loss",
    )
    levels = sorted((k for k in evaluated[0] if k.startswith("val_loss_s")), key=lambda k: int(k[10:]))
    first, last = evaluated[0], evaluated[-1]
    body = table(
        ["noise level", f"step {first['step']}", f"step {last['step']}"],
        [
            [k.removeprefix("val_loss_s"), f"{first[k]:.4f}", f"{last.get(k, float('nan')):.4f}"]
            for k in levels
        ],
    )
    return svg + body


def layers_section(files: RunFiles) -> Section:
    diagnosis = files.data.diagnosis
    if not diagnosis.summary.exists():
        return Section("layers", missing=f"not run: {diagnosis.summary} does not exist")
    summary = json.loads(diagnosis.summary.read_text())
    if not summary.get("layers"):
        return Section("layers", missing=f"no clip measured: {summary.get('num_rejected', 0)} rejected")
    rows = [
        [
            layer["hidden_state"],
            layer["layer"],
            f"{layer['r_mask']:.4f}",
            f"{layer['r_mask_std']:.4f}",
            f"{layer['r_mask_any']:.4f}",
            f"{layer['uniform']:.4f}",
        ]
        for layer in summary["layers"]
    ]
    pick = summary["pick"]
    svg = (
        diagnosis.plot.read_text() if diagnosis.plot.exists() else ""
    )  # our own SVG (dataengine.tools.layer_diagnosis)
    facts = (
        f"{esc(summary['model'])}, {summary['num_clips']} clips ({summary['num_rejected']} rejected). "
        f"Pick: hidden states {esc(pick['hidden_states'])} (highest R_mask at {pick['highest']['hidden_state']}, "
        f"lowest at {pick['lowest']['hidden_state']}); monotone: {pick['monotone']}; first and last: "
        f"{pick['is_first_and_last']}. The paper (Qwen3-VL-8B): about 0.37 at the first layer, 0.23 at the last."
    )
    header = ["hidden state", "layer", "R_mask", "std over clips", "any-overlap", "uniform"]
    return Section("layers", html=svg + f"<p>{facts}</p>" + table(header, rows, numeric_from=2))


def _score_caption(row: Any, axes: dict[str, str]) -> str:
    if isinstance(row.reason, str) and row.reason:
        return f"{row.reason}"
    return (
        " ".join(f"{code} {getattr(row, axis):.1f}" for code, axis in axes.items())
        + f" · Avg {row.score:.2f}"
    )


def evaluation_section(files: RunFiles, config: ReportConfig) -> Section:
    evaluation = files.evaluation
    has_six = evaluation is not None and evaluation.summary.exists()
    has_bench = evaluation is not None and evaluation.bench_summary.exists()
    if not has_six and not has_bench:
        where = evaluation.summary if evaluation is not None else "the training run's eval/summary.json"
        return Section("evaluation", missing=f"not run: {where} does not exist")
    parts = ["<h3>The paper's six dimensions</h3>", six_dimension_html(evaluation, config)] if has_six else []
    if has_bench:
        parts += ["<h3>OpenVE-Bench-style protocol</h3>", bench_html(evaluation, config)]
    return Section("evaluation", html="".join(parts))


def bench_html(evaluation: EvalLayout, config: ReportConfig) -> str:
    """The benchmark-style table (per category and overall, the published reference rows labelled with their
    judge) and the first pairs side by side: source, every method's edit with its three capped axes."""
    summary = json.loads(evaluation.bench_summary.read_text())
    means = pd.read_parquet(evaluation.bench_table)
    scores = pd.read_parquet(evaluation.bench_scores)
    categories = summary["categories"]
    header = ["method", "judge", *categories, "Overall", "source"]
    rows = []
    for method in summary["methods"]:
        mine = means[means["method"] == method]
        cells: list[Any] = [method, f"{summary['judge_model']} ({summary['mode']})"]
        for category in [*categories, "Overall"]:
            match = mine[mine["category"] == category]
            cells.append(f"{match.iloc[0]['score']:.2f}" if len(match) else "-")
        rows.append([*cells, "this run"])
    for ref in summary["reference_rows"]:
        rows.append(
            [ref["method"], ref["judge"], *(["-"] * len(categories)), f"{ref['overall']:.2f}", ref["source"]]
        )
    codes = summary["axes"]  # code -> axis
    parts = [
        f"<p>Judge <code>{esc(summary['judge_model'])}</code>, rubric {esc(summary['rubric_version'])}, "
        f"{esc(summary['mode'])}: {esc(', '.join(f'{c} = {a}' for c, a in codes.items()))}, 1-5, "
        f"{esc(summary['cap_rule'])}; a sample's score is the mean of the three, a category's the mean of its "
        f"samples, Overall the mean of all samples. {summary['num_scored']} clips scored, "
        f"{summary['num_rejected']} rejected. <b>Rows from different judges do not compare directly</b>: the "
        "reference rows are the published overall scores, judged by another model.</p>",
        table(header, rows, numeric_from=2, numeric_to=len(header) - 1),
    ]
    width = config.thumbnail_width
    for pair_id, group in list(scores.groupby("pair_id", sort=False))[: config.eval_pairs]:
        first = group.iloc[0]
        cells = [_thumbnail("source (middle frame)", _middle_frame, first["source_path"], width)]
        for row in group.itertuples(index=False):
            if isinstance(row.reason, str) and row.reason:
                caption = row.reason
            else:
                caption = (
                    " ".join(f"{c} {getattr(row, a):.1f}" for c, a in codes.items()) + f" · {row.score:.2f}"
                )
            cells.append(_thumbnail(f"{row.method}: {caption}", _middle_frame, row.video_path, width))
        parts.append(
            f'<div class="pair"><div class="caption"><b>{esc(first["category"])}</b> <code>{esc(pair_id)}</code><br>'
            f'{esc(first["instruction"])}</div><div class="thumbs">{"".join(cells)}</div></div>'
        )
    return "".join(parts)


def six_dimension_html(evaluation: EvalLayout, config: ReportConfig) -> str:
    """The six-dimension table per method and subset, and the first pairs side by side."""
    summary = json.loads(evaluation.summary.read_text())
    axes: dict[str, str] = summary["axes"]  # code -> axis
    means = pd.read_parquet(evaluation.table)
    scores = pd.read_parquet(evaluation.scores)
    subsets = summary["subsets"]
    header = ["method"] + [f"{subset} {code}" for subset in subsets for code in (*axes, "Avg")]
    rows = []
    for method in summary["methods"]:
        cells: list[Any] = [method]
        for subset in subsets:
            match = means[(means["method"] == method) & (means["subset"] == subset)]
            values = [*axes.values(), "score"]
            cells += [f"{match.iloc[0][v]:.2f}" for v in values] if len(match) else ["-"] * len(values)
        rows.append(cells)
    parts = [
        f"<p>Judge <code>{esc(summary['judge_model'])}</code>, rubric {esc(summary['rubric_version'])} "
        f"({esc(', '.join(f'{c} = {a}' for c, a in axes.items()))}), 0-10; {summary['num_scored']} clips scored, "
        f"{summary['num_rejected']} rejected. Source: <code>{esc(evaluation.folder)}</code></p>",
        table(header, rows),
    ]
    width = config.thumbnail_width
    for pair_id, group in list(scores.groupby("pair_id", sort=False))[: config.eval_pairs]:
        first = group.iloc[0]
        cells = [
            _thumbnail("source (middle frame)", _middle_frame, first["source_path"], width),
            _thumbnail("reference", _image, first["reference_path"], width),
        ]
        for row in group.itertuples(index=False):
            label = f"{row.method}: {_score_caption(row, axes)}"
            cells.append(_thumbnail(label, _middle_frame, row.video_path, width))
        parts.append(
            f'<div class="pair"><div class="caption"><b>{esc(first["subset"])}</b> <code>{esc(pair_id)}</code><br>'
            f'{esc(first["instruction"])}</div><div class="thumbs">{"".join(cells)}</div></div>'
        )
    return "".join(parts)


# ---------------------------------------------------------------------------------------------------
# The page
# ---------------------------------------------------------------------------------------------------

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#1d2330;background:#fff}
h1{font-size:24px;margin:0 0 4px} h2{font-size:19px;margin:28px 0 8px;border-bottom:1px solid #d8dde6;padding-bottom:4px}
h3{font-size:15px;margin:16px 0 6px} p,li{font-size:14px} code{font-size:12px;background:#f1f3f7;padding:1px 4px}
table{border-collapse:collapse;font-size:13px;margin:6px 0} th,td{border:1px solid #d8dde6;padding:3px 8px;text-align:left}
th{background:#eef1f6} td.num{text-align:right;font-variant-numeric:tabular-nums}
.notrun{color:#8a5a00;background:#fff6e0;border:1px solid #f0d9a0;padding:8px 12px;display:inline-block}
.note{color:#8a5a00;font-size:13px} .pair{margin:10px 0 18px} .caption{font-size:13px;margin-bottom:4px}
.thumbs{display:flex;gap:10px;flex-wrap:wrap} .thumb{margin:0} .thumb img{display:block;border:1px solid #c9ced8}
.thumb figcaption{font-size:11px;color:#555} .thumb.missing div{width:160px;height:90px;font-size:11px;color:#a33;
border:1px dashed #c9ced8;display:flex;align-items:center;justify-content:center;text-align:center}
svg.chart{background:#fbfcfe;border:1px solid #e3e7ee} .bar{fill:#4a78c2} .axis{stroke:#555}
.grid{stroke:#e3e7ee} .line{fill:none;stroke:#c2410c;stroke-width:2} .dot{fill:#c2410c}
.threshold{stroke:#c2410c;stroke-dasharray:4 3;stroke-width:1.5} .tick{font-size:11px;fill:#444} .t{font-size:13px;fill:#1d2330}
nav a{margin-right:12px;font-size:14px}
"""


def render(config: ReportConfig, sections: list[Section], files: RunFiles) -> str:
    nav = "".join(f'<a href="#{s.key}">{esc(SECTION_TITLES[s.key])}</a>' for s in sections)
    body = []
    for section in sections:
        body.append(f'<section id="{section.key}"><h2>{esc(SECTION_TITLES[section.key])}</h2>')
        if section.missing:
            body.append(f'<p class="notrun">{esc(section.missing)}</p>')
        else:
            body.append(section.html)
        body.extend(f'<p class="note">{esc(n)}</p>' for n in section.notes)
        body.append("</section>")
    return (
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
        f"<title>MiVE data engine report: {esc(config.run)}</title><style>{CSS}</style></head><body>"
        f"<h1>MiVE data engine report: {esc(config.run)}</h1>"
        f"<p>Manifests <code>{esc(files.data.run_dir)}</code> · shards <code>{esc(files.data.shards_index)}</code> · "
        f"training metrics <code>{esc(files.metrics)}</code></p><nav>{nav}</nav>"
        + "".join(body)
        + "</body></html>\n"
    )


def build_report(config: ReportConfig) -> tuple[str, list[Section]]:
    """The page's HTML and its sections (each with ``missing`` set when its inputs are not there)."""
    files = RunFiles.locate(config)
    sections = [
        counts_section(files),
        funnel_section(files),
        stages_section(files),
        rejections_section(files),
        scores_section(files),
        pairs_section(files, config),
        shards_section(files),
        training_section(files),
        layers_section(files),
        evaluation_section(files, config),
    ]
    return render(config, sections, files), sections


def write_report(config: ReportConfig, out: str | Path | None = None) -> tuple[Path, list[Section]]:
    """Write the page (atomically) to ``out`` (default ``<manifests_root>/<run>/report.html``)."""
    page, sections = build_report(config)
    path = Path(out) if out else RunLayout(config.run, manifests_root=Path(config.manifests_root)).report
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path, sections
