"""The published configurations of the models the data engine runs, as data, and builders with random weights.

Speed and memory do not depend on the weights' values: a model built from its real configuration with random
weights runs as fast and as large as the trained one. ``benchmarks.bench_gpu`` measures every model that
way, with nothing downloaded. Each entry of :data:`MODELS` holds

- ``real``: the published configuration (the keys of the checkpoint's ``config.json``), written here from
  the source its comment names. The registry downloads no weights and no checkpoint file (the benchmark
  runs on an air-gapped GPU node), so the values were taken from the model cards and the libraries' own
  conversion scripts and defaults, and the parameter counts they give are checked against the published
  figures (``tests/test_model_configs.py``);
- ``debug``: a configuration of the same structure with tiny widths, for the CPU smoke run of the benchmark
  (torchtitan's ``debugmodel`` beside every real flavour);
- how to build the library's own class from it.

Building, three ways:

- :func:`build_random` instantiates a configuration under a ``torch.device`` context: on ``"meta"`` for a
  parameter count (no memory), on ``"cuda"`` for a benchmark: the parameters are created, and initialised by
  the library's own init, on the GPU. The 8.8B Qwen3-VL so takes seconds (plus the allocation), where a CPU
  init of 8.8B parameters takes minutes.
- :func:`write_model_folder` writes a folder in the checkpoint's layout with the configuration and the
  processor files but **no weights**.
- :func:`random_weights` is a context in which ``from_pretrained`` of the registry's classes builds the
  folder's configuration with random weights on a device instead of reading weight files. Inside it the
  product's own constructors (``Judge``, ``Qwen3VLEncoder``, ``WanVaeEncoder``, ``Sam2VideoSegmenter``, and
  ``TransformersPersonDetector`` through ``AutoModelForObjectDetection``) run unchanged on a folder from
  :func:`write_model_folder`: their processor and config loading, dtype and attention settings are the real
  code path; only the weight read is replaced (17.6 GB of random bf16 for Qwen3-VL-8B would otherwise be
  written and read back on every benchmark run).

The Qwen3-VL tokenizer is not downloaded either: the processor here pairs the tiny byte-level BPE tokenizer of
``dataengine.synthetic.qwen3vl`` (Qwen's special tokens and digit splitting, a 512-entry vocabulary) with the
real image and video processor settings (patch 16, merge 2, temporal patch 2, the published pixel budgets).
Vision token counts are therefore exact; text token counts differ from the real tokenizer's.

A new model joins by adding an entry to :data:`MODELS` (as the person detector, ``rtdetr_v2_r50``, did).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from unittest import mock

from dataengine.synthetic.detector import TINY_DETECTOR_CONFIG

if TYPE_CHECKING:
    import torch
    from torch import nn

SIZES = ("real", "debug")


@dataclass(frozen=True)
class ModelSpec:
    """One model: where its configuration comes from, the configuration, a tiny one, and its library class."""

    source: str
    """Hub id (and subfolder) the configuration is the ``config.json`` of."""
    library: str
    """``transformers`` or ``diffusers``: how the class is built from a configuration and saved."""
    model_class: Callable[[], type]
    """The library class (imported when called, so that importing this module stays cheap)."""
    real: dict[str, Any]
    """The published configuration."""
    debug: dict[str, Any]
    """The same structure with tiny widths, for CPU smoke runs."""
    published_parameters: str
    """The parameter count the model card or paper gives, as written there (``8.77B``: 8.77e9 to 3 digits)."""
    published_note: str
    """Where ``published_parameters`` comes from."""
    subfolder: str = ""
    """Subfolder of the checkpoint holding this model (``vae`` in the Wan diffusers layout)."""
    extra_files: Callable[[Path, dict[str, Any], str], dict[str, Any]] | None = None
    """Writes the files besides ``config.json`` (processor, generation config) into a model folder, given the
    configuration dict and its size (``real`` or ``debug``), and returns the configuration keys they override
    (the tokenizer's special-token ids)."""

    def config(self, size: str) -> dict[str, Any]:
        """The configuration dict of ``size`` (``real`` or ``debug``)."""
        if size not in SIZES:
            raise ValueError(f"unknown model size {size!r}; expected one of {SIZES}")
        return self.real if size == "real" else self.debug


def _qwen3vl_class() -> type:
    from transformers import Qwen3VLForConditionalGeneration

    return Qwen3VLForConditionalGeneration


def _wan_vae_class() -> type:
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan


def _wan_transformer_class() -> type:
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel


def _rtdetr_v2_class() -> type:
    from transformers import RTDetrV2ForObjectDetection

    return RTDetrV2ForObjectDetection


def _sam2_video_class() -> type:
    from transformers import Sam2VideoModel

    return Sam2VideoModel


# Qwen/Qwen3-VL-8B-Instruct, config.json (transformers 4.57 writes rope_theta and rope_scaling; transformers 5
# reads them into rope_parameters, the form written here). Model card: 8.77B parameters (BF16).
QWEN3VL_8B = {
    "model_type": "qwen3_vl",
    "text_config": {
        "model_type": "qwen3_vl_text",
        "vocab_size": 151936,
        "hidden_size": 4096,
        "intermediate_size": 12288,
        "num_hidden_layers": 36,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "hidden_act": "silu",
        "max_position_embeddings": 262144,
        "rms_norm_eps": 1e-6,
        "attention_bias": False,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 5000000.0,
            "mrope_section": [24, 20, 20],
            "mrope_interleaved": True,
        },
    },
    "vision_config": {
        "model_type": "qwen3_vl_vision",
        "depth": 27,
        "hidden_size": 1152,
        "intermediate_size": 4304,
        "num_heads": 16,
        "hidden_act": "gelu_pytorch_tanh",
        "in_channels": 3,
        "patch_size": 16,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "out_hidden_size": 4096,
        "num_position_embeddings": 2304,
        "deepstack_visual_indexes": [8, 16, 24],
    },
    "image_token_id": 151655,
    "video_token_id": 151656,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
    "tie_word_embeddings": False,
}

