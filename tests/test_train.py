"""The trainer end to end on the CPU: overfitting, 2-process FSDP2 parity, the CLI, sequence parallelism (2 ranks
sharing each sample: the same losses, SIGKILLed during a background save and resumed with the EMA of the weights
exact, resume with another degree), activation offload, and initialisation from a Wan2.1 checkpoint (diffusers
layout) through the meta-device path. (One process SIGKILLed and resumed exactly: test_async_checkpoint.py.)

Every run goes through the real entry points (``trainer.cli fit`` in a subprocess, ``torchrun`` for two
ranks) on tiny shard sets written by the test, with the real ``trainer.model`` debug config.
"""

from __future__ import annotations

import json
import math
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dataengine.formats.recipe import load_recipe
from tests import watch_runs
from tests.helpers import REPO, cli_env
from tests.shard_builder import build_shards
from trainer.train import OptimConfig, fit, lr_factor, train_config_from_recipe

RECIPE = REPO / "manifests" / "train_debug.toml"
STEPS = 16
EVERY = 4
# Losses of a 1-rank x batch 2 run and a 2-rank x batch 1 run see the same samples and noise (see
# trainer.train.sample_generator); they differ only by float32 summation order in the gradient reduction
# (one local mean vs. a reduce-scatter average), amplified a little by Adam over the steps: measured
# at most 2e-7 relative over 16 steps.
PARITY_RTOL = 1e-5


def _env() -> dict[str, str]:
    return cli_env(OMP_NUM_THREADS="1")  # without RANK / WORLD_SIZE


def _overrides(
    shards: Path | str, runs: Path, name: str, batch_size: int, steps: int = STEPS, init: Path | None = None
) -> list[str]:
    """The debug recipe at this test's sizes; ``init`` = a Wan folder runs the production path (``train.init``:
    Wan's tensors loaded, the fresh context adapter and patch-embedding channels drawn from the recipe's seed)."""
    return [
        *([f'train.init="{init}"'] if init else []),
        f'train.data.shards="{shards}"',
        f'train.runs_dir="{runs}"',
        f'train.name="{name}"',
        f"train.steps={steps}",
        f"train.data.batch_size={batch_size}",
        f"train.checkpoint.every_steps={EVERY}",
        "train.checkpoint.keep_last=2",
    ]


def _cli(args: list[str], torchrun_ranks: int = 0) -> list[str]:
    launcher = [sys.executable, "-m", "trainer.cli"]
    if torchrun_ranks:
        launcher = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={torchrun_ranks}",
            "-m",
            "trainer.cli",
        ]
    return [*launcher, "fit", str(RECIPE), *args]


def _losses(run_dir: Path, key: str = "loss") -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    steps = [row["step"] for row in rows]
    assert steps == sorted(set(steps)), f"metrics.jsonl steps not unique and ordered: {steps}"
    return {row["step"]: row[key] for row in rows}


