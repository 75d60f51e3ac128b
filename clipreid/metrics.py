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

Every score of a query is read off at its true matches: per match, how many items of its row lie at or below
its distance and how many come before it in the stable order, and the same counts over the query's few items of
its own identity. On the CPU a loop compiled with numba does it row by row (:mod:`clipreid.rank_counts`): one
pass picks out a row's head, the items at or below its last true match (a few percent of the gallery in a
typical ranking, most of it for a weak model), and the head is counted once per true match, in cache. On a GPU
each chunk of rows is sorted whole, stably. The device only sees the distances' own dtype, int64 and bool; the
float64 averaging happens in numpy on the CPU (Apple GPUs have no float64).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from .runtime import in_threads

ArrayLike = np.ndarray | torch.Tensor | Sequence[Any]

# elements of q x g handled per chunk on a GPU (a stable sort of the chunk: about 24 bytes each) and on the CPU
# (where the kernel works in cache-sized blocks: the chunk bounds a dtype conversion's copy, at most 512 MiB from
# int32, and the per-slot tables; fewer chunks ran faster on two threads: Market size in one chunk instead of two
# 97 -> 89 ms, 12,000 x 88,000 2.11 -> 1.93 s)
CHUNK_ELEMENTS = 2**23
CPU_CHUNK_ELEMENTS = 2**26
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
    if gid.device.type == "cpu":  # in numpy: ids that fit 16 bits sort by radix, 10x faster than torch sorts int64
        q, g = qid.numpy(), gid.numpy()
        order = np.argsort(g.astype(np.uint16) if len(g) and g.min() >= 0 and g.max() < 2**16 else g, kind="stable")
        by_id = g[order]
        start = np.searchsorted(by_id, q)
        return _Matches(*(torch.from_numpy(x) for x in (order, start, np.searchsorted(by_id, q, "right") - start)))
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


class _NaNRow(Exception):
    """A chunk row holds NaN (the chunk-local row index is the argument)."""


# rows of the matrix dealt to a thread at a time on the CPU: about this many elements (2 MiB of float32)
BLOCK_ELEMENTS = 2**19
# the CPU counts a row's head once per true match for up to this many of them, and splits it in two by the middle
# one's distance while it has more (a pass costs about 0.05 ns an item, a split about 0.5 ns)
NEEDLE_PASSES = 32
# copying a row's head out costs about this many passes over the row (0.46-0.65 ns an item against 0.042): rows
# whose head is most of the row, or that have few true matches, are counted in place (of 0, 10, 15 and 20, 10 ran
# best at every benchmark size on an AMD EPYC: the hard case 69 -> 59 ms on one thread, always copying)
COPY_PASSES = 10


class _Among(NamedTuple):
    """Per slot (rows, slots, kinds): how many slots of its row flagged as each kind lie at or below its distance
    (``le``), below it (``lt``), and before it in the stable order (``before``); and its place in that order."""

    le: torch.Tensor
    lt: torch.Tensor
    before: torch.Tensor
    place: torch.Tensor


def _among(v: torch.Tensor, flags: torch.Tensor) -> _Among:
    """The :class:`_Among` counts of the slots ``v`` (rows, slots) for each kind of ``flags`` (rows, slots,
    kinds); slots are in gallery column order, so the stable order breaks ties by slot."""
    m = v.shape[1]
    ordered = torch.sort(v, dim=1, stable=True)
    running = torch.cumsum(flags.gather(1, ordered.indices[:, :, None].expand_as(flags)).long(), 1)
    running = torch.nn.functional.pad(running, (0, 0, 1, 0))  # running[:, k]: flagged among the first k sorted
    place = torch.empty_like(ordered.indices)  # each slot's place in the sorted order
    place.scatter_(1, ordered.indices, torch.arange(m, device=v.device).expand_as(v))
    # each sorted value's run of equal values: where it begins, and one past where it ends
    index = torch.arange(m, device=v.device).expand_as(v)
    change = ordered.values[:, 1:] != ordered.values[:, :-1]
    first = torch.ones_like(v, dtype=torch.bool)
    first[:, 1:] = change
    last = torch.ones_like(v, dtype=torch.bool)
    last[:, :-1] = change
    begin = torch.where(first, index, 0).cummax(1).values
    end = torch.where(last, index + 1, m).flip(1).cummin(1).values.flip(1)

    def upto(k: torch.Tensor) -> torch.Tensor:
        return running.gather(1, k[:, :, None].expand(-1, -1, flags.shape[2]))

    return _Among(upto(end.gather(1, place)), upto(begin.gather(1, place)), upto(place), place)


