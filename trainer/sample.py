"""``trainer sample`` (edit a video with a checkpoint) and ``trainer export`` (DCP -> one safetensors folder).

    trainer sample runs/debug --source clip.mp4 --instruction "Add a red hat." --reference first_frame_edited.png \\
        --out edited.mp4 --compare
    trainer export runs/debug/checkpoints/step-00000020 exported/debug
    trainer sample exported/debug --source clip.mp4 --instruction "..." --reference ref.png --out edited.mp4
    # across GPUs: each denoising step split over the 8 ranks (Ulysses sequence parallelism, 8 | num_heads)
    torchrun --nproc-per-node 8 -m trainer.cli sample runs/mive_14b --source ... --out edited.mp4

What sampling does, in order, with the same code the shards step uses:

1. the source clip is prepared like a training clip (``dataengine.media.clips.plan_clip``: the recipe's frame-count
   rule and fps, resized to cover the nearest bucket and centre-cropped); the reference is fitted to the same bucket;
2. the Wan VAE (``dataengine.models.vae.WanVaeEncoder``) encodes the source and the reference into normalised
   latents; Qwen3-VL (``dataengine.models.vlm.Qwen3VLEncoder``) encodes (reference, source frames, instruction) into
   the first- and last-layer tokens;
3. the flow-matching sampler (``trainer.flow.euler_sample``): Euler steps over Wan's shifted schedule from
   pure noise (sigma = 1) to the clean latents (sigma = 0), ``sigma(u) = shift u / (1 + (shift - 1) u)`` on
   ``u = 1 - i / steps``; the model predicts the velocity ``noise - x0`` (the trainer's target), so
   ``x <- x + (sigma_next - sigma) v``;
4. the VAE decodes the latents; the edited clip is written as an mp4 at the prepared clip's frame rate (the
   source's own rate when the rule keeps the native rate).

Under ``torchrun`` with N processes, every rank loads the DiT and they form one sequence-parallel group of
N (``trainer.model.SequenceParallel``): each denoising step's tokens are split over the ranks, attention
sees the whole sequence. Rank 0 alone runs the VAE and the VLM and broadcasts their outputs (so every rank
denoises exactly the same inputs), and decodes and writes the video; every rank draws the same noise.

Classifier-free guidance (``--guidance-scale``, default 1 = none; the paper does not mention guidance): each
step also predicts the unconditional velocity, without the condition tokens (the reference and source latents
stay), and moves along ``v_u + scale (v_c - v_u)``. Only a model trained with ``train.condition_dropout`` > 0
has learnt that unconditional velocity; for any other checkpoint a scale other than 1 is refused.

Where the settings come from: the model config and the flow shift from the training run's
``recipe.resolved.json``; the clip preparation and the two encoders from the shard set it trained on
(``index.json``'s resolved ``[shards]`` recipe); ``--steps``, ``--vae``, ``--vlm`` override. ``trainer export``
copies all of it into the exported folder (``config.json``, ``sampling.json``) so that folder samples alone.

Weights: a DCP checkpoint of a run trained with ``train.ema_decay`` > 0 also holds the EMA of the weights;
``trainer sample`` then samples with the EMA, and ``trainer export --ema`` exports it (``sampling.json``'s
``weights`` says which an exported folder holds).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from dataengine.formats.layout import TrainRunLayout
from trainer.flow import Conditioning, euler_sample

if TYPE_CHECKING:
    import numpy as np
    import torch

    from trainer.model import MiVETransformer
    from trainer.parallel import Runtime

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
SAMPLING_NAME = "sampling.json"


@dataclass
class SampleConfig:
    """How to sample (the optional ``[sample]`` table of a training recipe; the CLI overrides it)."""

    num_steps: int = 50
    """Euler steps from noise to the clean latents (Wan's default is 50)."""
    shift: float | None = None
    """Timestep shift of the schedule; None takes the training recipe's ``train.flow.shift``."""
    seed: int = 0
    """Seed of the initial noise."""
    dtype: str = "auto"
    """Compute dtype of the DiT: ``auto`` (bfloat16 on CUDA, float32 on the CPU), ``float32``, ``bfloat16``."""
    device: str = "auto"
    """``auto`` (CUDA if available, else CPU), ``cpu`` or ``cuda:N``."""
    guidance_scale: float = 1.0
    """Classifier-free guidance, ``v = v_uncond + scale (v_cond - v_uncond)``: 1 is none (one forward per
    step); another value costs two forwards per step and needs a model trained with ``train.condition_dropout``."""


@dataclass
class SamplingContext:
    """Everything besides the weights that sampling needs, as read from a run or an exported folder."""

    model_name: str
    model: dict[str, Any]  # MiVEConfig fields
    flow_shift: float
    shards_recipe: dict[str, Any]  # the resolved [shards] table: clip, vae, vlm
    sample: dict[str, Any] = field(default_factory=dict)  # the recipe's [sample] table, if any
    condition_dropout: float = 0.0  # train.condition_dropout: > 0 means the model can be guided
    weights: str = "model"  # which weights a DCP checkpoint gave: "model" or "ema" (its EMA, when saved)


# ---------------------------------------------------------------------------------------------------
# Checkpoints: run folder, DCP step folder, exported folder
# ---------------------------------------------------------------------------------------------------


def _find_run_dir(path: Path) -> Path:
    if (run := TrainRunLayout.containing(path)) is not None:
        return run.folder
    raise FileNotFoundError(
        f"{path}: no recipe.resolved.json in it or above it: is this a trainer run's checkpoint?"
    )


def resolve_checkpoint(path: str | Path) -> tuple[str, Path]:
    """``("export", folder)`` or ``("dcp", step folder)``; a run folder resolves to its latest complete checkpoint."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if (path / WEIGHTS_NAME).exists() and (path / CONFIG_NAME).exists():
        return "export", path
    if (path / ".metadata").exists():
        return "dcp", path
    if (run := TrainRunLayout(path)).resolved_recipe.exists():
        from trainer.checkpoint import complete_checkpoints

        resolved = json.loads(run.resolved_recipe.read_text())
        folder = run.checkpoints(resolved.get("train", {}).get("checkpoint", {}).get("folder", "checkpoints"))
        steps = complete_checkpoints(folder)
        if not steps:
            raise FileNotFoundError(f"run {path} has no complete checkpoint in {folder}")
        return "dcp", steps[-1]
    raise ValueError(
        f"{path} is neither an exported folder ({WEIGHTS_NAME} + {CONFIG_NAME}), a DCP checkpoint (.metadata) "
        "nor a training run folder (recipe.resolved.json)"
    )


def context_from_run(run_dir: Path) -> SamplingContext:
    """The sampling context of a training run: its resolved recipe and the index of the shards it read."""
    from dataengine.formats.layout import is_url
    from dataengine.formats.shard_format import read_index
    from trainer.model import get_config

    resolved = json.loads(TrainRunLayout(run_dir).resolved_recipe.read_text())
    train = resolved["train"]
    shards = train["data"]["shards"] if is_url(train["data"]["shards"]) else Path(train["data"]["shards"])
    if isinstance(shards, Path) and not shards.is_absolute() and not shards.exists():
        # a relative shard path is relative to where ``fit`` ran; try beside the runs folder too
        candidate = run_dir.parent.parent / shards
        shards = candidate if candidate.exists() else shards
    try:
        index = read_index(shards)
        shards_recipe = index.get("recipe") or {}
    except FileNotFoundError:
        shards_recipe = {}
    return SamplingContext(
        model_name=train["model"],
        model=asdict(get_config(train["model"])),
        flow_shift=float(train.get("flow", {}).get("shift", 5.0)),
        shards_recipe=shards_recipe,
        sample=(resolved.get("recipe") or {}).get("sample", {}),
        condition_dropout=float(train.get("condition_dropout", 0.0)),
    )


def context_from_export(folder: Path) -> SamplingContext:
    config = json.loads((folder / CONFIG_NAME).read_text())
    sampling = json.loads((folder / SAMPLING_NAME).read_text()) if (folder / SAMPLING_NAME).exists() else {}
    return SamplingContext(
        model_name=config["model_name"],
        model=config["model"],
        flow_shift=float(sampling.get("flow_shift", 5.0)),
        shards_recipe=sampling.get("shards_recipe", {}),
        sample=sampling.get("sample", {}),
        condition_dropout=float(sampling.get("condition_dropout", 0.0)),
        weights=sampling.get("weights", "model"),
    )


def meta_model(context: SamplingContext, dtype: torch.dtype | None = None) -> MiVETransformer:
    """The model on the meta device, its parameters in ``dtype`` (default float32): no memory, no init.
    Built in the dtype (``.to(dtype)`` of a meta model fails inside a fake-tensor trace); build it outside
    one (``trainer.sample_trace``)."""
    import torch

    from trainer.model import MiVEConfig, MiVETransformer

    previous = torch.get_default_dtype()
    try:
        torch.set_default_dtype(dtype or torch.float32)
        with torch.device("meta"):
            return MiVETransformer(MiVEConfig(**context.model))
    finally:
        torch.set_default_dtype(previous)


def build_empty_model(
    context: SamplingContext, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> MiVETransformer:
    """The model's parameters allocated in ``dtype`` (default float32) on ``device``, not initialised: built on
    the meta device, so nothing is drawn and no float32 copy exists before the checkpoint is read into it."""
    return meta_model(context, dtype).to_empty(device=device)


def load_dcp_model(
    step_dir: Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    weights: str = "model",
) -> tuple[MiVETransformer, SamplingContext]:
    """The model of a DCP checkpoint, read straight into a plain (unsharded) model in ``dtype`` on ``device``.

    Only the ``model.*`` entries are read (``torch.distributed.checkpoint.load`` with the trainer's data-only
    reader and planner: nothing is unpickled), whatever number of ranks wrote them. DCP reads one stored
    chunk at a time on the host and copies it into the parameter it belongs to (converting the dtype there):
    the host holds one chunk, never the model.

    ``weights``: ``model`` (the trained weights), ``ema`` (their EMA, ``train.ema_decay``) or ``auto`` (the EMA
    when the checkpoint holds one); ``context.weights`` says which were read.
    """
    import torch.distributed.checkpoint as dcp

    from trainer.checkpoint import EMA_KEY, DataOnlyLoadPlanner, DataOnlyReader

    context = context_from_run(_find_run_dir(step_dir))
    reader = DataOnlyReader(str(step_dir))
    saved_keys = reader.read_metadata().state_dict_metadata
    has_ema = any(k.startswith(EMA_KEY + ".") for k in saved_keys)
    if weights == "ema" and not has_ema:
        raise ValueError(
            f"{step_dir} holds no EMA of the weights (train.ema_decay was 0): export without --ema"
        )
    prefix = EMA_KEY if weights == "ema" or (weights == "auto" and has_ema) else "model"
    context.weights = prefix
    saved = {k.removeprefix(prefix + ".") for k in saved_keys if k.startswith(prefix + ".")}
    model = build_empty_model(context, device, dtype)
    state = model.state_dict()  # the parameters themselves: DCP copies into them in place
    missing = sorted(set(state) - saved)
    if missing:
        raise ValueError(
            f"{step_dir}: checkpoint lacks model entries {missing[:5]} (of {len(missing)}): another model?"
        )
    dcp.load({prefix: state}, storage_reader=reader, planner=DataOnlyLoadPlanner(), no_dist=True)
    return model, context


_SAFETENSORS_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
}  # fmt: skip


def read_safetensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of a safetensors file, one tensor at a time, each read into its own host buffer (no
    memory map: the file's pages never count in the process's memory, and only the tensor being read is
    held). Names in file order."""
    import torch

    with open(path, "rb") as handle:
        header_size = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(header_size))
        header.pop("__metadata__", None)
        start = 8 + header_size
        for name, info in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]):
            if info["dtype"] not in _SAFETENSORS_DTYPES:
                raise ValueError(f"{path}: {name} has dtype {info['dtype']}, not one sampling reads")
            dtype = getattr(torch, _SAFETENSORS_DTYPES[info["dtype"]])
            begin, end = info["data_offsets"]
            tensor = torch.empty(info["shape"], dtype=dtype)
            if end > begin:
                handle.seek(start + begin)
                view = tensor.view(-1).view(torch.uint8).numpy()  # the tensor's own bytes
                if handle.readinto(view) != end - begin:
                    raise ValueError(f"{path}: {name} is cut short: the file is incomplete")
            yield name, tensor
            del tensor


