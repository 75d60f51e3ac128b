"""Re-identification scores from a query x gallery distance matrix: mAP, CMC rank-1/5/10 and mINP.

The definitions are the challenge toolkit's (the README's evaluate.py section says the same):

- mAP: per query, ``sklearn.metrics.average_precision_score(y_true, -distances)``, so tied distances form one
  threshold; the mean over queries that have at least one true match.
- rank-k: CMC with first-match break on a stable ascending sort (ties keep gallery order).
- mINP (Ye et al., TPAMI 2021): per query, true matches / 1-based position of the last true match.

With cameras, gallery items of the query's id *and* camera are removed for that query (Market-1501 rule).

Everything is vectorised in torch over chunks of queries. Per chunk the only dense work is one sort; the scores
are then read off the (few) true matches: where each sits, and how many items lie at or before the end of its tie
group (a ``searchsorted`` in the sorted row).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor | Sequence[Any]

# elements of q x g handled per chunk: the sort's values and indices take about 12 bytes each
CHUNK_ELEMENTS = 2**25
RANKS = (1, 5, 10)


def _as_1d(values: ArrayLike, what: str) -> np.ndarray | torch.Tensor:
    if not isinstance(values, torch.Tensor):
        values = np.asarray(values)
    if values.ndim != 1:
        raise ValueError(f"{what} must be 1-D, got shape {tuple(values.shape)}")
    return values


def _codes(a: ArrayLike, b: ArrayLike, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer tensors on ``device`` that are equal exactly where the values of ``a`` and ``b`` are (any id type)."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and not (a.is_floating_point()
                                                                            or b.is_floating_point()):
        return a.to(device, torch.int64), b.to(device, torch.int64)
    a = a.cpu().numpy() if isinstance(a, torch.Tensor) else a
    b = b.cpu().numpy() if isinstance(b, torch.Tensor) else b
    if a.dtype.kind in "iub" and b.dtype.kind in "iub":
        ca, cb = a.astype(np.int64), b.astype(np.int64)
    else:  # strings, floats, objects: number the distinct values of both together
        try:
            _, inverse = np.unique(np.concatenate([a, b]), return_inverse=True)
        except TypeError as e:
            raise ValueError(f"cannot compare {a.dtype} query values with {b.dtype} gallery values: {e}") from None
        ca, cb = inverse[: len(a)], inverse[len(a):]
    return torch.as_tensor(ca, device=device), torch.as_tensor(cb, device=device)


def _padded_columns(rows: torch.Tensor, cols: torch.Tensor, n_rows: int, fill: int) -> tuple[torch.Tensor, ...]:
    """Per-row lists of column indices (row-major ``nonzero`` output) as an (n_rows, max_count) matrix.

    Rows are padded on the right with ``fill``; returns the matrix and the count per row.
    """
    counts = torch.bincount(rows, minlength=n_rows)
    width = max(int(counts.max()), 1)
    starts = torch.cumsum(counts, 0) - counts
    within = torch.arange(len(rows), device=rows.device) - starts[rows]
    out = torch.full((n_rows, width), fill, dtype=torch.int64, device=rows.device)
    out[rows, within] = cols
    return out, counts


def _chunk_scores(dist: torch.Tensor, qid: torch.Tensor, gid: torch.Tensor, qcam: torch.Tensor | None,
                  gcam: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    """AP, first-match position, last-match position and match count for each query row of ``dist``."""
    n, g = dist.shape
    match = qid[:, None] == gid[None, :]
    label = match.to(torch.int8)  # 1 true match, 0 other identity, -1 ignored (same id and camera)
    if qcam is not None:
        label.masked_fill_(match & (qcam[:, None] == gcam[None, :]), -1)
    del match
    values, order = torch.sort(dist, dim=1, stable=True)
    label = label.gather(1, order)
    del order
    # sorted positions of the true matches and of the ignored items, per row, padded with g (after everything)
    hits, n_pos = _padded_columns(*(label == 1).nonzero(as_tuple=True), n, g)
    if qcam is None:
        ignored = torch.full((n, 1), g, dtype=torch.int64, device=dist.device)
    else:
        ignored, _ = _padded_columns(*(label == -1).nonzero(as_tuple=True), n, g)
    del label
    real = torch.arange(hits.shape[1], device=dist.device)[None, :] < n_pos[:, None]

    # 1-based rank among the kept items = sorted position + 1 - ignored items sorted before it
    rank = hits + 1 - torch.searchsorted(ignored, hits)
    first = rank[:, 0]
    last = rank.gather(1, (n_pos - 1).clamp(min=0)[:, None])[:, 0]

    # Average precision over distinct thresholds: each match adds 1/n_pos recall at its tie group's threshold, where
    # precision counts every kept item up to the group's end (the last position holding the same distance).
    at = values.gather(1, hits.clamp(max=g - 1))
    end = torch.searchsorted(values, at, right=True) - 1
    true_upto = torch.searchsorted(hits, end, right=True)
    kept_upto = end + 1 - torch.searchsorted(ignored, end, right=True)
    precision = true_upto.double() / kept_upto.clamp(min=1).double()
    ap = (precision * real).sum(1) / n_pos.clamp(min=1)
    return ap, first, last, n_pos


def compute_scores(
    distmat: np.ndarray | torch.Tensor,
    query_ids: ArrayLike,
    gallery_ids: ArrayLike,
    query_cams: ArrayLike | None = None,
    gallery_cams: ArrayLike | None = None,
    *,
    chunk_size: int | None = None,
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """mAP, rank-1/5/10 and mINP (fractions in [0, 1]) of a q x g distance matrix (lower = more similar).

    ``distmat`` is a numpy array or a torch tensor; it is processed on ``device``, by default the tensor's own
    device (numpy: cpu), ``chunk_size`` query rows at a time. Ids and cameras are sequences, numpy arrays or
    tensors of any comparable type. Queries without a true match in their gallery are skipped by every metric;
    ``num_valid_queries`` says how many were scored. Infinite distances are allowed (equal infinities tie).
    """
    if distmat.ndim != 2:
        raise ValueError(f"distmat must be 2-D (queries x gallery), got shape {tuple(distmat.shape)}")
    n_query, n_gallery = distmat.shape
    query_ids = _as_1d(query_ids, "query_ids")
    gallery_ids = _as_1d(gallery_ids, "gallery_ids")
    if len(query_ids) != n_query:
        raise ValueError(f"distmat has {n_query} rows but {len(query_ids)} query ids")
    if len(gallery_ids) != n_gallery:
        raise ValueError(f"distmat has {n_gallery} columns but {len(gallery_ids)} gallery ids")
    if (query_cams is None) != (gallery_cams is None):
        raise ValueError("give both query_cams and gallery_cams, or neither")
    if query_cams is not None:
        query_cams = _as_1d(query_cams, "query_cams")
        gallery_cams = _as_1d(gallery_cams, "gallery_cams")
        if len(query_cams) != n_query:
            raise ValueError(f"distmat has {n_query} rows but {len(query_cams)} query cameras")
        if len(gallery_cams) != n_gallery:
            raise ValueError(f"distmat has {n_gallery} columns but {len(gallery_cams)} gallery cameras")
    if n_query == 0 or n_gallery == 0:
        raise ValueError(f"distmat is empty ({n_query} x {n_gallery}), so there is nothing to score")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")

    if device is None:
        device = distmat.device if isinstance(distmat, torch.Tensor) else torch.device("cpu")
    device = torch.device(device)
    qid, gid = _codes(query_ids, gallery_ids, device)
    qcam = gcam = None
    if query_cams is not None:
        qcam, gcam = _codes(query_cams, gallery_cams, device)
    step = chunk_size or max(1, CHUNK_ELEMENTS // max(n_gallery, 1))

    parts = []
    for start in range(0, n_query, step):
        chunk = distmat[start: start + step]
        if isinstance(chunk, np.ndarray):
            chunk = torch.from_numpy(np.ascontiguousarray(chunk))
        chunk = chunk.to(device)
        if chunk.dtype in (torch.float16, torch.bfloat16):
            chunk = chunk.float()  # exact, and sortable everywhere
        elif not chunk.is_floating_point():
            chunk = chunk.double()
        bad = torch.isnan(chunk).any(1)
        if bool(bad.any()):
            row = start + int(bad.nonzero()[0, 0])
            raise ValueError(f"distmat contains NaN (first in query row {row})")
        stop = start + len(chunk)
        parts.append(_chunk_scores(chunk, qid[start:stop], gid, None if qcam is None else qcam[start:stop], gcam))

    ap, first, last, n_pos = (torch.cat(p).cpu() for p in zip(*parts, strict=True))
    valid = n_pos > 0
    n_valid = int(valid.sum())
    if n_valid == 0:
        raise ValueError("no query has a true match in the gallery, so there is nothing to score")
    ap, first, last, n_pos = ap[valid].double(), first[valid], last[valid], n_pos[valid].double()
    scores = {"mAP": float(ap.mean())}
    for k in RANKS:
        scores[f"rank{k}"] = float((first <= k).double().mean())
    scores["mINP"] = float((n_pos / last.double()).mean())
    scores["num_valid_queries"] = n_valid
    return scores
