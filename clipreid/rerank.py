"""k-reciprocal re-ranking (Zhong et al., CVPR 2017) and the MMSports 2023 winners' hard-weight variant.

Both run in torch on the input's device (numpy input runs on the CPU) and never build a dense N x N matrix:
distances are scanned in row chunks keeping only each row's nearest neighbours (on the CPU found by
``clipreid.nearest``, several times faster than ``torch.topk``, and the gallery rows of the distance-matrix API
read in place as columns of q_g and g_g, with no transposed copy), the k-reciprocal vectors are stored sparse
(CSR: a few dozen non-zeros per row), and the Jaccard term is a sparse join that pairs the non-zeros of each
query with the gallery non-zeros of the same column. On the CPU the reciprocal test, the set expansion and the join
are loops compiled with numba (:mod:`clipreid.rerank_cpu`; the same numbers as their torch versions, bit for bit).
Temporary memory grows with N * k, plus the q x g output.

    k_reciprocal(q_g, q_q, g_g)                  the reference's distance-matrix API and numbers
    k_reciprocal_features(query, gallery)        the same computation from features (no N x N matrix at all)
    hard_k_reciprocal(query, gallery)            0/1 vectors, Jaccard 1 - sum(min)/sum(max) (2023 winners)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import NamedTuple, TypeVar

import numpy as np
import torch
from torch import Tensor

from .nearest import smallest_in_columns, smallest_in_rows
from .runtime import in_threads

Array = TypeVar("Array", np.ndarray, Tensor)

# rows a CPU thread takes at a time: of the Jaccard join (thousands of pairs a row), of the other compiled steps
JOIN_ROWS = 8
CPU_ROWS = 256

_Rows = Callable[[int, int, Tensor], None]  # rows(a, b, out): rows a..b-1 of the distance matrix into out
_Pairs = Callable[[Tensor, Tensor], Tensor]  # pairs(r, c): the distance matrix at (r[k], c[k])


class _Columns(NamedTuple):
    """The gallery rows of the full distance matrix as columns of other matrices, read in place (on the CPU)."""

    parts: list[np.ndarray]  # the matrices whose rows, one after another, make the columns
    lines: Callable[[Tensor], Tensor]  # lines(i): gallery rows i (counted from the first gallery row), whole


# --------------------------------------------------------------------------------------------------------------
# public API


def squared_distances(x: Array, y: Array) -> Array:
    """Squared Euclidean distances between the rows of x and y (clamped at 0), the type of x in and out."""
    xt, yt = _as_tensor(x), _as_tensor(y)
    yt = yt.to(xt.device)
    dtype = _compute_dtype(xt.dtype)
    xt, yt = xt.to(dtype), yt.to(dtype)
    return _like(_sq_dist(xt, (xt * xt).sum(1), yt, (yt * yt).sum(1)), x)


def k_reciprocal(q_g: Array, q_q: Array, g_g: Array, k1: int = 20, k2: int = 6, lambda_value: float = 0.3,
                 *, chunk_size: int | None = None) -> Array:
    """k-reciprocal re-ranking of a query x gallery distance matrix (Zhong et al., CVPR 2017).

    Same numbers as the reference numpy ``re_ranking(q_g_dist, q_q_dist, g_g_dist)`` used across the ReID field:
    the full matrix [[q_q, q_g], [q_gᵀ, g_g]] is squared again and each column divided by its maximum; weights
    exp(-d) over the expanded k1-reciprocal sets (round(k1/2) sets join on more than 2/3 overlap), query
    expansion over k2 neighbours, Jaccard 1 - S/(2 - S) with S the sum of element-wise minima, and
    ``(1 - lambda_value) * jaccard + lambda_value * normalised original``. Returns q x g, numpy or torch like q_g.
    Where float32 normalised squares tie across a neighbour-set boundary (copies of an image, or two distances
    one rounding apart), the lower index joins first, as the reference's argsort does (see ``_break_ties``).
    ``chunk_size`` rows of the full matrix are assembled at a time (default: about 16M elements on the CPU).
    """
    qg, qq, gg = _as_tensor(q_g), _as_tensor(q_q), _as_tensor(g_g)
    q, g = qg.shape
    if qq.shape != (q, q) or gg.shape != (g, g):
        raise ValueError(f"k_reciprocal: expected q_q {q}x{q} and g_g {g}x{g} for q_g {q}x{g}, "
                         f"got {tuple(qq.shape)} and {tuple(gg.shape)}")
    _check_params(k1, k2, lambda_value)
    device = qg.device
    qq, gg = qq.to(device), gg.to(device)
    dtype = _compute_dtype(qg.dtype)

    # The reference transposes the column-normalised matrix, so its row i is column i of the full matrix:
    # rows of [[q_qᵀ, q_g], [q_gᵀ, g_gᵀ]], each normalised by its own maximum.
    def rows(a: int, b: int, out: Tensor) -> None:
        if a < q:
            e = min(b, q)
            _copy_transposed(out[:e - a, :q], qq[:, a:e])
            out[:e - a, q:].copy_(qg[a:e])
        if b > q:
            s = max(a, q)
            _copy_transposed(out[s - a:, :q], qg[:, s - q:b - q])
            _copy_transposed(out[s - a:, q:], gg[:, s - q:b - q])

    def pairs(r: Tensor, c: Tensor) -> Tensor:
        out = torch.empty(len(r), dtype=dtype, device=device)
        rq, cq = r < q, c < q
        m = rq & cq
        out[m] = qq[c[m], r[m]].to(dtype)
        m = rq & ~cq
        out[m] = qg[r[m], c[m] - q].to(dtype)
        m = ~rq & cq
        out[m] = qg[c[m], r[m] - q].to(dtype)
        m = ~rq & ~cq
        out[m] = gg[c[m] - q, r[m] - q].to(dtype)
        return out

    # the gallery rows are the columns of q_g and g_g: read in place where they hold the dtype computed in
    columns = None
    if (device.type == "cpu" and qg.dtype == gg.dtype == dtype and qg.stride(1) == gg.stride(1) == 1
            and min(qg.stride(0), gg.stride(0)) >= g):
        columns = _Columns([qg.numpy(), gg.numpy()], lambda i: torch.cat([qg[:, i], gg[:, i]]).T)
    out = _zhong(rows, pairs, q, q + g, k1, k2, lambda_value, chunk_size, device, dtype, columns=columns)
    return _like(out, q_g)


def k_reciprocal_features(query_features: Array, gallery_features: Array, k1: int = 20, k2: int = 6,
                          lambda_value: float = 0.3, *, chunk_size: int | None = None, shared: int = 0) -> Array:
    """:func:`k_reciprocal` on squared Euclidean distances of the features, without any N x N matrix.

    Gives the numbers ``k_reciprocal`` gives on ``squared_distances`` matrices of the same features
    (pass L2-normalised features for the challenge protocol). Distances are computed ``chunk_size`` rows at a
    time (default: about 16M elements on the CPU, 64M on a GPU); at N = 100,000 the working memory is about
    1 GB besides the q x g output. Returns q x g, numpy or torch like ``query_features``.

    ``shared``: the last ``shared`` queries are the first ``shared`` gallery items (the same images, as when a
    folder is ranked against itself). The q+g set of the algorithm then holds each image once, as the reference
    holds each query once: an image's neighbourhoods include itself, never a twin of it.
    """
    x, y, dtype = _feature_inputs(query_features, gallery_features, k1, k2, lambda_value, shared)
    device = x.device
    z = torch.cat([x.to(dtype), y[shared:].to(device=device, dtype=dtype)], 0)
    z_sq = (z * z).sum(1)

    q = len(x)

    def rows(a: int, b: int, out: Tensor) -> None:
        # In the order k_reciprocal reads squared_distances' matrices, query rows against the gallery come from
        # q_g as computed, every other entry from a matrix transposed: the squared norms added in that same
        # order give the very bits of those matrices, so near-ties fall as they fall there
        if a < q:  # whole rows in the order of their larger part, then the smaller part again (a product into
            e = min(b, q)  # part of a row goes through a temporary copy)
            first = 2 * q >= len(z)
            _sq_dist(z[a:e], z_sq[a:e], z, z_sq, out=out[:e - a], transposed=first)
            part = slice(q, None) if first else slice(0, q)
            if len(z[part]):
                _sq_dist(z[a:e], z_sq[a:e], z[part], z_sq[part], out=out[:e - a, part], transposed=not first)
        if b > q:
            s = max(a, q)
            _sq_dist(z[s:b], z_sq[s:b], z, z_sq, out=out[s - a:], transposed=True)

    def pairs(r: Tensor, c: Tensor) -> Tensor:
        return _pair_dist(z, z_sq, r, c)

    out = _zhong(rows, pairs, len(x), len(z), k1, k2, lambda_value, chunk_size, device, dtype,
                 g_start=len(x) - shared)
    return _like(out, query_features)


def hard_k_reciprocal(query_features: Array, gallery_features: Array, k1: int = 20, k2: int = 6,
                      lambda_value: float = 0.7, *, chunk_size: int | None = None, shared: int = 0) -> Array:
    """The MMSports 2023 winners' hard-weight k-reciprocal re-ranking, vectorised and sparse.

    Source: ``postprocess_distance`` in ``clipreid/evaluator.py`` (the 2023 code) of
    github.com/LIRENDA621/MMSports2023_-Player_Reidentification_Challenge (Yu, Li et al., "Exploring Loss
    Function and Rank Fusion for Enhanced Person Re-identification"), called there with k1=20, k2=6, lamda=0.7
    on L2-normalised features. With d the squared Euclidean distance of the features as given (no squaring
    again, no column normalisation), m queries, n gallery items:

    - R(p): gallery items g among query p's k1 nearest of all m+n items (p itself and other queries count
      towards the k1 but are dropped) with p among g's k1 nearest of all m+n items.
    - R(g): gallery items among g's k1 nearest gallery items (g included) that have g among theirs.
      H(g): the same with the k1 // 2 nearest (floor, not round).
    - Expansion: R*(p) = R(p) ∪ H(c) for each c in R(p) with |H(c) ∩ R(p)| >= 2/3 |H(c)| (>=, unlike the
      strict > of Zhong et al.); R*(g) = R(g) ∪ H(c) for each c in R(g) minus g, the overlap also counted
      against R(g) minus g.
    - Vectors: 0/1 indicators over the n gallery items (no exp weights). Query expansion averages 0/1 vectors:
      a query's vector becomes the mean of the vectors of its k2 nearest of all m+n items (itself included;
      query neighbours contribute query vectors); a gallery item's becomes the mean over its k2 nearest
      *other* gallery items (itself excluded). Always applied, also for k2 = 1; their neighbour lists hold k1
      items, so k2 is capped at k1 (k1 - 1 for gallery items).
    - Jaccard 1 - sum(min) / sum(max) over the expanded vectors (0/0 -> 1, which their code left as NaN).
    - Final: (1 - lambda_value) * d_qg / ||d_qg row||₂ (``F.normalize(dist, p=2)`` of the q x g matrix, row by
      row) + lambda_value * Jaccard.

    Deliberate differences from their Python loops, which are accidents of in-place updates: their query
    expansion overwrites the vectors row by row, so a row averaged later reads rows of earlier images that are
    already averaged (the result depends on the order of the images), and their candidate loop for R*(p) also
    visits the members of the first merged H(c) (a list extended while being iterated). Here every average
    reads the unexpanded vectors and only R(p) supplies candidates. On clustered test data this moves single
    distances by up to about 0.2 (almost all of it from the in-place averaging) and mAP by under 0.01 either
    way. Returns m x n, numpy or torch like ``query_features``.

    ``shared``: the last ``shared`` queries are the first ``shared`` gallery items (the same images), held once
    among the m+n items, as for ``k_reciprocal_features``; such an item is a gallery item of R(p) and brings
    its query vector to the query expansion.
    """
    x, y, dtype = _feature_inputs(query_features, gallery_features, k1, k2, lambda_value, shared)
    device = x.device
    m, n = len(x), len(y)
    g0 = m - shared  # the items g0.. are the gallery
    z = torch.cat([x.to(dtype), y[shared:].to(device=device, dtype=dtype)], 0)
    t = len(z)
    z_sq = (z * z).sum(1)
    dense, sparse = _budgets(device)
    chunk = chunk_size or max(1, dense // t)

    kt, kg = min(k1, t), min(k1, n)
    near_all = torch.empty(t, kt, dtype=torch.long, device=device)  # k1 nearest of all m+n items
    near_gal = torch.empty(n, kg, dtype=torch.long, device=device)  # gallery rows: k1 nearest gallery items
    out = torch.empty(m, n, dtype=dtype, device=device)
    buf = torch.empty(min(chunk, t), t, dtype=dtype, device=device)
    for a in range(0, t, chunk):
        b = min(a + chunk, t)
        d = _sq_dist(z[a:b], z_sq[a:b], z, z_sq, out=buf[:b - a])
        near_all[a:b] = d.topk(kt, 1, largest=False, sorted=True).indices
        if a < m:
            dq = d[:min(b, m) - a, g0:]
            out[a:min(b, m)] = dq / dq.norm(dim=1, keepdim=True).clamp_min(1e-12)
        if b > g0:
            s = max(a, g0)
            near_gal[s - g0:b - g0] = d[s - a:, g0:].topk(kg, 1, largest=False, sorted=True).indices
    del buf

    ar_m, ar_n = torch.arange(m, device=device), torch.arange(n, device=device)
    fwd_q = near_all[:m]
    gal_q = (fwd_q - g0).clamp_min(0)
    in_rp = (fwd_q >= g0) & _reciprocal(gal_q, near_all[g0:], ar_m)
    in_rg = _reciprocal(near_gal, near_gal, ar_n)
    half = near_gal[:, :k1 // 2]
    in_half = _reciprocal(half, half, ar_n)
    rows_q, cols_q = _expand(gal_q, in_rp, gal_q, in_rp, half, in_half, strict=False, num_cols=n, budget=sparse)
    cand_g = in_rg & (near_gal != ar_n[:, None])
    rows_g, cols_g = _expand(near_gal, in_rg, near_gal, cand_g, half, in_half, strict=False, num_cols=n,
                             budget=sparse)
    rows_v = torch.cat([rows_q, rows_g + m])
    cols_v = torch.cat([cols_q, cols_g])
    raw = _from_coo(rows_v, cols_v, torch.ones(len(rows_v), dtype=dtype, device=device), m + n)

    # rows of raw: the m query vectors, then the n gallery vectors; a shared item brings its query vector
    near_q = near_all[:m, :min(k2, kt)]
    vq = _neighbour_mean(raw, torch.where(near_q < m, near_q, near_q + shared), n, sparse)
    vg = _neighbour_mean(raw, near_gal[:, 1:min(k2 + 1, kg)] + m, n, sparse)
    sum_q, sum_g = _row_sums(vq), _row_sums(vg)
    for a, b, s in _min_join(vq, vg, n, sparse, chunk):
        union = sum_q[a:b, None] + sum_g[None, :] - s
        jaccard = torch.where(union > 0, 1 - s / torch.where(union > 0, union, 1), 1)
        out[a:b] = (1 - lambda_value) * out[a:b] + lambda_value * jaccard
    return _like(out, query_features)


# --------------------------------------------------------------------------------------------------------------
# Zhong et al.: the shared core of k_reciprocal and k_reciprocal_features


def _zhong(rows: _Rows, pairs: _Pairs, q: int, total: int, k1: int, k2: int, lambda_value: float,
           chunk_size: int | None, device: torch.device, dtype: torch.dtype, g_start: int | None = None,
           columns: _Columns | None = None) -> Tensor:
    """Re-ranked q x (total - g_start) distances from a row provider of the full (total x total) distance
    matrix: items 0..q-1 are the queries, g_start..total-1 the gallery (g_start < q: shared items).

    ``columns``, on the CPU: the gallery rows q..total-1 read in place as the columns of other matrices (rows
    of a transposed matrix cost a transposed copy otherwise)."""
    g_start = q if g_start is None else g_start
    dense, sparse = _budgets(device)
    chunk = chunk_size or max(1, dense // total)
    k_all = min(max(k1 + 1, k2), total)
    k_ext = min(k_all + 1, total)  # one more: a tie across the last boundary shows
    # the set sizes whose membership matters: forward (k1 + 1), half (round(k1 / 2) + 1), query expansion (k2)
    bounds = sorted({b for b in (k1 + 1, round(k1 / 2) + 1, k2) if 0 < b < k_ext})
    near = torch.empty(total, k_all, dtype=torch.long, device=device)
    row_max = torch.empty(total, dtype=dtype, device=device)
    out = torch.empty(q, total - g_start, dtype=dtype, device=device)
    cpu = device.type == "cpu"
    found = smallest_in_columns(columns.parts, k_ext) if columns is not None and total > q else None
    if found is not None:  # the gallery rows, without their transposed copy
        top, mx = torch.from_numpy(found.values), _squared_max(torch.from_numpy(found.maxima))
        near[q:], row_max[q:] = torch.from_numpy(found.indices[:, :k_all]), mx
        _break_ties(near[q:], top, columns.lines, mx, False, bounds)
    stop = q if found is not None else total
    buf = torch.empty(min(chunk, stop), total, dtype=dtype, device=device)  # reused: no page faults per chunk
    for a in range(0, stop, chunk):
        b = min(a + chunk, stop)
        d = buf[:b - a]
        rows(a, b, d)
        # squaring and dividing by the row's maximum keep the order of non-negative distances: their neighbours
        # come from the distances as they are; negative ones (or NaN) take the general way, squared first
        fast = smallest_in_rows(d.numpy(), k_ext) if cpu else None
        if fast is not None:
            top, mx, squared = torch.from_numpy(fast.values), _squared_max(torch.from_numpy(fast.maxima)), False
            near[a:b] = torch.from_numpy(fast.indices[:, :k_all])
        else:
            top = d.topk(k_ext, 1, largest=False, sorted=True)
            squared = not bool(top.values[:, 0].amin() >= 0)
            if squared:
                d.square_()
                mx = d.amax(1)
                mx = torch.where(mx > 0, mx, 1)
                top = d.topk(k_ext, 1, largest=False, sorted=True)
            else:
                mx = _squared_max(d.amax(1))
            near[a:b] = top.indices[:, :k_all]
            top = top.values
        row_max[a:b] = mx
        _break_ties(near[a:b], top, d.__getitem__, mx, squared, bounds)
        if a < q:  # the normalised squares of the query rows, written straight into the output
            e = min(b, q)
            dq, o = d[:e - a, g_start:], out[a:e]
            if squared:
                torch.div(dq, mx[:e - a, None], out=o)
            else:
                torch.mul(dq, dq, out=o).div_(mx[:e - a, None])
    del buf, d, top, mx, fast, found  # nothing of the scan outlives it (d: a view of buf)

    owner = torch.arange(total, device=device)
    fwd = near[:, :min(k1 + 1, total)]
    in_r = _reciprocal(fwd, fwd, owner)
    half = near[:, :min(round(k1 / 2) + 1, total)]
    in_half = _reciprocal(half, half, owner)
    r, c = _expand(fwd, in_r, fwd, in_r, half, in_half, strict=True, num_cols=total, budget=sparse)

    dist = pairs(r, c).to(dtype)
    w = torch.exp(-(dist * dist) / row_max[r])
    w_sum = torch.zeros(total, dtype=dtype, device=device).index_add_(0, r, w)
    v = _from_coo(r, c, w / w_sum[r], total)
    if k2 != 1:
        v = _neighbour_mean(v, near[:, :min(k2, k_all)], total, sparse)

    for a, b, s in _min_join(_row_slice(v, 0, q), _row_slice(v, g_start, total), total, sparse, chunk):
        # (1 - lambda) * (1 - s / (2 - s)) + lambda * out as lambda * out + (1 - lambda) - (1 - lambda) * s / (2 - s),
        # in place
        o = out[a:b]
        o.mul_(lambda_value).add_(1 - lambda_value).addcdiv_(s, torch.sub(2, s), value=lambda_value - 1)
    return out


def _squared_max(maxima: Tensor) -> Tensor:
    """Each row's largest square (the maximum of the squares, exactly), 1 where it is 0 (or NaN)."""
    mx = maxima.square()
    return torch.where(mx > 0, mx, 1)


