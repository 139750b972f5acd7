"""`dataengine shards`: pair manifests -> WebDataset shards of Wan VAE latents and Qwen3-VL tokens.

    dataengine shards manifests/demo.toml                      # tiny models, CPU, a few minutes
    dataengine shards manifests/openve.toml --ray-address auto  # the paper's run on a GPU cluster
    dataengine inspect shards/demo        # or a pair manifest: manifests/demo/openve.parquet
    dataengine verify shards/demo

Stages (``pipelines.stage``; Ray Data, streaming, in the plan's order); rows carry paths and small columns:

1. plan (driver): every manifest row is assigned to a shard from the manifest alone (bucket by size,
   sorted by ``pair_id``, a fixed count per shard), see ``dataengine.steps.shard_set.plan_shards``;
2. ``vae`` (actor pool, ``VaeWorker``): decodes and fits source, target and reference
   (``dataengine.media.clips.prepare_pair``; a failure is a ``decode`` rejection) and encodes them with the Wan
   VAE; passes on the latents (safetensors bytes), the fps and the frame indices;
3. ``vlm`` (actor pool, ``VlmWorker``): decodes only the frames Qwen3-VL sees and the reference
   (``dataengine.media.clips.prepare_frames``), one forward, then validates the whole sample (``validate``
   rejections) and encodes it as the shard member;
4. write (driver, ``ShardAssembler``): samples are gathered per shard; a shard is written (temporary name,
   then renamed) as soon as its last sample arrives, ``resources.writer_threads`` at a time, and recorded
   in ``.parts/``.

Resume: a rerun with the same recipe and inputs skips the recorded shards and redoes the others, so it
ends with the same ``index.json`` as an uninterrupted run (apart from ``created_unix``).
Outputs: ``shards/<run>/<bucket>/shard-NNNNNN.tar``, ``index.json`` (written last), ``rejections.parquet``.
With ``output`` a URL (object storage): the same files there, each tar uploaded as soon as it is written
(then deleted locally), ``rejections.parquet`` and ``index.json`` last; the local ``shards/<run>`` keeps
the resume state.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar

import numpy as np
import typer

from dataengine.formats.layout import INDEX_NAME
from dataengine.formats.recipe import StageResources, UserError
from dataengine.media.clips import ClipConfig
from dataengine.models.vae import WanVaeConfig
from dataengine.models.vlm import Qwen3VLEncoderConfig, select_frames
from dataengine.steps.shard_set import ShardWriterConfig
from pipelines.stage import (
    RayOptions,
    Rejected,
    Stage,
    StageRun,
    Worker,
    guard_resume,
    is_rejected,
    run_resumable,
    stage_counts,
    with_columns,
)

STAGES = ("plan", "decode", "vae", "vlm", "validate")
"""The ``stage`` values of the shard step's rejections."""


@dataclass(frozen=True)
class ShardsResources(StageResources):
    """Ray resources of the stages (the ``[shards.resources]`` recipe table; ``placement`` stages: vae, vlm)."""

    TABLE: ClassVar[str] = "shards.resources"
    STAGES: ClassVar[tuple[str, ...]] = ("vae", "vlm")

    vae_actors: int = 1
    """Number of VAE actors (each loads the VAE once)."""
    vae_gpus: float = 0.0
    """GPUs per VAE actor (0 on a CPU-only machine)."""
    vae_cpus: float = 1.0
    """CPUs per VAE actor (it decodes and resizes the pair's clips itself)."""
    vlm_actors: int = 1
    """Number of Qwen3-VL actors (each loads the model once)."""
    vlm_gpus: float = 0.0
    """GPUs per Qwen3-VL actor."""
    vlm_cpus: float = 1.0
    """CPUs per Qwen3-VL actor (it decodes the few frames the VLM sees)."""
    writer_threads: int = 2
    """Shards the driver writes at once (tar + sha256 release the GIL): the writer keeps up with many GPUs."""


