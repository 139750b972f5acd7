"""Where every output of a run lives: the one place that names the files the steps write.

- :class:`RunLayout`: the data-engine outputs of one recipe run (``run = "<name>"``): the filter's and the
  portrait step's manifests, rejections, summaries and resume state under ``manifests/<run>/``, the pair
  files under ``portrait_pairs/<run>/``, the shard set under ``shards/<run>/``.
- :class:`TrainRunLayout`: a training run folder ``runs/<name>/``: resolved recipe, metrics, checkpoints.
- :class:`DiagnosisLayout` (``manifests/<run>/diagnose/``, the layer diagnostic) and :class:`EvalLayout`
  (``runs/<name>/eval/`` by default, ``trainer eval``): the files of the two measurement commands.

The jobs (``pipelines/``) write through these, the report (:mod:`dataengine.tools.run_report`) and ``trainer
sample`` read through them, so no module spells out another's file names. Both are plain paths: nothing
here touches the disk.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from dataengine.formats.recipe import UserError

INDEX_NAME = "index.json"
"""A shard set's index, written last (``dataengine.formats.shard_format`` describes it)."""


def is_url(location: str | os.PathLike) -> bool:
    """True for a location with a URL scheme (``s3://``, ``https://``, ``file://``, ...), not a plain path."""
    return "://" in str(location)


@dataclass(frozen=True)
class RunLayout:
    """Every output path of one data-engine run, from its name and three folders."""

    run: str
    """The recipe's top-level ``run`` name."""
    manifests_root: Path = Path("manifests")
    """Folder of the run folders (the filter's ``output_root``)."""
    shards_dir: Path | None = None
    """The shard set's folder (``[shards] output``); None: ``shards/<run>``."""
    pairs_dir: Path | None = None
    """Folder of the portrait pair files (``[portraits] output_dir``); None: ``portrait_pairs/<run>``."""

    def __post_init__(self) -> None:
        if not self.run:
            raise UserError("a run needs a name: set the recipe's top-level `run`")
        object.__setattr__(self, "manifests_root", Path(self.manifests_root))
        object.__setattr__(self, "shards_dir", Path(self.shards_dir or Path("shards") / self.run))
        object.__setattr__(self, "pairs_dir", Path(self.pairs_dir or Path("portrait_pairs") / self.run))

    # manifests/<run>/ ------------------------------------------------------------------------------------
    @property
    def run_dir(self) -> Path:
        """``manifests/<run>/``: manifests, rejections, summaries and resume state of the data steps."""
        return self.manifests_root / self.run

    # dataengine filter
    @property
    def filter_config(self) -> Path:
        return self.run_dir / "filter_config.json"

    @property
    def openve(self) -> Path:
        """The filter's pair manifest."""
        return self.run_dir / "openve.parquet"

    @property
    def rejections(self) -> Path:
        """The filter's rejections."""
        return self.run_dir / "rejections.parquet"

    @property
    def summary(self) -> Path:
        """The filter's per-category counts and score histogram."""
        return self.run_dir / "summary.json"

    @property
    def scores(self) -> Path:
        """The filter's resumable parts: one row per finished pair (score or probe/scorer rejection)."""
        return self.run_dir / "scores"

    @property
    def scores_fingerprint(self) -> Path:
        """What the scores were computed with (the probe and judge settings): a rerun must match it."""
        return self.run_dir / "scores.fingerprint.json"

    # dataengine harvest-portraits
    @property
    def portrait_windows(self) -> Path:
        """The harvest's portrait windows (one person in every sampled frame): what synth-portraits reads."""
        return self.run_dir / "portrait_windows.parquet"

    @property
    def background_windows(self) -> Path:
        """The harvest's background windows (nobody in any sampled frame)."""
        return self.run_dir / "background_windows.parquet"

    @property
    def harvest_rejections(self) -> Path:
        """Every scanned video in neither list, with its reason."""
        return self.run_dir / "harvest_rejections.parquet"

    @property
    def harvest_summary(self) -> Path:
        return self.run_dir / "harvest_summary.json"

    @property
    def harvest_state(self) -> Path:
        """The harvest's resumable parts: one row per scanned video."""
        return self.run_dir / ".harvest"

    @property
    def harvest_fingerprint(self) -> Path:
        """What the harvest's parts were made from (detector settings, window, video source)."""
        return self.harvest_state / "fingerprint.json"

    # dataengine synth-portraits
    @property
    def portraits(self) -> Path:
        """The portrait step's pair manifest."""
        return self.run_dir / "portraits.parquet"

    @property
    def portrait_rejections(self) -> Path:
        return self.run_dir / "portrait_rejections.parquet"

    @property
    def portrait_plan(self) -> Path:
        """Portrait, background and masks of each planned pair."""
        return self.run_dir / "portrait_plan.parquet"

    @property
    def portraits_summary(self) -> Path:
        return self.run_dir / "portraits_summary.json"

    @property
    def portraits_state(self) -> Path:
        """The portrait step's resumable parts: ``backgrounds/``, ``portraits/``, ``pairs/``."""
        return self.run_dir / ".portraits"

    @property
    def portraits_fingerprint(self) -> Path:
        """What the portrait step's parts were made from (recipe and input clip lists)."""
        return self.portraits_state / "fingerprint.json"

    @property
    def masks_dir(self) -> Path:
        """Bit-packed person masks of the portrait clips."""
        return self.pairs_dir / "masks"

    # dataengine report
    @property
    def report(self) -> Path:
        return self.run_dir / "report.html"

    # dataengine diagnose-layers
    @property
    def diagnosis(self) -> DiagnosisLayout:
        """The layer diagnostic's outputs (``R_mask`` per VLM layer)."""
        return DiagnosisLayout(self.run_dir / "diagnose")

    # shards/<run>/ ---------------------------------------------------------------------------------------
    @property
    def shards_index(self) -> Path:
        """``index.json`` of the shard set, written last."""
        return self.shards_dir / INDEX_NAME

    @property
    def shard_rejections(self) -> Path:
        return self.shards_dir / "rejections.parquet"

    @property
    def shards_summary(self) -> Path:
        """Per category: pairs in, samples encoded, rejections by reason, clip lengths (``survival_summary``)."""
        return self.shards_dir / "summary.json"

    @property
    def shards_state(self) -> Path:
        """The shard step's resumable parts: one record per written shard."""
        return self.shards_dir / ".parts"

    @property
    def shards_fingerprint(self) -> Path:
        """What the recorded shards were made from (recipe and plan)."""
        return self.shards_dir / "fingerprint.json"


