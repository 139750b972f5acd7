"""``trainer plan``: will a training recipe fit, and what does one step cost? Parameters, FLOPs, per-GPU memory.

    trainer plan manifests/train_mive_14b.toml --gpus 8 --gpu-memory-gib 80
    trainer plan manifests/train_debug.toml --gpus 1 --gpu-memory-gib 4 --frames 33 --height 128 --width 128

Everything is a formula of the model config (``trainer.model``), the recipe's ``[train.parallel]`` (FSDP2
dtypes, activation checkpointing), the clip shape and the number of GPUs; each formula is written next to
the term it computes. What the trainer actually keeps (read from ``trainer/parallel.py`` and
``trainer/train.py``):

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

if TYPE_CHECKING:  # torch-heavy modules load inside the functions: ``trainer --help`` stays instant
    from trainer.model import MiVEConfig
    from trainer.parallel import ParallelConfig

GIB = 2**30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
FP32 = 4  # bytes of a float32 element

# Throughput measured for Wan2.1-14B training on H100 with FSDP2 on 8 GPUs (NeMo DFM, sequence 37,440):
# used only to turn FLOPs into an estimated step time. The paper's own setup is 8x H100.
REFERENCE_TFLOPS_PER_GPU = 175.9


@dataclass
class PlanConfig:
    """What to plan for besides the recipe: the GPUs and the clip shape (the ``trainer plan`` options)."""

    num_gpus: int = 8
    """GPUs the run is sharded over (FSDP2 data parallel, one sample per GPU per micro-batch)."""
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


# ---------------------------------------------------------------------------------------------------
# Shapes
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenShape:
    """The token counts of one sample."""

    latent_frames: int  # T' = 1 + (F - 1) / 4
    latent_height: int  # H' = H / 8
    latent_width: int  # W' = W / 8
    num_visual: int  # (T' + 1) * H'/2 * W'/2: reference frame + target frames, patch (1, 2, 2)
    num_target: int  # T' * H'/2 * W'/2: the patches the head runs on
    num_condition: int  # S: VLM tokens
    seq_len: int  # L = S + num_visual: the sequence every block attends over

    @property
    def latent_elements(self) -> int:
        """Elements of one (16, T', H', W') latent (per sample)."""
        return 16 * self.latent_frames * self.latent_height * self.latent_width


def token_shape(
    config: MiVEConfig, num_frames: int, height: int, width: int, num_condition: int
) -> TokenShape:
    """Token counts of a clip: Wan VAE stride (4, 8, 8) with a causal first frame, then the patch size."""
    if num_frames < 1 or (num_frames - 1) % 4:
        raise ValueError(f"num_frames must be 4n + 1 (e.g. 81), got {num_frames}")
    p_t, p_h, p_w = config.patch_size
    if height % (8 * p_h) or width % (8 * p_w):
        raise ValueError(f"height and width must be multiples of {8 * p_h}, got {width}x{height}")
    frames, lat_h, lat_w = 1 + (num_frames - 1) // 4, height // 8, width // 8
    per_frame = (lat_h // p_h) * (lat_w // p_w)
    num_visual = (frames + 1) // p_t * per_frame
    num_target = frames // p_t * per_frame
    return TokenShape(frames, lat_h, lat_w, num_visual, num_target, num_condition, num_condition + num_visual)


def token_shape_from_latents(
    config: MiVEConfig, latent_shape: tuple[int, int, int], num_condition: int
) -> TokenShape:
    """Token counts of a latent shape (T', H', W') as stored in shards."""
    frames, lat_h, lat_w = latent_shape
    return token_shape(config, 4 * (frames - 1) + 1, 8 * lat_h, 8 * lat_w, num_condition)


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
    train_per_step_per_gpu: float  # x batch per GPU x gradient accumulation
    model_per_step_per_gpu: float  # 3x forward (what the trainer's MFU counts: recomputation excluded)
    step_seconds_at_reference: float  # train_per_step_per_gpu / REFERENCE_TFLOPS_PER_GPU


def flops_estimate(
    config: MiVEConfig, shape: TokenShape, samples_per_gpu: int, activation_checkpointing: bool
) -> FlopsEstimate:
    """FLOPs of one optimizer step on one GPU.

    forward = ``mive_flops`` (per block: 2 L (4 D^2 + 2 D F) for q, k, v, o and the FFN, 4 L^2 D for the
    attention scores and values; plus adapter, patch embedding, time MLP and head); backward = 2x forward
    (gradients of inputs and of weights); activation checkpointing recomputes the forward of every block once
    more in the backward: 4x instead of 3x.
    """
    from trainer.model import mive_flops

    forward = mive_flops(config, shape.num_visual, shape.num_condition, shape.num_target)
    train = forward * (4 if activation_checkpointing else 3)
    per_step = train * samples_per_gpu
    return FlopsEstimate(
        forward_per_sample=forward,
        train_per_sample=train,
        train_per_step_per_gpu=per_step,
        model_per_step_per_gpu=3 * forward * samples_per_gpu,
        step_seconds_at_reference=per_step / (REFERENCE_TFLOPS_PER_GPU * 1e12),
    )


# ---------------------------------------------------------------------------------------------------
# Activations: what autograd saves, term by term
# ---------------------------------------------------------------------------------------------------


def block_activation_bytes(config: MiVEConfig, seq_len: int, batch: int, compute_bytes: int) -> int:
    """Bytes autograd saves for the backward of one ``MiVEBlock`` (without checkpointing).

    With n = B L D elements and c = bytes of the compute dtype (``param_dtype``), following
    ``MiVEBlock.forward`` (fp32 = 4 bytes whatever the compute dtype):

    self-attention half (28 n + 5 c n):
      - affine-free LayerNorm: its float32 input                                        4 n
      - modulate (addcmul): the float32 LayerNorm output                                4 n
      - q, k, v projections: their input h (compute dtype)                              c n
      - RMSNorm of q and of k (composite ``F.rms_norm``): the float32 input (saved by
        ``pow`` and ``mul``) and the normalised float32 tensor (``mul`` by the weight)  2 x 8 n
      - SDPA (flash / memory-efficient kernels): q, k, v after RoPE, and the output,
        which is also the output projection's input (one storage)                      4 c n
      - gated residual: the float32 update (``mul`` by the gate)                        4 n
    feed-forward half (12 n + c n + 2 c B L F):
      - LayerNorm input, LayerNorm output, the FFN input h                              4 n + 4 n + c n
      - GELU's input and the output projection's input, each B L F                      2 c B L F
      - gated residual: the float32 update                                              4 n
    Smaller tensors (per-sample modulation vectors, RoPE tables, SDPA's log-sum-exp) are left out.
    """
    n = batch * seq_len * config.dim
    attention = 28 * n + 5 * compute_bytes * n
    feed_forward = 12 * n + compute_bytes * n + 2 * compute_bytes * batch * seq_len * config.ffn_dim
    return attention + feed_forward


def outside_activation_bytes(config: MiVEConfig, shape: TokenShape, batch: int, compute_bytes: int) -> int:
    """Bytes autograd saves outside the blocks: context adapter and patch embedding, then the head.

    - context adapter, per VLM level (S tokens of width V): RMSNorm's float32 input and normalised tensor
      (8 S V), the projection's input (c S V); the fusion's input (c S D)
    - patch embedding: the concatenated latents (B, 2C, T'+1, H', W') in the compute dtype
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
    return adapter + embed + head_activation_bytes(config, shape, batch, compute_bytes)


def head_activation_bytes(config: MiVEConfig, shape: TokenShape, batch: int, compute_bytes: int) -> int:
    """The head's saved tensors: the LayerNorm's float32 input, its float32 output (``mul`` by the modulation)
    and the projection's input: 4 B D N_t + (4 + c) B N_t D. With float32 compute ``.float()`` is a no-op and
    the saved LayerNorm input is a view of the whole last block output: L tokens instead of N_t."""
    c, d = compute_bytes, config.dim
    head_input_tokens = shape.seq_len if c == FP32 else shape.num_target
    return FP32 * batch * d * head_input_tokens + (FP32 + c) * batch * shape.num_target * d


def activation_bytes(
    config: MiVEConfig, shape: TokenShape, batch: int, compute_bytes: int, checkpointing: bool
) -> int:
    """Activations held at the end of the forward (what the backward will need).

    Without checkpointing: every block's saved tensors. With per-block checkpointing: only each block's
    input x (B, L, D) in the compute dtype (plus the outside-block tensors either way).
    """
    if checkpointing:
        per_block = batch * shape.seq_len * config.dim * compute_bytes
    else:
        per_block = block_activation_bytes(config, shape.seq_len, batch, compute_bytes)
    return config.num_layers * per_block + outside_activation_bytes(config, shape, batch, compute_bytes)


def backward_transient_bytes(config: MiVEConfig, shape: TokenShape, batch: int, compute_bytes: int) -> int:
    """Working memory of one block's backward on top of its saved tensors: the gradients in flight.

    Autograd releases a node's saved tensors once the node has run, so the gradients mostly replace what
    they consume. What is alive on top at the worst point (the feed-forward's backward): the gradient with
    respect to the GELU output (c B L F) and two float32 gradients of the residual stream (the incoming
    one and the one accumulated for the block input): c B L F + 2 x 4 B L D.
    """
    n = batch * shape.seq_len * config.dim
    return compute_bytes * batch * shape.seq_len * config.ffn_dim + 2 * FP32 * n


def attention_scores_bytes(config: MiVEConfig, shape: TokenShape, batch: int, compute_bytes: int) -> int:
    """The (B, H, L, L) attention matrix SDPA's math backend would materialise (twice: scores and
    probabilities). The flash / memory-efficient / cuDNN kernels never do: they work on tiles."""
    return 2 * batch * config.num_heads * shape.seq_len**2 * compute_bytes


def batch_bytes(config: MiVEConfig, shape: TokenShape, batch: int, compute_bytes: int) -> int:
    """The step's input tensors, as ``trainer/train.py`` builds them.

    Latent-sized (B, 16, T', H', W'): the batch's bf16 target and source, x0 in float32, the per-sample
    noises and their stacked copy, x_t and the velocity target (float32 each), the prediction (compute
    dtype), its float32 copy for the loss (none when computing in float32) and the loss's saved difference
    (float32): 2 + 2 + 4 + 8 + 4 + 4 + c + (4 or 0) + 4 bytes per element. Also the reference (bf16, one
    frame) and the VLM states, two (B, S, V) bf16 tensors.
    """
    latent = batch * shape.latent_elements
    pred_float = 0 if compute_bytes == FP32 else FP32
    latents = latent * (2 + 2 + FP32 + 2 * FP32 + FP32 + FP32 + compute_bytes + pred_float + FP32)
    reference = batch * 16 * shape.latent_height * shape.latent_width * 2
    vlm = 2 * batch * shape.num_condition * config.vlm_dim * 2
    return latents + reference + vlm


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


def memory_estimate(
    config: MiVEConfig,
    params: ParameterBreakdown,
    parallel: ParallelConfig,
    shape: TokenShape,
    num_gpus: int,
    batch: int = 1,
    checkpointing: bool | None = None,
    reserved_bytes: int = 0,
) -> MemoryEstimate:
    """Per-GPU memory of a training step; ``checkpointing`` None follows the recipe.

    Four moments compete for the peak (P parameters, P_b per block, P_root outside, N GPUs, c compute bytes):

    - end of the forward: float32 params + AdamW state (12 P / N), the root unit gathered (c P_root) and the
      last block, which the trainer does not reshard after its forward (c P_b), every saved activation,
      the inputs;
    - backward of the last block (the first to run): as above, minus the head's saved tensors, plus the
      prefetched next block (c P_b), the block's unsharded gradient (+ float32 copy), the recomputed block
      (with checkpointing) and the gradients in flight;
    - backward of block 0 (the last to run): the other blocks' activations are freed, their float32 sharded
      gradients exist (4 (L - 1) P_b / N), no block left to prefetch;
    - the optimizer step: 16 P / N plus AdamW's (foreach) temporary, one float32 tensor per parameter shard.
    """
    if parallel.param_dtype not in DTYPE_BYTES or parallel.reduce_dtype not in DTYPE_BYTES:
        raise ValueError(f"unknown dtype in train.parallel: {parallel.param_dtype}/{parallel.reduce_dtype}")
    checkpointing = parallel.activation_checkpointing if checkpointing is None else checkpointing
    c = DTYPE_BYTES[parallel.param_dtype]
    layers = config.num_layers
    shard = math.ceil(
        params.total / num_gpus
    )  # FSDP2 pads dim 0 of each tensor to a multiple of N: close enough
    block_shard = math.ceil(params.per_block / num_gpus)
    reduce_copy = FP32 * params.per_block if parallel.reduce_dtype != parallel.param_dtype else 0
    grad_buffers = c * params.per_block + reduce_copy
    inputs = batch_bytes(config, shape, batch, c)

    block_saved = block_activation_bytes(config, shape.seq_len, batch, c)
    kept_per_block = batch * shape.seq_len * config.dim * c if checkpointing else block_saved
    outside = outside_activation_bytes(config, shape, batch, c)
    head = head_activation_bytes(config, shape, batch, c)
    recompute = block_saved if checkpointing else 0
    transient = backward_transient_bytes(config, shape, batch, c)
    base = FP32 * shard + 2 * FP32 * shard

    terms = {
        PHASES[0]: dict(
            grads=0,
            gathered_params=c * (params.root + params.per_block),
            gradient_buffers=0,
            activations=layers * kept_per_block + outside,
            block_recompute=0,
            transient=0,
        ),
        PHASES[1]: dict(
            grads=0,
            gathered_params=c * (params.root + 2 * params.per_block),
            gradient_buffers=grad_buffers,
            activations=layers * kept_per_block + outside - head,
            block_recompute=recompute,
            transient=transient,
        ),
        PHASES[2]: dict(
            grads=FP32 * (layers - 1) * block_shard,
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
        **terms[peak],
    )


# ---------------------------------------------------------------------------------------------------
# The plan: numbers, verdict, what to change
# ---------------------------------------------------------------------------------------------------


@dataclass
class TrainingPlan:
    """Everything ``trainer plan`` prints."""

    model_name: str
    model: MiVEConfig
    parallel: ParallelConfig
    plan: PlanConfig
    shape: TokenShape
    samples_per_gpu: int  # micro-batch per GPU
    grad_accum: int
    params: ParameterBreakdown
    flops: FlopsEstimate
    memory: MemoryEstimate  # as the recipe says (checkpointing on or off)
    memory_with_checkpointing: MemoryEstimate
    memory_without_checkpointing: MemoryEstimate
    gathered_block_bytes: int  # one all-gathered block in the compute dtype
    attention_matrix_bytes: int  # what the math SDPA backend would materialise (must not be used)
    fits: bool
    suggestions: list[str] = field(default_factory=list)

    @property
    def budget_bytes(self) -> int:
        return int(self.plan.gpu_memory_gib * GIB)


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
    )


def suggest(
    model: MiVEConfig, params: ParameterBreakdown, parallel: ParallelConfig, plan: PlanConfig, batch: int
) -> list[str]:
    """What to change so that a plan that does not fit does: each option alone, the others kept."""
    budget = plan.gpu_memory_gib * GIB
    fits = lambda est: est.total <= budget  # noqa: E731
    out: list[str] = []
    if not parallel.activation_checkpointing and fits(
        _estimate(model, params, parallel, plan, batch, checkpointing=True)
    ):
        out.append("turn on activation checkpointing (train.parallel.activation_checkpointing = true)")
    if batch > 1 and fits(_estimate(model, params, parallel, plan, 1)):
        out.append(f"batch 1 per GPU with train.grad_accum x{batch} (same global batch)")
    # More GPUs only shrink the sharded state (16 P / N): the activations of one sample stay per GPU.
    for gpus in (2**k for k in range(0, 14)):
        if gpus > plan.num_gpus and fits(_estimate(model, params, parallel, plan, batch, num_gpus=gpus)):
            out.append(f"more GPUs: {gpus} (sharding shrinks parameters, gradients and AdamW state only)")
            break
    else:
        state_free = _estimate(model, params, parallel, plan, batch, num_gpus=10**9)
        if not fits(state_free):
            out.append("more GPUs cannot help: one sample's activations alone exceed the GPU memory")
    for frames in range(plan.num_frames - 4, 0, -4):
        if fits(_estimate(model, params, parallel, plan, batch, num_frames=frames)):
            out.append(f"fewer frames: {frames} (of {plan.num_frames}) at {plan.width}x{plan.height}")
            break
    # Lower resolution, same aspect ratio, sides multiples of 16.
    for step in range(1, 64):
        scale = 1 - step / 64
        height, width = int(plan.height * scale) // 16 * 16, int(plan.width * scale) // 16 * 16
        if min(height, width) < 16:
            break
        if fits(_estimate(model, params, parallel, plan, batch, height=height, width=width)):
            out.append(
                f"lower resolution: {width}x{height} (of {plan.width}x{plan.height}) at {plan.num_frames} frames"
            )
            break
    return out


def make_plan(
    model_name: str, parallel: ParallelConfig, plan: PlanConfig, samples_per_gpu: int = 1, grad_accum: int = 1
) -> TrainingPlan:
    """The plan of a model config (``trainer.model.get_config`` name) under ``parallel`` on ``plan``'s GPUs."""
    from trainer.model import get_config

    if plan.num_gpus < 1 or plan.gpu_memory_gib <= 0:
        raise ValueError(
            f"need at least one GPU with memory > 0, got {plan.num_gpus} x {plan.gpu_memory_gib} GiB"
        )
    model = get_config(model_name)
    params = parameter_breakdown(model)
    shape = token_shape(model, plan.num_frames, plan.height, plan.width, plan.num_condition_tokens)
    with_ac = _estimate(model, params, parallel, plan, samples_per_gpu, checkpointing=True)
    without_ac = _estimate(model, params, parallel, plan, samples_per_gpu, checkpointing=False)
    memory = with_ac if parallel.activation_checkpointing else without_ac
    c = DTYPE_BYTES[parallel.param_dtype]
    fits = memory.total <= plan.gpu_memory_gib * GIB
    return TrainingPlan(
        model_name=model_name,
        model=model,
        parallel=parallel,
        plan=plan,
        shape=shape,
        samples_per_gpu=samples_per_gpu,
        grad_accum=grad_accum,
        params=params,
        flops=flops_estimate(model, shape, samples_per_gpu * grad_accum, parallel.activation_checkpointing),
        memory=memory,
        memory_with_checkpointing=with_ac,
        memory_without_checkpointing=without_ac,
        gathered_block_bytes=c * params.per_block,
        attention_matrix_bytes=attention_scores_bytes(model, shape, samples_per_gpu, c),
        fits=fits,
        suggestions=[] if fits else suggest(model, params, parallel, plan, samples_per_gpu),
    )


def _gib(num_bytes: float) -> str:
    return f"{num_bytes / GIB:,.2f} GiB" if num_bytes >= GIB else f"{num_bytes / 2**20:,.2f} MiB"


def format_plan(result: TrainingPlan) -> str:
    """The human-readable plan (what ``trainer plan`` prints)."""
    p, m, s, mem = result.params, result.model, result.shape, result.memory
    plan, par = result.plan, result.parallel
    lines = [
        f"MiVE training plan: model {result.model_name} on {plan.num_gpus} GPU(s) x {plan.gpu_memory_gib:g} GiB",
        f"  clip {plan.num_frames} frames at {plan.width}x{plan.height} -> latents (16, {s.latent_frames}, "
        f"{s.latent_height}, {s.latent_width}); tokens: {s.num_visual:,} visual (reference frame included) + "
        f"{s.num_condition:,} VLM = L {s.seq_len:,}; {result.samples_per_gpu} sample(s) per GPU x "
        f"{result.grad_accum} accumulation",
        f"  FSDP2: params {par.param_dtype} (float32 master shards), reduce {par.reduce_dtype}, activation "
        f"checkpointing {'on' if par.activation_checkpointing else 'off'}",
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
        f"  per optimizer step per GPU {result.flops.train_per_step_per_gpu:.3e}: about "
        f"{result.flops.step_seconds_at_reference:,.3g} s at {REFERENCE_TFLOPS_PER_GPU} TFLOP/s per GPU "
        "(Wan2.1-14B FSDP2 on 8x H100, NeMo DFM)",
        "",
        f"Memory per GPU at the peak ({mem.phase})",
        f"  parameters (fp32 shards)       {_gib(mem.params):>14}   4 P / N",
        f"  AdamW state (fp32 shards)      {_gib(mem.optimizer):>14}   8 P / N",
        f"  gradients (fp32 shards)        {_gib(mem.grads):>14}   4 P / N once reduced (at this phase)",
        f"  gathered parameters            {_gib(mem.gathered_params):>14}   root unit + block(s) in {par.param_dtype}",
        f"  block gradient buffers         {_gib(mem.gradient_buffers):>14}   unsharded grad (+ fp32 copy to reduce)",
        f"  saved activations              {_gib(mem.activations):>14}",
        f"  recomputed block               {_gib(mem.block_recompute):>14}   (activation checkpointing)",
        f"  transient                      {_gib(mem.transient):>14}   gradients in flight / optimizer temporaries",
        f"  inputs and loss tensors        {_gib(mem.inputs):>14}",
        f"  = tensors                      {_gib(mem.tensors):>14}",
        f"  + reserved                     {_gib(mem.reserved):>14}   context, NCCL, workspaces, fragmentation",
        f"  = total                        {_gib(mem.total):>14}   of {plan.gpu_memory_gib:g} GiB",
        "",
        "  phases: " + "; ".join(f"{k} {_gib(v)}" for k, v in mem.phases.items()),
        f"  with activation checkpointing:    {_gib(result.memory_with_checkpointing.total)} "
        f"(activations {_gib(result.memory_with_checkpointing.activations)} + recomputed block "
        f"{_gib(result.memory_with_checkpointing.block_recompute)})",
        f"  without activation checkpointing: {_gib(result.memory_without_checkpointing.total)} "
        f"(activations {_gib(result.memory_without_checkpointing.activations)})",
        f"  largest transients: one gathered block {_gib(result.gathered_block_bytes)}; SDPA must use the "
        f"flash / memory-efficient / cuDNN kernels: the math backend would materialise a (B, H, L, L) "
        f"attention matrix of {_gib(result.attention_matrix_bytes)}",
        "",
    ]
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


def plan_from_recipe(recipe: dict, plan: PlanConfig) -> TrainingPlan:
    """The plan of a recipe's ``[train]`` table (model, ``[train.parallel]``, batch size, accumulation)."""
    from trainer.train import train_config_from_recipe

    config = train_config_from_recipe(recipe)
    return make_plan(config.model, config.parallel, plan, config.data.batch_size, config.grad_accum)


def plan_command(
    recipe: Annotated[Path, typer.Argument(help="Training recipe TOML with a [train] table")],
    overrides: Annotated[
        list[str] | None, typer.Argument(help="section.key=value overrides, e.g. train.data.batch_size=2")
    ] = None,
    gpus: Annotated[int, typer.Option("--gpus", help="GPUs the run is sharded over")] = PlanConfig.num_gpus,
    gpu_memory_gib: Annotated[
        float, typer.Option("--gpu-memory-gib", help="Memory of one GPU in GiB")
    ] = PlanConfig.gpu_memory_gib,
    frames: Annotated[int, typer.Option("--frames", help="Frames per clip (4n + 1)")] = PlanConfig.num_frames,
    height: Annotated[int, typer.Option("--height", help="Clip height in pixels")] = PlanConfig.height,
    width: Annotated[int, typer.Option("--width", help="Clip width in pixels")] = PlanConfig.width,
    condition_tokens: Annotated[
        int, typer.Option("--condition-tokens", help="Qwen3-VL tokens per sample")
    ] = PlanConfig.num_condition_tokens,
    reserved_gib: Annotated[
        float, typer.Option("--reserved-gib", help="Per-GPU memory not available to tensors")
    ] = PlanConfig.reserved_gib,
) -> None:
    """Parameters, FLOPs per step and per-GPU memory of a recipe; whether it fits and what to change if not.

    Exit code 0 when it fits, 1 when it does not, 2 on a bad recipe or option.
    """
    from dataengine.recipe import load_recipe

    try:
        plan = PlanConfig(gpus, gpu_memory_gib, frames, height, width, condition_tokens, reserved_gib)
        result = plan_from_recipe(load_recipe(recipe, overrides), plan)
    except (ValueError, FileNotFoundError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(code=2) from err
    typer.echo(format_plan(result))
    raise typer.Exit(code=0 if result.fits else 1)
