"""DCP checkpoints: model, optimizer, LR schedule, step, RNG states and the data cursor, every N steps.

Layout of ``runs/<name>/checkpoints/``::

    step-00000500/          a complete checkpoint (torch.distributed.checkpoint: .metadata + one file per rank)
    step-00001000/
    .step-00001500.partial/ being written; renamed to step-00001500/ by rank 0 once every rank has finished

Only complete folders are ever resumed from, and the last ``keep_last`` are kept. The model and optimizer
states come from ``get_state_dict`` (sharded DTensors under FSDP2: every rank writes its own shards, and a
checkpoint can be resumed on another number of ranks). What a checkpoint holds:

- ``model``, ``optim``: the FSDP2 model and AdamW states (``torch.distributed.checkpoint.state_dict``);
- ``train``: ``step``, the LR schedule's state and the data cursor (``epoch``, ``position``, ...), plain data;
- ``rng.rank<N>``: each rank's torch CPU (and CUDA) generator, numpy's and python's ``random`` state, as tensors;
- ``ema``: with ``train.ema_decay`` > 0, the EMA of the weights by parameter name (``trainer.ema``), sharded.

With ``async_save`` the state is staged in host memory and written by a background thread
(``torch.distributed.checkpoint.async_save`` over a gloo group of its own) while training goes on; the
``.partial`` folder is renamed only once the write has finished, so a kill during the write leaves a
partial folder that resume never picks (the next save removes it).

Checkpoints are data, never code: reading one goes through :class:`DataOnlyReader`, whose metadata
unpickler only accepts the checkpoint-format classes of ``torch.distributed.checkpoint`` and plain values,
and :class:`DataOnlyLoadPlanner`, which reads non-tensor entries with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import io
import logging
import pickle
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta
from torch.distributed.checkpoint.planner import ReadItem
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

logger = logging.getLogger(__name__)

STEP_DIR = re.compile(r"^step-(\d{8})$")
EMA_KEY = "ema"  # the checkpoint entry of the weights' EMA: ema.<parameter name> (trainer.ema)


@dataclass
class CheckpointConfig:
    """The ``[train.checkpoint]`` recipe table."""

    every_steps: int = 500
    """Save after every this many optimizer steps (and after the last step); 0 saves only at the end."""
    keep_last: int = 3
    """Keep the newest this many complete checkpoints, delete older ones (0 keeps all)."""
    folder: str = "checkpoints"
    """Folder for checkpoints, relative to the run folder (must be on a filesystem every node sees)."""
    async_save: bool = False
    """Write checkpoints in the background (``torch.distributed.checkpoint.async_save``): the step waits only
    while the state is copied to host memory (one host copy of this rank's model, optimizer and EMA shards),
    then training goes on while a thread writes it; the folder is renamed to ``step-N`` once written."""


# ---------------------------------------------------------------------------------------------------
# Reading checkpoints without running code from them
# ---------------------------------------------------------------------------------------------------

_ALLOWED_GLOBALS = {
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "slice"),
    ("collections", "OrderedDict"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("pathlib", "PosixPath"),
    ("pathlib", "PurePosixPath"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch.storage", "_load_from_bytes"),
}
_ALLOWED_MODULE_PREFIXES = ("torch.distributed.checkpoint.",)


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if (module, name) in _ALLOWED_GLOBALS or module.startswith(_ALLOWED_MODULE_PREFIXES):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"checkpoint metadata refers to {module}.{name}: not checkpoint data, refusing"
        )


class DataOnlyReader(FileSystemReader):
    """``FileSystemReader`` whose ``.metadata`` unpickling accepts only checkpoint-format classes."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        rank = kwargs.get("rank")
        path = self._get_metadata_path(rank)
        with self.fs.create_stream(path, "rb") as handle:
            metadata = _MetadataUnpickler(handle).load()
        if not isinstance(metadata, Metadata):
            raise ValueError(f"{path} is not checkpoint metadata")
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class DataOnlyLoadPlanner(DefaultLoadPlanner):
    """Reads the non-tensor entries (step, schedule, cursor, optimizer hyper-parameters) as plain data."""

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        loaded = torch.load(value, weights_only=True)
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], loaded)
        else:
            self.state_dict[read_item.dest_index.fqn] = loaded


# ---------------------------------------------------------------------------------------------------
# RNG states as tensors
# ---------------------------------------------------------------------------------------------------


