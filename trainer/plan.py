"""``trainer plan``: will a training recipe fit, and what does one step cost? Parameters, FLOPs, per-GPU memory.

    trainer plan manifests/train_mive_14b.toml --gpus 8 --gpu-memory-gib 80
    trainer plan manifests/train_debug.toml --gpus 1 --gpu-memory-gib 4 --frames 33 --height 128 --width 128

Everything is a formula of the model config (``trainer.model``), the recipe's ``[train.parallel]`` (FSDP2
dtypes, activation checkpointing and its offload, sequence parallelism, the residual dtype), the clip shape
and the number of GPUs; each formula is written next to the term it computes. What the trainer actually
keeps (read from ``trainer/parallel.py``, ``trainer/model.py`` and ``trainer/train.py``):

- FSDP2 ``fully_shard`` per block and at the root with ``MixedPrecisionPolicy(param_dtype, reduce_dtype)``:
  the sharded parameters stay float32 (they are the master weights), the gradients are reduce-scattered in
  ``reduce_dtype`` (float32) into float32 sharded gradients, ``torch.optim.AdamW`` keeps ``exp_avg`` and
  ``exp_avg_sq`` in float32 beside each shard: 4 + 4 + 8 = 16 bytes per parameter, divided by the GPUs.
- The compute runs in ``param_dtype`` (c bytes: 2 for bf16, 4 for fp32): FSDP2 all-gathers a block's
  parameters in that dtype just before its forward (and the next block's while it computes), frees them
  after it (``reshard_after_forward``) and gathers them again for the backward.
- Activation checkpointing (non-reentrant, per block) keeps only each block's input and recomputes the
  block's forward inside its backward.
- ``optimizer.zero_grad(set_to_none=True)``: gradients exist from the backward to the optimizer step.
- Sequence parallelism of degree N (``sequence_parallel``): every rank holds l = ceil(L / N) tokens through
  the blocks, so every per-token term is per l, not L; the parameters are sharded over all GPUs (dp x sp)
  as before. Each rank still holds the whole batch, builds the whole [c; v] before keeping its chunk, and
  all-gathers the head's small output (``trainer.model.SequenceParallel``).
- ``residual_dtype = "bfloat16"``: the float32 norm / modulation / residual tensors a block saves are bf16.
- ``offload_activations``: the checkpointed block inputs live in pinned host memory (one is on the GPU while
  its block runs the backward).

The activation bytes of a block are not a rule of thumb: they are the tensors autograd saves in
``MiVEBlock.forward`` as written (float32 norms, modulation and residual adds; matmuls in ``param_dtype``),
listed term by term in :func:`block_activation_bytes`; ``tests/test_plan.py`` checks the sum against the
storages autograd really saves, and the predicted peak against the allocator's peak during a real
``trainer fit`` step on the CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from trainer.flops import (  # noqa: F401  (re-exported: trainer.plan's public names)
    H100_BF16_TFLOPS,
    REFERENCE_TFLOPS_PER_GPU,
    TokenShape,
    token_shape,
    token_shape_from_latents,
)

if TYPE_CHECKING:  # torch-heavy modules load inside the functions: ``trainer --help`` stays instant
    from trainer.model import MiVEConfig
    from trainer.parallel import ParallelConfig

GIB = 2**30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
FP32 = 4  # bytes of a float32 element

HEADROOM = 0.10  # a recommended configuration leaves at least this fraction of the GPU memory free
# All-to-all bandwidth per GPU assumed for the sequence-parallel exchange inside one NVLink node (H100 SXM:
# 450 GB/s per direction; all-to-alls reach well below that). An assumption, not a measurement.
ALL_TO_ALL_GBPS = 200.0


@dataclass
class PlanConfig:
    """What to plan for besides the recipe: the GPUs and the clip shape (the ``trainer plan`` options)."""

    num_gpus: int = 8
    """GPUs the run is sharded over: data-parallel replicas x the recipe's sequence-parallel degree."""
    gpu_memory_gib: float = 80.0
    """Memory of one GPU in GiB (H100 80 GB: 80; as the driver reports it, about 79.1 usable)."""
    num_frames: int = 81
    """Frames per clip (4n + 1, the Wan VAE's causal first frame plus groups of 4)."""
    height: int = 720
    """Clip height in pixels (a multiple of 16)."""
    width: int = 1280
    """Clip width in pixels (a multiple of 16)."""
    num_condition_tokens: int = 2048
    """Qwen3-VL tokens per sample (image + video + text). The shards recipe's default budgets give about
    512 image + 1280 video tokens + the instruction and chat tokens: about 1,900; 2048 rounds up."""
    reserved_gib: float = 4.0
    """Memory per GPU not available to tensors: CUDA context, NCCL buffers, cuBLAS / attention workspaces
    and allocator fragmentation."""
    mfu: float = REFERENCE_TFLOPS_PER_GPU / H100_BF16_TFLOPS
    """Model FLOPs utilisation assumed for the step time (model FLOPs = 3x forward, recomputation not
    counted, as the trainer's log line). Default: NeMo DFM's Wan2.1-14B FSDP2 throughput on 8x H100,
    175.9 of 989 TFLOP/s, about 0.178: a measured figure for this architecture, not a target."""
    peak_tflops: float = H100_BF16_TFLOPS
    """Dense bf16 peak of one GPU in TFLOP/s (H100 SXM: 989)."""


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
    """Working memory of one block's backward on top of its saved tensors: the gradients in flight.

    Autograd releases a node's saved tensors once the node has run, so the gradients mostly replace what
    they consume. What is alive on top at the worst point (the feed-forward's backward): the gradient with
    respect to the GELU output (c B l F) and two gradients of the residual stream in the residual dtype (the
    incoming one and the one accumulated for the block input), less the feed-forward's gated-residual update
    its backward has released (r n): c B l F + r n.
    Under sequence parallelism the attention's backward exchanges the gradients of q, k, v back: their
    head-layout gradients, the copy padded to L_pad, the contiguous send buffer and the receive buffer (4 x 3 c n)
    are alive at once, after the feed-forward's saved tensors (3 r n + c n + 2 c B l F) were freed: that
    moment is counted too, and the larger of the two is the transient (for the 14B model the feed-forward's).
    """
    c, r = compute_bytes, residual_bytes
    tokens = tokens_per_rank(shape.seq_len, sequence_parallel)
    n = batch * tokens * config.dim
    # the feed-forward's gated residual ran first and released its saved update (r n): one r n on top
    feed_forward = c * batch * tokens * config.ffn_dim + 2 * r * n - r * n
    if sequence_parallel == 1:
        return feed_forward
    freed = 3 * r * n + c * n + 2 * c * batch * tokens * config.ffn_dim
    return max(feed_forward, 4 * 3 * c * n + 2 * r * n - freed)


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

