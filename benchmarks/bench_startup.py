"""Start-up cost: what every command, Ray worker and test subprocess pays before it does any work.

Each row is the median wall time of a fresh Python process (the environment's interpreter, this checkout):
``dataengine --help`` and ``trainer --help`` (target: under 2 s; they import no torch, pandas or ray, see
tests/test_cli_startup.py), then the imports the jobs' processes pay: torch, the Qwen3-VL module (judge, VLM
encoder; it pulls torchvision and so ``torch._dynamo``), the Wan VAE module of diffusers, open_clip, and the
trainer. The installed packages are compiled to bytecode at install (``[tool.uv] compile-bytecode``): without
that, an environment that never writes ``.pyc`` files (``PYTHONDONTWRITEBYTECODE``, a read-only image) compiles
torch and transformers from source in every process, two to three times these figures.

``python -m benchmarks.run startup`` (``--quick``: one run each instead of three).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMANDS = {
    "dataengine --help": ["-m", "pipelines.cli", "--help"],
    "trainer --help": ["-m", "trainer.cli", "--help"],
}
IMPORTS = {
    "import torch": "torch",
    "import the Qwen3-VL module": "transformers.models.qwen3_vl.modeling_qwen3_vl",
    "import diffusers' Wan VAE": "diffusers.models.autoencoders.autoencoder_kl_wan",
    "import open_clip": "open_clip",
    "import trainer.train": "trainer.train",
}
TARGETS = {"dataengine --help": 2.0, "trainer --help": 2.0}


def _seconds(args: list[str], repeats: int, env: dict[str, str] | None = None) -> float:
    """The median wall time of ``python <args>`` in a fresh process, run ``repeats`` times."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, *args], cwd=REPO, check=True, capture_output=True, env=env)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(quick: bool = False) -> list[dict]:
    repeats = 1 if quick else 3
    rows = []
    for metric, args in [*COMMANDS.items(), *((m, ["-c", f"import {mod}"]) for m, mod in IMPORTS.items())]:
        value = _seconds(args, repeats)
        target = TARGETS.get(metric)
        note = (
            f"target < {target:g} s: {'met' if value < target else 'MISSED'}" if target else "a fresh process"
        )
        rows.append({"benchmark": "startup", "metric": metric, "value": value, "unit": "s", "note": note})
    # the same import where no bytecode can be read or written: an empty cache folder, nothing written to it
    with tempfile.TemporaryDirectory() as empty:
        env = {**os.environ, "PYTHONPYCACHEPREFIX": empty, "PYTHONDONTWRITEBYTECODE": "1"}
        module = IMPORTS["import the Qwen3-VL module"]
        value = _seconds(["-c", f"import {module}"], repeats, env)
    note = "what every process paid before the install compiled the packages"
    rows.append({"benchmark": "startup", "metric": "the Qwen3-VL module without bytecode", "value": value,
                 "unit": "s", "note": note})  # fmt: skip
    return rows


if __name__ == "__main__":
    from benchmarks.run import format_table

    print(format_table(run(quick="--quick" in sys.argv)))
