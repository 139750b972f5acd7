"""Token shapes, FLOPs and the GPUs' peak FLOP/s: the numbers ``trainer fit``'s log line, ``trainer plan`` and the
benchmarks share, beside the model (``trainer.model.mive_flops`` counts the forward's matmuls).

torch-free at import: ``trainer plan`` and ``trainer --help`` stay instant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trainer.model import MiVEConfig

# Dense (no sparsity) bf16 peak FLOP/s per GPU, by a substring of torch.cuda.get_device_name() (first match
# wins): the one table the trainer's MFU, the plan and the benchmarks read.
PEAK_BF16_FLOPS = {
    "H200": 989e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,  # SXM
    "H20": 148e12,
    "B200": 2250e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 125e12,
}
H100_BF16_TFLOPS = PEAK_BF16_FLOPS["H100"] / 1e12
# Throughput measured for Wan2.1-14B training on H100 with FSDP2 on 8 GPUs (NeMo DFM, sequence 37,440):
# 175.9 TFLOP/s per GPU of H100's 989 dense bf16 TFLOP/s. The default MFU assumption of the step time.
REFERENCE_TFLOPS_PER_GPU = 175.9


def peak_bf16_flops(device_name: str) -> float | None:
    """The dense bf16 peak of a GPU by its name (``torch.cuda.get_device_name``); None when not in the table."""
    return next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in device_name), None)


@dataclass(frozen=True)
class TokenShape:
    """The token counts of one sample."""

    latent_frames: int  # T' = 1 + (F - 1) / 4
    latent_height: int  # H' = H / 8
    latent_width: int  # W' = W / 8
    num_visual: int  # (T' + 1) * H'/2 * W'/2: reference frame + target frames, patch (1, 2, 2)
    num_target: int  # T' * H'/2 * W'/2: the patches the head runs on
    num_condition: int  # S: VLM tokens
    seq_len: int  # L = S + num_visual: the sequence every block attends over

    @property
    def latent_elements(self) -> int:
        """Elements of one (16, T', H', W') latent (per sample)."""
        return 16 * self.latent_frames * self.latent_height * self.latent_width


def token_shape(
    config: MiVEConfig, num_frames: int, height: int, width: int, num_condition: int
) -> TokenShape:
    """Token counts of a clip: Wan VAE stride (4, 8, 8) with a causal first frame, then the patch size."""
    if num_frames < 1 or (num_frames - 1) % 4:
        raise ValueError(f"num_frames must be 4n + 1 (e.g. 81), got {num_frames}")
    p_t, p_h, p_w = config.patch_size
    if height % (8 * p_h) or width % (8 * p_w):
        raise ValueError(f"height and width must be multiples of {8 * p_h}, got {width}x{height}")
    frames, lat_h, lat_w = 1 + (num_frames - 1) // 4, height // 8, width // 8
    per_frame = (lat_h // p_h) * (lat_w // p_w)
    num_visual = (frames + 1) // p_t * per_frame
    num_target = frames // p_t * per_frame
    return TokenShape(frames, lat_h, lat_w, num_visual, num_target, num_condition, num_condition + num_visual)


def token_shape_from_latents(
    config: MiVEConfig, latent_shape: tuple[int, int, int], num_condition: int
) -> TokenShape:
    """Token counts of a latent shape (T', H', W') as stored in shards."""
    frames, lat_h, lat_w = latent_shape
    return token_shape(config, 4 * (frames - 1) + 1, 8 * lat_h, 8 * lat_w, num_condition)
