"""Ulysses sequence parallelism (``trainer.model.SequenceParallel``) against one process.

The distributed checks run in one ``torchrun`` launch of 4 gloo ranks (``tests/sequence_parallel_worker.py``:
SP 4, DP 2 x SP 2, the sampler, a forward without condition tokens, the saved bytes per rank, and what must not
depend on the number of processes: the SP group's sample check, each rank's peak reading a checkpoint; and Wan
weights loaded into an FSDP2-sharded model); the
``trainer fit`` runs under SP (loss sequence, kill and resume, resume with another degree) are in
``tests/test_train.py``, ``trainer sample`` under SP in ``tests/test_sample.py`` and the plan against the
measured per-rank peak in ``tests/test_plan.py``. Here also: the shard arithmetic and the input checks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import REPO
from trainer.model import MiVETransformer, SequenceShard, get_config
from trainer.parallel import ParallelConfig, build_mesh

# float32 everywhere: sequence parallelism changes only summation orders (the gradient reduce-scatter sums
# four ranks' contributions, attention runs per head group). Measured: loss identical, grad norm 1e-7
# relative, the worst gradient entry 1.4e-6 of its parameter's largest gradient, sampled latents 2.4e-7.
RTOL = 1e-5


class _Group:
    """Stands in for a ``SequenceParallel``: the shard arithmetic needs only the size and this rank."""

    def __init__(self, size: int, rank: int) -> None:
        self.size, self.rank = size, rank


@pytest.mark.parametrize(("seq_len", "size"), [(23, 4), (23, 2), (24, 4), (5, 4), (18, 4)])
def test_shards_cover_the_end_padded_sequence_in_order(seq_len: int, size: int) -> None:
    x = torch.arange(seq_len, dtype=torch.float32)[None, :, None] + 1  # (1, L, 1); 0 marks padding
    chunks = [SequenceShard(_Group(size, rank), seq_len) for rank in range(size)]
    padded_len = -(-seq_len // size) * size
    expected = torch.nn.functional.pad(x, (0, 0, 0, padded_len - seq_len)).chunk(size, dim=1)
    num_clean = min(7, seq_len - 1)  # the model's clean prefix always leaves target tokens after it
    for shard, want in zip(chunks, expected, strict=True):
        got = shard.take(x, dim=1)
        assert torch.equal(got, want)
        assert got.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()  # its own storage
        # its count of the global clean prefix: the tokens whose global position is below num_clean
        assert shard.local_count(num_clean) == int(((want > 0) & (want <= num_clean)).sum())
    assert sum(s.local_count(num_clean) for s in chunks) == num_clean


def test_bad_sequence_parallel_settings_are_clear_errors() -> None:
    model = MiVETransformer(get_config("debug"))  # 4 heads
    latents = torch.zeros(1, 16, 1, 2, 2)
    with pytest.raises(ValueError, match="sequence parallel degree 3 must divide num_heads 4"):
        model(latents, latents, latents, torch.zeros(1), sp=_Group(3, 0))
    with pytest.raises(ValueError, match="sequence_parallel = 2 must divide the number of processes"):
        build_mesh("cpu", 1, 2)
    with pytest.raises(ValueError, match="sequence_parallel must be >= 1"):
        ParallelConfig(sequence_parallel=0)
    with pytest.raises(ValueError, match="activation_checkpointing too"):
        ParallelConfig(activation_checkpointing=False, offload_activations=True)
    with pytest.raises(ValueError, match="residual_dtype 'float16'"):
        ParallelConfig(residual_dtype="float16")


@pytest.mark.slow
def test_four_ranks_match_one_process(four_ranks) -> None:
    ranks, _ = four_ranks
    assert len(ranks) == 4
    assert sorted(r["dp2_sp2"]["dp_rank"] for r in ranks) == [0, 0, 1, 1]
    for rank, result in enumerate(ranks):
        for case in ("sp4", "dp2_sp2"):
            got = result[case]
            assert got["num_grads"] == 49, (rank, case)
            assert got["loss"] == pytest.approx(got["loss_ref"], rel=RTOL), (rank, case)
            assert got["grad_norm"] == pytest.approx(got["grad_norm_ref"], rel=RTOL), (rank, case)
            assert got["max_grad_rel_diff"] < RTOL, (rank, case, got["worst_parameter"])
        # the two cases train on different samples: the comparison is not against a constant
        assert abs(result["sp4"]["loss_ref"] - result["dp2_sp2"]["loss_ref"]) > 1e-4
        assert result["sample"]["max_abs_diff"] < RTOL * result["sample"]["max_abs"]
        guided = result["guided_sample"]
        assert guided["max_abs_diff"] < RTOL * guided["max_abs"] and guided["guidance_effect"] > 1e-4
        assert result["no_condition"]["max_abs_diff"] < RTOL
        for entry in result["saved_bytes"]:
            # the formula leaves out the per-sample modulation vectors, RoPE tables, SDPA's log-sum-exp
            assert entry["predicted"] <= entry["measured"] <= 1.03 * entry["predicted"], entry


def test_emulated_rank_has_the_real_exchange_shapes_and_measure_block_runs_on_the_cpu() -> None:
    """``benchmarks.bench_model.measure_block`` (the GPU benchmark of one SP rank) at a tiny size: its local
    stand-in for the exchanges returns what the real ones return per rank, and the plan's per-rank block
    figures it reports shrink with the degree."""
    from benchmarks.bench_model import EmulatedSequenceParallel, measure_block

    sp = EmulatedSequenceParallel(4)
    x = torch.randn(2, 6, 8, 16)  # (B, l, H, hd)
    assert sp.sequence_to_heads(x).shape == (2, 24, 2, 16)  # (B, N l, H/N, hd)
    assert sp.heads_to_sequence(sp.sequence_to_heads(x)).shape == x.shape
    assert sp.gather_sequence(torch.randn(2, 6, 5)).shape == (2, 24, 5)
    results = [
        measure_block(64, 4, 128, 101, 9, torch.float32, degree, device="cpu", reps=1) for degree in (1, 2, 4)
    ]
    assert [r["tokens_per_rank"] for r in results] == [101, 51, 26]
    assert [r["heads_per_rank"] for r in results] == [4, 2, 1]
    assert all(r["seconds"] > 0 and r["tflops"] > 0 and r["peak_memory_gib"] is None for r in results)
    gib = [r["plan_block_gib"] for r in results]
    assert gib[0] > gib[1] > gib[2]
    with pytest.raises(ValueError, match="sp_degree 3 must divide heads 4"):
        measure_block(64, 4, 128, 101, 9, torch.float32, 3, device="cpu")


# the debug recipe's training settings (its lr, warm-up and cosine schedule; float32, checkpointing on)
RECIPE = """
[train]
model = "debug"
seed = 0
[train.data]
verify_checksums = false
[train.optim]
lr = 1e-3
warmup_steps = 5
schedule = "cosine"
min_lr_ratio = 0.1
grad_clip = 1.0
[train.parallel]
param_dtype = "float32"
reduce_dtype = "float32"
activation_checkpointing = true
"""
WIDE = {"dim": 768, "num_layers": 6, "num_heads": 6, "ffn_dim": 3072, "vlm_dim": 64}


def _wide_checkpoints(root: Path) -> tuple[Path, Path, dict]:
    """A DCP checkpoint in a run folder and the same weights as an exported folder, of a model 768 wide with
    6 blocks (46M parameters, 185 MB in float32; its largest tensor 2.4M). Random values: only the reading
    is measured."""
    from dataclasses import asdict

    import torch.distributed.checkpoint as dcp
    from safetensors.torch import save_file

    from trainer.model import MiVEConfig

    config = MiVEConfig(**WIDE)
    with torch.device("meta"):
        model = MiVETransformer(config)
    model.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(0)
    state = {}
    for name, tensor in model.state_dict().items():
        state[name] = torch.randn(tensor.shape, generator=generator)
    run = root / "runs" / "wide"
    step_dir = run / "checkpoints" / "step-00000001"
    dcp.save({"model": state}, checkpoint_id=str(step_dir), no_dist=True)
    resolved = {"train": {"model": "wide_test", "data": {"shards": str(root / "no_shards")}}, "recipe": {}}
    (run / "recipe.resolved.json").write_text(json.dumps(resolved))
    exported = root / "exported"
    exported.mkdir()
    save_file(state, str(exported / "model.safetensors"))
    (exported / "config.json").write_text(json.dumps({"model_name": "wide_test", "model": asdict(config)}))
    sizes = {
        "parameters": sum(t.numel() for t in state.values()),
        "largest": max(t.numel() for t in state.values()),
    }
    return step_dir, exported, sizes


@pytest.fixture(scope="module")
def four_ranks(tmp_path_factory) -> tuple[list[dict], dict]:
    """The one ``torchrun`` launch of 4 gloo ranks (``tests/sequence_parallel_worker.py``) whose results the
    three tests below read: what each rank reported, and the sizes of the wide checkpoint it read."""
    from safetensors.torch import save_file

    from dataengine.synthetic.wan_dit import build_tiny_wan_dit
    from tests.shard_builder import build_shards
    from tests.wan_checkpoints import tiny_diffusers_wan
    from trainer.wan_weights import load_wan_weights

    tmp_path = tmp_path_factory.mktemp("four_ranks")
    shards = build_shards(
        tmp_path / "shards", {(2, 4, 4): 4, (1, 4, 6): 4}, vlm_dim=64, seq_lengths=(5, 8, 3, 7)
    )
    wan = build_tiny_wan_dit(tmp_path / "wan")
    step_dir, exported, sizes = _wide_checkpoints(tmp_path / "wide")
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(RECIPE)
    # test_wan_weights_load_into_an_fsdp2_sharded_model's: a tiny diffusers Wan2.1 DiT in several shards, and
    # what a plain model holds after loading it
    wan_diffusers = tmp_path / "wan_diffusers"
    tiny_diffusers_wan(get_config("debug"), seed=11).save_pretrained(wan_diffusers, max_shard_size="150KB")
    plain = MiVETransformer(get_config("debug"))
    load_wan_weights(plain, wan_diffusers)
    wan_expected = tmp_path / "wan_expected.safetensors"
    save_file({k: v.contiguous() for k, v in plain.state_dict().items()}, str(wan_expected))
    args = {
        "shards": str(shards), "wan": str(wan), "runs": str(tmp_path / "runs"), "steps": 4, "dcp": str(step_dir),
        "export": str(exported), "wide_config": WIDE, "recipe": str(recipe), "wan_diffusers": str(wan_diffusers),
        "wan_expected": str(wan_expected),
    }  # fmt: skip
    (tmp_path / "args.json").write_text(json.dumps(args))
    out = tmp_path / "results.json"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("RANK", None), env.pop("WORLD_SIZE", None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4"]
    command += [str(REPO / "tests" / "sequence_parallel_worker.py"), str(out), str(tmp_path / "args.json")]
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, cwd=REPO)
    assert run.returncode == 0, run.stderr[-4000:]
    return json.loads(out.read_text()), sizes


@pytest.mark.slow
def test_world_size_changes_nothing(four_ranks) -> None:
    """In the same ``torchrun`` launch of 4 gloo ranks (``tests/world_size_worker.py``'s checks), things that
    must not depend on the number of processes (``trainer fit`` from Wan weights by 2 data-parallel ranks at
    batch 1 and by one sequence-parallel group of 2 at batch 2, against one process at batch 2, loss and grad
    norm at every step: tests/test_train.py's test_two_process_fsdp2_matches_one_process and
    sequence-parallel run):

    - the ranks of a sequence-parallel group compare their samples at every micro-batch: a run whose loader
      is given the process rank (so the two ranks of each group read different samples) stops before its
      first forward;
    - each rank's host peak while reading a checkpoint for sampling into bfloat16 (DCP and exported
      folder) stays within the model's bfloat16 bytes plus two copies of the largest float32 tensor (the
      stored chunk and its decoded tensor) and 32 MiB; reading into float32, the control, needs the float32
      model, which that bound would not hold.
    """
    ranks, sizes = four_ranks
    ranks = [r["world_size"] for r in ranks]
    assert [r["rank"] for r in ranks] == [0, 1, 2, 3]

    for result in ranks:
        check = result["sp_check"]
        assert check["no_sp_group"] and check["same"] is None
        assert "hold different samples" in check["different"]
        assert check["error"] is not None and "step 1, micro-batch 0" in check["error"], check["error"]

        bound = 2 * sizes["parameters"] + 2 * 4 * sizes["largest"] + 32 * 2**20
        for kind in ("dcp", "export"):
            assert result["load"][f"{kind}_bfloat16"] <= bound, (result["rank"], kind, result["load"], bound)
            assert result["load"][f"{kind}_float32"] >= 4 * sizes["parameters"] > bound, (
                kind,
                result["load"],
            )


@pytest.mark.slow
@pytest.mark.process
def test_wan_weights_load_into_an_fsdp2_sharded_model(four_ranks) -> None:
    """(Of trainer.wan_weights, run in the same launch.) 4 gloo processes: FSDP2 DTensor parameters of a model
    built on meta receive the same values as a plain model loading the same diffusers folder, and the fresh
    context adapter's fusion starts at zero."""
    ranks, _ = four_ranks
    results = [r["wan_fsdp"] for r in ranks]
    assert [r["rank"] for r in results] == [0, 1, 2, 3]
    for result in results:
        assert result["differs"] == [], result
        assert result["fusion_zero"], result