def load_exported_model(
    folder: Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> tuple[MiVETransformer, SamplingContext]:
    """The model of an exported folder, read one tensor at a time into a model in ``dtype`` on ``device``."""
    context = context_from_export(folder)
    model = build_empty_model(context, device, dtype)
    fill_model(model, read_safetensors(folder / WEIGHTS_NAME), f"{folder / WEIGHTS_NAME}", context.model_name)
    return model, context


def fill_model(
    model: MiVETransformer, tensors: Iterable[tuple[str, torch.Tensor]], where: str, model_name: str = ""
) -> None:
    """Copy every ``(name, tensor)`` into the model's parameter of that name (converting the dtype and
    moving it to the parameter's device there); every parameter must come exactly once."""
    import torch

    state = model.state_dict()
    seen: set[str] = set()
    with torch.no_grad():
        for name, tensor in tensors:
            if name not in state:
                raise ValueError(
                    f"{where}: {name} is not a parameter of the model {model_name}: another model?"
                )
            if tensor.shape != state[name].shape:
                raise ValueError(
                    f"{where}: {name} has shape {tuple(tensor.shape)}, the model {model_name} "
                    f"{tuple(state[name].shape)}"
                )
            state[name].copy_(tensor)
            seen.add(name)
            del tensor  # before the reader makes the next one: one tensor on the host at a time
    missing = sorted(set(state) - seen)
    if missing:
        raise ValueError(f"{where}: lacks {missing[:5]} (of {len(missing)}): another model?")


def load_context(path: str | Path) -> SamplingContext:
    """The sampling context of a checkpoint alone (no weights read): to check a request before loading."""
    kind, folder = resolve_checkpoint(path)
    return context_from_export(folder) if kind == "export" else context_from_run(_find_run_dir(folder))


def check_guidance(scale: float, context: SamplingContext, checkpoint: str | Path) -> None:
    """Refuse classifier-free guidance for a model that never learnt the unconditional velocity."""
    if scale != 1.0 and context.condition_dropout <= 0:
        raise ValueError(
            f"{checkpoint}: guidance scale {scale:g} needs a model trained with condition dropout, but this one "
            "was trained with train.condition_dropout = 0 (it has no unconditional mode to guide against): "
            "sample with --guidance-scale 1, or train with e.g. train.condition_dropout = 0.1"
        )


def load_checkpoint(
    path: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    weights: str = "model",
) -> tuple[MiVETransformer, SamplingContext]:
    """A DCP checkpoint (or a run folder: its latest) or an exported folder -> (model, context): the model in
    ``dtype`` (default float32) on ``device`` (default the CPU), read tensor by tensor into its place.
    ``weights`` picks a DCP checkpoint's trained weights (``model``), their EMA (``ema``) or the EMA when
    saved (``auto``, what ``trainer sample`` and ``trainer eval`` use); an exported folder holds one set."""
    kind, folder = resolve_checkpoint(path)
    if kind == "export":
        model, context = load_exported_model(folder, device, dtype)
    else:
        model, context = load_dcp_model(folder, device, dtype, weights)
    return model.eval().requires_grad_(False), context


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, ema: bool = False) -> Path:
    """Write ``out_dir/model.safetensors`` (consolidated weights: the trained ones, or with ``ema`` their EMA),
    ``config.json`` and ``sampling.json``."""
    from safetensors.torch import save_file

    kind, folder = resolve_checkpoint(checkpoint)
    if kind == "export":
        raise ValueError(
            f"{checkpoint} is already an exported folder: export a DCP checkpoint or a run folder"
        )
    model, context = load_dcp_model(folder, weights="ema" if ema else "model")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    tmp = out / f".{WEIGHTS_NAME}.tmp"
    save_file(state, str(tmp), metadata={"format": "pt", "model_name": context.model_name})
    tmp.replace(out / WEIGHTS_NAME)
    (out / CONFIG_NAME).write_text(
        json.dumps({"model_name": context.model_name, "model": context.model}, indent=2)
    )
    sampling = {
        "flow_shift": context.flow_shift,
        "shards_recipe": context.shards_recipe,
        "sample": context.sample,
        "condition_dropout": context.condition_dropout,
        "weights": context.weights,
    }
    (out / SAMPLING_NAME).write_text(json.dumps(sampling, indent=2))
    return out


# ---------------------------------------------------------------------------------------------------
# Inputs and outputs: the same clip preparation and encoders as the shards step
# ---------------------------------------------------------------------------------------------------


def prepare_source(
    source: str | Path, reference: str | Path, clip_config: Any
) -> tuple[np.ndarray, np.ndarray, float]:
    """(source frames (T, H, W, 3), reference (H, W, 3), fps) prepared as ``dataengine.media.clips.prepare_pair`` does.

    ``source`` and ``reference`` are local paths or URLs (fsspec: ``https://``, ``s3://``, ``hf://``, ...),
    downloaded to a temporary folder for the decoders."""
    import tempfile

    from dataengine.media.video import local_file

    with tempfile.TemporaryDirectory(prefix="mive_sample_") as tmp:
        return _prepare_local(local_file(source, tmp), local_file(reference, tmp), clip_config)


def _prepare_local(source: Path, reference: Path, clip_config: Any) -> tuple[np.ndarray, np.ndarray, float]:
    from dataengine.media.clips import ClipRejection, load_reference, plan_clip, resize_and_crop
    from dataengine.media.video import VideoError, probe, read_frames

    if not Path(reference).is_file():
        raise ValueError(
            f"reference image {reference!s:.200} is not a file (give the edited first frame, a PNG)"
        )
    try:
        plan = plan_clip(probe(source), None, clip_config)  # the shards step's own check and frame choice
        reference_image = load_reference(reference)
        frames = read_frames(source, plan.indices)
    except (VideoError, ClipRejection) as err:
        raise ValueError(f"cannot sample from {source}: {err}") from err
    return (
        resize_and_crop(frames, plan.bucket),
        resize_and_crop(reference_image[None], plan.bucket)[0],
        plan.fps,
    )


