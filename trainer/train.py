"""Train the MiVE DiT with flow matching on precomputed shards: one flat loop, top to bottom.

    # CPU, one process, the tiny debug model on the demo shards (minutes):
    python -m trainer.cli fit manifests/train_debug.toml
    # one node, 8 GPUs, the paper's run (Wan2.1-T2V-14B init, 720P, 81 frames, 8000 steps; 4 data-parallel
    # replicas x sequence parallelism 2, as the recipe says):
    torchrun --nproc-per-node 8 -m trainer.cli fit manifests/train_mive_14b.toml
    # continue the latest complete checkpoint of the same run:
    torchrun --nproc-per-node 8 -m trainer.cli fit manifests/train_mive_14b.toml --resume

Sections: 0. config, 1. runtime and run folder, 2. data, 3. model, 4. optimizer and schedule,
5. resume, 6. the loop (maybe checkpoint, stop?, timed step with the flow-matching loss inline, one log line).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from dataengine.formats.layout import TrainRunLayout
from dataengine.formats.recipe import UserError, build_config, config_to_dict
from trainer.checkpoint import CheckpointConfig, Checkpointer
from trainer.data import DataConfig, ShardLoader
from trainer.ema import WeightAverage
from trainer.flops import peak_bf16_flops, token_shape_from_latents
from trainer.flow import shift_sigma
from trainer.parallel import (
    MIVE_PLAN,
    ParallelConfig,
    Runtime,
    apply_parallel,
    check_same_samples,
    init_distributed,
    sample_check_group,
    shutdown_distributed,
)
from trainer.steptime import StepClock
from trainer.validation import ValidationConfig

logger = logging.getLogger("trainer")

SCHEDULES = ("constant", "cosine", "linear")
TIMESTEP_SAMPLINGS = ("uniform", "logit_normal")


# ---------------------------------------------------------------------------------------------------
# 0. Config
# ---------------------------------------------------------------------------------------------------


@dataclass
class OptimConfig:
    """The ``[train.optim]`` recipe table: AdamW and the learning-rate schedule."""

    lr: float = 3e-5
    """Peak learning rate (the paper: 3e-5)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas (the paper: 0.9, 0.999)."""
    eps: float = 1e-8
    """AdamW epsilon."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay (the paper does not state one; 0 keeps Wan's weights unshrunk)."""
    warmup_steps: int = 200
    """Linear warm-up from lr / warmup_steps to lr over this many optimizer steps (the paper: 200)."""
    schedule: str = "constant"
    """After warm-up: ``constant``, ``cosine`` or ``linear`` decay to ``lr * min_lr_ratio`` at the last step."""
    min_lr_ratio: float = 0.0
    """Final learning rate of the cosine / linear schedules, as a fraction of ``lr``."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (the paper: 1.0); 0 disables clipping (the norm is still logged)."""


@dataclass
class FlowConfig:
    """The ``[train.flow]`` recipe table: how flow-matching noise levels are drawn."""

    shift: float = 5.0
    """Wan's timestep shift: sigma = shift * u / (1 + (shift - 1) * u); 5 pushes training towards high noise."""
    timestep_sampling: str = "uniform"
    """Distribution of u before the shift: ``uniform`` on (0, 1) (Wan's fine-tuning recipes) or
    ``logit_normal`` (u = sigmoid(N(logit_mean, logit_std)), as in SD3)."""
    logit_mean: float = 0.0
    """Mean of the logit-normal (``logit_normal`` only)."""
    logit_std: float = 1.0
    """Std of the logit-normal (``logit_normal`` only)."""


