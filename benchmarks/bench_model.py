"""The MiVE block against diffusers' Wan block: speed, activation memory, and (on a GPU) TFLOP/s and MFU.

    .venv/bin/python -m benchmarks.bench_model [--quick]

CPU rows (always):
- forward+backward tokens/s of one ``MiVEBlock`` (unified self-attention over [c; v], two-segment AdaLN)
  and of diffusers' ``WanTransformerBlock`` (self-attention + cross-attention to 512 text tokens) at the
  same width, FFN ratio, head dim 128 and total sequence length; diffusers with its ordinary (B, 6, D)
  timestep and with its per-token (B, L, 6, D) timestep path (the Wan2.2 TI2V path MiVE's per-token
  AdaLN would need there); the ratio ours / diffusers.
- activation memory: bytes autograd saves for the backward of one block (parameters excluded, storages
  counted once), ours vs diffusers per-token vs diffusers per-sample; plus the size of the per-token
  modulation input at the paper's 14B shape (79,200 visual + condition tokens), which exists once per model.
GPU rows (only with CUDA): one 14B-width block (D 5120, 40 heads, FFN 13824) in bf16 at 79,200 visual +
``NUM_CONDITION_GPU`` condition tokens: forward+backward time, TFLOP/s from ``mive_flops``' per-block
formula (3x forward), MFU against the device's dense bf16 peak, peak memory; and diffusers' block at
the same sequence (per-sample timestep) for comparison. Then :func:`measure_block` at the paper's 81,248
tokens for sequence-parallel degrees 1, 2, 4, 8: one rank's share of a block on one GPU, next to the
plan's per-block figures.

:func:`measure_block` is public (``benchmarks.bench_gpu.dit`` calls it): it emulates one rank of a
sequence-parallel group on one device. The block code is ``trainer.model.MiVEBlock`` as the trainer runs
it under ``sp``; only the exchanges are replaced by local copies of the same sizes
(:class:`EmulatedSequenceParallel`): norms, projections, FFN and modulation on L/N tokens, attention over
all L tokens with H/N heads. The network time of the real all-to-alls is not in it.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

import torch

from trainer.model import MiVEBlock, MiVEConfig, SequenceParallel, SequenceShard, rope_cos_sin
from trainer.plan import (
    DTYPE_BYTES,
    TokenShape,
    backward_transient_bytes,
    block_activation_bytes,
    token_shape,
)

if TYPE_CHECKING:  # diffusers loads where its block is built: measure_block does not need it
    from diffusers.models.transformers.transformer_wan import WanTransformerBlock

NUM_TEXT_TOKENS = 512  # Wan's T5 context length (cross-attention keys in diffusers' block)
NUM_CONDITION_GPU = (
    3600  # condition tokens in the GPU row (text + reference image + video tokens; one 45x80 frame's worth)
)
PAPER_GRID = (22, 45, 80)  # (T'+1, H'/2, W'/2) for 81 frames at 720P: 79,200 visual tokens


def _block_config(dim: int, ffn_dim: int, num_heads: int) -> MiVEConfig:
    return MiVEConfig(dim=dim, num_layers=1, num_heads=num_heads, ffn_dim=ffn_dim)


def _block_flops(dim: int, ffn_dim: int, seq: int, cross: int = 0) -> float:
    """Forward matmul FLOPs of one block (q, k, v, o, FFN, attention); ``cross`` adds Wan's cross-attention."""
    flops = seq * (8 * dim * dim + 4 * dim * ffn_dim) + 4 * seq * seq * dim
    if cross:
        flops += seq * 4 * dim * dim + cross * 4 * dim * dim + 4 * seq * cross * dim
    return float(flops)