def side_by_side(source: np.ndarray, reference: np.ndarray, edited: np.ndarray) -> np.ndarray:
    """(T, H, 3W, 3): source | reference (held) | edited, frame by frame."""
    import numpy as np

    held = np.broadcast_to(reference[None], edited.shape)
    return np.concatenate([source[: len(edited)], held, edited], axis=2)


@dataclass
class SampleResult:
    out: Path
    compare: Path | None
    num_frames: int
    width: int
    height: int
    fps: float
    num_condition_tokens: int
    steps: int
    shift: float
    guidance_scale: float


def check_inputs(inputs: dict[str, str | Path]) -> None:
    """Every local input that does not exist, named in one error (URLs are read when used)."""
    from dataengine.formats.layout import is_url
    from dataengine.formats.recipe import MissingInput

    missing = [
        f"{name} {path}" for name, path in inputs.items() if not is_url(path) and not Path(path).is_file()
    ]
    if missing:
        raise MissingInput(f"not found: {', '.join(missing)}")


def sample_video(
    checkpoint: str | Path,
    source: str | Path,
    instruction: str,
    reference: str | Path,
    out: str | Path,
    compare: bool = False,
    config: SampleConfig | None = None,
    vae_model: str | None = None,
    vlm_model: str | None = None,
) -> SampleResult:
    """Edit ``source`` per ``instruction`` and ``reference`` with a checkpoint; write the mp4 (and the comparison).

    Under ``torchrun`` (``WORLD_SIZE`` > 1) every rank calls this: they share each denoising step as one
    sequence-parallel group, rank 0 encodes, decodes and writes; every rank returns the same result.
    Several clips with one checkpoint: :class:`Sampler` loads the models once.
    """
    inputs = {"source video": source, "reference image": reference}  # checked before any weights are read
    with Sampler(checkpoint, config, vae_model, vlm_model, inputs=inputs) as sampler:
        return sampler.sample(source, instruction, reference, out, compare)


