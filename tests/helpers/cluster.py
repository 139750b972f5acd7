"""The two-node Ray cluster of tests/test_ray_cluster.py and the demo recipe's data jobs run on it, each but
harvest-portraits SIGKILLed once at its first recorded part and run again to the end (``run_cluster_chain``).

conftest.py starts the chain in a background thread as soon as the session's ``demo_run`` is finished, so it runs
beside the other tests; the cluster's tests run last and check what it recorded (tests/test_ray_cluster.py's
docstring says what is run and why).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from tests.helpers import kill_when

BIN = Path(sys.executable).parent  # the environment's console scripts: dataengine, ray
JOB_TIMEOUT_S = 300
START_TIMEOUT_S = 90
STOP_GRACE_S = 5
NODE2_RESOURCE = "mive_node2"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class TwoNodeCluster:
    """A head node and a worker node, each a ``ray start --block`` process of this test."""

    def __init__(self) -> None:
        # Ray puts Unix sockets under its temporary folder: the path must stay short (108 bytes in all).
        self.temp_dir = Path(tempfile.mkdtemp(prefix="mive-ray-", dir="/tmp"))
        token = self.temp_dir / "auth_token"
        token.write_text(secrets.token_hex(32))
        self.token = str(token)
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_") and k != "PYTHONPATH"}
        self.env = {
            **env,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(token),
            "RAY_USAGE_STATS_ENABLED": "0",
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
        self.nodes: list[subprocess.Popen] = []

    def _start(self, name: str, *args: str) -> None:
        log = self.temp_dir / f"{name}.log"
        with log.open("w") as out:
            node = subprocess.Popen(
                [str(BIN / "ray"), "start", "--block", "--disable-usage-stats", *args],
                cwd=self.temp_dir,  # not the repository: the nodes import the installed package
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.nodes.append(node)
        deadline = time.monotonic() + START_TIMEOUT_S
        while "block forever" not in log.read_text():
            if node.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray start ({name}) failed or hung:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)

    def start(self) -> None:
        store = str(256 * 1024 * 1024)
        self._start(
            "head",
            "--head",
            f"--port={self.port}",
            "--num-cpus=2",
            f"--object-store-memory={store}",
            "--include-dashboard=false",
            f"--dashboard-agent-listen-port={_free_port()}",
            f"--temp-dir={self.temp_dir}",
        )
        self._start(
            "node2",
            f"--address={self.address}",
            "--num-cpus=2",
            f"--resources={json.dumps({NODE2_RESOURCE: 4})}",
            f"--object-store-memory={store}",
            f"--dashboard-agent-listen-port={_free_port()}",
        )

    def stop(self) -> None:
        for node in reversed(self.nodes):
            if node.poll() is None:
                node.send_signal(signal.SIGTERM)
        for node in self.nodes:
            try:
                # after a job has run, the head's `ray start --block` was seen to take more than 30 s to end on
                # SIGTERM: a short grace, then SIGKILL, and every process left is killed by pid below
                node.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                node.kill()
                node.wait()
        for pid in self.leftovers():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        # a SIGKILL is delivered, not waited for: a process with a large address space takes a moment to go
        deadline = time.monotonic() + 10
        while self.leftovers() and time.monotonic() < deadline:
            time.sleep(0.1)
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def leftovers(self) -> list[int]:
        """Processes that carry this cluster's token path in their environment: Ray's, started for this test
        (by the nodes, or by a job's own local Ray). Ray renames its agents ("ray::DashboardAgent") over their
        command line and environment, so the raw ``/proc/<pid>/environ`` is searched, not a parsed one."""
        marker = f"RAY_AUTH_TOKEN_PATH={self.token}\0".encode()
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                try:
                    if marker in (entry / "environ").read_bytes():
                        found.append(int(entry.name))
                except OSError:
                    pass
        return found


# The demo recipe's four data jobs, in order; the stage of each pinned to the second node by its custom resource,
# and the part each killed job must have written before its SIGKILL (a path pattern under the working folder).
JOBS = ("filter", "harvest-portraits", "synth-portraits", "shards")
PINNED = {"filter": "score", "harvest-portraits": "harvest", "synth-portraits": "composite", "shards": "vae"}
PLACEMENT = {
    "filter": f"filter.resources.placement.score={{{NODE2_RESOURCE} = 1}}",
    "harvest-portraits": f"portraits.resources.placement.harvest={{{NODE2_RESOURCE} = 1}}",
    "synth-portraits": f"portraits.resources.placement.composite={{{NODE2_RESOURCE} = 1}}",
    "shards": f"shards.resources.placement.vae={{{NODE2_RESOURCE} = 1}}",
}
KILL_AT = {  # the job's first recorded part: a kill there lands mid-run (the demo's jobs write several)
    "filter": "manifests/demo/scores/part-*.parquet",
    "synth-portraits": "manifests/demo/.portraits/pairs/part-*.parquet",
    "shards": "shards/demo/.parts/part-*.parquet",  # the local staging folder of a shard set written to a URL
}


@dataclass
class ClusterChain:
    """The demo recipe's data jobs on the two-node cluster, each but harvest-portraits SIGKILLed once at its first
    recorded part and run again to the end (harvest-portraits' own kill-resume is in tests/test_harvest.py)."""

    root: Path  # the working folder: manifests/demo/, portrait_pairs/, shards/demo/ (staging), bucket/
    shards_url: str  # where the shard set went (a file:// URL: staged, uploaded, deleted locally)
    stdout: dict[str, str]  # each job's printed output (of the run to the end)
    killed: dict[str, dict]  # what each killed job had left at its kill
    seconds: dict[str, float]
    leftovers: list[int]  # Ray processes of the cluster left after it stopped


def _cluster_recipe(demo_run, root: Path) -> Path:
    """The demo run's recipe with its outputs under ``root``: the same inputs and models (absolute paths)."""
    text = demo_run.recipe.read_text()
    for old, new in [
        (f'"{demo_run.root}/demo_data/portrait_pairs"', f'"{root}/portrait_pairs"'),
        (f'"{demo_run.root}/manifests', f'"{root}/manifests'),
    ]:
        assert old in text, old
        text = text.replace(old, new)
    recipe = root / "cluster.toml"
    recipe.write_text(text)
    return recipe


def _killed_state(job: str, root: Path, shards: Path) -> dict:
    """What a job had recorded when it was killed (the resume must keep it as it is)."""
    run = root / "manifests" / "demo"
    if job == "filter":
        return {"parts": score_parts(run / "scores"), "summary": (run / "summary.json").exists()}
    if job == "synth-portraits":
        parts = list((run / ".portraits" / "pairs").glob("part-*.parquet"))
        return {
            "num_done": len(pd.concat([pd.read_parquet(p) for p in parts])),
            "manifest": (run / "portraits.parquet").exists(),
        }
    staging = root / "shards" / "demo" / ".parts"
    done = sorted(p.relative_to(shards).as_posix() for p in shards.rglob("shard-*.tar"))
    return {
        "index": (shards / "index.json").exists(),
        "num_records": len(list(staging.glob("part-*.parquet"))),
        "stamps": {p: (shards / p).stat().st_mtime_ns for p in done},
        "recorded": {json.loads(e)["path"] for e in pd.read_parquet(staging)["entry"] if e},
    }


def score_parts(folder: Path) -> dict[str, list[str]]:
    """Each score part's pair ids, by part file name."""
    return {
        p.name: pq.read_table(p, columns=["pair_id"]).column(0).to_pylist()
        for p in sorted(folder.glob("part-*.parquet"))
    }


def run_cluster_chain(demo_run, root: Path) -> ClusterChain:
    """Start the two nodes once; run the demo's four data jobs against them from the ``dataengine`` console script,
    on the session demo run's inputs (its shards job on the demo run's manifests, so the shard set must be the
    demo run's byte for byte), killing filter, synth-portraits and shards once each; stop the nodes."""
    root.mkdir(parents=True, exist_ok=True)
    recipe = _cluster_recipe(demo_run, root)
    bucket = root / "bucket" / "shards" / "demo"
    shards_url = f"file://{bucket}"
    inputs = json.dumps(
        [str(demo_run.manifests / "openve.parquet"), str(demo_run.manifests / "portraits.parquet")]
    )
    extra = {"shards": [f"shards.inputs={inputs}", f'shards.output="{shards_url}"']}
    cluster = TwoNodeCluster()
    stdout, killed, seconds = {}, {}, {}
    try:
        cluster.start()
        for job in JOBS:
            command = [str(BIN / "dataengine"), job, str(recipe), PLACEMENT[job], *extra.get(job, []),
                       "--ray-address", cluster.address]  # fmt: skip
            started = time.monotonic()
            if job in KILL_AT:
                log = root / f"{job}.killed.log"
                with log.open("w") as out:
                    process = subprocess.Popen(
                        command, cwd=root, env=cluster.env, stdout=out, stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )  # fmt: skip
                try:
                    kill_when(process, lambda job=job: any(root.glob(KILL_AT[job])), timeout=JOB_TIMEOUT_S)
                except AssertionError as err:
                    raise AssertionError(f"{job}: {err}\n{log.read_text()[-3000:]}") from None
                killed[job] = _killed_state(job, root, bucket)
            result = subprocess.run(
                command, cwd=root, env=cluster.env, capture_output=True, text=True, timeout=JOB_TIMEOUT_S
            )
            assert result.returncode == 0, f"{job}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            stdout[job], seconds[job] = result.stdout, round(time.monotonic() - started, 1)
    finally:
        cluster.stop()
    return ClusterChain(root, shards_url, stdout, killed, seconds, cluster.leftovers())