def _break_ties(near: Tensor, top: Tensor, line: Callable[[Tensor], Tensor], mx: Tensor, squared: bool,
                bounds: list[int]) -> None:
    """Neighbour sets as the reference's argsort picks them where values tie across a set boundary.

    The reference sorts the float32 normalised squares d² / max, where two different distances can round to one
    value (and duplicate images give equal ones); it then takes the lower index first, as a stable sort does.
    ``top`` holds each row's k_all + 1 smallest of its distances in order (d² already when ``squared``);
    ``line(rows)`` gives those rows whole; a row whose normalised squares tie across a boundary gets its k_all
    neighbours again from its whole row, stably sorted. Such rows are rare (12 of 19,281 at Market-1501 size),
    so the exact rule costs nothing measurable.
    """
    if not bounds:
        return
    key = top / mx[:, None] if squared else torch.mul(top, top).div_(mx[:, None])
    at = torch.tensor(bounds, device=top.device)
    tied = (key[:, at - 1] == key[:, at]).any(1).nonzero().flatten()
    if len(tied):
        d = line(tied)
        rows = d / mx[tied, None] if squared else torch.mul(d, d).div_(mx[tied, None])
        order = np.argsort(rows.cpu().numpy(), axis=1, kind="stable")[:, :near.shape[1]]
        near[tied] = torch.from_numpy(order).to(near.device)


