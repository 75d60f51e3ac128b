"""clipreid: player and person re-identification with contrastively fine-tuned CLIP image encoders.

The names a user reaches for are importable from the top level; they load on first use, so ``import clipreid``
stays light (no torch import until one is used)::

    from clipreid import load_encoder, embed, squared_distances, compute_scores
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_API = {
    "embed": "features",
    "squared_distances": "rerank",
    "load_encoder": "weights",
    "build_encoder": "model",
    "ModelSpec": "model",
    "ReIDEncoder": "model",
    "compute_scores": "metrics",
    "k_reciprocal": "rerank",
    "k_reciprocal_features": "rerank",
    "hard_k_reciprocal": "rerank",
    "similarity_fusion": "fusion",
    "dissimilarity_fusion": "fusion",
    "read_distance_matrix": "submission",
    "write_distance_matrix": "submission",
    "UserError": "errors",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'clipreid' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))

