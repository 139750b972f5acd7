"""``dataengine reproduce``: the run's steps and their commands from the recipes, the up-front projection
against arithmetic done here, completeness by record, fingerprint and outputs; then real runs of the command
on steps of a recipe's own (cheap subprocesses): killed at a step boundary and mid-step and rerun, the outputs
equal an uninterrupted run's and no finished step is redone; a failing step stops the run with the command that
reruns it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.reproduce import (
    command_line,
    plan_run,
    read_bench,
    record_path,
    select_steps,
    status,
    write_record,
)
from tests.helpers import REPO, cli_env, dataengine, kill_when
from tests.helpers.demo_continued import DEMO_DATA_STEPS, DEMO_STEPS

OPENVE = str(REPO / "manifests" / "openve.toml")
TRAIN_14B = str(REPO / "manifests" / "train_mive_14b.toml")
DEMO = str(REPO / "manifests" / "demo.toml")
TRAIN_DEBUG = str(REPO / "manifests" / "train_debug.toml")


def names(plan) -> list[str]:
    return [s.name for s in plan.steps]


def test_the_paper_run_steps_commands_and_projection():
    plan = plan_run(OPENVE, TRAIN_14B, [], gpus_per_node=8)
    assert names(plan) == [
        "filter", "harvest-portraits", "synth-portraits", "shards", "verify", "plan", "fit", "report",
    ]  # fmt: skip
    step = {s.name: s for s in plan.steps}
    assert step["filter"].argv == ["dataengine", "filter", OPENVE]
    assert step["filter"].outputs == ["manifests/openve/openve.parquet"]
    assert step["shards"].outputs == ["shards/openve/index.json"]
    assert step["fit"].argv == [
        "torchrun", "--standalone", "--nproc-per-node=8", "-m", "trainer.cli", "fit", TRAIN_14B, "--resume",
    ]  # fmt: skip
    assert step["fit"].outputs == ["runs/mive_14b/checkpoints/step-00008000"]
    assert step["plan"].argv[-2:] == ["--gpus", "8"]
    assert {s.name for s in plan.steps if s.ray} == {
        "filter",
        "harvest-portraits",
        "synth-portraits",
        "shards",
    }

    # the recipe's stated assumptions, by hand: GPU-s per item x items / 3600
    hours = {s.name: s.projection.gpu_hours for s in plan.steps}
    assert hours["filter"] == pytest.approx(2_450_000 * 0.11 / 3600)
    assert hours["synth-portraits"] == pytest.approx(3 * 2000 * 3.0 / 3600)  # 3 edit types x pairs_per_type
    assert hours["shards"] == pytest.approx((6 * 4000 + 6000) * 40.0 / 3600)  # the filter's cap + portraits
    # 8000 steps x (8 GPUs / SP 2) x batch 1 x accumulation 2 samples at the paper's 520 GPU-h / 64,000 samples
    assert hours["fit"] == pytest.approx(520.0)
    assert hours["verify"] == hours["plan"] == hours["report"] == 0
    assert step["fit"].projection.source.startswith("assumed: the paper")

    # a bench_gpu.json's measured per-item seconds replace the assumptions, labelled as measured
    bench = {"device": "NVIDIA H200", "date": "2026-12-03", "rows": [
        {"benchmark": "projection", "step": "filter", "gpu_seconds_each": 0.05},
        {"benchmark": "projection", "step": "fit", "gpu_seconds_each": 20.0},
    ]}  # fmt: skip
    measured = {
        s.name: s.projection for s in plan_run(OPENVE, TRAIN_14B, [], gpus_per_node=8, bench=bench).steps
    }
    assert measured["filter"].gpu_hours == pytest.approx(2_450_000 * 0.05 / 3600)
    assert measured["fit"].gpu_hours == pytest.approx(64_000 * 20.0 / 3600)
    assert measured["filter"].source.startswith("measured: bench_gpu.json (NVIDIA H200, 2026-12-03)")
    assert measured["shards"].source.startswith("assumed")  # not in the bench: still the recipe's

    # 16 GPUs double the samples of the same 8000 steps (8 replicas x 2 accumulation)
    two_nodes = plan_run(OPENVE, TRAIN_14B, [], nodes=2, gpus_per_node=8, rdzv_endpoint="head:29500")
    fit = next(s for s in two_nodes.steps if s.name == "fit")
    assert fit.projection.gpu_hours == pytest.approx(1040.0)
    assert fit.argv == [] and fit.wait_for == "runs/mive_14b/checkpoints/step-00008000"
    assert fit.per_node == [
        "torchrun --nnodes=2 --nproc-per-node=8 --rdzv-backend=c10d --rdzv-endpoint=head:29500 "
        f"--rdzv-id=train_mive_14b -m trainer.cli fit {TRAIN_14B} --resume"
    ]
    with pytest.raises(ValueError, match="--rdzv-endpoint"):
        plan_run(OPENVE, TRAIN_14B, [], nodes=2, gpus_per_node=8)


def test_the_demo_run_steps_and_overrides():
    plan = plan_run(DEMO, TRAIN_DEBUG, ["train.init=demo_data/models/wan", "filter.selection.threshold=3.0"])
    assert names(plan) == [
        "demo-data", "filter", "harvest-portraits", "synth-portraits", "synth-portraits-sam2", "shards", "verify",
        "plan", "fit", "sample", "diagnose-layers", "eval", "report",
    ]  # fmt: skip
    step = {s.name: s for s in plan.steps}
    assert step["fit"].argv == ["trainer", "fit", TRAIN_DEBUG, "train.init=demo_data/models/wan", "--resume"]
    assert step["filter"].argv == ["dataengine", "filter", DEMO, "filter.selection.threshold=3.0"]
    assert step["synth-portraits-sam2"].argv[:4] == ["dataengine", "synth-portraits", DEMO, "run=demo_sam2"]
    assert step["synth-portraits-sam2"].ray and not step["demo-data"].ray
    assert step["eval"].argv[:3] == ["trainer", "eval", DEMO]
    assert step["eval"].outputs == ["runs/debug/eval/summary.json"]
    assert all(s.projection.gpu_hours == 0 for s in plan.steps)  # the demo: CPU
    assert select_steps(plan, None, "verify", "fit") == ["verify", "plan", "fit"]
    assert select_steps(plan, ["report", "filter"], None, None) == ["filter", "report"]
    with pytest.raises(ValueError, match="no step 'fitt'"):
        select_steps(plan, None, None, "fitt")


def test_complete_means_record_fingerprint_and_outputs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    plan = plan_run(DEMO, TRAIN_DEBUG, [])
    step = {s.name: s for s in plan.steps}
    assert all(status(plan, s) == "to run" for s in plan.steps)
    filter_step = step["filter"]
    write_record(plan, filter_step, filter_step.argv, 0.0)
    assert status(plan, filter_step) == "outputs missing"
    Path(filter_step.outputs[0]).parent.mkdir(parents=True, exist_ok=True)
    Path(filter_step.outputs[0]).write_text("x")
    assert status(plan, filter_step) == "done"
    assert json.loads(record_path(plan, filter_step).read_text())["command"] == command_line(filter_step.argv)

    # another filter setting: the filter and every step after it are stale, demo-data (before it) is not
    changed = plan_run(DEMO, TRAIN_DEBUG, ["filter.selection.threshold=3.0"])
    before, after = (
        {s.name: s.fingerprint for s in plan.steps},
        {s.name: s.fingerprint for s in changed.steps},
    )
    assert before["demo-data"] == after["demo-data"]
    assert all(before[n] != after[n] for n in names(plan)[1:])
    assert status(changed, next(s for s in changed.steps if s.name == "filter")) == "stale"
    # a training override leaves the data steps alone
    trained = {s.name: s.fingerprint for s in plan_run(DEMO, TRAIN_DEBUG, ["train.steps=4"]).steps}
    assert [n for n in names(plan) if trained[n] != before[n]] == names(plan)[names(plan).index("plan") :]

    with pytest.raises(ValueError, match="bench_gpu.json"):
        read_bench(tmp_path / "missing.json")


STEP_SCRIPT = """
import sys, pathlib
name, gate = sys.argv[1], pathlib.Path(sys.argv[2]) if len(sys.argv) > 2 else None
out = pathlib.Path("out")
out.mkdir(exist_ok=True)
with open(out / "started.log", "a") as log:
    log.write(name + "\\n")
