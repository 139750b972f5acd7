"""Near-duplicate removal with open_clip image embeddings of the clips' first frames.

A pair is embedded as ``normalize(concat(e(source first frame), e(edited first frame)))`` with each
``e`` L2-normalised, so the cosine of two pairs is the mean of their source and their edit cosines: two
edits of the same source are duplicates only when the edits look alike too.

Greedy removal, per category, in selection order (score descending, ties by ``pair_id``): a pair whose
cosine to an already kept pair is at least ``cosine_threshold`` is a ``duplicate`` of it, so of two
near-duplicates the higher-scored one stays. The scan stops once ``max_per_category`` pairs are kept:
the rest would be over the cap anyway (and are rejected as ``over_cap`` by the selection), which keeps
the work at O(cap x candidates) rather than quadratic in the candidates.

The model loads through open_clip's own API, ``open_clip.create_model_and_transforms(model,
pretrained=...)``: a model name with a pretrained tag (downloaded by open_clip from the hub), an
``hf-hub:org/repo`` or ``local-dir:/path`` spec, or a model name with ``pretrained`` a local checkpoint
(``model_config`` registers a custom config JSON first, as the tests' tiny model does).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from dataengine.media.video import read_frames
from dataengine.models.devices import resolve_device

DEDUP_STAGE = "dedup"


@dataclass
class DedupConfig:
    """Near-duplicate removal before the per-category cap."""

    enabled: bool = False
    """Run it at all (it needs an open_clip model)."""
    model: str = "ViT-B-32"
    """open_clip model name, or an ``hf-hub:org/repo`` / ``local-dir:/path`` spec."""
    pretrained: str = "laion2b_s34b_b79k"
    """open_clip pretrained tag or a local checkpoint path; empty for none (the spec carries weights)."""
    model_config: str = ""
    """Optional path of an open_clip model config JSON to register before loading (custom models)."""
    cosine_threshold: float = 0.95
    """Pairs with a cosine at or above this (mean of source and edit first-frame cosines) are duplicates."""
    batch_size: int = 64
    """Pairs embedded per batch."""
    device: str = "auto"
    """"auto" (cuda when available, else cpu) or a torch device string."""


class ClipEmbedder:
    """Embeds pairs' first frames with open_clip. Build it where it runs: it loads the model here."""

    def __init__(self, config: DedupConfig):
        import open_clip

        if config.model_config:
            open_clip.add_model_config(config.model_config)
        self.device = resolve_device(config.device)
        self.config = config
        model, _, preprocess = open_clip.create_model_and_transforms(
            config.model, pretrained=config.pretrained or None, device=self.device
        )
        self.model = model.eval()
        self.preprocess = preprocess

    def embed_frames(self, frames: list[np.ndarray]) -> np.ndarray:
        """L2-normalised image embeddings (N, D) of (H, W, 3) uint8 frames."""
        import torch
        from PIL import Image

        batch = torch.stack([self.preprocess(Image.fromarray(f)) for f in frames]).to(self.device)
        with torch.inference_mode():
            features = self.model.encode_image(batch).float()
        return torch.nn.functional.normalize(features, dim=-1).cpu().numpy()

    def embed_pairs(self, pairs: pd.DataFrame) -> np.ndarray:
        """Pair embeddings (N, 2D), unit norm, for rows with ``source_path`` and ``target_path``."""
        out = []
        for start in range(0, len(pairs), self.config.batch_size):
            chunk = pairs.iloc[start : start + self.config.batch_size]
            sources = [read_frames(p, [0])[0] for p in chunk["source_path"]]
            targets = [read_frames(p, [0])[0] for p in chunk["target_path"]]
            out.append(pair_embeddings(self.embed_frames(sources), self.embed_frames(targets)))
        return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def pair_embeddings(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Unit-norm pair embeddings from unit-norm source and target embeddings: cosines average."""
    return np.concatenate([source, target], axis=1) / np.sqrt(2.0)


def find_near_duplicates(
    candidates: pd.DataFrame,
    embeddings: np.ndarray,
    cosine_threshold: float,
    max_per_category: int | None = None,
) -> pd.DataFrame:
    """Greedy near-duplicate removal; returns the dropped pairs (``pair_id``, ``detail``).

    ``candidates`` (``pair_id``, ``category``, ``score``) row i has embedding ``embeddings[i]`` (unit norm).
    """
    if len(candidates) != len(embeddings):
        raise ValueError(f"{len(candidates)} candidates but {len(embeddings)} embeddings")
    frame = candidates[["pair_id", "category", "score"]].reset_index(drop=True)
    order = frame.sort_values(["category", "score", "pair_id"], ascending=[True, False, True], kind="stable")
    dropped: list[dict[str, str]] = []
    for _, group in order.groupby("category", sort=True):
        index = group.index.to_numpy()
        vectors = embeddings[index].astype(np.float32)
        kept: list[int] = []  # positions in ``index``
        kept_matrix = np.zeros((len(index), vectors.shape[1]), dtype=np.float32)
        for pos in range(len(index)):
            if max_per_category is not None and len(kept) >= max_per_category:
                break
            if kept:
                sims = kept_matrix[: len(kept)] @ vectors[pos]
                best = int(np.argmax(sims))
                if sims[best] >= cosine_threshold:
                    original = frame.loc[index[kept[best]]]
                    dropped.append(
                        {
                            "pair_id": frame.loc[index[pos], "pair_id"],
                            "detail": f"near-duplicate of {original['pair_id']} (score {original['score']:.4f}): "
                            f"first-frame cosine {sims[best]:.4f} >= {cosine_threshold:g}",
                        }
                    )
                    continue
            kept_matrix[len(kept)] = vectors[pos]
            kept.append(pos)
    return pd.DataFrame(dropped, columns=["pair_id", "detail"])