@dataclass(frozen=True)
class ShardsConfig:
    """The ``[shards]`` recipe table: inputs, clip preparation, the two encoders, the writer, resources."""

    inputs: tuple[str, ...] = ()
    """Pair manifests (Parquet) to shard, e.g. ``manifests/openve/openve.parquet``."""
    output: str = ""
    """Output folder, or a URL (``s3://bucket/shards/run``, ``gs://``, ``file://``, any fsspec URL): then the
    shards are written to ``shards/<run>`` first, each tar uploaded as it completes and deleted locally,
    ``index.json`` uploaded last. Empty: ``shards/<run>``."""
    clip: ClipConfig = field(default_factory=ClipConfig)
    """Frame count, fps, buckets and resize policy."""
    vae: WanVaeConfig = field(default_factory=WanVaeConfig)
    """The Wan VAE."""
    vlm: Qwen3VLEncoderConfig = field(default_factory=Qwen3VLEncoderConfig)
    """The Qwen3-VL encoder."""
    writer: ShardWriterConfig = field(default_factory=ShardWriterConfig)
    """Shard sizes."""
    resources: ShardsResources = field(default_factory=ShardsResources)
    """Ray resources per stage."""


# -- the stages -------------------------------------------------------------------------------------------


class VaeWorker(Worker):
    """VAE stage (actor pool): decodes and fits the pair (``dataengine.media.clips``) and encodes source + target
    (one batch) and the reference with the Wan VAE, loaded once per actor. A pair that cannot be prepared is
    a ``decode`` rejection."""

    def __init__(self, clip: ClipConfig, vae: WanVaeConfig):
        self.clip, self.vae = clip, vae

    def setup(self) -> None:
        from dataengine.models.vae import WanVaeEncoder

        self.encoder = WanVaeEncoder(self.vae)

    def process(self, row: dict[str, Any]) -> dict[str, Any]:
        from dataengine.media.clips import ClipRejection, prepare_pair
        from dataengine.steps.shard_set import tensors_to_bytes

        try:
            pair = prepare_pair(
                row["source_path"],
                row["target_path"],
                row["reference_path"] or None,
                self.clip,
                expected_shape=tuple(row["latent_shape"]),
            )
        except ClipRejection as err:
            raise Rejected(err.reason, err.detail, stage="decode") from err
        both = self.encoder.encode(np.stack([pair.source, pair.target]))  # (2, 16, T', H', W')
        reference = self.encoder.encode(pair.reference[None])  # (16, 1, H', W')
        latents = {"source_latents": both[0], "target_latents": both[1], "reference_latents": reference}
        return {
            "fps": pair.fps,
            "frame_indices": pair.frame_indices.tolist(),
            "latents": tensors_to_bytes(latents),
        }


class VlmWorker(Worker):
    """VLM stage (actor pool): decodes the frames Qwen3-VL sees and the reference, runs one forward, then
    validates the whole sample and encodes it as the shard member (so the writer only moves bytes)."""

    def __init__(self, config: ShardsConfig, vlm_dim: int):
        self.config, self.vlm_dim = config, vlm_dim

    def setup(self) -> None:
        from dataengine.models.vlm import Qwen3VLEncoder

        self.encoder = Qwen3VLEncoder(self.config.vlm)

    def process(self, row: dict[str, Any]) -> dict[str, Any]:
        from dataengine.formats.shard_format import encode_tensors
        from dataengine.media.clips import ClipRejection, prepare_frames
        from dataengine.steps.shard_set import tensors_from_bytes, validate_sample

        positions = select_frames(len(row["frame_indices"]), row["fps"], self.config.vlm)
        try:
            video, reference = prepare_frames(
                row["source_path"],
                row["target_path"],
                row["reference_path"] or None,
                row["frame_indices"],
                positions,
                (row["clip_height"], row["clip_width"]),
            )
        except ClipRejection as err:
            raise Rejected(err.reason, err.detail, stage="decode") from err
        states = self.encoder.encode(
            row["instruction"], reference, video, row["fps"], frame_indices=positions.tolist()
        )
        tensors = tensors_from_bytes(row["latents"])
        tensors.update(vlm_first=states.first, vlm_last=states.last, vlm_token_types=states.token_types)
        invalid = validate_sample(tensors, tuple(int(v) for v in row["latent_shape"]), self.vlm_dim)
        if invalid is not None:
            raise Rejected(*invalid, stage="validate")
        meta = _sample_meta(row, tensors, self.config)
        return {"latents": None, "tensors": encode_tensors(tensors, row["pair_id"]), "meta": json.dumps(meta)}