class Sampler:
    """A checkpoint ready to edit many clips: the DiT, the Wan VAE and the VLM are loaded once.

        with Sampler("runs/debug", SampleConfig(num_steps=20)) as sampler:
            for clip in clips:
                sampler.sample(clip.source, clip.instruction, clip.reference, clip.out)

    The DiT is built on the meta device and the checkpoint read straight into the sampling dtype on the
    sampling device, one stored tensor at a time (:func:`load_checkpoint`): no float32 model ever exists on
    the host. Under ``torchrun`` (``WORLD_SIZE`` > 1) entering the context joins the process group (every
    rank keeps the whole model on its own device: each denoising step is split over the ranks' tokens, not
    their weights) and only rank 0 loads the VAE and the VLM; leaving it leaves the group.
    """

    def __init__(
        self,
        checkpoint: str | Path,
        config: SampleConfig | None = None,
        vae_model: str | None = None,
        vlm_model: str | None = None,
        inputs: dict[str, str | Path] | None = None,
    ) -> None:
        self.checkpoint, self.config = checkpoint, config
        self.vae_model, self.vlm_model = vae_model, vlm_model
        self.inputs = inputs or {}  # name -> local path or URL, checked before the weights are read
        self.runtime: Runtime | None = None

    def __enter__(self) -> Sampler:
        from trainer.parallel import ParallelConfig, init_distributed, shutdown_distributed

        world_size = int(os.environ.get("WORLD_SIZE", 1))
        if world_size > 1:
            self.runtime = init_distributed(ParallelConfig(sequence_parallel=world_size))
        try:
            self._load()
        except BaseException:
            if self.runtime is not None:
                shutdown_distributed(synchronize=False)
            raise
        return self

    def __exit__(self, kind: type | None, error: BaseException | None, traceback: Any) -> None:
        from trainer.parallel import shutdown_distributed

        if self.runtime is not None:
            shutdown_distributed(synchronize=kind is None)  # a failed peer may never reach a barrier

    def _load(self) -> None:
        from dataengine.formats.recipe import build_config
        from dataengine.media.clips import ClipConfig
        from dataengine.models.devices import resolve_device, resolve_dtype
        from dataengine.models.vae import WanVaeConfig, WanVaeEncoder
        from dataengine.models.vlm import Qwen3VLEncoder, Qwen3VLEncoderConfig

        checkpoint, runtime = self.checkpoint, self.runtime
        context = load_context(checkpoint)
        explicit = {} if self.config is None else _explicit(self.config)
        sample = build_config(SampleConfig, {**context.sample, **explicit}, "sample")
        check_guidance(sample.guidance_scale, context, checkpoint)  # before the weights are read
        check_inputs(self.inputs)
        if runtime is not None and context.model["num_heads"] % runtime.sp_size:
            raise ValueError(
                f"{runtime.sp_size} processes cannot share the model's {context.model['num_heads']} attention "
                "heads: launch a number of processes that divides them"
            )
        device = runtime.device if runtime is not None else resolve_device(sample.device)
        dtype_name = (
            sample.dtype if sample.dtype != "auto" else ("bfloat16" if device.type == "cuda" else "float32")
        )
        # the EMA of the weights when the checkpoint holds one (train.ema_decay), else the trained weights
        self.model, self.context = load_checkpoint(checkpoint, device, resolve_dtype(dtype_name), "auto")
        self.sample_config = sample
        self.shift = sample.shift if sample.shift is not None else self.context.flow_shift
        recipe = self.context.shards_recipe
        self.clip_config = build_config(ClipConfig, recipe.get("clip"), "shards.clip")
        vae_table = dict(recipe.get("vae") or {})
        vlm_table = dict(recipe.get("vlm") or {})
        if self.vae_model:
            vae_table["model_id"] = self.vae_model
        if self.vlm_model:
            vlm_table["model_id"] = self.vlm_model
        self.vlm_config = build_config(Qwen3VLEncoderConfig, vlm_table, "shards.vlm")
        self.vae = self.vlm = None
        if runtime is None or runtime.is_main:  # the encoders run on rank 0 only
            self.vae = WanVaeEncoder(build_config(WanVaeConfig, vae_table, "shards.vae"))
            self.vlm = Qwen3VLEncoder(self.vlm_config)

    def sample(
        self,
        source: str | Path,
        instruction: str,
        reference: str | Path,
        out: str | Path,
        compare: bool = False,
    ) -> SampleResult:
        """Edit one clip (on every rank under ``torchrun``); write the mp4 (rank 0) and return what was done."""
        import torch

        from trainer.parallel import broadcast_tensors

        runtime, model, sample = self.runtime, self.model, self.sample_config
        is_main = runtime is None or runtime.is_main
        # 1-2. the clip and its encodings, exactly as the shards step computes them (the clip checks run on
        #      every rank, so a bad input stops all of them; the encoders run on rank 0 only)
        frames, reference_image, fps = prepare_source(source, reference, self.clip_config)
        encoded = None
        if is_main:
            source_latents = self.vae.encode(frames)  # (16, T', H', W') bf16
            reference_latents = self.vae.encode(reference_image[None])  # (16, 1, H', W') bf16
            vlm_indices = self.vlm.select_frames(len(frames), fps)
            states = self.vlm.encode(
                instruction, reference_image, frames[vlm_indices], fps, frame_indices=vlm_indices.tolist()
            )
            encoded = [source_latents, reference_latents, states.first, states.last]
        if runtime is not None:
            encoded = [t.cpu() for t in broadcast_tensors(encoded, runtime.device)]
        source_latents, reference_latents, vlm_first, vlm_last = encoded
        if vlm_first.shape[-1] != model.config.vlm_dim:
            raise ValueError(
                f"the VLM {self.vlm_config.model_id} gives width {vlm_first.shape[-1]}, the model expects "
                f"{model.config.vlm_dim}"
            )

        # 3. the flow-matching sampler (split over the ranks under torchrun)
        cond = Conditioning(source_latents[None], reference_latents[None], vlm_first[None], vlm_last[None])
        sp = runtime.sp if runtime is not None else None
        latents = euler_sample(
            model, cond, sample.num_steps, self.shift, sample.seed, sp, sample.guidance_scale
        )

        # 4. decode and write (rank 0)
        out = Path(out)
        compare_path = out.with_name(f"{out.stem}.compare{out.suffix}") if compare else None
        if is_main:
            from dataengine.media.video import write_mp4

            edited = self.vae.decode(latents[0].to(torch.float32))  # (T, H, W, 3) uint8
            write_mp4(out, edited, fps)
            if compare_path is not None:
                write_mp4(compare_path, side_by_side(frames, reference_image, edited), fps)
        height, width = frames.shape[1:3]
        return SampleResult(
            out=out,
            compare=compare_path,
            num_frames=1 + 4 * (latents.shape[2] - 1),  # what the Wan VAE decodes T' latent frames to
            width=int(width),
            height=int(height),
            fps=fps,
            num_condition_tokens=int(vlm_first.shape[0]),
            steps=sample.num_steps,
            shift=float(self.shift),
            guidance_scale=sample.guidance_scale,
        )