@dataclass(frozen=True)
class TrainRunLayout:
    """Every path of one training run folder (``runs/<train.name>/``)."""

    folder: Path
    """The run folder."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "folder", Path(self.folder))

    @property
    def resolved_recipe(self) -> Path:
        """The resolved ``[train]`` config, the recipe and the world size, written when the run starts."""
        return self.folder / "recipe.resolved.json"

    @property
    def metrics(self) -> Path:
        """One JSON line per logged step."""
        return self.folder / "metrics.jsonl"

    @property
    def tensorboard(self) -> Path:
        return self.folder / "tensorboard"

    @property
    def samples(self) -> Path:
        """Where ``trainer sample`` writes edited videos by default."""
        return self.folder / "samples"

    @property
    def evaluation(self) -> EvalLayout:
        """Where ``trainer eval`` writes by default when it samples this run's checkpoint."""
        return EvalLayout(self.folder / "eval")

    def checkpoints(self, subfolder: str = "checkpoints") -> Path:
        """The checkpoint folder (``[train.checkpoint] folder``, relative to the run folder)."""
        return self.folder / subfolder

    @classmethod
    def containing(cls, path: str | Path) -> TrainRunLayout | None:
        """The training run that ``path`` (a run folder or a checkpoint inside one) belongs to, if any."""
        path = Path(path)
        for folder in (path, *path.parents):
            if cls(folder).resolved_recipe.exists():
                return cls(folder)
        return None


@dataclass(frozen=True)
class DiagnosisLayout:
    """The files of ``dataengine diagnose-layers`` (:mod:`dataengine.tools.layer_diagnosis`)."""

    folder: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "folder", Path(self.folder))

    @property
    def layers(self) -> Path:
        """Per hidden state: mean R_mask over clips and its companions."""
        return self.folder / "layers.parquet"

    @property
    def summary(self) -> Path:
        """The layer table, the picked pair, the model and the resolved config."""
        return self.folder / "layers.json"

    @property
    def clips(self) -> Path:
        """Per clip and hidden state."""
        return self.folder / "clips.parquet"

    @property
    def rejections(self) -> Path:
        return self.folder / "rejections.parquet"

    @property
    def plot(self) -> Path:
        """R_mask against depth (SVG)."""
        return self.folder / "r_mask.svg"


@dataclass(frozen=True)
class EvalLayout:
    """The files of ``trainer eval`` (:mod:`trainer.eval`)."""

    folder: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "folder", Path(self.folder))

    @property
    def scores(self) -> Path:
        """Per method and clip: the six dimensions and their mean."""
        return self.folder / "scores.parquet"

    @property
    def table(self) -> Path:
        """Means per method and subset, long form."""
        return self.folder / "table.parquet"

    @property
    def table_markdown(self) -> Path:
        """The means in the paper's layout."""
        return self.folder / "table.md"

    @property
    def rejections(self) -> Path:
        return self.folder / "rejections.parquet"

    @property
    def summary(self) -> Path:
        """Judge model, rubric version and digest, methods, counts, the table and the config."""
        return self.folder / "summary.json"

    def videos(self, method: str) -> Path:
        """Where a method sampled by the command (our checkpoint) writes ``<pair_id>.mp4``."""
        return self.folder / "videos" / method

    # the OpenVE-Bench-style protocol (``[eval.bench]``, :mod:`trainer.openve_bench`)
    @property
    def bench_scores(self) -> Path:
        """Per method and clip: the three axes (capped, and as the judge gave them) and the sample's mean."""
        return self.folder / "bench_scores.parquet"

    @property
    def bench_table(self) -> Path:
        """Means per method and category, and overall, long form."""
        return self.folder / "bench_table.parquet"

    @property
    def bench_table_markdown(self) -> Path:
        """The benchmark-style table with the published reference rows."""
        return self.folder / "bench_table.md"

    @property
    def bench_rejections(self) -> Path:
        return self.folder / "bench_rejections.parquet"

    @property
    def bench_summary(self) -> Path:
        """Judge, rubric, mode, cap rule, methods, categories, counts, the table and the reference rows."""
        return self.folder / "bench_summary.json"

    def bench_videos(self, method: str) -> Path:
        """Where our checkpoint's edits of the benchmark's pairs go."""
        return self.folder / "bench_videos" / method
