"""What ``trainer plan`` plans for besides the recipe (:class:`PlanConfig`: GPUs, clip shape, assumptions) and
the constants every part of the plan shares."""

from __future__ import annotations

from dataclasses import dataclass

from trainer.flops import H100_BF16_TFLOPS, REFERENCE_TFLOPS_PER_GPU

GIB = 2**30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
FP32 = 4  # bytes of a float32 element

HEADROOM = 0.10  # a recommended configuration leaves at least this fraction of the GPU memory free
# All-to-all bandwidth per GPU assumed for the sequence-parallel exchange inside one NVLink node (H100 SXM:
# 450 GB/s per direction; all-to-alls reach well below that). An assumption, not a measurement.
ALL_TO_ALL_GBPS = 200.0


@dataclass
class PlanConfig:
    """What to plan for besides the recipe: the GPUs and the clip shape (the ``trainer plan`` options)."""

    num_gpus: int = 8
    """GPUs the run is sharded over: data-parallel replicas x the recipe's sequence-parallel degree."""
    gpu_memory_gib: float = 80.0
    """Memory of one GPU in GiB (H100 80 GB: 80; as the driver reports it, about 79.1 usable)."""
    num_frames: int = 81
    """Frames per clip (4n + 1, the Wan VAE's causal first frame plus groups of 4)."""
    height: int = 720
    """Clip height in pixels (a multiple of 16)."""
    width: int = 1280
    """Clip width in pixels (a multiple of 16)."""
    num_condition_tokens: int = 2048
    """Qwen3-VL tokens per sample (image + video + text). The shards recipe's default budgets give about
    512 image + 1280 video tokens + the instruction and chat tokens: about 1,900; 2048 rounds up."""
    reserved_gib: float = 4.0
    """Memory per GPU not available to tensors: CUDA context, NCCL buffers, cuBLAS / attention workspaces
    and allocator fragmentation."""
    mfu: float = REFERENCE_TFLOPS_PER_GPU / H100_BF16_TFLOPS
    """Model FLOPs utilisation assumed for the step time (model FLOPs = 3x forward, recomputation not
    counted, as the trainer's log line). Default: NeMo DFM's Wan2.1-14B FSDP2 throughput on 8x H100,
    175.9 of 989 TFLOP/s, about 0.178: a measured figure for this architecture, not a target."""
    peak_tflops: float = H100_BF16_TFLOPS
    """Dense bf16 peak of one GPU in TFLOP/s (H100 SXM: 989)."""