PHASES = ("forward end", "backward, last block", "backward, first block", "optimizer step")


@dataclass
class MemoryEstimate:
    """Bytes per GPU, by term, at the peak of a training step: the largest of four phases (``PHASES``)."""

    params: int  # float32 sharded master parameters: 4 P / N
    optimizer: int  # AdamW exp_avg + exp_avg_sq, float32: 8 P / N
    grads: int  # float32 sharded gradients alive at the peak phase (all 4 P / N at the optimizer step)
    gathered_params: int  # unsharded (all-gathered) parameters in the compute dtype at the peak phase
    gradient_buffers: int  # a block's unsharded gradient c P_b (+ its float32 copy for the reduce-scatter)
    activations: int  # saved for the backward and still alive at the peak phase
    block_recompute: int  # checkpointing: the block being back-propagated, recomputed (0 without)
    transient: int  # gradients in flight inside a block's backward, or the optimizer's temporaries
    inputs: int  # the batch and the loss's latent-sized tensors
    phase: str  # which of PHASES holds the peak
    phases: dict[str, int] = field(default_factory=dict)  # tensor bytes of every phase
    reserved: int = 0  # not for tensors: context, NCCL, workspaces, fragmentation
    host: int = 0  # pinned host memory per GPU: the offloaded block inputs (0 without offload)

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
) -> MemoryEstimate:
    """Per-GPU memory of a training step; ``checkpointing`` None follows the recipe.

    Four moments compete for the peak (P parameters, P_b per block, P_root outside, G GPUs, c compute bytes;
    every activation term per rank, l = ceil(L / N) tokens under sequence parallelism N):

    - end of the forward: float32 params + AdamW state (12 P / G), the last block, which the trainer does not
      reshard after its forward (c P_b), the root unit only without ``reshard_after_forward`` (c P_root),
      every saved activation, the inputs;
    - backward of the last block (the first to run): as above, minus the head's saved tensors, plus the
      prefetched next block (c P_b), the block's unsharded gradient (+ float32 copy), the recomputed block
      (with checkpointing) and the gradients in flight;
    - backward of block 0 (the last to run): the other blocks' activations are freed, their float32 sharded
      gradients exist (4 (L - 1) P_b / G), no block left to prefetch;
    - the optimizer step: 16 P / G plus AdamW's (foreach) temporary, one float32 tensor per parameter shard.

    With gradient accumulation every micro-batch reduce-scatters its gradients into the float32 shards
    (``trainer/train.py``), so from the second micro-batch on all 4 P / G of them exist in every phase.

    With ``offload_activations`` the checkpointed block inputs are in host memory (``host``); in the backward
    one of them is back on the GPU (the block being recomputed), at the forward's end none.
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
    reduce_copy = FP32 * params.per_block if parallel.reduce_dtype != parallel.param_dtype else 0
    grad_buffers = c * params.per_block + reduce_copy
    inputs = batch_bytes(config, shape, batch, c, sp)

    block_saved = block_activation_bytes(config, shape.seq_len, batch, c, r, sp)
    block_input = batch * tokens_per_rank(shape.seq_len, sp) * config.dim * c
    kept_per_block = block_input if checkpointing else block_saved
    kept_blocks = kept_per_block if offload else layers * kept_per_block
    outside = outside_activation_bytes(config, shape, batch, c, sp)
    head = head_activation_bytes(config, shape, batch, c, sp)
    # with checkpointing the recomputed block's first LayerNorm saves the kept block input itself when the
    # residual dtype is the compute dtype (no cast makes a copy): counted once, in the kept inputs
    recompute = block_saved - (block_input if r == c else 0) if checkpointing else 0
    transient = backward_transient_bytes(config, shape, batch, c, r, sp)
    base = FP32 * shard + 2 * FP32 * shard

    accumulated = FP32 * shard if grad_accum > 1 else 0  # earlier micro-batches' reduced gradients
    # the root unit is resharded after the forward too when ``reshard_after_forward`` (the trainer passes it
    # to the root's ``fully_shard`` explicitly); the backward gathers it again first
    root_after_forward = 0 if parallel.reshard_after_forward else params.root
    terms = {
        PHASES[0]: dict(
            grads=accumulated,
            gathered_params=c * (root_after_forward + params.per_block),
            gradient_buffers=0,
            activations=(0 if offload else kept_blocks) + outside,  # offloaded: every block input on the host
            block_recompute=0,
            transient=0,
        ),
        PHASES[1]: dict(
            grads=accumulated,
            gathered_params=c * (params.root + 2 * params.per_block),
            gradient_buffers=grad_buffers,
            activations=kept_blocks + outside - head,
            block_recompute=recompute,
            transient=transient,
        ),
        PHASES[2]: dict(
            grads=max(accumulated, FP32 * (layers - 1) * block_shard),
            gathered_params=c * (params.root + params.per_block),
            gradient_buffers=grad_buffers,
            activations=kept_per_block + outside - head,
            block_recompute=recompute,
            transient=transient,
        ),
        PHASES[3]: dict(
            grads=FP32 * shard,
            gathered_params=0,
            gradient_buffers=0,
            activations=0,
            block_recompute=0,
            transient=FP32 * shard,
        ),
    }
    phases = {}
    for name, t in terms.items():
        phases[name] = base + sum(t.values()) + (inputs if name != PHASES[3] else 0)
    peak = max(phases, key=phases.__getitem__)
    return MemoryEstimate(
        params=FP32 * shard,
        optimizer=2 * FP32 * shard,
        inputs=inputs if peak != PHASES[3] else 0,
        phase=peak,
        phases=phases,
        reserved=reserved_bytes,
        host=layers * block_input if offload else 0,
        **terms[peak],
    )


# ---------------------------------------------------------------------------------------------------
# The plan: numbers, verdict, what to change
# ---------------------------------------------------------------------------------------------------


@dataclass
class Recommendation:
    """The configuration ``trainer plan`` recommends: the first of float32 residuals without offload, then
    bf16 residuals, then bf16 residuals with offload, at the smallest sequence-parallel degree (dividing the
    GPUs and the heads) that leaves ``HEADROOM`` of the GPU memory free; accumulation keeps the global batch."""

    parallel: ParallelConfig
    grad_accum: int
    global_batch: int
    memory: MemoryEstimate


@dataclass(frozen=True)
class BucketPlan:
    """One latent-shape bucket of a shard set and the per-GPU peak a batch of it needs."""

    name: str
    latent_shape: tuple[int, int, int]
    num_samples: int
    seq_len: int  # L with the plan's condition tokens
    total_bytes: int  # per-GPU peak (tensors + reserved) for a micro-batch of this bucket

    @property
    def num_frames(self) -> int:
        return 1 + 4 * (self.latent_shape[0] - 1)

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) in pixels."""
        return 8 * self.latent_shape[1], 8 * self.latent_shape[2]


