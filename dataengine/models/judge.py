"""The Qwen3-VL judge: score an edited clip 0-10 on a rubric's axes from one prefill, without sampling.

One scoring core, two rubrics (``RUBRICS``, versioned; the version is recorded with every score):

- ``v1``, the filter's: three axes (instruction compliance, preservation, quality) over (source clip,
  target clip, instruction); ``dataengine filter`` keeps a pair when their mean is high enough;
- ``eval-v1``, the evaluation's: the paper's six dimensions, instruction adherence (IA), content consistency
  (CC), temporal smoothness (TS), preservation (PR), visual aesthetics (VA), subject consistency (SC), over
  (source clip, reference image, edited clip, instruction); ``trainer eval`` scores every method's edits.

Input per pair: frames of the source and of the edited clip (sampled at ``fps``, at most ``max_frames``,
each frame resized to at most ``max_pixels_per_frame`` by the processor), the reference image when the
rubric shows it (resized within the same pixel budget), the instruction, and the rubric's text.

Score definition
----------------
The rubric asks for one integer score 0..10 per axis, one line per axis ``<axis>: <score>``. For each axis the score is the expected value of the model's distribution over the
integers 0..10 at the answer position, not sampled text:

- Qwen's tokenizer writes every digit as its own token, so "10" is two tokens. With ``p`` the next-token
  distribution after "``<axis>: ``" and ``q`` the distribution after "``<axis>: 1``":
  ``P(0) = p("0")``, ``P(s) = p("s")`` for 2..9, ``P(10) = p("1") q("0")`` and
  ``P(1) = p("1") (1 - sum_d q(d))`` (a "1" not followed by another digit). "11".."19" and non-digit first
  tokens are not scores: the distribution is renormalised over 0..10, and the kept mass is recorded as
  ``answer_mass`` (near 1 for a model that follows the format; small means the score is unreliable).
  A "0" followed by a digit is counted as 0 (it is not a valid answer either way).
- The pair's score is the mean of the rubric's axes (the filter: MiVE keeps >= 9.3, i.e. about 28/30).

Two forwards per batch, one of them tiny
----------------------------------------
1. Prefill (``use_cache=True``, logits of the last position only) over the chat-formatted prompt with both
   videos, ending with the assistant turn's start. This is where all the cost is (the video tokens).
2. One continuation forward over ``num_axes x batch`` short rows ``"<axis>: 1"`` on the prefill's KV cache
   repeated per axis: the logits at the last label token give ``p`` and the logits at the "1" give ``q``.
   Each axis is asked as if it were the answer's first line, so no axis is conditioned on another axis'
   (teacher-forced, hence arbitrary) answer, and "10" costs no extra forward.

This is exactly the distribution a full forward over ``prompt + "<axis>: 1"`` gives; the tests check it
against such direct forwards. Errors while scoring a pair (a clip that does not decode, a failed forward)
become ``scorer_error`` results for that pair, never a crash of the batch: a failed batch is retried pair
by pair. bf16 on GPU, fp32 on CPU (``dtype = "auto"``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from dataengine.media.video import probe, read_frames
from dataengine.models.devices import DType, resolve_device, resolve_dtype

if TYPE_CHECKING:  # pandas is imported where it is used: the trainer CLI imports this module for its config
    import pandas as pd

SCORE_STAGE = "score"


@dataclass(frozen=True)
class Rubric:
    """A judge prompt: the axes it scores, what it shows, and its text. Never edit a released one: add a version."""

    version: str
    """Its key in ``RUBRICS``, recorded with every score."""
    axes: tuple[str, ...]
    """Axis names as the model answers them (``<axis>: <score>``), and the score columns."""
    codes: tuple[str, ...]
    """Short names of the axes for tables (same order)."""
    text: str
    """The instructions to the judge."""
    with_reference: bool = False
    """Show the reference image (the edited first frame) between the source and the edited clip."""
    scale: tuple[int, int] = (0, 10)
    """The integer scores an axis may take, lowest and highest (both one or two digits, within 0..10)."""

    @property
    def result_columns(self) -> list[str]:
        """Columns of the judge's result rows under this rubric."""
        return [
            "pair_id",
            "score",
            *self.axes,
            "answer_mass",
            "scorer_model",
            "rubric_version",
            "reason",
            "detail",
        ]