# --------------------------------------------------------------------------------------------------------------
# sparse building blocks


class _Sparse(NamedTuple):
    """Rows in CSR form: row r holds columns col[ptr[r]:ptr[r+1]] (sorted) with values val[...]."""

    ptr: Tensor
    col: Tensor
    val: Tensor


def _from_coo(rows: Tensor, cols: Tensor, vals: Tensor, num_rows: int) -> _Sparse:
    """CSR from entries already sorted by row."""
    ptr = torch.zeros(num_rows + 1, dtype=torch.long, device=rows.device)
    ptr[1:] = torch.bincount(rows, minlength=num_rows).cumsum(0)
    return _Sparse(ptr, cols, vals)


def _row_ids(sp: _Sparse) -> Tensor:
    counts = sp.ptr.diff()
    return torch.repeat_interleave(torch.arange(len(counts), device=counts.device), counts)


def _row_slice(sp: _Sparse, a: int, b: int) -> _Sparse:
    e0, e1 = int(sp.ptr[a]), int(sp.ptr[b])
    return _Sparse(sp.ptr[a:b + 1] - e0, sp.col[e0:e1], sp.val[e0:e1])


def _row_sums(sp: _Sparse) -> Tensor:
    sums = torch.zeros(len(sp.ptr) - 1, dtype=sp.val.dtype, device=sp.val.device)
    return sums.index_add_(0, _row_ids(sp), sp.val)


