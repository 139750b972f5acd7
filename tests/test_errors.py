"""Exit codes that mean something: a user error (recipe, override, path, input) is one line and exit 2;
anything else (a bug inside a job, an out-of-memory, a model that cannot run) keeps its traceback and exits
non-zero; a job that measured nothing fails; each rejection reason says what happened."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from dataengine.formats.recipe import MissingInput, RecipeError, UserError, run_cli
from tests.helpers import REPO, cli_env

# A job whose work raises a genuine numpy ValueError (shapes that do not broadcast) inside dataengine.
INTERNAL_BUG = """
import sys
import numpy as np
import dataengine.tools.layer_diagnosis as diagnose

def run_diagnosis(*args, **kwargs):
    return np.zeros(2) + np.zeros(3)

diagnose.run_diagnosis = run_diagnosis
sys.argv = ["dataengine", "diagnose-layers", "manifests/demo.toml", "run=errors-test"]
from pipelines.cli import entry_point
entry_point()
"""


def test_user_errors_are_one_line_and_everything_else_raises(capsys):
    def raising(err: BaseException):
        def app() -> None:
            raise err

        return app

    for err in (
        UserError("recipe r.toml: x"),
        MissingInput("recipe not found: r.toml"),
        RecipeError(["a = 1"]),
    ):
        with pytest.raises(SystemExit) as caught:
            run_cli(raising(err))
        assert caught.value.code == 2
        assert capsys.readouterr().err.count("\n") == 1
    for err in (ValueError("operands could not be broadcast"), FileNotFoundError("libfoo.so"), KeyError("x")):
        with pytest.raises(type(err)):  # not a user error: the traceback reaches the interpreter (exit 1)
            run_cli(raising(err))
    assert issubclass(UserError, ValueError) and issubclass(MissingInput, FileNotFoundError)


@pytest.mark.process
def test_an_internal_value_error_inside_a_job_exits_1_with_a_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", INTERNAL_BUG],
        cwd=REPO,
        env=cli_env(MIVE_TRACEBACK=""),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" in result.stderr and "operands could not be broadcast" in result.stderr
    assert not any(line.startswith("error:") for line in result.stderr.splitlines())


def test_a_missing_recipe_and_a_bad_override_are_user_errors(tmp_path):
    from dataengine.formats.recipe import load_recipe

    with pytest.raises(MissingInput, match="recipe not found"):
        load_recipe(tmp_path / "nope.toml")
    (tmp_path / "r.toml").write_text("[a]\nb = 1\n")
    with pytest.raises(UserError, match="not of the form section.key=value"):
        load_recipe(tmp_path / "r.toml", ["a.b"])


# --------------------------------------------------------------------------------- diagnose-layers


def _clips(folder, with_masks: bool) -> str:
    from dataengine.media.video import write_mp4
    from dataengine.models.segment import save_masks
    from dataengine.synthetic.portraits import render_portrait

    frames, masks = render_portrait(seed=0, num_frames=9, height=96, width=128)
    write_mp4(folder / "clip0.mp4", frames, fps=8.0)
    if with_masks:
        save_masks(folder / "clip0.masks.npz", masks)
    pd.DataFrame({"source_path": ["clip0.mp4"], "instruction": ["Add a red hat to the person."]}).to_csv(
        folder / "clips.csv", index=False
    )
    return str(folder / "clips.csv")


def _diagnose(tmp_path, tiny_qwen3vl, clips: str):
    from typer.testing import CliRunner

    from pipelines.cli import app

    recipe = tmp_path / "recipe.toml"
    recipe.write_text(
        f'run = "diag"\n[diagnose]\nclips = "{clips}"\n[diagnose.vlm]\nmodel_id = "{tiny_qwen3vl}"\n'
        'video_min_pixels = 2048\nvideo_max_pixels = 49152\nvideo_fps = 4.0\ndtype = "float32"\n'
        'device = "cpu"\n[diagnose.segmenter]\nbackend = "mask_files"\n'
    )
    return CliRunner().invoke(app, ["diagnose-layers", str(recipe)])


def test_an_out_of_memory_in_diagnose_layers_stops_the_job(tmp_path, tiny_qwen3vl, monkeypatch):
    from dataengine.tools.layer_diagnosis import LayerDiagnostic

    monkeypatch.chdir(tmp_path)
    clips = _clips(tmp_path, with_masks=True)

    def out_of_memory(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(LayerDiagnostic, "forward", out_of_memory)
    result = _diagnose(tmp_path, tiny_qwen3vl, clips)
    assert result.exit_code != 0
    assert isinstance(result.exception, torch.OutOfMemoryError)  # not a per-clip vlm_error
    assert not (tmp_path / "manifests" / "diag" / "diagnose" / "rejections.parquet").exists()


def test_a_model_that_cannot_load_stops_diagnose_layers(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    clips = _clips(tmp_path, with_masks=True)
    result = _diagnose(tmp_path, tmp_path / "no-such-model", clips)
    assert result.exit_code != 0 and result.exception is not None
    assert not (tmp_path / "manifests" / "diag" / "diagnose" / "summary.json").exists()


def test_diagnose_layers_that_measured_nothing_exits_non_zero(tmp_path, tiny_qwen3vl, monkeypatch):
    monkeypatch.chdir(tmp_path)
    clips = _clips(tmp_path, with_masks=False)  # the only clip has no masks: rejected
    result = _diagnose(tmp_path, tiny_qwen3vl, clips)
    assert result.exit_code == 1, result.output
    assert "0 clips measured, 1 rejected" in result.output
    assert "measured no clip" in result.output
    rejections = pd.read_parquet(tmp_path / "manifests" / "diag" / "diagnose" / "rejections.parquet")
    assert rejections["reason"].tolist() == ["masks_unavailable"]


# ------------------------------------------------------------------------------ portrait rejections


@pytest.mark.parametrize("case", ["missing", "wrong_shape", "not_masks"])
def test_segmentation_rejections_say_what_happened(tmp_path, case):
    from dataengine.media.video import write_mp4
    from dataengine.models.segment import MaskFileReader, SegmenterConfig, save_masks
    from dataengine.steps.portrait_pairs import PortraitsConfig, segment_portrait
    from dataengine.synthetic.portraits import render_portrait

    frames, masks = render_portrait(seed=1, num_frames=17, height=64, width=64)
    path = tmp_path / "p.mp4"
    write_mp4(path, frames, fps=16.0)
    if case == "wrong_shape":
        save_masks(tmp_path / "p.masks.npz", masks[:9])
    elif case == "not_masks":
        np.savez(tmp_path / "p.masks.npz", other=np.zeros(3))
    config = PortraitsConfig(
        num_frames=17, fps=16.0, width=64, height=64, segmenter=SegmenterConfig(backend="mask_files")
    )
    row = segment_portrait(path, "p.mp4", config, tmp_path / "masks", MaskFileReader())
    expected = {"missing": "missing_file", "wrong_shape": "bad_masks_file", "not_masks": "bad_masks_file"}
    assert row["reason"] == expected[case], row
    assert "p.masks.npz" in row["detail"]
