"""A tiny, randomly initialised RT-DETRv2 person detector, for tests, the benchmark and the demo's models.

``build_tiny_detector(folder)`` saves an ``RTDetrV2ForObjectDetection`` in the ``debug`` flavour of
``benchmarks.bench_gpu.model_configs`` (``rtdetr_v2_r50``: a 4-stage ResNet of 8 to 64 channels, 16-wide
encoder and decoder, 10 queries, classes ``person`` and ``car``) and its
``RTDetrImageProcessor`` (64 x 64 input), so ``AutoModelForObjectDetection.from_pretrained(folder)`` and
``AutoImageProcessor.from_pretrained(folder)`` load it offline: the code path of the real
``PekingU/rtdetr_v2_r50vd``. Its boxes mean nothing. The class biases are drawn at random so that both
classes get boxes above the usual thresholds (RT-DETR's initial bias gives every class the same prior).
"""

from __future__ import annotations

from pathlib import Path

# The real detector's structure at tiny widths (also the `debug` flavour of the benchmark's rtdetr_v2_r50): a
# 4-stage basic-block ResNet of 8 to 64 channels, 16 wide, 10 queries; two decoder layers (the box heads of
# layers 1.. are tied to layer 0's).
TINY_DETECTOR_CONFIG = {
    "model_type": "rt_detr_v2",
    "backbone_config": {
        "model_type": "rt_detr_resnet",
        "embedding_size": 8,
        "hidden_sizes": [8, 16, 32, 64],
        "depths": [1, 1, 1, 1],
        "layer_type": "basic",
        "out_features": ["stage2", "stage3", "stage4"],
    },
    "encoder_hidden_dim": 16,
    "encoder_in_channels": [16, 32, 64],
    "encoder_ffn_dim": 32,
    "encoder_attention_heads": 2,
    "d_model": 16,
    "num_queries": 10,
    "decoder_in_channels": [16, 16, 16],
    "decoder_ffn_dim": 32,
    "decoder_layers": 2,
    "decoder_attention_heads": 2,
    "num_denoising": 0,
    "id2label": {"0": "person", "1": "car"},
    "label2id": {"person": 0, "car": 1},
}


def build_tiny_detector(out_dir: str | Path, seed: int = 0, image_size: int = 64) -> Path:
    """Save the tiny random detector and its processor into ``out_dir``; returns ``out_dir``."""
    import torch
    from transformers import RTDetrImageProcessor, RTDetrV2Config, RTDetrV2ForObjectDetection

    config = RTDetrV2Config(**TINY_DETECTOR_CONFIG)  # the tiny flavour of the real detector's structure
    torch.manual_seed(seed)
    model = RTDetrV2ForObjectDetection(config).eval()
    with torch.no_grad():
        for head in (*model.model.decoder.class_embed, model.model.enc_score_head):
            head.bias.normal_(0.0, 1.0)
    processor = RTDetrImageProcessor(size={"height": image_size, "width": image_size})
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir
