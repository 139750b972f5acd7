"""The MiVE DiT: Wan2.1's self-attention backbone with multi-level VLM context and a reference frame.

One self-contained file (architecture only). The picture (shapes for one sample; D = ``dim``):

    phi_1, phi_L (S, vlm_dim) --RMSNorm + Linear(D/2) each--concat--fusion Linear--> c (S, D)      t = 0
    [z_ref; z_t] ++channels [z_ref; z_src] --> (32, T'+1, H', W') --patchify (1,2,2)--> v (N_v, D)
        reference-frame patches use t = 0, target patches use the current t
    [c; v] --num_layers x (AdaLN self-attention with 3-D RoPE on v, AdaLN FFN)--> head on target patches
        --> unpatchify --> velocity (16, T', H', W') for the target frames only

Design choices (see docs/model.md):
- Token order is ``[condition tokens; reference-frame patches; target patches]``. The first two groups
  are "clean" (they use the t = 0 embedding), so the clean tokens are a prefix of length
  ``num_clean = S + H'W'/4``. Each block computes two modulation vectors (clean, noisy) per sample and
  applies them to the two segments; nothing of size (B, L, 6, D) is ever materialised.
- 3-D RoPE (Wan's 44/42/42 split of head dim 128, interleaved pairs, theta 10000) on the visual tokens:
  the reference frame sits at frame index 0 and the targets at 1..T'. Condition tokens get the identity
  rotation (cos = 1, sin = 0): they carry no position, so their attention scores depend on content only.
- Padded condition tokens (``vlm_mask`` False) are zeroed at the input and masked out as keys in every
  attention, so they influence no other token. Their own outputs are garbage and are never read.
- Precision: LayerNorm, RMSNorm, modulation, RoPE and the residual adds run in float32 (``.float()``),
  matmuls run in the parameters' dtype (bf16 under FSDP2 mixed precision). ``residual_dtype = "bfloat16"``
  runs the blocks' LayerNorms, modulation and residual adds in bf16 instead (RoPE, the q/k RMSNorms'
  arithmetic and the head stay float32): about a fifth of the bytes a block keeps for its backward, at a
  measured precision cost (docs/training.md).
- Sequence parallelism (Ulysses; section 3): ``forward(..., sp=SequenceParallel(group))`` splits the
  sequence over the group's ranks, which all hold the same sample. Each rank builds [c; v] in full (cheap),
  pads it at the end to a multiple of N and keeps its contiguous chunk through the norms, projections, FFN
  and modulation; attention exchanges the sequence split for a head split (all-to-all), attends over the
  whole sequence with H/N heads, and exchanges back. Everything positional (the clean prefix of per-token
  AdaLN, RoPE, the key mask) is taken from global positions; the head's small output is all-gathered, so
  every rank returns the whole velocity. Without ``sp`` (or N = 1) the code path is the one above.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

# ---------------------------------------------------------------------------------------------------
# 0. Config
# ---------------------------------------------------------------------------------------------------

ADAPTER_INITS = ("zero_fusion", "normal")
RESIDUAL_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass
class MiVEConfig:
    """The MiVE DiT's dimensions. ``mive_14b`` equals Wan2.1-T2V-14B's self-attention backbone."""

    dim: int
    """Hidden width D of every token (Wan2.1-14B: 5120)."""
    num_layers: int
    """Number of transformer blocks (the FSDP2 / activation-checkpointing units)."""
    num_heads: int
    """Attention heads; head dim = dim / num_heads (Wan: 128), split 3-way for 3-D RoPE."""
    ffn_dim: int
    """Inner width of each block's GELU(tanh) MLP (Wan2.1-14B: 13824)."""
    freq_dim: int = 256
    """Width of the sinusoidal timestep features fed to the time-embedding MLP."""
    latent_channels: int = 16
    """VAE latent channels C; the patch embedding sees 2C (noisy branch + control branch), the head emits C."""
    patch_size: tuple[int, int, int] = (1, 2, 2)
    """Patch size (t, h, w) over the latent grid."""
    vlm_dim: int = 4096
    """Width of the VLM hidden states phi_1, phi_L (Qwen3-VL-8B: 4096)."""
    eps: float = 1e-6
    """Epsilon of every LayerNorm and RMSNorm."""
    rope_theta: float = 10000.0
    """RoPE base frequency."""
    rope_max_seq_len: int = 1024
    """Largest patch-grid extent per axis the RoPE accepts (Wan's table size); larger grids are an error."""
    adapter_init: str = "zero_fusion"
    """Initialisation of the context adapter: ``zero_fusion`` (fusion Linear all zero, so condition tokens
    start as exact zeros and training begins from Wan's behaviour plus a few constant tokens) or ``normal``
    (truncated normal, std 0.02, everywhere)."""
    init_std: float = 0.02
    """Std of the truncated-normal init of fresh Linear layers (used when weights are not loaded)."""
    residual_dtype: str = "float32"
    """Dtype of the blocks' LayerNorms, q/k RMSNorms, modulation and residual adds: ``float32`` (Wan's and
    diffusers' ``.float()`` path) or ``bfloat16`` (12 of the ~63 bytes per token and hidden unit a block
    keeps for its backward are saved; precision cost in docs/training.md). The trainer sets it from
    ``train.parallel.residual_dtype``; it changes no parameter."""

    def __post_init__(self) -> None:
        self.patch_size = tuple(self.patch_size)
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if self.head_dim % 2 or self.dim % 2:
            raise ValueError(
                f"head dim {self.head_dim} and dim {self.dim} must be even (RoPE pairs, D/2 adapter)"
            )
        if self.adapter_init not in ADAPTER_INITS:
            raise ValueError(f"adapter_init {self.adapter_init!r} is not one of {ADAPTER_INITS}")
        if len(self.patch_size) != 3:
            raise ValueError(f"patch_size {self.patch_size} must have 3 entries (t, h, w)")
        if self.residual_dtype not in RESIDUAL_DTYPES:
            raise ValueError(
                f"residual_dtype {self.residual_dtype!r} is not one of {sorted(RESIDUAL_DTYPES)}"
            )

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def rope_dims(self) -> tuple[int, int, int]:
        """Head-dim split (t, h, w) of the 3-D RoPE, as in Wan: h = w = 2 * (head_dim // 6), t the rest."""
        hw = 2 * (self.head_dim // 6)
        return self.head_dim - 2 * hw, hw, hw


CONFIGS: dict[str, MiVEConfig] = {
    "mive_14b": MiVEConfig(dim=5120, num_layers=40, num_heads=40, ffn_dim=13824),
    # Tiny: head dim 32 (RoPE split 12/10/10), vlm_dim matches dataengine.synthetic.qwen3vl's tiny model.
    "debug": MiVEConfig(dim=128, num_layers=2, num_heads=4, ffn_dim=256, freq_dim=64, vlm_dim=64),
}


def get_config(name: str, **overrides: object) -> MiVEConfig:
    """A copy of the named config (``mive_14b`` or ``debug``), with optional field overrides."""
    if name not in CONFIGS:
        raise ValueError(f"unknown model config {name!r}; known: {sorted(CONFIGS)}")
    return replace(CONFIGS[name], **overrides)


# ---------------------------------------------------------------------------------------------------
# 1. Small layers: norms, time embedding, RoPE
# ---------------------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """RMSNorm computed in ``dtype`` (float32 unless told), weight applied in it, result cast back to the input dtype."""

    def __init__(self, dim: int, eps: float, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.eps = eps
        self.dtype = dtype
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x.to(self.dtype), (x.shape[-1],), self.weight.to(self.dtype), self.eps).type_as(x)


def layer_norm(x: torch.Tensor, eps: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Wan's affine-free LayerNorm, computed in and returned as ``dtype`` (float32 unless told)."""
    return F.layer_norm(x.to(dtype), (x.shape[-1],), eps=eps)


def timestep_features(timestep: torch.Tensor, freq_dim: int) -> torch.Tensor:
    """Sinusoidal features [cos, sin] of Wan's timestep (units of [0, 1000]): (N,) -> (N, freq_dim) float32."""
    half = freq_dim // 2
    exponent = torch.arange(half, dtype=torch.float64, device=timestep.device) / half
    angles = timestep.double()[:, None] * torch.pow(10000.0, -exponent)[None, :]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1).float()


class TimeEmbedding(nn.Module):
    """Wan's time MLP: sinusoid (freq_dim) -> Linear -> SiLU -> Linear (D)."""

    def __init__(self, freq_dim: int, dim: int) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.linear_1 = nn.Linear(freq_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, timestep: torch.Tensor) -> torch.Tensor:
        feats = timestep_features(timestep, self.freq_dim).to(self.linear_1.weight.dtype)
        return self.linear_2(F.silu(self.linear_1(feats)))


def rope_axis_angles(num_positions: int, dim: int, theta: float, device: torch.device) -> torch.Tensor:
    """Angles (num_positions, dim/2) in float64 of one RoPE axis: pos * theta^(-2i/dim)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64, device=device) / dim)
    return torch.arange(num_positions, dtype=torch.float64, device=device)[:, None] * inv_freq[None, :]


def rope_cos_sin(
    config: MiVEConfig, grid: tuple[int, int, int], num_condition: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin, each (L, head_dim/2) float32, for the sequence [condition tokens; visual grid].

    Visual token (f, h, w) gets Wan's 3-D angles; the ``num_condition`` leading tokens get angle 0
    (identity rotation). Computed on the fly: no buffers, so meta-device init and FSDP2 need no care.
    """
    frames, height, width = grid
    if max(grid) > config.rope_max_seq_len:
        raise ValueError(f"patch grid {grid} exceeds rope_max_seq_len {config.rope_max_seq_len}")
    dim_t, dim_h, dim_w = config.rope_dims
    ang_t = rope_axis_angles(frames, dim_t, config.rope_theta, device)  # (F, dim_t/2)
    ang_h = rope_axis_angles(height, dim_h, config.rope_theta, device)  # (H, dim_h/2)
    ang_w = rope_axis_angles(width, dim_w, config.rope_theta, device)  # (W, dim_w/2)
    angles = torch.cat(
        [
            ang_t[:, None, None, :].expand(frames, height, width, -1),
            ang_h[None, :, None, :].expand(frames, height, width, -1),
            ang_w[None, None, :, :].expand(frames, height, width, -1),
        ],
        dim=-1,
    ).reshape(frames * height * width, config.head_dim // 2)  # (N_v, head_dim/2)
    angles = torch.cat([angles.new_zeros(num_condition, config.head_dim // 2), angles])  # (L, head_dim/2)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs (x[2i], x[2i+1]) as Wan does. x: (B, L, H, hd); cos, sin: (L, hd/2)."""
    pairs = x.float().unflatten(-1, (-1, 2))  # (B, L, H, hd/2, 2)
    x1, x2 = pairs[..., 0], pairs[..., 1]
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]  # (1, L, 1, hd/2)
    rotated = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return rotated.flatten(-2).type_as(x)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, num_clean: int) -> torch.Tensor:
    """Per-segment AdaLN in x's dtype: x (B, L, D); shift, scale (B, 2, D) float32 = [clean, noisy] -> (B, L, D).

    Tokens [0, num_clean) use row 0, the rest row 1: two vectors, never one per token. Under sequence
    parallelism x is this rank's chunk and ``num_clean`` the count of its tokens inside the global prefix.
    """
    shift, scale = shift.to(x.dtype), scale.to(x.dtype)
    clean = torch.addcmul(shift[:, 0:1], x[:, :num_clean], 1 + scale[:, 0:1])
    noisy = torch.addcmul(shift[:, 1:2], x[:, num_clean:], 1 + scale[:, 1:2])
    return torch.cat([clean, noisy], dim=1)


def gated_residual(
    x: torch.Tensor,
    update: torch.Tensor,
    gate: torch.Tensor,
    num_clean: int,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """x + gate * update per segment, added in ``dtype`` (float32 unless told), cast back to x's dtype.
    gate: (B, 2, D)."""
    update, gate = update.to(dtype), gate.to(dtype)
    gated = torch.cat([update[:, :num_clean] * gate[:, 0:1], update[:, num_clean:] * gate[:, 1:2]], dim=1)
    return (x.to(dtype) + gated).type_as(x)


# ---------------------------------------------------------------------------------------------------
# 2. Multi-level context adapter
# ---------------------------------------------------------------------------------------------------


class ContextAdapter(nn.Module):
    """phi_1, phi_L (B, S, vlm_dim) -> condition tokens c (B, S, D).

    Each level: RMSNorm + Linear(vlm_dim -> D/2); the two halves are concatenated on features and mixed
    by the fusion Linear(D -> D).
    """

    def __init__(self, vlm_dim: int, dim: int, eps: float) -> None:
        super().__init__()
        self.norm_first = RMSNorm(vlm_dim, eps)
        self.proj_first = nn.Linear(vlm_dim, dim // 2)
        self.norm_last = RMSNorm(vlm_dim, eps)
        self.proj_last = nn.Linear(vlm_dim, dim // 2)
        self.fusion = nn.Linear(dim, dim)

    def forward(self, vlm_first: torch.Tensor, vlm_last: torch.Tensor) -> torch.Tensor:
        dtype = self.proj_first.weight.dtype
        first = self.proj_first(self.norm_first(vlm_first).to(dtype))  # (B, S, D/2)
        last = self.proj_last(self.norm_last(vlm_last).to(dtype))  # (B, S, D/2)
        return self.fusion(torch.cat([first, last], dim=-1))  # (B, S, D)


# ---------------------------------------------------------------------------------------------------
# 3. Sequence parallelism (Ulysses): the process group is an argument of forward, nothing global
# ---------------------------------------------------------------------------------------------------


class _AllToAll(torch.autograd.Function):
    """``dist.all_to_all_single`` over dim 0 (block j goes to rank j); its backward is the same exchange."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:  # noqa: ANN001
        ctx.group = group
        out = torch.empty_like(x, memory_format=torch.contiguous_format)
        dist.all_to_all_single(out, x.contiguous(), group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: ANN001
        out = torch.empty_like(grad, memory_format=torch.contiguous_format)
        dist.all_to_all_single(out, grad.contiguous(), group=ctx.group)
        return out, None


class _AllGather(torch.autograd.Function):
    """``dist.all_gather_single`` along dim 0; its backward reduce-scatters (sums) the ranks' gradients."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:  # noqa: ANN001
        ctx.group = group
        out = x.new_empty((dist.get_world_size(group) * x.shape[0], *x.shape[1:]))
        dist.all_gather_single(out, x.contiguous(), group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: ANN001
        out = grad.new_empty((grad.shape[0] // dist.get_world_size(ctx.group), *grad.shape[1:]))
        dist.reduce_scatter_single(out, grad.contiguous(), op=dist.ReduceOp.SUM, group=ctx.group)
        return out, None


class SequenceParallel:
    """Ulysses sequence parallelism over the N ranks of ``group``, which all hold the same sample.

    Three exchanges, blocking ``torch.distributed`` collectives inside autograd functions (the backward of an
    all-to-all is the reverse all-to-all, that of an all-gather a reduce-scatter that sums the N ranks'
    gradients). Blocking, not the asynchronous functional collectives: their pending work kept buffers
    alive for a time that depended on scheduling (measured on gloo), which made the memory unpredictable.

    - :meth:`sequence_to_heads` (B, l, H, hd) -> (B, N l, H/N, hd): every rank sends head group j of its l
      tokens to rank j and receives its own head group of every rank's tokens, in rank order;
    - :meth:`heads_to_sequence`: the inverse;
    - :meth:`gather_sequence` (B, l, E) -> (B, N l, E): the chunks of all ranks, in rank order.

    A subclass may replace the three (``benchmarks/bench_model.py`` emulates one rank on one GPU).
    """

    def __init__(self, group: dist.ProcessGroup) -> None:
        self.group = group
        self.size = dist.get_world_size(group)
        self.rank = dist.get_rank(group)

    def sequence_to_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, chunk, heads, head_dim = x.shape
        n = self.size
        send = x.reshape(batch, chunk, n, heads // n, head_dim).permute(2, 0, 1, 3, 4)  # (N, B, l, H/N, hd)
        received = _AllToAll.apply(send, self.group)  # (N, B, l, H/N, hd): block j holds rank j's tokens
        return received.permute(1, 0, 2, 3, 4).reshape(batch, n * chunk, heads // n, head_dim)

    def heads_to_sequence(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, heads, head_dim = x.shape
        n = self.size
        send = x.reshape(batch, n, length // n, heads, head_dim).transpose(0, 1)  # (N, B, l, H/N, hd)
        received = _AllToAll.apply(send, self.group)  # (N, B, l, H/N, hd): block j holds head group j
        return received.permute(1, 2, 0, 3, 4).reshape(batch, length // n, n * heads, head_dim)

    def gather_sequence(self, x: torch.Tensor) -> torch.Tensor:
        gathered = _AllGather.apply(x.transpose(0, 1), self.group)  # (N l, B, E)
        return gathered.transpose(0, 1)  # (B, N l, E)


@dataclass(frozen=True)
class SequenceShard:
    """This rank's tokens in one forward: chunk ``rank`` of the unified sequence padded at the end to N chunks."""

    sp: SequenceParallel
    seq_len: int  # L, the sequence without padding

    @property
    def chunk(self) -> int:
        return -(-self.seq_len // self.sp.size)

    @property
    def padded_len(self) -> int:
        return self.chunk * self.sp.size

    @property
    def start(self) -> int:
        return self.sp.rank * self.chunk

    def local_count(self, num_leading: int) -> int:
        """How many of this rank's tokens lie in the global prefix [0, num_leading)."""
        return min(max(num_leading - self.start, 0), self.chunk)

    def take(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """This rank's chunk of a full-sequence tensor along ``dim``, zero-filled past L, as its own storage
        (a view would keep the whole sequence alive as long as the chunk)."""
        start = min(self.start, self.seq_len)
        part = x.narrow(dim, start, min(self.chunk, self.seq_len - start))
        missing = self.chunk - part.shape[dim]
        if missing:
            shape = list(part.shape)
            shape[dim] = missing
            return torch.cat([part, part.new_zeros(shape)], dim=dim)
        return part.clone()


# ---------------------------------------------------------------------------------------------------
# 4. Attention and block
# ---------------------------------------------------------------------------------------------------


class SelfAttention(nn.Module):
    """Wan's self-attention: qk RMSNorm across all heads, RoPE, SDPA, output projection."""

    def __init__(self, dim: int, num_heads: int, eps: float, norm_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.to_out = nn.Linear(dim, dim)
        self.norm_q = RMSNorm(dim, eps, norm_dtype)
        self.norm_k = RMSNorm(dim, eps, norm_dtype)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        attn_mask: torch.Tensor | None,
        shard: SequenceShard | None = None,
    ) -> torch.Tensor:
        """x: (B, l, D), the whole sequence (l = L) or this rank's chunk under sequence parallelism."""
        q = self.norm_q(self.to_q(x)).unflatten(-1, (self.num_heads, -1))  # (B, l, H, hd)
        k = self.norm_k(self.to_k(x)).unflatten(-1, (self.num_heads, -1))  # (B, l, H, hd)
        v = self.to_v(x).unflatten(-1, (self.num_heads, -1))  # (B, l, H, hd)
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if shard is not None:
            # all tokens, H/N heads; the end padding is trimmed: no mask needed for it, flash kernels stay usable
            qkv = shard.sp.sequence_to_heads(torch.cat([q, k, v]))  # (3B, L_pad, H/N, hd)
            q, k, v = qkv[:, : shard.seq_len].chunk(3)  # (B, L, H/N, hd) each
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=attn_mask
        ).transpose(1, 2)  # (B, L, H', hd)
        if shard is not None:
            out = F.pad(out, (0, 0, 0, 0, 0, shard.padded_len - shard.seq_len))  # (B, L_pad, H/N, hd)
            out = shard.sp.heads_to_sequence(out)  # (B, l, H, hd)
        return self.to_out(out.flatten(2))  # (B, l, D)


class FeedForward(nn.Module):
    """Linear(D -> F), GELU(tanh), Linear(F -> D)."""

    def __init__(self, dim: int, ffn_dim: int) -> None:
        super().__init__()
        self.proj_in = nn.Linear(dim, ffn_dim)
        self.proj_out = nn.Linear(ffn_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj_out(F.gelu(self.proj_in(x), approximate="tanh"))


class MiVEBlock(nn.Module):
    """AdaLN self-attention over [c; v] + AdaLN FFN; Wan's block without cross-attention."""

    def __init__(self, config: MiVEConfig) -> None:
        super().__init__()
        self.eps = config.eps
        self.residual_dtype = RESIDUAL_DTYPES[config.residual_dtype]
        self.attn = SelfAttention(config.dim, config.num_heads, config.eps, self.residual_dtype)
        self.ffn = FeedForward(config.dim, config.ffn_dim)
        # Wan's per-block modulation table: rows (shift, scale, gate) of attention then of the FFN.
        self.scale_shift_table = nn.Parameter(torch.randn(1, 6, config.dim) / config.dim**0.5)

    def forward(
        self,
        x: torch.Tensor,
        time_mod: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        attn_mask: torch.Tensor | None,
        num_clean: int,
        shard: SequenceShard | None = None,
    ) -> torch.Tensor:
        """x: (B, l, D) (l = L, or this rank's chunk under sequence parallelism; ``num_clean`` then counts its
        clean tokens); time_mod: (B, 2, 6, D) float32 projected time embeddings [clean (t=0), noisy (t)]."""
        mod = self.scale_shift_table.float()[:, None] + time_mod  # (B, 2, 6, D)
        shift_msa, scale_msa, gate_msa, shift_ffn, scale_ffn, gate_ffn = mod.unbind(dim=2)  # each (B, 2, D)
        dtype = self.residual_dtype

        # 1. Self-attention over all tokens
        h = modulate(layer_norm(x, self.eps, dtype), shift_msa, scale_msa, num_clean).type_as(x)
        x = gated_residual(x, self.attn(h, rope, attn_mask, shard), gate_msa, num_clean, dtype)

        # 2. Feed-forward
        h = modulate(layer_norm(x, self.eps, dtype), shift_ffn, scale_ffn, num_clean).type_as(x)
        return gated_residual(x, self.ffn(h), gate_ffn, num_clean, dtype)


# ---------------------------------------------------------------------------------------------------
# 5. The model
# ---------------------------------------------------------------------------------------------------


@torch.no_grad()
def init_context_adapter(
    adapter: ContextAdapter, config: MiVEConfig, generator: torch.Generator | None = None
) -> None:
    """Initialise a context adapter per ``config.adapter_init`` (``zero_fusion``: fusion weight and bias are
    zero), drawing from ``generator`` (default: torch's global one). ``trainer.wan_weights`` draws a whole
    adapter on the CPU from a generator seeded by the recipe, so the values do not depend on the mesh."""
    std = config.init_std
    for linear in (adapter.proj_first, adapter.proj_last, adapter.fusion):
        nn.init.trunc_normal_(linear.weight, std=std, a=-2 * std, b=2 * std, generator=generator)
        nn.init.zeros_(linear.bias)
    nn.init.ones_(adapter.norm_first.weight)
    nn.init.ones_(adapter.norm_last.weight)
    if config.adapter_init == "zero_fusion":
        nn.init.zeros_(adapter.fusion.weight)


class MiVETransformer(nn.Module):
    """The MiVE DiT. ``blocks`` are the FSDP2 / activation-checkpointing units."""

    def __init__(self, config: MiVEConfig) -> None:
        super().__init__()
        self.config = config
        dim, channels = config.dim, config.latent_channels

        # 1. Condition tokens from the VLM's first and last hidden states
        self.context_adapter = ContextAdapter(config.vlm_dim, dim, config.eps)

        # 2. Patch embedding of [noisy branch (C); control branch (C)]
        self.patch_embedding = nn.Conv3d(
            2 * channels, dim, kernel_size=config.patch_size, stride=config.patch_size
        )

        # 3. Time embedding and its projection to the 6 modulation rows of every block
        self.time_embedder = TimeEmbedding(config.freq_dim, dim)
        self.time_proj = nn.Linear(dim, 6 * dim)

        # 4. Blocks
        self.blocks = nn.ModuleList([MiVEBlock(config) for _ in range(config.num_layers)])

        # 5. Head (affine-free LayerNorm, modulation (shift, scale), Linear to C * prod(patch))
        self.proj_out = nn.Linear(dim, channels * math.prod(config.patch_size))
        self.scale_shift_table = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)

        if not any(p.is_meta for p in self.parameters()):
            self.init_weights()

    # ----- initialisation ----------------------------------------------------------------------------

    @torch.no_grad()
    def init_weights(self) -> None:
        """Initialise every parameter (e.g. after ``to_empty``); Wan weights are loaded on top of this.

        Linear / Conv: truncated normal (std ``init_std``), zero bias; norms: ones; modulation tables:
        randn / sqrt(D) as in Wan. The context adapter follows ``adapter_init``.
        """
        std = self.config.init_std
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Conv3d):
                nn.init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
                nn.init.zeros_(module.bias)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)
            elif isinstance(module, MiVEBlock):
                module.scale_shift_table.normal_(0.0, self.config.dim**-0.5)
        self.scale_shift_table.normal_(0.0, self.config.dim**-0.5)
        self.init_context_adapter()

    @torch.no_grad()
    def init_context_adapter(self) -> None:
        """Initialise the adapter per ``adapter_init`` (``zero_fusion``: fusion weight and bias are zero)."""
        init_context_adapter(self.context_adapter, self.config)

    # ----- forward -----------------------------------------------------------------------------------

    def forward(
        self,
        noisy_latents: torch.Tensor,
        source_latents: torch.Tensor,
        reference_latents: torch.Tensor,
        timestep: torch.Tensor,
        vlm_first: torch.Tensor | None = None,
        vlm_last: torch.Tensor | None = None,
        vlm_mask: torch.Tensor | None = None,
        sp: SequenceParallel | None = None,
    ) -> torch.Tensor:
        """Velocity for the target frames.

        noisy_latents, source_latents: (B, C, T', H', W'); reference_latents: (B, C, 1, H', W');
        timestep: (B,) in Wan's units [0, 1000]; vlm_first, vlm_last: (B, S, vlm_dim) or None;
        vlm_mask: (B, S) bool, True = real token (None = all real: pass None when no token is padded, so that
        attention runs without a mask); sp: the sequence-parallel group this
        rank shares the sample with (None: no sequence parallelism). Returns (B, C, T', H', W'), the whole
        velocity on every rank of ``sp``.
        """
        config = self.config
        batch, channels, frames, height, width = noisy_latents.shape
        self._check_inputs(
            noisy_latents, source_latents, reference_latents, timestep, vlm_first, vlm_last, vlm_mask
        )
        if sp is not None and config.num_heads % sp.size:
            raise ValueError(
                f"sequence parallel degree {sp.size} must divide num_heads {config.num_heads} "
                "(Ulysses gives each rank num_heads / degree heads)"
            )
        p_t, p_h, p_w = config.patch_size
        dtype = self.patch_embedding.weight.dtype

        # 1. Condition tokens c: (B, S, D), padded tokens zeroed at the input
        if vlm_first is not None:
            if vlm_mask is not None:
                keep = vlm_mask[..., None].to(vlm_first.dtype)
                vlm_first, vlm_last = vlm_first * keep, vlm_last * keep
            cond = self.context_adapter(vlm_first, vlm_last)
            num_condition = cond.shape[1]
        else:
            cond, num_condition = None, 0

        # 2. Reference-aware latents: [z_ref; z_t] ++channels [z_ref; z_src] -> (B, 2C, T'+1, H', W')
        noisy_branch = torch.cat([reference_latents, noisy_latents], dim=2)
        control_branch = torch.cat([reference_latents, source_latents], dim=2)
        latents = torch.cat([noisy_branch, control_branch], dim=1).to(dtype)
        visual = self.patch_embedding(latents)  # (B, D, F, Hp, Wp)
        grid = tuple(visual.shape[2:])  # (F, Hp, Wp) = (T'+1, H'/2, W'/2)
        visual = visual.flatten(2).transpose(1, 2)  # (B, N_v, D)
        tokens_per_frame = grid[1] * grid[2]
        x = (visual if cond is None else torch.cat([cond.to(dtype), visual], dim=1)).contiguous()  # (B, L, D)
        del visual, cond  # the patch-embedding output would otherwise stay alive through the forward
        num_clean = num_condition + tokens_per_frame  # condition tokens + reference-frame patches

        # 3. Two time embeddings per sample: t = 0 (clean prefix) and t (target patches)
        both_t = torch.cat([torch.zeros_like(timestep), timestep])  # (2B,)
        temb = self.time_embedder(both_t)  # (2B, D)
        time_mod = self.time_proj(F.silu(temb)).float().unflatten(-1, (6, -1))  # (2B, 6, D)
        time_mod = time_mod.unflatten(0, (2, batch)).transpose(0, 1)  # (B, 2, 6, D): [clean, noisy]
        temb_target = temb[batch:].float()  # (B, D)

        # 4. RoPE angles and the key mask of padded condition tokens
        rope = rope_cos_sin(config, grid, num_condition, x.device)
        attn_mask = None
        if vlm_mask is not None and num_condition:  # no host read of the mask: a given mask is applied
            keys = torch.cat(
                [vlm_mask.bool(), vlm_mask.new_ones(batch, x.shape[1] - num_condition, dtype=torch.bool)], 1
            )
            attn_mask = keys[:, None, None, :]  # (B, 1, 1, L): True = may be attended to

        # 5. Sequence parallelism: this rank keeps its chunk of the end-padded sequence; positions stay global
        shard, seq_len = None, x.shape[1]
        if sp is not None and sp.size > 1:
            shard = SequenceShard(sp, seq_len)
            x = shard.take(x, dim=1)  # (B, l, D), l = ceil(L / N); padded tokens are never read
            rope = (shard.take(rope[0], dim=0), shard.take(rope[1], dim=0))  # (l, hd/2): global positions
            num_clean = shard.local_count(num_clean)  # this rank's tokens inside the clean prefix

        # 6. Blocks
        for block in self.blocks:
            x = block(x, time_mod, rope, attn_mask, num_clean, shard)

        # 7. Head on the target patches only (the reference frame and condition tokens are dropped). Under
        #    sequence parallelism it runs on this rank's chunk and the small (C * p)-wide outputs of all ranks
        #    are gathered: every rank returns the whole velocity (the gather's backward sums the ranks'
        #    gradients, so each SP rank's gradients count the loss N times: FSDP's average over dp x sp
        #    ranks divides that back out).
        if shard is None:
            x = x[:, num_clean:]  # (B, T' * Hp * Wp, D)
        shift, scale = (self.scale_shift_table.float() + temb_target[:, None]).unbind(dim=1)  # (B, D) each
        x = layer_norm(x, config.eps) * (1 + scale[:, None]) + shift[:, None]
        x = self.proj_out(x.to(dtype))  # (B, N_target or l, C * p_t * p_h * p_w)
        if shard is not None:
            global_clean = num_condition + tokens_per_frame
            x = shard.sp.gather_sequence(x)[:, global_clean:seq_len]  # (B, N_target, C * p_t * p_h * p_w)

        # 8. Unpatchify: (B, T'/p_t, Hp, Wp, p_t, p_h, p_w, C) -> (B, C, T', H', W')
        x = x.reshape(batch, frames // p_t, height // p_h, width // p_w, p_t, p_h, p_w, channels)
        return x.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(batch, channels, frames, height, width)

    def _check_inputs(
        self,
        noisy_latents: torch.Tensor,
        source_latents: torch.Tensor,
        reference_latents: torch.Tensor,
        timestep: torch.Tensor,
        vlm_first: torch.Tensor | None,
        vlm_last: torch.Tensor | None,
        vlm_mask: torch.Tensor | None,
    ) -> None:
        config = self.config
        if noisy_latents.ndim != 5 or noisy_latents.shape[1] != config.latent_channels:
            raise ValueError(
                f"noisy_latents must be (B, {config.latent_channels}, T', H', W'), got {tuple(noisy_latents.shape)}"
            )
        batch, channels, frames, height, width = noisy_latents.shape
        if source_latents.shape != noisy_latents.shape:
            raise ValueError(
                f"source_latents {tuple(source_latents.shape)} != noisy_latents {tuple(noisy_latents.shape)}"
            )
        if tuple(reference_latents.shape) != (batch, channels, 1, height, width):
            raise ValueError(
                f"reference_latents must be {(batch, channels, 1, height, width)}, got {tuple(reference_latents.shape)}"
            )
        if tuple(timestep.shape) != (batch,):
            raise ValueError(f"timestep must be ({batch},), got {tuple(timestep.shape)}")
        p_t, p_h, p_w = config.patch_size
        if frames % p_t or height % p_h or width % p_w or p_t != 1:
            raise ValueError(
                f"latent grid (T'={frames}, H'={height}, W'={width}) must divide by patch size {config.patch_size} (p_t must be 1: the reference is one frame)"
            )
        if (vlm_first is None) != (vlm_last is None):
            raise ValueError("vlm_first and vlm_last must be given together (or both None)")
        if vlm_first is not None:
            if vlm_first.ndim != 3 or vlm_first.shape[0] != batch or vlm_first.shape[2] != config.vlm_dim:
                raise ValueError(
                    f"vlm_first must be ({batch}, S, {config.vlm_dim}), got {tuple(vlm_first.shape)}"
                )
            if vlm_last.shape != vlm_first.shape:
                raise ValueError(f"vlm_last {tuple(vlm_last.shape)} != vlm_first {tuple(vlm_first.shape)}")
            if vlm_mask is not None and tuple(vlm_mask.shape) != tuple(vlm_first.shape[:2]):
                raise ValueError(
                    f"vlm_mask must be {tuple(vlm_first.shape[:2])}, got {tuple(vlm_mask.shape)}"
                )


# ---------------------------------------------------------------------------------------------------
# 6. Size and FLOPs
# ---------------------------------------------------------------------------------------------------


def num_parameters(model: nn.Module) -> int:
    """Number of parameters (works on the meta device)."""
    return sum(p.numel() for p in model.parameters())


def mive_flops(
    config: MiVEConfig,
    num_visual_tokens: int,
    num_condition_tokens: int,
    num_target_tokens: int | None = None,
) -> float:
    """Forward FLOPs of one sample (multiply-add = 2 FLOPs; training step ~ 3x this).

    ``num_visual_tokens`` counts the patches of all T'+1 frames (reference included);
    ``num_target_tokens`` the patches the head runs on, T' x H'/2 x W'/2 (default: ``num_visual_tokens``,
    a slight overcount of the small head).
    Counted: matmuls (adapter, patch embedding, q/k/v/o, attention scores and values, FFN, head, time MLP).
    Elementwise work (norms, RoPE, modulation, softmax) is left out, as in the usual 6N + attention rule.
    """
    d, f, s = config.dim, config.ffn_dim, num_condition_tokens
    seq = num_visual_tokens + s
    targets = num_visual_tokens if num_target_tokens is None else num_target_tokens
    patch_in = 2 * config.latent_channels * math.prod(config.patch_size)
    patch_out = config.latent_channels * math.prod(config.patch_size)
    adapter = s * (2 * 2 * config.vlm_dim * (d // 2) + 2 * d * d)
    embed = num_visual_tokens * 2 * patch_in * d
    time = 2 * (2 * config.freq_dim * d + 2 * d * d + 2 * d * 6 * d)  # two timesteps per sample
    per_block = seq * (2 * 4 * d * d + 2 * 2 * d * f) + 2 * 2 * seq * seq * d
    head = targets * 2 * d * patch_out
    return float(adapter + embed + time + config.num_layers * per_block + head)


@dataclass
class ParameterCount:
    """Parameter count of a config, by part (built on the meta device)."""

    total: int
    by_part: dict[str, int] = field(default_factory=dict)


def count_parameters(config: MiVEConfig) -> ParameterCount:
    """Build the model on the meta device and count its parameters by top-level part."""
    with torch.device("meta"):
        model = MiVETransformer(config)
    by_part: dict[str, int] = {}
    for name, param in model.named_parameters():
        part = name.split(".")[0]
        by_part[part] = by_part.get(part, 0) + param.numel()
    return ParameterCount(total=num_parameters(model), by_part=by_part)


if __name__ == "__main__":
    for name in CONFIGS:
        count = count_parameters(CONFIGS[name])
        print(f"{name}: {count.total:,} parameters ({count.total / 1e9:.3f} B)")
        for part, n in count.by_part.items():
            print(f"  {part:18s} {n:,}")
