"""What every section of ``make bench-gpu`` shares: the paper's workload constants, the profiles (``real``,
``debug``), the :class:`Bench` a section gets, the row format, and timing and memory helpers."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
DATA_RECIPE = ROOT / "manifests" / "openve.toml"
TRAIN_RECIPE = ROOT / "manifests" / "train_mive_14b.toml"
SECTIONS = ("judge", "vlm", "vae", "detector", "sam2", "dit")
DEFAULT_OUT = ROOT / "benchmarks" / "gpu-results"
TOTAL_LIMIT_S = 480.0  # the whole run, model construction included, on one H100 / H200

# The paper's data engine and training (MIVE.md): what the projection multiplies the measured rates by.
OPENVE_PAIRS = 2_450_000
OPENVE_CLIP = (97, 24.0)  # (frames, fps) of a typical OpenVE-3M clip: 65-129 frames at 24-30 fps
# Source videos the portrait harvest scans (distinct original_video of every CSV row): not published; at most one
# per pair, which the projection takes (an upper bound: several edits of one source shrink it).
OPENVE_SOURCE_VIDEOS = OPENVE_PAIRS
TRAINING_SAMPLES = 30_000
PAPER_TRAIN_GPU_HOURS = 8 * 65  # "8x H100, about 65 hours"
INSTRUCTION = (
    "Replace the red car parked on the left side of the street with a blue bicycle leaning against the wall, "
    "keep the pedestrians, the shop windows, the lighting and the camera motion exactly as they are in the "
    "source video, and make the bicycle cast a soft shadow on the pavement."
)  # about 50 words: OpenVE instructions average about 40


@dataclass(frozen=True)
class Profile:
    """What one run builds and measures: ``real`` (published configs, the paper's workloads) or ``debug``."""

    model_size: str
    """``real`` or ``debug``: the configurations of ``benchmarks.bench_gpu.model_configs`` to build."""
    judge_clip: tuple[int, float] = OPENVE_CLIP
    """(frames, fps) of each 720P OpenVE clip the judge samples (OpenVE: 65-129 frames at 24-30 fps)."""
    judge_batch_sizes: tuple[int, ...] = (1, 4, 8, 16)
    """Pairs per prefill measured; the recipe's batch size (8) also runs the generate() baseline."""
    judge_min_pairs: int = 16
    """Each batch size is timed over at least this many pairs (the same preprocessed batch repeated)."""
    vlm_samples: int = 6
    """Timed encoder forwards."""
    vae_clip: tuple[int, int, int] | None = None
    """(frames, height, width) of the VAE clip; None: the recipe's (81 frames, its first 720P bucket)."""
    detector_frame: tuple[int, int] = (720, 1280)
    """(height, width) of the frames the person detector gets: OpenVE's 720P sources (the harvest)."""
    detector_batch_sizes: tuple[int, ...] = (1, 8, 32, 64)
    """Frames per detector forward measured; the recipe's (``[portraits.detector] batch_size``) also end to end."""
    detector_min_frames: int = 64
    """Each batch size's forward is timed over at least this many frames (the same batch repeated)."""
    sam2_clip: tuple[int, int, int] | None = None
    """(frames, height, width) of the portrait clip; None: the recipe's (81 frames at 720x1280)."""
    dit_model: str = "mive_14b"
    """``trainer.model`` config whose block width is measured."""
    dit_grid: tuple[int, int, int] = (22, 45, 80)
    """(T'+1, H'/2, W'/2) patch grid: 81 frames at 720P (79,200 tokens)."""
    dit_condition: int = 2048
    """Condition tokens in front of the visual ones: ``trainer plan``'s (``PlanConfig.num_condition_tokens``),
    so the block runs the plan's L = 81,248 tokens."""
    dit_sp_degrees: tuple[int, ...] = (1, 2, 4, 8)
    """Sequence-parallel degrees whose per-rank share of the block is measured (each divides the heads)."""
    dit_reps: int = 2
    """Timed forward + backward runs of the block per degree, after one warm-up (the fastest is kept)."""
    dit_compiled: bool = True
    """Also time the block at SP 1 with its forward compiled (``train.parallel.compile_blocks``): the
    compiled-vs-eager row. The compilation (inductor) runs in the warm-up."""
    warmup: int = 1
    """Untimed runs before each timed measurement (kernel selection, autotuning, caches)."""
    min_reps: int = 2
    """Fewest timed runs of a measurement."""
    time_limits: dict[str, float] = field(
        default_factory=lambda: {
            "judge": 120.0,
            "vlm": 60.0,
            "vae": 100.0,
            "detector": 30.0,
            "sam2": 70.0,
            "dit": 80.0,
        }
    )
    """Seconds each section may run (its process is killed after that). Together 460 s, plus the shared imports
    within ``TOTAL_LIMIT_S``. The judge's (140 s before the detector came): 8.8B parameters x 2 x about 2.6K tokens
    per pair = 46 TFLOP, 0.1 s per pair at 400 TFLOP/s; about 110 pairs with the warm-ups and 16 for the
    generate baseline, plus the processor on the CPU (29 pairs): well under 120 s. ``bench_dit`` and
    ``bench_detector`` say theirs."""


PROFILES = {
    "real": Profile("real"),
    "debug": Profile(
        "debug",
        judge_batch_sizes=(1, 2),
        judge_min_pairs=1,
        vlm_samples=1,
        vae_clip=(9, 64, 64),
        detector_frame=(48, 80),
        detector_batch_sizes=(1, 2),
        detector_min_frames=1,
        sam2_clip=(5, 64, 64),
        dit_model="debug",
        dit_grid=(2, 4, 4),
        dit_condition=16,
        dit_sp_degrees=(1, 2, 4),  # the debug model's 4 heads
        dit_reps=1,
        dit_compiled=False,  # inductor's C++ build of the block takes minutes on a CPU
        warmup=0,
        min_reps=1,
        time_limits=dict.fromkeys(SECTIONS, 120.0),
    ),
}


@dataclass(frozen=True)
class Bench:
    """Everything a section needs (picklable: it crosses into the section's process)."""

    profile: Profile
    device: str
    """A torch device string (``cuda``, ``cuda:1``, ``cpu``)."""
    work: Path
    """A scratch folder for the sections' config folders."""

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    def compute_dtype(self, recipe_dtype: str) -> str:
        """The recipe's dtype on a GPU; float32 on a CPU (as ``auto`` would choose there)."""
        return recipe_dtype if self.cuda else "float32"


def _row(benchmark: str, metric: str, value: Any, unit: str, note: str = "", key: str | None = None) -> dict:
    row = {"benchmark": benchmark, "metric": metric, "value": value, "unit": unit, "note": note}
    if key:
        row["key"] = key  # what the projection looks the value up by
    return row


# ---------------------------------------------------------------------------------------------- measuring


def _sync(bench: Bench) -> None:
    import torch

    if bench.cuda:
        torch.cuda.synchronize(bench.device)


def _reset_peak(bench: Bench) -> None:
    import torch

    if bench.cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(bench.device)


def _peak_gib(bench: Bench) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated(bench.device) / 2**30 if bench.cuda else None


def _seconds(bench: Bench, fn: Callable[[], Any], reps: int, warmup: int | None = None) -> float:
    """Mean seconds of ``fn`` over ``reps`` runs after ``warmup`` untimed ones (default: the profile's)."""
    for _ in range(bench.profile.warmup if warmup is None else warmup):
        fn()
    _sync(bench)
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    _sync(bench)
    return (time.perf_counter() - start) / reps


def _is_oom(err: BaseException) -> bool:
    import torch

    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


def _memory_row(
    bench: Bench, benchmark: str, metric: str, note: str = "", key: str | None = None
) -> list[dict]:
    peak = _peak_gib(bench)
    return [] if peak is None else [_row(benchmark, metric, peak, "GiB", note, key)]


def _recipe_table(path: Path, *keys: str) -> dict:
    from dataengine.formats.recipe import load_recipe

    table = load_recipe(path)
    for key in keys:
        table = table[key]
    return table


def _random_frames(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _built(bench: Bench, benchmark: str, name: str, seconds: float, model: Any) -> dict:
    from benchmarks.bench_gpu.model_configs import MODELS, num_parameters

    spec, count = MODELS[name], num_parameters(model)
    note = (
        f"{count / 1e6:,.1f}M parameters (published: {spec.published_parameters}), {spec.source} "
        f"({bench.profile.model_size} config), random weights"
    )
    return _row(benchmark, "build (constructor, random init on the device)", seconds, "s", note)
