"""The printed plan (what ``trainer plan`` shows)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from trainer.flops import REFERENCE_TFLOPS_PER_GPU
from trainer.plan.common import ALL_TO_ALL_GBPS, GIB, HEADROOM
from trainer.plan.memory import tokens_per_rank

if TYPE_CHECKING:
    from trainer.plan.recommend import TrainingPlan


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
        *(
            [f"  EMA of the weights (fp32)      {_gib(mem.ema):>14}   4 P / G (train.ema_decay)"]
            if mem.ema
            else []
        ),
        f"  gradients (fp32 shards)        {_gib(mem.grads):>14}   4 P / G once reduced (at this phase)",
        f"  gathered parameters            {_gib(mem.gathered_params):>14}   root unit + block(s) in {par.param_dtype}",
        f"  block gradient buffers         {_gib(mem.gradient_buffers):>14}   the reduce-scatter input in flight",
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
    if result.validation_bytes:
        lines.append(
            f"  validation step (after the optimizer, no_grad, one sample): {_gib(result.validation_bytes + mem.ema + mem.reserved)}"
            f" (tensors + reserved), below the training peak {_gib(mem.total)}: no second copy of the model"
        )
    if result.staging_host_bytes:
        node = min(plan.num_gpus, 8)
        lines.append(
            f"  background checkpoint: {_gib(result.staging_host_bytes)} of host memory per GPU while it is "
            f"written ({_gib(result.staging_host_bytes * node)} per node of {node} GPUs; the state's host copy)"
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