@pytest.fixture
def one_thread():
    """In-process runs use one intra-op thread, as the subprocess runs do (OMP_NUM_THREADS=1): tiny matmuls
    gain nothing from two, and spinning threads slow everything when other tests share the two cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """Two buckets of 4 samples (multiples of the global batch 2), the debug model's VLM width 64. A batch's
    VLM tokens are padded to its longest; the odd lengths make sequences (12 visual + S) of odd length."""
    return build_shards(
        tmp_path_factory.mktemp("shards"), {(2, 4, 4): 4, (1, 4, 6): 4}, vlm_dim=64, seq_lengths=(5, 8, 3, 7)
    )


@pytest.fixture(scope="module")
def wan_init(tiny_models) -> Path:
    """The demo's tiny Wan2.1 DiT (diffusers layout, the debug model's widths): every run below starts from it,
    as the paper's run starts from Wan2.1-T2V-14B, so the equality tests cover the fresh parameters' init."""
    return tiny_models.wan


@pytest.fixture(scope="module")
def reference_run(shards, wan_init, tmp_path_factory) -> Path:
    """The uninterrupted 1-process run: ``trainer fit`` on the debug recipe, batch 2, checkpoints every 4."""
    runs = tmp_path_factory.mktemp("runs")
    result = subprocess.run(
        _cli(_overrides(shards, runs, "reference", batch_size=2, init=wan_init)),
        env=_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return runs / "reference"


@pytest.mark.process
@pytest.mark.fit
@pytest.mark.slow
def test_cli_debug_recipe_writes_the_run_folder(reference_run):
    losses = _losses(reference_run)
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert all(math.isfinite(v) for v in losses.values())
    rows = [json.loads(line) for line in (reference_run / "metrics.jsonl").read_text().splitlines()]
    for key in (
        "grad_norm",
        "lr",
        "samples_per_s",
        "tokens_per_s",
        "tflops_per_device",
        "mfu",
        "peak_memory_gib",
    ):
        assert key in rows[0]
    assert rows[0]["mfu"] is None  # CPU, no peak configured
    # the lr column follows the recipe's warm-up + cosine schedule, computed here from its formula
    optim = load_recipe(RECIPE)["train"]["optim"]
    for row in rows:
        step = row["step"] - 1
        if step < optim["warmup_steps"]:
            expected = optim["lr"] * (step + 1) / optim["warmup_steps"]
        else:
            progress = (step - optim["warmup_steps"]) / (STEPS - optim["warmup_steps"])
            low = optim["min_lr_ratio"]
            expected = optim["lr"] * (low + (1 - low) * 0.5 * (1 + math.cos(math.pi * progress)))
        assert row["lr"] == pytest.approx(expected, rel=1e-9)
    resolved = json.loads((reference_run / "recipe.resolved.json").read_text())
    assert resolved["train"]["steps"] == STEPS and resolved["world_size"] == 1
    checkpoints = sorted(p.name for p in (reference_run / "checkpoints").iterdir())
    assert checkpoints == [f"step-{STEPS - EVERY:08d}", f"step-{STEPS:08d}"]  # keep_last = 2, no partials


@pytest.fixture(scope="module")
def two_process_run(shards, wan_init, tmp_path_factory) -> Path:
    """One node, two ranks (``torchrun --standalone --nproc-per-node 2``), batch 1 per rank."""
    runs = tmp_path_factory.mktemp("runs_fsdp2")
    result = subprocess.run(
        _cli(_overrides(shards, runs, "fsdp2", batch_size=1, init=wan_init), torchrun_ranks=2),
        env=_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return runs / "fsdp2"


@pytest.mark.process
@pytest.mark.fit
@pytest.mark.slow
def test_two_process_fsdp2_matches_one_process(two_process_run, reference_run):
    """2 data-parallel ranks at batch 1 from Wan weights (``train.init``) with condition tokens of several
    lengths train as one process at batch 2: loss and grad norm at every step (before the fresh context
    adapter was drawn whole from a seeded generator, the grad norm differed by 0.5% at step 1)."""
    two, one = _losses(two_process_run), _losses(reference_run)
    assert sorted(two) == sorted(one)
    assert len({round(v, 6) for v in one.values()}) == len(one)  # every step a different loss
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=PARITY_RTOL), (
            f"step {step}: {two[step]} vs {one[step]}"
        )
    two, one = _losses(two_process_run, "grad_norm"), _losses(reference_run, "grad_norm")
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=PARITY_RTOL), (
            "grad_norm",
            step,
            two[step],
            one[step],
        )
    resolved = json.loads((two_process_run / "recipe.resolved.json").read_text())
    assert resolved["world_size"] == 2


def _readme_multinode_command() -> list[str]:
    """The multi-node ``torchrun`` line of the README's "real run" section, as tokens."""
    lines = [
        line.strip()
        for line in (REPO / "README.md").read_text().splitlines()
        if line.startswith("torchrun --nnodes")
    ]
    assert len(lines) == 1, f"README.md should hold one multi-node torchrun line, found {lines}"
    return shlex.split(lines[0])


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.process
@pytest.mark.fit
@pytest.mark.slow
def test_two_nodes_by_c10d_rendezvous_match_one_node(shards, wan_init, two_process_run, tmp_path):
    """The README's multi-node command, launched twice on this machine as two "nodes" of one process each
    (the rendezvous endpoint ``$HEAD:29500`` becomes 127.0.0.1 and a free port, 8 processes per node become 1,
    the paper's recipe the debug one): the same losses as one node with two processes."""
    command = _readme_multinode_command()
    assert command[:3] == ["torchrun", "--nnodes", "2"] and "--rdzv-backend" in command
    assert command[command.index("--rdzv-backend") + 1] == "c10d"
    port = _free_port()
    swap = {
        "$HEAD:29500": f"127.0.0.1:{port}",
        "manifests/train_mive_14b.toml": str(RECIPE),
    }
    command = [swap.get(token, token) for token in command]
    command[command.index("--nproc-per-node") + 1] = "1"
    launcher = [sys.executable, "-m", "torch.distributed.run", *command[1:]]
    args = _overrides(shards, tmp_path, "two_nodes", batch_size=1, init=wan_init)
    nodes = [
        subprocess.Popen(
            [*launcher, *args],
            env=_env(),
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        errors = [node.communicate(timeout=300)[1] for node in nodes]
    finally:
        for node in nodes:  # a node whose peer failed waits for the rendezvous: never leave it behind
            if node.poll() is None:
                node.kill()
                node.wait()
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(e[-3000:] for e in errors)
    two_nodes, one_node = _losses(tmp_path / "two_nodes"), _losses(two_process_run)
    # the same two ranks and the same collectives, only their rendezvous differs: the same floats
    assert two_nodes == one_node
    resolved = json.loads((tmp_path / "two_nodes" / "recipe.resolved.json").read_text())
    assert resolved["world_size"] == 2


@pytest.mark.process
@pytest.mark.fit
@pytest.mark.slow
def test_sequence_parallel_run_killed_during_a_save_and_resumed_then_resumed_without_sp(
    shards, wan_init, reference_run, tmp_path
):
    """2 ranks sharing every sample (train.parallel.sequence_parallel = 2, one data-parallel replica at batch
    2): the same samples, noise and losses as the 1-process run. Its background checkpoints are saved after
    every step (all kept); killed while one is being written (after step 2) and resumed under SP 2 from the
    last complete one. The EMA of the weights (the debug recipe's ``train.ema_decay``) then equals the float64
    reference of its own saved trajectory across the kill, and the 1-process run's. Then its step-12
    checkpoint is resumed by one process without SP."""
    run_dir = tmp_path / "sp2"
    single = [
        *_overrides(shards, tmp_path, "sp2", batch_size=2, init=wan_init),
        "train.checkpoint.every_steps=1",  # every step's parameters and EMA, for the EMA's float64 reference
        "train.checkpoint.keep_last=0",
    ]
    args = [*single, "train.parallel.sequence_parallel=2"]
    at_kill = watch_runs.kill_during_a_save(args, run_dir, after_step=2, torchrun_ranks=2)
    killed_at = int(at_kill["complete"][-1].removeprefix("step-"))  # the last complete checkpoint
    assert killed_at < STEPS

    result = subprocess.run(
        _cli([*args, "--resume"], torchrun_ranks=2), env=_env(), cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert f"(step {killed_at}," in result.stderr
    resolved = json.loads((run_dir / "recipe.resolved.json").read_text())
    assert (resolved["world_size"], resolved["data_parallel"], resolved["sequence_parallel"]) == (2, 1, 2)
    reference = _losses(reference_run)
    for key in ("loss", "grad_norm"):
        ours, theirs = _losses(run_dir, key), _losses(reference_run, key)
        assert sorted(ours) == sorted(reference)
        for step in reference:
            # float32; SP changes summation orders only (measured: at most 3e-7 relative over 16 steps)
            assert ours[step] == pytest.approx(theirs[step], rel=PARITY_RTOL), (key, step)

    decay = resolved["train"]["ema_decay"]
    assert decay > 0
    ema = watch_runs.read_entries(watch_runs.step_dir(run_dir, STEPS), "ema")
    watch_runs.assert_close_to_reference(ema, watch_runs.ema_reference(run_dir, 1, STEPS, decay))
    for name, value in watch_runs.read_entries(watch_runs.step_dir(reference_run, STEPS), "ema").items():
        # SP changes summation orders only (the losses agree to 3e-7 relative): the averages agree closely
        assert torch.allclose(ema[name], value, rtol=1e-4, atol=1e-6), name

    # the SP 2 checkpoint of step 12, resumed by one process without sequence parallelism
    for step in range(STEPS - EVERY + 1, STEPS + 1):
        shutil.rmtree(watch_runs.step_dir(run_dir, step))
    result = subprocess.run(_cli([*single, "--resume"]), env=_env(), cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]
    assert f"(step {STEPS - EVERY}," in result.stderr
    resumed = _losses(run_dir)
    for step in range(STEPS - EVERY + 1, STEPS + 1):
        assert resumed[step] == pytest.approx(reference[step], rel=PARITY_RTOL), step


@pytest.mark.process
@pytest.mark.fit
@pytest.mark.slow
def test_training_from_shards_served_over_http_gives_the_same_losses(
    shards, wan_init, reference_run, tmp_path
):
    """``train.data.shards`` as a URL: the shard set served by a real HTTP server on 127.0.0.1 (byte ranges,
    as object storage serves them); the same run as the local reference, the same losses to the last bit."""
    from tests.range_server import RangeServer

    with RangeServer(shards.parent) as server:
        url = f"{server.url}/{shards.name}"
        result = subprocess.run(
            _cli(_overrides(url, tmp_path, "http", batch_size=2, init=wan_init)),
            env=_env(),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
        tar_gets = [r for r in server.requests if r.method == "GET" and r.path.endswith(".tar")]
    assert result.returncode == 0, result.stderr[-4000:]
    assert tar_gets and all(r.range for r in tar_gets)  # ranged reads only
    assert _losses(tmp_path / "http") == _losses(reference_run)
    resolved = json.loads((tmp_path / "http" / "recipe.resolved.json").read_text())
    assert resolved["train"]["data"]["shards"] == url


@pytest.mark.process
@pytest.mark.fit
@pytest.mark.slow
def test_fit_without_resume_refuses_an_existing_run(shards, wan_init, reference_run):
    recipe = load_recipe(
        RECIPE, _overrides(shards, reference_run.parent, "reference", batch_size=2, init=wan_init)
    )
    with pytest.raises(ValueError, match="already holds checkpoints: pass --resume"):
        fit(train_config_from_recipe(recipe), recipe=recipe)


@pytest.mark.fit
def test_loss_falls_when_overfitting_two_samples(tmp_path, one_thread):
    shards = build_shards(tmp_path / "two", {(2, 4, 4): 2}, vlm_dim=64, seed=3)
    recipe = load_recipe(
        RECIPE,
        [
            *_overrides(shards, tmp_path / "runs", "overfit", batch_size=2, steps=30),
            "train.optim.lr=3e-3",
            'train.optim.schedule="constant"',
            "train.checkpoint.every_steps=0",
            "train.parallel.activation_checkpointing=false",
        ],
    )
    run_dir = fit(train_config_from_recipe(recipe), recipe=recipe)
    losses = list(_losses(run_dir).values())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.6 * first, losses


def test_unknown_recipe_key_is_a_clear_error(capsys):
    """Through the console script's error handling (``trainer.cli.entry_point`` = ``run_cli(app)``)."""
    from dataengine.formats.recipe import run_cli
    from trainer.cli import app

    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: app(["fit", str(RECIPE), "train.optim.learning_rate=1e-4"], standalone_mode=False))
    assert exit_info.value.code == 2
    assert "unknown key(s) ['learning_rate'] in [train.optim]" in capsys.readouterr().err


def test_lr_schedules_against_their_formulas():
    for schedule in ("constant", "linear", "cosine"):
        config = OptimConfig(lr=1.0, warmup_steps=10, schedule=schedule, min_lr_ratio=0.2)
        assert lr_factor(0, config, 110) == pytest.approx(0.1)
        assert lr_factor(9, config, 110) == pytest.approx(1.0)
        half = {
            "constant": 1.0,
            "linear": 1 - 0.8 * 0.5,
            "cosine": 0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi / 2)),
        }
        assert lr_factor(60, config, 110) == pytest.approx(half[schedule])
        assert lr_factor(110, config, 110) == pytest.approx(1.0 if schedule == "constant" else 0.2)


@pytest.mark.fit
def test_init_from_a_wan_checkpoint_through_the_meta_device_path(tmp_path, one_thread):
    """``train.init`` = a tiny diffusers Wan2.1 DiT: the first checkpoint (lr 0) holds Wan's tensors."""
    import torch.distributed.checkpoint as dcp
    from diffusers import WanTransformer3DModel

    from trainer.checkpoint import DataOnlyLoadPlanner, DataOnlyReader
    from trainer.model import get_config

    config = get_config("debug")
    torch.manual_seed(0)
    wan = WanTransformer3DModel(
        patch_size=config.patch_size,
        num_attention_heads=config.num_heads,
        attention_head_dim=config.head_dim,
        in_channels=16,
        out_channels=16,
        text_dim=32,
        freq_dim=config.freq_dim,
        ffn_dim=config.ffn_dim,
        num_layers=config.num_layers,
        cross_attn_norm=True,
        eps=config.eps,
    )
    wan.save_pretrained(tmp_path / "wan" / "transformer")
    shards = build_shards(tmp_path / "shards", {(1, 4, 4): 2}, vlm_dim=config.vlm_dim)
    recipe = load_recipe(
        RECIPE,
        [
            *_overrides(shards, tmp_path / "runs", "wan_init", batch_size=2, steps=1),
            f'train.init="{tmp_path / "wan"}"',
            "train.optim.lr=0.0",
        ],
    )
    run_dir = fit(train_config_from_recipe(recipe), recipe=recipe)
    wanted = {
        "model.blocks.1.attn.to_q.weight": wan.blocks[1].attn1.to_q.weight,
        "model.blocks.0.ffn.proj_in.bias": wan.blocks[0].ffn.net[0].proj.bias,
        "model.proj_out.weight": wan.proj_out.weight,
        "model.patch_embedding.weight": wan.patch_embedding.weight,
    }
    loaded = {
        k: torch.empty(v.shape[0], 32, *v.shape[2:]) if "patch" in k else torch.empty_like(v)
        for k, v in wanted.items()
    }
    dcp.load(
        {"model": {k.removeprefix("model."): v for k, v in loaded.items()}},
        storage_reader=DataOnlyReader(str(run_dir / "checkpoints" / "step-00000001")),
        planner=DataOnlyLoadPlanner(allow_partial_load=True),
        no_dist=True,
    )
    for key, value in wanted.items():
        if "patch" in key:
            assert torch.equal(loaded[key][:, :16], value.detach())  # noisy branch: Wan's weights
            assert not loaded[key][:, 16:].any()  # control branch starts at zero
        else:
            assert torch.equal(loaded[key], value.detach()), key


def test_activation_checkpointing_recomputes_blocks_and_keeps_gradients():
    """FSDP2 + per-block checkpointing against the same model without either: equal loss and gradients, and
    each block's inner layers run twice (forward + recompute in the backward)."""

    from trainer.model import MiVETransformer, get_config
    from trainer.parallel import (
        MIVE_PLAN,
        ParallelConfig,
        apply_parallel,
        init_distributed,
        shutdown_distributed,
    )

    config = ParallelConfig(param_dtype="float32", activation_checkpointing=True)
    runtime = init_distributed(config)
    try:
        torch.manual_seed(0)
        plain = MiVETransformer(get_config("debug"))
        sharded = MiVETransformer(get_config("debug"))
        sharded.load_state_dict(plain.state_dict())
        apply_parallel(sharded, MIVE_PLAN, config, runtime)
        assert [n for n, _ in sharded.named_parameters()] == [n for n, _ in plain.named_parameters()]
        calls = []
        sharded.blocks[0].attn.register_forward_hook(lambda *_: calls.append(1))
        generator = torch.Generator().manual_seed(1)
        latents = torch.randn(2, 16, 2, 4, 4, generator=generator)
        inputs = (
            latents,
            torch.randn(2, 16, 2, 4, 4, generator=generator),
            torch.randn(2, 16, 1, 4, 4, generator=generator),
            torch.tensor([100.0, 900.0]),
            torch.randn(2, 3, 64, generator=generator),
            torch.randn(2, 3, 64, generator=generator),
            torch.tensor([[True, True, False], [True, True, True]]),
        )
        losses = []
        for model in (plain, sharded):
            loss = model(*inputs).square().mean()
            loss.backward()
            losses.append(loss.item())
        assert len(calls) == 2  # the attention of block 0 ran in the forward and again in the backward
        assert losses[1] == pytest.approx(losses[0], rel=1e-6)
        grads = dict(sharded.named_parameters())
        for name, param in plain.named_parameters():
            grad = grads[name].grad.full_tensor()
            torch.testing.assert_close(grad, param.grad, rtol=1e-5, atol=1e-7, msg=name)
    finally:
        shutdown_distributed()


def test_paper_recipe_resolves_to_the_papers_numbers():
    """manifests/train_mive_14b.toml against MIVE.md: 8000 steps, AdamW 3e-5 (0.9, 0.999), 200 warm-up, clip 1.0,
    shift 5, Wan2.1-T2V-14B init, bf16 params with fp32 reduction, activation checkpointing."""
    from trainer.model import get_config

    config = train_config_from_recipe(load_recipe(REPO / "manifests" / "train_mive_14b.toml"))
    assert (config.steps, config.optim.lr, config.optim.betas) == (8000, 3e-5, (0.9, 0.999))
    assert (config.optim.warmup_steps, config.optim.grad_clip, config.flow.shift) == (200, 1.0, 5.0)
    assert config.init == "Wan-AI/Wan2.1-T2V-14B-Diffusers"
    assert (config.parallel.param_dtype, config.parallel.reduce_dtype) == ("bfloat16", "float32")
    assert config.parallel.activation_checkpointing
    # 8 GPUs = 4 data-parallel replicas x sequence parallelism 2; the paper's global batch of 8 per step
    assert (config.parallel.sequence_parallel, config.parallel.residual_dtype) == (2, "float32")
    assert 8 // config.parallel.sequence_parallel * config.data.batch_size * config.grad_accum == 8
    model = get_config(config.model)
    assert (model.dim, model.num_layers, model.num_heads, model.ffn_dim) == (5120, 40, 40, 13824)


def test_paper_model_takes_the_fsdp2_plan_on_the_meta_device():
    """The 14B model as `trainer fit` builds it with train.init set: on meta, 40 block units + the root."""
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    from trainer.model import MiVETransformer, count_parameters, get_config
    from trainer.parallel import (
        MIVE_PLAN,
        ParallelConfig,
        apply_parallel,
        init_distributed,
        shutdown_distributed,
    )

    config = ParallelConfig()  # the paper recipe's: bf16 params, fp32 reduce, activation checkpointing
    runtime = init_distributed(config)
    try:
        with torch.device("meta"):
            model = MiVETransformer(get_config("mive_14b"))
        apply_parallel(model, MIVE_PLAN, config, runtime)
        units = [name for name, module in model.named_modules() if isinstance(module, FSDPModule)]
        assert units == ["", *[f"blocks.{i}" for i in range(40)]]
        assert all(isinstance(p, DTensor) for p in model.parameters())
        assert sum(p.numel() for p in model.parameters()) == count_parameters(get_config("mive_14b")).total
    finally:
        shutdown_distributed()


def test_offloaded_block_inputs_go_through_save_on_cpu_and_change_nothing(monkeypatch):
    """train.parallel.offload_activations: each checkpointed block's saved input (B, L, D) passes through
    ``save_on_cpu``'s pack hook, nothing the recomputation saves does, and the gradients are unchanged."""
    from trainer.model import MiVETransformer, get_config
    from trainer.parallel import (
        MIVE_PLAN,
        ParallelConfig,
        apply_parallel,
        init_distributed,
        shutdown_distributed,
    )

    packed: list[tuple[int, ...]] = []

    class RecordingSaveOnCpu(torch.autograd.graph.save_on_cpu):
        def __init__(self, pin_memory: bool = False, device_type: str = "cuda") -> None:
            super().__init__(pin_memory, device_type)
            pack = self.pack_hook
            self.pack_hook = lambda tensor: packed.append(tuple(tensor.shape)) or pack(tensor)

    monkeypatch.setattr(torch.autograd.graph, "save_on_cpu", RecordingSaveOnCpu)
    config = ParallelConfig(param_dtype="float32", activation_checkpointing=True, offload_activations=True)
    runtime = init_distributed(config)
    try:
        torch.manual_seed(0)
        models = [MiVETransformer(get_config("debug")) for _ in range(2)]
        models[1].load_state_dict(models[0].state_dict())
        apply_parallel(models[0], MIVE_PLAN, ParallelConfig(param_dtype="float32"), runtime)
        apply_parallel(models[1], MIVE_PLAN, config, runtime)
        generator = torch.Generator().manual_seed(1)
        latents = torch.randn(2, 16, 2, 4, 4, generator=generator)
        inputs = (latents, latents.flip(0), latents[:, :, :1], torch.tensor([100.0, 900.0]))
        inputs += (torch.randn(2, 3, 64, generator=generator), torch.randn(2, 3, 64, generator=generator))
        for model in models:
            model(*inputs).square().mean().backward()
    finally:
        shutdown_distributed()
    seq_len = 3 + 3 * 2 * 2  # condition tokens + (T' + 1) x H'/2 x W'/2
    block_inputs = [shape for shape in packed if shape == (2, seq_len, 128)]
    assert len(block_inputs) == 2  # one per block, saved once (not again by the recomputation)
    assert all(len(shape) < 3 or shape[-1] != 256 for shape in packed)  # no FFN activation (B, L, F)
    grads = dict(models[1].named_parameters())
    for name, param in models[0].named_parameters():
        assert torch.equal(grads[name].grad.full_tensor(), param.grad.full_tensor()), name
