"""`dataengine shards`: pair manifests -> WebDataset shards of Wan VAE latents and Qwen3-VL tokens.

    dataengine shards manifests/demo.toml                      # tiny models, CPU, a few minutes
    dataengine shards manifests/openve.toml --ray-address auto  # the paper's run on a GPU cluster
    dataengine inspect shards/demo        # or a pair manifest: manifests/demo/openve.parquet
    dataengine verify shards/demo

Stages (Ray Data, streaming, in the plan's order):

1. plan (driver): every manifest row is assigned to a shard from the manifest alone (bucket by size,
   sorted by ``pair_id``, a fixed count per shard), see ``dataengine.shards.plan_shards``;
2. decode (CPU tasks): decord decodes and fits source, target and reference (``dataengine.clips``);
3. VAE (actor pool, GPUs from the recipe): source, target and reference latents (``dataengine.vae``);
4. VLM (actor pool): one Qwen3-VL forward per sample (``dataengine.vlm``);
5. write (driver): samples are validated and gathered per shard; a shard is written (temporary name,
   then renamed) as soon as its last sample arrives, and recorded in ``.parts/``.

Resume: a rerun with the same recipe and inputs skips the recorded shards and redoes the others, so it
ends with the same ``index.json`` as an uninterrupted run (apart from ``created_unix``).
Outputs: ``shards/<run>/<bucket>/shard-NNNNNN.tar``, ``index.json`` (written last), ``rejections.parquet``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from dataengine.clips import ClipConfig
from dataengine.shards import INDEX_NAME, ShardWriterConfig
from dataengine.vae import WanVaeConfig
from dataengine.vlm import Qwen3VLEncoderConfig

STAGES = ("plan", "decode", "vae", "vlm", "validate")


@dataclass(frozen=True)
class ShardsResources:
    """Ray resources of the stages (the ``[shards.resources]`` recipe table)."""

    decode_cpus: float = 1.0
    """CPUs per decode task."""
    vae_actors: int = 1
    """Number of VAE actors (each loads the VAE once)."""
    vae_gpus: float = 0.0
    """GPUs per VAE actor (0 on a CPU-only machine)."""
    vae_cpus: float = 1.0
    """CPUs per VAE actor."""
    vlm_actors: int = 1
    """Number of Qwen3-VL actors (each loads the model once)."""
    vlm_gpus: float = 0.0
    """GPUs per Qwen3-VL actor."""
    vlm_cpus: float = 1.0
    """CPUs per Qwen3-VL actor."""
    num_cpus: int = 0
    """CPUs of the local Ray instance (0: all); ignored when joining a cluster."""


@dataclass(frozen=True)
class ShardsConfig:
    """The ``[shards]`` recipe table: inputs, clip preparation, the two encoders, the writer, resources."""

    inputs: tuple[str, ...] = ()
    """Pair manifests (Parquet) to shard, e.g. ``manifests/openve/openve.parquet``."""
    output: str = ""
    """Output folder; empty: ``shards/<run>``."""
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


def _one(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _rows(batch: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    count = len(next(iter(batch.values())))
    return [{k: _one(v[i]) for k, v in batch.items()} for i in range(count)]


def _batch(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    keys = ("pair_id", "shard", "reason", "detail", "fps", "payload")
    out = {k: np.array([r[k] for r in rows], dtype=object) for k in keys}
    out["fps"] = np.array([float(r["fps"]) for r in rows], dtype=np.float64)
    return out


def _rejected(row: dict[str, Any], stage: str, reason: str, detail: str) -> dict[str, Any]:
    return {
        "pair_id": row["pair_id"],
        "shard": row["shard"],
        "reason": f"{stage}:{reason}",
        "detail": detail,
        "fps": 0.0,
        "payload": b"",
    }


def decode_batch(
    batch: dict[str, np.ndarray], clip: ClipConfig, vlm: Qwen3VLEncoderConfig
) -> dict[str, np.ndarray]:
    """Decode stage (a CPU task): prepared source, target and reference, plus the frames the VLM sees."""
    from safetensors.numpy import save

    from dataengine.clips import ClipRejection, prepare_pair
    from dataengine.vlm import select_frames

    out = []
    for row in _rows(batch):
        try:
            pair = prepare_pair(
                row["source_path"],
                row["target_path"],
                row["reference_path"] or None,
                clip,
                expected_bucket=(row["clip_height"], row["clip_width"]),
            )
        except ClipRejection as err:
            out.append(_rejected(row, "decode", err.reason, err.detail))
            continue
        vlm_indices = select_frames(len(pair.source), pair.fps, vlm)
        payload = save(
            {
                "source": pair.source,
                "target": pair.target,
                "reference": pair.reference,
                "vlm_video": np.ascontiguousarray(pair.source[vlm_indices]),
                "vlm_indices": vlm_indices,
            }
        )
        out.append({**row, "reason": "", "detail": "", "fps": pair.fps, "payload": payload})
    return _batch(out)


class VaeStage:
    """VAE stage (an actor): loads the Wan VAE once, encodes source + target (one batch) and the reference."""

    def __init__(self, config: WanVaeConfig):
        from dataengine.vae import WanVaeEncoder

        self.encoder = WanVaeEncoder(config)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch
        from safetensors.numpy import load
        from safetensors.torch import save

        out = []
        for row in _rows(batch):
            if row["reason"]:
                out.append(row)
                continue
            arrays = load(row["payload"])
            try:
                both = self.encoder.encode(
                    np.stack([arrays["source"], arrays["target"]])
                )  # (2, 16, T', H', W')
                reference = self.encoder.encode(arrays["reference"][None])  # (16, 1, H', W')
            except torch.OutOfMemoryError:
                raise
            except (RuntimeError, ValueError) as err:
                out.append(_rejected(row, "vae", "encode_failed", f"{type(err).__name__}: {str(err)[:300]}"))
                continue
            tensors = {
                "source_latents": both[0],
                "target_latents": both[1],
                "reference_latents": reference,
                "reference": torch.from_numpy(arrays["reference"]),
                "vlm_video": torch.from_numpy(arrays["vlm_video"]),
                "vlm_indices": torch.from_numpy(arrays["vlm_indices"]),
            }
            out.append({**row, "payload": save({k: v.contiguous() for k, v in tensors.items()})})
        return _batch(out)


class VlmStage:
    """VLM stage (an actor): loads Qwen3-VL once; one forward per sample over reference, video and instruction."""

    def __init__(self, config: Qwen3VLEncoderConfig, instructions: dict[str, str]):
        from dataengine.vlm import Qwen3VLEncoder

        self.encoder = Qwen3VLEncoder(config)
        self.instructions = instructions

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch
        from safetensors.torch import load, save

        out = []
        for row in _rows(batch):
            if row["reason"]:
                out.append(row)
                continue
            tensors = load(row["payload"])
            try:
                states = self.encoder.encode(
                    self.instructions[row["pair_id"]],
                    tensors.pop("reference").numpy(),
                    tensors.pop("vlm_video").numpy(),
                    row["fps"],
                    frame_indices=tensors.pop("vlm_indices").tolist(),
                )
            except torch.OutOfMemoryError:
                raise
            except (RuntimeError, ValueError) as err:
                out.append(_rejected(row, "vlm", "encode_failed", f"{type(err).__name__}: {str(err)[:300]}"))
                continue
            tensors.update(vlm_first=states.first, vlm_last=states.last, vlm_token_types=states.token_types)
            out.append({**row, "payload": save({k: v.contiguous() for k, v in tensors.items()})})
        return _batch(out)


def _reference_path(value: Any) -> str:
    """The manifest's ``reference_path`` as a string, "" when null (None or NaN after a pandas concat)."""
    return value if isinstance(value, str) else ""


