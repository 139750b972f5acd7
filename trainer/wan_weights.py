"""Initialise the MiVE DiT from Wan2.1-T2V-14B, in the diffusers or the original checkpoint layout.

    from trainer.model import MiVETransformer, get_config
    from trainer.wan_weights import load_wan_weights

    with torch.device("meta"):
        model = MiVETransformer(get_config("mive_14b"))
    report = load_wan_weights(model, "Wan-AI/Wan2.1-T2V-14B-Diffusers", device="cpu")  # or a local folder
    print(report.summary())

Layouts (detected from the tensor names):
- diffusers (``Wan-AI/Wan2.1-T2V-14B-Diffusers``, subfolder ``transformer``): ``blocks.0.attn1.to_q.weight``,
  ``condition_embedder.time_embedder.linear_1.weight``, ``proj_out.weight`` ...
- original (``Wan-AI/Wan2.1-T2V-14B``): ``blocks.0.self_attn.q.weight``, ``blocks.0.modulation``,
  ``time_embedding.0.weight``, ``time_projection.1.weight``, ``head.head.weight``, ``head.modulation`` ...
  (an optional ``model.diffusion_model.`` prefix, as in single-file exports, is stripped).

What is copied: self-attention (q, k, v, o and the qk RMSNorms), FFN, modulation tables, time embedding
and projection, head. Patch embedding: Wan's weights go to the noisy branch's 16 input channels, the
control branch's 16 start at zero. Left out: cross-attention, its norm and the text embedder (and the
image embedder of I2V checkpoints). Fresh: the context adapter, initialised per the config's
``adapter_init`` (default ``zero_fusion``: condition tokens start as zeros), drawn whole on the CPU from a
generator seeded by the recipe's ``train.seed`` and then sharded like Wan's tensors, so a run on N processes
starts from exactly the model a run on one process starts from.

Memory: tensors are read one at a time, shard by shard (``*.safetensors.index.json``), and copied into
the model (materialised model, or FSDP2 DTensor parameters) or assigned to it (meta-device model). The
checkpoint is never held in memory as a whole, and a meta model is never materialised twice.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from huggingface_hub import snapshot_download
from safetensors import safe_open
from torch import nn

from trainer.model import ContextAdapter, MiVEConfig, MiVETransformer, init_context_adapter

# checkpoint name pattern -> our parameter name (re.sub template), per layout
_DIFFUSERS_RULES: list[tuple[str, str]] = [
    (r"condition_embedder\.time_embedder\.linear_(1|2)\.(weight|bias)", r"time_embedder.linear_\1.\2"),
    (r"condition_embedder\.time_proj\.(weight|bias)", r"time_proj.\1"),
    (r"blocks\.(\d+)\.attn1\.to_(q|k|v)\.(weight|bias)", r"blocks.\1.attn.to_\2.\3"),
    (r"blocks\.(\d+)\.attn1\.to_out\.0\.(weight|bias)", r"blocks.\1.attn.to_out.\2"),
    (r"blocks\.(\d+)\.attn1\.norm_(q|k)\.weight", r"blocks.\1.attn.norm_\2.weight"),
    (r"blocks\.(\d+)\.ffn\.net\.0\.proj\.(weight|bias)", r"blocks.\1.ffn.proj_in.\2"),
    (r"blocks\.(\d+)\.ffn\.net\.2\.(weight|bias)", r"blocks.\1.ffn.proj_out.\2"),
    (r"blocks\.(\d+)\.scale_shift_table", r"blocks.\1.scale_shift_table"),
    (r"scale_shift_table", r"scale_shift_table"),
    (r"proj_out\.(weight|bias)", r"proj_out.\1"),
    (r"patch_embedding\.(weight|bias)", r"patch_embedding.\1"),
]
_DIFFUSERS_LEFT_OUT = [
    r"condition_embedder\.text_embedder\..+",
    r"condition_embedder\.image_embedder\..+",
    r"blocks\.\d+\.attn2\..+",
    r"blocks\.\d+\.norm2\..+",  # diffusers' cross-attention norm
]
_ORIGINAL_RULES: list[tuple[str, str]] = [
    (r"time_embedding\.0\.(weight|bias)", r"time_embedder.linear_1.\1"),
    (r"time_embedding\.2\.(weight|bias)", r"time_embedder.linear_2.\1"),
    (r"time_projection\.1\.(weight|bias)", r"time_proj.\1"),
    (r"blocks\.(\d+)\.self_attn\.(q|k|v)\.(weight|bias)", r"blocks.\1.attn.to_\2.\3"),
    (r"blocks\.(\d+)\.self_attn\.o\.(weight|bias)", r"blocks.\1.attn.to_out.\2"),
    (r"blocks\.(\d+)\.self_attn\.norm_(q|k)\.weight", r"blocks.\1.attn.norm_\2.weight"),
    (r"blocks\.(\d+)\.ffn\.0\.(weight|bias)", r"blocks.\1.ffn.proj_in.\2"),
    (r"blocks\.(\d+)\.ffn\.2\.(weight|bias)", r"blocks.\1.ffn.proj_out.\2"),
    (r"blocks\.(\d+)\.modulation", r"blocks.\1.scale_shift_table"),
    (r"head\.head\.(weight|bias)", r"proj_out.\1"),
    (r"head\.modulation", r"scale_shift_table"),
    (r"patch_embedding\.(weight|bias)", r"patch_embedding.\1"),
]
_ORIGINAL_LEFT_OUT = [
    r"text_embedding\..+",
    r"img_emb\..+",
    r"blocks\.\d+\.cross_attn\..+",
    r"blocks\.\d+\.norm3\..+",  # the original layout's cross-attention norm
]
_LAYOUTS = {
    "diffusers": (_DIFFUSERS_RULES, _DIFFUSERS_LEFT_OUT),
    "original": (_ORIGINAL_RULES, _ORIGINAL_LEFT_OUT),
}
_ORIGINAL_PREFIX = "model.diffusion_model."
INDEX_SUFFIX = ".safetensors.index.json"


@dataclass
class WanLoadReport:
    """What :func:`load_wan_weights` did."""

    source: str
    """The hub id or folder given."""
    folder: str
    """The local folder the shards were read from."""
    layout: str
    """``diffusers`` or ``original``."""
    shards: list[str] = field(default_factory=list)
    """Shard files read, in order, one at a time."""
    loaded: list[str] = field(default_factory=list)
    """Our parameters filled from the checkpoint (``patch_embedding.weight``: its first C input channels)."""
    fresh: list[str] = field(default_factory=list)
    """Our parameters (or parts) initialised here rather than from Wan."""
    left_out: list[str] = field(default_factory=list)
    """Checkpoint tensors not used (cross-attention, its norm, the text embedder)."""

    def summary(self) -> str:
        """A few lines for the log."""
        left_groups = sorted(
            {re.sub(r"blocks\.\d+\.", "blocks.*.", k).rsplit(".", 1)[0] for k in self.left_out}
        )
        return "\n".join(
            [
                f"Wan weights ({self.layout} layout) from {self.source} ({len(self.shards)} shard(s) in {self.folder})",
                f"  loaded   {len(self.loaded)} tensors",
                f"  fresh    {', '.join(self.fresh)}",
                f"  left out {len(self.left_out)} tensors: {', '.join(left_groups)}",
            ]
        )


# ---------------------------------------------------------------------------------------------------
# Finding and reading the shards
# ---------------------------------------------------------------------------------------------------


def _has_weights(folder: Path) -> bool:
    return folder.is_dir() and any(folder.glob("*.safetensors"))


def _looks_like_hub_id(source: str) -> bool:
    return re.fullmatch(r"[\w.-]+/[\w.-]+", source) is not None


def resolve_checkpoint_folder(source: str | Path, subfolder: str | None = None) -> Path:
    """The local folder holding the DiT's safetensors shards.

    A local folder is used as is (with ``subfolder``, or its ``transformer/`` subfolder when the folder
    itself holds no shards, as in a diffusers pipeline folder). A hub id is downloaded with
    ``huggingface_hub.snapshot_download``: first the JSON files only, then exactly the shards its index
    lists, so a pipeline repository's text encoder and VAE are never fetched.
    """
    path = Path(source)
    if path.exists():
        if path.is_file():
            raise ValueError(f"{path} is a file: give the folder holding the safetensors shards")
        folder = path / subfolder if subfolder else path
        if subfolder is None and not _has_weights(folder) and _has_weights(path / "transformer"):
            folder = path / "transformer"
        if not _has_weights(folder):
            raise FileNotFoundError(f"no *.safetensors in {folder}: is this a Wan2.1 DiT checkpoint folder?")
        return folder
    if not _looks_like_hub_id(str(source)):
        raise FileNotFoundError(
            f"checkpoint not found: {source} is neither a local folder nor a hub id (org/name)"
        )
    root = Path(snapshot_download(str(source), allow_patterns=["*.json", "*/*.json"]))
    if subfolder is None and (root / "transformer").is_dir():
        subfolder = "transformer"
    folder = root / subfolder if subfolder else root
    indexes = sorted(folder.glob(f"*{INDEX_SUFFIX}"))
    prefix = f"{subfolder}/" if subfolder else ""
    if indexes:
        files = sorted(set(json.loads(indexes[0].read_text())["weight_map"].values()))
        patterns = [prefix + name for name in files]
    else:
        patterns = [prefix + "*.safetensors"]
    snapshot_download(str(source), allow_patterns=patterns)
    if not _has_weights(folder):
        raise FileNotFoundError(f"hub repository {source} has no *.safetensors under {prefix or 'its root'}")
    return folder


def list_shards(folder: Path) -> list[Path]:
    """Shard files in reading order: those named by the ``*.safetensors.index.json``, else every file."""
    indexes = sorted(folder.glob(f"*{INDEX_SUFFIX}"))
    if len(indexes) > 1:
        raise ValueError(
            f"{folder} holds several shard indexes {[p.name for p in indexes]}: give the subfolder"
        )
    if indexes:
        weight_map = json.loads(indexes[0].read_text()).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{indexes[0]}: no 'weight_map' in the shard index")
        shards = [folder / name for name in sorted(set(weight_map.values()))]
        missing = [p.name for p in shards if not p.exists()]
        if missing:
            raise FileNotFoundError(f"{indexes[0]} lists shards that are missing: {missing}")
        return shards
    return sorted(folder.glob("*.safetensors"))


def iter_checkpoint_tensors(shards: list[Path]) -> Iterator[tuple[Path, str, torch.Tensor]]:
    """(shard, name, tensor), one tensor at a time; one shard open at a time (prefix ``model.diffusion_model.`` stripped)."""
    for shard in shards:
        with safe_open(str(shard), framework="pt", device="cpu") as handle:
            for name in sorted(handle.keys()):
                tensor = handle.get_tensor(name)
                yield shard, name.removeprefix(_ORIGINAL_PREFIX), tensor
                del tensor


def read_names(shards: list[Path]) -> dict[str, Path]:
    """Every tensor name (prefix ``model.diffusion_model.`` stripped) and its shard, from the headers only."""
    names: dict[str, Path] = {}
    for shard in shards:
        with safe_open(str(shard), framework="pt", device="cpu") as handle:
            for name in handle.keys():
                names[name.removeprefix(_ORIGINAL_PREFIX)] = shard
    return names


def detect_layout(names: dict[str, Path] | set[str]) -> str:
    """``diffusers`` or ``original``, from the tensor names."""
    if any(n.startswith("condition_embedder.") or ".attn1." in n for n in names):
        return "diffusers"
    if any(n.startswith("time_embedding.") or ".self_attn." in n for n in names):
        return "original"
    raise ValueError("not a Wan2.1 DiT checkpoint (no diffusers or original Wan tensor names)")


def map_name(name: str, layout: str) -> str | None:
    """Our parameter name for a checkpoint tensor name, None when it is left out; ValueError if unknown."""
    rules, left_out = _LAYOUTS[layout]
    for pattern, template in rules:
        if re.fullmatch(pattern, name):
            return re.sub(f"^{pattern}$", template, name)
    if any(re.fullmatch(pattern, name) for pattern in left_out):
        return None
    raise ValueError(f"unexpected tensor {name!r} in a {layout}-layout Wan checkpoint: not a Wan2.1 T2V DiT?")


# ---------------------------------------------------------------------------------------------------
# Writing into the model
# ---------------------------------------------------------------------------------------------------


def _patch_embedding_weight(wan_weight: torch.Tensor, target_shape: torch.Size) -> torch.Tensor:
    """(D, C, *patch) Wan weight -> (D, 2C, *patch): noisy branch gets Wan's, control branch zeros."""
    channels = wan_weight.shape[1]
    expected = (target_shape[0], target_shape[1] // 2, *target_shape[2:])
    if tuple(wan_weight.shape) != expected:
        raise ValueError(f"patch_embedding.weight: checkpoint {tuple(wan_weight.shape)}, expected {expected}")
    weight = wan_weight.new_zeros(target_shape)
    weight[:, :channels] = wan_weight
    return weight


def _set_tensor(
    model: nn.Module, name: str, tensor: torch.Tensor, device: torch.device | None, where: str = ""
) -> None:
    """Copy ``tensor`` into parameter ``name``; on a meta model, assign a new parameter instead."""
    # imported, not reached as torch.distributed.tensor: that attribute exists only once something imported it
    from torch.distributed.tensor import DTensor, distribute_tensor

    module_name, _, attr = name.rpartition(".")
    module = model.get_submodule(module_name)
    param = getattr(module, attr)
    if tuple(tensor.shape) != tuple(param.shape):
        raise ValueError(
            f"{name}: checkpoint shape {tuple(tensor.shape)} != model shape {tuple(param.shape)} ({where}): "
            "does the model config match the checkpoint's dimensions?"
        )
    with torch.no_grad():
        if param.is_meta:
            value = tensor.to(device=device or "cpu", dtype=param.dtype, copy=True)
            setattr(module, attr, nn.Parameter(value, requires_grad=param.requires_grad))
        elif isinstance(param.data, DTensor):
            full = tensor.to(device=param.device, dtype=param.dtype)
            # Every rank reads the checkpoint itself: no broadcast, each keeps its own shard.
            param.copy_(distribute_tensor(full, param.device_mesh, param.placements, src_data_rank=None))
        else:
            param.copy_(tensor)


def fresh_context_adapter(config: MiVEConfig, seed: int) -> dict[str, torch.Tensor]:
    """The context adapter's initial tensors (float32, CPU, whole), a function of the config and ``seed`` only."""
    with torch.device("meta"):  # no draw from torch's global generator
        adapter = ContextAdapter(config.vlm_dim, config.dim, config.eps)
    adapter = adapter.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(seed)
    init_context_adapter(adapter, config, generator)
    return {name: tensor.detach() for name, tensor in adapter.state_dict().items()}


def load_wan_weights(
    model: MiVETransformer,
    source: str | Path,
    *,
    subfolder: str | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
) -> WanLoadReport:
    """Fill ``model`` from a Wan2.1 DiT checkpoint (hub id or folder, either layout); return a report.

    ``model`` may be materialised (tensors are copied in, also into FSDP2-sharded parameters) or on the
    meta device (tensors are assigned, on ``device``, default CPU, in the model's dtype). Parameters not
    in Wan (the context adapter) are initialised per ``model.config.adapter_init``, drawn whole from a
    generator seeded by ``seed`` (:func:`fresh_context_adapter`), whatever the sharding. Raises ValueError when
    a tensor's shape does not match or when a parameter that Wan should provide is missing.
    """
    folder = resolve_checkpoint_folder(source, subfolder)
    shards = list_shards(folder)
    names = read_names(shards)
    try:
        layout = detect_layout(names)
    except ValueError as err:
        raise ValueError(f"{folder}: {err}") from err
    device = torch.device(device) if device is not None else None
    report = WanLoadReport(
        source=str(source), folder=str(folder), layout=layout, shards=[p.name for p in shards]
    )

    # 1. Plan from the shard headers: every name is mapped and checked before any tensor is read.
    params = dict(model.named_parameters())
    num_layers = len(model.blocks)
    plan: dict[str, str | None] = {}
    for name, shard in names.items():
        target = map_name(name, layout)
        if target is not None and target not in params:
            block = re.match(r"blocks\.(\d+)\.", target)
            if block and int(block.group(1)) >= num_layers:
                raise ValueError(
                    f"{shard}: {name} is block {block.group(1)}, the model has {num_layers} blocks"
                )
            raise ValueError(f"{shard}: {name} maps to {target}, which the model does not have")
        plan[name] = target
    adapter = sorted(n for n in params if n.startswith("context_adapter."))
    missing = sorted(set(params) - set(plan.values()) - set(adapter))
    if missing:
        raise ValueError(
            f"{folder}: the checkpoint lacks {len(missing)} tensor(s) the model needs, e.g. {missing[:5]}"
        )

    # 2. Read, one tensor at a time, shard by shard.
    for shard, name, tensor in iter_checkpoint_tensors(shards):
        target = plan[name]
        if target is None:
            report.left_out.append(name)
            continue
        if target == "patch_embedding.weight":
            tensor = _patch_embedding_weight(tensor, params[target].shape)
        _set_tensor(model, target, tensor, device, where=f"{name} in {shard}")
        report.loaded.append(target)
        del tensor

    # Fresh parts: the control branch of the patch embedding (zeroed above) and the context adapter, drawn
    # whole on the CPU from a generator seeded by ``seed`` and copied in like Wan's tensors (each rank keeps
    # its shard): the same values whatever the mesh, so 1 and N processes train the same model.
    for name, tensor in fresh_context_adapter(model.config, seed).items():
        _set_tensor(model, f"context_adapter.{name}", tensor, device, where="fresh context adapter")
    channels = model.config.latent_channels
    report.fresh = [f"patch_embedding.weight[:, {channels}:] (zeros)"] + [
        f"{n} ({model.config.adapter_init})" for n in adapter
    ]
    return report
