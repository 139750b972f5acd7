"""Device and dtype names from recipes (``auto``, ``cpu``, ``cuda:N``; ``auto``, ``float32``, ``bfloat16`` ...).

torch is imported inside the functions so that importing a block stays cheap (CLI start-up, Ray pickling).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

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
