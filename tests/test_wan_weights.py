"""Loading Wan2.1 DiT weights into the MiVE DiT: both layouts, the report, shard-by-shard reading, errors.
(Into an FSDP2-sharded model over 4 processes: tests/test_sequence_parallel.py, in its one torchrun launch.)"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
import torch
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
from safetensors.torch import save_file

import trainer.wan_weights as wan_weights
from tests.wan_checkpoints import diffusers_to_original, save_sharded, tiny_diffusers_wan
from trainer.model import MiVETransformer, get_config
from trainer.wan_weights import load_wan_weights

CONFIG = get_config("debug")

# our parameter -> the diffusers tensor it must equal (independent list, written out by hand)
OURS_TO_DIFFUSERS = {
    "time_embedder.linear_1": "condition_embedder.time_embedder.linear_1",
    "time_embedder.linear_2": "condition_embedder.time_embedder.linear_2",
    "time_proj": "condition_embedder.time_proj",
    "attn.to_q": "attn1.to_q",
    "attn.to_k": "attn1.to_k",
    "attn.to_v": "attn1.to_v",
    "attn.to_out": "attn1.to_out.0",
    "attn.norm_q": "attn1.norm_q",
    "attn.norm_k": "attn1.norm_k",
    "ffn.proj_in": "ffn.net.0.proj",
    "ffn.proj_out": "ffn.net.2",
}


def _diffusers_name(ours: str) -> str:
    for mine, theirs in OURS_TO_DIFFUSERS.items():
        if mine in ours:
            return ours.replace(mine, theirs)
    return ours  # patch_embedding, proj_out, scale_shift_table, blocks.i.scale_shift_table


@pytest.fixture(scope="module")
def wan_state() -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in tiny_diffusers_wan(CONFIG, seed=11).state_dict().items()}


@pytest.fixture(scope="module")
def diffusers_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("wan_diffusers")
    tiny_diffusers_wan(CONFIG, seed=11).save_pretrained(folder, max_shard_size="150KB")
    return folder


@pytest.fixture(scope="module")
def original_folder(tmp_path_factory: pytest.TempPathFactory, wan_state: dict[str, torch.Tensor]) -> Path:
    folder = tmp_path_factory.mktemp("wan_original")
    save_sharded(diffusers_to_original(wan_state), folder, num_shards=4, stem="diffusion_pytorch_model")
    return folder


def test_single_file_export_with_prefix(tmp_path: Path, wan_state: dict[str, torch.Tensor]) -> None:
    """One unsharded file with the ``model.diffusion_model.`` prefix (ComfyUI-style export) loads too."""
    original = {
        "model.diffusion_model." + k: v.contiguous() for k, v in diffusers_to_original(wan_state).items()
    }
    save_file(original, str(tmp_path / "wan2.1_t2v.safetensors"))
    model = MiVETransformer(CONFIG)
    report = load_wan_weights(model, tmp_path)
    assert report.layout == "original" and report.shards == ["wan2.1_t2v.safetensors"]
    _check_loaded(model, wan_state)


def test_original_names_agree_with_diffusers_converter(wan_state: dict[str, torch.Tensor]) -> None:
    """The test's original-layout checkpoint is what diffusers' own converter maps back to the diffusers names."""
    original = diffusers_to_original(wan_state)
    assert "blocks.0.self_attn.q.weight" in original and "head.modulation" in original
    assert "time_projection.1.weight" in original and "blocks.1.norm3.weight" in original
    back = convert_wan_transformer_to_diffusers(dict(original))
    assert set(back) == set(wan_state)
    assert all(torch.equal(back[k], wan_state[k]) for k in wan_state)


def _check_loaded(model: MiVETransformer, wan_state: dict[str, torch.Tensor]) -> None:
    for name, param in model.named_parameters():
        if name.startswith("context_adapter."):
            continue
        expected = wan_state[_diffusers_name(name)]
        if name == "patch_embedding.weight":
            assert torch.equal(param[:, : CONFIG.latent_channels], expected), name
            assert param[:, CONFIG.latent_channels :].abs().max() == 0
        else:
            assert torch.equal(param.detach(), expected), name


@pytest.mark.parametrize("layout", ["diffusers", "original"])
def test_load_both_layouts(
    layout: str, diffusers_folder: Path, original_folder: Path, wan_state: dict[str, torch.Tensor]
) -> None:
    folder = diffusers_folder if layout == "diffusers" else original_folder
    model = MiVETransformer(CONFIG)
    report = load_wan_weights(model, folder)
    assert report.layout == layout
    assert len(report.shards) >= 4
    _check_loaded(model, wan_state)
    # the report: left out = cross-attention, its norm and the text embedder, nothing else
    left_out_diffusers = {k for k in wan_state if ".attn2." in k or ".norm2." in k or "text_embedder" in k}
    if layout == "diffusers":
        assert set(report.left_out) == left_out_diffusers
    else:
        assert set(report.left_out) == set(
            diffusers_to_original({k: wan_state[k] for k in left_out_diffusers})
        )
    adapter = {n for n, _ in model.named_parameters() if n.startswith("context_adapter.")}
    assert {f.split(" ")[0] for f in report.fresh} == adapter | {"patch_embedding.weight[:,"}
    assert set(report.loaded) == {n for n, _ in model.named_parameters()} - adapter
    assert f"left out {len(left_out_diffusers)} tensors" in report.summary()
    # zero_fusion init of the fresh adapter
    assert model.context_adapter.fusion.weight.abs().max() == 0
    assert model.context_adapter.proj_first.weight.abs().max() > 0


def test_meta_model_is_assigned_once_without_materialising(diffusers_folder: Path, wan_state) -> None:
    with torch.device("meta"):
        model = MiVETransformer(CONFIG)
    report = load_wan_weights(model, diffusers_folder, device="cpu")
    assert not any(p.is_meta for p in model.parameters())
    assert all(p.dtype == torch.float32 and p.requires_grad for p in model.parameters())
    _check_loaded(model, wan_state)
    assert report.layout == "diffusers"
    noisy = torch.randn(1, 16, 2, 4, 4)
    out = model(noisy, noisy, noisy[:, :, :1], torch.tensor([500.0]))
    assert out.shape == noisy.shape and torch.isfinite(out).all()


def test_control_branch_starts_ignored(diffusers_folder: Path) -> None:
    model = MiVETransformer(CONFIG).eval()
    load_wan_weights(model, diffusers_folder)
    noisy = torch.randn(1, 16, 2, 4, 4)
    with torch.no_grad():
        a = model(noisy, torch.randn_like(noisy), noisy[:, :, :1], torch.tensor([500.0]))
        b = model(noisy, torch.randn_like(noisy), noisy[:, :, :1], torch.tensor([500.0]))
    assert torch.equal(a, b)


def test_reads_shard_by_shard(diffusers_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """At most one shard open at a time and at most two checkpoint tensors alive at any moment."""
    state = {"open": 0, "max_open": 0, "alive": 0, "max_alive": 0, "opened": []}
    real_safe_open = wan_weights.safe_open

    def _released() -> None:
        state["alive"] -= 1

    class CountingHandle:
        def __init__(self, path: str, framework: str, device: str) -> None:
            self.inner = real_safe_open(path, framework=framework, device=device)
            self.path = path

        def __enter__(self) -> CountingHandle:
            self.inner.__enter__()
            state["open"] += 1
            state["max_open"] = max(state["max_open"], state["open"])
            state["opened"].append(Path(self.path).name)
            return self

        def __exit__(self, *exc: object) -> None:
            state["open"] -= 1
            self.inner.__exit__(*exc)

        def keys(self) -> list[str]:
            return self.inner.keys()

        def get_tensor(self, name: str) -> torch.Tensor:
            tensor = self.inner.get_tensor(name)
            state["alive"] += 1
            state["max_alive"] = max(state["max_alive"], state["alive"])
            weakref.finalize(tensor, _released)
            return tensor

    monkeypatch.setattr(wan_weights, "safe_open", CountingHandle)
    model = MiVETransformer(CONFIG)
    report = load_wan_weights(model, diffusers_folder)
    assert state["max_open"] == 1
    assert state["max_alive"] <= 2, state
    assert state["alive"] == 0
    num_tensors = len(report.loaded) + len(report.left_out)
    assert num_tensors > 20 and len(report.shards) >= 4
    # the header pass (layout detection) and the tensor pass each open every shard once
    assert sorted(state["opened"]) == sorted(report.shards * 2)


def test_shape_and_layer_mismatches_are_errors(diffusers_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(
        ValueError, match=r"ffn\.proj_in\.(weight|bias): checkpoint shape \(256.*net\.0\.proj.*safetensors"
    ):
        load_wan_weights(MiVETransformer(get_config("debug", ffn_dim=64)), diffusers_folder)
    with pytest.raises(ValueError, match="is block 1, the model has 1 blocks"):
        load_wan_weights(MiVETransformer(get_config("debug", num_layers=1)), diffusers_folder)
    with pytest.raises(ValueError, match=r"lacks \d+ tensor\(s\).*blocks\.2\."):
        load_wan_weights(MiVETransformer(get_config("debug", num_layers=3)), diffusers_folder)
    # a missing shard, an unknown tensor, an empty folder
    broken = tmp_path / "broken"
    shutil.copytree(diffusers_folder, broken)
    next(broken.glob("*-00002-of-*.safetensors")).unlink()
    with pytest.raises(FileNotFoundError, match="lists shards that are missing"):
        load_wan_weights(MiVETransformer(CONFIG), broken)
    odd = tmp_path / "odd"
    odd.mkdir()
    save_file(
        {"blocks.0.attn1.to_q.weight": torch.zeros(1), "vace_blocks.0.x": torch.zeros(1)},
        str(odd / "m.safetensors"),
    )
    with pytest.raises(ValueError, match="unexpected tensor 'vace_blocks.0.x'"):
        load_wan_weights(MiVETransformer(CONFIG), odd)
    with pytest.raises(FileNotFoundError, match="no \\*.safetensors"):
        load_wan_weights(MiVETransformer(CONFIG), tmp_path / "odd" / "..")
    with pytest.raises(FileNotFoundError, match="neither a local folder nor a hub id"):
        load_wan_weights(MiVETransformer(CONFIG), tmp_path / "nowhere" / "at" / "all")


def test_pipeline_folder_and_hub_id_fetch_only_the_transformer(
    diffusers_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, wan_state
) -> None:
    """A diffusers pipeline repo: the loader picks ``transformer/`` and never downloads the text encoder."""
    hub = tmp_path / "hub"
    shutil.copytree(diffusers_folder, hub / "transformer")
    (hub / "text_encoder").mkdir()
    save_file({"huge": torch.zeros(4)}, str(hub / "text_encoder" / "model.safetensors"))
    (hub / "model_index.json").write_text("{}")

    # the local pipeline folder resolves to its transformer/ subfolder
    assert load_wan_weights(MiVETransformer(CONFIG), hub).folder == str(hub / "transformer")

    requested: list[list[str]] = []
    cache = tmp_path / "cache"

    def fake_snapshot_download(repo_id: str, allow_patterns: list[str]) -> str:
        assert repo_id == "Wan-AI/Wan2.1-T2V-14B-Diffusers"
        requested.append(list(allow_patterns))
        for path in hub.rglob("*"):
            rel = path.relative_to(hub).as_posix()
            if path.is_file() and any(
                re.fullmatch(p.replace(".", r"\.").replace("*", "[^/]*"), rel) for p in allow_patterns
            ):
                (cache / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, cache / rel)
        return str(cache)

    monkeypatch.setattr(wan_weights, "snapshot_download", fake_snapshot_download)
    model = MiVETransformer(CONFIG)
    report = load_wan_weights(model, "Wan-AI/Wan2.1-T2V-14B-Diffusers")
    assert report.folder == str(cache / "transformer")
    assert len(requested) == 2 and all(p.startswith("transformer/") for p in requested[1])
    assert not (cache / "text_encoder").exists()
    _check_loaded(model, wan_state)


@pytest.mark.process
def test_loading_works_in_a_fresh_process(diffusers_folder, wan_state):
    """Nothing imports torch.distributed.tensor before the loader in a fresh process (as in `trainer fit`'s
    first import): the loader must not rely on it being imported already."""
    script = (
        "import sys, torch\n"
        "from trainer.model import MiVETransformer, get_config\n"
        "from trainer.wan_weights import load_wan_weights\n"
        "assert 'torch.distributed.tensor' not in sys.modules\n"
        "model = MiVETransformer(get_config('debug'))\n"
        f"load_wan_weights(model, {str(diffusers_folder)!r})\n"
        "torch.save(model.proj_out.weight.detach(), sys.argv[1])\n"
    )
    out = diffusers_folder.parent / "fresh_proj_out.pt"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    result = subprocess.run([sys.executable, "-c", script, str(out)], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert torch.equal(torch.load(out, weights_only=True), wan_state["proj_out.weight"])
