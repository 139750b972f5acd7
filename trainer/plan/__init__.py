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

The package, by concern: ``common`` (what is planned for: :class:`PlanConfig`, constants), ``memory`` (the
memory model, one function per term), ``recommend`` (the plan of a recipe, the verdict, the recommendation
and the suggestions), ``report`` (the printed plan), ``command`` (the CLI). Token shapes and FLOPs live
beside the model in ``trainer.flops``; ``trainer.trace`` checks the memory model against the real step.
"""

from trainer.flops import (
    H100_BF16_TFLOPS,
    REFERENCE_TFLOPS_PER_GPU,
    TokenShape,
    token_shape,
    token_shape_from_latents,
)
from trainer.plan.command import plan_command
from trainer.plan.common import ALL_TO_ALL_GBPS, DTYPE_BYTES, FP32, GIB, HEADROOM, PlanConfig
from trainer.plan.memory import (
    PHASES,
    FlopsEstimate,
    MemoryEstimate,
    ParameterBreakdown,
    all_to_all_bytes,
    attention_scores_bytes,
    backward_transient_bytes,
    batch_bytes,
    block_activation_bytes,
    check_sequence_parallel,
    flops_estimate,
    head_activation_bytes,
    memory_estimate,
    outside_activation_bytes,
    parameter_breakdown,
    tokens_per_rank,
)
from trainer.plan.recommend import (
    BucketPlan,
    Recommendation,
    TrainingPlan,
    make_plan,
    plan_from_recipe,
    recommend,
    sequence_parallel_degrees,
    shard_set_buckets,
    suggest,
)
from trainer.plan.report import format_plan

__all__ = [
    "ALL_TO_ALL_GBPS",
    "DTYPE_BYTES",
    "FP32",
    "GIB",
    "H100_BF16_TFLOPS",
    "HEADROOM",
    "PHASES",
    "REFERENCE_TFLOPS_PER_GPU",
    "BucketPlan",
    "FlopsEstimate",
    "MemoryEstimate",
    "ParameterBreakdown",
    "PlanConfig",
    "Recommendation",
    "TokenShape",
    "TrainingPlan",
    "all_to_all_bytes",
    "attention_scores_bytes",
    "backward_transient_bytes",
    "batch_bytes",
    "block_activation_bytes",
    "check_sequence_parallel",
    "flops_estimate",
    "format_plan",
    "head_activation_bytes",
    "make_plan",
    "memory_estimate",
    "outside_activation_bytes",
    "parameter_breakdown",
    "plan_command",
    "plan_from_recipe",
    "recommend",
    "sequence_parallel_degrees",
    "shard_set_buckets",
    "suggest",
    "token_shape",
    "token_shape_from_latents",
    "tokens_per_rank",
]