@dataclass
class TrainConfig:
    """The ``[train]`` recipe table."""

    name: str = "debug"
    """Run name: outputs go to ``<runs_dir>/<name>/`` (checkpoints, metrics.jsonl, the resolved recipe)."""
    runs_dir: str = "runs"
    """Folder holding the run folders."""
    model: str = "debug"
    """Model config name for ``trainer.model.get_config`` (``debug`` or ``mive_14b``)."""
    init: str | None = None
    """Wan2.1 checkpoint to initialise from (hub id or local folder; diffusers or original layout, detected).
    None initialises every weight randomly (seeded)."""
    steps: int = 20
    """Optimizer steps to train for (the paper: 8000)."""
    grad_accum: int = 1
    """Micro-batches per optimizer step on each rank."""
    seed: int = 0
    """Seed of the weights (without ``init``), the data order and the flow-matching noise."""
    log_every: int = 1
    """Print (rank 0) and record a metrics line every this many steps."""
    tensorboard: bool = False
    """Also write the metrics as TensorBoard scalars to ``<run>/tensorboard`` (needs the tensorboard package)."""
    peak_tflops: float | None = None
    """Peak dense bf16 TFLOP/s of one device for the MFU; None looks the GPU up in a table (CPU: MFU n/a)."""
    condition_dropout: float = 0.0
    """Probability of dropping a sample's VLM condition (all its condition tokens masked out; the reference and
    source latents stay), so that the model also learns the unconditional velocity classifier-free guidance
    needs (``trainer sample --guidance-scale``). The paper does not mention guidance: 0, the default, trains as
    it does; 0.1 is the usual value. Recorded in the run's resolved recipe, which sampling reads."""
    ema_decay: float = 0.0
    """Keep an exponential moving average of the weights, ``ema <- decay ema + (1 - decay) param`` after every
    optimizer step (float32, sharded like the parameters: 4 bytes per parameter / ranks), saved in the
    checkpoints; ``trainer sample`` and ``trainer export --ema`` use it. 0 = off; 0.999 averages about the last
    1000 steps (the 8000-step paper run), 0.9 suits the 20-step debug run."""
    data: DataConfig = field(default_factory=DataConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    def __post_init__(self) -> None:
        if self.optim.schedule not in SCHEDULES:
            raise ValueError(f"train.optim.schedule {self.optim.schedule!r} is not one of {SCHEDULES}")
        if self.flow.timestep_sampling not in TIMESTEP_SAMPLINGS:
            raise ValueError(
                f"train.flow.timestep_sampling {self.flow.timestep_sampling!r} is not one of {TIMESTEP_SAMPLINGS}"
            )
        if self.steps < 1 or self.grad_accum < 1:
            raise ValueError(
                f"train.steps ({self.steps}) and train.grad_accum ({self.grad_accum}) must be >= 1"
            )
        if not 0.0 <= self.condition_dropout < 1.0:
            raise ValueError(f"train.condition_dropout must be in [0, 1), got {self.condition_dropout}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"train.ema_decay must be in [0, 1) (0 = no EMA), got {self.ema_decay}")


def train_config_from_recipe(recipe: dict[str, Any]) -> TrainConfig:
    """The ``[train]`` table of a recipe as a :class:`TrainConfig` (unknown keys are an error)."""
    if "train" not in recipe:
        raise UserError(f"recipe {recipe.get('recipe_path', '')} has no [train] table")
    return build_config(TrainConfig, recipe["train"], "train")


def lr_factor(step: int, config: OptimConfig, total_steps: int) -> float:
    """Multiplier of the peak lr at optimizer step ``step`` (0-based): linear warm-up, then the schedule."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.schedule == "constant":
        return 1.0
    progress = min((step - config.warmup_steps) / max(total_steps - config.warmup_steps, 1), 1.0)
    low = config.min_lr_ratio
    if config.schedule == "linear":
        return 1.0 - (1.0 - low) * progress
    return low + (1.0 - low) * 0.5 * (1.0 + math.cos(math.pi * progress))


def sample_generator(seed: int, step: int, micro: int, index: int, device: torch.device) -> torch.Generator:
    """The generator of one sample's noise level and noise: a function of its place in the global batch,
    never of the rank layout, so 1 GPU x batch 2 and 2 GPUs x batch 1 draw the same numbers. Under sequence
    parallelism the ranks of one SP group hold the same sample and draw the same numbers (``index`` comes
    from the data-parallel rank)."""
    digest = hashlib.sha256(f"{seed}/{step}/{micro}/{index}".encode()).digest()
    return torch.Generator(device=device).manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def peak_flops(config: TrainConfig, device: torch.device) -> float | None:
    if config.peak_tflops:
        return config.peak_tflops * 1e12
    if device.type == "cuda":
        return peak_bf16_flops(torch.cuda.get_device_name(device))
    return None


def peak_memory_gib(device: torch.device) -> float:
    """Peak allocated GPU memory, or the process's peak RSS on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kilobytes on Linux


def _format_line(row: dict[str, Any], steps: int) -> str:
    def opt(value: float | None, fmt: str, suffix: str = "") -> str:
        return "n/a" if value is None else f"{value:{fmt}}{suffix}"

    return (
        f"step {row['step']:>6d}/{steps} | loss {row['loss']:.5f} | grad norm {row['grad_norm']:.4f} | "
        f"lr {row['lr']:.3e} | {row['samples_per_s']:.2f} samples/s | {row['tokens_per_s']:,.0f} tok/s | "
        f"{row['tflops_per_device']:.3g} TFLOP/s/dev | MFU {opt(row['mfu'], '.1%')} | "
        f"{'mem' if row['device'] == 'cuda' else 'rss'} {row['peak_memory_gib']:.2f} GiB | {row['step_time_s']:.3f} s "
        f"(data {row['data_s']:.3f} fwd+bwd {row['fwd_bwd_s']:.3f} optim {row['optim_s']:.3f} "
        f"ckpt {row['checkpoint_s']:.3f} val {row['validation_s']:.3f})"
    )


def _format_validation(row: dict[str, Any]) -> str:
    levels = sorted(
        (k for k in row if k.startswith("val_loss_s")), key=lambda k: int(k.removeprefix("val_loss_s"))
    )
    return f"step {row['step']:>6d} validation | loss {row['val_loss']:.5f} | per noise level " + " ".join(
        f"{row[k]:.4f}" for k in levels
    )


# ---------------------------------------------------------------------------------------------------
# The step: what one micro-batch and one optimizer step run (``trainer.trace`` runs these at real size)
# ---------------------------------------------------------------------------------------------------


def micro_batch_loss(
    model: torch.nn.Module,
    batch: dict[str, Any],
    config: TrainConfig,
    runtime: Runtime,
    step: int,
    micro: int,
) -> torch.Tensor:
    """The flow-matching loss of one micro-batch (a scalar tensor, before the backward).

    Nothing here reads a tensor's value in Python: the condition mask is passed only when some sample has
    padded VLM tokens (``batch["vlm_lengths"]``, known on the host) or condition dropout is on."""
    device, flow = runtime.device, config.flow
    x0 = batch["target_latents"].to(device, non_blocking=True).float()  # (B, 16, T', H', W')
    source = batch["source_latents"].to(device, non_blocking=True)
    reference = batch["reference_latents"].to(device, non_blocking=True)  # (B, 16, 1, H', W')
    vlm_first = batch["vlm_first"].to(device, non_blocking=True)  # (B, S, D_vlm)
    vlm_last = batch["vlm_last"].to(device, non_blocking=True)
    padded = min(batch["vlm_lengths"]) < vlm_first.shape[1]

    # Flow matching (rectified flow, Wan's convention): per sample u -> shifted sigma,
    # x_t = (1 - sigma) x0 + sigma noise, the model predicts the velocity noise - x0 at t = 1000 sigma.
    us, noises, dropped = [], [], []
    for i in range(x0.shape[0]):
        generator = sample_generator(
            config.seed, step, micro, runtime.dp_rank * config.data.batch_size + i, device
        )
        if flow.timestep_sampling == "uniform":
            u = torch.rand(1, generator=generator, device=device)
        else:
            normal = torch.randn(1, generator=generator, device=device)
            u = torch.sigmoid(flow.logit_mean + flow.logit_std * normal)
        us.append(u)
        noises.append(torch.randn(x0.shape[1:], generator=generator, device=device))
        if config.condition_dropout > 0:  # drawn last: without dropout the draws are unchanged
            dropped.append(torch.rand(1, generator=generator, device=device) < config.condition_dropout)
    u = torch.cat(us)  # (B,)
    noise = torch.stack(noises)  # (B, 16, T', H', W')
    sigma = shift_sigma(u, flow.shift)  # (B,) in (0, 1)
    s = sigma[:, None, None, None, None]
    x_t = (1 - s) * x0 + s * noise
    target = noise - x0
    # True = real token; a dropped condition is every condition token masked out (the model sees none);
    # None when every token is real and nothing is dropped (the attention then needs no mask)
    condition_mask = None
    if padded or dropped:
        condition_mask = batch["vlm_mask"].to(device, non_blocking=True)  # (B, S)
        if dropped:
            condition_mask = condition_mask & ~torch.cat(dropped)[:, None]
    # the model already drops the reference frame and the condition tokens: the loss is on target
    # patches. Under SP every rank of the group gets the whole prediction and computes the same loss.
    pred = model(x_t, source, reference, sigma * 1000, vlm_first, vlm_last, condition_mask, sp=runtime.sp)
    return F.mse_loss(pred.float(), target)


def optimizer_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    grad_clip: float,
) -> torch.Tensor:
    """Clip the global gradient norm (0: no clipping), step AdamW and the schedule, free the gradients;
    returns the norm before clipping as a device tensor (read with the step's log line, never here)."""
    grad_norm = torch.nn.utils.clip_grad_norm_(
        model.parameters(), grad_clip if grad_clip > 0 else float("inf")
    )
    if hasattr(grad_norm, "full_tensor"):
        grad_norm = grad_norm.full_tensor()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


# ---------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------


def fit(config: TrainConfig, resume: bool = False, recipe: dict[str, Any] | None = None) -> Path:
    """Train per ``config``; returns the run folder. Call once per process (under torchrun: on every rank)."""
    run_dir = Path(config.runs_dir) / config.name
    if not resume and Checkpointer(config.checkpoint, run_dir, 0).latest() is not None:
        raise UserError(
            f"{run_dir} already holds checkpoints: pass --resume to continue it, or choose another train.name"
        )
    runtime = init_distributed(config.parallel)
    try:
        train(config, runtime, run_dir, resume, recipe or {})
    except BaseException:
        shutdown_distributed(synchronize=False)  # a failed peer may never reach a barrier
        raise
    shutdown_distributed()
    return run_dir


def train(config: TrainConfig, runtime: Runtime, run_dir: Path, resume: bool, recipe: dict[str, Any]) -> None:
    """The training run itself, top to bottom, on an initialised process group."""
    from trainer.model import MiVETransformer, get_config, mive_flops

    # 1. Run folder -------------------------------------------------------------------------------------
    device = runtime.device
    checkpointer = Checkpointer(config.checkpoint, run_dir, runtime.rank)
    latest = checkpointer.latest() if resume else None
    if runtime.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        resolved = {
            "train": config_to_dict(config),
            "recipe": recipe,
            "world_size": runtime.world_size,
            "data_parallel": runtime.dp_size,
            "sequence_parallel": runtime.sp_size,
        }
        TrainRunLayout(run_dir).resolved_recipe.write_text(json.dumps(resolved, indent=2, default=str))
    dist.barrier()
    torch.manual_seed(config.seed)

    # 2. Data: this data-parallel replica's micro-batches, one latent shape each (every rank of an SP group
    #    reads the same ones) ------------------------------------------------------------------------------
    loader = ShardLoader(config.data, config.seed, runtime.dp_rank, runtime.dp_size)
    vlm_dim_shards = loader.catalogue.index.get("vlm_dim")

    # 3. Model: random (seeded) or Wan2.1 init, then activation checkpointing + FSDP2 ---------------------
    model_config = get_config(config.model, residual_dtype=config.parallel.residual_dtype)
    if vlm_dim_shards is not None and vlm_dim_shards != model_config.vlm_dim:
        raise UserError(
            f"shards {loader.catalogue.index_path} hold VLM states of width {vlm_dim_shards}, "
            f"model {config.model!r} expects vlm_dim {model_config.vlm_dim}"
        )
    if model_config.num_heads % runtime.sp_size:
        raise UserError(
            f"train.parallel.sequence_parallel = {runtime.sp_size} must divide the {model_config.num_heads} "
            f"attention heads of model {config.model!r}"
        )
    if config.init:
        # Large models: never materialise the full model on one rank. Shard on meta, allocate the local
        # shards, initialise them, then copy Wan's tensors (read one at a time) into the shards.
        from trainer.wan_weights import load_wan_weights

        with torch.device("meta"):
            model = MiVETransformer(model_config)
        apply_parallel(model, MIVE_PLAN, config.parallel, runtime)
        model.to_empty(device=device)
        model.init_weights()
        report = load_wan_weights(model, config.init, seed=config.seed)
        if runtime.is_main:
            logger.info(report.summary())
    else:
        # Small models: every rank builds the same seeded model, then keeps its shards.
        model = MiVETransformer(model_config)
        apply_parallel(model, MIVE_PLAN, config.parallel, runtime)
    num_params = sum(p.numel() for p in model.parameters())
    if runtime.is_main:
        logger.info("model %s: %s parameters (%.3f B)", config.model, f"{num_params:,}", num_params / 1e9)
    # the EMA of the weights: float32 shards beside the parameters' (trainer.ema)
    ema = WeightAverage(model, config.ema_decay) if config.ema_decay > 0 else None
    # validation samples: read once, held out of the training plan when they come from the training shards
    validator = None
    if config.validation.enabled:
        from trainer.validation import Validator, find_keys, load_validation_samples

        validation = config.validation
        if validation.samples and not validation.shards:
            loader.hold_out(list(find_keys(loader.catalogue, list(validation.samples)).values()))
        elif not validation.shards and runtime.is_main:
            logger.warning(
                "train.validation names no samples nor shards: validating on the first %d training samples, "
                "which are not held out (name train.validation.samples or .shards for a held-out set)",
                validation.max_samples,
            )
        validator = Validator(
            validation,
            load_validation_samples(validation, loader.catalogue),
            config.flow.shift,
            runtime,
            run_dir,
            loader.catalogue.index.get("recipe") or {},
        )
        if runtime.is_main:
            logger.info(
                "validation: %d sample(s) x %d noise levels every %d steps%s; EMA %s; checkpoints %s",
                len(validator.samples),
                validation.num_sigmas,
                validation.every_steps,
                f", {validation.render_samples} rendered every {validation.render_every_steps}"
                if validation.render_every_steps
                else "",
                f"decay {config.ema_decay}" if ema else "off",
                "asynchronous" if config.checkpoint.async_save else "synchronous",
            )

    # 4. Optimizer and schedule ---------------------------------------------------------------------------
    optim = config.optim
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=optim.lr, betas=optim.betas, eps=optim.eps, weight_decay=optim.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, optim, config.steps))

    # 5. Resume ----------------------------------------------------------------------------------------------
    step = 0
    metrics_path = TrainRunLayout(run_dir).metrics
    if resume:
        if latest is None:
            if runtime.is_main:
                logger.warning(
                    "--resume: no complete checkpoint in %s, starting from step 0", checkpointer.folder
                )
        else:
            train_state = checkpointer.load(latest, model, optimizer, scheduler, ema)
            step = int(train_state["step"])
            if ema is not None and not train_state["ema_restored"]:
                ema.reset_to_parameters()
                if runtime.is_main:
                    logger.warning("%s holds no EMA of the weights: the EMA restarts at its weights", latest)
            loader.load_state_dict(train_state["data"])
            if runtime.is_main:
                logger.info("resumed from %s (step %d, data cursor %s)", latest, step, train_state["data"])
    if runtime.is_main:
        # metrics.jsonl keeps the history of this run up to the resumed step: later lines (written after the
        # checkpoint by a run that was killed) are dropped so each step appears once.
        kept = []
        if step > 0 and metrics_path.exists():
            kept = [
                line
                for line in metrics_path.read_text().splitlines()
                if line and json.loads(line)["step"] <= step
            ]
        metrics_path.write_text("".join(line + "\n" for line in kept))
    writer = None
    if config.tensorboard and runtime.is_main:
        try:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(TrainRunLayout(run_dir).tensorboard))
        except ImportError:
            logger.warning(
                "train.tensorboard is on but the tensorboard package is missing: metrics.jsonl only"
            )

    # 6. The loop -------------------------------------------------------------------------------------------
    batch_size = config.data.batch_size
    sample_group = sample_check_group(runtime)  # the ranks of an SP group compare their samples
    peak = peak_flops(config, device)
    model.train()
    if runtime.is_main:
        logger.info(
            "training %d steps from step %d: %d data-parallel replica(s) (x %d sequence-parallel ranks) x %d "
            "samples x %d accumulation = %d samples per step",
            config.steps,
            step,
            runtime.dp_size,
            runtime.sp_size,
            batch_size,
            config.grad_accum,
            runtime.dp_size * batch_size * config.grad_accum,
        )
    clock = StepClock(device)
    while True:
        # stop? (the checkpoint of a step is written at its end, below)
        if step >= config.steps:
            break

        # a timed optimizer step
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        flops, tokens, samples = 0.0, 0, 0
        for micro in range(config.grad_accum):
            clock.start("data")
            batch = next(loader)
            clock.stop("data")
            clock.start("fwd_bwd")
            check_same_samples(sample_group, batch["keys"], f"step {step + 1}, micro-batch {micro}")
            loss = micro_batch_loss(model, batch, config, runtime, step, micro)
            # every micro-batch's backward reduce-scatters its gradients into the float32 shards, which
            # accumulate: skipping the sync would make FSDP2 keep unsharded float32 gradients of the whole
            # model on every rank until the last micro-batch (4 bytes x 10 B parameters for the 14B model)
            (loss / config.grad_accum).backward()
            loss_sum += loss.detach()
            clock.stop("fwd_bwd")

            # accounting: visual tokens include the reference frame; condition tokens count real ones only.
            # An SP group shares its samples: each rank counts 1/N of them (and does 1/N of their FLOPs).
            latent_shape = tuple(batch["target_latents"].shape[2:])
            for num_condition in batch["vlm_lengths"]:  # host numbers: no device read
                shape = token_shape_from_latents(model_config, latent_shape, num_condition)
                flops += 3 * mive_flops(model_config, shape.num_visual, shape.num_condition, shape.num_target)
                tokens += shape.seq_len
            samples += len(batch["vlm_lengths"])
        flops, tokens, samples = flops / runtime.sp_size, tokens / runtime.sp_size, samples / runtime.sp_size

        lr = scheduler.get_last_lr()[0]
        clock.start("optim")
        grad_norm = optimizer_step(model, optimizer, scheduler, optim.grad_clip)
        if ema is not None:
            ema.update()
        clock.stop("optim")
        step += 1

        # validation, then the checkpoint of the state after this step (a background save's blocking part is
        # the copy to host memory; the previous background save is committed once written)
        clock.start("validation")
        validation_row = {}
        if validator is not None and validator.should_validate(step, config.steps):
            validation_row = validator.losses(model)
        if validator is not None and validator.should_render(step, config.steps):
            validator.render(model, step, guidance_ok=config.condition_dropout > 0)
        clock.stop("validation")
        clock.start("checkpoint")
        checkpointer.commit()
        if checkpointer.should_save(step, config.steps):
            checkpointer.save(step, model, optimizer, scheduler, {"data": loader.state_dict()}, ema)
        clock.stop("checkpoint")

        # one log line: the loss averaged over micro-batches and ranks, throughput summed over ranks
        stats = torch.stack(
            [
                loss_sum / config.grad_accum,
                torch.tensor(float(samples), device=device),
                torch.tensor(float(tokens), device=device),
            ]
        )
        dist.all_reduce(stats)
        # the log line's numbers and the grad norm: one device-to-host copy, once per step, after the optimizer
        values = torch.cat([stats, grad_norm.detach().float().reshape(1)]).tolist()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - start
        phases = clock.seconds()
        compute = phases["fwd_bwd"] + phases["optim"]  # tokens/s and MFU: compute time alone
        if runtime.is_main and (step % config.log_every == 0 or step == config.steps or validation_row):
            tflops = flops / compute / 1e12  # this rank's model FLOPs (recomputation not counted)
            row = {
                "step": step,
                "loss": values[0] / runtime.world_size,
                "grad_norm": values[3],
                "lr": lr,
                "samples_per_s": values[1] / compute,
                "tokens_per_s": values[2] / compute,
                "tflops_per_device": tflops,
                "mfu": tflops * 1e12 / peak if peak else None,
                "peak_memory_gib": peak_memory_gib(device),
                "device": device.type,
                "step_time_s": elapsed,
                **{f"{phase}_s": seconds for phase, seconds in phases.items()},
                "epoch": loader.epoch,
                **validation_row,
            }
            print(_format_line(row, config.steps), flush=True)
            if validation_row:
                print(_format_validation(row), flush=True)
            with metrics_path.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
            if writer is not None:
                for key, value in row.items():
                    if isinstance(value, int | float) and key != "step":
                        writer.add_scalar(f"train/{key}", value, step)

    checkpointer.wait()  # the last background save, if any, is written and committed before the run ends
    loader.close()  # its DataLoader workers end with the run, not at a later garbage collection
    if writer is not None:
        writer.close()
    dist.barrier()


def configure_logging() -> None:
    """Log lines from rank 0 only (others: warnings), with the rank in a multi-rank run."""
    rank = int(os.environ.get("RANK", 0))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s [rank {rank}] %(name)s: %(message)s"
        if "RANK" in os.environ
        else "%(asctime)s %(message)s",
        datefmt="%H:%M:%S",
    )