def _vlm_dim(model_id: str) -> int:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_id)
    return int(getattr(config, "text_config", config).hidden_size)


def _sample_meta(
    row: Any, fps: float, tensors: dict, config: ShardsConfig, states_types: Any
) -> dict[str, Any]:
    counts = np.bincount(states_types.numpy(), minlength=3)
    return {
        "pair_id": row.pair_id,
        "instruction": row.instruction,
        "category": row.category,
        "origin": row.origin,
        "score": None if row.score is None or row.score != row.score else float(row.score),
        "reference": "manifest" if _reference_path(row.reference_path) else "target_first_frame",
        "num_frames": config.clip.num_frames,
        "fps": fps,
        "resolution": [int(row.clip_height), int(row.clip_width)],
        "latent_shape": list(row.latent_shape),
        "vlm_tokens": int(tensors["vlm_first"].shape[0]),
        "vlm_dim": int(tensors["vlm_first"].shape[1]),
        "vlm_token_counts": {"text": int(counts[0]), "image": int(counts[1]), "video": int(counts[2])},
        "shapes": {k: list(v.shape) for k, v in sorted(tensors.items())},
        "models": {"vae": config.vae.model_id, "vlm": config.vlm.model_id},
    }


class ShardAssembler:
    """The writer (in the driver): gathers each shard's results and writes it when its last sample arrives."""

    def __init__(self, root: Path, plan: Any, config: ShardsConfig, vlm_dim: int, store: Any, progress: Any):
        self.root, self.config, self.vlm_dim, self.store, self.progress = (
            root,
            config,
            vlm_dim,
            store,
            progress,
        )
        self.rows = {row.pair_id: row for row in plan.itertuples(index=False)}
        self.expected = plan.groupby("shard").size().to_dict()
        self.pending: dict[str, list[dict[str, Any]]] = {}

    def add(self, result: dict[str, Any]) -> None:
        shard = result["shard"]
        self.pending.setdefault(shard, []).append(result)
        if len(self.pending[shard]) == self.expected[shard]:
            self._finish(shard, self.pending.pop(shard))

    def _finish(self, shard: str, results: list[dict[str, Any]]) -> None:
        import pandas as pd

        from dataengine.shards import rejection, tensors_from_bytes, validate_sample, write_shard

        samples, rejections = [], []
        for result in sorted(results, key=lambda r: r["pair_id"]):
            pair_id = result["pair_id"]
            if result["reason"]:
                stage, reason = result["reason"].split(":", 1)
                rejections.append(rejection(pair_id, stage, reason, result["detail"]))
                continue
            row = self.rows[pair_id]
            tensors = tensors_from_bytes(result["payload"])
            invalid = validate_sample(tensors, tuple(row.latent_shape), self.vlm_dim)
            if invalid is not None:
                rejections.append(rejection(pair_id, "validate", *invalid))
                continue
            meta = _sample_meta(row, float(result["fps"]), tensors, self.config, tensors["vlm_token_types"])
            samples.append((pair_id, tensors, meta))
        entry = write_shard(self.root, shard, samples) if samples else None
        record = {
            "shard": shard,
            "entry": json.dumps(entry, sort_keys=True) if entry else "",
            "rejections": json.dumps(rejections, sort_keys=True),
        }
        self.store.append(pd.DataFrame([record]))
        self.progress.update(len(results))


