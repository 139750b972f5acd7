"""The layer diagnostic behind MiVE's choice of VLM layers: the attention mask ratio ``R_mask`` per layer.

For each clip (a video with a person in it, its person masks and an instruction), ONE forward of the VLM
over the chat message ``[video, instruction]`` keeps every hidden state (``num_layers + 1`` of them). For
each hidden state ``l``:

1. ``E`` = the states of the instruction's own text tokens (n_text, d), ``B`` = the states of the video
   tokens (n_vis, d), both from hidden state ``l``;
2. ``A(l) = E B^T / sqrt(d)`` (n_text, n_vis), and per text token a softmax over the visual tokens;
3. each visual token gets the fraction ``w_j`` of its pixels that lie inside the person mask (area weight,
   over the frames it covers; :func:`token_coverage`);
4. ``R_mask(l)`` = ``mean_i sum_j softmax(A(l))_ij w_j``: the share of the text tokens' attention that
   lands on the person, averaged over text tokens; then over clips (each clip counts once).

Two more numbers per layer help read it: ``r_mask_any`` counts a token as inside when any of its pixels
is (``w_j`` in {0, 1}), and ``uniform`` is ``mean_j w_j``, what ``R_mask`` would be if every text token
spread its attention evenly (above it: attention is drawn to the person; below: away from it).

Which visual token covers which pixels comes from the processor's own configuration and the grid it
returns (``video_grid_thw``), never from constants: the processor resizes every frame to
``(grid_h * patch, grid_w * patch)``, patchifies ``temporal_patch x patch x patch`` cubes and the vision
tower merges ``merge x merge`` neighbouring patches into one token, in row-major order per temporal group.
For Qwen3-VL (patch 16, merge 2, temporal patch 2) one token covers 32 x 32 resized pixels over two
consecutive sampled frames; in the original frame that is an ``H / (grid_h / merge)`` by
``W / (grid_w / merge)`` rectangle (the resize maps rectangles linearly). An odd frame count is padded with
the last frame, as the processor does.

The paper reports (Qwen3-VL-8B) ``R_mask`` about 0.37 at the first layer falling monotonically to 0.23 at
the last, hence "feed the DiT the first and the last layer". How we read its definition, and what it leaves
open, is in ``docs/diagnostics.md``. A plain block: no Ray. One bad clip is a rejection row, never a crash.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from dataengine.formats.recipe import MissingInput, UserError
from dataengine.models.segment import MaskFileReader, SegmenterConfig, load_masks
from dataengine.models.vlm import Qwen3VLEncoderConfig

if TYPE_CHECKING:
    import torch

    from dataengine.formats.layout import DiagnosisLayout

STAGE = "diagnose"
SCALES = ("sqrt_d", "none")
CLIP_COLUMNS = ["clip_id", "source_path", "instruction", "masks_path"]
LAYER_COLUMNS = [
    "hidden_state",
    "layer",
    "r_mask",
    "r_mask_std",
    "r_mask_any",
    "uniform",
    "num_clips",
]


@dataclass(frozen=True)
class DiagnoseConfig:
    """The layer diagnostic (the ``[diagnose]`` recipe table)."""

    clips: str = ""
    """Table of clips (CSV or Parquet): ``source_path``, ``instruction``, optional ``clip_id`` and ``masks_path``.
    Relative paths are relative to the table's folder."""
    vlm: Qwen3VLEncoderConfig = field(default_factory=Qwen3VLEncoderConfig)
    """The VLM and what it sees (the shards step's ``[shards.vlm]`` keys; the reference-image keys are unused)."""
    segmenter: SegmenterConfig = field(default_factory=lambda: SegmenterConfig(backend="mask_files"))
    """Where the person masks come from when a clip has no ``masks_path``: ``mask_files``
    (``<clip stem>.masks.npz`` beside the clip) or ``transformers`` (SAM2 on the sampled frames)."""
    scale: Literal["sqrt_d", "none"] = "sqrt_d"
    """Scaling of ``E B^T`` before the softmax: ``sqrt_d`` (divide by sqrt(hidden size), attention's own
    scaling) or ``none``."""
    max_clips: int = 0
    """Use at most this many clips of the table (0: all)."""

    def __post_init__(self) -> None:
        if self.scale not in SCALES:
            raise ValueError(f"diagnose.scale must be one of {SCALES}, got {self.scale!r}")
        if self.max_clips < 0:
            raise ValueError(f"diagnose.max_clips must be >= 0, got {self.max_clips}")


