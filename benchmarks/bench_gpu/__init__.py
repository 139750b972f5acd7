"""`make bench-gpu`: every model at its real size on one GPU, in one run of at most 8 minutes, nothing downloaded.

    python -m benchmarks.bench_gpu benchmarks/gpu-results                 # real sizes: needs CUDA (H100 / H200)
    python -m benchmarks.bench_gpu /tmp/smoke --profile debug --device cpu  # tiny configs on a CPU: the smoke run

Speed and memory do not depend on the weights' values, so each model is built from its published
configuration with random weights (``benchmarks.bench_gpu.model_configs``), directly on the GPU, and driven through the
product's own code (``Judge``, ``Qwen3VLEncoder``, ``WanVaeEncoder``, ``TransformersPersonDetector``,
``Sam2VideoSegmenter``, ``MiVEBlock``) at the recipes' settings (``manifests/openve.toml``,
``manifests/train_mive_14b.toml``):

1. ``judge``: pairs/s and prefill tokens/s of the Qwen3-VL-8B judge at the recipe's frame budget
   (``[filter.judge]``: 2 fps, at most 16 frames of at most 384x672 per clip, here two 97-frame 24 fps 720P clips),
   for several batch sizes, with peak memory; the same pairs through ``generate()``-then-parse (the baseline of
   ``benchmarks/bench_filter.py``) at the recipe's batch size, and the ratio. Inputs are preprocessed before the
   clock starts; the processor's CPU seconds per pair are a row of their own.
2. ``vlm``: samples/s of the Qwen3-VL-8B encoder (one forward per sample, ``[shards.vlm]`` budgets: a 720P
   reference image and 10 frames of an 81-frame 16 fps clip) and S, the tokens per sample.
3. ``vae``: seconds to encode one 81-frame 720P clip with the Wan2.1 VAE in float32 (``[shards.vae]``) with and
   without tiling, a shards sample (source + target as a batch of 2, sliced, plus the reference frame), peak
   memory of each.
4. ``detector``: the RT-DETRv2-R50 person detector at ``[portraits.detector]``'s settings (bf16, 640x640 input)
   on 720P frames: the model's frames/s at batch 1, 8, 32, 64 with peak memory, the processor's CPU seconds per
   frame, and ``detect()`` end to end at the recipe's batch size on a harvest actor's CPU threads.
5. ``sam2``: frames/s of SAM2.1 hiera-large propagating a person through an 81-frame 720P clip
   (``[portraits]``), prompted as the recipe says (``prompt = "detector"``: a detector's person box), end to end
   through ``Sam2VideoSegmenter.segment`` (preprocessing and masks included).
6. ``dit``: one 14B-width MiVE block (D 5120, 40 heads, FFN 13824), forward + backward in bf16 at ``trainer
   plan``'s sequence (79,200 visual + 2,048 condition tokens = 81,248) as one rank of sequence parallelism of
   degree 1, 2, 4 and 8 (``benchmarks.bench_model.measure_block``: L/N tokens, H/N heads, the all-to-alls
   replaced by local copies): time, TFLOP/s, MFU, peak memory, next to the plan's per-block memory; which SDPA
   backend the block ran (read from the dispatched aten op) and the attention forward of each backend alone.
7. ``projection`` (arithmetic on the rows above): GPU-hours of the paper's run on ``--gpus`` GPUs: the filter,
   the portrait harvest over OpenVE's source videos, segmentation, the shards, and training at the recipe's
   global batch and sequence-parallel degree (:func:`projection_rows`).

Each section runs in its own process (forked from a server that imported torch, transformers and diffusers once)
with its own time limit, and all together within ``--total-limit`` seconds: a section that fails, runs out of
memory or out of time keeps the rows it measured before, and its failure is a row and a printed line. The run
prints one table and writes ``bench_gpu.json`` and ``bench_gpu.md`` into the output folder; it exits 1 when a
section failed. What each real builder costs is a row of its section (``build``): on the GPU every model is
created and initialised in place, expected to take seconds even for the 8.8B Qwen3-VL (a CPU init of it:
about 200 s on 2 busy cores, extrapolated from one 50M-parameter bf16 layer).
``tests/test_bench_gpu.py`` runs the whole command with the ``debug`` profile on a CPU.

The package: ``common`` (constants, profiles, helpers), one module per section (``judge``, ``vlm``, ``vae``,
``detector``, ``sam2``, ``dit``, ``projection``), ``harness`` (processes, limits, outputs, the command line) and
``model_configs`` (the published configurations and their random-weight builders: benchmark and test code,
not part of the product).
"""

from benchmarks.bench_gpu.common import DATA_RECIPE, PROFILES, SECTIONS, TRAIN_RECIPE, Bench, Profile
from benchmarks.bench_gpu.dit import attention_backends, block_tflops_key
from benchmarks.bench_gpu.harness import BENCHMARKS, main, markdown_table, run, run_sections
from benchmarks.bench_gpu.projection import projection_rows

__all__ = [
    "BENCHMARKS",
    "DATA_RECIPE",
    "PROFILES",
    "SECTIONS",
    "TRAIN_RECIPE",
    "Bench",
    "Profile",
    "attention_backends",
    "block_tflops_key",
    "main",
    "markdown_table",
    "projection_rows",
    "run",
    "run_sections",
]
