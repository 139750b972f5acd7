"""Validation while training: the flow-matching loss of fixed samples at fixed noise levels, and rendered edits.

Every ``train.validation.every_steps`` steps the trainer computes, for each validation sample and each of
``num_sigmas`` noise levels spread over the schedule (``u_k = (k + 1/2) / K``, shifted by Wan's shift as
training draws them), the loss of training with the *same* noise every time:

    x_t = (1 - sigma_k) x0 + sigma_k noise(sample, k)      loss = mean((model(x_t, ...) - (noise - x0))^2)

The noise of (sample, level) comes from a generator seeded by ``(validation seed, sample key, level)``: it
depends on neither the step nor the rank layout, so a change between two evaluations is the model's. The
losses (per level and their mean) go into ``metrics.jsonl`` with the step's row, and into TensorBoard when
it is on. The evaluation runs the training model itself (FSDP2, sequence parallelism) under ``no_grad``:
no second copy of the model; its extra memory is one forward's working set (no activations are kept).

Samples are spread over the data-parallel replicas (every rank of an SP group shares its replica's samples);
a replica with fewer samples than the others repeats one with weight 0, so every rank runs the same number
of forwards (FSDP2's collectives need lockstep). One forward per (sample, level), batch 1: the 14B model's
validation costs ``num_samples x num_sigmas / replicas`` forwards, about a third of a training step each.

Every ``render_every_steps`` steps the first ``render_samples`` samples are also edited with the run's own
sampler (``trainer.flow.euler_sample``, guidance included) from their own source latents, reference and
VLM tokens, decoded with the shard set's VAE and written to ``<run>/samples/step-<N>/<key>.mp4`` (rank 0).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from trainer.flow import Conditioning, euler_sample, shift_sigma

logger = logging.getLogger(__name__)


@dataclass
class ValidationConfig:
    """The ``[train.validation]`` recipe table."""

    every_steps: int = 0
    """Compute the validation losses every this many steps (and after the last step); 0 turns validation off."""
    samples: list[str] = field(default_factory=list)
    """Pair ids (sample keys) of the validation samples. Without ``shards`` they are taken out of the training
    shard set: found by scanning its tars' headers at start-up and never trained on."""
    shards: str = ""
    """A shard set of its own (folder, ``index.json`` or URL): its samples (those named in ``samples``, or all
    of them up to ``max_samples``) are the validation set; the training set stays whole. With neither
    ``samples`` nor ``shards`` the first ``max_samples`` training samples are used, *not* held out (a tiny
    demo set has none to spare; a warning says so)."""
    max_samples: int = 8
    """Without ``samples``: how many samples (in index order) to use."""
    num_sigmas: int = 8
    """Noise levels per sample, sigma_k = shift(u_k) with u_k = (k + 1/2) / num_sigmas."""
    seed: int = 0
    """Seed of the validation noise (fixed for the whole run)."""
    render_every_steps: int = 0
    """Also render edits every this many steps (and after the last step); 0 = never."""
    render_samples: int = 2
    """How many of the validation samples (the first ones) to render."""
    render_steps: int = 20
    """Euler steps of a rendered edit."""
    guidance_scale: float = 1.0
    """Classifier-free guidance scale of a rendered edit (other than 1 needs ``train.condition_dropout`` > 0)."""

    def __post_init__(self) -> None:
        if self.every_steps < 0 or self.render_every_steps < 0:
            raise ValueError("train.validation.every_steps and render_every_steps must be >= 0")
        if self.num_sigmas < 1 or self.render_steps < 1 or self.max_samples < 1:
            raise ValueError("train.validation.num_sigmas, render_steps and max_samples must be >= 1")

    @property
    def enabled(self) -> bool:
        return self.every_steps > 0 or self.render_every_steps > 0


def validation_sigmas(num_sigmas: int, shift: float) -> torch.Tensor:
    """(num_sigmas,) float32 noise levels: Wan's shift of ``u_k = (k + 1/2) / num_sigmas``."""
    u = (torch.arange(num_sigmas, dtype=torch.float64) + 0.5) / num_sigmas
    return shift_sigma(u, shift).float()


def validation_noise(seed: int, key: str, level: int, shape: tuple[int, ...]) -> torch.Tensor:
    """The fixed noise of (sample ``key``, noise level ``level``), float32 on the CPU."""
    digest = hashlib.sha256(f"validation/{seed}/{key}/{level}".encode()).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
    return torch.randn(shape, generator=generator)


def find_keys(catalogue: Any, keys: list[str]) -> dict[str, Any]:
    """``{key: SampleRef}`` of ``keys`` in a shard set, by scanning its tars' headers (an error names the
    keys not found)."""
    from trainer.data import SampleRef, ShardReader

    reader = ShardReader(catalogue)
    wanted, found = set(keys), {}
    for shard_id in range(len(catalogue.shards)):
        for position, (key, _) in enumerate(reader._scan(shard_id)):
            if key in wanted:
                found[key] = SampleRef(shard_id, position)
        if len(found) == len(wanted):
            break
    missing = sorted(wanted - set(found))
    if missing:
        raise ValueError(
            f"train.validation.samples: {missing[:5]} ({len(missing)} of {len(wanted)}) are not in the shard set "
            f"{catalogue.index_path}: give pair ids of its samples"
        )
    return found


