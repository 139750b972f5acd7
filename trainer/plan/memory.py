"""The memory model of ``trainer plan``: parameters, FLOPs and the bytes of one training step per GPU, one
function per term (what autograd saves per block, outside the blocks, in the backward's flight, the inputs),
summed per phase by :func:`memory_estimate`. A new term (an EMA copy, a checkpoint's staging buffers) is a
function here and one line in :func:`memory_estimate`'s phases."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from trainer.flops import TokenShape
from trainer.plan.common import DTYPE_BYTES, FP32, PlanConfig

if TYPE_CHECKING:  # torch-heavy modules load inside the functions: ``trainer --help`` stays instant
    from trainer.model import MiVEConfig
    from trainer.parallel import ParallelConfig


# ---------------------------------------------------------------------------------------------------
# Parameters and FLOPs
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParameterBreakdown:
    """Parameters of the model (counted on the meta device) and how FSDP2 groups them."""

    total: int
    per_block: int  # one FSDP2 / checkpointing unit
    root: int  # everything outside the blocks (adapter, embeddings, time MLP, head): the root FSDP unit
    by_part: dict[str, int] = field(default_factory=dict)


def parameter_breakdown(config: MiVEConfig) -> ParameterBreakdown:
    """Parameters of ``config`` by formula, split into one block and the root unit (D dim, F ffn, V vlm_dim,
    C latent channels, p = prod(patch), f freq_dim; every Linear has a bias):

    - block: q, k, v, o 4 (D^2 + D); qk RMSNorm 2 D; FFN D F + F + F D + D; modulation table 6 D
    - context adapter: per level RMSNorm V + Linear V D/2 + D/2, twice; fusion D^2 + D
    - patch embedding (Conv3d over the 2C channels): 2 C p D + D
    - time MLP f D + D + D^2 + D; its projection to the 6 modulation rows D 6D + 6D
    - head: D C p + C p and its (shift, scale) table 2 D
    ``tests/test_plan.py`` checks the total against ``sum(p.numel())`` of the built model.
    """
    d, f, v, c = config.dim, config.ffn_dim, config.vlm_dim, config.latent_channels
    patch = math.prod(config.patch_size)
    per_block = 4 * (d * d + d) + 2 * d + (d * f + f) + (f * d + d) + 6 * d
    by_part = {
        "context_adapter": 2 * (v + v * (d // 2) + d // 2) + d * d + d,
        "patch_embedding": 2 * c * patch * d + d,
        "time_embedder": config.freq_dim * d + d + d * d + d,
        "time_proj": d * 6 * d + 6 * d,
        "blocks": config.num_layers * per_block,
        "proj_out": d * c * patch + c * patch,
        "scale_shift_table": 2 * d,
    }
    total = sum(by_part.values())
    return ParameterBreakdown(total, per_block, total - by_part["blocks"], by_part)


@dataclass(frozen=True)
class FlopsEstimate:
    forward_per_sample: float  # trainer.model.mive_flops: matmuls only, multiply-add = 2
    train_per_sample: float  # forward + backward (2x forward) [+ recomputed forward with checkpointing]
    train_per_step_per_gpu: float  # x samples per replica per step / N (an SP group shares each sample)
    model_per_step_per_gpu: float  # 3x forward (what the trainer's MFU counts: recomputation excluded)
    step_seconds: float  # model_per_step_per_gpu / (MFU x peak)


def flops_estimate(
    config: MiVEConfig,
    shape: TokenShape,
    samples_per_gpu: int,
    activation_checkpointing: bool,
    sequence_parallel: int = 1,
    mfu: float = PlanConfig.mfu,
    peak_tflops: float = PlanConfig.peak_tflops,
) -> FlopsEstimate:
    """FLOPs of one optimizer step on one GPU; ``samples_per_gpu`` = samples each data-parallel replica trains
    on per step (micro-batch x accumulation), shared by the N ranks of its sequence-parallel group.

    forward = ``mive_flops`` (per block: 2 L (4 D^2 + 2 D F) for q, k, v, o and the FFN, 4 L^2 D for the
    attention scores and values; plus adapter, patch embedding, time MLP and head); backward = 2x forward
    (gradients of inputs and of weights); activation checkpointing recomputes the forward of every block once
    more in the backward: 4x instead of 3x. Sequence parallelism splits every block's work N ways (the
    adapter, patch embedding and time MLP, a few per mille, are computed on every rank: left out).
    """
    from trainer.model import mive_flops

    forward = mive_flops(config, shape.num_visual, shape.num_condition, shape.num_target)
    train = forward * (4 if activation_checkpointing else 3)
    model_per_step = 3 * forward * samples_per_gpu / sequence_parallel
    return FlopsEstimate(
        forward_per_sample=forward,
        train_per_sample=train,
        train_per_step_per_gpu=train * samples_per_gpu / sequence_parallel,
        model_per_step_per_gpu=model_per_step,
        step_seconds=model_per_step / (mfu * peak_tflops * 1e12),
    )


# ---------------------------------------------------------------------------------------------------
# Activations: what autograd saves, term by term
# ---------------------------------------------------------------------------------------------------


def tokens_per_rank(seq_len: int, sequence_parallel: int) -> int:
    """l = ceil(L / N): each rank's chunk of the sequence padded at the end to N chunks."""
    return -(-seq_len // sequence_parallel)


def block_activation_bytes(
    config: MiVEConfig,
    seq_len: int,
    batch: int,
    compute_bytes: int,
    residual_bytes: int = FP32,
    sequence_parallel: int = 1,
) -> int:
    """Bytes autograd saves for the backward of one ``MiVEBlock`` on one rank (without checkpointing).

    With n = B l D elements (l = L, or ceil(L / N) under sequence parallelism), c = bytes of the compute
    dtype (``param_dtype``) and r = bytes of the residual dtype (4 for float32, 2 for bfloat16), following
    ``MiVEBlock.forward``:

    self-attention half (3 r n + 16 n + 5 c n without sequence parallelism):
      - affine-free LayerNorm: its input in the residual dtype                          r n
      - modulate (addcmul): the LayerNorm output                                        r n
      - q, k, v projections: their input h (compute dtype)                              c n
      - RMSNorm of q and of k (composite ``F.rms_norm``, which computes a bf16 input in
        float32 too): the float32 input (saved by ``pow`` and ``mul``) and the float32
        normalised tensor (``mul`` by the weight)                                      2 x 8 n
      - SDPA (flash / memory-efficient kernels): q, k, v after RoPE, and the output,
        which is also the output projection's input (one storage)                      4 c n
      - gated residual: the update in the residual dtype (``mul`` by the gate)          r n
      Under sequence parallelism (N > 1) SDPA saves q, k, v as the all-to-all delivered them, (B, L_pad,
      H/N, hd) in one storage (3 c n), and its output over L tokens (c B L D / N); the output projection's
      input is the reverse all-to-all's output, a storage of its own (c n): one c B L D / N more.
    feed-forward half (3 r n + c n + 2 c B l F):
      - LayerNorm input, LayerNorm output (residual dtype), the FFN input h             2 r n + c n
      - GELU's input and the output projection's input, each B l F                      2 c B l F
      - gated residual: the update                                                      r n
    Smaller tensors (per-sample modulation vectors, RoPE tables, SDPA's log-sum-exp) are left out.
    """
    c, r = compute_bytes, residual_bytes
    tokens = tokens_per_rank(seq_len, sequence_parallel)
    n = batch * tokens * config.dim
    attention = 3 * r * n + 2 * 2 * FP32 * n + 5 * c * n
    if sequence_parallel > 1:
        attention += c * batch * seq_len * config.dim // sequence_parallel
    feed_forward = 3 * r * n + c * n + 2 * c * batch * tokens * config.ffn_dim
    return attention + feed_forward


def outside_activation_bytes(
    config: MiVEConfig, shape: TokenShape, batch: int, compute_bytes: int, sequence_parallel: int = 1
) -> int:
    """Bytes autograd saves outside the blocks: context adapter and patch embedding, then the head.

    - context adapter, per VLM level (S tokens of width V): RMSNorm's float32 input and normalised tensor
      (8 S V), the projection's input (c S V); the fusion's input (c S D)
    - patch embedding: the concatenated latents (B, 2C, T'+1, H', W') in the compute dtype
    (both on every rank: under sequence parallelism each rank builds the whole [c; v], then keeps its chunk)
    - head: see :func:`head_activation_bytes`
    """
    c, s = compute_bytes, shape.num_condition
    adapter = batch * s * (2 * (8 + c) * config.vlm_dim + c * config.dim)
    embed = (
        batch
        * 2
        * config.latent_channels
        * (shape.latent_frames + 1)
        * shape.latent_height
        * shape.latent_width
        * c
    )
    return adapter + embed + head_activation_bytes(config, shape, batch, compute_bytes, sequence_parallel)


def head_activation_bytes(
    config: MiVEConfig, shape: TokenShape, batch: int, compute_bytes: int, sequence_parallel: int = 1
) -> int:
    """The head's saved tensors: the LayerNorm's float32 input, its float32 output (``mul`` by the modulation)
    and the projection's input: 4 B D N_t + (4 + c) B N_t D. With float32 compute ``.float()`` is a no-op and
    the saved LayerNorm input is a view of the whole last block output: L tokens instead of N_t.
    Under sequence parallelism the head runs on the rank's l tokens before its outputs are gathered:
    (8 + c) B l D."""
    c, d = compute_bytes, config.dim
    if sequence_parallel > 1:
        return (2 * FP32 + c) * batch * tokens_per_rank(shape.seq_len, sequence_parallel) * d
    head_input_tokens = shape.seq_len if c == FP32 else shape.num_target
    return FP32 * batch * d * head_input_tokens + (FP32 + c) * batch * shape.num_target * d


def backward_transient_bytes(
    config: MiVEConfig,
    shape: TokenShape,
    batch: int,
    compute_bytes: int,
    residual_bytes: int = FP32,
    sequence_parallel: int = 1,
) -> int:
    """Working memory of one recomputed block's backward on top of everything it saved (its whole
    :func:`block_activation_bytes`): the gradients in flight, at the worst of three moments, as the fake-tensor
    trace of the 14B block shows them op by op (``trainer/trace.py``; ``tests/test_trace.py``).

    Its backward starts with the feed-forward's gated residual ``(x.to(r) + gate * update).type_as(x)``. The
    incoming gradient is in the compute dtype (c n). With a float32 residual (r != c) the casts are copies:
    the gradient in float32 (r n) and the residual branch's gradient cast back for the block input (c n);
    with a bfloat16 residual (r = c) they are no-ops and the one incoming gradient serves all three.

    - the gated residual's backward, its saved update still alive: the update's gradient on the noisy tokens
      and its full-size ``slice_backward`` (2 r n; the bound of the rank without clean tokens):
      c n + 2 r n (+ (r + c) n for a float32 residual);
    - the output projection's backward, the update released (- r n): the update's gradient in the compute
      dtype (c n), the gradient of the GELU output (c B l F) and the projection's weight gradient
      (c (F D + D)): c n + c n + c B l F + c (F D + D) - r n (+ c n for a float32 residual);
    - under sequence parallelism, the exchange of the q, k, v gradients: their head-layout gradients, the copy
      padded to L_pad, the send and the receive buffer (4 x 3 c n) and two gradients of the residual stream
      (2 r n), once the feed-forward's saved tensors (3 r n + c n + 2 c B l F) and the attention's (its update
      r n, the output projection's input c n, SDPA's q, k, v 3 c n and output c B L D / N) are released.

    With a float32 residual the first moment is the largest (14B width), with a bfloat16 residual the second:
    the copies of the first are gone, the feed-forward's B l F gradient stays.
    """
    c, r = compute_bytes, residual_bytes
    tokens = tokens_per_rank(shape.seq_len, sequence_parallel)
    n = batch * tokens * config.dim
    ffn = c * batch * tokens * config.ffn_dim
    casts = r != c  # a float32 residual: the incoming gradient's float32 copy and the residual branch's cast
    gated_residual = c * n + (r + c) * n * casts + 2 * r * n
    weight_grad = c * (config.ffn_dim * config.dim + config.dim)
    projection = c * n + c * n * casts + c * n + ffn + weight_grad - r * n
    moments = [gated_residual, projection]
    if sequence_parallel > 1:
        feed_forward_saved = 3 * r * n + c * n + 2 * ffn
        attention_released = (
            r * n + c * n + 3 * c * n + c * batch * shape.seq_len * config.dim // sequence_parallel
        )
        moments.append(4 * 3 * c * n + 2 * r * n - feed_forward_saved - attention_released)
    return max(moments)


def all_to_all_bytes(
    config: MiVEConfig, shape: TokenShape, batch: int, compute_bytes: int, sequence_parallel: int
) -> int:
    """Send + receive buffers of the sequence-parallel exchange of q, k, v in one attention: 2 x 3 c B l D."""
    if sequence_parallel == 1:
        return 0
    return 6 * compute_bytes * batch * tokens_per_rank(shape.seq_len, sequence_parallel) * config.dim


def attention_scores_bytes(
    config: MiVEConfig, shape: TokenShape, batch: int, compute_bytes: int, sequence_parallel: int = 1
) -> int:
    """The (B, H/N, L, L) attention matrix SDPA's math backend would materialise (twice: scores and
    probabilities). The flash / memory-efficient / cuDNN kernels never do: they work on tiles."""
    return 2 * batch * config.num_heads // sequence_parallel * shape.seq_len**2 * compute_bytes


def batch_bytes(
    config: MiVEConfig, shape: TokenShape, batch: int, compute_bytes: int, sequence_parallel: int = 1
) -> int:
    """The step's input tensors, as ``trainer/train.py`` builds them (every rank of an SP group holds them all).

    Latent-sized (B, 16, T', H', W'): the batch's bf16 target and source, x0 in float32, the per-sample
    noises and their stacked copy, x_t and the velocity target (float32 each), the prediction (compute
    dtype), its float32 copy for the loss (none when computing in float32) and the loss's saved difference
    (float32): 2 + 2 + 4 + 8 + 4 + 4 + c + (4 or 0) + 4 bytes per element. Also the reference (bf16, one
    frame) and the VLM states, two (B, S, V) bf16 tensors. Under sequence parallelism the all-gathered head
    output (B, L_pad, C p) in the compute dtype, alive with the prediction while it is unpatchified.
    """
    latent = batch * shape.latent_elements
    pred_float = 0 if compute_bytes == FP32 else FP32
    latents = latent * (2 + 2 + FP32 + 2 * FP32 + FP32 + FP32 + compute_bytes + pred_float + FP32)
    reference = batch * 16 * shape.latent_height * shape.latent_width * 2
    vlm = 2 * batch * shape.num_condition * config.vlm_dim * 2
    gathered = 0
    if sequence_parallel > 1:
        padded = tokens_per_rank(shape.seq_len, sequence_parallel) * sequence_parallel
        gathered = compute_bytes * batch * padded * config.latent_channels * math.prod(config.patch_size)
    return latents + reference + vlm + gathered


# ---------------------------------------------------------------------------------------------------
# Per-GPU memory at the peak of a step
# ---------------------------------------------------------------------------------------------------

PHASES = (
    "forward end",
    "backward, last block",
    "backward, next-to-last block",
    "backward, first block",
    "optimizer step",
)


@dataclass
class MemoryEstimate:
    """Bytes per GPU, by term, at the peak of a training step: the largest of the phases (``PHASES``)."""

    params: int  # float32 sharded master parameters: 4 P / N
    optimizer: int  # AdamW exp_avg + exp_avg_sq, float32: 8 P / N
    grads: int  # float32 sharded gradients alive at the peak phase (all 4 P / N at the optimizer step)
    gathered_params: int  # unsharded (all-gathered) parameters in the compute dtype at the peak phase
    gradient_buffers: int  # the block above's reduce-scatter input in flight (reduce dtype x P_b)
    activations: int  # saved for the backward and still alive at the peak phase
    block_recompute: int  # checkpointing: the block being back-propagated, recomputed (0 without)
    transient: int  # gradients in flight inside a block's backward, or the optimizer's temporaries
    inputs: int  # the batch and the loss's latent-sized tensors
    phase: str  # which of PHASES holds the peak
    phases: dict[str, int] = field(default_factory=dict)  # tensor bytes of every phase
    reserved: int = 0  # not for tensors: context, NCCL, workspaces, fragmentation
    host: int = 0  # pinned host memory per GPU: the offloaded block inputs (0 without offload)
    ema: int = (
        0  # train.ema_decay > 0: the EMA of the weights, float32 shards (``ema_bytes``), in every phase
    )

    @property
    def state(self) -> int:
        """Persistent training state (parameters, optimizer, gradients at the peak)."""
        return self.params + self.optimizer + self.grads

    @property
    def tensors(self) -> int:
        """Peak bytes of live tensors (what ``torch.cuda.max_memory_allocated`` reports)."""
        return self.phases[self.phase]

    @property
    def total(self) -> int:
        return self.tensors + self.reserved


def check_sequence_parallel(config: MiVEConfig, sequence_parallel: int, num_gpus: int) -> None:
    """``ValueError`` unless the degree divides the GPUs and the attention heads."""
    if sequence_parallel < 1 or num_gpus % sequence_parallel or config.num_heads % sequence_parallel:
        raise ValueError(
            f"train.parallel.sequence_parallel = {sequence_parallel} must divide the {num_gpus} GPU(s) and the "
            f"model's {config.num_heads} attention heads"
        )


def memory_estimate(
    config: MiVEConfig,
    params: ParameterBreakdown,
    parallel: ParallelConfig,
    shape: TokenShape,
    num_gpus: int,
    batch: int = 1,
    checkpointing: bool | None = None,
    reserved_bytes: int = 0,
    grad_accum: int = 1,
    ema: bool = False,
) -> MemoryEstimate:
    """Per-GPU memory of a training step; ``checkpointing`` None follows the recipe; ``ema``: the run keeps an
    EMA of the weights (``train.ema_decay`` > 0), 4 P / G more in every phase.

    Five moments compete for the peak (P parameters, P_b per block, P_root outside, G GPUs, c compute bytes;
    every activation term per rank, l = ceil(L / N) tokens under sequence parallelism N; K the kept block
    inputs, or every block's saved tensors without checkpointing):

    - end of the forward: float32 params + AdamW state (12 P / G), the last block, which the trainer does not
      reshard after its forward (c P_b), the root unit only without ``reshard_after_forward`` (c P_root),
      every saved activation, the inputs;
    - backward of the last block (the first to run): as above, minus the head's saved tensors, plus the
      prefetched next block (c P_b), the recomputed block (with checkpointing) and the gradients in flight
      (:func:`backward_transient_bytes`, the block's own weight gradients among them);
    - backward of the next-to-last block: the last block's input is released (one K fewer), its gradient is
      in flight: the reduce-scatter input (reduce dtype x P_b, FSDP2 frees it once the next reduce-scatter
      is issued) and its float32 shard (4 P_b / G). The 14B model's peak: the trace shows it there;
    - backward of block 0 (the last to run): the other blocks' activations are freed, their float32 sharded
      gradients exist (4 (L - 1) P_b / G), block 1's reduce-scatter input is in flight, no block to prefetch;
    - the optimizer step: 16 P / G plus AdamW's (foreach) temporary, one float32 tensor per parameter shard.

    With gradient accumulation every micro-batch reduce-scatters its gradients into the float32 shards
    (``trainer/train.py``), so from the second micro-batch on all 4 P / G of them exist in every phase.

    With ``offload_activations`` the checkpointed block inputs are in host memory (``host``), at the forward's
    end none on the GPU. In the backward the block being recomputed has its input back on the GPU; it stays
    there past the recomputation only when the block's first LayerNorm saves it, that is with a bfloat16
    residual (a float32 residual saves its float32 copy, counted in the recomputed block).
    """
    if parallel.param_dtype not in DTYPE_BYTES or parallel.reduce_dtype not in DTYPE_BYTES:
        raise ValueError(f"unknown dtype in train.parallel: {parallel.param_dtype}/{parallel.reduce_dtype}")
    checkpointing = parallel.activation_checkpointing if checkpointing is None else checkpointing
    sp = parallel.sequence_parallel
    check_sequence_parallel(config, sp, num_gpus)
    c, r = DTYPE_BYTES[parallel.param_dtype], DTYPE_BYTES[parallel.residual_dtype]
    offload = parallel.offload_activations and checkpointing
    layers = config.num_layers
    shard = math.ceil(
        params.total / num_gpus
    )  # FSDP2 pads dim 0 of each tensor to a multiple of G: close enough
    block_shard = math.ceil(params.per_block / num_gpus)
    # FSDP2's reduce-scatter input: the block's gradients copied into one buffer of the reduce dtype
    reduce_buffer = DTYPE_BYTES[parallel.reduce_dtype] * params.per_block
    inputs = batch_bytes(config, shape, batch, c, sp)

    block_saved = block_activation_bytes(config, shape.seq_len, batch, c, r, sp)
    block_input = batch * tokens_per_rank(shape.seq_len, sp) * config.dim * c
    kept_per_block = block_input if checkpointing else block_saved
    # offloaded: the recomputed block's input, back on the device, outlives its recomputation only when saved
    back_on_device = block_input if r == c else 0

    def kept(blocks: int) -> int:
        """The kept block inputs (or saved tensors) on the device while ``blocks`` of them are kept."""
        return back_on_device if offload else blocks * kept_per_block

    outside = outside_activation_bytes(config, shape, batch, c, sp)
    head = head_activation_bytes(config, shape, batch, c, sp)
    # with checkpointing the recomputed block's first LayerNorm saves the kept block input itself when the
    # residual dtype is the compute dtype (no cast makes a copy): counted once, in the kept inputs
    recompute = block_saved - (block_input if r == c else 0) if checkpointing else 0
    transient = backward_transient_bytes(config, shape, batch, c, r, sp)
    average = ema_bytes(params, num_gpus) if ema else 0
    base = FP32 * shard + 2 * FP32 * shard + average

    accumulated = FP32 * shard if grad_accum > 1 else 0  # earlier micro-batches' reduced gradients
    # the root unit is resharded after the forward too when ``reshard_after_forward`` (the trainer passes it
    # to the root's ``fully_shard`` explicitly); the backward gathers it again first
    root_after_forward = 0 if parallel.reshard_after_forward else params.root
    terms = {
        PHASES[0]: dict(
            grads=accumulated,
            gathered_params=c * (root_after_forward + params.per_block),
            gradient_buffers=0,
            activations=(0 if offload else kept(layers))
            + outside,  # offloaded: every block input on the host
            block_recompute=0,
            transient=0,
        ),
        PHASES[1]: dict(
            grads=accumulated,
            gathered_params=c * (params.root + min(layers, 2) * params.per_block),
            gradient_buffers=0,
            activations=kept(layers) + outside - head,
            block_recompute=recompute,
            transient=transient,
        ),
        PHASES[2]: dict(
            grads=max(accumulated, FP32 * block_shard),
            gathered_params=c * (params.root + min(layers - 1, 2) * params.per_block),
            gradient_buffers=reduce_buffer,
            activations=kept(layers - 1) + outside - head,
            block_recompute=recompute,
            transient=transient,
        ),
        PHASES[3]: dict(
            grads=max(accumulated, FP32 * (layers - 1) * block_shard),
            gathered_params=c * (params.root + params.per_block),
            gradient_buffers=reduce_buffer if layers > 1 else 0,
            activations=kept(1) + outside - head,
            block_recompute=recompute,
            transient=transient,
        ),
        PHASES[4]: dict(
            grads=FP32 * shard,
            gathered_params=0,
            gradient_buffers=0,
            activations=0,
            block_recompute=0,
            transient=FP32 * shard,
        ),
    }
    if layers < 2:  # one block: it is the last and the first, there is no next-to-last
        del terms[PHASES[2]]
    phases = {}
    for name, t in terms.items():
        phases[name] = base + sum(t.values()) + (inputs if name != PHASES[4] else 0)
    peak = max(phases, key=phases.__getitem__)
    return MemoryEstimate(
        params=FP32 * shard,
        optimizer=2 * FP32 * shard,
        inputs=inputs if peak != PHASES[4] else 0,
        phase=peak,
        phases=phases,
        reserved=reserved_bytes,
        host=layers * block_input if offload else 0,
        ema=average,
        **terms[peak],
    )


def ema_bytes(params: ParameterBreakdown, num_gpus: int) -> int:
    """The EMA of the weights (``trainer.ema``): a float32 copy of every parameter shard, 4 P / G per GPU,
    alive for the whole run (the 14B model on 8 GPUs: 4.7 GiB)."""
    return FP32 * math.ceil(params.total / num_gpus)


def validation_bytes(
    config: MiVEConfig, params: ParameterBreakdown, parallel: ParallelConfig, shape: TokenShape, num_gpus: int
) -> int:
    """Device tensor bytes per GPU during a validation step (``trainer.validation``): it runs after the
    optimizer step (no gradients) with the training model, one sample per forward, under ``no_grad``: the
    float32 state (12 P / G; the EMA is counted by ``ema_bytes``), the root unit and two gathered blocks
    (one running, one prefetched), the sample's inputs, and one block's working set, bounded by what the
    block would save for a backward (nothing is kept from one block to the next). Below the training peak:
    no saved activations, no gradients."""
    c, r = DTYPE_BYTES[parallel.param_dtype], DTYPE_BYTES[parallel.residual_dtype]
    sp = parallel.sequence_parallel
    state = 3 * FP32 * math.ceil(params.total / num_gpus)
    gathered = c * (params.root + 2 * params.per_block)
    working = block_activation_bytes(config, shape.seq_len, 1, c, r, sp)
    return state + gathered + batch_bytes(config, shape, 1, c, sp) + working


def checkpoint_staging_bytes(params: ParameterBreakdown, num_gpus: int, ema: bool) -> int:
    """Host bytes per GPU a background checkpoint (``train.checkpoint.async_save``) holds while it is written:
    this rank's float32 parameters and AdamW state (12 P / G), and its EMA shards (4 P / G) when kept. Not
    device memory: the staging copies the state to host memory, then the step goes on."""
    return (3 + (1 if ema else 0)) * FP32 * math.ceil(params.total / num_gpus)