def _segment_index(starts: Tensor, lens: Tensor) -> tuple[Tensor, Tensor]:
    """(index, owner): the concatenation of arange(s, s + l) over the pairs (s, l), and for each of its elements
    the pair it came from (index_select by owner: faster than repeating values on the CPU here)."""
    total = int(lens.sum())
    owner = torch.repeat_interleave(lens, output_size=total)
    shift = starts - (lens.cumsum(0) - lens)
    return torch.arange(total, device=starts.device).add_(shift.index_select(0, owner)), owner


def _cost_chunks(cost: Tensor, budget: int, max_rows: int) -> Iterator[tuple[int, int]]:
    """Consecutive row ranges whose summed cost stays within ``budget`` (at least one row each)."""
    cum = cost.cumsum(0).cpu()
    n, a, done = len(cum), 0, 0
    while a < n:
        b = int(torch.searchsorted(cum, torch.tensor(done + budget), right=True))
        b = min(max(b, a + 1), a + max_rows, n)
        yield a, b
        done, a = int(cum[b - 1]), b


def _deal_rows(a: int, b: int, step: int, rows: Callable[[int, int], None]) -> None:
    """``rows(lo, hi)`` for the ranges of ``step`` rows that make a..b-1, dealt over torch's threads (for compiled
    loops, which release the GIL)."""

    def share(starts: range) -> bool:
        for lo in starts:
            rows(lo, min(lo + step, b))
        return True

    in_threads(share, range(a, b, step))


