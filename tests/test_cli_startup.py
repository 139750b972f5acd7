"""The two commands start fast: ``dataengine --help`` and ``trainer --help`` list every command without
importing pandas, torch or ray (each command's module loads when that command runs)."""

from __future__ import annotations

import importlib
import inspect
import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from pipelines.cli import COMMANDS, app, command_help, load_command
from tests.helpers import REPO, cli_env

HEAVY = ("pandas", "pyarrow", "torch", "ray", "transformers", "diffusers")


def test_the_listing_names_every_command_with_its_docstring():
    result = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    for name, (module, function) in COMMANDS.items():
        doc = inspect.getdoc(getattr(importlib.import_module(module), function))
        assert command_help(name) == doc
        assert name in result.output
        assert doc.split("\n\n")[0].split()[0] in result.output


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_command_loads_with_its_options(name):
    module, function = COMMANDS[name]
    command = load_command(name)
    assert command.name == name
    expected = [p for p in inspect.signature(getattr(importlib.import_module(module), function)).parameters]
    assert [p.name for p in command.params] == expected
    result = CliRunner().invoke(app, [name, "--help"], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    assert f"dataengine {name}" in result.output


def test_an_unknown_command_is_refused():
    result = CliRunner().invoke(app, ["filtr"])
    assert result.exit_code == 2
    assert "filtr" in result.output


@pytest.mark.process
@pytest.mark.parametrize("module", ["pipelines.cli", "trainer.cli"])
def test_help_imports_no_heavy_library(module):
    probe = (
        "import sys, runpy\n"
        f"sys.argv = ['x', '--help']\n"
        "try:\n"
        f"    runpy.run_module({module!r}, run_name='__main__')\n"
        "except SystemExit as exit:\n"
        "    assert exit.code in (0, None), exit.code\n"
        f"print('LOADED=' + __import__('json').dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, env=cli_env(COLUMNS="200"), capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Usage" in run.stdout
    loaded = json.loads(run.stdout.rsplit("LOADED=", 1)[1])
    assert loaded == []