def _fingerprint(plan: Any, resolved: dict[str, Any]) -> str:
    """What a resumable run must share with the run it resumes: the plan and the recipe (resources may change)."""
    settings = {k: v for k, v in resolved.items() if k not in ("resources", "output")}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for shard, pair_id in zip(plan["shard"], plan["pair_id"], strict=True):
        digest.update(f"{shard}\t{pair_id}\n".encode())
    return digest.hexdigest()


def _completed_records(root: Path, store: Any) -> dict[str, dict[str, Any]]:
    """Recorded shards whose tar is still on disk with the recorded size (a missing or changed tar is redone)."""
    done = {}
    for record in store.read_all().to_dict("records"):
        entry = json.loads(record["entry"]) if record["entry"] else None
        if entry is not None:
            path = root / entry["path"]
            if not path.exists() or path.stat().st_size != entry["bytes"]:
                continue
        done[record["shard"]] = {"entry": entry, "rejections": json.loads(record["rejections"])}
    return done


def run_shards(config: ShardsConfig, run: str, ray_address: str | None = None) -> dict[str, Any]:
    """Plan, encode and write the shard set of ``config``; returns the index (also in ``<output>/index.json``)."""
    import pandas as pd

    from dataengine.manifest import read_pairs, rejections_frame, write_rejections
    from dataengine.recipe import config_to_dict
    from dataengine.shards import plan_shards, write_index
    from pipelines.runtime import PartStore, Progress

    if not config.inputs:
        raise ValueError("[shards] inputs is empty: list the pair manifests to shard")
    root = Path(config.output or f"shards/{run}")
    root.mkdir(parents=True, exist_ok=True)
    resolved = config_to_dict(config)
    pairs = pd.concat([read_pairs(path) for path in config.inputs], ignore_index=True)
    vlm_dim = _vlm_dim(config.vlm.model_id)
    plan, plan_rejections = plan_shards(pairs, config.clip, config.writer, vlm_dim)

    fingerprint = _fingerprint(plan, resolved)
    plan_file = root / "plan.json"
    if plan_file.exists() and json.loads(plan_file.read_text())["fingerprint"] != fingerprint:
        raise ValueError(
            f"{root} holds a run with another recipe or other inputs ({plan_file}): "
            "use another run name or output folder, or delete it to start over"
        )
    plan_file.write_text(json.dumps({"fingerprint": fingerprint, "num_planned": len(plan)}, indent=1) + "\n")
    (root / INDEX_NAME).unlink(missing_ok=True)  # an index only ever describes a finished run

    store = PartStore(root / ".parts", id_column="shard")
    done = _completed_records(root, store)
    todo = plan[~plan["shard"].isin(done)].reset_index(drop=True)
    print(
        f"shards: {len(pairs)} pairs -> {len(plan)} planned in {plan['shard'].nunique()} shards "
        f"({len(plan_rejections)} rejected by the plan); {len(done)} shards already done, {len(todo)} samples to encode"
    )
    progress = Progress(len(plan), unit="samples", description="shards", initial=len(plan) - len(todo))
    if len(todo):
        assembler = ShardAssembler(root, todo, config, vlm_dim, store, progress)
        for result in _encode(todo, config, ray_address):
            assembler.add(result)
        if assembler.pending:
            raise RuntimeError(f"shards left incomplete: {sorted(assembler.pending)}")
    progress.close()

    done = _completed_records(root, store)
    missing = sorted(set(plan["shard"]) - set(done))
    if missing:
        raise RuntimeError(f"shards not written: {missing[:5]} ... rerun to resume")
    entries = [d["entry"] for d in done.values() if d["entry"] is not None]
    rejected = plan_rejections + [r for d in done.values() for r in d["rejections"]]
    rejections = rejections_frame(sorted(rejected, key=lambda r: (r["pair_id"], r["stage"])))
    models = {"vae": config.vae.model_id, "vlm": config.vlm.model_id}
    write_rejections(rejections, root / "rejections.parquet", metadata={"models": models, "run": run})
    shapes = dict(zip(plan["bucket"], plan["latent_shape"], strict=True))
    index = write_index(root, entries, shapes, vlm_dim, models, resolved)
    print(
        f"shards: wrote {index['num_samples']} samples in {len(entries)} shards to {root}; "
        f"{len(rejections)} rejections ({root / 'rejections.parquet'})"
    )
    return index