def _reciprocal(fwd: Tensor, back: Tensor, owner: Tensor) -> Tensor:
    """mask[r, a]: owner[r] is among back[fwd[r, a]] (fwd indexes the rows of back); on the CPU by a compiled
    loop (:func:`clipreid.rerank_cpu.reciprocal`), elsewhere by :func:`_reciprocal_device`."""
    if fwd.device.type != "cpu":
        return _reciprocal_device(fwd, back, owner)
    from .rerank_cpu import reciprocal  # numba is imported (and the loop compiled) only where the CPU re-ranks

    hit = np.zeros(tuple(fwd.shape), bool)
    # contiguous copies (small): one compiled signature for every call, not one for each layout of a slice
    f, bk, o = (np.ascontiguousarray(x.numpy()) for x in (fwd, back, owner))
    _deal_rows(0, len(hit), CPU_ROWS, lambda lo, hi: reciprocal(f, bk, o, lo, hi, hit))
    return torch.from_numpy(hit)


def _reciprocal_device(fwd: Tensor, back: Tensor, owner: Tensor) -> Tensor:
    """:func:`_reciprocal` in torch: a comparison per column of back."""
    hit = torch.zeros(fwd.shape, dtype=torch.bool, device=fwd.device)
    for j in range(back.shape[1]):
        hit |= back[:, j][fwd] == owner[:, None]
    return hit


