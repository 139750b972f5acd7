"""The models' published configurations, as data: parameter counts on the meta device, folders, library defaults."""

from __future__ import annotations

import pytest
import torch

from benchmarks.bench_gpu.model_configs import (
    MODELS,
    build_random,
    library_config,
    num_parameters,
    random_weights,
    write_model_folder,
)

UNITS = {"M": 1e6, "B": 1e9}


def published_range(text: str) -> tuple[float, float]:
    """A count as published ("8.77B") and half a unit of its last digit (0.005e9): the rounding it allows."""
    number, unit = text[:-1], UNITS[text[-1]]
    decimals = len(number.partition(".")[2])
    return float(number) * unit, 0.5 * 10**-decimals * unit


@pytest.mark.parametrize("name", sorted(MODELS))
def test_real_config_has_the_published_parameter_count(name: str, tmp_path) -> None:
    spec = MODELS[name]
    count = num_parameters(build_random(name, "real", "meta"))
    published, rounding = published_range(spec.published_parameters)
    assert abs(count - published) <= rounding, f"{name}: {count:,} vs published {spec.published_parameters}"
    # the folder round trip: config.json written, read back by from_pretrained inside random_weights
    folder = write_model_folder(name, tmp_path / name, "real")
    with random_weights("meta"):
        loaded = spec.model_class().from_pretrained(folder, subfolder=spec.subfolder or None)
    assert all(p.is_meta for p in loaded.parameters())
    assert num_parameters(loaded) == count
    # the debug flavour has the same class and is tiny
    debug = build_random(name, "debug", "meta")
    assert type(debug) is type(loaded) and 0 < num_parameters(debug) < 2_000_000


@pytest.mark.parametrize("name", ["wan21_vae", "wan21_t2v_14b"])
def test_wan_configs_are_the_diffusers_defaults(name: str) -> None:
    """diffusers' AutoencoderKLWan() and WanTransformer3DModel() defaults are the published Wan2.1 configs."""
    cls = MODELS[name].model_class()
    with torch.device("meta"):
        defaults = dict(cls().config)
    ours = library_config(name)
    normalise = lambda v: list(v) if isinstance(v, tuple) else v  # noqa: E731
    assert {k: normalise(defaults[k]) for k in ours} == ours


def test_mive_dit_is_the_wan_14b_backbone() -> None:
    """trainer plan's MiVE DiT = the registry's Wan2.1-14B without cross-attention and text embedder, plus the
    context adapter and the control branch's 16 more input channels; its block width is Wan's."""
    from trainer.model import get_config
    from trainer.plan import parameter_breakdown

    wan = library_config("wan21_t2v_14b")
    config = get_config("mive_14b")
    assert (config.dim, config.num_heads, config.ffn_dim, config.num_layers) == (
        wan["num_attention_heads"] * wan["attention_head_dim"],
        wan["num_attention_heads"],
        wan["ffn_dim"],
        wan["num_layers"],
    )
    model = build_random("wan21_t2v_14b", "real", "meta")
    cross = sum(p.numel() for n, p in model.named_parameters() if ".attn2." in n or ".norm2." in n)
    text = sum(p.numel() for n, p in model.named_parameters() if "text_embedder" in n)
    plan = parameter_breakdown(config)
    control = 16 * 4 * config.dim  # 16 more input channels x patch (1, 2, 2) x dim
    assert plan.total == num_parameters(model) - cross - text + plan.by_part["context_adapter"] + control
    assert plan.per_block == sum(p.numel() for p in model.blocks[0].parameters()) - (
        cross // wan["num_layers"]
    )


def test_qwen3vl_folder_pairs_the_real_processor_settings_with_the_tokenizer_ids(tmp_path) -> None:
    from transformers import AutoConfig, AutoProcessor

    folder = write_model_folder("qwen3vl_8b", tmp_path, "real")
    processor = AutoProcessor.from_pretrained(folder)
    config = AutoConfig.from_pretrained(folder)
    for proc in (processor.image_processor, processor.video_processor):
        assert (proc.patch_size, proc.merge_size, proc.temporal_patch_size) == (16, 2, 2)
    tokenizer = processor.tokenizer
    assert config.video_token_id == tokenizer.convert_tokens_to_ids("<|video_pad|>")
    assert config.image_token_id == tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert config.text_config.num_hidden_layers == 36 and config.vision_config.deepstack_visual_indexes == [
        8,
        16,
        24,
    ]
    assert len(tokenizer) < config.text_config.vocab_size  # every token id has an embedding row


def test_random_weights_detector_through_the_auto_class_equals_one_loaded_from_saved_weights(
    tmp_path,
) -> None:
    """The person detector loads through ``AutoModelForObjectDetection``, which adds its own keywords (config,
    revision, trust_remote_code, adapter_kwargs): inside random_weights it is the registry class built from the
    folder's config, as the library's loader would build it from saved weights; what cannot be honoured fails."""
    import shutil

    import numpy as np
    from transformers import AutoModelForObjectDetection

    from dataengine.models.detect import DetectorConfig, TransformersPersonDetector

    folder = write_model_folder("rtdetr_v2_r50", tmp_path / "config_only", "debug")  # 64 x 64 input
    settings = {"device": "cpu", "dtype": "float32", "threshold": 0.0, "background_threshold": 0.0}
    torch.manual_seed(0)
    with random_weights("cpu"):
        ours = TransformersPersonDetector(DetectorConfig(model=str(folder), **settings))
    assert type(ours.model).__name__ == "RTDetrV2ForObjectDetection" and not ours.model.training
    saved = tmp_path / "saved"
    shutil.copytree(folder, saved)
    ours.model.save_pretrained(saved)
    reference = TransformersPersonDetector(
        DetectorConfig(model=str(saved), **settings)
    )  # the library's loader
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out, expected = ours.model(pixel_values=pixels), reference.model(pixel_values=pixels)
    torch.testing.assert_close(out.logits, expected.logits)
    torch.testing.assert_close(out.pred_boxes, expected.pred_boxes)
    frames = np.random.default_rng(0).integers(0, 256, (2, 48, 80, 3), dtype=np.uint8)
    assert [len(f) for f in ours.detect(frames)] == [len(f) for f in reference.detect(frames)]
    # keywords that would change what is built are refused, the fetching ones are moot
    with random_weights("cpu"):
        for bad in ({"device_map": "cpu"}, {"trust_remote_code": True}):
            with pytest.raises(TypeError, match=next(iter(bad))):
                AutoModelForObjectDetection.from_pretrained(folder, **bad)
        moot = {"revision": "main", "local_files_only": True, "cache_dir": str(tmp_path)}
        built = AutoModelForObjectDetection.from_pretrained(folder, **moot)
    assert num_parameters(built) == num_parameters(ours.model)