def shard_set_buckets(location: str) -> dict[str, tuple[tuple[int, int, int], int]] | None:
    """``{bucket: (latent shape, samples)}`` of the shard set at ``location`` (a folder, its index.json or a
    URL); None when there is no finished shard set there (nothing written yet, or not reachable)."""
    from dataengine.shard_format import read_index

    if not location:
        return None
    try:
        index = read_index(location)
    except (FileNotFoundError, OSError, ValueError):
        return None
    return {
        name: (tuple(int(v) for v in b["latent_shape"]), int(b.get("num_samples", 0)))
        for name, b in index.get("buckets", {}).items()
        if b.get("num_samples", 0)
    }


@dataclass
class TrainingPlan:
    """Everything ``trainer plan`` prints."""

    model_name: str
    model: MiVEConfig
    parallel: ParallelConfig
    plan: PlanConfig
    shape: TokenShape
    samples_per_gpu: int  # micro-batch per GPU (every rank of an SP group holds the same one)
    grad_accum: int
    steps: int  # optimizer steps of the recipe
    params: ParameterBreakdown
    flops: FlopsEstimate
    memory: MemoryEstimate  # as the recipe says (checkpointing on or off)
    memory_with_checkpointing: MemoryEstimate
    memory_without_checkpointing: MemoryEstimate
    gathered_block_bytes: int  # one all-gathered block in the compute dtype
    attention_matrix_bytes: int  # what the math SDPA backend would materialise (must not be used)
    all_to_all_bytes: int  # send + receive buffers of one attention's q, k, v exchange (SP only)
    fits: bool
    recommended: Recommendation | None = None
    suggestions: list[str] = field(default_factory=list)
    buckets: list[BucketPlan] = field(default_factory=list)  # the shard set's, when the plan was made from it
    shards: str = ""  # the shard set those came from

    @property
    def budget_bytes(self) -> int:
        return int(self.plan.gpu_memory_gib * GIB)

    @property
    def data_parallel(self) -> int:
        return self.plan.num_gpus // self.parallel.sequence_parallel

    @property
    def global_batch(self) -> int:
        return self.data_parallel * self.samples_per_gpu * self.grad_accum

    @property
    def tokens_per_second(self) -> float:
        """All GPUs together, at the assumed MFU: the global batch's tokens over the step time."""
        return self.global_batch * self.shape.seq_len / self.flops.step_seconds

    @property
    def all_to_all_gb_per_step(self) -> float:
        """GB each GPU sends in the sequence-parallel all-to-alls of one step: q, k, v and the attention
        output (4 c B l D per block) times (N - 1) / N off-rank, in the forward, the recomputation and the
        backward, per block and micro-batch."""
        sp = self.parallel.sequence_parallel
        if sp == 1:
            return 0.0
        c = DTYPE_BYTES[self.parallel.param_dtype]
        per_block = 4 * c * self.samples_per_gpu * tokens_per_rank(self.shape.seq_len, sp) * self.model.dim
        passes = 3 if self.parallel.activation_checkpointing else 2
        return per_block * (sp - 1) / sp * passes * self.model.num_layers * self.grad_accum / 1e9


