"""The inference floor: what evaluate, predict, folder rankings, the trainer's validation and the demo share.

A checkpoint's features (``load_for_inference``, ``query_gallery_features`` on ``features.image_features``, the
one image path), re-ranking and fusion by name (``rerank_distances``, ``rerank_all``, ``fuse``), scores of a
validation split (``split_scores``) and the training's per-epoch validation with re-ranking
(``validate_reranked``) live here, below every stage: a stage imports this module, never another stage, so a
query image goes straight down from ``predict`` to the submission CSV.

The options every inference stage takes are typed here, once: ``InferenceOptions`` (how features are computed),
``RerankOptions`` (which re-rankings, with which parameters) and ``FusionOptions`` (how several models' distances
are fused). They have no defaults on purpose: a script's ``Config`` inherits them and redeclares every field with
its default and its help comment, at the top of the script where a user reads and edits them (a test checks that
each script redeclares every inherited field with the same type). Their value checks (``INFERENCE_CHECKS``, ...)
run once, where a config enters (``clipreid.config.parse_config`` / ``load_config``); inside, values are trusted.
"""

from __future__ import annotations

import gc
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import torch

from .config import Checks, at_least, available_device, between, each, non_negative, nonempty, rule
from .dataset import ImageSet, Split
from .features import ImageCache, extract_features, image_features
from .fusion import dissimilarity_fusion, similarity_fusion, winners_fusion
from .metrics import compute_scores
from .model import ReIDEncoder
from .rerank import hard_k_reciprocal, k_reciprocal_features, squared_distances
from .runtime import Precision, resolve_precision
from .weights import load_encoder

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


def fusion_description(names: Sequence[str], fusion: Fusion, noun: str = "inputs") -> str:
    """What a result is made of: the one input's name, or ``<fusion> fusion of <names>`` (their count past four)."""
    listed = ", ".join(names) if len(names) <= 4 else f"{len(names)} {noun}"
    return f"{fusion} fusion of {listed}" if len(names) > 1 else listed


def csv_suffix(rerank: str) -> str:
    """The file-name part of a re-ranking method: ``raw`` for none, else its name."""
    return "raw" if rerank == "none" else rerank


# --------------------------------------------------------------------------------------------------------------
# a checkpoint's features


def load_for_inference(checkpoint: Path, device: torch.device, model: str | None = None) -> ReIDEncoder:
    """``load_encoder`` after freeing the previous model's memory (several large checkpoints in a row)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return load_encoder(checkpoint, device, model)


def query_gallery_features(encoder: ReIDEncoder, query_paths: Sequence[Path], gallery_paths: Sequence[Path], *,
                           device: torch.device, opts: InferenceOptions, cache: ImageCache | None = None
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of the query and gallery images of a set that preprocess_data.py vetted, on ``device``, in one
    pass (as ``opts`` say), from ``cache`` when it is enabled. An
    image that cannot be read now ends the run with one line naming it: rows never shift onto other names."""
    paths = [*query_paths, *gallery_paths]
    got = image_features(encoder, paths, batch_size=opts.batch_size, device=device,
                         dtype=resolve_precision(opts.precision, device), flip=opts.flip,
                         num_workers=opts.num_workers, progress=opts.progress, cache=cache,
                         on_error="raise", hint="; re-run preprocess_data.py to leave it out")
    features = got.features.to(device)
    return features[:len(query_paths)], features[len(query_paths):]


# --------------------------------------------------------------------------------------------------------------
# re-ranking and fusion by name, scores of a split


def split_scores(distmat: torch.Tensor, split: Split) -> dict[str, float]:
    """``compute_scores`` of a query x gallery matrix of ``split`` (its players, and its cameras when it has them)."""
    return compute_scores(distmat, split.query_players, split.gallery_players, split.query_cams, split.gallery_cams)


def validate_reranked(encoder: ReIDEncoder, query: ImageSet | torch.Tensor, gallery: ImageSet | torch.Tensor,
                      split: Split, reranks: Sequence[Rerank], *, batch_size: int, dtype: torch.dtype | None,
                      flip: bool, num_workers: int, progress: bool) -> dict[str, float]:
    """The training's per-epoch validation: mAP, rank-k and mINP of raw distances, plus ``mAP_<method>`` and
    ``rank1_<method>`` for each re-ranking of ``reranks`` (the original logs raw and re-ranked scores)."""
    run = dict(batch_size=batch_size, dtype=dtype, flip=flip, num_workers=num_workers, progress=progress)
    qf = extract_features(encoder, query, desc="query features", **run)
    gf = extract_features(encoder, gallery, desc="gallery features", **run)
    record = {k: float(v) for k, v in split_scores(squared_distances(qf, gf), split).items()}
    for method in dict.fromkeys(m for m in reranks if m != "none"):
        scores = split_scores(rerank_distances(qf, gf, method), split)
        record[f"mAP_{method}"], record[f"rank1_{method}"] = float(scores["mAP"]), float(scores["rank1"])
    return record


def rerank_distances(query: torch.Tensor, gallery: torch.Tensor, method: Rerank, *, k1: int = 20, k2: int = 6,
                     lambda_value: float = 0.3, hard_lambda: float = 0.7, shared: int = 0) -> torch.Tensor:
    """The q x g distance matrix of L2-normalised features for a re-ranking ``method`` (see ``RERANKS``).

    ``none``: squared Euclidean; ``k_reciprocal``: Zhong et al. (k1, k2, lambda_value); ``hard``: the 2023
    winners' hard-weight variant (k1, k2, hard_lambda). Runs on the features' device. ``shared``: the last
    ``shared`` queries are the first ``shared`` gallery images, held once by the re-ranking (``clipreid.rerank``).
    """
    if method == "none":
        return squared_distances(query, gallery)
    if method == "k_reciprocal":
        return k_reciprocal_features(query, gallery, k1, k2, lambda_value, shared=shared)
    if method == "hard":
        return hard_k_reciprocal(query, gallery, k1, k2, hard_lambda, shared=shared)
    raise ValueError(f"unknown re-ranking {method!r}; choose from {', '.join(RERANKS)}")


def fuse(matrices: Sequence[torch.Tensor], method: Fusion = "similarity", weights: Sequence[float] | None = None,
         topk: int = 15) -> torch.Tensor:
    """Fuse same-shape distance matrices by ``similarity``, ``dissimilarity`` or ``winners`` fusion (float64).

    The weights were checked where they entered (``FUSION_CHECKS``); ``clipreid.fusion`` raises ValueError for
    misuse (a weight count that does not match, weights with dissimilarity fusion).
    """
    mats = [torch.as_tensor(m, dtype=torch.float64).cpu() for m in matrices]
    if method == "similarity":
        return similarity_fusion(mats, weights)
    if method == "dissimilarity":
        if weights is not None:
            raise ValueError("dissimilarity fusion weighs the models itself: it takes no weights")
        return dissimilarity_fusion(mats, topk)
    if method == "winners":
        return winners_fusion(mats, topk, weights)
    raise ValueError(f"unknown fusion {method!r}; choose from {', '.join(FUSIONS)}")


def rerank_all(query: torch.Tensor, gallery: torch.Tensor, opts: RerankOptions) -> dict[Rerank, torch.Tensor]:
    """The distance matrix of every re-ranking of ``opts.rerank`` (each once, in order), on the features' device."""
    return {m: rerank_distances(query, gallery, m, k1=opts.k1, k2=opts.k2, lambda_value=opts.lambda_value,
                                hard_lambda=opts.hard_lambda) for m in dict.fromkeys(opts.rerank)}