def _reference_path(value: Any) -> str:
    """The manifest's ``reference_path`` as a string, "" when null (None or NaN after a pandas concat)."""
    return value if isinstance(value, str) else ""


def _vlm_dim(model_id: str) -> int:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_id)
    return int(getattr(config, "text_config", config).hidden_size)


def _sample_meta(row: dict[str, Any], tensors: dict, config: ShardsConfig) -> dict[str, Any]:
    counts = np.bincount(tensors["vlm_token_types"].numpy(), minlength=3)
    return {
        "pair_id": row["pair_id"],
        "instruction": row["instruction"],
        "category": row["category"],
        "origin": row["origin"],
        "score": row["score"],
        "reference": "manifest" if row["reference_path"] else "target_first_frame",
        "num_frames": len(row["frame_indices"]),
        "fps": row["fps"],
        "resolution": [row["clip_height"], row["clip_width"]],
        "latent_shape": [int(v) for v in row["latent_shape"]],
        "vlm_tokens": int(tensors["vlm_first"].shape[0]),
        "vlm_dim": int(tensors["vlm_first"].shape[1]),
        "vlm_token_counts": {"text": int(counts[0]), "image": int(counts[1]), "video": int(counts[2])},
        "shapes": {k: list(v.shape) for k, v in sorted(tensors.items())},
        "models": {"vae": config.vae.model_id, "vlm": config.vlm.model_id},
    }


def shard_items(plan: Any) -> list[dict[str, Any]]:
    """The rows the stages start from: ids, paths, the planned bucket and what the sample's meta needs."""
    return [
        {
            "pair_id": row.pair_id,
            "shard": row.shard,
            "source_path": row.source_path,
            "target_path": row.target_path,
            "reference_path": _reference_path(row.reference_path),
            "clip_height": int(row.clip_height),
            "clip_width": int(row.clip_width),
            "latent_shape": [int(v) for v in row.latent_shape],
            "instruction": row.instruction,
            "category": row.category,
            "origin": row.origin,
            "score": None if row.score is None or row.score != row.score else float(row.score),
        }
        for row in plan.itertuples(index=False)
    ]


def shard_stages(config: ShardsConfig, vlm_dim: int) -> list[Stage]:
    """VAE (actor pool: decode + encode) -> VLM (actor pool: decode its frames + encode + validate)."""
    res = config.resources
    return [
        Stage(
            "vae",
            VaeWorker,
            kwargs={"clip": config.clip, "vae": config.vae},
            failure_reason="encode_failed",
            **res.stage("vae"),
        ),
        Stage(
            "vlm",
            VlmWorker,
            kwargs={"config": config, "vlm_dim": vlm_dim},
            failure_reason="encode_failed",
            **res.stage("vlm"),
        ),
    ]


# -- the writer ---------------------------------------------------------------------------------------------


