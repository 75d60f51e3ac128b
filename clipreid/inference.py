"""The inference floor: what evaluate, predict, folder rankings, the trainer's validation and the demo share.

The options every inference stage takes are typed here, once: ``InferenceOptions`` (how features are computed),
``RerankOptions`` (which re-rankings, with which parameters) and ``FusionOptions`` (how several models' distances
are fused). They have no defaults on purpose: a script's ``Config`` inherits them and redeclares every field with
its default and its help comment, at the top of the script where a user reads and edits them (a test checks that
each script redeclares every inherited field with the same type). Their value checks (``INFERENCE_CHECKS``, ...)
run once, where a config enters (``clipreid.config.parse_config`` / ``load_config``); inside, values are trusted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from .config import Checks, at_least, available_device, between, each, non_negative, nonempty, rule
from .runtime import Precision

Rerank = Literal["none", "k_reciprocal", "hard"]  # none: squared Euclidean distances
Fusion = Literal["similarity", "dissimilarity", "winners"]
RERANKS: tuple[str, ...] = get_args(Rerank)
FUSIONS: tuple[str, ...] = get_args(Fusion)


@dataclass
class InferenceOptions:
    """How features of images are computed."""

    flip: bool  # average each image's features with its mirror image's
    batch_size: int
    precision: Precision
    device: str  # a torch device name, or auto
    cache_images: bool  # decode every image once into memory, shared by all checkpoints
    num_workers: int  # DataLoader workers decoding images when they are not cached
    progress: bool


INFERENCE_CHECKS: Checks = {
    "batch_size": at_least(1),
    "device": available_device,
    "num_workers": non_negative,
}


@dataclass
class RerankOptions:
    """Which distance matrices to compute from a model's features, and the re-rankings' parameters."""

    rerank: tuple[Rerank, ...]
    k1: int
    k2: int
    lambda_value: float  # k_reciprocal
    hard_lambda: float  # hard


RERANK_CHECKS: Checks = {
    "rerank": nonempty,
    "k1": at_least(1),
    "k2": at_least(1),
    "lambda_value": between(0, 1),
    "hard_lambda": between(0, 1),
}


@dataclass
class FusionOptions:
    """How the distance matrices of several models are fused into one."""

    fusion: Fusion
    weights: tuple[float, ...] | None  # similarity weights, one per input; None: equal
    topk_fusion: int  # gallery items per query the dissimilarity fusion compares


FUSION_CHECKS: Checks = {
    "weights": (each(non_negative), rule(lambda v, c: sum(v) > 0, "at least one weight > 0"),
                rule(lambda v, c: c.fusion != "dissimilarity",
                     "none with --fusion dissimilarity (it weighs the models itself)")),
    "topk_fusion": at_least(1),
}


def csv_suffix(rerank: str) -> str:
    """The file-name part of a re-ranking method: ``raw`` for none, else its name."""
    return "raw" if rerank == "none" else rerank