def load_validation_samples(config: ValidationConfig, training_catalogue: Any) -> list[dict[str, Any]]:
    """The validation samples as batches of one (``trainer.data.collate``), in the order the recipe names them."""
    from trainer.data import ShardCatalogue, ShardReader, collate

    catalogue = ShardCatalogue(config.shards) if config.shards else training_catalogue
    if config.samples:
        refs = find_keys(catalogue, list(config.samples))
        ordered = [refs[key] for key in config.samples]
    else:
        ordered = [ref for bucket in sorted(catalogue.buckets) for ref in catalogue.buckets[bucket]]
        ordered = sorted(ordered, key=lambda ref: (ref.shard, ref.position))[: config.max_samples]
    reader = ShardReader(catalogue)
    return [collate([reader.read(ref)], where=f"validation sample {ref}") for ref in ordered]


class Validator:
    """Computes the validation losses and renders edits with the training model (see the module docstring)."""

    def __init__(
        self,
        config: ValidationConfig,
        samples: list[dict[str, Any]],
        shift: float,
        runtime: Any,
        run_dir: Path,
        shards_recipe: dict[str, Any] | None = None,
    ) -> None:
        self.config, self.samples, self.shift, self.runtime = config, samples, shift, runtime
        self.run_dir = run_dir
        self.shards_recipe = shards_recipe or {}
        self.sigmas = validation_sigmas(config.num_sigmas, shift)
        self._vae = None
        self.can_render = bool(self.shards_recipe.get("vae"))
        if config.render_every_steps and not self.can_render and runtime.is_main:
            logger.warning(
                "train.validation.render_every_steps is set but the shard set's index.json records no VAE "
                "(recipe.vae) to decode with: no edits are rendered"
            )

    def should_validate(self, step: int, last_step: int) -> bool:
        every = self.config.every_steps
        return every > 0 and (step % every == 0 or step == last_step)

    def should_render(self, step: int, last_step: int) -> bool:
        every = self.config.render_every_steps
        return self.can_render and every > 0 and (step % every == 0 or step == last_step)

    @torch.no_grad()
    def losses(self, model: torch.nn.Module) -> dict[str, float]:
        """``{"val_loss": mean, "val_loss_s<k>": level k's mean over samples}`` (every rank calls this)."""
        runtime, device = self.runtime, self.runtime.device
        replicas, replica = runtime.dp_size, runtime.dp_rank
        per_replica = -(-len(self.samples) // replicas)
        sums = torch.zeros(len(self.sigmas), dtype=torch.float64, device=device)
        for slot in range(per_replica):
            index = replica + slot * replicas
            weight = 1.0 if index < len(self.samples) else 0.0  # a filler forward keeps ranks in lockstep
            batch = self.samples[index if weight else 0]
            key = batch["keys"][0]
            x0 = batch["target_latents"].to(device).float()  # (1, 16, T', H', W')
            inputs = [batch[k].to(device) for k in ("source_latents", "reference_latents")]
            vlm = [batch[k].to(device) for k in ("vlm_first", "vlm_last")]  # one sample: no padding, no mask
            for level, sigma in enumerate(self.sigmas.tolist()):
                noise = validation_noise(self.config.seed, key, level, tuple(x0.shape[1:])).to(device)[None]
                x_t = (1 - sigma) * x0 + sigma * noise
                timestep = torch.full((1,), sigma * 1000.0, device=device)
                pred = model(x_t, *inputs, timestep, *vlm, None, sp=runtime.sp)
                sums[level] += weight * F.mse_loss(pred.float(), noise - x0).double()
        dist.all_reduce(sums)  # every rank of an SP group added the same losses: divide them out below
        per_level = (sums / (len(self.samples) * runtime.sp_size)).tolist()
        row = {"val_loss": sum(per_level) / len(per_level)}
        row.update({f"val_loss_s{level}": value for level, value in enumerate(per_level)})
        return row

    def render(self, model: torch.nn.Module, step: int, guidance_ok: bool) -> list[Path]:
        """Edit the first ``render_samples`` samples with the run's sampler; rank 0 writes the mp4s."""
        config = self.config
        if config.guidance_scale != 1.0 and not guidance_ok:
            raise ValueError(
                "train.validation.guidance_scale other than 1 needs train.condition_dropout > 0 "
                "(the model has no unconditional mode otherwise)"
            )
        folder = self.run_dir / "samples" / f"step-{step:08d}"
        written = []
        for batch in self.samples[: config.render_samples]:
            cond = Conditioning(
                batch["source_latents"],
                batch["reference_latents"],
                batch["vlm_first"][:, : int(batch["vlm_mask"].sum())],
                batch["vlm_last"][:, : int(batch["vlm_mask"].sum())],
            )
            latents = euler_sample(
                model,
                cond,
                config.render_steps,
                self.shift,
                config.seed,
                self.runtime.sp,
                config.guidance_scale,
            )
            if self.runtime.is_main:
                folder.mkdir(parents=True, exist_ok=True)
                written.append(self._write(folder, batch, latents))
        return written

    def _write(self, folder: Path, batch: dict[str, Any], latents: torch.Tensor) -> Path:
        from dataengine.formats.recipe import build_config
        from dataengine.media.video import write_mp4
        from dataengine.models.vae import WanVaeConfig, WanVaeEncoder

        key = batch["keys"][0]
        if self._vae is None:
            self._vae = WanVaeEncoder(build_config(WanVaeConfig, self.shards_recipe.get("vae"), "shards.vae"))
        fps = float((batch["metas"][0] or {}).get("fps", 16.0))
        out = folder / f"{key}.mp4"
        write_mp4(out, self._vae.decode(latents[0].float()), fps)
        return out
