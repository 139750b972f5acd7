"""The plan of a recipe: the numbers, the verdict, what is recommended and what to change when it does not fit."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from trainer.flops import token_shape
from trainer.plan.common import DTYPE_BYTES, GIB, HEADROOM, PlanConfig
from trainer.plan.memory import (
    FlopsEstimate,
    MemoryEstimate,
    ParameterBreakdown,
    all_to_all_bytes,
    attention_scores_bytes,
    check_sequence_parallel,
    checkpoint_staging_bytes,
    flops_estimate,
    memory_estimate,
    parameter_breakdown,
    tokens_per_rank,
    validation_bytes,
)

if TYPE_CHECKING:  # torch-heavy modules load inside the functions: ``trainer --help`` stays instant
    from trainer.flops import TokenShape
    from trainer.model import MiVEConfig
    from trainer.parallel import ParallelConfig


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
    from dataengine.formats.shard_format import read_index

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
    validation_bytes: int = 0  # device tensors during a validation step (0: validation off)
    staging_host_bytes: int = 0  # host memory per GPU of a background checkpoint (0: synchronous saves)

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
    ema: bool = False,
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
        ema,
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
    ema: bool = False,
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
            memory = _estimate(model, params, candidate, plan, batch, grad_accum=accum, ema=ema)
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
    ema: bool = False,
) -> list[str]:
    """What to change so that a plan that does not fit does: each option alone, the others kept."""
    from dataclasses import replace

    budget = plan.gpu_memory_gib * GIB
    sp = parallel.sequence_parallel
    global_batch = plan.num_gpus // sp * batch * grad_accum

    def fits(par: ParallelConfig = parallel, accum: int = grad_accum, micro: int = batch, **kw: int) -> bool:
        return _estimate(model, params, par, plan, micro, grad_accum=accum, ema=ema, **kw).total <= budget

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
    ema: bool = False,
    async_save: bool = False,
    validation: bool = False,
) -> TrainingPlan:
    """The plan of a model config (``trainer.model.get_config`` name) under ``parallel`` on ``plan``'s GPUs;
    ``ema``, ``async_save``, ``validation``: the recipe's EMA, background checkpoints and validation."""
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
        model, params, parallel, plan, samples_per_gpu, checkpointing=True, grad_accum=grad_accum, ema=ema
    )
    without_ac = _estimate(
        model, params, parallel, plan, samples_per_gpu, checkpointing=False, grad_accum=grad_accum, ema=ema
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
        recommended=recommend(model, params, parallel, plan, samples_per_gpu, global_batch, ema),
        suggestions=[] if fits else suggest(model, params, parallel, plan, samples_per_gpu, grad_accum, ema),
        validation_bytes=validation_bytes(model, params, parallel, shape, plan.num_gpus) if validation else 0,
        staging_host_bytes=checkpoint_staging_bytes(params, plan.num_gpus, ema) if async_save else 0,
    )


def plan_from_recipe(recipe: dict, plan: PlanConfig, from_shards: bool = True) -> TrainingPlan:
    """The plan of a recipe's ``[train]`` table (model, ``[train.parallel]``, batch size, accumulation, steps).

    With ``from_shards`` and a finished shard set at ``train.data.shards``, the clip shape is its largest
    bucket's (the most tokens: the peak of the run; the trainer batches one bucket at a time) and every
    bucket's peak is listed; otherwise ``plan``'s frames and size."""
    import dataclasses

    from trainer.model import get_config
    from trainer.train import train_config_from_recipe

    config = train_config_from_recipe(recipe)
    args = (
        config.data.batch_size,
        config.grad_accum,
        config.steps,
        config.ema_decay > 0,
        config.checkpoint.async_save,
        config.validation.enabled,
    )
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
