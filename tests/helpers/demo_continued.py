"""The rest of the demo run through ``dataengine reproduce`` (verify, plan, fit, sample, diagnose-layers, eval,
report) in the session demo run's folder, killed at a step boundary and in the middle of ``fit``, then rerun to
the end. conftest.py starts it in a background thread as soon as ``demo_run`` is finished (when a selected test
uses ``demo_continued``); tests/test_reproduce.py checks what it recorded."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers import REPO, cli_env, dataengine, kill_when

DEMO_DATA_STEPS = ("filter", "harvest-portraits", "synth-portraits", "shards")
DEMO_STEPS = (*DEMO_DATA_STEPS, "verify", "plan", "fit", "sample", "diagnose-layers", "eval", "report")


@dataclass
class DemoContinued:
    root: Path  # the demo run's folder
    records: Path  # manifests/demo/reproduce
    data_records: dict[str, str]  # the data steps' records before the continuation
    verify_record: str = ""  # verify's record when the first run was killed after it
    fit_record_at_kill: bool = False  # whether fit had a record when it was killed mid-step
    final: subprocess.CompletedProcess | None = None  # the rerun to the end
    extra: dict = field(default_factory=dict)


def continue_demo(demo_run, wan: Path) -> DemoContinued:
    import pandas as pd

    from dataengine.synthetic.openve_bench import build_bench_demo

    root = demo_run.root
    records = root / "manifests" / "demo" / "reproduce"
    done = DemoContinued(
        root, records, {name: (records / f"{name}.json").read_text() for name in DEMO_DATA_STEPS}
    )
    shutil.copy(REPO / "manifests" / "diagnose_demo.csv", root / "manifests" / "diagnose_demo.csv")
    bench = build_bench_demo(
        root / "demo_data" / "openve_bench", demo_run.data / "openve/csv", demo_run.data / "openve/videos"
    )
    pairs = pd.read_csv(bench / "pairs.csv")
    pairs.head(2).to_csv(bench / "pairs.csv", index=False)  # two benchmark pairs are enough here
    command = dataengine(
        "reproduce", str(demo_run.recipe), *demo_run.overrides, "--train", str(REPO / "manifests" / "train_debug.toml"),
        f"train.init={wan}", "train.steps=4", "train.checkpoint.every_steps=2", "train.checkpoint.keep_last=2",
        "--steps", ",".join(DEMO_STEPS),
    )  # fmt: skip
    env = cli_env(RAY_ADDRESS=demo_run.ray_address, OMP_NUM_THREADS="1")

    def start() -> subprocess.Popen:
        return subprocess.Popen(
            command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )  # fmt: skip

    # 1. at the boundary after verify; 2. in the middle of fit, once its first checkpoint is written
    kill_when(start(), lambda: (records / "verify.json").exists())
    done.verify_record = (records / "verify.json").read_text()
    first_checkpoint = root / "runs" / "debug" / "checkpoints" / "step-00000002" / ".metadata"
    kill_when(start(), lambda: first_checkpoint.exists())
    done.fit_record_at_kill = (records / "fit.json").exists()
    # 3. to the end
    done.final = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=1800)
    return done