QWEN3VL_DEBUG = {
    "model_type": "qwen3_vl",
    "text_config": {
        "model_type": "qwen3_vl_text",
        "vocab_size": 1024,  # above the synthetic tokenizer's 512 + special tokens
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "hidden_act": "silu",
        "max_position_embeddings": 262144,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 5000000.0,
            "mrope_section": [
                2,
                3,
                3,
            ],  # (t, h, w) over head_dim / 2 frequencies, interleaved as the real one
            "mrope_interleaved": True,
        },
    },
    "vision_config": {
        "model_type": "qwen3_vl_vision",
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "patch_size": 16,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "out_hidden_size": 64,
        "num_position_embeddings": 2304,
        "deepstack_visual_indexes": [0, 1],
    },
    **{key: value for key, value in QWEN3VL_8B.items() if key.endswith("token_id")},
    "tie_word_embeddings": False,
}

# The Qwen3-VL processors' published settings (preprocessor_config.json, video_preprocessor_config.json of
# the Qwen3-VL checkpoints): patch 16, merge 2, temporal patch 2, mean/std 0.5, pixel bounds. The judge and the
# encoder pass their recipe's pixel budgets on every call; the judge reads the video processor's shortest_edge.
QWEN3VL_IMAGE_PROCESSOR = {
    "size": {"shortest_edge": 65536, "longest_edge": 16777216},
    "patch_size": 16,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
}
QWEN3VL_VIDEO_PROCESSOR = {
    **QWEN3VL_IMAGE_PROCESSOR,
    "size": {"shortest_edge": 4096, "longest_edge": 25165824},
    "fps": 2,
    "min_frames": 4,
    "max_frames": 768,
}