# ---------------------------------------------------------------------------------------------------
# Visual tokens -> pixels
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenGrid:
    """How a video's tokens tile its sampled frames, from the processor's config and ``video_grid_thw``."""

    num_groups: int
    """Temporal groups (tokens along time): ``grid_t``."""
    rows: int
    """Token rows per group: ``grid_h / merge``."""
    cols: int
    """Token columns per group: ``grid_w / merge``."""
    frames_per_group: int
    """Sampled frames one token covers: the temporal patch size."""
    resized_height: int
    """Frame height the processor resized to (``grid_h * patch``)."""
    resized_width: int
    """Frame width the processor resized to (``grid_w * patch``)."""

    @classmethod
    def from_processor(cls, video_processor: Any, grid_thw: Any) -> TokenGrid:
        patch, merge = int(video_processor.patch_size), int(video_processor.merge_size)
        grid_t, grid_h, grid_w = (int(v) for v in grid_thw)
        if grid_h % merge or grid_w % merge:
            raise RuntimeError(f"video grid {grid_h}x{grid_w} patches is not a multiple of merge {merge}")
        return cls(
            num_groups=grid_t,
            rows=grid_h // merge,
            cols=grid_w // merge,
            frames_per_group=int(video_processor.temporal_patch_size),
            resized_height=grid_h * patch,
            resized_width=grid_w * patch,
        )

    @property
    def num_tokens(self) -> int:
        return self.num_groups * self.rows * self.cols


def _interval_overlap(size: int, cells: int) -> np.ndarray:
    """(cells, size) float64: the share of cell i's extent ``[i size/cells, (i+1) size/cells)`` that pixel
    ``[p, p+1)`` covers; each row sums to 1."""
    edges = np.arange(cells + 1, dtype=np.float64) * size / cells
    pixels = np.arange(size, dtype=np.float64)
    low = np.maximum(edges[:-1, None], pixels[None, :])
    high = np.minimum(edges[1:, None], pixels[None, :] + 1)
    return np.clip(high - low, 0.0, None) / (size / cells)