class ShardAssembler:
    """The writer (in the driver): gathers each shard's samples and writes it when its last one arrives.

    :meth:`records` turns the stream of result rows into one record per written shard (its ``index.json``
    entry and its rejections), which :func:`~pipelines.stage.run_stages` stores as the unit of resume. Up
    to ``threads`` shards are written at once while the next ones fill; a record is only given out once
    its tar is complete and renamed.
    """

    def __init__(self, root: Path, plan: Any, threads: int = 1, remote: Any = None):
        self.root, self.threads, self.remote = root, max(1, threads), remote
        self.expected = plan.groupby("shard").size().to_dict()
        self.pending: dict[str, list[dict[str, Any]]] = {}

    def records(self, rows: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(self.threads, thread_name_prefix="shard-writer") as pool:
            writing: deque = deque()
            for row in rows:
                shard = row["shard"]
                self.pending.setdefault(shard, []).append(row)
                if len(self.pending[shard]) == self.expected[shard]:
                    writing.append(pool.submit(self.finish, shard, self.pending.pop(shard)))
                while len(writing) > self.threads or (writing and writing[0].done()):
                    yield writing.popleft().result()  # at most `threads` finished shards held in memory
            while writing:
                yield writing.popleft().result()
        if self.pending:
            raise RuntimeError(f"shards left incomplete: {sorted(self.pending)}")

    def finish(self, shard: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """Write one shard; its record (``entry`` "" when every sample was rejected)."""
        from dataengine.steps.shard_set import rejection, write_shard

        samples, rejections = [], []
        for row in sorted(rows, key=lambda r: r["pair_id"]):
            if is_rejected(row):
                rejections.append(rejection(row["pair_id"], row["stage"], row["reason"], row["detail"]))
            else:
                samples.append((row["pair_id"], row["tensors"], json.loads(row["meta"])))
        entry = write_shard(self.root, shard, samples) if samples else None
        if entry is not None and self.remote is not None:
            self.remote.upload(self.root / shard, shard)
            (self.root / shard).unlink()  # the local copy was only the staging one
        return {
            "shard": shard,
            "entry": json.dumps(entry, sort_keys=True) if entry else "",
            "rejections": json.dumps(rejections, sort_keys=True),
        }


class RemoteShardSet:
    """A shard set's destination URL (any fsspec filesystem): uploads, and the sizes of what is there."""

    def __init__(self, url: str):
        from dataengine.formats.shard_format import shard_set_location

        self.url = url
        self.fs, self.root = shard_set_location(url)

    def upload(self, local: Path, relative: str) -> None:
        from dataengine.formats.shard_format import join

        target = join(self.root, relative)
        if "file" in self.fs.protocol:  # object stores have no folders to make
            self.fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        self.fs.put_file(str(local), target)

    def remove(self, relative: str) -> None:
        from dataengine.formats.shard_format import join

        if self.fs.exists(join(self.root, relative)):
            self.fs.rm_file(join(self.root, relative))

    def sizes(self) -> dict[str, int]:
        """Size of every file under the destination, by path relative to it (one listing)."""
        try:
            found = self.fs.find(self.root, detail=True)
        except FileNotFoundError:
            return {}
        return {path[len(self.root) :].lstrip("/"): int(info["size"]) for path, info in found.items()}


def still_written(root: Path, remote: RemoteShardSet | None = None) -> Any:
    """The filter of stored shard records that still hold: a record whose tar is missing (on disk, or at the
    remote destination) or has another size than recorded is dropped, so its shard is redone."""

    def keep(records: Any) -> Any:
        sizes = remote.sizes() if remote is not None else None
        valid = []
        for record in records.to_dict("records"):
            entry = json.loads(record["entry"]) if record["entry"] else None
            if entry is not None:
                if sizes is not None:
                    size = sizes.get(entry["path"])
                else:
                    path = root / entry["path"]
                    size = path.stat().st_size if path.exists() else None
                valid.append(size == entry["bytes"])
            else:
                valid.append(True)
        return records[np.array(valid, dtype=bool)] if len(records) else records

    return keep


def _completed_records(
    root: Path, store: Any, remote: RemoteShardSet | None = None
) -> dict[str, dict[str, Any]]:
    """Recorded shards whose tar is still there with the recorded size, by shard: entry and rejections."""
    records = still_written(root, remote)(with_columns(store.read_all(), RECORD_COLUMNS))
    return {
        r["shard"]: {
            "entry": json.loads(r["entry"]) if r["entry"] else None,
            "rejections": json.loads(r["rejections"]),
        }
        for r in records.to_dict("records")
    }


RECORD_COLUMNS = ["shard", "entry", "rejections"]
"""The columns of the shard writer's records (one per written shard): the unit of resume."""


def sample_outcomes(plan: Any) -> Any:
    """What the runner counts: from the stored shard records, every planned sample's ``pair_id`` with the
    ``stage`` and ``reason`` of its rejection (none when it was written)."""
    import pandas as pd

    def outcomes(records: pd.DataFrame) -> pd.DataFrame:
        rejected = [r for record in records["rejections"] for r in json.loads(record)]
        frame = pd.DataFrame(rejected, columns=["pair_id", "stage", "reason", "detail"])
        return plan[["pair_id"]].merge(frame, on="pair_id", how="left")

    return outcomes


# -- the job -------------------------------------------------------------------------------------------


def run_shards(config: ShardsConfig, run: str, ray_address: str | None = None) -> dict[str, Any]:
    """Plan, encode and write the shard set of ``config``; returns the index (also in ``<output>/index.json``)."""
    from pipelines.runtime import PartStore

    layout, remote = start_run(config, run)
    root = layout.shards_dir  # with a URL output: the local staging folder

    # 1. read and plan (from the manifests alone); a rerun continues only the same plan
    pairs, plan, plan_rejections, vlm_dim = read_and_plan(config)
    samples = (f"{shard}\t{pair_id}" for shard, pair_id in zip(plan["shard"], plan["pair_id"], strict=True))
    guard_resume(layout.shards_fingerprint, shard_settings(config), samples, start_over=str(root))
    layout.shards_index.unlink(missing_ok=True)  # an index only ever describes a finished run
    if remote is not None:
        remote.remove(INDEX_NAME)

    # 2. encode (VAE, VLM) and write each shard as its last sample arrives, in the plan's order
    written = run_resumable(
        shard_items(plan),
        shard_stages(config, vlm_dim),
        PartStore(layout.shards_state, id_column="shard"),
        description="shards",
        unit="samples",
        columns=RECORD_COLUMNS,
        still_valid=still_written(root, remote),
        stage_names=STAGES[1:],  # a decode rejection comes from the VAE or the VLM stage, before its model
        resumed=lambda done, todo: (
            f"shards: {len(pairs)} pairs -> {len(plan)} planned in {plan['shard'].nunique()} shards "
            f"({len(plan_rejections)} rejected by the plan); {done} shards already done, {todo} samples to encode"
        ),
        collect=ShardAssembler(root, plan, config.resources.writer_threads, remote).records,
        item_outcomes=sample_outcomes(plan),  # a record is a shard: count its samples
        ordered=True,  # shards complete one after another: the driver holds one shard's samples at a time
        ray=RayOptions.of(config.resources, ray_address),
    )

    # 3. outputs: rejections, then index.json last
    return write_outputs(layout, config, run, pairs, plan, plan_rejections, written, vlm_dim, remote)


def start_run(config: ShardsConfig, run: str) -> tuple[Any, RemoteShardSet | None]:
    """The run's folders (a ``RunLayout``; its shards folder made) and the remote destination of a URL output."""
    from dataengine.formats.layout import RunLayout, is_url

    if not config.inputs:
        raise UserError("[shards] inputs is empty: list the pair manifests to shard")
    remote = RemoteShardSet(config.output) if is_url(config.output) else None
    layout = RunLayout(run, shards_dir=Path(config.output) if config.output and remote is None else None)
    layout.shards_dir.mkdir(parents=True, exist_ok=True)
    return layout, remote


def read_and_plan(config: ShardsConfig) -> tuple[Any, Any, list[dict[str, Any]], int]:
    """The input manifests' rows, the plan (every sample's shard, from the manifests alone), the plan's
    rejections and the VLM's hidden size."""
    import pandas as pd

    from dataengine.formats.manifest import read_pairs
    from dataengine.steps.shard_set import plan_shards

    pairs = pd.concat([read_pairs(path) for path in config.inputs], ignore_index=True)
    vlm_dim = _vlm_dim(config.vlm.model_id)
    plan, plan_rejections = plan_shards(pairs, config.clip, config.writer, vlm_dim)
    return pairs, plan, plan_rejections, vlm_dim


def shard_settings(config: ShardsConfig) -> dict[str, Any]:
    """What the stored shards depend on (the resume guard's settings): everything but the resources and
    where the shards go."""
    from dataengine.formats.recipe import config_to_dict

    return {k: v for k, v in config_to_dict(config).items() if k not in ("resources", "output")}


def write_outputs(
    layout: Any,
    config: ShardsConfig,
    run: str,
    pairs: Any,
    plan: Any,
    plan_rejections: list[dict[str, Any]],
    written: StageRun,
    vlm_dim: int,
    remote: RemoteShardSet | None,
) -> dict[str, Any]:
    """The rejections, the survival summary and ``index.json`` (last), uploaded too with a URL output; returns
    the index."""
    import pandas as pd

    from dataengine.formats.manifest import rejections_frame, write_rejections, write_text
    from dataengine.formats.recipe import config_to_dict
    from dataengine.steps.shard_set import render_survival, survival_summary, write_index

    resolved, root = config_to_dict(config), layout.shards_dir
    records = written.results.to_dict("records")
    entries = [json.loads(r["entry"]) for r in records if r["entry"]]
    rejected = plan_rejections + [x for r in records for x in json.loads(r["rejections"])]
    rejections = rejections_frame(sorted(rejected, key=lambda r: (r["pair_id"], r["stage"])))
    models = {"vae": config.vae.model_id, "vlm": config.vlm.model_id}
    write_rejections(rejections, layout.shard_rejections, metadata={"models": models, "run": run})
    shapes = dict(zip(plan["bucket"], plan["latent_shape"], strict=True))
    summary = {"run": run, "clip": resolved["clip"], **survival_summary(pairs, plan, rejections)}
    planned = pd.concat([rejections_frame(plan_rejections), plan[["pair_id"]]], ignore_index=True)
    summary["stages"] = {**stage_counts(planned, STAGES[:1]), **written.counts}
    if summary["total"]["encoded"] != sum(e["num_samples"] for e in entries):
        raise RuntimeError(f"the shards hold {sum(e['num_samples'] for e in entries)} samples, "
                           f"the plan and rejections say {summary['total']['encoded']}")  # fmt: skip
    write_text(layout.shards_summary, json.dumps(summary, indent=2))
    index = write_index(root, entries, shapes, vlm_dim, models, resolved)
    if remote is not None:
        remote.upload(layout.shard_rejections, layout.shard_rejections.name)
        remote.upload(layout.shards_summary, layout.shards_summary.name)
        remote.upload(layout.shards_index, INDEX_NAME)
    render_survival(summary, f"dataengine shards [{run}]: pairs in, samples encoded, rejections")
    print(
        f"shards: wrote {index['num_samples']} samples in {len(entries)} shards to {remote.url if remote else root}; "
        f"{len(rejections)} rejections ({layout.shard_rejections})"
    )
    return index


def shards_command(
    recipe: Annotated[
        Path, typer.Argument(help="Recipe TOML with a [shards] table, e.g. manifests/demo.toml")
    ],
    overrides: Annotated[
        list[str] | None,
        typer.Argument(help="section.key=value overrides, e.g. shards.writer.samples_per_shard=8"),
    ] = None,
    ray_address: Annotated[
        str | None, typer.Option(help="Join this Ray cluster (default: RAY_ADDRESS or local)")
    ] = None,
) -> None:
    """Encode pair manifests into WebDataset shards (Wan VAE latents + Qwen3-VL tokens); resumes after a kill."""
    from dataengine.formats.recipe import load_step_config

    config, run = load_step_config(ShardsConfig, recipe, "shards", overrides)
    run_shards(config, run, ray_address)


def _print_table(title: str, mapping: dict[str, Any]) -> None:
    typer.echo(f"{title}:")
    for key, value in mapping.items():
        typer.echo(f"  {key:<28} {value}")


def inspect_command(
    path: Annotated[
        str,
        typer.Argument(
            help="A shard set (folder or its index.json, local or a URL: s3://, gs://, https://, hf://, "
            "file://) or a pair manifest (.parquet)"
        ),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables")] = False,
) -> None:
    """What a shard set or a pair manifest holds: counts per bucket and category, bytes per sample, shapes."""
    from dataengine.steps.shard_set import inspect_manifest, inspect_shards

    if path.endswith(".parquet"):
        summary = inspect_manifest(path)
    else:
        summary = inspect_shards(path)
    if as_json:
        typer.echo(json.dumps(summary, indent=1))
        return
    scalars = {k: v for k, v in summary.items() if not isinstance(v, dict)}
    _print_table(f"{summary['kind']} {summary['path']}", scalars)
    for key, value in summary.items():
        if isinstance(value, dict) and value:
            _print_table(key, value)


def verify_command(
    path: Annotated[
        str,
        typer.Argument(help="A shard set: its folder or index.json, local or a URL (s3://, https://, ...)"),
    ],
) -> None:
    """Re-read every tar of a shard set: sha256, sample count and keys, every sample decodes and is valid."""
    from dataengine.steps.shard_set import verify_shards

    report = verify_shards(path)
    for problem in report.problems:
        typer.echo(f"PROBLEM {problem['shard']}: {problem['problem']}: {problem['detail']}", err=True)
    status = "OK" if report.ok else f"FAILED ({len(report.problems)} problems)"
    typer.echo(
        f"verify {path}: {report.num_shards} shards, {report.num_samples} samples, "
        f"{report.num_bytes / 2**20:.1f} MiB: {status}"
    )
    if not report.ok:
        raise typer.Exit(code=1)
