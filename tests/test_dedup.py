"""Near-duplicate removal: the greedy rule against a brute-force reference, and the open_clip embedder on
a tiny random model loaded through open_clip's own API."""

from __future__ import annotations

import numpy as np
import open_clip
import pandas as pd
import pytest
import torch
from PIL import Image

from dataengine.media.video import read_frames
from dataengine.models.dedup import ClipEmbedder, DedupConfig, find_near_duplicates, pair_embeddings
from dataengine.steps.openve_reader import read_openve
from dataengine.synthetic.clip import TINY_CLIP_NAME
from dataengine.synthetic.openve import SyntheticOpenVEConfig, generate_openve


def _reference(frame: pd.DataFrame, vectors: np.ndarray, threshold: float, cap: int | None) -> set[str]:
    """Brute force: full cosine matrix, visit pairs in (score desc, pair_id) order per category."""
    cosines = vectors @ vectors.T
    dropped = set()
    for category in sorted(frame["category"].unique()):
        rows = frame[frame["category"] == category]
        order = sorted(rows.index, key=lambda i: (-frame.loc[i, "score"], frame.loc[i, "pair_id"]))
        kept: list[int] = []
        for i in order:
            if cap is not None and len(kept) >= cap:
                break
            if any(cosines[i, k] >= threshold for k in kept):
                dropped.add(frame.loc[i, "pair_id"])
            else:
                kept.append(i)
    return dropped


@pytest.mark.parametrize("cap", [None, 5])
def test_greedy_removal_matches_brute_force(cap):
    rng = np.random.default_rng(0)
    base = rng.normal(size=(40, 16))
    copies = base[rng.integers(0, 40, size=30)] + rng.normal(scale=0.05, size=(30, 16))  # near-copies
    vectors = np.concatenate([base, copies])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    frame = pd.DataFrame(
        {
            "pair_id": [f"p{i:03d}" for i in rng.permutation(70)],
            "category": rng.choice(["a", "b"], size=70),
            "score": np.round(rng.uniform(9, 10, size=70), 1),  # ties
        }
    )
    dropped = find_near_duplicates(frame, vectors, cosine_threshold=0.98, max_per_category=cap)
    assert set(dropped["pair_id"]) == _reference(frame, vectors, 0.98, cap)
    assert len(dropped) > 0


def test_the_higher_scored_copy_stays():
    vectors = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    frame = pd.DataFrame({"pair_id": ["a", "b", "c"], "category": ["x"] * 3, "score": [9.4, 9.8, 9.5]})
    dropped = find_near_duplicates(frame, vectors, cosine_threshold=0.99)
    assert dropped["pair_id"].tolist() == ["a"]
    assert "near-duplicate of b" in dropped["detail"].iloc[0]


def test_pair_cosine_is_the_mean_of_source_and_edit_cosines():
    rng = np.random.default_rng(1)
    unit = rng.normal(size=(4, 8))
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    pairs = pair_embeddings(unit[:2], unit[2:])
    assert np.allclose(np.linalg.norm(pairs, axis=1), 1.0)
    assert pairs[0] @ pairs[1] == pytest.approx(0.5 * (unit[0] @ unit[1] + unit[2] @ unit[3]))


@pytest.fixture(scope="module")
def tiny_clip(tiny_models):
    return tiny_models.open_clip_files  # build_tiny_open_clip's (config, weights)


def test_embedder_loads_through_open_clip_and_finds_the_planted_duplicates(tiny_clip, tmp_path):
    config_path, checkpoint = tiny_clip
    data = generate_openve(
        tmp_path,
        SyntheticOpenVEConfig(
            pairs_per_category=3, near_duplicates_per_category=1, categories=("local_add", "global_style")
        ),
    )
    pairs = read_openve(data.csv_dir, data.video_root).pairs
    config = DedupConfig(
        enabled=True, model=TINY_CLIP_NAME, pretrained=str(checkpoint), model_config=str(config_path)
    )
    embedder = ClipEmbedder(config)
    embeddings = embedder.embed_pairs(pairs)
    assert embeddings.shape == (len(pairs), 64)

    # independent: open_clip's own model, preprocessing and encode_image on the first frames
    model, _, preprocess = open_clip.create_model_and_transforms(TINY_CLIP_NAME, pretrained=str(checkpoint))
    frames = [read_frames(p, [0])[0] for p in pairs["source_path"]]
    with torch.no_grad():
        direct = model.eval().encode_image(torch.stack([preprocess(Image.fromarray(f)) for f in frames]))
    direct = torch.nn.functional.normalize(direct, dim=-1).numpy()
    assert np.allclose(embeddings[:, :32] * np.sqrt(2.0), direct, atol=1e-5)

    scored = pairs.assign(score=np.linspace(9.9, 9.4, len(pairs)))  # the originals rank above their copies
    dropped = find_near_duplicates(scored, embeddings, cosine_threshold=0.998)
    planted = {
        scored.loc[(scored["category"] == c) & (scored["csv_row"] == row), "pair_id"].item()
        for c, row in data.near_duplicates
    }
    assert set(dropped["pair_id"]) == planted