def _expand(base: Tensor, in_base: Tensor, cand: Tensor, in_cand: Tensor, half: Tensor, in_half: Tensor, *,
            strict: bool, num_cols: int, budget: int) -> tuple[Tensor, Tensor]:
    """Per row: the base set plus the half set H(c) of each candidate c whose overlap with the candidate set
    is more than (strict) or at least 2/3 of |H(c)|. Returns sorted, de-duplicated COO (rows, cols): on the CPU
    by a compiled loop (:func:`clipreid.rerank_cpu.expand_rows`), elsewhere by :func:`_expand_device`; chunks of
    about ``budget`` candidate pairs."""
    if cand.device.type != "cpu":
        return _expand_device(base, in_base, cand, in_cand, half, in_half, strict=strict, num_cols=num_cols,
                              budget=budget)
    from .rerank_cpu import expand_rows  # numba is imported (and the loop compiled) only where the CPU re-ranks

    num_rows = len(cand)
    width = base.shape[1] + cand.shape[1] * half.shape[1]  # the most a row can hold
    step = max(1, budget // max(1, width))
    arrays = [np.ascontiguousarray(x.numpy()) for x in (base, in_base, cand, in_cand, half, in_half)]  # as above
    rows_out, cols_out = [], []
    ids_buf, lengths_buf = np.empty((min(step, num_rows), width), np.int64), np.empty(min(step, num_rows), np.int64)
    for a in range(0, num_rows, step):
        b = min(a + step, num_rows)
        ids, lengths = ids_buf[:b - a], lengths_buf[:b - a]

        def rows(lo: int, hi: int, a: int = a, ids: np.ndarray = ids, lengths: np.ndarray = lengths) -> None:
            expand_rows(*arrays, strict, lo, hi, np.zeros((2, num_cols), bool), ids[lo - a:hi - a],
                        lengths[lo - a:hi - a])

        _deal_rows(a, b, CPU_ROWS, rows)
        rows_out.append(np.repeat(np.arange(a, b), lengths))
        cols_out.append(ids[np.arange(width) < lengths[:, None]])
    return torch.from_numpy(np.concatenate(rows_out)), torch.from_numpy(np.concatenate(cols_out))


def _expand_device(base: Tensor, in_base: Tensor, cand: Tensor, in_cand: Tensor, half: Tensor, in_half: Tensor, *,
                   strict: bool, num_cols: int, budget: int) -> tuple[Tensor, Tensor]:
    """:func:`_expand` in torch: flags set at each row's candidates, read at its candidates' half sets."""
    num_rows, w = cand.shape
    h = half.shape[1]
    sentinel = num_cols
    rows_out, cols_out = [], []
    # rows per chunk: about ``budget`` candidate pairs, and a dense membership table of at most 8M flags
    step = max(1, min(budget // max(1, w * h), (1 << 23) // (num_cols + 1)))
    marks = torch.zeros(min(step, num_rows), num_cols + 1, dtype=torch.bool, device=cand.device)
    for a in range(0, num_rows, step):
        b = min(a + step, num_rows)
        c = b - a
        members = torch.where(in_cand[a:b], cand[a:b], sentinel)
        hc = half[cand[a:b]]  # (c, w, h)
        in_hc = in_half[cand[a:b]] & in_cand[a:b, :, None]
        # which members of each H(c) are candidates of the row: flags set at the row's candidates, read, cleared
        mark = marks[:c]
        mark.scatter_(1, members, True)
        found = mark.gather(1, hc.reshape(c, w * h)).view(c, w, h) & in_hc
        mark.scatter_(1, members, False)
        # count > 2/3 size (the reference's float64 2. / 3 * len(...)) in exact integers: 3 count > 2 size,
        # which no float64 rounding of size * (2/3) changes for any size up to 200,000 (checked); no float64
        # tensor on the device (Apple GPUs have none)
        size2, count3 = 2 * in_hc.sum(2), 3 * found.sum(2)
        accept = in_cand[a:b] & ((count3 > size2) if strict else (count3 >= size2))
        joined = torch.where(accept[:, :, None] & in_hc, hc, sentinel).reshape(c, w * h)
        ids = _sort_rows(torch.cat([torch.where(in_base[a:b], base[a:b], sentinel), joined], 1))
        keep = ids != sentinel
        keep[:, 1:] &= ids[:, 1:] != ids[:, :-1]
        rows_out.append(torch.arange(a, b, device=cand.device)[:, None].expand_as(ids)[keep])
        cols_out.append(ids[keep])
    return torch.cat(rows_out), torch.cat(cols_out)


def _sort_rows(x: Tensor) -> Tensor:
    """Each row of an integer matrix sorted; on the CPU by numpy, whose vectorised sort is about 6x torch's there."""
    if x.device.type == "cpu":
        return torch.from_numpy(np.sort(x.numpy(), axis=1))
    return x.sort(1).values


def _neighbour_mean(sp: _Sparse, nbr: Tensor, num_cols: int, budget: int) -> _Sparse:
    """Row i of the result is the mean of the rows nbr[i, :] of ``sp`` (local query expansion)."""
    num_rows, k = nbr.shape
    device = nbr.device
    if k == 0 or num_rows == 0:
        return _Sparse(torch.zeros(num_rows + 1, dtype=torch.long, device=device),
                       sp.col[:0], sp.val[:0])
    starts = sp.ptr[nbr]
    lens = sp.ptr[nbr + 1] - starts
    cost = lens.sum(1)
    rows, cols, vals = [], [], []
    for a, b in _cost_chunks(cost, budget, num_rows):
        idx, owner = _segment_index(starts[a:b].reshape(-1), lens[a:b].reshape(-1))
        key = owner.div(k, rounding_mode="floor") * num_cols + sp.col.index_select(0, idx)  # owner // k: the row
        if (b - a) * num_cols < 2**31:
            key = key.int()  # torch.unique sorts int32 keys about 1.5x faster than int64 ones
        uniq, inv = torch.unique(key, sorted=True, return_inverse=True)
        uniq = uniq.long()
        summed = torch.zeros(len(uniq), dtype=sp.val.dtype, device=device)
        summed.index_add_(0, inv, sp.val.index_select(0, idx))
        rows.append(uniq // num_cols + a)
        cols.append(uniq % num_cols)
        vals.append(summed / k)
    return _from_coo(torch.cat(rows), torch.cat(cols), torch.cat(vals), num_rows)


class _ByColumn(NamedTuple):
    """The gallery rows' non-zeros sorted by column: column c's run starts at ``start[c]`` and has ``count[c]``."""

    row: Tensor
    val: Tensor
    start: Tensor
    count: Tensor


def _min_join(qs: _Sparse, gs: _Sparse, num_cols: int, budget: int, max_rows: int) -> Iterator[
        tuple[int, int, Tensor]]:
    """Yield (a, b, S) with S[i - a, j] = sum_k min(qs[i, k], gs[j, k]) for query rows a..b-1, all rows j of gs.

    Each query non-zero in column k meets the gallery non-zeros of column k (gs sorted by column), and the pairs'
    minima are summed into the dense chunk: on the CPU by a compiled loop (:func:`_min_join_cpu`), elsewhere by
    torch (:func:`_min_join_device`); the same pairs in the same order, so the same sums. Chunks hold about
    ``budget`` pairs.
    """
    device = qs.col.device
    nq, ng = len(qs.ptr) - 1, len(gs.ptr) - 1
    # int32 keys sort about twice as fast as int64 ones on the CPU
    order = torch.argsort(gs.col.int() if num_cols < 2**31 else gs.col, stable=True)
    count = torch.bincount(gs.col, minlength=num_cols)
    by_col = _ByColumn(_row_ids(gs)[order], gs.val[order], count.cumsum(0) - count, count)
    pair_count = count[qs.col]
    row_cost = torch.zeros(nq, dtype=torch.long, device=device).index_add_(0, _row_ids(qs), pair_count)
    rows = max(1, min(max_rows, budget // max(1, ng)))
    join = _min_join_cpu if device.type == "cpu" else _min_join_device
    yield from join(qs, ng, _cost_chunks(row_cost, budget, rows), rows, by_col)


def _min_join_device(qs: _Sparse, ng: int, chunks: Iterator[tuple[int, int]], rows: int, by_col: _ByColumn
                     ) -> Iterator[tuple[int, int, Tensor]]:
    """:func:`_min_join` in torch: each chunk's pairs listed, their minima scattered into its sums (a chunk of at
    most ``rows`` rows)."""
    q_row, pair_count = _row_ids(qs), by_col.count[qs.col]
    for a, b in chunks:
        e0, e1 = int(qs.ptr[a]), int(qs.ptr[b])
        # per pair: its gallery entry (the column's run, then the place in it), its query non-zero, its cell of
        # the chunk and its query value (index_select: faster than x[index] here)
        idx, nz = _segment_index(by_col.start[qs.col[e0:e1]], pair_count[e0:e1])
        cell = ((q_row[e0:e1] - a) * ng).index_select(0, nz).add_(by_col.row.index_select(0, idx))
        qv = qs.val[e0:e1].index_select(0, nz)
        s = torch.zeros((b - a) * ng, dtype=qs.val.dtype, device=qs.val.device)
        s.index_add_(0, cell, torch.minimum(qv, by_col.val.index_select(0, idx), out=qv))
        yield a, b, s.view(b - a, ng)


def _min_join_cpu(qs: _Sparse, ng: int, chunks: Iterator[tuple[int, int]], rows: int, by_col: _ByColumn
                  ) -> Iterator[tuple[int, int, Tensor]]:
    """:func:`_min_join` on the CPU: the pairs summed by the compiled :func:`clipreid.rerank_cpu.min_join_rows`,
    JOIN_ROWS query rows at a time dealt over torch's threads, into one buffer of ``rows`` rows reused by every
    chunk (no pair is materialised; each S is overwritten by the next)."""
    from .rerank_cpu import min_join_rows  # numba is imported (and the loop compiled) only where the CPU re-ranks

    q_ptr, q_col, q_val, g_row, g_val, starts, counts = (np.ascontiguousarray(x.numpy()) for x in (*qs, *by_col))
    buf = torch.empty(min(rows, len(qs.ptr) - 1), ng, dtype=qs.val.dtype)
    for a, b in chunks:
        s = buf[:b - a]
        out = s.numpy()
        _deal_rows(a, b, JOIN_ROWS, lambda lo, hi, a=a, out=out: min_join_rows(q_ptr, q_col, q_val, starts, counts,
                                                                                g_row, g_val, lo, hi, a, out))
        yield a, b, s


# --------------------------------------------------------------------------------------------------------------
# distances, types and checks


def _sq_dist(x: Tensor, x_sq: Tensor, y: Tensor, y_sq: Tensor, out: Tensor | None = None, *,
             transposed: bool = False) -> Tensor:
    """Squared distances (|y|² - 2 x·y) + |x|², clamped at 0; ``transposed``: (|x|² - 2 x·y) + |y|², the rounding
    of ``_sq_dist(y, ..., x, ...)ᵀ``."""
    if out is None:
        out = torch.empty(len(x), len(y), dtype=x.dtype, device=x.device)
    if transposed:
        torch.addmm(x_sq[:, None].expand(-1, len(y)), x, y.T, alpha=-2, out=out)
        out += y_sq[None, :]
    else:
        torch.addmm(y_sq[None, :], x, y.T, alpha=-2, out=out)
        out += x_sq[:, None]
    return out.clamp_min_(0)


def _copy_transposed(dst: Tensor, src: Tensor) -> None:
    """dst = srcᵀ; on the CPU in blocks of source rows, which keeps the strided writes in cache."""
    step = max(1, src.shape[0]) if dst.device.type == "cuda" else 1024
    for r in range(0, src.shape[0], step):
        dst[:, r:r + step].copy_(src[r:r + step].T)


def _pair_dist(z: Tensor, z_sq: Tensor, r: Tensor, c: Tensor) -> Tensor:
    """Squared distances between the rows z[r[k]] and z[c[k]], in chunks of about 1M elements."""
    out = torch.empty(len(r), dtype=z.dtype, device=z.device)
    step = max(1, (1 << 20) // max(1, z.shape[1]))
    for s in range(0, len(r), step):
        rr, cc = r[s:s + step], c[s:s + step]
        out[s:s + step] = (z_sq[rr] + z_sq[cc] - 2 * (z[rr] * z[cc]).sum(1)).clamp_min(0)
    return out


def _budgets(device: torch.device) -> tuple[int, int]:
    """(elements per dense distance chunk, pairs per sparse chunk): larger on a GPU, where launches cost. On the
    CPU a sparse chunk's temporaries (about 40 bytes a pair) set the peak beside the q x g output: 2^19 pairs cut
    it by about 20 MB against 2^20 and cost no measurable time (the same numbers, bit for bit)."""
    return (1 << 26, 1 << 24) if device.type == "cuda" else (1 << 23, 1 << 19)


def _as_tensor(x: np.ndarray | Tensor) -> Tensor:
    if isinstance(x, Tensor):
        return x.detach()
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    raise TypeError(f"expected a numpy array or a torch tensor, got {type(x).__name__}")


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _like(result: Tensor, template: np.ndarray | Tensor) -> np.ndarray | Tensor:
    """``result`` as the type of ``template``: numpy or torch, its floating dtype (float32 otherwise)."""
    if isinstance(template, np.ndarray):
        dtype = template.dtype if np.issubdtype(template.dtype, np.floating) else np.float32
        return result.cpu().numpy().astype(dtype, copy=False)
    return result.to(template.dtype if template.dtype.is_floating_point else torch.float32)


def _feature_inputs(query: Array, gallery: Array, k1: int, k2: int, lambda_value: float, shared: int
                    ) -> tuple[Tensor, Tensor, torch.dtype]:
    """The features as tensors, checked with the parameters, and the dtype to compute in."""
    x, y = _as_tensor(query), _as_tensor(gallery)
    _check_features(x, y)
    _check_params(k1, k2, lambda_value)
    _check_shared(shared, len(x), len(y))
    return x, y, _compute_dtype(x.dtype)


def _check_params(k1: int, k2: int, lambda_value: float) -> None:
    if k1 < 1 or k2 < 1:
        raise ValueError(f"k1 and k2 must be at least 1, got k1={k1}, k2={k2}")
    if not 0 <= lambda_value <= 1:
        raise ValueError(f"lambda_value must be in [0, 1], got {lambda_value}")


def _check_shared(shared: int, m: int, n: int) -> None:
    if not 0 <= shared <= min(m, n):
        raise ValueError(f"shared must be between 0 and min(queries, gallery) = {min(m, n)}, got {shared}")


def _check_features(x: Tensor, y: Tensor) -> None:
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"expected query and gallery features of shape (m, d) and (n, d), "
                         f"got {tuple(x.shape)} and {tuple(y.shape)}")
    if len(x) == 0 or len(y) == 0:
        raise ValueError("need at least one query and one gallery feature")
