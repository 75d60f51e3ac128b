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

Every score of a query is read off at its true matches: per match, how many items of its row lie at or below its
distance and how many come before it in the stable order, and the same counts over the query's few items of its
own identity. On the CPU only a row's "head" is looked at, the items at or below its last true match (a few
percent of the gallery in a typical ranking, most of it for a weak model): one comparison per item finds it, then
numpy sorts a short head, and compares a long one with every true match's distance at once (numpy's sort of long
arrays is 6x slower on some CPUs than on others; its comparisons are fast everywhere). Where numpy sorts fast
(timed once per process), a row whose head is most of it is sorted whole instead: cheaper than picking the head
out. On a GPU each chunk of rows is sorted whole, stably. The device only sees the distances' own dtype, int64
and bool; the float64 averaging happens in numpy on the CPU (Apple GPUs have no float64).
"""

from __future__ import annotations

import time
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


class _NaNRow(Exception):
    """A chunk row holds NaN (the chunk-local row index is the argument)."""


# elements of the matrix the CPU kernel compares and picks from at a time (2 MiB of float32): larger blocks make
# fewer small numpy calls per item, and small calls hold the GIL (two threads making them at once took longer than
# one thread making them all); 2**18 -> 2**19 took Market size on two threads from 125 to 113 ms, hard 135 -> 124
BLOCK_ELEMENTS = 2**19
# a head this long or longer is counted by comparing it with each needle, if it has at most COMPARE_NEEDLES of them;
# other heads are sorted (numpy's sort of long arrays runs 6x slower on some CPUs than on others, its comparisons do
# not; a comparison per needle costs 0.07 ns an item, so with more needles than this a fast sort wins, and the
# scratch of the comparisons stays under 50 bytes an item)
COMPARE_HEAD = 2048
COMPARE_NEEDLES = 48
# where numpy sorts fast (:func:`_sorts_fast`), a row whose head is at least this share of it is sorted whole (a
# weak model's rows): with its head 60% of a Market row, sorting the row took 36 us on an Intel Xeon with AVX-512,
# picking its head out and comparing it with its needles 70 us
WHOLE_HEAD = 0.25
# a row's head share is estimated from SAMPLE_RUNS runs of SAMPLE_RUN items spread over it (runs, not single
# items: a strided sample would read most of the row's cache lines)
SAMPLE_RUNS, SAMPLE_RUN = 8, 64
# numpy sorts fast where sorting 4,096 items takes less time than comparing them with this many values: about 35
# on that Intel machine (numpy sorts with AVX-512 there), about 300 on an AMD Zen 4 whose numpy sorted a Market
# row in 250-320 us; sorting rows whole pays off below about 70
SORT_VS_COMPARE = 64
# bools per counting lane: 255 words of 8 bytes keep every byte of a uint64 running sum at most 255
LANE = 8 * 255
_FAST_SORT: list[bool] = []


def _sorts_fast() -> bool:
    """Whether numpy's sort is fast on this machine (timed once per process; see SORT_VS_COMPARE)."""
    if not _FAST_SORT:
        row = np.random.default_rng(0).random(4096, dtype=np.float32)
        values = np.sort(row[:SORT_VS_COMPARE])[:, None]
        out = np.empty((SORT_VS_COMPARE, len(row)), bool)
        sort = compare = np.inf
        for _ in range(5):
            start = time.perf_counter()
            np.sort(row)
            middle = time.perf_counter()
            np.less_equal(row, values, out=out)
            sort, compare = min(sort, middle - start), min(compare, time.perf_counter() - middle)
        _FAST_SORT.append(sort < compare)
    return _FAST_SORT[0]