# Wan-AI/Wan2.1-T2V-14B-Diffusers, vae/config.json; diffusers' AutoencoderKLWan() defaults are this config.
# 126.9M parameters ("127M" in the Wan2.1 report).
WAN21_VAE = {
    "base_dim": 96,
    "z_dim": 16,
    "dim_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
    "attn_scales": [],
    "temperal_downsample": [False, True, True],
    "dropout": 0.0,
    "latents_mean": [
        -0.7571,
        -0.7089,
        -0.9113,
        0.1075,
        -0.1745,
        0.9653,
        -0.1517,
        1.5508,
        0.4134,
        -0.0715,
        0.5517,
        -0.3632,
        -0.1922,
        -0.9497,
        0.2503,
        -0.2921,
    ],  # fmt: skip
    "latents_std": [
        2.8184,
        1.4541,
        2.3275,
        2.6558,
        1.2196,
        1.7708,
        2.6052,
        2.0743,
        3.2687,
        2.1526,
        2.8652,
        1.5579,
        1.6382,
        1.1253,
        2.8251,
        1.916,
    ],  # fmt: skip
}
WAN21_VAE_DEBUG = {**WAN21_VAE, "base_dim": 8, "dim_mult": [1, 2, 2, 2], "num_res_blocks": 1}

# Wan-AI/Wan2.1-T2V-14B-Diffusers, transformer/config.json; diffusers' WanTransformer3DModel() defaults are
# this config: 14.288B parameters (MIVE.md). The MiVE DiT is its self-attention backbone (trainer/model.py).
WAN21_T2V_14B = {
    "patch_size": [1, 2, 2],
    "num_attention_heads": 40,
    "attention_head_dim": 128,
    "in_channels": 16,
    "out_channels": 16,
    "text_dim": 4096,
    "freq_dim": 256,
    "ffn_dim": 13824,
    "num_layers": 40,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "image_dim": None,
    "added_kv_proj_dim": None,
    "rope_max_seq_len": 1024,
}
WAN21_T2V_DEBUG = {
    **WAN21_T2V_14B,
    "num_attention_heads": 4,
    "attention_head_dim": 32,
    "text_dim": 32,
    "freq_dim": 64,
    "ffn_dim": 256,
    "num_layers": 2,
}

# facebook/sam2.1-hiera-large as transformers' Sam2VideoModel: the hiera-large backbone of transformers'
# convert_sam2_to_hf.py get_config("sam2.1_hiera_large") (Meta's sam2.1_hiera_l.yaml), the library defaults
# elsewhere, SAM2.1's temporal encoding of object pointers and occlusion embedding. SAM2 paper: 224.4M.
SAM21_HIERA_LARGE = {
    "model_type": "sam2_video",
    "vision_config": {
        "model_type": "sam2_vision_model",
        "backbone_config": {
            "model_type": "sam2_hiera_det_model",
            "hidden_size": 144,
            "blocks_per_stage": [2, 6, 36, 4],
            "embed_dim_per_stage": [144, 288, 576, 1152],
            "num_attention_heads_per_stage": [2, 4, 8, 16],
            "global_attention_blocks": [23, 33, 43],
            "window_positional_embedding_background_size": [7, 7],
            "window_size_per_stage": [8, 4, 16, 8],
        },
        "backbone_channel_list": [1152, 576, 288, 144],
    },
    "image_size": 1024,
    "enable_temporal_pos_encoding_for_object_pointers": True,
    "enable_occlusion_spatial_embedding": True,
}

