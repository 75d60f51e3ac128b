"""Re-identification scores from a query x gallery distance matrix: mAP, CMC rank-1/5/10, mINP, allshots rank-1.

The definitions are the challenge toolkit's (the README's evaluate.py section says the same). Ranks are positions
in the *stable* ascending order of a query's row: equal distances keep gallery (column) order, so a true match tied
with another identity's item ranks after it exactly when it comes later in the gallery.

- mAP: per query, ``sklearn.metrics.average_precision_score(y_true, -distances)``, so tied distances form one
  threshold (no gallery order there); the mean over queries that have at least one true match.
- rank-k: CMC with first-match break: the share of queries whose first true match ranks k or better.
- mINP (Ye et al., TPAMI 2021): per query, true matches / rank of the last true match.
- rank1_allshots: open-reid's ``cmc(..., single_gallery_shot=False, first_match_break=False)`` rank-1, the
  challenge toolkit's "allshots" CMC: per query, the share of its true matches ranked before every item of
  another identity (in the stable order, as above); the mean over queries.

With cameras, gallery items of the query's id *and* camera are removed for that query (Market-1501 rule).
Queries without a true match are skipped by every score.

Nothing sorts a whole row. Every score of a query depends only on its "head", the items at or below the distance
of its last true match (a few percent of the gallery in a typical ranking): one comparison per item finds the
heads of a chunk of queries, the heads alone are ordered (an integer radix sort on the CPU), and the scores follow
from running counts over them read off at the true matches. The device only sees the distances' own dtype,
int64 and bool; the float64 averaging happens in numpy on the CPU (Apple GPUs have no float64).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor | Sequence[Any]

# elements of q x g handled per chunk: 1 byte each, plus about 40 bytes per head item (all of them in the worst case)
CHUNK_ELEMENTS = 2**23
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


def _smallest(dtype: torch.dtype) -> float | int:
    return -float("inf") if dtype.is_floating_point else torch.iinfo(dtype).min


class _Matches(NamedTuple):
    """Every query's gallery items of the same identity: ``order[start[i] : start[i] + count[i]]``."""

    order: torch.Tensor  # gallery indices grouped by identity, ascending within each identity
    start: torch.Tensor
    count: torch.Tensor

    def slots(self, g: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(valid, cols), each (q, max count): query i's same-identity gallery columns in cols[i, valid[i]]."""
        slot = torch.arange(max(int(self.count.max()), 1), device=self.order.device)
        valid = slot[None, :] < self.count[:, None]
        return valid, self.order[(self.start[:, None] + slot).clamp(max=g - 1)]


def _group_matches(qid: torch.Tensor, gid: torch.Tensor) -> _Matches:
    order = torch.argsort(gid, stable=True)
    by_id = gid[order]
    start = torch.searchsorted(by_id, qid)
    return _Matches(order, start, torch.searchsorted(by_id, qid, right=True) - start)


class _Counts(NamedTuple):
    """Per-query counts (int64, on the CPU) from which every score follows; ranks in the stable order."""

    n_pos: torch.Tensor  # true matches
    first: torch.Tensor  # 1-based rank of the first true match among the kept items
    last: torch.Tensor  # 1-based rank of the last true match among the kept items
    lead: torch.Tensor  # true matches ranked before every item of another identity (allshots rank-1)
    true_upto: torch.Tensor  # per true match, row-major: true matches at a distance <= its own
    kept_upto: torch.Tensor  # per true match, row-major: kept items at a distance <= its own


def _count(index: torch.Tensor, n: int) -> torch.Tensor:
    """How often each of 0..n-1 occurs in ``index`` (int64 on its device)."""
    return torch.zeros(n, dtype=torch.int64, device=index.device).index_add_(0, index, torch.ones_like(index))


def _sort_key(values: torch.Tensor) -> torch.Tensor:
    """int64 keys in the order of ``values`` (floats by their bits, -0.0 = 0.0), so that sorts run as integers."""
    if not values.is_floating_point():
        return values
    values = values + 0.0  # -0.0 becomes 0.0
    if values.dtype == torch.float64:
        bits = values.view(torch.int64)
        return torch.where(bits < 0, bits ^ 0x7FFFFFFFFFFFFFFF, bits)
    bits = values.view(torch.int32).long()
    return torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)


