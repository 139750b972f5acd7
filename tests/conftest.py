"""Shared test setup: offline, tiny models built into temporary folders, generated videos."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MIVE_RAY_OBJECT_STORE_BYTES", str(512 * 1024 * 1024))


@pytest.fixture(scope="session")
def tiny_qwen3vl(tmp_path_factory):
    """The tiny random Qwen3-VL (seed 0), built once per session in the folder test_judge.py also uses."""
    from dataengine.synthetic.qwen3vl import build_tiny_qwen3vl

    folder = tmp_path_factory.getbasetemp() / "tiny_qwen3vl"
    if not (folder / "config.json").exists():
        build_tiny_qwen3vl(folder, seed=0)
    return folder
