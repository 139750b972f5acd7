"""What must not depend on the number of processes, checked inside tests/sequence_parallel_worker.py's one
``torchrun`` launch of 4 gloo ranks (``world_size_checks``: every rank reports its results; the test compares):

- ``sp_check``: ``trainer.parallel.check_same_samples`` on equal and on different batches, and a
  ``train`` whose SP ranks are handed different samples (the loader given the process rank): it must stop
  at its first micro-batch, before the forward, with the error, on every rank.
- ``load``: each rank's host peak while reading a wide checkpoint (DCP and exported folder) into bfloat16
  (the sampling path), and, as a control, into float32.

(The losses and grad norms of 2 data-parallel ranks at batch 1 and of one sequence-parallel group of 2 at batch 2
against one process at batch 2, from Wan weights: tests/test_train.py's ``trainer fit`` runs.)
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist

from dataengine.formats.recipe import load_recipe
from trainer import model as model_module
from trainer.model import MiVEConfig
from trainer.parallel import (
    ParallelConfig,
    check_same_samples,
    init_distributed,
    sample_check_group,
)
from trainer.train import train, train_config_from_recipe


def host_peak_bytes(function) -> int:  # noqa: ANN001
    """The peak resident set (VmHWM, reset through /proc/self/clear_refs) while ``function`` runs, above
    the resident set before it. Freed memory the allocator kept is given back first (``malloc_trim``), so
    that reusing it cannot hide an allocation."""
    import ctypes
    import gc

    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")

    def status(key: str) -> int:
        line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(key))
        return int(line.split()[1]) * 1024

    before = status("VmRSS:")
    result = function()
    peak = status("VmHWM:")
    del result
    return peak - before


def run_fit_with_loader(args: dict, name: str, sequence_parallel: int, batch_size: int, loader) -> None:  # noqa: ANN001
    """``trainer.train.train`` (``trainer fit``'s production path; the group exists) from the tiny Wan folder, with
    ``loader`` in place of ``trainer.train.ShardLoader``."""
    import trainer.train

    overrides = [
        f'train.data.shards="{args["shards"]}"',
        f'train.runs_dir="{args["runs"]}"',
        f'train.name="{name}"',
        f"train.steps={args['steps']}",
        f"train.data.batch_size={batch_size}",
        "train.checkpoint.every_steps=0",
        f'train.init="{args["wan"]}"',
        f"train.parallel.sequence_parallel={sequence_parallel}",
    ]
    recipe = load_recipe(args["recipe"], overrides)
    config = train_config_from_recipe(recipe)
    runtime = init_distributed(config.parallel)  # the group exists: only the (dp, sp) mesh is made
    original, trainer.train.ShardLoader = trainer.train.ShardLoader, loader
    try:
        train(config, runtime, Path(config.runs_dir) / config.name, False, recipe)
    finally:
        trainer.train.ShardLoader = original
    dist.barrier()


def world_size_checks(args: dict) -> dict:
    """Every check of this module on this rank (the process group exists); ``args`` as the test writes it."""
    rank = dist.get_rank()
    results: dict = {"rank": rank}

    # 1. the SP group's samples are compared at every micro-batch
    def outcome(group, keys: list[str]) -> str | None:  # noqa: ANN001
        try:
            check_same_samples(group, keys, "check")
        except RuntimeError as err:
            return str(err)
        return None

    no_sp = init_distributed(ParallelConfig())
    sp2 = init_distributed(ParallelConfig(sequence_parallel=2))
    check = {
        "no_sp_group": sample_check_group(no_sp) is None,
        "same": outcome(sample_check_group(sp2), ["a/0", "b/1"]),
        "different": outcome(sample_check_group(sp2), ["a/0", f"b/{rank}"]),
    }
    from trainer.data import ShardLoader

    def wrong_loader(data, seed, dp_rank, dp_size):  # noqa: ANN001
        return ShardLoader(data, seed, dist.get_rank(), dist.get_world_size())  # the process rank: wrong

    try:
        run_fit_with_loader(args, "sp2_wrong_data", 2, 1, wrong_loader)
        check["error"] = None
    except RuntimeError as err:
        check["error"] = str(err)
    results["sp_check"] = check

    # 2. host peak of each rank while reading the wide checkpoint (the sampling path)
    from trainer.sample import load_checkpoint

    model_module.CONFIGS["wide_test"] = MiVEConfig(**args["wide_config"])
    results["load"] = {}
    for kind in ("dcp", "export"):
        path = args[kind]
        for dtype in (torch.bfloat16, torch.float32):
            dist.barrier()  # one rank's reading does not overlap the other's measurement start
            peak = host_peak_bytes(lambda path=path, dtype=dtype: load_checkpoint(path, "cpu", dtype))
            results["load"][f"{kind}_{str(dtype).removeprefix('torch.')}"] = peak

    return results