def _sorted_head(flat: torch.Tensor, values: torch.Tensor, g: int) -> tuple[torch.Tensor, ...]:
    """Row, column and "last of its tie group" flag of the items at ``flat`` (row-major indices) in the order
    row, then distance, then column (the stable order of each row).

    Sorts integer keys, stably: torch sorts those by radix on the CPU, many times faster than floats.
    """
    rows = flat // g
    key = _sort_key(values)
    if values.dtype == torch.float32:  # one sort of (row, distance) packed into an int64
        key = torch.sort(rows * 2**32 + (key + 2**31), stable=True)
        order, group = key.indices, key.values
        rows = group >> 32
        ends = torch.ones_like(rows, dtype=torch.bool)
        ends[:-1] = group[1:] != group[:-1]
    else:
        order = torch.sort(key, stable=True).indices
        order = order.index_select(0, torch.sort(rows.index_select(0, order), stable=True).indices)
        rows, key = rows.index_select(0, order), key.index_select(0, order)
        ends = torch.ones_like(rows, dtype=torch.bool)
        ends[:-1] = (key[1:] != key[:-1]) | (rows[1:] != rows[:-1])
    return rows, flat.index_select(0, order) - rows * g, ends


def _head_counts(dist: torch.Tensor, qid: torch.Tensor, gid: torch.Tensor, qcam: torch.Tensor | None,
                  gcam: torch.Tensor | None, same: _Matches) -> _Counts:
    """The :class:`_Counts` of each query row of ``dist`` from its ordered "head" (the items at or below the
    distance of its last true match): exact for every tie, used for the rows where a true match ties with an
    item of another identity (the column order then decides the ranks).
    """
    n, g = dist.shape
    device = dist.device
    # the true matches from the gallery's identity groups (no q x g comparison of ids): their largest distance
    true, cols = same.slots(g)
    if qcam is not None:
        true &= gcam[cols] != qcam[:, None]
    n_pos = true.sum(1)
    # rows without a true match reach nowhere (their few heads items, if any, are never read)
    reach = dist.gather(1, cols).masked_fill_(~true, _smallest(dist.dtype)).amax(1)
    del true, cols

    flat = (dist <= reach[:, None]).view(-1).nonzero()[:, 0]  # row-major: columns ascend within each row
    r, c, ends = _sorted_head(flat, dist.view(-1).index_select(0, flat), g)
    del flat
    same_id = gid.index_select(0, c) == qid.index_select(0, r)
    if qcam is not None:
        kept = ~same_id | (gcam.index_select(0, c) != qcam.index_select(0, r))
        true = same_id & kept
    else:
        kept, true = torch.ones_like(same_id), same_id
    at = true.nonzero()[:, 0]  # the true matches, by row and rank
    rt = r.index_select(0, at)
    head_start = torch.searchsorted(r, torch.arange(n, device=device)).index_select(0, rt)  # of each match's row

    def per_row(flags: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Inclusive running count of ``flags`` over the match's row of the heads, at ``index``."""
        running = torch.cumsum(flags, 0)
        return running.index_select(0, index) - running.index_select(0, head_start) + flags[head_start]

    rank = per_row(kept, at)  # 1-based rank of each true match among its row's kept items
    # sklearn's AP: equal distances are one threshold, so precision is counted at the end of each tie group
    group_end = ends.nonzero()[:, 0]
    end = group_end.index_select(0, torch.searchsorted(group_end, at))
    kept_upto = per_row(kept, end)
    true_start = torch.searchsorted(rt, rt)  # index in ``at`` of the row's first true match
    true_upto = torch.searchsorted(at, end, right=True) - true_start
    lead = _count(rt[per_row(~same_id, at) == 0], n)  # no item of another identity before the match
    first = torch.zeros(n, dtype=torch.int64, device=device).scatter_reduce_(0, rt, rank, "amin",
                                                                             include_self=False)
    last = torch.zeros(n, dtype=torch.int64, device=device).scatter_reduce_(0, rt, rank, "amax",
                                                                            include_self=False)
    return _Counts(*(x.cpu() for x in (n_pos, first, last, lead, true_upto, kept_upto)))


def _largest(dtype: torch.dtype) -> float | int:
    return float("inf") if dtype.is_floating_point else torch.iinfo(dtype).max


def _row_counts(dist: torch.Tensor, values: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(le, lt): how many entries of row r of ``dist`` are <= and < ``values[r, j]``, where ``valid[r, j]``
    (elsewhere anything).

    Only the entries up to a row's largest valid value can count, so only those are sorted: on the CPU with numpy
    (its vectorised sort is many times faster than torch's there), rows split over torch's threads.
    """
    if dist.device.type != "cpu":
        ordered = torch.sort(dist, 1).values
        return (torch.searchsorted(ordered, values, right=True), torch.searchsorted(ordered, values))
    reach = torch.where(valid, values, _smallest(values.dtype)).amax(1).numpy()
    d, v = dist.numpy(), values.numpy()
    le, lt = np.zeros(v.shape, np.int64), np.zeros(v.shape, np.int64)

    def rows(a: int, b: int) -> None:
        for r in range(a, b):
            row = d[r]
            head = np.compress(row <= reach[r], row)  # 2-3x faster than row[mask]
            head.sort()
            le[r] = np.searchsorted(head, v[r], "right")
            lt[r] = np.searchsorted(head, v[r], "left")

    workers = max(1, min(torch.get_num_threads(), len(d) // 64))
    if workers == 1:
        rows(0, len(d))
    else:
        step = -(-len(d) // workers)
        with ThreadPoolExecutor(workers) as pool:  # numpy releases the GIL while it compares and sorts
            list(pool.map(lambda a: rows(a, min(a + step, len(d))), range(0, len(d), step)))
    return torch.from_numpy(le), torch.from_numpy(lt)


def _chunk_counts(dist: torch.Tensor, qid: torch.Tensor, gid: torch.Tensor, qcam: torch.Tensor | None,
                  gcam: torch.Tensor | None, same: _Matches) -> _Counts:
    """The :class:`_Counts` of each query row of ``dist``.

    Every score of a query is read off at its true matches: per match, how many items of the row lie below its
    distance and how many tie with it. Those counts come from the row's own items up to its last true match,
    sorted (the floor is one comparison per item; that sort is what it costs beyond it), minus the counts over
    the query's few items of the same identity (true matches and camera-ignored ones). Rows where a true match
    ties with an item of another identity need the column order for their ranks: :func:`_head_counts` redoes
    their ranks.
    """
    n, g = dist.shape
    device = dist.device
    valid, cols = same.slots(g)
    true = valid & (gcam[cols] != qcam[:, None]) if qcam is not None else valid
    ignored = valid & ~true
    v = dist.gather(1, cols)
    del cols

    sentinel = _largest(v.dtype)

    def among(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(le, lt) of each v[r, j] over the v[r, k] with mask[r, k]."""
        ordered = torch.where(mask, v, sentinel).sort(1).values
        le = torch.searchsorted(ordered, v, right=True)
        le -= torch.where(v == sentinel, (~mask).sum(1, keepdim=True), 0)  # the padding ties with itself
        return le, torch.searchsorted(ordered, v)

    all_le, all_lt = (x.to(device) for x in _row_counts(dist, v, valid))
    same_le, same_lt = among(valid)
    ign_le, ign_lt = among(ignored)
    true_le = among(true)[0]
    kept_le, kept_lt = all_le - ign_le, all_lt - ign_lt
    other_lt = all_lt - same_lt  # items of other identities strictly below
    other_tie = (all_le - all_lt) - (same_le - same_lt)
    n_pos = true.sum(1)
    first = torch.where(true, kept_lt, g).amin(1) + 1
    first = torch.where(n_pos > 0, first, 0)
    last = torch.where(true, kept_le, 0).amax(1)
    lead = (true & (other_lt == 0)).sum(1)
    counts = _Counts(n_pos, first, last, lead, true_le[true], kept_le[true])
    counts = _Counts(*(x.cpu() for x in counts))
    tied = (true & (other_tie > 0)).any(1).nonzero()[:, 0]
    if len(tied):
        exact = _head_counts(dist[tied], qid[tied], gid, None if qcam is None else qcam[tied], gcam,
                             _Matches(same.order, same.start[tied], same.count[tied]))
        tied = tied.cpu()
        for mine, theirs in ((counts.first, exact.first), (counts.last, exact.last), (counts.lead, exact.lead)):
            mine[tied] = theirs
    return counts


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
    """mAP, rank-1/5/10, mINP and allshots rank-1 (fractions in [0, 1]) of a q x g distance matrix (lower = more
    similar), with the definitions and tie rules of the module docstring.

    Keys "mAP", "rank1", "rank5", "rank10", "mINP", "rank1_allshots" and "num_valid_queries" (how many queries
    had a true match and were scored). ``distmat`` is a numpy array or a torch tensor (float or integer); it is
    processed on ``device``, by default the tensor's own device (numpy: cpu; float64 asked onto Apple's MPS
    stays on the CPU), ``chunk_size`` query rows at a time. Ids and cameras are sequences, numpy arrays or
    tensors of any comparable type. Infinite distances are allowed (equal infinities tie); NaN is an error.
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
        device = distmat.device if isinstance(distmat, torch.Tensor) else "cpu"
    device = torch.device(device)
    if device.type == "mps" and str(distmat.dtype).endswith("float64"):
        device = torch.device("cpu")  # no float64 on Apple GPUs, and float32 could merge distinct distances
    qid, gid = _codes(query_ids, gallery_ids, device)
    same = _group_matches(qid, gid)
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
            chunk = chunk.float()  # exact; checked for NaN below like every float dtype
        elif not chunk.is_floating_point():
            chunk = chunk.long()  # integer distances stay exact
        # one cheap pass for every float dtype (inf - inf also makes NaN, so look closer)
        if chunk.is_floating_point() and bool(torch.isnan(chunk.sum())):
            bad = torch.isnan(chunk).any(1)
            if bool(bad.any()):
                row = start + int(bad.nonzero()[0, 0])
                raise ValueError(f"distmat contains NaN (first in query row {row})")
        stop = start + len(chunk)
        rows = _Matches(same.order, same.start[start:stop], same.count[start:stop])
        parts.append(_chunk_counts(chunk.contiguous(), qid[start:stop], gid,
                                   None if qcam is None else qcam[start:stop], gcam, rows))
    return _summarise(_Counts(*(torch.cat(p).numpy() for p in zip(*parts, strict=True))))


def _summarise(counts: _Counts) -> dict[str, float]:
    """The scores from the per-query counts, in float64 on the CPU (numpy: no float64 on the device)."""
    n_pos = counts.n_pos
    valid = n_pos > 0
    n_valid = int(valid.sum())
    if n_valid == 0:
        raise ValueError("no query has a true match in the gallery, so there is nothing to score")
    # AP: each true match adds 1/n_pos recall at its tie group's threshold, at the precision of that threshold
    precision = counts.true_upto / counts.kept_upto.astype(np.float64)
    starts = np.cumsum(n_pos) - n_pos
    ap = np.add.reduceat(precision, starts[valid]) / n_pos[valid]
    n_pos = n_pos[valid].astype(np.float64)
    first, last, lead = counts.first[valid], counts.last[valid], counts.lead[valid]
    scores = {"mAP": float(ap.mean())}
    for k in RANKS:
        scores[f"rank{k}"] = float((first <= k).mean())
    scores["mINP"] = float((n_pos / last).mean())
    scores["rank1_allshots"] = float((lead / n_pos).mean())
    scores["num_valid_queries"] = n_valid
    return scores