class _Inputs:
    """Inputs of both blocks at one shape: ours gets [c; v], diffusers gets v plus text context."""

    def __init__(
        self,
        config: MiVEConfig,
        grid: tuple[int, int, int],
        num_condition: int,
        batch: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        frames, height, width = grid
        self.num_visual = frames * height * width
        self.seq = self.num_visual + num_condition
        self.num_clean = num_condition + height * width
        gen = torch.Generator(device="cpu").manual_seed(0)
        dim = config.dim
        self.x = torch.randn(batch, self.seq, dim, generator=gen).to(device, dtype)
        self.time_mod = torch.randn(batch, 2, 6, dim, generator=gen).to(device) * 0.1
        self.rope = rope_cos_sin(config, grid, num_condition, device)
        # diffusers: the same total sequence as visual tokens (a grid with `seq` cells), text context
        if num_condition % (height * width):
            raise ValueError(
                f"num_condition {num_condition} must be whole frames of {height} x {width} (diffusers' grid)"
            )
        self.wan_grid = (frames + num_condition // (height * width), height, width)
        f, h, w = self.wan_grid
        self.wan_x = torch.randn(batch, f * h * w, dim, generator=gen).to(device, dtype)
        self.text = torch.randn(batch, NUM_TEXT_TOKENS, dim, generator=gen).to(device, dtype)
        from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

        rope = WanRotaryPosEmbed(config.head_dim, (1, 2, 2), 1024).to(device)
        self.wan_rope = tuple(r.to(device) for r in rope(torch.empty(1, 1, f, 2 * h, 2 * w, device="meta")))
        self.temb_sample = torch.randn(batch, 6, dim, generator=gen).to(device) * 0.1
        self.batch = batch

    def temb_per_token(self) -> torch.Tensor:
        """diffusers' (B, L, 6, D) float32 per-token modulation input (two values, materialised per token)."""
        seq = self.wan_x.shape[1]
        per_token = self.temb_sample[:, None].repeat(1, seq, 1, 1)
        per_token[:, self.num_clean :] += 0.05
        return per_token


def _ours_step(block: MiVEBlock, inputs: _Inputs) -> Callable[[], torch.Tensor]:
    def step() -> torch.Tensor:
        x = inputs.x.detach().requires_grad_(True)
        return block(x, inputs.time_mod, inputs.rope, None, inputs.num_clean)

    return step


def _wan_step(block: WanTransformerBlock, inputs: _Inputs, temb: torch.Tensor) -> Callable[[], torch.Tensor]:
    def step() -> torch.Tensor:
        x = inputs.wan_x.detach().requires_grad_(True)
        return block(x, inputs.text, temb, inputs.wan_rope)

    return step


def _time_fwd_bwd(step: Callable[[], torch.Tensor], reps: int, sync: Callable[[], None]) -> float:
    """Fastest of ``reps`` forward + backward runs, in seconds (after one warm-up)."""
    times = []
    for i in range(reps + 1):
        sync()
        start = time.perf_counter()
        step().float().square().mean().backward()
        sync()
        if i:
            times.append(time.perf_counter() - start)
    return min(times)  # the least disturbed run (other processes share the CPU)


def _saved_bytes(module: torch.nn.Module, step: Callable[[], torch.Tensor]) -> int:
    """Bytes of the tensors autograd saves for backward (parameters excluded, each storage once)."""
    params = {p.untyped_storage().data_ptr() for p in module.parameters()}
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = step()
    del out
    return sum(storages.values())


def _cpu_rows(quick: bool) -> list[dict]:
    dim, num_heads = (256, 2) if quick else (512, 4)  # head dim 128 as in Wan
    ffn_dim = int(dim * 13824 / 5120)
    grid, num_condition = ((4, 8, 8), 64) if quick else ((7, 16, 16), 256)
    config = _block_config(dim, ffn_dim, num_heads)
    torch.manual_seed(0)
    ours = MiVEBlock(config)
    from diffusers.models.transformers.transformer_wan import WanTransformerBlock

    wan = WanTransformerBlock(dim, ffn_dim, num_heads, "rms_norm_across_heads", True, 1e-6)
    inputs = _Inputs(config, grid, num_condition, 1, torch.device("cpu"), torch.float32)
    seq = inputs.seq
    assert inputs.wan_x.shape[1] == seq
    shape = (
        f"D {dim}, FFN {ffn_dim}, seq {seq} ({num_condition} cond), fp32, {torch.get_num_threads()} threads"
    )
    reps = 2 if quick else 4
    steps = {
        "mive_block": _ours_step(ours, inputs),
        "wan_block": _wan_step(wan, inputs, inputs.temb_sample),
        "wan_block_per_token_t": _wan_step(wan, inputs, inputs.temb_per_token()),
    }
    rows: list[dict] = []
    # interleaved rounds, fastest per variant: other processes share these cores
    rounds = [
        {name: _time_fwd_bwd(step, 1, lambda: None) for name, step in steps.items()} for _ in range(reps)
    ]
    seconds = {name: min(r[name] for r in rounds) for name in steps}
    for name, sec in seconds.items():
        rows.append(
            {
                "benchmark": "model_cpu",
                "metric": f"{name} fwd+bwd",
                "value": seq / sec,
                "unit": "tokens/s",
                "note": shape,
            }
        )
    for name in ("wan_block", "wan_block_per_token_t"):
        rows.append(
            {
                "benchmark": "model_cpu",
                "metric": f"speed ratio mive_block / {name}",
                "value": seconds[name] / seconds["mive_block"],
                "unit": "x",
                "note": f"diffusers' block also cross-attends to {NUM_TEXT_TOKENS} text tokens",
            }
        )
    saved = {
        "mive_block": _saved_bytes(ours, steps["mive_block"]),
        "wan_block_per_token_t": _saved_bytes(wan, steps["wan_block_per_token_t"]),
        "wan_block": _saved_bytes(wan, steps["wan_block"]),
    }
    for name, value in saved.items():
        rows.append(
            {
                "benchmark": "model_cpu",
                "metric": f"{name} saved activations",
                "value": value / 2**20,
                "unit": "MiB",
                "note": f"{value / (seq * dim * 4):.1f} x (L x D fp32)",
            }
        )
    rows.append(
        {
            "benchmark": "model_cpu",
            "metric": "activation ratio wan_block_per_token_t / mive_block",
            "value": saved["wan_block_per_token_t"] / saved["mive_block"],
            "unit": "x",
            "note": "per block; diffusers saves its (B, L, 6, D) fp32 modulation in every block",
        }
    )
    # the modulation input at the paper's shape (14B width), analytic
    seq_14b = PAPER_GRID[0] * PAPER_GRID[1] * PAPER_GRID[2] + NUM_CONDITION_GPU
    rows.append(
        {
            "benchmark": "model_14b_shape",
            "metric": "per-token modulation (B=1, L, 6, 5120) fp32",
            "value": seq_14b * 6 * 5120 * 4 / 2**30,
            "unit": "GiB",
            "note": f"L = {seq_14b:,}; diffusers' ti2v path, once per model plus the table sum saved per block",
        }
    )
    rows.append(
        {
            "benchmark": "model_14b_shape",
            "metric": "two-segment modulation (B=1, 2, 6, 5120) fp32",
            "value": 2 * 6 * 5120 * 4 / 2**10,
            "unit": "KiB",
            "note": "ours, per block",
        }
    )
    return rows


def _gpu_peak(name: str) -> float | None:
    from trainer.flops import peak_bf16_flops

    return peak_bf16_flops(name)


def _block_rows(
    device: torch.device,
    dim: int,
    num_heads: int,
    ffn_dim: int,
    grid: tuple[int, int, int],
    num_condition: int,
    dtype: torch.dtype,
    reps: int,
) -> list[dict]:
    """One block of each kind at one shape on ``device``: time, TFLOP/s, MFU (CUDA) and peak memory (CUDA)."""
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    name = torch.cuda.get_device_name() if cuda else "CPU"
    peak = _gpu_peak(name) if cuda else None
    config = _block_config(dim, ffn_dim, num_heads)
    torch.manual_seed(0)
    inputs = _Inputs(config, grid, num_condition, 1, device, dtype)
    seq = inputs.seq
    shape = f"{name}, seq {seq:,} ({num_condition:,} cond), D {dim}, {str(dtype).removeprefix('torch.')}"
    from diffusers.models.transformers.transformer_wan import WanTransformerBlock

    blocks = {
        "mive_block": lambda: MiVEBlock(config),
        "wan_block": lambda: WanTransformerBlock(
            dim, ffn_dim, num_heads, "rms_norm_across_heads", True, 1e-6
        ),
    }
    flops = {
        "mive_block": _block_flops(dim, ffn_dim, seq),
        "wan_block": _block_flops(dim, ffn_dim, seq, NUM_TEXT_TOKENS),
    }
    rows: list[dict] = []
    for label, build in blocks.items():
        block = build().to(device, dtype)
        step = (
            _ours_step(block, inputs)
            if label == "mive_block"
            else _wan_step(block, inputs, inputs.temb_sample)
        )
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() if cuda else 0
        sec = _time_fwd_bwd(step, reps, sync)
        tflops = 3 * flops[label] / sec / 1e12
        rows.append(
            {
                "benchmark": "model_gpu",
                "metric": f"{label} fwd+bwd",
                "value": sec * 1e3,
                "unit": "ms",
                "note": shape,
            }
        )
        rows.append(
            {
                "benchmark": "model_gpu",
                "metric": f"{label} TFLOP/s",
                "value": tflops,
                "unit": "TFLOP/s",
                "note": "3 x forward matmul FLOPs",
            }
        )
        if peak:
            rows.append(
                {
                    "benchmark": "model_gpu",
                    "metric": f"{label} MFU",
                    "value": 100 * tflops * 1e12 / peak,
                    "unit": "%",
                    "note": f"of {peak / 1e12:.0f} TFLOP/s dense bf16",
                }
            )
        if cuda:
            memory = (torch.cuda.max_memory_allocated() - base) / 2**30
            rows.append(
                {
                    "benchmark": "model_gpu",
                    "metric": f"{label} peak memory fwd+bwd",
                    "value": memory,
                    "unit": "GiB",
                    "note": "one block, no checkpointing, above the weights",
                }
            )
        del block, step
    return rows


class EmulatedSequenceParallel(SequenceParallel):
    """One rank of an N-rank sequence-parallel group, alone on one device: each exchange is a local copy of
    the size the real one returns (this rank's head group of every token; all heads of its own tokens;
    the gathered head output), so the block does a rank's work on a rank's memory, without a network."""

    def __init__(self, size: int, rank: int = 0) -> None:
        self.group, self.size, self.rank = None, size, rank

    def sequence_to_heads(self, x: torch.Tensor) -> torch.Tensor:
        heads = x.shape[2] // self.size
        return x[:, :, :heads].repeat(1, self.size, 1, 1)  # (B, N l, H/N, hd)

    def heads_to_sequence(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, : x.shape[1] // self.size].repeat(1, 1, self.size, 1)  # (B, l, H, hd)

    def gather_sequence(self, x: torch.Tensor) -> torch.Tensor:
        return x.repeat(1, self.size, 1)  # (B, N l, E)


def measure_block(
    dim: int,
    heads: int,
    ffn: int,
    seq_len: int,
    num_condition: int,
    dtype: torch.dtype,
    sp_degree: int = 1,
    device: str | torch.device | None = None,
    reps: int = 3,
    residual_dtype: str = "float32",
    compiled: bool = False,
) -> dict:
    """One ``MiVEBlock``'s forward + backward as one rank of a sequence-parallel group of ``sp_degree`` does it.

    ``compiled``: the block's forward goes through ``torch.compile`` first, as ``train.parallel.compile_blocks``
    does (``trainer.parallel.apply_compile``); the compilation happens in the untimed warm-up.

    ``seq_len`` is the whole unified sequence L (condition + visual tokens); the rank holds
    l = ceil(L / N) tokens and attends over L tokens with H/N heads (:class:`EmulatedSequenceParallel`).
    ``device`` None takes CUDA when available. Returns a dict: the shapes (``tokens_per_rank``,
    ``heads_per_rank``), ``seconds`` (fastest of ``reps`` after a warm-up), ``tflops`` (3x the block's
    forward FLOPs / N, per second), ``mfu`` (CUDA with a known peak, else None), ``peak_memory_gib``
    (CUDA: peak allocated above the weights and the input, else None), and the plan's per-block figures for
    the same rank: ``plan_saved_gib`` (what the block saves for its backward), ``plan_transient_gib``
    (gradients in flight) and ``plan_block_gib`` (their sum plus the block input, what the peak above
    should approach).
    """
    device = (
        torch.device(device)
        if device is not None
        else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    )
    if heads % sp_degree:
        raise ValueError(f"sp_degree {sp_degree} must divide heads {heads}")
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    config = MiVEConfig(dim=dim, num_layers=1, num_heads=heads, ffn_dim=ffn, residual_dtype=residual_dtype)
    torch.manual_seed(0)
    with torch.device(device):  # initialised where it runs: a 14B-wide block is 246M parameters
        block = MiVEBlock(config).to(dtype)
    if compiled:
        block.forward = torch.compile(block.forward)
    sp = EmulatedSequenceParallel(sp_degree) if sp_degree > 1 else None
    shard = SequenceShard(sp, seq_len) if sp is not None else None
    tokens = shard.chunk if shard is not None else seq_len
    # RoPE angles of the rank's tokens (values do not change the work): positions start, start + 1, ...
    start = shard.start if shard is not None else 0
    inv_freq = 1.0 / 10000 ** (torch.arange(0, config.head_dim, 2, device=device) / config.head_dim)
    angles = torch.arange(start, start + tokens, device=device)[:, None] * inv_freq[None]
    rope = (angles.cos(), angles.sin())
    num_clean = num_condition  # the clean prefix: condition tokens (+ reference frame, here folded in)
    local_clean = shard.local_count(num_clean) if shard is not None else num_clean
    gen = torch.Generator(device=device).manual_seed(0)  # drawn where they run: 416M values at SP 1 on a GPU
    x = torch.randn(1, tokens, dim, generator=gen, device=device).to(dtype)
    time_mod = torch.randn(1, 2, 6, dim, generator=gen, device=device) * 0.1

    def step() -> torch.Tensor:
        return block(x.detach().requires_grad_(True), time_mod, rope, None, local_clean, shard)

    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() if cuda else 0
    seconds = _time_fwd_bwd(step, reps, sync)
    flops = 3 * _block_flops(dim, ffn, seq_len) / sp_degree
    name = torch.cuda.get_device_name(device) if cuda else "CPU"
    peak = _gpu_peak(name) if cuda else None
    c, r = DTYPE_BYTES[str(dtype).removeprefix("torch.")], DTYPE_BYTES[residual_dtype]
    shape = _token_shape_of(config, seq_len, num_condition)
    saved = block_activation_bytes(config, seq_len, 1, c, r, sp_degree)
    transient = backward_transient_bytes(config, shape, 1, c, r, sp_degree)
    return {
        "device": name,
        "dim": dim,
        "heads": heads,
        "ffn": ffn,
        "seq_len": seq_len,
        "num_condition": num_condition,
        "dtype": str(dtype).removeprefix("torch."),
        "sp_degree": sp_degree,
        "compiled": compiled,
        "tokens_per_rank": tokens,
        "heads_per_rank": heads // sp_degree,
        "seconds": seconds,
        "tflops": flops / seconds / 1e12,
        "mfu": flops / seconds / peak if peak else None,
        "peak_memory_gib": (torch.cuda.max_memory_allocated() - base) / 2**30 if cuda else None,
        "plan_saved_gib": saved / 2**30,
        "plan_transient_gib": transient / 2**30,
        "plan_block_gib": (saved + transient + c * tokens * dim) / 2**30,
    }


def _token_shape_of(config: MiVEConfig, seq_len: int, num_condition: int) -> TokenShape:
    """A TokenShape with the given L (the plan's transient formula reads only its seq_len)."""
    return replace(token_shape(config, 1, 16, 16, num_condition), seq_len=seq_len)


def sequence_parallel_rows(quick: bool) -> list[dict]:
    """``measure_block`` at SP 1, 2, 4, 8: the paper's 81,248 tokens and 14B width on a GPU; tiny on the CPU."""
    if torch.cuda.is_available():
        dim, heads, ffn, seq_len, num_condition = 5120, 40, 13824, 81_248, 2048
        if quick:
            seq_len = 16_248
        dtype, reps = torch.bfloat16, 2
    else:
        dim, heads, ffn, seq_len, num_condition = 256, 8, 688, 1201, 64
        dtype, reps = torch.float32, 1
    rows = []
    for degree in (1, 2, 4, 8):
        m = measure_block(dim, heads, ffn, seq_len, num_condition, dtype, degree, reps=reps)
        note = f"{m['device']}, D {dim}, L {seq_len:,}: {m['tokens_per_rank']:,} tokens and {m['heads_per_rank']} heads per rank"
        rows.append(
            {
                "benchmark": "model_sp",
                "metric": f"SP {degree}: block fwd+bwd",
                "value": m["seconds"] * 1e3,
                "unit": "ms",
                "note": note,
            }
        )
        rows.append(
            {
                "benchmark": "model_sp",
                "metric": f"SP {degree}: TFLOP/s per rank",
                "value": m["tflops"],
                "unit": "TFLOP/s",
                "note": "3 x forward matmul FLOPs / N",
            }
        )
        if m["mfu"] is not None:
            rows.append(
                {
                    "benchmark": "model_sp",
                    "metric": f"SP {degree}: MFU",
                    "value": 100 * m["mfu"],
                    "unit": "%",
                    "note": "dense bf16 peak",
                }
            )
        if m["peak_memory_gib"] is not None:
            rows.append(
                {
                    "benchmark": "model_sp",
                    "metric": f"SP {degree}: peak memory",
                    "value": m["peak_memory_gib"],
                    "unit": "GiB",
                    "note": f"plan: block {m['plan_block_gib']:.2f} GiB (saved {m['plan_saved_gib']:.2f} + transient {m['plan_transient_gib']:.2f} + input)",
                }
            )
        else:
            rows.append(
                {
                    "benchmark": "model_sp",
                    "metric": f"SP {degree}: plan's block memory",
                    "value": m["plan_block_gib"],
                    "unit": "GiB",
                    "note": "saved + transient + input (no allocator peak on the CPU)",
                }
            )
    return rows


def _gpu_rows(quick: bool) -> list[dict]:
    grid = (6, 45, 80) if quick else PAPER_GRID
    return _block_rows(torch.device("cuda"), 5120, 40, 13824, grid, NUM_CONDITION_GPU, torch.bfloat16, reps=3)


def run(quick: bool = False) -> list[dict]:
    """Rows of the CPU comparison, the GPU rows when CUDA is available, and the sequence-parallel rows."""
    rows = _cpu_rows(quick)
    if torch.cuda.is_available():
        rows += _gpu_rows(quick)
    return rows + sequence_parallel_rows(quick)


if __name__ == "__main__":
    from benchmarks.run import format_table

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    print(format_table(run(quick=parser.parse_args().quick)))