def rng_state() -> dict[str, torch.Tensor]:
    """This process's generator states (torch CPU, CUDA if present, numpy, python) as tensors."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "numpy_rest": torch.tensor([pos, has_gauss], dtype=torch.int64),
        "numpy_gauss": torch.tensor([gauss], dtype=torch.float64),
        "python": torch.tensor([version, *py_state], dtype=torch.int64),
        "python_gauss": torch.tensor([float("nan") if py_gauss is None else py_gauss], dtype=torch.float64),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    pos, has_gauss = state["numpy_rest"].tolist()
    np.random.set_state(
        (
            "MT19937",
            state["numpy_keys"].numpy().astype(np.uint32),
            pos,
            has_gauss,
            float(state["numpy_gauss"][0]),
        )
    )
    version, *py_state = state["python"].tolist()
    gauss = float(state["python_gauss"][0])
    random.setstate((version, tuple(py_state), None if gauss != gauss else gauss))


# ---------------------------------------------------------------------------------------------------
# The checkpointer
# ---------------------------------------------------------------------------------------------------


def complete_checkpoints(folder: Path) -> list[Path]:
    """The complete checkpoints (``step-XXXXXXXX/`` holding DCP's ``.metadata``) in ``folder``, oldest first;
    partial saves (``.step-*.partial``) are never listed."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and STEP_DIR.match(p.name)]
    return sorted((p for p in found if (p / ".metadata").exists()), key=lambda p: p.name)


class Checkpointer:
    """Saves and restores the training state with DCP in ``run_dir / config.folder``."""

    def __init__(self, config: CheckpointConfig, run_dir: Path, rank: int) -> None:
        self.config = config
        self.folder = Path(run_dir) / config.folder
        self.rank = rank
        self._group = None  # the gloo group of background saves
        self._pending = None  # (future, final folder) of the save being written

    def complete(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        return complete_checkpoints(self.folder)

    def latest(self) -> Path | None:
        done = self.complete()
        return done[-1] if done else None

    def should_save(self, step: int, last_step: int) -> bool:
        every = self.config.every_steps
        return step == last_step or (every > 0 and step % every == 0)

    def _state(self, model, optimizer, scheduler, train: dict[str, Any], ema=None) -> dict[str, Any]:
        model_state, optim_state = get_state_dict(model, optimizer)
        extra = {} if ema is None else {EMA_KEY: ema.state_dict()}
        return {
            "model": model_state,
            "optim": optim_state,
            **extra,
            "train": {
                **train,
                "scheduler": {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"},
            },
            f"rng.rank{self.rank}": rng_state(),
        }

    def save(self, step: int, model, optimizer, scheduler, train: dict[str, Any], ema=None) -> Path:
        """Write the state at ``step`` (a collective: every rank calls it); returns the final folder.

        With ``async_save`` this returns once the state is staged in host memory; the folder becomes
        ``step-N`` when :meth:`commit` finds the write finished (or :meth:`wait` waits for it). A previous
        save still being written is waited for first: at most one save is in flight.
        """
        self.wait()
        final = self.folder / f"step-{step:08d}"
        partial = self.folder / f".{final.name}.partial"
        if self.rank == 0:
            self.folder.mkdir(parents=True, exist_ok=True)
            for stale in self.folder.glob(".step-*.partial"):
                shutil.rmtree(stale)  # a save that was killed half-way
        dist.barrier()
        state = self._state(model, optimizer, scheduler, {**train, "step": step}, ema)
        if self.config.async_save:
            if self._group is None:  # a CPU (gloo) group of its own: the writer thread's collectives never
                self._group = dist.new_group(backend="gloo")  # meet the training's NCCL ones
            self._pending = (
                dcp.async_save(state, checkpoint_id=str(partial), process_group=self._group),
                final,
            )
            return final
        dcp.save(state, checkpoint_id=str(partial))
        dist.barrier()
        self._rename(partial, final)
        dist.barrier()
        return final

    def _rename(self, partial: Path, final: Path) -> None:
        if self.rank == 0:
            if final.exists():
                shutil.rmtree(final)
            partial.rename(final)
            keep = self.config.keep_last
            if keep > 0:
                for old in self.complete()[:-keep]:
                    shutil.rmtree(old)

    def commit(self) -> None:
        """If the background save has finished, make it a complete checkpoint (no collective: rank 0's save
        finishes after DCP has gathered every rank's write results and written ``.metadata``)."""
        if self._pending is not None and self._pending[0].done():
            self.wait()

    def wait(self) -> None:
        """Wait for the background save, if any, and make it a complete checkpoint."""
        if self._pending is None:
            return
        future, final = self._pending
        self._pending = None
        future.result()  # raises the writer's error, if any
        self._rename(self.folder / f".{final.name}.partial", final)

    def load(self, path: Path, model, optimizer, scheduler, ema=None) -> dict[str, Any]:
        """Restore model, optimizer, schedule, the EMA (when asked and saved) and this rank's RNG from
        ``path``; returns the ``train`` entry (``step``, ``data`` cursor, ...; ``ema_restored``)."""
        reader = DataOnlyReader(str(path))
        saved_keys = reader.read_metadata().state_dict_metadata.keys()
        has_ema = any(k.startswith(EMA_KEY + ".") for k in saved_keys)
        template = self._state(model, optimizer, scheduler, {"step": 0, "data": {}}, ema if has_ema else None)
        rng_key = f"rng.rank{self.rank}"
        if not any(k.startswith(rng_key + ".") for k in saved_keys):
            logger.warning(
                "%s holds no RNG state for rank %d (saved on fewer ranks): RNG starts fresh", path, self.rank
            )
            template.pop(rng_key)
        saved_cursor = sorted(
            k.removeprefix("train.data.") for k in saved_keys if k.startswith("train.data.")
        )
        template["train"]["data"] = {k: 0 for k in saved_cursor}
        dcp.load(template, storage_reader=reader, planner=DataOnlyLoadPlanner())
        set_state_dict(
            model, optimizer, model_state_dict=template["model"], optim_state_dict=template["optim"]
        )
        scheduler_state = dict(template["train"]["scheduler"])
        scheduler.load_state_dict({**scheduler.state_dict(), **scheduler_state})
        if rng_key in template:
            set_rng_state(template[rng_key])
        return {**template["train"], "ema_restored": has_ema and ema is not None}