def _head_counts_cpu(dist: np.ndarray, needles: np.ndarray, n_needles: np.ndarray, reach: np.ndarray,
                     same_cols: np.ndarray, counts: np.ndarray, low: np.ndarray, sort_whole: bool, blocks: range,
                     step: int) -> None:
    """:func:`_row_counts`' counting for the blocks of ``step`` rows of a numpy matrix that start at ``blocks``:
    ``counts[r, j]`` = items of row r at or below ``needles[r, j]`` (for ``j < n_needles[r]``; every needle at
    most the row's ``reach``), and ``low[r]`` = the smallest item at or below the reach whose column is not in
    ``same_cols[r]`` (-1 pads it; the dtype's largest value where there is none).

    A row is counted from its head, the items at or below its reach (:func:`_count_heads`; a few percent of a
    typical row), or, with ``sort_whole`` (numpy sorts fast) and a head of at least WHOLE_HEAD of the row, by
    sorting the row whole (:func:`_count_whole`). NaN raises :class:`_NaNRow` with the block's first NaN row.
    """
    g = dist.shape[1]
    top = np.inf if dist.dtype.kind == "f" else np.iinfo(dist.dtype).max
    runs = min(SAMPLE_RUNS, g // SAMPLE_RUN)  # rows too short for a run are never sorted whole
    whole_head = WHOLE_HEAD * runs * SAMPLE_RUN if runs and sort_whole else np.inf
    mask = np.empty((step, g), bool)
    hits = np.empty(0, bool)  # scratch of _count_long, kept from block to block
    for a in blocks:
        block = dist[a: a + step]
        n = len(block)
        k = n_needles[a: a + n]
        whole = np.zeros(n, bool)
        if whole_head < np.inf:
            sample = block[:, : g // runs * runs].reshape(n, runs, -1)[:, :, :SAMPLE_RUN]
            whole = (k > 0) & ((sample <= reach[a: a + n, None, None]).reshape(n, -1).sum(1) >= whole_head)
        if not whole.all():
            hits = _count_heads(block, a, np.where(whole, 0, k), whole, needles, reach, same_cols, counts, low, top,
                                mask, hits)
        if whole.any():
            _count_whole(block, a, np.flatnonzero(whole), needles, n_needles, reach, same_cols, counts, low, top)


def _count_heads(block: np.ndarray, a: int, k: np.ndarray, skip: np.ndarray, needles: np.ndarray, reach: np.ndarray,
                 same_cols: np.ndarray, counts: np.ndarray, low: np.ndarray, top: float | int, mask: np.ndarray,
                 hits: np.ndarray) -> np.ndarray:
    """:func:`_head_counts_cpu` for the rows of ``block`` (row ``a`` of the matrix on) but those in ``skip``, with
    ``k`` needles each, from their heads: one comparison with each row's reach picks the head out; a short head
    (or one with many needles) is sorted and searched once per needle, a long one is compared with every needle
    at once (:func:`_count_long`). Returns ``hits``, the latter's scratch."""
    n, g = block.shape
    head = mask[:n]
    np.greater(block, reach[a: a + n, None], out=head)
    np.logical_not(head, out=head)  # NaN is in every head, so the check below finds it
    if skip.any():
        head[skip] = False
    flat = np.flatnonzero(head)
    values = block.ravel().take(flat)
    if block.dtype.kind == "f" and np.isnan(values).any():
        raise _NaNRow(a + _first_nan_row(block))
    bounds = np.searchsorted(flat, np.arange(n + 1) * g)
    size = bounds[1:] - bounds[:-1]
    # the smallest head item of another identity: the same identity's items set aside for it, then put back
    low[a: a + n][~skip] = top
    if len(values):
        cols = same_cols[a: a + n]
        target = (cols + (np.arange(n) * g)[:, None])[cols >= 0]
        at = np.minimum(np.searchsorted(flat, target), len(flat) - 1)
        at = at[flat[at] == target]
        same = values[at]
        values[at] = top
        filled = np.flatnonzero(size)
        low[a + filled] = np.minimum.reduceat(values, bounds[filled])
        values[at] = same
    compare = (size >= COMPARE_HEAD) & (k <= COMPARE_NEEDLES)
    long = np.flatnonzero((k > 0) & compare)
    if len(long):
        hits = _count_long(values, bounds, long, needles[a: a + n], k, counts[a: a + n], hits)
    # each short head sorted in place (values is ours), by method calls: this loop runs once a row, so the cost of
    # a call (and of a copy) is a good part of its time
    short = np.flatnonzero((k > 0) & ~compare)
    for i, start, stop, n_i in zip(short.tolist(), bounds[short].tolist(), bounds[short + 1].tolist(),
                                   k[short].tolist(), strict=True):
        head_i = values[start:stop]
        head_i.sort()
        counts[a + i, :n_i] = head_i.searchsorted(needles[a + i, :n_i], "right")
    return hits


def _count_whole(block: np.ndarray, a: int, rows: np.ndarray, needles: np.ndarray, n_needles: np.ndarray,
                 reach: np.ndarray, same_cols: np.ndarray, counts: np.ndarray, low: np.ndarray,
                 top: float | int) -> None:
    """:func:`_head_counts_cpu` for the ``rows`` of ``block`` (row ``a`` of the matrix on) by sorting each whole;
    the smallest item of another identity is where the sorted row first differs from its sorted items of the
    same identity (an item of another identity tied with one of them has its value, which is what is sought)."""
    ordered = np.sort(block if len(rows) == len(block) else block[rows], axis=1)
    if block.dtype.kind == "f" and np.isnan(ordered[:, -1]).any():  # NaN sorts last
        raise _NaNRow(a + _first_nan_row(block))
    r = a + rows
    cols = same_cols[r]
    same = np.where(cols >= 0, block[rows[:, None], np.maximum(cols, 0)], top)
    same.sort(axis=1)
    m = same.shape[1]
    differ = ordered[:, :m] != same
    first = np.where(differ.any(1), differ.argmax(1), m)
    lowest = np.full(len(rows), top, block.dtype)
    inside = first < ordered.shape[1]
    lowest[inside] = ordered[np.flatnonzero(inside), first[inside]]
    low[r] = np.where(lowest <= reach[r], lowest, top)
    for i, row in enumerate(r.tolist()):  # by method calls, as the short heads are
        counts[row, : n_needles[row]] = ordered[i].searchsorted(needles[row, : n_needles[row]], "right")


def _first_nan_row(block: np.ndarray) -> int:
    """The first row of ``block`` that holds NaN (it has one)."""
    return int(np.isnan(block).any(1).argmax())


def _count_long(values: np.ndarray, bounds: np.ndarray, rows: np.ndarray, needles: np.ndarray, k: np.ndarray,
                counts: np.ndarray, hits: np.ndarray) -> np.ndarray:
    """``counts[i, :k[i]]`` for the ``rows`` i of a block whose heads ``values[bounds[i]:bounds[i + 1]]`` are long:
    each head compared with all its needles at once, and the bools of the whole block counted as bytes in 64-bit
    lanes (many times faster than a count per needle). Returns ``hits``, the bool scratch, grown if it had to."""
    size = bounds[rows + 1] - bounds[rows]
    lanes = -(-size // LANE)  # per needle
    need = int((k[rows] * lanes).sum()) * LANE
    if len(hits) < need:
        hits = np.empty(need, bool)
    offset = 0
    for i, h, n_lanes in zip(rows.tolist(), size.tolist(), lanes.tolist(), strict=True):
        out = hits[offset: offset + k[i] * n_lanes * LANE].reshape(k[i], -1)
        np.less_equal(values[bounds[i]: bounds[i] + h], needles[i, : k[i], None], out=out[:, :h])
        out[:, h:] = False
        offset += out.size
    per_lane = np.add.reduce(hits[:need].view(np.uint64).reshape(-1, LANE // 8), axis=1)
    per_lane = per_lane.view(np.uint8).reshape(-1, 8).sum(1)
    needle_lanes = np.repeat(lanes, k[rows])  # needle after needle, row after row
    per_needle = np.add.reduceat(per_lane, np.cumsum(needle_lanes) - needle_lanes)
    row = np.repeat(rows, k[rows])
    slot = np.arange(len(row)) - np.repeat(np.cumsum(k[rows]) - k[rows], k[rows])  # the needle's place in its row
    counts[row, slot] = per_needle
    return hits


def _below(v: np.ndarray) -> np.ndarray:
    """The largest value of ``v``'s dtype below each of ``v`` (where there is one): ``x < v`` iff ``x <= below``."""
    if v.dtype.kind == "f":
        return np.nextafter(v, -np.inf)
    return v - (v > np.iinfo(v.dtype).min)


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

    On a GPU by one stable sort of the rows; on the CPU by :func:`_row_counts_cpu`.
    """
    if dist.device.type == "cpu":
        return _row_counts_cpu(dist, rows)
    n, g = dist.shape
    ordered = torch.sort(dist, dim=1, stable=True)
    le = torch.searchsorted(ordered.values, rows.v, right=True)
    place = torch.empty_like(ordered.indices)  # each column's place in the stable order
    place.scatter_(1, ordered.indices, torch.arange(g, device=dist.device).expand(n, g))
    before = place.gather(1, rows.cols)
    lead = (rows.true & (before == rows.same.before[:, :, 0])).sum(1)
    at = torch.arange(n, device=dist.device)
    return le, before[at, rows.first], before[at, rows.last], lead


def _row_counts_cpu(dist: torch.Tensor, rows: _Rows) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`_row_counts` on the CPU: per row, counts at every true match's distance and just below the first's
    and the last's, and the lowest distance of another identity (:func:`_head_counts_cpu`, blocks of rows dealt
    over torch's threads); then exact column counts for the few matches tied with an item of another identity.
    """
    n, g = dist.shape
    d, v, cols = dist.numpy(), rows.v.numpy(), rows.cols.numpy()
    true, valid = rows.true.numpy(), rows.valid.numpy()
    first, last = rows.first.numpy(), rows.last.numpy()
    r = np.arange(n)
    n_true = true.sum(1)
    width = int(n_true.max())
    order = np.argsort(~true, axis=1, kind="stable")[:, :width]  # each row's true matches first
    # needles: every true match's distance, then just below the first's and the last's (lt(v) = le(below(v)))
    needles = np.empty((n, width + 2), v.dtype)
    needles[:, :width] = np.take_along_axis(v, order, 1)
    has = np.flatnonzero(n_true)
    below = [_below(v[r, slot]) for slot in (first, last)]
    needles[has, n_true[has]] = below[0][has]
    needles[has, n_true[has] + 1] = below[1][has]
    n_needles = np.where(n_true > 0, n_true + 2, 0)
    reach = np.where(true, v, _smallest(rows.v.dtype)).max(1)
    same_cols = np.where(valid, cols, -1)
    counts = np.zeros(needles.shape, np.int64)
    low = np.empty(n, v.dtype)
    step = max(1, BLOCK_ELEMENTS // g)
    sort_whole, nan_rows = _sorts_fast(), []

    def share(blocks: range) -> bool:
        try:
            _head_counts_cpu(d, needles, n_needles, reach, same_cols, counts, low, sort_whole, blocks, step)
        except _NaNRow as e:
            nan_rows.append(e.args[0])
            return False
        return True

    if not in_threads(share, range(0, n, step)):  # each share stops at its first NaN row: the matrix's is the least
        raise _NaNRow(min(nan_rows))
    le = np.zeros(v.shape, np.int64)
    np.put_along_axis(le, order, counts[:, :width], 1)
    same_le, same_lt, same_before = (x[:, :, 0].numpy() for x in rows.same[:3])

    def before(slot: np.ndarray, lt: np.ndarray) -> np.ndarray:
        """Items before ``slot`` in its row's stable order, from those below it (``lt``)."""
        value, col = v[r, slot], cols[r, slot]
        s_le, s_lt, s_before = same_le[r, slot], same_lt[r, slot], same_before[r, slot]
        count = lt - s_lt + s_before  # other identities below it, the same identity before it
        # items of another identity at its distance: those at lower columns come before it too
        for i in np.flatnonzero((le[r, slot] - lt > s_le - s_lt) & (n_true > 0)):
            count[i] += np.count_nonzero(d[i, : col[i]] == value[i]) - (s_before[i] - s_lt[i])
        return count

    lead_col = np.full(n, g)  # the first column of another identity at the row's lowest such distance
    for i in np.flatnonzero((true & (v == low[:, None])).any(1)):
        other = np.ones(g, bool)
        other[cols[i, valid[i]]] = False
        tied = np.flatnonzero(other & (d[i] == low[i]))
        lead_col[i] = tied[0] if len(tied) else g
    lead = (true & ((v < low[:, None]) | ((v == low[:, None]) & (cols < lead_col[:, None])))).sum(1)
    # items below the first's and the last's distance; nothing lies below the dtype's smallest value
    lt = [np.where(v[r, slot] == under, 0, counts[r, n_true + i])
          for i, (slot, under) in enumerate(zip((first, last), below, strict=True))]
    return tuple(torch.from_numpy(x) for x in (le, before(first, lt[0]), before(last, lt[1]), lead))


def _chunk_counts(dist: torch.Tensor, qcam: torch.Tensor | None, gcam: torch.Tensor | None,
                  same: _Matches) -> _Counts:
    """The :class:`_Counts` of each query row of ``dist``.

    Every score of a query is read off at its true matches: per match, how many items of its row lie at or below
    its distance (:func:`_row_counts`), minus the same count over the query's few items of the same identity
    (true matches and camera-ignored ones); ranks come from the items before the first and the last match.
    """
    g = dist.shape[1]
    valid, cols = same.slots(g)
    true = valid & (gcam[cols] != qcam[:, None]) if qcam is not None else valid
    ignored = valid & ~true
    v = dist.gather(1, cols)
    among = _among(v, torch.stack([valid, ignored, true], 2))
    n_pos = true.sum(1)
    place = among.place
    first = torch.where(true, place, place.shape[1]).argmin(1)
    last = torch.where(true, place, -1).argmax(1)
    rows = _Rows(v, cols, valid, true, among, first, last)
    all_le, first_before, last_before, lead = (x.to(dist.device) for x in _row_counts(dist, rows))
    at = torch.arange(len(dist), device=dist.device)
    ign_before = among.before[:, :, 1]
    first = torch.where(n_pos > 0, first_before - ign_before[at, first] + 1, 0)  # ranks among the kept items
    last = torch.where(n_pos > 0, last_before - ign_before[at, last] + 1, 0)
    ign_le, true_le = among.le[:, :, 1], among.le[:, :, 2]
    counts = _Counts(n_pos, first, last, lead, true_le[true], (all_le - ign_le)[true])
    return _Counts(*(x.cpu() for x in counts))


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