def token_coverage(masks: np.ndarray, grid: TokenGrid) -> tuple[np.ndarray, np.ndarray]:
    """Per video token, in sequence order: the fraction of its pixels inside the mask, and whether any is.

    ``masks`` (N, H, W) bool: the person masks of the N sampled frames the VLM saw, at the frames' own size.
    Returns two (num_groups * rows * cols,) arrays: area fraction (float64 in [0, 1], averaged over the
    token's frames) and any-overlap (bool).
    """
    masks = np.asarray(masks, dtype=bool)
    num_frames, height, width = masks.shape
    per_group = grid.frames_per_group
    if -(-num_frames // per_group) != grid.num_groups:
        raise ValueError(
            f"{num_frames} mask frames make {-(-num_frames // per_group)} groups of {per_group}, "
            f"the VLM saw {grid.num_groups}"
        )
    pad = grid.num_groups * per_group - num_frames
    if pad:  # the processor repeats the last frame
        masks = np.concatenate([masks, np.repeat(masks[-1:], pad, axis=0)])
    rows = _interval_overlap(height, grid.rows)  # (rows, H)
    cols = _interval_overlap(width, grid.cols)  # (cols, W)
    m = masks.astype(np.float64).reshape(grid.num_groups, per_group, height, width)
    area = np.einsum("rh,gfhw,cw->gfrc", rows, m, cols).mean(axis=1)  # (groups, rows, cols)
    touched = np.einsum("rh,gfhw,cw->gfrc", rows > 0, m, cols > 0).max(axis=1) > 0
    return area.reshape(-1), touched.reshape(-1)


# ---------------------------------------------------------------------------------------------------
# Tokens of one forward
# ---------------------------------------------------------------------------------------------------


class InstructionNotFound(ValueError):
    """The instruction's tokens do not appear as such in the chat sequence (one clip's rejection)."""


def instruction_positions(input_ids: np.ndarray, instruction_ids: list[int], end_id: int) -> np.ndarray:
    """Positions of the instruction's own tokens: the last occurrence of ``instruction_ids`` that ends right
    before the turn's end token (``end_id``, ``<|im_end|>``). Not the template, role or timestamp tokens."""
    ids = np.asarray(input_ids)
    n = len(instruction_ids)
    ends = np.flatnonzero(ids == end_id)
    for end in ends[::-1]:
        if n and end >= n and ids[end - n : end].tolist() == list(instruction_ids):
            return np.arange(end - n, end)
    raise InstructionNotFound("the instruction's tokens were not found before the end of the user turn")


def mask_ratios(
    hidden_states: list[torch.Tensor] | tuple[torch.Tensor, ...],
    text_positions: np.ndarray,
    visual_positions: np.ndarray,
    coverage: np.ndarray,
    touched: np.ndarray,
    scale: Literal["sqrt_d", "none"] = "sqrt_d",
) -> list[dict[str, float]]:
    """Per hidden state: ``r_mask``, ``r_mask_any`` and ``uniform`` of one clip.

    ``hidden_states``: (S, d) or (1, S, d) tensors, one per hidden state; ``coverage`` and ``touched``:
    (n_vis,) per visual position, in ``visual_positions`` order.
    """
    import torch

    rows = []
    weight = torch.as_tensor(coverage, dtype=torch.float32)
    any_weight = torch.as_tensor(touched, dtype=torch.float32)
    text = torch.as_tensor(text_positions, dtype=torch.long)
    visual = torch.as_tensor(visual_positions, dtype=torch.long)
    for states in hidden_states:
        states = states.reshape(-1, states.shape[-1])  # (S, d)
        device = states.device
        e = states[text.to(device)].float()  # (n_text, d)
        b = states[visual.to(device)].float()  # (n_vis, d)
        logits = e @ b.T  # (n_text, n_vis): A(l) = E B^T
        if scale == "sqrt_d":
            logits = logits / math.sqrt(states.shape[-1])
        attention = torch.softmax(logits, dim=-1)  # per text token, over the visual tokens
        rows.append(
            {
                "r_mask": float((attention @ weight.to(device)).mean()),
                "r_mask_any": float((attention @ any_weight.to(device)).mean()),
                "uniform": float(weight.mean()),
            }
        )
    return rows


def layer_name(index: int, num_layers: int) -> str:
    """What hidden state ``index`` is (transformers' ``hidden_states``: embeddings, then one per layer)."""
    if index == 0:
        return "embeddings"
    if index == num_layers:
        return f"decoder {index - 1} + final norm"
    return f"decoder {index - 1}"


# ---------------------------------------------------------------------------------------------------
# Clips in, rows out
# ---------------------------------------------------------------------------------------------------


def read_clip_table(path: str | os.PathLike, max_clips: int = 0) -> pd.DataFrame:
    """The diagnostic's clips: ``clip_id``, ``source_path``, ``instruction``, ``masks_path`` (None: the segmenter)."""
    path = Path(path)
    if not path.is_file():
        raise MissingInput(f"diagnose.clips: clip table not found: {path}")
    table = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, keep_default_na=False)
    missing = [c for c in ("source_path", "instruction") if c not in table.columns]
    if missing:
        raise UserError(f"{path}: missing column(s) {missing}; need source_path, instruction")
    for number, row in enumerate(table.itertuples(index=False), start=2 if path.suffix != ".parquet" else 0):
        if not isinstance(row.instruction, str) or not row.instruction.strip():
            raise UserError(f"{path}: empty instruction (row {number})")

    def resolve(value: Any) -> str | None:
        if not isinstance(value, str) or not value:
            return None
        return str(Path(value) if Path(value).is_absolute() else path.parent / value)

    out = pd.DataFrame(
        {
            "clip_id": table["clip_id"].astype(str)
            if "clip_id" in table.columns
            else [Path(p).stem for p in table["source_path"]],
            "source_path": [resolve(p) for p in table["source_path"]],
            "instruction": table["instruction"].astype(str),
            "masks_path": [resolve(p) for p in table["masks_path"]]
            if "masks_path" in table.columns
            else None,
        }
    )
    if out["clip_id"].duplicated().any():
        raise UserError(f"{path}: clip_id {out.loc[out['clip_id'].duplicated(), 'clip_id'].iloc[0]} repeats")
    return out.head(max_clips) if max_clips else out


@dataclass
class ClipDiagnosis:
    """One clip's result: per-hidden-state rows, or a rejection."""

    clip_id: str
    rows: list[dict[str, Any]]
    rejection: dict[str, str] | None = None


