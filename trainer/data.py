"""The shard loader: stream a shard set (``index.json`` + WebDataset tars) into training batches.

What it guarantees, and how:

- **An epoch plan that is a pure function** of ``(index.json, seed, epoch, global batch)``. Per bucket
  (one latent shape), the samples are permuted with ``numpy.random.default_rng([seed, epoch])`` and cut
  into *global* batches of ``world_size * batch_size`` samples; the global batches of all buckets are then
  shuffled together. Every batch therefore holds one latent shape. A bucket whose size is not a multiple
  of the global batch is padded by repeating samples of that bucket from the start of its permutation (the
  count is logged once per run), so every sample is seen at least once per epoch and exactly once when the
  bucket sizes are multiples of the global batch.
- **Rank split by sample**: rank ``r`` takes ``global_batch[r * batch_size:(r + 1) * batch_size]`` of every
  global batch, so all ranks run the same number of steps (FSDP needs lockstep) and the samples of one
  optimizer step do not depend on how they are spread over ranks (a 2-GPU run at batch 1 sees the same
  samples per step as a 1-GPU run at batch 2). "Rank" and "world size" here are the *data-parallel* ones:
  under sequence parallelism the trainer passes the replica index and count, so every rank of an SP group
  reads the same samples (and the global batch does not grow with the SP degree).
- **Loader-worker split by batch**: worker ``w`` of ``W`` reads the rank's batches ``w, w + W, ...``;
  torch's ``DataLoader`` hands iterable-dataset outputs back round-robin over workers, so the order the
  trainer sees does not depend on ``num_workers``.
- **A checkpointable cursor** ``(epoch, position)``: ``position`` counts the micro-batches this rank has
  handed to the trainer in the epoch (one ``DataLoader`` serves all epochs: workers never restart). :meth:`ShardLoader.load_state_dict` restores it and the next batch is
  exactly the one an uninterrupted run would have seen; skipped batches are never read.

Samples are read by member offset: each tar is scanned once (headers only) with ``tarfile`` and its members
grouped into samples with WebDataset's own key rule (:func:`dataengine.formats.shard_format.scan_members`), then a
sample's members are read with one ranged read each and decoded by :func:`dataengine.formats.shard_format.decode_sample`.
The shard set may be a local folder or a URL (``s3://``, ``gs://``, ``hf://``, ``https://``, ``file://``:
fsspec): the same reads become ranged requests, so no tar is ever downloaded whole. Every ranged read is
checked (exactly the bytes asked for), and an ``http(s)://`` server is asked for one byte at start-up: one
that ignores ``Range`` (answers 200 with the whole file, as Python's ``http.server`` does) stops the run at
once with an error naming it, instead of a sample decoded from the wrong bytes.
At 720P a sample is tens of MB (three latents of 16 x 21 x 90 x 160 plus the VLM states), so a true
per-epoch permutation costs one seek per sample, not a shuffle buffer, and resuming skips without reading.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from dataengine.formats.recipe import MissingInput, UserError
from dataengine.formats.shard_format import (
    INDEX_NAME,
    LATENT_KEYS,
    META_MEMBER,
    TENSORS_MEMBER,
    check_range_requests,
    decode_sample,
    join,
    read_index,
    read_members,
    scan_members,
    shard_set_location,
)

logger = logging.getLogger(__name__)


@dataclass
class DataConfig:
    """The ``[train.data]`` recipe table."""

    shards: str = "shards/demo"
    """Folder of the shard set (holding ``index.json``), or the ``index.json`` file itself; local or a URL
    (``s3://``, ``gs://``, ``hf://``, ``https://``, ``file://``, any fsspec URL)."""
    batch_size: int = 1
    """Samples per micro-batch on each rank (the global batch of a step is this x ranks x grad accumulation)."""
    num_workers: int = 0
    """``DataLoader`` worker processes per rank (0 reads in the training process)."""
    shuffle: bool = True
    """Permute samples and batches every epoch (seeded by the run's seed and the epoch); off keeps index order."""
    verify_checksums: bool = False
    """Hash every shard at start-up against ``index.json``'s ``sha256`` (reads the whole set once)."""
    pin_memory: bool = True
    """Pin host batches for faster copies to the GPU (ignored without CUDA)."""


@dataclass(frozen=True)
class SampleRef:
    """Where one sample lives: the shard's position in ``index.json``'s ``shards`` and the sample's in the tar."""

    shard: int
    position: int


@dataclass(frozen=True)
class ShardEntry:
    path: str
    """The tar, in the shard set's filesystem (a local path, or a URL's path)."""
    bucket: str
    num_samples: int
    bytes: int
    """Its size in ``index.json``."""


class ShardCatalogue:
    """The shard set as described by ``index.json``; local tars are checked against it at once, remote ones
    (a URL) when a process first reads them (a HEAD per tar at start-up would cost minutes on 50K tars)."""

    def __init__(self, shards: str | Path, verify_checksums: bool = False) -> None:
        self.location = str(shards)
        self.fs, self.root = shard_set_location(shards)
        self.local = "file" in self.fs.protocol
        self.index_path = join(self.root, INDEX_NAME)
        self.index = read_index(shards)
        self.shards: list[ShardEntry] = []
        for row, entry in enumerate(self.index.get("shards", [])):
            path = join(self.root, entry["path"])
            where = f"shard {entry['path']} (entry {row} of {self.index_path})"
            if self.local:
                if not self.fs.exists(path):
                    raise MissingInput(f"{where} is missing: the shard set is incomplete; rebuild it")
                size = self.fs.size(path)
                if "bytes" in entry and size != entry["bytes"]:
                    raise UserError(
                        f"{where} has {size} bytes, the index says {entry['bytes']}: rebuild the shard set"
                    )
            if verify_checksums and entry.get("sha256"):
                from dataengine.steps.shard_set import (
                    sha256_file,  # imports pandas: only when checksums are asked for
                )

                if sha256_file(path, fs=self.fs) != entry["sha256"]:
                    raise UserError(
                        f"{where}: sha256 does not match the index: the file changed or is corrupt"
                    )
            self.shards.append(
                ShardEntry(
                    path=path,
                    bucket=entry["bucket"],
                    num_samples=int(entry["num_samples"]),
                    bytes=int(entry.get("bytes", -1)),
                )
            )
        if not self.shards:
            raise UserError(f"{self.index_path} lists no shards: nothing to train on")
        if not self.local:  # a server that ignores Range stops here, at start-up, naming itself
            check_range_requests(self.fs, self.shards[0].path)
        self.buckets: dict[str, list[SampleRef]] = {}
        for shard_id, shard in enumerate(self.shards):
            refs = self.buckets.setdefault(shard.bucket, [])
            refs.extend(SampleRef(shard_id, position) for position in range(shard.num_samples))
        self.num_samples = sum(len(refs) for refs in self.buckets.values())
        declared = self.index.get("num_samples")
        if declared is not None and declared != self.num_samples:
            raise ValueError(
                f"{self.index_path}: num_samples is {declared} but its shards hold {self.num_samples}"
            )

    def latent_shape(self, bucket: str) -> tuple[int, int, int]:
        """The (T', H', W') of a bucket (from the index's ``buckets`` table)."""
        return tuple(self.index["buckets"][bucket]["latent_shape"])  # type: ignore[return-value]


def epoch_batches(
    catalogue: ShardCatalogue, seed: int, epoch: int, global_batch: int, shuffle: bool = True
) -> list[list[SampleRef]]:
    """The epoch's global batches (each ``global_batch`` samples of one bucket), in training order.

    Short buckets are padded by repeating their own samples (wrapping around the bucket's permutation).
    """
    if global_batch < 1:
        raise ValueError(f"global batch must be >= 1, got {global_batch}")
    rng = np.random.default_rng([seed, epoch])
    batches: list[list[SampleRef]] = []
    for bucket in sorted(catalogue.buckets):
        refs = catalogue.buckets[bucket]
        order = rng.permutation(len(refs)) if shuffle else np.arange(len(refs))
        padded = -(-len(refs) // global_batch) * global_batch
        order = np.resize(order, padded)  # wraps around: repeats the bucket's first samples
        batches.extend([refs[j] for j in order[i : i + global_batch]] for i in range(0, padded, global_batch))
    if shuffle:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def padding_report(catalogue: ShardCatalogue, global_batch: int) -> dict[str, int]:
    """Per bucket, how many samples are repeated each epoch to fill its last global batch."""
    return {
        bucket: (-len(refs)) % global_batch
        for bucket, refs in catalogue.buckets.items()
        if len(refs) % global_batch
    }


class ShardReader:
    """Reads samples by (shard, position), scanning each tar's headers once (lazily, per process).

    It opens the shard set's filesystem itself: a ``DataLoader`` worker gets its own (an HTTP or S3 client
    does not survive a fork).
    """

    def __init__(self, catalogue: ShardCatalogue) -> None:
        self.catalogue = catalogue
        self.fs = shard_set_location(catalogue.location)[0]
        self._members: dict[int, list[tuple[str, dict[str, tuple[int, int]]]]] = {}

    def _scan(self, shard_id: int) -> list[tuple[str, dict[str, tuple[int, int]]]]:
        shard = self.catalogue.shards[shard_id]
        size = shard.bytes
        if not self.catalogue.local:  # checked here, once per process, instead of at start-up
            try:
                found = self.fs.size(shard.path)
            except FileNotFoundError:
                raise MissingInput(
                    f"shard {shard.path} (listed in {self.catalogue.index_path}) is missing"
                ) from None
            if size >= 0 and found != size:
                raise UserError(
                    f"shard {shard.path} has {found} bytes, {self.catalogue.index_path} says {size}"
                )
        if size < 0:
            size = self.fs.size(shard.path)
        samples = scan_members(self.fs, shard.path, size)
        if len(samples) != shard.num_samples:
            raise UserError(
                f"shard {shard.path} holds {len(samples)} samples, {self.catalogue.index_path} says {shard.num_samples}"
            )
        return samples

    def read(self, ref: SampleRef) -> tuple[str, dict[str, torch.Tensor], dict[str, Any]]:
        if ref.shard not in self._members:
            self._members[ref.shard] = self._scan(ref.shard)
        shard = self.catalogue.shards[ref.shard]
        key, members = self._members[ref.shard][ref.position]
        try:
            raw: dict[str, Any] = {
                "__key__": key,
                **read_members(self.fs, shard.path, members, (TENSORS_MEMBER, META_MEMBER)),
            }
            return decode_sample(raw)
        except Exception as err:
            raise ValueError(f"sample {key} (position {ref.position} of shard {shard.path}): {err}") from err


def collate(
    samples: list[tuple[str, dict[str, torch.Tensor], dict[str, Any]]], where: str = ""
) -> dict[str, Any]:
    """Stack one bucket's samples; pad the VLM tokens to the batch's longest sequence.

    Returns ``source_latents``, ``target_latents`` (B, 16, T', H', W'), ``reference_latents`` (B, 16, 1, H', W'),
    ``vlm_first``, ``vlm_last`` (B, S_max, D_vlm), ``vlm_mask`` (B, S_max) bool (True = real token),
    ``vlm_token_types`` (B, S_max) uint8 (padding 0), ``vlm_lengths`` (the real VLM tokens of each sample, a
    list of ints), ``keys`` and ``metas``.
    """
    keys = [key for key, _, _ in samples]
    shapes = {key: tuple(t["target_latents"].shape) for key, t, _ in samples}
    if len(set(shapes.values())) != 1:
        raise ValueError(
            f"batch {where} mixes latent shapes {shapes}: the shard set's buckets are inconsistent"
        )
    for key, tensors, _ in samples:
        if tensors["source_latents"].shape != tensors["target_latents"].shape:
            raise ValueError(
                f"sample {key}: source {tuple(tensors['source_latents'].shape)} != target {shapes[key]}"
            )
    dims = {key: tensors["vlm_first"].shape[-1] for key, tensors, _ in samples}
    if len(set(dims.values())) != 1:
        raise ValueError(f"batch {where} mixes VLM widths {dims}")
    batch: dict[str, Any] = {k: torch.stack([t[k] for _, t, _ in samples]) for k in LATENT_KEYS}
    lengths = [t["vlm_first"].shape[0] for _, t, _ in samples]
    max_len, dim = max(lengths), next(iter(dims.values()))
    num = len(samples)
    first = torch.zeros(num, max_len, dim, dtype=samples[0][1]["vlm_first"].dtype)
    last = torch.zeros_like(first)
    mask = torch.zeros(num, max_len, dtype=torch.bool)
    types = torch.zeros(num, max_len, dtype=torch.uint8)
    for i, (_, tensors, _) in enumerate(samples):
        length = lengths[i]
        first[i, :length] = tensors["vlm_first"]
        last[i, :length] = tensors["vlm_last"]
        types[i, :length] = tensors["vlm_token_types"]
        mask[i, :length] = True
    batch.update(vlm_first=first, vlm_last=last, vlm_mask=mask, vlm_token_types=types)
    batch["vlm_lengths"] = lengths  # the real tokens per sample, known on the host (no device read)
    batch["keys"] = keys
    batch["metas"] = [meta for _, _, meta in samples]
    return batch


def batch_digest(keys: list[str]) -> int:
    """A 63-bit digest of a micro-batch's sample keys, in order: what the ranks of a sequence-parallel group
    compare to check that they hold the same samples (``trainer.parallel.check_same_samples``)."""
    import hashlib

    digest = hashlib.sha256("\n".join(keys).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class ShardBatches(IterableDataset):
    """One rank's micro-batches, from (``epoch``, ``start``) on, split over the loader's workers."""

    def __init__(
        self, catalogue: ShardCatalogue, config: DataConfig, seed: int, rank: int, world_size: int
    ) -> None:
        super().__init__()
        self.catalogue, self.config, self.seed = catalogue, config, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.start = 0, 0
        self._reader: ShardReader | None = None

    def rank_batches(self, epoch: int) -> list[list[SampleRef]]:
        """This rank's slice of every global batch of ``epoch``."""
        size = self.config.batch_size
        lo = self.rank * size
        global_batch = size * self.world_size
        return [
            b[lo : lo + size]
            for b in epoch_batches(self.catalogue, self.seed, epoch, global_batch, self.config.shuffle)
        ]

    def __iter__(self):
        """Endless: epoch ``self.epoch`` from batch ``self.start`` on, then the following epochs from 0.

        Worker ``w`` of ``W`` yields the batches ``w, w + W, ...`` of that one concatenated stream, so the
        ``DataLoader`` (round-robin over workers) returns it in order and never restarts between epochs.
        """
        worker = get_worker_info()
        worker_id, num_workers = (worker.id, worker.num_workers) if worker else (0, 1)
        if self._reader is None:
            self._reader = ShardReader(self.catalogue)
        epoch, position, counter = self.epoch, self.start, 0
        while True:
            plan = self.rank_batches(epoch)
            for index in range(position, len(plan)):
                if counter % num_workers == worker_id:
                    samples = [self._reader.read(ref) for ref in plan[index]]
                    yield collate(samples, where=f"{index} of epoch {epoch}")
                counter += 1
            epoch, position = epoch + 1, 0


class ShardLoader:
    """Endless iterator of one data-parallel rank's micro-batches, epoch after epoch, with a checkpointable cursor.

    ``rank`` and ``world_size`` are the data-parallel rank and replica count (the process rank and count
    without sequence parallelism); the state's ``world_size`` records the latter.

    ``state_dict()`` / ``load_state_dict()`` hold ``epoch`` and ``position`` (micro-batches handed out in the
    epoch). Load the state before the first ``next()``. ``close()`` (or ``with``) stops its DataLoader workers.
    """

    def __init__(self, config: DataConfig, seed: int, rank: int = 0, world_size: int = 1) -> None:
        if config.batch_size < 1:
            raise ValueError(f"train.data.batch_size must be >= 1, got {config.batch_size}")
        self.config, self.seed, self.rank, self.world_size = config, seed, rank, world_size
        self.catalogue = ShardCatalogue(config.shards, config.verify_checksums)
        self.dataset = ShardBatches(self.catalogue, config, seed, rank, world_size)
        self.epoch, self.position = 0, 0
        self.global_batch = config.batch_size * world_size
        padding = padding_report(self.catalogue, self.global_batch)
        if padding and rank == 0:
            logger.warning(
                "buckets not a multiple of the global batch (%d): samples repeated per epoch to fill them: %s",
                self.global_batch,
                padding,
            )
        self._iterator = None

    def hold_out(self, refs: list[SampleRef]) -> None:
        """Never train on ``refs`` (validation samples taken out of this shard set); before the first ``next()``."""
        if self._iterator is not None:
            raise RuntimeError("ShardLoader.hold_out must be called before iterating")
        removed = set(refs)
        for bucket in list(self.catalogue.buckets):
            kept = [ref for ref in self.catalogue.buckets[bucket] if ref not in removed]
            if kept:
                self.catalogue.buckets[bucket] = kept
            else:
                del self.catalogue.buckets[bucket]
        self.catalogue.num_samples = sum(len(r) for r in self.catalogue.buckets.values())
        if not self.catalogue.buckets:
            raise ValueError(
                "train.validation.samples hold out every training sample: nothing left to train on"
            )

    @property
    def steps_per_epoch(self) -> int:
        """Micro-batches per rank per epoch."""
        return sum(-(-len(refs) // self.global_batch) for refs in self.catalogue.buckets.values())

    def state_dict(self) -> dict[str, int]:
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "world_size": self.world_size,
            "batch_size": self.config.batch_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self._iterator is not None:
            raise RuntimeError("ShardLoader.load_state_dict must be called before iterating")
        epoch, position = int(state["epoch"]), int(state["position"])
        saved_global = int(state.get("world_size", self.world_size)) * int(
            state.get("batch_size", self.config.batch_size)
        )
        if saved_global != self.global_batch or int(state.get("seed", self.seed)) != self.seed:
            # The plan changes with the global batch or the seed: the exact sample sequence cannot be kept.
            # Resume at the same fraction of the epoch instead.
            old_steps = sum(-(-len(r) // saved_global) for r in self.catalogue.buckets.values())
            position = round(position / max(old_steps, 1) * self.steps_per_epoch)
            logger.warning(
                "data cursor saved with global batch %d / seed %s, now %d / %d: resuming at epoch %d position %d "
                "(same fraction of the epoch, not the exact sample sequence)",
                saved_global,
                state.get("seed"),
                self.global_batch,
                self.seed,
                epoch,
                position,
            )
        self.epoch, self.position = epoch, position

    def _batches(self):
        self.dataset.epoch, self.dataset.start = self.epoch, self.position
        loader = DataLoader(
            self.dataset,
            batch_size=None,
            num_workers=self.config.num_workers,
            pin_memory=self.config.pin_memory and torch.cuda.is_available(),
        )
        steps_per_epoch = self.steps_per_epoch
        for batch in loader:
            self.position += 1
            if self.position == steps_per_epoch:
                self.epoch, self.position = self.epoch + 1, 0
            yield batch

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, Any]:
        if self._iterator is None:
            self._iterator = self._batches()
        return next(self._iterator)

    def close(self) -> None:
        """Stop the DataLoader's worker processes now. A loader left to the garbage collector is shut down whenever
        a collection finds it, and if other workers were forked since, holding its queues, that shutdown waits out
        their join timeouts (10-20 s seen). ``next()`` after ``close()`` starts new workers at the cursor."""
        if self._iterator is not None:
            self._iterator.close()
            self._iterator = None

    def __enter__(self) -> ShardLoader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
