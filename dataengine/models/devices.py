"""Device and dtype names from recipes (``auto``, ``cpu``, ``cuda:N``; ``auto``, ``float32``, ``bfloat16`` ...).

torch is imported inside the functions so that importing a block stays cheap (CLI start-up, Ray pickling).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch

DTYPE_NAMES = ("float32", "bfloat16", "float16")
DType = Literal["auto", "float32", "bfloat16", "float16"]
"""A recipe's dtype value (checked by ``dataengine.formats.recipe.build_config``)."""


def resolve_device(device: str) -> torch.device:
    """``"auto"`` is the first CUDA device when there is one, else the CPU."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(name: str, device: torch.device | str | None = None) -> torch.dtype:
    """A torch dtype from its recipe name; ``"auto"`` is bfloat16 on CUDA and float32 elsewhere."""
    import torch

    if name == "auto":
        return torch.bfloat16 if device is not None and torch.device(device).type == "cuda" else torch.float32
    if name not in DTYPE_NAMES:
        raise ValueError(f"unknown dtype {name!r}; expected auto or one of {list(DTYPE_NAMES)}")
    return getattr(torch, name)


def load_pretrained(
    processor_cls: Any,
    model_cls: Any,
    model: str,
    dtype: torch.dtype,
    device: torch.device,
    *,
    what: str,
    expected: str,
) -> tuple[Any, Any]:
    """``(processor, model)`` of a transformers checkpoint (hub id or folder): the model in ``dtype``, moved to
    ``device``, in eval mode. A checkpoint that cannot load is an ``OSError`` naming ``what`` and what a valid
    checkpoint is (``expected``)."""
    try:
        processor = processor_cls.from_pretrained(model)
        network = model_cls.from_pretrained(model, dtype=dtype)
    except (OSError, ValueError) as err:  # a missing folder is a ValueError (not a valid repo id)
        raise OSError(f"cannot load {what} from {model!r}: give {expected}: {err}") from err
    return processor, network.to(device).eval()