class LayerDiagnostic:
    """The VLM (and SAM2 when masks are not given) loaded once; :meth:`diagnose` runs one clip."""

    def __init__(self, config: DiagnoseConfig):
        from dataengine.models.vlm import Qwen3VLEncoder

        self.config = config
        self.encoder = Qwen3VLEncoder(config.vlm)
        self.processor = self.encoder.processor
        self.segmenter = None
        if config.segmenter.backend == "transformers":
            from dataengine.models.segment import build_segmenter

            self.segmenter = build_segmenter(config.segmenter)

    @property
    def num_layers(self) -> int:
        return self.encoder.num_layers

    def load(self, row: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """(sampled frames (N, H, W, 3), their indices, their masks (N, H, W), clip fps)."""
        from dataengine.media.video import probe, read_frames

        info = probe(row["source_path"])
        indices = self.encoder.select_frames(info.num_frames, info.fps)
        frames = read_frames(row["source_path"], indices)
        if row.get("masks_path"):
            masks = load_masks(row["masks_path"])
            if masks.shape != (info.num_frames, info.height, info.width):
                raise ValueError(
                    f"{row['masks_path']} holds masks of shape {masks.shape} but {row['source_path']} has "
                    f"{info.num_frames} frames of {info.width}x{info.height}"
                )
            masks = masks[indices]
        elif self.segmenter is not None:
            masks = self.segmenter.segment(frames)
        else:
            masks = MaskFileReader().read(row["source_path"], info.num_frames, info.height, info.width)[
                indices
            ]
        return frames, indices, masks, info.fps

    def forward(self, instruction: str, frames: np.ndarray, indices: np.ndarray, fps: float) -> tuple:
        """One forward with every hidden state: (inputs, hidden states (num_layers + 1) x (S, d))."""
        import torch

        inputs = self.encoder.build_inputs(instruction, None, frames, fps, indices.tolist())
        tensors = {k: v.to(self.encoder.device) for k, v in inputs.items() if isinstance(v, torch.Tensor)}
        with torch.no_grad():
            out = self.encoder.model(**tensors, output_hidden_states=True, use_cache=False, return_dict=True)
        if len(out.hidden_states) != self.num_layers + 1:
            raise RuntimeError(f"expected {self.num_layers + 1} hidden states, got {len(out.hidden_states)}")
        return inputs, [h[0] for h in out.hidden_states]

    def positions(self, inputs: dict, instruction: str) -> tuple[np.ndarray, np.ndarray, TokenGrid]:
        """(instruction token positions, video token positions, the video's token grid)."""
        ids = inputs["input_ids"][0].cpu().numpy()
        tokenizer = self.processor.tokenizer
        text = instruction_positions(
            ids,
            tokenizer.encode(instruction, add_special_tokens=False),
            tokenizer.convert_tokens_to_ids("<|im_end|>"),
        )
        visual = np.flatnonzero(ids == self.processor.video_token_id)
        grid = TokenGrid.from_processor(self.processor.video_processor, inputs["video_grid_thw"][0].tolist())
        if len(visual) != grid.num_tokens:
            raise RuntimeError(f"{len(visual)} video tokens in the sequence, the grid says {grid.num_tokens}")
        return text, visual, grid

    def diagnose(self, row: dict[str, Any]) -> ClipDiagnosis:
        """R_mask per hidden state of one clip; a clip that cannot be measured becomes a rejection."""
        from dataengine.media.video import VideoError

        clip_id = str(row["clip_id"])

        def reject(reason: str, detail: str) -> ClipDiagnosis:
            detail = f"{row['source_path']}: {detail}"[:500]
            return ClipDiagnosis(
                clip_id, [], {"pair_id": clip_id, "stage": STAGE, "reason": reason, "detail": detail}
            )

        try:
            frames, indices, masks, fps = self.load(row)
        except VideoError as err:
            return reject(err.reason, err.detail)
        except (FileNotFoundError, ValueError) as err:
            return reject("masks_unavailable", str(err))
        if not masks.any():
            return reject("empty_mask", f"no person pixel on any of the {len(masks)} sampled frames")
        # The forward is not caught: an out-of-memory, a model that cannot run or a bug stops the job (the
        # same failure would repeat on every clip); only an instruction the tokenizer splits differently
        # inside the chat template is this clip's own problem.
        inputs, hidden = self.forward(row["instruction"], frames, indices, fps)
        try:
            text, visual, grid = self.positions(inputs, row["instruction"])
        except InstructionNotFound as err:
            return reject("instruction_not_found", str(err))
        coverage, touched = token_coverage(masks, grid)
        ratios = mask_ratios(hidden, text, visual, coverage, touched, self.config.scale)
        rows = [
            {
                "clip_id": clip_id,
                "hidden_state": index,
                "layer": layer_name(index, self.num_layers),
                **ratio,
                "num_text_tokens": len(text),
                "num_visual_tokens": len(visual),
            }
            for index, ratio in enumerate(ratios)
        ]
        return ClipDiagnosis(clip_id, rows)


# ---------------------------------------------------------------------------------------------------
# Summary and outputs
# ---------------------------------------------------------------------------------------------------


def summarize(clip_rows: pd.DataFrame) -> pd.DataFrame:
    """Per hidden state: mean ``r_mask`` over clips (each clip once), its std, ``r_mask_any``, ``uniform``."""
    grouped = clip_rows.groupby(["hidden_state", "layer"], sort=False)
    table = grouped.agg(
        r_mask=("r_mask", "mean"),
        r_mask_std=("r_mask", lambda s: float(s.std(ddof=0))),
        r_mask_any=("r_mask_any", "mean"),
        uniform=("uniform", "mean"),
        num_clips=("clip_id", "nunique"),
    ).reset_index()
    return table.sort_values("hidden_state").reset_index(drop=True)[LAYER_COLUMNS]


def pick_layers(layers: pd.DataFrame) -> dict[str, Any]:
    """The pair of decoder layers (hidden states 1..L) with the highest and the lowest ``R_mask``, by depth.

    The paper's reading: the layer that looks most at the person (local detail) and the one that looks
    least (global semantics) are the two views the DiT gets; for Qwen3-VL-8B they are the first and the
    last, i.e. hidden states 1 and L (the encoder's ``[1]`` and ``[-1]``).
    """
    decoder = layers[layers["hidden_state"] >= 1]
    high = decoder.loc[decoder["r_mask"].idxmax()]
    low = decoder.loc[decoder["r_mask"].idxmin()]
    values = decoder["r_mask"].to_numpy()
    steps = np.diff(values)
    return {
        "hidden_states": sorted([int(high["hidden_state"]), int(low["hidden_state"])]),
        "highest": {"hidden_state": int(high["hidden_state"]), "r_mask": float(high["r_mask"])},
        "lowest": {"hidden_state": int(low["hidden_state"]), "r_mask": float(low["r_mask"])},
        "monotone": bool(np.all(steps <= 0) or np.all(steps >= 0)),
        "is_first_and_last": {int(high["hidden_state"]), int(low["hidden_state"])}
        == {1, int(decoder["hidden_state"].max())},
    }


def r_mask_svg(layers: pd.DataFrame, title: str) -> str:
    """R_mask against depth as an inline SVG (the report's own chart code; no plotting dependency)."""
    from dataengine.tools.run_report import line_svg

    return line_svg(
        layers["hidden_state"].astype(float).tolist(),
        layers["r_mask"].tolist(),
        title,
        "hidden state (0 = embeddings, L = last layer)",
        "R_mask",
    )


def write_diagnosis(
    out: DiagnosisLayout, clip_rows: pd.DataFrame, rejections: pd.DataFrame, config: DiagnoseConfig
) -> dict[str, Any]:
    """Write the layer table (Parquet and, with the pick and the config, JSON), the per-clip rows, the
    rejections and the R_mask plot (``dataengine.formats.layout.DiagnosisLayout``); returns what the JSON holds."""
    from dataengine.formats.manifest import write_rejections, write_table, write_text

    write_rejections(rejections, out.rejections)
    write_table(clip_rows, out.clips)
    summary: dict[str, Any] = {"model": config.vlm.model_id, "config": asdict(config), "num_clips": 0}
    if len(clip_rows):
        layers = summarize(clip_rows)
        write_table(layers, out.layers)
        summary.update(
            num_clips=int(clip_rows["clip_id"].nunique()),
            layers=layers.to_dict("records"),
            pick=pick_layers(layers),
        )
        title = f"R_mask by depth: {config.vlm.model_id} ({summary['num_clips']} clips)"
        write_text(out.plot, r_mask_svg(layers, title) + "\n")
    summary["num_rejected"] = int(len(rejections))
    write_text(out.summary, json.dumps(summary, indent=2, default=str) + "\n")
    return summary


def run_diagnosis(config: DiagnoseConfig, out: DiagnosisLayout, progress: bool = False) -> dict[str, Any]:
    """Every clip of ``config.clips`` through one :class:`LayerDiagnostic`, then :func:`write_diagnosis`."""
    from dataengine.formats.manifest import rejections_frame

    clips = read_clip_table(config.clips, config.max_clips)
    diagnostic = LayerDiagnostic(config)
    rows, rejections = [], []
    for number, record in enumerate(clips.to_dict("records"), 1):
        result = diagnostic.diagnose(record)
        if progress:
            state = result.rejection["reason"] if result.rejection else "ok"
            print(f"diagnose-layers: clip {number}/{len(clips)} {record['clip_id']}: {state}", flush=True)
        rows.extend(result.rows)
        if result.rejection is not None:
            rejections.append(result.rejection)
    clip_rows = pd.DataFrame(
        rows,
        columns=[
            "clip_id",
            "hidden_state",
            "layer",
            "r_mask",
            "r_mask_any",
            "uniform",
            "num_text_tokens",
            "num_visual_tokens",
        ],
    )
    return write_diagnosis(out, clip_rows, rejections_frame(rejections), config)