def _explicit(config: SampleConfig) -> dict[str, Any]:
    """The fields of ``config`` that differ from the defaults (so a recipe's [sample] table still applies)."""
    default = SampleConfig()
    return {k: v for k, v in asdict(config).items() if v != getattr(default, k)}


# ---------------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------------


def sample_command(
    checkpoint: Annotated[
        Path, typer.Argument(help="Run folder (latest checkpoint), DCP step folder or exported folder")
    ],
    source: Annotated[str, typer.Option("--source", help="Source video to edit (a path or a URL)")],
    instruction: Annotated[str, typer.Option("--instruction", help="Editing instruction")],
    reference: Annotated[
        str,
        typer.Option(
            "--reference", help="Reference image: the source's first frame, edited (a path or a URL)"
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="Output mp4")],
    compare: Annotated[
        bool, typer.Option("--compare", help="Also write <out>.compare.mp4: source | reference | edited")
    ] = False,
    steps: Annotated[
        int | None, typer.Option("--steps", help="Euler steps (default: recipe [sample] or 50)")
    ] = None,
    shift: Annotated[
        float | None, typer.Option("--shift", help="Schedule shift (default: train.flow.shift)")
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed of the initial noise")] = None,
    device: Annotated[str | None, typer.Option("--device", help="auto, cpu or cuda:N")] = None,
    guidance_scale: Annotated[
        float | None,
        typer.Option(
            "--guidance-scale",
            help="Classifier-free guidance scale (default 1: none); needs a model trained with train.condition_dropout",
        ),
    ] = None,
    vae: Annotated[str | None, typer.Option("--vae", help="Override the Wan VAE (hub id or folder)")] = None,
    vlm: Annotated[
        str | None, typer.Option("--vlm", help="Override the Qwen3-VL encoder (hub id or folder)")
    ] = None,
) -> None:
    """Edit a video with a MiVE checkpoint: VLM tokens + VAE latents, Euler flow-matching sampler, VAE decode."""
    config = SampleConfig()
    if steps is not None:
        config.num_steps = steps
    if shift is not None:
        config.shift = shift
    if seed is not None:
        config.seed = seed
    if device is not None:
        config.device = device
    if guidance_scale is not None:
        config.guidance_scale = guidance_scale
    try:
        result = sample_video(checkpoint, source, instruction, reference, out, compare, config, vae, vlm)
    except (ValueError, FileNotFoundError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(code=2) from err
    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun rank 0 wrote the video and says so
    processes = int(os.environ.get("WORLD_SIZE", 1))
    typer.echo(
        f"wrote {result.out}: {result.num_frames} frames {result.width}x{result.height} at {result.fps:g} fps "
        f"({result.steps} Euler steps, shift {result.shift:g}, {result.num_condition_tokens} VLM tokens, "
        f"guidance scale {result.guidance_scale:g}"
        + (f"; each step split over {processes} processes" if processes > 1 else "")
        + ")"
    )
    if result.compare:
        typer.echo(f"wrote {result.compare}: source | reference | edited")


def export_command(
    checkpoint: Annotated[
        Path, typer.Argument(help="DCP step folder, or a run folder (its latest checkpoint)")
    ],
    out_dir: Annotated[
        Path, typer.Argument(help="Output folder: model.safetensors, config.json, sampling.json")
    ],
    ema: Annotated[
        bool, typer.Option("--ema", help="Export the EMA of the weights (a run trained with train.ema_decay)")
    ] = False,
) -> None:
    """Consolidate a DCP checkpoint into one safetensors file with the model config (no optimizer state)."""
    try:
        out = export_checkpoint(checkpoint, out_dir, ema)
    except (ValueError, FileNotFoundError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(code=2) from err
    size = (out / WEIGHTS_NAME).stat().st_size
    typer.echo(f"wrote {out}/{WEIGHTS_NAME} ({size / 2**20:,.1f} MiB), {CONFIG_NAME}, {SAMPLING_NAME}")