(out / f"{name}.partial").write_text("half")
if gate is not None:
    import time
    while not gate.exists():  # the step's own work, held until the test opens the gate
        time.sleep(0.02)
    if gate.read_text() == "fail":
        sys.exit(3)
(out / f"{name}.txt").write_text(f"{name} done\\n")
(out / f"{name}.partial").unlink()
"""


def _recipe(folder: Path, gate: Path) -> Path:
    """A data recipe with three steps of its own: ``one``, ``two`` (held by ``gate``), ``three``."""
    script = folder / "step.py"
    script.write_text(STEP_SCRIPT)
    steps = []
    for name, extra in (("one", []), ("two", [str(gate)]), ("three", [])):
        command = json.dumps([sys.executable, str(script), name, *extra])
        steps.append(
            f'[[reproduce.steps]]\nname = "{name}"\ncommand = {command}\noutputs = ["out/{name}.txt"]\n'
        )
    recipe = folder / "steps.toml"
    recipe.write_text('run = "steps"\n\n' + "\n".join(steps))
    return recipe


def _reproduce(folder: Path, recipe: Path) -> list[str]:
    return dataengine("reproduce", str(recipe), "--steps", "one,two,three")


def _started(folder: Path) -> list[str]:
    log = folder / "out" / "started.log"
    return log.read_text().split() if log.exists() else []


@pytest.mark.process
def test_killed_at_a_boundary_and_mid_step_then_rerun(tmp_path):
    # the uninterrupted run: the reference outputs
    clean = tmp_path / "clean"
    clean.mkdir()
    (clean / "gate").write_text("go")
    done = subprocess.run(
        _reproduce(clean, _recipe(clean, clean / "gate")),
        cwd=clean,
        env=cli_env(),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert _started(clean) == ["one", "two", "three"]

    work = tmp_path / "work"
    work.mkdir()
    gate = work / "gate"
    recipe = _recipe(work, gate)
    records = work / "manifests" / "steps" / "reproduce"

    def start() -> subprocess.Popen:
        return subprocess.Popen(
            _reproduce(work, recipe), cwd=work, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, start_new_session=True,
        )  # fmt: skip

    # 1. killed at the boundary after `one`: its record is written, `two` has not done anything yet
    kill_when(start(), lambda: (records / "one.json").exists())
    one_record = (records / "one.json").read_text()
    # 2. killed in the middle of `two` (this run started it and its partial output is there; the gate is closed)
    before = _started(work).count("two")
    kill_when(
        start(), lambda: _started(work).count("two") > before and (work / "out" / "two.partial").exists()
    )
    assert not (records / "two.json").exists()
    # 3. the gate opens: the rerun finishes `two` and runs `three`; `one` is not redone
    gate.write_text("go")
    final = subprocess.run(_reproduce(work, recipe), cwd=work, env=cli_env(), capture_output=True, text=True)
    assert final.returncode == 0, final.stdout + final.stderr
    assert _started(work).count("one") == 1
    assert _started(work)[-2:] == ["two", "three"] and _started(work).count("three") == 1
    assert (records / "one.json").read_text() == one_record
    for name in ("one", "two", "three"):
        assert (work / "out" / f"{name}.txt").read_text() == (clean / "out" / f"{name}.txt").read_text()
        assert json.loads((records / f"{name}.json").read_text())["step"] == name
    assert re.search(r"^one +done", final.stdout, re.M) and re.search(r"^two +to run", final.stdout, re.M)

    # run again: everything is complete, nothing runs
    again = subprocess.run(_reproduce(work, recipe), cwd=work, env=cli_env(), capture_output=True, text=True)
    assert again.returncode == 0 and _started(work).count("three") == 1


@pytest.mark.process
def test_a_failing_step_stops_the_run_with_its_command(tmp_path):
    gate = tmp_path / "gate"
    gate.write_text("fail")
    recipe = _recipe(tmp_path, gate)
    env = cli_env()
    failed = subprocess.run(
        _reproduce(tmp_path, recipe), cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert failed.returncode == 3, failed.stdout + failed.stderr
    assert "two failed (exit 3)" in failed.stderr
    rerun = failed.stderr.split("Rerun that step alone:\n", 1)[1].splitlines()[0].strip()
    assert rerun == command_line([sys.executable, str(tmp_path / "step.py"), "two", str(gate)])
    assert _started(tmp_path) == ["one", "two"]
    assert (tmp_path / "manifests" / "steps" / "reproduce" / "two.log").exists()

    gate.write_text("go")  # fixed: the printed command reruns the step alone, then the whole run goes on
    alone = subprocess.run(rerun, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert alone.returncode == 0 and (tmp_path / "out" / "two.txt").exists()
    done = subprocess.run(_reproduce(tmp_path, recipe), cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    # `one` not redone; `two`, run alone outside the orchestrator, has no record: the run resumes it once more
    assert _started(tmp_path) == ["one", "two", "two", "two", "three"]
    assert os.path.exists(tmp_path / "out" / "three.txt")


@pytest.mark.process
@pytest.mark.fit
@pytest.mark.slow
def test_the_demo_end_to_end_killed_and_rerun(demo_continued):
    """The demo recipes through the one command: the session's ``demo_run`` ran the data steps through it; the
    rest of the run went on in the same folder (adding the training, evaluation and report beside the data
    outputs, which it must not touch), killed at a step boundary and in the middle of ``fit``, then rerun
    (tests/helpers/demo_continued.py, started in the background once ``demo_run`` was finished)."""
    done = demo_continued
    root, records, final = done.root, done.records, done.final
    data_records, verify_record = done.data_records, done.verify_record
    assert not done.fit_record_at_kill
    assert final.returncode == 0, final.stdout[-4000:] + final.stderr[-4000:]

    for name in DEMO_DATA_STEPS:  # finished before: not redone
        assert re.search(rf"^{name} +done", final.stdout, re.M), name
        assert (records / f"{name}.json").read_text() == data_records[name]
    assert (records / "verify.json").read_text() == verify_record
    assert re.search(r"^fit +to run", final.stdout, re.M)
    assert "resumed from" in (records / "fit.log").read_text()  # the killed fit went on from its checkpoint
    for name in DEMO_STEPS:
        assert json.loads((records / f"{name}.json").read_text())["step"] == name
    assert (root / "runs" / "debug" / "checkpoints" / "step-00000004" / ".metadata").exists()
    assert (root / "runs" / "debug" / "samples" / "edited.mp4").stat().st_size > 0
    evaluation = root / "runs" / "debug" / "eval"
    six = json.loads((evaluation / "summary.json").read_text())
    bench_summary = json.loads((evaluation / "bench_summary.json").read_text())
    assert "MiVE-debug" in six["methods"] and six["num_scored"] > 0
    assert bench_summary["methods"] == ["MiVE-debug", "no edit (source)", "generated target"]
    assert bench_summary["num_scored"] == 2 * 3
    report = (root / "manifests" / "demo" / "report.html").read_text()
    assert "six dimensions" in report and "OpenVE-Bench-style protocol" in report and "Runway Aleph" in report
