"""Helpers shared by the tests: the repository root, the environment of a CLI subprocess, and waiting for a
job's own parts before killing it (a kill chosen by what the job has done, never by a sleep)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of a ``dataengine`` / ``trainer`` subprocess: this checkout importable, offline, quiet.

    ``extra`` overrides or adds variables (e.g. ``OMP_NUM_THREADS="1"``, ``RAY_ADDRESS=...``); a value of
    ``""`` removes the variable. ``RANK`` and ``WORLD_SIZE`` are dropped so a subprocess never believes it is a
    rank of the test's own launch.
    """
    env = dict(os.environ)
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        RAY_USAGE_STATS_ENABLED="0",
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
    )
    for key, value in extra.items():
        if value == "":
            env.pop(key, None)
        else:
            env[key] = value
    return env


def dataengine(*args: str) -> list[str]:
    """The ``dataengine`` command line as a subprocess runs it (this interpreter, this checkout)."""
    return [sys.executable, "-m", "pipelines.cli", *args]


def trainer(*args: str) -> list[str]:
    """The ``trainer`` command line as a subprocess runs it."""
    return [sys.executable, "-m", "trainer.cli", *args]


def run_cli(
    command: Sequence[str], cwd: Path | str = REPO, timeout: float = 900, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run a CLI subprocess to its end and assert it succeeded (its output's tail in the message)."""
    Path(cwd).mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        list(command), cwd=cwd, env=env or cli_env(), capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, (
        f"{' '.join(command)} exited {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result


def kill_when(
    process: subprocess.Popen, ready: Callable[[], bool], timeout: float = 600, poll: float = 0.05
) -> None:
    """SIGKILL ``process`` (and its process group when it leads one) as soon as ``ready()`` holds.

    ``ready`` looks at the job's own outputs (e.g. the part store holds k finished parts), so the kill lands
    at the same point of the job on a fast or a slow machine. Fails if the job ends first or never gets
    there within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None:
            out = process.stdout.read() if process.stdout else ""
            err = process.stderr.read() if process.stderr else ""
            raise AssertionError(
                f"the job ended (exit {process.returncode}) before the kill point\n{out}\n{err}"
            )
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"the job did not reach the kill point in {timeout} s")
        time.sleep(poll)  # polling the job's outputs, not waiting for a guessed moment
    kill_group(process)
    process.wait()


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL ``process``, and its process group when it leads one (its own subprocesses); gone already is fine."""
    try:
        if os.getpgid(process.pid) == process.pid:
            os.killpg(process.pid, signal.SIGKILL)
        else:
            process.kill()
    except ProcessLookupError:
        pass


def copy_output(source: Path, destination: Path) -> Path:
    """A writable copy of a session fixture's output, for a test that changes it (the fixture's stays as is)."""
    shutil.copytree(source, destination, symlinks=True)
    return destination


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (from /proc): torchrun starts its workers in sessions of their own."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    tree, stack = [], [pid]
    while stack:
        tree.append(stack.pop())
        stack.extend(children.get(tree[-1], []))
    return tree
