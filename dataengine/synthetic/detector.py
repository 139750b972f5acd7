"""A tiny, randomly initialised RT-DETRv2 person detector, for tests, the benchmark and the demo's models.

``build_tiny_detector(folder)`` saves an ``RTDetrV2ForObjectDetection`` in the ``debug`` flavour of
``dataengine.model_configs`` (``rtdetr_v2_r50``: a 4-stage ResNet of 8 to 64 channels, 16-wide encoder and
decoder, 10 queries, classes ``person`` and ``car``) and its
``RTDetrImageProcessor`` (64 x 64 input), so ``AutoModelForObjectDetection.from_pretrained(folder)`` and
``AutoImageProcessor.from_pretrained(folder)`` load it offline: the code path of the real
``PekingU/rtdetr_v2_r50vd``. Its boxes mean nothing. The class biases are drawn at random so that both
classes get boxes above the usual thresholds (RT-DETR's initial bias gives every class the same prior).
"""

from __future__ import annotations

from pathlib import Path


def build_tiny_detector(out_dir: str | Path, seed: int = 0, image_size: int = 64) -> Path:
    """Save the tiny random detector and its processor into ``out_dir``; returns ``out_dir``."""
    import torch
    from transformers import RTDetrImageProcessor, RTDetrV2ForObjectDetection

    from dataengine.model_configs import library_config

    config = library_config("rtdetr_v2_r50", "debug")  # the registry's tiny flavour of the real detector
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