_ANSWER_FORMAT = "Answer with one line per axis in the form `<axis>: <score>` and nothing else."
BENCH_RUBRIC = "openve-bench-v1"
"""The OpenVE-Bench-style protocol's rubric (``trainer eval``'s ``[eval.bench]``): three axes 1-5, our wording."""

RUBRICS: dict[str, Rubric] = {
    rubric.version: rubric
    for rubric in (
        Rubric(
            version="v1",
            axes=("instruction_compliance", "preservation", "quality"),
            codes=("IC", "PR", "VQ"),
            text=(
                "You are a strict judge of instruction-guided video edits. You see a source video, the edited "
                "video produced from it, and the editing instruction.\n"
                "Score the edit on three axes, each an integer from 0 (worst) to 10 (best):\n"
                "- instruction_compliance: the edited video carries out the instruction fully and in every frame.\n"
                "- preservation: everything the instruction does not ask to change (content, identity, layout, "
                "fine detail, motion) is kept exactly as in the source.\n"
                "- quality: the edited video is sharp, free of artifacts, and temporally stable (no flicker, jitter "
                "or drifting edits).\n" + _ANSWER_FORMAT
            ),
        ),
        Rubric(
            version="eval-v1",
            axes=(
                "instruction_adherence",
                "content_consistency",
                "temporal_smoothness",
                "preservation",
                "visual_aesthetics",
                "subject_consistency",
            ),
            codes=("IA", "CC", "TS", "PR", "VA", "SC"),
            text=(
                "You are a strict judge of reference-guided video edits. You see a source video, a reference "
                "image (the source's first frame with the edit applied: it shows what the edit should look "
                "like), the edited video produced from them, and the editing instruction.\n"
                "Score the edited video on six axes, each an integer from 0 (worst) to 10 (best):\n"
                "- instruction_adherence: the edit the instruction asks for is carried out fully, in every frame.\n"
                "- content_consistency: the edited content looks like the reference image (appearance, colour, "
                "placement) and stays the same throughout the video.\n"
                "- temporal_smoothness: motion is smooth and natural, with no flicker, jitter, popping or drifting "
                "edits between frames.\n"
                "- preservation: everything the instruction does not ask to change (background, other objects, "
                "the camera and the subjects' motion) is kept as in the source video.\n"
                "- visual_aesthetics: the video is sharp, well composed and free of artifacts, blur and "
                "distortion.\n"
                "- subject_consistency: the main subject keeps one identity and appearance in every frame, "
                "consistent with the reference image.\n" + _ANSWER_FORMAT
            ),
            with_reference=True,
        ),
    )
}
RUBRICS[BENCH_RUBRIC] = Rubric(
    version=BENCH_RUBRIC,
    axes=("instruction_compliance", "consistency", "visual_quality"),
    codes=("IC", "CD", "VQ"),
    text=(
        "You are a strict judge of instruction-guided video edits. You see a source video, the edited video "
        "produced from it, and the editing instruction.\n"
        "Score the edit on three axes, each an integer from 1 (worst) to 5 (best):\n"
        "- instruction_compliance: how completely and precisely the edited video does what the instruction "
        "asks, in every frame, and nothing else.\n"
        "- consistency: everything the instruction leaves alone (people, objects, background, layout, motion, "
        "fine detail and texture) matches the source video.\n"
        "- visual_quality: the edited video is sharp and natural, free of artifacts, and stable over time (no "
        "flicker, jitter or drifting edits).\n"
        "An edit that does not carry out the instruction cannot score higher on consistency or visual_quality "
        "than on instruction_compliance.\n" + _ANSWER_FORMAT
    ),
    scale=(1, 5),
)
FILTER_RUBRIC = "v1"
EVAL_RUBRIC = "eval-v1"

# The filter's axes and result columns (its score parts are written with these).
AXES = RUBRICS[FILTER_RUBRIC].axes
RESULT_COLUMNS = RUBRICS[FILTER_RUBRIC].result_columns


@dataclass
class JudgeConfig:
    """The Qwen3-VL judge: which model, which rubric, how the clips are shown, how pairs are batched."""

    model: str = "Qwen/Qwen3-VL-8B-Instruct"
    """Hub id or local folder, loaded with ``Qwen3VLForConditionalGeneration.from_pretrained``."""
    rubric_version: str = FILTER_RUBRIC
    """Key into ``RUBRICS`` (``v1``: the filter's three axes; ``eval-v1``: the six evaluation dimensions);
    recorded with every score."""
    fps: float = 2.0
    """Frames per second sampled from each clip (spread evenly over the whole clip)."""
    max_frames: int = 16
    """Most frames shown per clip; longer clips are sampled more sparsely."""
    max_pixels_per_frame: int = 256 * 32 * 32
    """Pixel budget per frame (the processor resizes to a multiple of 32 within it); 32x32 px = 1 token."""
    batch_size: int = 8
    """Pairs per prefill."""
    dtype: DType = "auto"
    """"auto" (bf16 on GPU, fp32 on CPU), "bfloat16", "float16" or "float32"."""
    device: str = "auto"
    """"auto" (cuda when available, else cpu) or a torch device string."""
    attn_implementation: str = "sdpa"
    """transformers attention backend: "sdpa", "flash_attention_2" or "eager"."""
    temperature: float = 0.0
    """0: an axis' score is the expected value of the model's answer distribution (the default, one pass).
    > 0: the score is sampled from that distribution at this temperature, as a generating judge would answer
    (each pair's draw is seeded by ``seed`` and its ``pair_id``, so it does not depend on the batch)."""
    seed: int = 0
    """Seed of the sampled scores (``temperature`` > 0)."""


def score_probabilities(first_logits, after_one_logits, digit_ids: list[int], temperature: float = 1.0):
    """P(score = s) for s = 0..10, (N, 11) float32, from the two answer-position logits (at ``temperature``);
    the rows do not sum to 1: the rest is answers that are not a score (see the module docstring)."""
    import torch

    digits = torch.as_tensor(digit_ids, device=first_logits.device)
    p = torch.softmax(first_logits.float() / temperature, dim=-1)[:, digits]  # (N, 10): P(first token = d)
    q = torch.softmax(after_one_logits.float() / temperature, dim=-1)[:, digits]  # (N, 10): P(next = d | "1")
    return torch.cat(
        [
            p[:, :1],  # 0
            p[:, 1:2] * (1.0 - q.sum(dim=-1, keepdim=True)),  # 1, not followed by a digit
            p[:, 2:],  # 2..9
            p[:, 1:2] * q[:, :1],  # 10
        ],
        dim=-1,
    )


def expected_scores(first_logits, after_one_logits, digit_ids: list[int], scale: tuple[int, int] = (0, 10)):
    """Expected score over the integers of ``scale`` (default 0..10) and its probability mass, from the two
    answer-position logits.

    ``first_logits`` (N, V): next-token logits after "``<axis>: ``"; ``after_one_logits`` (N, V): after
    "``<axis>: 1``"; ``digit_ids``: token ids of "0".."9". Returns (expected (N,), mass (N,)) in float32.
    """
    import torch

    low, high = scale
    probs = score_probabilities(first_logits, after_one_logits, digit_ids)[:, low : high + 1]
    values = torch.arange(low, high + 1, dtype=probs.dtype, device=probs.device)
    mass = probs.sum(dim=-1)
    expected = (probs * values).sum(dim=-1) / mass.clamp_min(1e-30)
    return expected, mass


def sampled_scores(
    first_logits, after_one_logits, digit_ids: list[int], uniforms, temperature: float, scale=(0, 10)
):
    """One score per row drawn from the answer distribution at ``temperature`` restricted to ``scale``, by
    inverse CDF with the given uniforms (N,) in [0, 1); and the valid mass at that temperature."""
    import torch

    low, high = scale
    probs = score_probabilities(first_logits, after_one_logits, digit_ids, temperature)[:, low : high + 1]
    mass = probs.sum(dim=-1)
    cdf = torch.cumsum(probs / mass.clamp_min(1e-30)[:, None], dim=-1)
    u = torch.as_tensor(uniforms, dtype=cdf.dtype, device=cdf.device)
    index = torch.searchsorted(cdf, u[:, None]).squeeze(-1).clamp_max(high - low)
    return (index + low).to(torch.float32), mass