# Tiny, at image size 128: the memory encoder's 64 output channels (hard-wired in the memory attention) divide
# the 128-wide hidden size, the feature pyramid is the image size / 4, 8, 16 (as dataengine.synthetic.portraits).
SAM21_DEBUG = {
    "model_type": "sam2_video",
    "vision_config": {
        "model_type": "sam2_vision_model",
        "backbone_config": {
            "model_type": "sam2_hiera_det_model",
            "hidden_size": 8,
            "image_size": [128, 128],
            "blocks_per_stage": [1, 1, 2, 1],
            "embed_dim_per_stage": [8, 16, 32, 64],
            "num_attention_heads_per_stage": [1, 1, 2, 2],
            "window_size_per_stage": [4, 4, 4, 4],
            "global_attention_blocks": [3],
            "window_positional_embedding_background_size": [2, 2],
        },
        "backbone_channel_list": [64, 32, 16, 8],
        "backbone_feature_sizes": [[32, 32], [16, 16], [8, 8]],
        "fpn_hidden_size": 128,
    },
    "prompt_encoder_config": {
        "hidden_size": 128,
        "image_size": 128,
        "patch_size": 16,
        "mask_input_channels": 4,
    },
    "mask_decoder_config": {
        "hidden_size": 128,
        "mlp_dim": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "iou_head_hidden_dim": 32,
    },
    "image_size": 128,
    "num_maskmem": 3,
    "memory_attention_hidden_size": 128,
    "memory_attention_num_layers": 1,
    "memory_attention_feed_forward_hidden_size": 64,
    "memory_attention_rope_feat_sizes": [8, 8],
    "memory_encoder_hidden_size": 128,
    "memory_encoder_output_channels": 64,
    "mask_downsampler_embed_dim": 128,
    "memory_fuser_embed_dim": 128,
    "memory_fuser_intermediate_dim": 64,
    "memory_fuser_num_layers": 1,
    "enable_temporal_pos_encoding_for_object_pointers": True,
    "enable_occlusion_spatial_embedding": True,
}


# PekingU/rtdetr_v2_r50vd (RT-DETRv2-R50, COCO): transformers' convert_rt_detr_v2_weights_to_hf.py builds it as
# RTDetrV2Config() with its defaults (ResNet-50-vd backbone, 256-wide hybrid encoder, 6 decoder layers, 300
# queries) and the 80 COCO classes of huggingface/label-files coco-detection-mmdet-id2label.json, person first.
COCO_LABELS = (
    "person bicycle car motorcycle airplane bus train truck boat traffic_light fire_hydrant stop_sign "
    "parking_meter bench bird cat dog horse sheep cow elephant bear zebra giraffe backpack umbrella handbag tie "
    "suitcase frisbee skis snowboard sports_ball kite baseball_bat baseball_glove skateboard surfboard "
    "tennis_racket bottle wine_glass cup fork knife spoon bowl banana apple sandwich orange broccoli carrot "
    "hot_dog pizza donut cake chair couch potted_plant bed dining_table toilet tv laptop mouse remote keyboard "
    "cell_phone microwave oven toaster sink refrigerator book clock vase scissors teddy_bear hair_drier toothbrush"
).split()
RTDETR_V2_R50 = {
    "model_type": "rt_detr_v2",
    "id2label": {str(i): name.replace("_", " ") for i, name in enumerate(COCO_LABELS)},
    "label2id": {name.replace("_", " "): i for i, name in enumerate(COCO_LABELS)},
}

# The tiny one is dataengine.synthetic.detector's (the demo's and the tests' detector).
RTDETR_V2_DEBUG = TINY_DETECTOR_CONFIG


