"""Section 6, ``dit``: one 14B-wide MiVE block, forward + backward, at ``trainer plan``'s sequence per SP degree."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from functools import partial
from typing import Any

from benchmarks.bench_gpu.common import (
    TRAIN_RECIPE,
    Bench,
    _is_oom,
    _recipe_table,
    _row,
    _seconds,
)

# ---------------------------------------------------------------------------------------------- 6. the DiT


FUSED_ATTENTION_OPS = {  # aten ops scaled_dot_product_attention dispatches to, by backend
    "_scaled_dot_product_flash_attention_for_cpu": "flash (CPU)",
    "_scaled_dot_product_flash_attention": "flash",
    "_scaled_dot_product_cudnn_attention": "cuDNN",
    "_scaled_dot_product_efficient_attention": "efficient",
    "_scaled_dot_product_fused_attention_overrideable": "fused (overrideable)",
}


def attention_backends(fn: Callable[[], Any]) -> list[str]:
    """The SDPA backends ``fn`` dispatched to, read from the aten ops it ran (``math`` when no fused op ran
    but a softmax did)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class _Ops(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.names: set[str] = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
            self.names.add(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    with _Ops() as ops:
        fn()
    found = sorted({label for op, label in FUSED_ATTENTION_OPS.items() if op in ops.names})
    if not found and any("softmax" in name for name in ops.names):
        found = ["math"]
    return found


def _attention_rows(bench: Bench, num_heads: int, head_dim: int, seq: int, dtype: Any) -> Iterator[dict]:
    """Attention forward alone at the block's shape, each backend on its own (math would need L^2 memory)."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    gen = torch.Generator(device=bench.device).manual_seed(0)  # drawn on the device: 3 x 416M values
    q, k, v = (
        torch.randn(1, num_heads, seq, head_dim, generator=gen, device=bench.device, dtype=dtype)
        for _ in range(3)
    )
    flops = 4 * seq * seq * head_dim * num_heads
    for backend, label in (
        (SDPBackend.FLASH_ATTENTION, "flash"),
        (SDPBackend.CUDNN_ATTENTION, "cuDNN"),
        (SDPBackend.EFFICIENT_ATTENTION, "efficient"),
    ):
        try:
            with sdpa_kernel([backend]):
                seconds = _seconds(
                    bench, lambda: F.scaled_dot_product_attention(q, k, v), bench.profile.min_reps
                )
        except RuntimeError as err:
            yield _row(
                "dit", f"attention fwd, {label} alone", "unavailable", "", str(err).splitlines()[0][:100]
            )
            continue
        yield _row(
            "dit",
            f"attention fwd, {label} alone",
            flops / seconds / 1e12,
            "TFLOP/s",
            f"(1, {num_heads}, {seq:,}, {head_dim}) {str(dtype).removeprefix('torch.')}",
        )


def block_tflops_key(degree: int) -> str:
    """The key of the block's TFLOP/s per rank at sequence-parallel degree ``degree`` (SP 1: ``dit.block_tflops``)."""
    return "dit.block_tflops" if degree == 1 else f"dit.block_tflops_sp{degree}"


def _compiled_rows(
    bench: Bench, config: Any, seq: int, dtype: Any, residual: str, eager_s: float
) -> Iterator[dict]:
    """The block at SP 1 with its forward compiled (``train.parallel.compile_blocks``) against eager."""
    from benchmarks.bench_model import measure_block

    profile = bench.profile
    try:
        m = measure_block(
            config.dim, config.num_heads, config.ffn_dim, seq, profile.dit_condition, dtype, 1,
            device=bench.device, reps=profile.dit_reps, residual_dtype=residual, compiled=True,
        )  # fmt: skip
    except Exception as err:
        if not _is_oom(err):
            raise
        yield _row("dit", "SP 1 compiled", "OOM", "", f"{type(err).__name__}: {str(err)[:120]}")
        return
    yield _row("dit", "SP 1 compiled: block fwd+bwd", m["seconds"] * 1e3, "ms", "torch.compile'd forward")
    yield _row(
        "dit",
        "SP 1 compiled vs eager",
        eager_s / m["seconds"],
        "x",
        "eager time / compiled time (above 1: compiling pays)",
        key="dit.compiled_speedup",
    )
    if m["peak_memory_gib"] is not None:
        yield _row("dit", "SP 1 compiled: peak memory", m["peak_memory_gib"], "GiB", "above the weights")


def bench_dit(bench: Bench) -> Iterator[dict]:
    """One MiVE block of the real width, fwd+bwd at the plan's sequence, as one rank of each sequence-parallel
    degree (``benchmarks.bench_model.measure_block``), next to the plan's per-block numbers; the SDPA backend.

    Time (limit 80 s on one H100 / H200): at L = 81,248, D 5120, FFN 13824 the block's forward is
    L (8 D^2 + 4 D F) = 4.0e13 FLOP of projections and FFN plus 4 L^2 D = 1.35e14 of attention, 1.75e14 in all;
    forward + backward 3x that, 0.53 PFLOP as counted (about 0.7 executed: flash's backward recomputes the
    scores): 1.2-1.7 s per run at 400-500 TFLOP/s. A rank of SP N does 1/N of it (L/N tokens through the
    projections, H/N heads over all L in attention), so SP 1, 2, 4, 8 together are 1.875 SP 1 runs; one
    warm-up + ``dit_reps`` (2) timed runs each: 3 x 1.875 x 1.7 = 10 s. Building the four 246M-parameter blocks
    on the GPU, a second or two; the backend probe (one forward, 0.5 s) and the three backends' attention
    forward alone (1.35e14 FLOP, 3 runs each, the efficient one slower): about 5 s. About 20 s in all, 40 s at
    half the rate: 80 s leaves room for a slower GPU or backend. The compiled block at SP 1 (``dit_compiled``)
    comes last: inductor compiles its forward and backward in the warm-up (not measured on a GPU; on 2 CPU cores
    the debug model took 134 s; a GPU build with Triton kernels is assumed under 60 s), then 2 timed runs of
    1.2-1.7 s. If that overruns the section's limit only its rows are lost (the rows so far are kept); give it
    room with ``--time-limit dit=150``.
    """
    import torch

    from benchmarks.bench_model import measure_block
    from trainer.model import MiVEBlock, get_config, rope_cos_sin
    from trainer.plan import parameter_breakdown

    profile = bench.profile
    config = get_config(profile.dit_model)
    residual = _recipe_table(TRAIN_RECIPE, "train", "parallel").get("residual_dtype", "float32")
    dtype = torch.bfloat16 if bench.cuda else torch.float32
    dtype_name = str(dtype).removeprefix("torch.")
    frames, height, width = profile.dit_grid
    seq = profile.dit_condition + frames * height * width
    params = parameter_breakdown(config)
    eager_seconds = None  # the SP 1 block's, for the compiled-vs-eager row
    yield _row(
        "dit",
        "plan: parameters per block",
        params.per_block,
        "",
        f"{config.dim} wide; gathered {2 * params.per_block / 2**30:.2f} GiB in bf16",
    )
    for degree in profile.dit_sp_degrees:
        label = f"SP {degree}"
        try:
            m = measure_block(
                config.dim,
                config.num_heads,
                config.ffn_dim,
                seq,
                profile.dit_condition,
                dtype,
                degree,
                device=bench.device,
                reps=profile.dit_reps,
                residual_dtype=residual,
            )
        except Exception as err:
            if not _is_oom(err):
                raise
            yield _row("dit", label, "OOM", "", f"{type(err).__name__}: {str(err)[:120]}")
            continue
        yield _row(
            "dit",
            f"{label}: tokens per rank",
            m["tokens_per_rank"],
            "tokens",
            f"of L {seq:,} ({profile.dit_condition:,} condition); {m['heads_per_rank']} of {config.num_heads} heads",
            key=f"dit.tokens_per_rank_sp{degree}",
        )
        note = (
            f"{m['device']}, D {config.dim}, {dtype_name}, residual {residual}, fastest of {profile.dit_reps}"
        )
        yield _row("dit", f"{label}: block fwd+bwd", m["seconds"] * 1e3, "ms", note)
        yield _row(
            "dit",
            f"{label}: TFLOP/s per rank",
            m["tflops"],
            "TFLOP/s",
            "3 x forward matmul FLOPs / N",
            key=block_tflops_key(degree),
        )
        if m["mfu"] is not None:
            yield _row("dit", f"{label}: MFU", 100 * m["mfu"], "%", "of the dense bf16 peak")
        plan = (
            f"plan: block {m['plan_block_gib']:.2f} GiB (saved {m['plan_saved_gib']:.2f} + transient "
            f"{m['plan_transient_gib']:.2f} + input)"
        )
        if m["peak_memory_gib"] is not None:
            yield _row(
                "dit", f"{label}: peak memory", m["peak_memory_gib"], "GiB", f"above the weights; {plan}"
            )
        else:
            yield _row("dit", f"{label}: plan's block memory", m["plan_block_gib"], "GiB", plan)
        if degree == 1:
            eager_seconds = m["seconds"]

    # which SDPA kernel the block's attention dispatches to (SP 1, the whole sequence)
    device = torch.device(bench.device)
    torch.manual_seed(0)
    with torch.device(device):
        block = MiVEBlock(replace(config, residual_dtype=residual)).to(dtype)
    x = torch.randn(1, seq, config.dim, device=device, dtype=dtype)
    time_mod = torch.randn(1, 2, 6, config.dim, device=device) * 0.1
    rope = rope_cos_sin(config, profile.dit_grid, profile.dit_condition, device)
    num_clean = profile.dit_condition + height * width
    with torch.no_grad():
        backends = attention_backends(partial(block, x, time_mod, rope, None, num_clean))
    del block, x
    yield _row(
        "dit",
        "SDPA backend in the block",
        ", ".join(backends) or "none found",
        "",
        "the aten op the block's attention ran",
    )
    yield from _attention_rows(bench, config.num_heads, config.head_dim, seq, dtype)
    if profile.dit_compiled and eager_seconds is not None:
        yield from _compiled_rows(bench, config, seq, dtype, residual, eager_seconds)