def pair_uniform(seed: int, key: str, axis: str) -> float:
    """A uniform number in [0, 1) fixed by (seed, pair id, axis): a sampled score never depends on the batch."""
    import hashlib

    digest = hashlib.sha256(f"{seed}\0{key}\0{axis}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def sample_frame_indices(num_frames: int, src_fps: float, fps: float, max_frames: int) -> np.ndarray:
    """Indices of ``fps`` frames per second over the whole clip, at least 2 and at most ``max_frames``."""
    duration = num_frames / src_fps if src_fps > 0 else num_frames
    count = int(math.floor(duration * fps + 1e-6))
    count = max(2, min(count, max_frames, num_frames))
    return np.linspace(0, num_frames - 1, count).round().astype(np.int64)


class Judge:
    """Qwen3-VL judge. Build it where it runs (in the Ray actor): it loads the model in ``__init__``."""

    def __init__(self, config: JudgeConfig):
        from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

        if config.rubric_version not in RUBRICS:
            raise ValueError(f"unknown rubric_version {config.rubric_version!r}; known: {sorted(RUBRICS)}")
        self.config = config
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype, self.device)
        self.processor = AutoProcessor.from_pretrained(config.model)
        self.processor.tokenizer.padding_side = "left"  # answers are appended at the end of every row
        self.model = Qwen3VLForConditionalGeneration.from_pretrained(
            config.model, dtype=self.dtype, attn_implementation=config.attn_implementation
        ).to(self.device)
        self.model.eval()
        self.rubric = RUBRICS[config.rubric_version]
        self.axes = self.rubric.axes
        self.digit_ids, self.axis_ids = self._answer_tokens()

    def _answer_tokens(self) -> tuple[list[int], list[list[int]]]:
        """Token ids of the digits and of each axis' teacher-forced answer "``<axis>: 1``"."""
        tokenizer = self.processor.tokenizer
        digit_ids = []
        for d in range(10):
            ids = tokenizer.encode(str(d), add_special_tokens=False)
            if len(ids) != 1:
                raise ValueError(f"{self.config.model}: the digit {d} is not a single token ({ids})")
            digit_ids.append(ids[0])
        axis_ids = []
        for axis in self.rubric.axes:
            label = tokenizer.encode(f"{axis}: ", add_special_tokens=False)
            full = tokenizer.encode(f"{axis}: 1", add_special_tokens=False)
            if full != label + [digit_ids[1]]:
                raise ValueError(
                    f"{self.config.model}: '{axis}: 1' does not tokenize as the label followed by the digit "
                    f"token ({full} vs {label} + [{digit_ids[1]}]); the answer position would be wrong"
                )
            axis_ids.append(full)
        return digit_ids, axis_ids

    def with_config(self, config: JudgeConfig) -> Judge:
        """This judge under another rubric, mode or view of the clips, sharing its loaded model and processor
        (``config.model`` must be this judge's)."""
        import copy

        if config.model != self.config.model:
            raise ValueError(f"with_config keeps the model {self.config.model}, got {config.model}")
        if config.rubric_version not in RUBRICS:
            raise ValueError(f"unknown rubric_version {config.rubric_version!r}; known: {sorted(RUBRICS)}")
        other = copy.copy(self)
        other.config = config
        other.rubric = RUBRICS[config.rubric_version]
        other.axes = other.rubric.axes
        other.digit_ids, other.axis_ids = other._answer_tokens()
        return other

    @property
    def scorer_model(self) -> str:
        return self.config.model

    # -- inputs ---------------------------------------------------------------------------------------

    def prompt_text(self, instruction: str) -> str:
        """The chat-formatted prompt (media placeholders unexpanded), ending with the assistant turn."""
        content = [{"type": "text", "text": self.rubric.text + "\nSource video:"}, {"type": "video"}]
        if self.rubric.with_reference:
            content += [{"type": "text", "text": "Reference image:"}, {"type": "image"}]
        content += [
            {"type": "text", "text": "Edited video:"},
            {"type": "video"},
            {"type": "text", "text": f"Instruction: {instruction}"},
        ]
        messages = [{"role": "user", "content": content}]
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def load_clip(self, path: str) -> tuple[np.ndarray, Any]:
        """Frames sampled for the judge and their ``VideoMetadata`` (for the processor's timestamps)."""
        from transformers.video_utils import VideoMetadata

        info = probe(path, check_last_frame=False)
        indices = sample_frame_indices(info.num_frames, info.fps, self.config.fps, self.config.max_frames)
        frames = read_frames(path, indices)
        metadata = VideoMetadata(
            total_num_frames=info.num_frames,
            fps=info.fps,
            width=info.width,
            height=info.height,
            frames_indices=indices.tolist(),
        )
        return frames, metadata

    def processor_inputs(
        self, texts: list[str], clips: list[tuple[np.ndarray, Any]], images: list[np.ndarray] | None = None
    ) -> dict:
        """Tokenised prompts and media patches for the model (clips: source, target per prompt; images: the
        reference per prompt, for a rubric that shows it)."""
        video_processor = self.processor.video_processor
        num_frames = max(len(frames) for frames, _ in clips)
        size = {
            "shortest_edge": video_processor.size["shortest_edge"],
            "longest_edge": self.config.max_pixels_per_frame * num_frames,
        }
        extra: dict[str, Any] = {}
        if images:
            image_size = {
                "shortest_edge": self.processor.image_processor.size["shortest_edge"],
                "longest_edge": self.config.max_pixels_per_frame,
            }
            extra = {"images": images, "images_kwargs": {"size": image_size}}
        return self.processor(
            text=texts,
            videos=[frames for frames, _ in clips],
            video_metadata=[meta for _, meta in clips],
            do_sample_frames=False,
            padding=True,
            return_tensors="pt",
            videos_kwargs={"size": size, "cap_pixels_per_frame": True},
            **extra,
        )

    # -- scoring --------------------------------------------------------------------------------------

    def score_inputs(self, inputs: dict, keys: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Per-axis scores and answer masses, each (batch, num_axes), from processor outputs: expected values,
        or with ``temperature`` > 0 draws seeded by ``keys`` (the pair ids, in batch order)."""
        import torch

        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        for key in ("pixel_values_videos", "pixel_values"):
            if key in inputs:
                inputs[key] = inputs[key].to(self.dtype)
        batch = inputs["input_ids"].shape[0]
        num_axes = len(self.axes)
        with torch.inference_mode():
            # 1. prefill: the prompt and both videos, KV cache kept, no logits needed but the last
            prefill = self.model(**inputs, use_cache=True, logits_to_keep=1)
            cache = prefill.past_key_values
            positions, _ = self.model.model.get_rope_index(
                inputs["input_ids"],
                mm_token_type_ids=inputs["mm_token_type_ids"],
                image_grid_thw=inputs.get("image_grid_thw"),
                video_grid_thw=inputs.get("video_grid_thw"),
                attention_mask=inputs["attention_mask"],
            )  # (3, B, S), left padding at position 0
            start = positions.amax(dim=(0, 2)) + 1  # (B,): next text position of every row

            # 2. continuation: "<axis>: 1" for every (pair, axis), on the cache repeated per axis
            cache.batch_repeat_interleave(num_axes)
            length = max(len(ids) for ids in self.axis_ids)
            pad_id = self.processor.tokenizer.pad_token_id or 0
            cont_ids = torch.full((batch * num_axes, length), pad_id, dtype=torch.long, device=self.device)
            cont_mask = torch.zeros_like(cont_ids)
            for row in range(batch * num_axes):
                ids = self.axis_ids[row % num_axes]
                cont_ids[row, : len(ids)] = torch.tensor(ids, device=self.device)
                cont_mask[row, : len(ids)] = 1
            attention = torch.cat(
                [inputs["attention_mask"].repeat_interleave(num_axes, dim=0), cont_mask], dim=1
            )
            steps = torch.arange(length, device=self.device)
            cont_pos = start.repeat_interleave(num_axes)[:, None] + steps[None, :]  # (3B, L)
            out = self.model(
                input_ids=cont_ids,
                attention_mask=attention,
                position_ids=cont_pos[None].expand(3, -1, -1),
                past_key_values=cache,
            )
            answer = torch.tensor(
                [len(self.axis_ids[r % num_axes]) - 2 for r in range(batch * num_axes)], device=self.device
            )
            rows = torch.arange(batch * num_axes, device=self.device)
            first = out.logits[rows, answer]  # after "<axis>: "
            after_one = out.logits[rows, answer + 1]  # after "<axis>: 1"
            scale = self.rubric.scale
            if self.config.temperature > 0:
                if keys is None or len(keys) != batch:
                    raise ValueError("sampled scores need the pair ids of the batch (keys)")
                uniforms = [
                    pair_uniform(self.config.seed, keys[r // num_axes], self.axes[r % num_axes])
                    for r in range(batch * num_axes)
                ]
                expected, mass = sampled_scores(
                    first, after_one, self.digit_ids, uniforms, self.config.temperature, scale
                )
            else:
                expected, mass = expected_scores(first, after_one, self.digit_ids, scale)
        return (
            expected.view(batch, num_axes).cpu().numpy().astype(np.float64),
            mass.view(batch, num_axes).cpu().numpy().astype(np.float64),
        )

    def _result(
        self, pair_id: str, axes: np.ndarray | None, mass: np.ndarray | None, error: str | None
    ) -> dict:
        row: dict[str, Any] = {
            "pair_id": pair_id,
            "scorer_model": self.scorer_model,
            "rubric_version": self.config.rubric_version,
        }
        if error is not None:
            row.update({"score": None, **{a: None for a in self.axes}, "answer_mass": None})
            row.update({"reason": "scorer_error", "detail": error})
        else:
            row.update(
                {"score": float(axes.mean()), **{a: float(v) for a, v in zip(self.axes, axes, strict=True)}}
            )
            row.update({"answer_mass": float(mass.mean()), "reason": None, "detail": None})
        return row

    def _score_loaded(self, items: list[tuple]) -> list[dict]:
        """Score pairs whose media are loaded, ``(pair_id, instruction, source, target, reference)`` each
        (reference None unless the rubric shows it); a failed batch is retried pair by pair."""
        texts = [self.prompt_text(instruction) for _, instruction, *_ in items]
        clips = [clip for _, _, src, tgt, _ in items for clip in (src, tgt)]
        images = [reference for *_, reference in items] if self.rubric.with_reference else None
        try:
            inputs = self.processor_inputs(texts, clips, images)
            if self.config.temperature > 0:
                axes, mass = self.score_inputs(inputs, [str(pid) for pid, *_ in items])
            else:
                axes, mass = self.score_inputs(inputs)
            return [self._result(pid, axes[i], mass[i], None) for i, (pid, *_) in enumerate(items)]
        except Exception as err:
            if len(items) == 1:
                return [self._result(items[0][0], None, None, f"{type(err).__name__}: {err}"[:500])]
        return [row for item in items for row in self._score_loaded([item])]

    def _load_pair(self, record: dict) -> tuple:
        """(pair_id, instruction, source clip, target clip, reference image or None) of one row."""
        from dataengine.media.clips import load_reference

        reference = None
        if self.rubric.with_reference:
            path = record.get("reference_path")
            if not isinstance(path, str) or not path:
                raise ValueError(
                    f"rubric {self.rubric.version} shows the reference image, but the row has none"
                )
            reference = load_reference(path)
        source, target = self.load_clip(record["source_path"]), self.load_clip(record["target_path"])
        return record["pair_id"], record["instruction"], source, target, reference

    def score_pairs(self, pairs: pd.DataFrame) -> pd.DataFrame:
        """Score the rows of ``pairs`` (pair_id, instruction, source_path, target_path, and reference_path when
        the rubric shows it) in batches.

        Returns one row per pair (``rubric.result_columns``); a pair that fails has reason ``scorer_error``.
        """
        import pandas as pd

        columns = ["pair_id", "instruction", "source_path", "target_path"]
        if self.rubric.with_reference:
            if "reference_path" not in pairs.columns:
                raise ValueError(
                    f"rubric {self.rubric.version} shows the reference image: need a reference_path column"
                )
            columns.append("reference_path")
        results: list[dict] = []
        records = pairs[columns].to_dict("records")
        for start in range(0, len(records), self.config.batch_size):
            loaded = []
            for rec in records[start : start + self.config.batch_size]:
                try:
                    loaded.append(self._load_pair(rec))
                except Exception as err:
                    results.append(
                        self._result(rec["pair_id"], None, None, f"{type(err).__name__}: {err}"[:500])
                    )
            if loaded:
                results.extend(self._score_loaded(loaded))
        frame = pd.DataFrame(results, columns=self.rubric.result_columns)
        order = {pid: i for i, pid in enumerate(pairs["pair_id"])}
        return frame.sort_values("pair_id", key=lambda s: s.map(order)).reset_index(drop=True)
