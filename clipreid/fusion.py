"""Fusion of several models' query x gallery distance matrices (the MMSports 2023 winners' rank fusion).

The winners (Yu, Li et al., "Exploring Loss Function and Rank Fusion for Enhanced Person Re-identification")
fused their models twice, by similarity (a plain mean) and by dissimilarity (a per-query weighting that favours
the models that disagree with the majority), then averaged the two results. Their scripts are
``my_py/sim_fuse.py`` and ``my_py/dissim_fuse.py`` in LIRENDA621/MMSports2023_-Player_Reidentification_Challenge;
``dissimilarity_fusion`` reproduces ``dissim_fuse.py`` exactly (see its docstring), vectorised over queries.
All inputs must already be aligned to the same query and gallery order (``clipreid.submission.align_to``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


def _check_shapes(matrices: Sequence[Any]) -> tuple[int, ...]:
    if len(matrices) == 0:
        raise ValueError("fusion needs at least one distance matrix")
    shapes = [tuple(m.shape) for m in matrices]
    if len(shapes[0]) != 2:
        raise ValueError(f"distance matrices must be 2-d (queries x gallery), got shape {shapes[0]}")
    if any(s != shapes[0] for s in shapes):
        raise ValueError(f"distance matrices must all have the same shape, got {shapes}")
    return shapes[0]


def _like_first(matrices: Sequence[Any]) -> list[Any]:
    """All matrices as the type of the first one: torch tensors on its device, or numpy arrays."""
    first = matrices[0]
    if isinstance(first, torch.Tensor):
        dtype = first.dtype if first.is_floating_point() else None
        return [torch.as_tensor(m, device=first.device, dtype=dtype) for m in matrices]
    return [m.detach().cpu().numpy() if isinstance(m, torch.Tensor) else np.asarray(m) for m in matrices]


def _weighted_sum(matrices: list[Any], weights: Sequence[float]) -> Any:
    out = matrices[0] * float(weights[0])
    for m, w in zip(matrices[1:], weights[1:], strict=True):
        out = out + m * float(w)
    return out


def similarity_fusion(matrices: Sequence[Any], weights: Sequence[float] | None = None) -> Any:
    """Weighted element-wise mean of same-shape distance matrices; numpy or torch, the first one's type back.

    ``weights`` (one per matrix, >= 0, not all 0) are normalised to sum to 1; None means a plain mean, which is
    the winners' similarity fusion.
    """
    _check_shapes(matrices)
    if weights is None:
        weights = [1.0] * len(matrices)
    w = np.asarray([float(x) for x in weights], dtype=np.float64)
    if len(w) != len(matrices):
        raise ValueError(f"got {len(w)} weights for {len(matrices)} distance matrices")
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError(f"fusion weights must be finite and >= 0, got {w.tolist()}")
    if w.sum() == 0:
        raise ValueError("fusion weights must not all be 0")
    return _weighted_sum(_like_first(matrices), (w / w.sum()).tolist())


def _topk_mask(d: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of each row's k smallest entries; ties broken by the lower column index (a stable sort)."""
    kth = torch.kthvalue(d, k, dim=1, keepdim=True).values
    below = d < kth
    tied = d == kth
    room = k - below.sum(dim=1, keepdim=True)
    return below | (tied & (tied.cumsum(dim=1) <= room))


def dissimilarity_weights(matrices: Sequence[Any], topk: int = 15) -> torch.Tensor:
    """Per-query model weights of the dissimilarity fusion, as a float64 (models x queries) tensor on CPU.

    For each query: every model's ``topk`` gallery items (smallest distances, ties to the lower index); the
    agreed items are those in the top-k of at least a strict majority of models (``M // 2 + 1`` of M); each
    model's agreement is how many agreed items its own top-k holds, and its share is that over the total of all
    models' agreements. A model with no agreement gets share 0.1 instead of 0; when no model agrees at all,
    every share is 1/M. Weights are the inverse shares normalised to sum to 1, so the models that agree *least*
    with the majority weigh most (for 3 models with agreements 5, 5, 0: shares .5, .5, .1, weights 1/7, 1/7, 5/7).
    """
    shape = _check_shapes(matrices)
    if int(topk) != topk or topk < 1:
        raise ValueError(f"topk must be a positive integer, got {topk!r}")
    k = min(int(topk), shape[1])
    masks = []
    for m in matrices:
        d = m.detach() if isinstance(m, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(m))
        if not d.is_floating_point() or d.dtype in (torch.float16, torch.bfloat16):
            d = d.float()
        if torch.isnan(d).any():
            raise ValueError("dissimilarity fusion got a distance matrix with NaN values")
        masks.append(_topk_mask(d, k).cpu())
    votes = torch.stack(masks).sum(dim=0)
    agreed = votes >= len(matrices) // 2 + 1
    agreement = torch.stack([(mask & agreed).sum(dim=1) for mask in masks]).double()  # models x queries
    total = agreement.sum(dim=0, keepdim=True)
    share = torch.where(agreement > 0, agreement / total.clamp(min=1), torch.full_like(agreement, 0.1))
    share = torch.where(total > 0, share, torch.full_like(share, 1 / len(matrices)))
    inverse = 1 / share
    return inverse / inverse.sum(dim=0, keepdim=True)


def dissimilarity_fusion(matrices: Sequence[Any], topk: int = 15) -> Any:
    """The winners' dissimilarity fusion: per query, the models weighted by ``dissimilarity_weights``.

    Exactly ``my_py/dissim_fuse.py`` of the winners' repository (majority ``M // 2 + 1``, share 0.1 for a model
    with no agreement, 1/M each when nobody agrees, inverse shares), except that it works on the matrices given
    rather than on CSV text rounded to 5 decimals, and does not round its result. numpy or torch in, the first
    matrix's type out.
    """
    weights = dissimilarity_weights(matrices, topk)
    mats = _like_first(matrices)
    if isinstance(mats[0], torch.Tensor):
        dtype = mats[0].dtype if mats[0].is_floating_point() else torch.float32
        w = weights.to(device=mats[0].device, dtype=dtype)
    else:
        dtype = mats[0].dtype if mats[0].dtype.kind == "f" else np.float64
        w = weights.numpy().astype(dtype)
    out = mats[0] * w[0][:, None]
    for m, wm in zip(mats[1:], w[1:], strict=True):
        out = out + m * wm[:, None]
    return out


def winners_fusion(matrices: Sequence[Any], topk: int = 15, weights: Sequence[float] | None = None) -> Any:
    """The winners' final ensemble: the mean of the similarity fusion and the dissimilarity fusion.

    ``weights`` only apply to the similarity fusion (the winners used a plain mean there).
    """
    sim = similarity_fusion(matrices, weights)
    dissim = dissimilarity_fusion(matrices, topk)
    return similarity_fusion([sim, dissim])