def _encode(todo: Any, config: ShardsConfig, ray_address: str | None):
    """Stream the results of decode -> VAE -> VLM for the ``todo`` rows, in the plan's order."""
    import ray

    from pipelines.runtime import init_ray

    res = config.resources
    init_ray(ray_address, num_cpus=res.num_cpus or None)
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    items = [
        {
            "pair_id": row.pair_id,
            "shard": row.shard,
            "source_path": row.source_path,
            "target_path": row.target_path,
            "reference_path": _reference_path(row.reference_path),
            "clip_height": int(row.clip_height),
            "clip_width": int(row.clip_width),
        }
        for row in todo.itertuples(index=False)
    ]
    instructions = dict(zip(todo["pair_id"], todo["instruction"], strict=True))
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
    ds = ds.map_batches(
        decode_batch,
        batch_size=1,
        batch_format="numpy",
        num_cpus=res.decode_cpus,
        fn_kwargs={"clip": config.clip, "vlm": config.vlm},
    )
    ds = ds.map_batches(
        VaeStage,
        batch_size=1,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=res.vae_actors),
        num_cpus=res.vae_cpus,
        num_gpus=res.vae_gpus,
        fn_constructor_kwargs={"config": config.vae},
    )
    ds = ds.map_batches(
        VlmStage,
        batch_size=1,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=res.vlm_actors),
        num_cpus=res.vlm_cpus,
        num_gpus=res.vlm_gpus,
        fn_constructor_kwargs={"config": config.vlm, "instructions": instructions},
    )
    yield from ds.iter_rows()


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
    from dataengine.recipe import load_step_config

    config, run = load_step_config(ShardsConfig, recipe, "shards", overrides)
    run_shards(config, run, ray_address)


def _print_table(title: str, mapping: dict[str, Any]) -> None:
    typer.echo(f"{title}:")
    for key, value in mapping.items():
        typer.echo(f"  {key:<28} {value}")


def inspect_command(
    path: Annotated[
        Path, typer.Argument(help="A shard set (folder or its index.json) or a pair manifest (.parquet)")
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables")] = False,
) -> None:
    """What a shard set or a pair manifest holds: counts per bucket and category, bytes per sample, shapes."""
    from dataengine.shards import inspect_manifest, inspect_shards

    if path.suffix == ".parquet":
        summary = inspect_manifest(path)
    else:
        summary = inspect_shards(path.parent if path.name == INDEX_NAME else path)
    if as_json:
        typer.echo(json.dumps(summary, indent=1))
        return
    scalars = {k: v for k, v in summary.items() if not isinstance(v, dict)}
    _print_table(f"{summary['kind']} {summary['path']}", scalars)
    for key, value in summary.items():
        if isinstance(value, dict) and value:
            _print_table(key, value)


def verify_command(
    path: Annotated[Path, typer.Argument(help="A shard set folder (holding index.json)")],
) -> None:
    """Re-read every tar of a shard set: sha256, sample count and keys, every sample decodes and is valid."""
    from dataengine.shards import verify_shards

    report = verify_shards(path.parent if path.name == INDEX_NAME else path)
    for problem in report.problems:
        typer.echo(f"PROBLEM {problem['shard']}: {problem['problem']}: {problem['detail']}", err=True)
    status = "OK" if report.ok else f"FAILED ({len(report.problems)} problems)"
    typer.echo(
        f"verify {path}: {report.num_shards} shards, {report.num_samples} samples, "
        f"{report.num_bytes / 2**20:.1f} MiB: {status}"
    )
    if not report.ok:
        raise typer.Exit(code=1)