class _Rows(NamedTuple):
    """What :func:`_row_counts` needs of a chunk's slots besides the distances."""

    v: torch.Tensor  # (rows, slots) each same-identity slot's distance
    cols: torch.Tensor  # its gallery column
    valid: torch.Tensor  # a real slot (rows have different numbers of items of their identity)
    true: torch.Tensor  # a true match (a real slot the camera rule keeps)
    same: _Among  # counts among the row's real slots (kinds: real, camera-ignored, true match)
    first: torch.Tensor  # (rows,) the slot of the first true match in the stable order
    last: torch.Tensor  # the slot of the last


def _row_counts(dist: torch.Tensor, rows: _Rows) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(le, first, last, lead): per slot, how many items of its row of ``dist`` lie at or below its distance
    (exact at true matches); per row, how many items come before its first and its last true match in the
    stable order, and how many true matches have no item of another identity before them.

    By one stable sort of the rows.
    """
    n, g = dist.shape
    ordered = torch.sort(dist, dim=1, stable=True)
    le = torch.searchsorted(ordered.values, rows.v, right=True)
    place = torch.empty_like(ordered.indices)  # each column's place in the stable order
    place.scatter_(1, ordered.indices, torch.arange(g, device=dist.device).expand(n, g))
    before = place.gather(1, rows.cols)
    lead = (rows.true & (before == rows.same.before[:, :, 0])).sum(1)
    at = torch.arange(n, device=dist.device)
    return le, before[at, rows.first], before[at, rows.last], lead


def _chunk_counts(dist: torch.Tensor, qcam: torch.Tensor | None, gcam: torch.Tensor | None,
                  same: _Matches) -> _Counts:
    """The :class:`_Counts` of each query row of ``dist``, from its slots (its gallery items of the query's
    identity: ``valid[i]`` of ``cols[i]``, true matches where the camera rule keeps them) by
    :func:`_chunk_counts_cpu` or :func:`_chunk_counts_device`, by where ``dist`` is."""
    valid, cols = same.slots(dist.shape[1])
    true = valid & (gcam[cols] != qcam[:, None]) if qcam is not None else valid
    counts = _chunk_counts_cpu if dist.device.type == "cpu" else _chunk_counts_device
    return counts(dist, valid, cols, true, same.count)


def _chunk_counts_device(dist: torch.Tensor, valid: torch.Tensor, cols: torch.Tensor, true: torch.Tensor,
                         n_slots: torch.Tensor) -> _Counts:
    """:func:`_chunk_counts` on a GPU (or any torch device), in torch.

    Every score of a query is read off at its true matches: per match, how many items of its row lie at or below
    its distance (:func:`_row_counts`), minus the same count over the query's few items of the same identity
    (true matches and camera-ignored ones); ranks come from the items before the first and the last match.
    """
    ignored = valid & ~true
    v = dist.gather(1, cols)
    among = _among(v, torch.stack([valid, ignored, true], 2))
    n_pos = true.sum(1)
    place = among.place
    first = torch.where(true, place, place.shape[1]).argmin(1)
    last = torch.where(true, place, -1).argmax(1)
    rows = _Rows(v, cols, valid, true, among, first, last)
    all_le, first_before, last_before, lead = _row_counts(dist, rows)
    at = torch.arange(len(dist), device=dist.device)
    ign_before = among.before[:, :, 1]
    first = torch.where(n_pos > 0, first_before - ign_before[at, first] + 1, 0)  # ranks among the kept items
    last = torch.where(n_pos > 0, last_before - ign_before[at, last] + 1, 0)
    ign_le, true_le = among.le[:, :, 1], among.le[:, :, 2]
    counts = _Counts(n_pos, first, last, lead, true_le[true], (all_le - ign_le)[true])
    return _Counts(*(x.cpu() for x in counts))


def _chunk_counts_cpu(dist: torch.Tensor, valid: torch.Tensor, cols: torch.Tensor, true: torch.Tensor,
                      n_slots: torch.Tensor) -> _Counts:
    """:func:`_chunk_counts` on the CPU: blocks of rows dealt over torch's threads to the compiled
    :func:`clipreid.rank_counts.count_rows` (a row's valid slots are its first ``n_slots``)."""
    from .rank_counts import count_rows  # numba is imported (and the loop compiled) only where the CPU scores

    n, g = dist.shape
    d = dist.numpy()
    cols, true, n_slots = (np.ascontiguousarray(x.numpy()) for x in (cols, true, n_slots))
    first, last, lead = (np.zeros(n, np.int64) for _ in range(3))
    true_le, kept_le = (np.zeros(cols.shape, np.int64) for _ in range(2))
    step = max(1, BLOCK_ELEMENTS // g)
    nan_rows = []

    def share(blocks: range) -> bool:
        for a in blocks:
            bad = count_rows(d, cols, n_slots, true, a, min(a + step, n), NEEDLE_PASSES, COPY_PASSES, first, last,
                             lead, true_le, kept_le)
            if bad >= 0:
                nan_rows.append(bad)
                return False
        return True

    if not in_threads(share, range(0, n, step)):  # each share stops at its first NaN row: the matrix's is the least
        raise _NaNRow(min(nan_rows))
    counts = (true.sum(1), first, last, lead, true_le[true], kept_le[true])
    return _Counts(*(torch.from_numpy(np.asarray(x, np.int64)) for x in counts))


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
    if device.type == "cpu" and n_gallery >= 2**31:
        raise ValueError(f"distmat has {n_gallery:,} columns; the CPU counts a row in 32 bits (at most 2**31 - 1 "
                         "columns): score on a GPU (device='cuda') or split the gallery")
    qid, gid = _codes(query_ids, gallery_ids, device)
    same = _group_matches(qid, gid)
    qcam = gcam = None
    if query_cams is not None:
        qcam, gcam = _codes(query_cams, gallery_cams, device)
    step = chunk_size or max(1, (CPU_CHUNK_ELEMENTS if device.type == "cpu" else CHUNK_ELEMENTS) // n_gallery)

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
        # one cheap pass for every float dtype (inf - inf also makes NaN, so look closer); on the CPU the
        # kernel checks each block of rows as it reads it
        if chunk.is_floating_point() and chunk.device.type != "cpu" and bool(torch.isnan(chunk.sum())):
            bad = torch.isnan(chunk).any(1)
            if bool(bad.any()):
                _raise_nan(start + int(bad.nonzero()[0, 0]))
        stop = start + len(chunk)
        rows = _Matches(same.order, same.start[start:stop], same.count[start:stop])
        try:
            parts.append(_chunk_counts(chunk.contiguous(), None if qcam is None else qcam[start:stop], gcam, rows))
        except _NaNRow as e:
            _raise_nan(start + e.args[0])
    return _summarise(_Counts(*(torch.cat(p).numpy() for p in zip(*parts, strict=True))))


def _raise_nan(row: int) -> None:
    raise ValueError(f"distmat contains NaN (first in query row {row})")


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