def _estimate(
    model: MiVEConfig,
    params: ParameterBreakdown,
    parallel: ParallelConfig,
    plan: PlanConfig,
    batch: int,
    num_gpus: int | None = None,
    num_frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
    checkpointing: bool | None = None,
    grad_accum: int = 1,
) -> MemoryEstimate:
    shape = token_shape(
        model,
        num_frames or plan.num_frames,
        height or plan.height,
        width or plan.width,
        plan.num_condition_tokens,
    )
    return memory_estimate(
        model,
        params,
        parallel,
        shape,
        num_gpus or plan.num_gpus,
        batch,
        checkpointing,
        int(plan.reserved_gib * GIB),
        grad_accum,
    )


def sequence_parallel_degrees(model: MiVEConfig, num_gpus: int) -> list[int]:
    """The degrees a run on ``num_gpus`` GPUs can use: divisors of both the GPUs and the heads."""
    return [s for s in range(1, num_gpus + 1) if num_gpus % s == 0 and model.num_heads % s == 0]


def _accumulation(global_batch: int, data_parallel: int, batch: int) -> int:
    return max(1, -(-global_batch // (data_parallel * batch)))


def recommend(
    model: MiVEConfig,
    params: ParameterBreakdown,
    parallel: ParallelConfig,
    plan: PlanConfig,
    batch: int,
    global_batch: int,
) -> Recommendation | None:
    """See :class:`Recommendation`; None when nothing leaves the headroom."""
    from dataclasses import replace

    budget = (1 - HEADROOM) * plan.gpu_memory_gib * GIB
    for residual, offload in (("float32", False), ("bfloat16", False), ("bfloat16", True)):
        for sp in sequence_parallel_degrees(model, plan.num_gpus):
            candidate = replace(
                parallel,
                sequence_parallel=sp,
                residual_dtype=residual,
                offload_activations=offload,
                activation_checkpointing=True,
            )
            accum = _accumulation(global_batch, plan.num_gpus // sp, batch)
            memory = _estimate(model, params, candidate, plan, batch, grad_accum=accum)
            if memory.total <= budget:
                return Recommendation(candidate, accum, plan.num_gpus // sp * batch * accum, memory)
    return None


def suggest(
    model: MiVEConfig,
    params: ParameterBreakdown,
    parallel: ParallelConfig,
    plan: PlanConfig,
    batch: int,
    grad_accum: int = 1,
) -> list[str]:
    """What to change so that a plan that does not fit does: each option alone, the others kept."""
    from dataclasses import replace

    budget = plan.gpu_memory_gib * GIB
    sp = parallel.sequence_parallel
    global_batch = plan.num_gpus // sp * batch * grad_accum

    def fits(par: ParallelConfig = parallel, accum: int = grad_accum, micro: int = batch, **kw: int) -> bool:
        return _estimate(model, params, par, plan, micro, grad_accum=accum, **kw).total <= budget

    out: list[str] = []
    if not parallel.activation_checkpointing and fits(checkpointing=True):
        out.append("turn on activation checkpointing (train.parallel.activation_checkpointing = true)")
    if batch > 1 and fits(accum=grad_accum * batch, micro=1):
        out.append(f"batch 1 per GPU with train.grad_accum x{batch} (same global batch)")
    # Sequence parallelism splits one sample's tokens, hence its activations, over N GPUs.
    for degree in sequence_parallel_degrees(model, plan.num_gpus):
        accum = _accumulation(global_batch, plan.num_gpus // degree, batch)
        if degree > sp and fits(replace(parallel, sequence_parallel=degree), accum):
            out.append(
                f"sequence parallelism over {degree} GPUs: train.parallel.sequence_parallel = {degree}, "
                f"train.grad_accum = {accum} (global batch {plan.num_gpus // degree * batch * accum})"
            )
            break
    if parallel.residual_dtype == "float32" and fits(replace(parallel, residual_dtype="bfloat16")):
        out.append('bf16 residual stream: train.parallel.residual_dtype = "bfloat16" (precision cost: docs)')
    if (
        parallel.activation_checkpointing
        and not parallel.offload_activations
        and fits(replace(parallel, offload_activations=True))
    ):
        out.append("checkpointed block inputs in host memory: train.parallel.offload_activations = true")
    # More GPUs only shrink the sharded state (16 P / G): the activations of one sample stay per GPU.
    for gpus in (2**k for k in range(0, 14)):
        if gpus > plan.num_gpus and gpus % sp == 0 and fits(num_gpus=gpus):
            out.append(f"more GPUs: {gpus} (sharding shrinks parameters, gradients and AdamW state only)")
            break
    else:
        if not fits(num_gpus=2**30 * sp):  # sharded state ~ 0
            out.append("more GPUs alone cannot help: one sample's activations per GPU exceed its memory")
    for frames in range(plan.num_frames - 4, 0, -4):
        if fits(num_frames=frames):
            out.append(f"fewer frames: {frames} (of {plan.num_frames}) at {plan.width}x{plan.height}")
            break
    # Lower resolution, same aspect ratio, sides multiples of 16.
    for step in range(1, 64):
        scale = 1 - step / 64
        height, width = int(plan.height * scale) // 16 * 16, int(plan.width * scale) // 16 * 16
        if min(height, width) < 16:
            break
        if fits(height=height, width=width):
            out.append(
                f"lower resolution: {width}x{height} (of {plan.width}x{plan.height}) at {plan.num_frames} frames"
            )
            break
    return out


def make_plan(
    model_name: str,
    parallel: ParallelConfig,
    plan: PlanConfig,
    samples_per_gpu: int = 1,
    grad_accum: int = 1,
    steps: int = 8000,
) -> TrainingPlan:
    """The plan of a model config (``trainer.model.get_config`` name) under ``parallel`` on ``plan``'s GPUs."""
    from trainer.model import get_config

    if plan.num_gpus < 1 or plan.gpu_memory_gib <= 0:
        raise ValueError(
            f"need at least one GPU with memory > 0, got {plan.num_gpus} x {plan.gpu_memory_gib} GiB"
        )
    if not 0 < plan.mfu <= 1 or plan.peak_tflops <= 0:
        raise ValueError(f"MFU must be in (0, 1] and the peak > 0, got {plan.mfu} and {plan.peak_tflops}")
    model = get_config(model_name)
    sp = parallel.sequence_parallel
    check_sequence_parallel(model, sp, plan.num_gpus)
    params = parameter_breakdown(model)
    shape = token_shape(model, plan.num_frames, plan.height, plan.width, plan.num_condition_tokens)
    with_ac = _estimate(
        model, params, parallel, plan, samples_per_gpu, checkpointing=True, grad_accum=grad_accum
    )
    without_ac = _estimate(
        model, params, parallel, plan, samples_per_gpu, checkpointing=False, grad_accum=grad_accum
    )
    memory = with_ac if parallel.activation_checkpointing else without_ac
    c = DTYPE_BYTES[parallel.param_dtype]
    fits = memory.total <= plan.gpu_memory_gib * GIB
    global_batch = plan.num_gpus // sp * samples_per_gpu * grad_accum
    return TrainingPlan(
        model_name=model_name,
        model=model,
        parallel=parallel,
        plan=plan,
        shape=shape,
        samples_per_gpu=samples_per_gpu,
        grad_accum=grad_accum,
        steps=steps,
        params=params,
        flops=flops_estimate(
            model,
            shape,
            samples_per_gpu * grad_accum,
            parallel.activation_checkpointing,
            sp,
            plan.mfu,
            plan.peak_tflops,
        ),
        memory=memory,
        memory_with_checkpointing=with_ac,
        memory_without_checkpointing=without_ac,
        gathered_block_bytes=c * params.per_block,
        attention_matrix_bytes=attention_scores_bytes(model, shape, samples_per_gpu, c, sp),
        all_to_all_bytes=all_to_all_bytes(model, shape, samples_per_gpu, c, sp),
        fits=fits,
        recommended=recommend(model, params, parallel, plan, samples_per_gpu, global_batch),
        suggestions=[] if fits else suggest(model, params, parallel, plan, samples_per_gpu, grad_accum),
    )


def _gib(num_bytes: float) -> str:
    return f"{num_bytes / GIB:,.2f} GiB" if num_bytes >= GIB else f"{num_bytes / 2**20:,.2f} MiB"


def format_plan(result: TrainingPlan) -> str:
    """The human-readable plan (what ``trainer plan`` prints)."""
    p, m, s, mem = result.params, result.model, result.shape, result.memory
    plan, par = result.plan, result.parallel
    sp = par.sequence_parallel
    tokens = tokens_per_rank(s.seq_len, sp)
    lines = [
        f"MiVE training plan: model {result.model_name} on {plan.num_gpus} GPU(s) x {plan.gpu_memory_gib:g} GiB",
        f"  clip {plan.num_frames} frames at {plan.width}x{plan.height} -> latents (16, {s.latent_frames}, "
        f"{s.latent_height}, {s.latent_width}); tokens: {s.num_visual:,} visual (reference frame included) + "
        f"{s.num_condition:,} VLM = L {s.seq_len:,}; {result.samples_per_gpu} sample(s) per GPU x "
        f"{result.grad_accum} accumulation",
        f"  mesh: {result.data_parallel} data-parallel x {sp} sequence-parallel = {plan.num_gpus} GPUs; "
        f"{tokens:,} tokens per GPU{f' (L padded to {tokens * sp:,})' if tokens * sp != s.seq_len else ''}; "
        f"global batch {result.data_parallel} x {result.samples_per_gpu} x {result.grad_accum} = "
        f"{result.global_batch}",
        f"  FSDP2 over all {plan.num_gpus} GPUs: params {par.param_dtype} (float32 master shards), reduce "
        f"{par.reduce_dtype}, activation checkpointing {'on' if par.activation_checkpointing else 'off'}"
        f"{' (inputs offloaded to host)' if par.offload_activations else ''}, residual stream "
        f"{par.residual_dtype}",
        "",
        "Parameters",
        f"  total {p.total:,} ({p.total / 1e9:.3f} B); per block {p.per_block:,} x {m.num_layers}; "
        f"outside the blocks {p.root:,}",
        "  " + ", ".join(f"{k} {v:,}" for k, v in p.by_part.items()),
        "",
        "FLOPs (matmuls, multiply-add = 2; trainer.model.mive_flops)",
        f"  forward per sample {result.flops.forward_per_sample:.3e}; training per sample "
        f"{result.flops.train_per_sample:.3e} ({'4' if par.activation_checkpointing else '3'}x forward"
        f"{', recomputation included' if par.activation_checkpointing else ''})",
        f"  per optimizer step per GPU {result.flops.train_per_step_per_gpu:.3e} (model FLOPs "
        f"{result.flops.model_per_step_per_gpu:.3e})",
        "",
        f"Throughput at an assumed MFU of {plan.mfu:.1%} of {plan.peak_tflops:g} TFLOP/s (model FLOPs; the "
        f"default is NeMo DFM's Wan2.1-14B FSDP2 figure on 8x H100, {REFERENCE_TFLOPS_PER_GPU} TFLOP/s)",
        f"  step {result.flops.step_seconds:,.1f} s; {result.tokens_per_second:,.0f} tokens/s over "
        f"{plan.num_gpus} GPUs; {result.steps:,} steps = {result.steps * result.flops.step_seconds / 3600:,.1f} h",
    ]
    if sp > 1:
        gb = result.all_to_all_gb_per_step
        lines.append(
            f"  sequence-parallel all-to-alls: {gb:,.1f} GB sent per GPU per step, about "
            f"{gb / ALL_TO_ALL_GBPS:,.2f} s at an assumed {ALL_TO_ALL_GBPS:g} GB/s (not in the step time)"
        )
    if result.buckets:
        largest = max(result.buckets, key=lambda b: (b.seq_len, b.total_bytes))
        lines += [
            "",
            f"Shard set {result.shards}: {len(result.buckets)} bucket(s), one per batch; planned at the largest "
            f"({largest.name})",
        ]
        for b in result.buckets:
            lines.append(
                f"  {b.name:<16} {b.num_frames:>4} frames {b.size[1]}x{b.size[0]}  {b.num_samples:>8,} samples  "
                f"L {b.seq_len:>8,}  peak {_gib(b.total_bytes)}"
            )
    lines += [
        "",
        f"Memory per GPU at the peak ({mem.phase})",
        f"  parameters (fp32 shards)       {_gib(mem.params):>14}   4 P / G",
        f"  AdamW state (fp32 shards)      {_gib(mem.optimizer):>14}   8 P / G",
        f"  gradients (fp32 shards)        {_gib(mem.grads):>14}   4 P / G once reduced (at this phase)",
        f"  gathered parameters            {_gib(mem.gathered_params):>14}   root unit + block(s) in {par.param_dtype}",
        f"  block gradient buffers         {_gib(mem.gradient_buffers):>14}   unsharded grad (+ fp32 copy to reduce)",
        f"  saved activations              {_gib(mem.activations):>14}"
        + (f"   + {_gib(mem.host)} of block inputs in host memory" if mem.host else ""),
        f"  recomputed block               {_gib(mem.block_recompute):>14}   (activation checkpointing)",
        f"  transient                      {_gib(mem.transient):>14}   gradients in flight / optimizer temporaries",
        f"  inputs and loss tensors        {_gib(mem.inputs):>14}",
        f"  = tensors                      {_gib(mem.tensors):>14}",
        f"  + reserved                     {_gib(mem.reserved):>14}   context, NCCL, workspaces, fragmentation",
        f"  = total                        {_gib(mem.total):>14}   of {plan.gpu_memory_gib:g} GiB",
        "",
        "  by phase (tensors + reserved): "
        + "; ".join(f"{k} {_gib(v + mem.reserved)}" for k, v in mem.phases.items()),
        f"  with activation checkpointing:    {_gib(result.memory_with_checkpointing.total)} "
        f"(activations {_gib(result.memory_with_checkpointing.activations)} + recomputed block "
        f"{_gib(result.memory_with_checkpointing.block_recompute)})",
        f"  without activation checkpointing: {_gib(result.memory_without_checkpointing.total)} "
        f"(activations {_gib(result.memory_without_checkpointing.activations)})",
        f"  largest transients: one gathered block {_gib(result.gathered_block_bytes)}; "
        + (
            f"one all-to-all of q, k, v {_gib(result.all_to_all_bytes)} (send + receive); "
            if result.all_to_all_bytes
            else ""
        )
        + "SDPA must use the flash / memory-efficient / cuDNN kernels: the math backend would materialise a "
        f"(B, H/N, L, L) attention matrix of {_gib(result.attention_matrix_bytes)}",
    ]
    if mem.host:
        lines.append(
            f"  host memory: {_gib(mem.host)} pinned per GPU ({_gib(mem.host * min(plan.num_gpus, 8))} per "
            f"node of {min(plan.num_gpus, 8)} GPUs)"
        )
    lines.append("")
    rec = result.recommended
    if rec is None:
        lines.append(
            f"Recommended: nothing leaves {HEADROOM:.0%} of {plan.gpu_memory_gib:g} GiB free (sequence parallelism "
            "up to the GPUs / heads, bf16 residuals, offload); see the suggestions"
        )
    else:
        rp = rec.parallel
        same = (
            rp.sequence_parallel == sp
            and rp.residual_dtype == par.residual_dtype
            and rp.offload_activations == par.offload_activations
            and par.activation_checkpointing
            and rec.grad_accum == result.grad_accum
        )
        lines.append(
            f"Recommended on {plan.num_gpus} x {plan.gpu_memory_gib:g} GiB{' (the recipe as it is)' if same else ''}: "
            f'sequence_parallel = {rp.sequence_parallel}, residual_dtype = "{rp.residual_dtype}", '
            f"offload_activations = {str(rp.offload_activations).lower()}, grad_accum = {rec.grad_accum} "
            f"(global batch {rec.global_batch}): {_gib(rec.memory.total)}, "
            f"{_gib(result.budget_bytes - rec.memory.total)} headroom"
        )
    if result.fits:
        lines.append(
            f"FITS: {_gib(mem.total)} of {plan.gpu_memory_gib:g} GiB "
            f"({_gib(result.budget_bytes - mem.total)} headroom)"
        )
    else:
        lines.append(f"DOES NOT FIT: {_gib(mem.total)} needed, {plan.gpu_memory_gib:g} GiB available")
        lines.extend(f"  - {s}" for s in result.suggestions or ["no single change found: combine them"])
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------------


def plan_from_recipe(recipe: dict, plan: PlanConfig, from_shards: bool = True) -> TrainingPlan:
    """The plan of a recipe's ``[train]`` table (model, ``[train.parallel]``, batch size, accumulation, steps).

    With ``from_shards`` and a finished shard set at ``train.data.shards``, the clip shape is its largest
    bucket's (the most tokens: the peak of the run; the trainer batches one bucket at a time) and every
    bucket's peak is listed; otherwise ``plan``'s frames and size."""
    import dataclasses

    from trainer.model import get_config
    from trainer.train import train_config_from_recipe

    config = train_config_from_recipe(recipe)
    args = (config.data.batch_size, config.grad_accum, config.steps)
    buckets = shard_set_buckets(config.data.shards) if from_shards else None
    if not buckets:
        return make_plan(config.model, config.parallel, plan, *args)
    model = get_config(config.model)
    rows = []
    for name, (shape, samples) in sorted(buckets.items()):
        frames, height, width = 1 + 4 * (shape[0] - 1), 8 * shape[1], 8 * shape[2]
        at = dataclasses.replace(plan, num_frames=frames, height=height, width=width)
        tokens = token_shape(model, frames, height, width, plan.num_condition_tokens).seq_len
        total = make_plan(config.model, config.parallel, at, *args).memory.total
        rows.append(BucketPlan(name, shape, samples, tokens, total))
    largest = max(rows, key=lambda b: (b.seq_len, b.total_bytes))
    at = dataclasses.replace(
        plan, num_frames=largest.num_frames, height=largest.size[0], width=largest.size[1]
    )
    result = make_plan(config.model, config.parallel, at, *args)
    result.buckets, result.shards = rows, str(config.data.shards)
    return result


def plan_command(
    recipe: Annotated[Path, typer.Argument(help="Training recipe TOML with a [train] table")],
    overrides: Annotated[
        list[str] | None, typer.Argument(help="section.key=value overrides, e.g. train.data.batch_size=2")
    ] = None,
    gpus: Annotated[int, typer.Option("--gpus", help="GPUs the run is sharded over")] = PlanConfig.num_gpus,
    gpu_memory_gib: Annotated[
        float, typer.Option("--gpu-memory-gib", help="Memory of one GPU in GiB")
    ] = PlanConfig.gpu_memory_gib,
    frames: Annotated[
        int | None,
        typer.Option(
            "--frames",
            help="Frames per clip (4n + 1). Default: the largest bucket of the recipe's shard set if it exists, "
            f"else {PlanConfig.num_frames}",
        ),
    ] = None,
    height: Annotated[
        int | None,
        typer.Option(
            "--height", help=f"Clip height in pixels (default as --frames, else {PlanConfig.height})"
        ),
    ] = None,
    width: Annotated[
        int | None,
        typer.Option("--width", help=f"Clip width in pixels (default as --frames, else {PlanConfig.width})"),
    ] = None,
    condition_tokens: Annotated[
        int, typer.Option("--condition-tokens", help="Qwen3-VL tokens per sample")
    ] = PlanConfig.num_condition_tokens,
    reserved_gib: Annotated[
        float, typer.Option("--reserved-gib", help="Per-GPU memory not available to tensors")
    ] = PlanConfig.reserved_gib,
    mfu: Annotated[
        float, typer.Option("--mfu", help="Model FLOPs utilisation assumed for the step time")
    ] = PlanConfig.mfu,
    peak_tflops: Annotated[
        float, typer.Option("--peak-tflops", help="Dense bf16 peak of one GPU, TFLOP/s")
    ] = PlanConfig.peak_tflops,
    trace: Annotated[
        bool,
        typer.Option(
            "--trace",
            help="Also run one real training step on fake tensors (no GPU, no memory) with a fake process group "
            "of --gpus ranks, and print its memory per phase beside the plan's (about a minute on 2 cores)",
        ),
    ] = False,
) -> None:
    """Parameters, FLOPs, throughput and per-GPU memory of a recipe; whether it fits, what is recommended and
    what to change if it does not fit.

    The clip shape is the largest bucket of the recipe's shard set (train.data.shards) when one is there,
    since the trainer batches one bucket at a time and the longest clips set the peak; --frames, --height or
    --width plan another shape instead.

    Exit code 0 when it fits, 1 when it does not, 2 on a bad recipe or option.
    """
    from dataengine.recipe import load_recipe

    try:
        from_shards = frames is None and height is None and width is None
        plan = PlanConfig(
            gpus,
            gpu_memory_gib,
            PlanConfig.num_frames if frames is None else frames,
            PlanConfig.height if height is None else height,
            PlanConfig.width if width is None else width,
            condition_tokens,
            reserved_gib,
            mfu,
            peak_tflops,
        )
        recipe_data = load_recipe(recipe, overrides)
        result = plan_from_recipe(recipe_data, plan, from_shards=from_shards)
    except (ValueError, FileNotFoundError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(code=2) from err
    typer.echo(format_plan(result))
    if trace:
        from trainer.trace import format_trace, trace_report
        from trainer.train import train_config_from_recipe

        s = result.shape
        report = trace_report(
            train_config_from_recipe(recipe_data),
            (s.latent_frames, s.latent_height, s.latent_width),
            s.num_condition,
            plan.num_gpus,
        )
        typer.echo(format_trace(report, result.memory, plan.num_gpus))
    raise typer.Exit(code=0 if result.fits else 1)