def get_spec(name: str) -> ModelSpec:
    """The registry entry ``name``, with a clear error for an unknown one."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {sorted(MODELS)}")
    return MODELS[name]


def library_config(name: str, size: str = "real", overrides: dict[str, Any] | None = None) -> Any:
    """The library's configuration object (transformers) or config dict (diffusers) of a registry model.

    ``overrides`` replace top-level keys (for instance the Qwen3-VL special-token ids of the tokenizer in use).
    """
    spec = get_spec(name)
    values = {**spec.config(size), **(overrides or {})}
    if spec.library == "diffusers":
        return values
    return spec.model_class().config_class(**values)


def build_random(
    name: str,
    size: str = "real",
    device: str | torch.device = "meta",
    dtype: torch.dtype | None = None,
    overrides: dict[str, Any] | None = None,
) -> nn.Module:
    """The model ``name`` at ``size`` with random weights (the library's init), created directly on ``device``.

    ``"meta"`` allocates nothing (parameter counts); ``"cuda"`` builds on the GPU without a CPU init.
    """
    spec = get_spec(name)
    return _instantiate(spec, library_config(name, size, overrides), device, dtype)


def _instantiate(
    spec: ModelSpec, config: Any, device: str | torch.device, dtype: torch.dtype | None
) -> nn.Module:
    import torch

    cls = spec.model_class()
    with torch.device(device):
        if spec.library == "transformers":
            model = cls._from_config(config, dtype=dtype)
        else:
            model = cls.from_config(config)
            if dtype is not None and dtype != torch.float32:  # built in float32
                model = model.to(dtype)
    return model.eval()


def num_parameters(model: nn.Module) -> int:
    """Parameters of a model (works on the meta device)."""
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------- folders


def build_qwen3vl_processor() -> Any:
    """A Qwen3-VL processor with the real image and video settings and the synthetic tiny tokenizer."""
    from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor, Qwen3VLVideoProcessor

    from dataengine.synthetic.qwen3vl import CHAT_TEMPLATE, train_tokenizer

    return Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(**QWEN3VL_IMAGE_PROCESSOR),
        tokenizer=train_tokenizer(512),
        video_processor=Qwen3VLVideoProcessor(**QWEN3VL_VIDEO_PROCESSOR),
        chat_template=CHAT_TEMPLATE,
    )


def build_sam2_processor(image_size: int) -> Any:
    """transformers' SAM2 video processor at ``image_size`` (1024 for the real models: the library default)."""
    from transformers import Sam2ImageProcessor, Sam2VideoProcessor, Sam2VideoVideoProcessor

    size = {"height": image_size, "width": image_size}
    mask = {"height": image_size // 4, "width": image_size // 4}
    return Sam2VideoProcessor(
        image_processor=Sam2ImageProcessor(size=size, mask_size=mask),
        video_processor=Sam2VideoVideoProcessor(size=size),
    )


def qwen3vl_token_overrides(tokenizer: Any) -> dict[str, int]:
    """The Qwen3-VL special-token ids of ``tokenizer`` (the synthetic one's differ from Qwen's 151652...)."""
    ids = {
        "image_token_id": "<|image_pad|>",
        "video_token_id": "<|video_pad|>",
        "vision_start_token_id": "<|vision_start|>",
        "vision_end_token_id": "<|vision_end|>",
    }
    return {key: tokenizer.convert_tokens_to_ids(token) for key, token in ids.items()}


def _qwen3vl_files(target: Path, config: dict[str, Any], size: str) -> dict[str, Any]:
    """The processor of :func:`build_qwen3vl_processor` and a generation config; its special-token ids."""
    from transformers import GenerationConfig

    processor = build_qwen3vl_processor()
    tokenizer = processor.tokenizer
    processor.save_pretrained(target)
    eos = [tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")]
    GenerationConfig(eos_token_id=eos, pad_token_id=tokenizer.pad_token_id or eos[1]).save_pretrained(target)
    return qwen3vl_token_overrides(tokenizer)


def _sam2_files(target: Path, config: dict[str, Any], size: str) -> dict[str, Any]:
    """The SAM2 video processor at the configuration's image size."""
    build_sam2_processor(int(config["image_size"])).save_pretrained(target)
    return {}


def _detector_files(target: Path, config: dict[str, Any], size: str) -> dict[str, Any]:
    """RT-DETR's image processor as published (640 x 640, rescaled to [0, 1], no normalisation); the debug
    flavour's input is 64 x 64, as ``dataengine.synthetic.detector``'s (its forward at 640 is slow on a CPU)."""
    from transformers import RTDetrImageProcessor

    side = 640 if size == "real" else 64
    RTDetrImageProcessor(size={"height": side, "width": side}).save_pretrained(target)
    return {}


MODELS: dict[str, ModelSpec] = {
    "qwen3vl_8b": ModelSpec(
        source="Qwen/Qwen3-VL-8B-Instruct",
        library="transformers",
        model_class=_qwen3vl_class,
        real=QWEN3VL_8B,
        debug=QWEN3VL_DEBUG,
        published_parameters="8.77B",
        published_note="model card: 8.77B parameters",
        extra_files=_qwen3vl_files,
    ),
    "wan21_vae": ModelSpec(
        source="Wan-AI/Wan2.1-T2V-14B-Diffusers (vae)",
        library="diffusers",
        model_class=_wan_vae_class,
        real=WAN21_VAE,
        debug=WAN21_VAE_DEBUG,
        published_parameters="127M",
        published_note="Wan2.1 report: a 127M-parameter Wan-VAE",
        subfolder="vae",
    ),
    "wan21_t2v_14b": ModelSpec(
        source="Wan-AI/Wan2.1-T2V-14B-Diffusers (transformer)",
        library="diffusers",
        model_class=_wan_transformer_class,
        real=WAN21_T2V_14B,
        debug=WAN21_T2V_DEBUG,
        published_parameters="14.288B",
        published_note="MIVE.md: diffusers' WanTransformer3DModel() has 14.288B parameters",
        subfolder="transformer",
    ),
    "sam21_hiera_large": ModelSpec(
        source="facebook/sam2.1-hiera-large",
        library="transformers",
        model_class=_sam2_video_class,
        real=SAM21_HIERA_LARGE,
        debug=SAM21_DEBUG,
        published_parameters="224.4M",
        published_note="SAM 2 paper, Hiera-L: 224.4M parameters",
        extra_files=_sam2_files,
    ),
    "rtdetr_v2_r50": ModelSpec(
        source="PekingU/rtdetr_v2_r50vd",
        library="transformers",
        model_class=_rtdetr_v2_class,
        real=RTDETR_V2_R50,
        debug=RTDETR_V2_DEBUG,
        published_parameters="43M",
        published_note=(
            "hub listing: model.safetensors is 172 MB of float32, 43.0M values (parameters and BatchNorm "
            "statistics); the RT-DETRv2 paper gives R50 as 42M"
        ),
        extra_files=_detector_files,
    ),
}


def write_model_folder(name: str, folder: str | Path, size: str = "real") -> Path:
    """Write ``folder`` in the checkpoint's layout: configuration and processor files, no weights.

    Load it inside :func:`random_weights`. The Wan models go to ``folder/<subfolder>`` as in their repository.
    """
    spec = get_spec(name)
    folder = Path(folder)
    target = folder / spec.subfolder
    target.mkdir(parents=True, exist_ok=True)
    overrides = spec.extra_files(target, spec.config(size), size) if spec.extra_files else {}
    config = library_config(name, size, overrides)
    if spec.library == "transformers":
        config.save_pretrained(target)
    else:
        (target / "config.json").write_text(
            json.dumps({**config, "_class_name": spec.model_class().__name__})
        )
    return folder


# from_pretrained keywords that only say where and how a checkpoint's files are fetched. The Auto classes pass
# them all, resolved (``AutoModelForObjectDetection.from_pretrained``, the detector's loader, adds ``revision``,
# ``_from_auto``, ``trust_remote_code`` and ``adapter_kwargs`` to the caller's keywords); inside
# random_weights nothing is fetched (the folder is local and holds no weights), so they have nothing to do.
FETCH_KEYWORDS = frozenset(
    {
        "cache_dir",
        "force_download",
        "local_files_only",
        "proxies",
        "revision",
        "token",
        "code_revision",
        "_commit_hash",
        "_from_auto",
    }
)


@contextmanager
def random_weights(device: str | torch.device) -> Iterator[None]:
    """Inside, ``from_pretrained`` of every registry class builds the folder's config with random weights on
    ``device`` instead of reading weights: the callers' constructors run unchanged on a folder from
    :func:`write_model_folder`, also through an Auto class (``AutoModelForObjectDetection`` resolves the
    registry class and calls its ``from_pretrained``).

    Keywords: ``subfolder``, ``dtype`` / ``torch_dtype`` (``"auto"``: the config's) and ``attn_implementation``
    are honoured; ``config`` (what an Auto class passes: the configuration it read, with any configuration
    keywords applied) is built instead of reading ``config.json`` again; :data:`FETCH_KEYWORDS`,
    ``trust_remote_code`` when false and ``adapter_kwargs`` that name no adapter are moot (nothing is fetched,
    no remote code or adapter exists). Any other keyword (``device_map``, ``quantization_config``, an adapter,
    remote code) changes what would be built and is an error rather than silently ignored.

    Why a redirect and not the library's own loader with no weights (``from_pretrained(None, config=...,
    state_dict={})``, which takes every keyword): it builds on the meta device and initialises only what the
    model's ``_init_weights`` covers, and SAM2's parameters that its constructor fills (embeddings created with
    ``torch.zeros`` / ``torch.randn``) come out as uninitialised memory (NaN seen on the CPU); the constructor
    run here on ``device`` initialises every parameter as the class defines it.
    """
    with ExitStack() as stack:
        for spec in MODELS.values():
            cls = spec.model_class()
            stack.enter_context(
                mock.patch.object(cls, "from_pretrained", _random_from_pretrained(spec, device))
            )
        yield


def _loading_options(folder: str | Path, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The keywords :func:`random_weights` honours, popped from ``kwargs``; the moot ones dropped; an error for
    any other (see there)."""
    options = {
        "subfolder": kwargs.pop("subfolder", None) or "",
        "dtype": kwargs.pop("dtype", None),
        "attn_implementation": kwargs.pop("attn_implementation", None),
        "config": kwargs.pop("config", None),
    }
    torch_dtype = kwargs.pop("torch_dtype", None)
    options["dtype"] = options["dtype"] if options["dtype"] is not None else torch_dtype
    for key in FETCH_KEYWORDS & kwargs.keys():
        del kwargs[key]
    if not kwargs.get("trust_remote_code", False):
        kwargs.pop("trust_remote_code", None)
    adapter = kwargs.get("adapter_kwargs")
    if adapter is None or (isinstance(adapter, dict) and "_adapter_model_path" not in adapter):
        kwargs.pop("adapter_kwargs", None)  # {} or {"revision": ...}: no adapter found, nothing to load
    if kwargs:
        raise TypeError(
            f"random_weights: from_pretrained({folder}) got keywords it cannot honour: {sorted(kwargs)} "
            "(they would change what is built; random_weights builds the folder's config on one device)"
        )
    return options


def _random_from_pretrained(spec: ModelSpec, device: str | torch.device) -> classmethod:
    def from_pretrained(cls: type, folder: str | Path, **kwargs: Any) -> nn.Module:
        import torch

        options = _loading_options(folder, kwargs)
        path = Path(folder) / options["subfolder"]
        dtype = options["dtype"]
        if spec.library == "diffusers":
            config = options["config"] or cls.load_config(path)
            if isinstance(dtype, str):
                dtype = None if dtype == "auto" else getattr(torch, dtype)
            return _instantiate(spec, dict(config), device, dtype)
        from transformers import GenerationConfig

        config = options["config"] or cls.config_class.from_pretrained(path)
        if dtype == "auto":
            dtype = getattr(config, "dtype", None)
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        attn = options["attn_implementation"]
        extra = {} if attn is None else {"attn_implementation": attn}
        with torch.device(device):
            model = cls._from_config(config, dtype=dtype, **extra)
        if (path / "generation_config.json").exists():
            model.generation_config = GenerationConfig.from_pretrained(path)
        return model.eval()

    return classmethod(from_pretrained)
