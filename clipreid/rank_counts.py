"""The CPU half of :mod:`clipreid.metrics`: each query row's rank counts, by a loop compiled with numba.

Per row, everything the scores need is read off at its items of the query's identity (its "slots", a few): its
head, the items at or below its last true match (a few percent of a typical row, most of it for a weak model), is
counted once per true match's distance, a vectorised pass each; a short head is copied out of the row first (one
scalar pass), so the counting passes stay in cache. Nothing is sorted but the slots. The loops release the GIL,
so :func:`clipreid.runtime.in_threads` deals blocks of rows over torch's threads. Comparisons are IEEE (no
fast-math): -0.0 equals 0.0, infinities are ordered, and a NaN anywhere in a row is reported, never counted.

Compiled on first use for each distance dtype (float32, float64, int64) and cached beside this file (or in
numba's user cache where that is read-only).
"""

from __future__ import annotations

import numpy as np
from numba import njit


# the counting passes add in int32 (numba widens integer arithmetic to int64 unless told; 32-bit lanes count twice
# as many items a vector op: 0.037 against 0.049 ns an item); compute_scores refuses rows of 2**31 items or more
@njit(nogil=True, cache=True, inline="always")
def _count_le(head: np.ndarray, h: int, t) -> int:
    n = np.int32(0)
    for i in range(h):
        n = np.int32(n + np.int32(head[i] <= t))
    return n


@njit(nogil=True, cache=True, inline="always")
def _count_le2(head: np.ndarray, h: int, t0, t1) -> tuple[int, int]:
    """Two needles a pass: 0.029 against 0.035 ns an item and needle (one load for two comparisons)."""
    n0 = np.int32(0)
    n1 = np.int32(0)
    for i in range(h):
        x = head[i]
        n0 = np.int32(n0 + np.int32(x <= t0))
        n1 = np.int32(n1 + np.int32(x <= t1))
    return n0, n1


@njit(nogil=True, cache=True, inline="always")
def _count_lt(head: np.ndarray, h: int, t) -> int:
    n = np.int32(0)
    for i in range(h):
        n = np.int32(n + np.int32(head[i] < t))
    return n


@njit(nogil=True, cache=True, inline="always")
def _count_lt2(head: np.ndarray, h: int, t0, t1) -> tuple[int, int]:
    n0 = np.int32(0)
    n1 = np.int32(0)
    for i in range(h):
        x = head[i]
        n0 = np.int32(n0 + np.int32(x < t0))
        n1 = np.int32(n1 + np.int32(x < t1))
    return n0, n1


@njit(nogil=True, cache=True, inline="always")
def _count_above(head: np.ndarray, h: int, t) -> int:
    n = np.int32(0)
    for i in range(h):
        n = np.int32(n + np.int32(head[i] > t))
    return n


@njit(nogil=True, cache=True, inline="always")
def _has_nan(values: np.ndarray, n: int) -> bool:
    bad = False
    for i in range(n):
        bad |= values[i] != values[i]
    return bad


@njit(nogil=True, cache=True)
def _tied_before(row: np.ndarray, value, col: int) -> int:
    """Items of ``row`` equal to ``value`` in the columns before ``col``."""
    n = 0
    for c in range(col):
        n += row[c] == value
    return n


@njit(nogil=True, cache=True)
def _first_other_at(row: np.ndarray, value, cols: np.ndarray, m: int) -> int:
    """The first column of ``row`` holding ``value`` that is not one of the row's ``m`` slot columns (ascending)."""
    s = 0
    for c in range(len(row)):
        while s < m and cols[s] < c:
            s += 1
        if row[c] == value and not (s < m and cols[s] == c):
            return c
    return len(row)


@njit(nogil=True, cache=True)
def count_rows(dist, slot_cols, n_slots, true, rows_from, rows_to, passes, copy_passes, first, last, lead, true_le,
               kept_le):
    """For rows ``rows_from`` to ``rows_to`` of ``dist`` (q x g): row r's slots are its items of the query's
    identity, the first ``n_slots[r]`` columns of ``slot_cols[r]`` (ascending), true matches where ``true[r]``,
    the rest camera-ignored. Fills, per row, ``first``/``last``: 1-based ranks of the first and last true match
    among the kept items (all but the ignored) in the stable order; ``lead``: true matches before every item of
    another identity; and per true slot ``true_le``: true matches at or below its distance, ``kept_le``: kept
    items at or below it. The head is counted once per true match (a vectorised pass) for up to ``passes`` of
    them, and split in halves by the middle one's distance while there are more. The head is copied out of the
    row first where the items above it, times the passes, outnumber ``copy_passes`` rows' worth (a copy costs
    about as much as that many passes); else the passes read the whole row.
    Returns the first row holding NaN, or -1."""
    g = dist.shape[1]
    width = slot_cols.shape[1]
    head = np.empty(g, dist.dtype)
    spare = np.empty((2, g), dist.dtype)  # where the head is split for many true matches
    v = np.empty(width, dist.dtype)
    le = np.empty(width, np.int64)  # per true slot: items of the row at or below its distance
    w = np.empty(width, dist.dtype)  # the true slots' distances in the stable order, and their counts
    w_le = np.empty(width, np.int64)
    pos = np.empty(width, np.int64)  # each slot's place in the stable order of the slots
    begin = np.empty(width, np.int64)  # per place: where its run of equal distances begins, and one past its end
    end = np.empty(width, np.int64)
    n_true_upto = np.empty(width + 1, np.int64)  # true / ignored slots among the first places
    n_ign_upto = np.empty(width + 1, np.int64)
    for r in range(rows_from, rows_to):
        row = dist[r]
        m = n_slots[r]
        cols = slot_cols[r]
        is_true = true[r]
        n_true = 0
        lst = -1  # the last true match in the stable order: its distance is the row's reach
        for s in range(m):
            v[s] = row[cols[s]]
            if is_true[s]:
                n_true += 1
                if lst < 0 or not (v[s] < v[lst]):
                    lst = s
        if n_true == 0:  # no score reads this row, but NaN is still an error
            if _has_nan(row, g):
                return r
            continue
        # the head: the items at or below the reach (NaN is never above it, so the check finds NaN anywhere), copied
        # out of the row where the passes over it save more than the copy costs (its share of the row estimated
        # from the first 512 items: the copy reads them next, a spread sample would cost cache misses), else the
        # passes read the whole row
        reach = v[lst]
        sample = min(g, 512)
        sampled = _count_above(row, sample, reach)
        items = row
        h = g
        if sampled * (n_true + 2) > copy_passes * sample:
            items = head
            h = 0
            for c in range(g):
                x = row[c]
                head[h] = x
                h += not (x > reach)
        if _has_nan(items, h):
            return r
        # the slots in the stable order (mergesort is stable; slots are in column order), runs of equal distances
        order = np.argsort(v[:m], kind="mergesort")
        n_true_upto[0] = 0
        n_ign_upto[0] = 0
        for i in range(m):
            s = order[i]
            pos[s] = i
            n_true_upto[i + 1] = n_true_upto[i] + is_true[s]
            n_ign_upto[i + 1] = n_ign_upto[i] + (not is_true[s])
            begin[i] = i if i == 0 or v[order[i - 1]] != v[s] else begin[i - 1]
        for i in range(m - 1, -1, -1):
            end[i] = i + 1 if i == m - 1 or v[order[i + 1]] != v[order[i]] else end[i + 1]
        # per true slot, the row's items at or below its distance (a pass each, or splits of the head for many)
        k = 0
        for i in range(m):
            if is_true[order[i]]:
                w[k] = v[order[i]]
                k += 1
        _count_le_split(items, h, w, k, passes, w_le, spare)
        k = 0
        for i in range(m):
            if is_true[order[i]]:
                le[order[i]] = w_le[k]
                k += 1
        for s in range(m):
            if is_true[s]:
                true_le[r, s] = n_true_upto[end[pos[s]]]
                kept_le[r, s] = le[s] - n_ign_upto[end[pos[s]]]
        # ranks of the first and last true match: items below its distance, or at it in an earlier column
        f = -1
        for i in range(m):
            if is_true[order[i]]:
                f = order[i]
                break
        if v[lst] == v[f]:
            lt_first = lt_last = _count_lt(items, h, v[f])
        else:
            lt_first, lt_last = _count_lt2(items, h, v[f], v[lst])
        for which in range(2):
            s = f if which == 0 else lst
            i = pos[s]
            lt = lt_first if which == 0 else lt_last
            if le[s] - lt > end[i] - begin[i]:  # an item of another identity ties with it: count ties by column
                at_before = _tied_before(row, v[s], cols[s])
            else:
                at_before = i - begin[i]
            rank = lt + at_before - n_ign_upto[i] + 1
            if which == 0:
                first[r] = rank
            else:
                last[r] = rank
        # lead: true matches before the first item of another identity in the stable order; the lowest true match
        # with such an item at or below its distance (more items there than slots) is where it stops
        blocked = -1
        for i in range(m):
            s = order[i]
            if is_true[s] and le[s] > end[i]:
                blocked = s
                break
        if blocked < 0:
            lead[r] = n_true
            continue
        i = pos[blocked]
        n_lead = n_true_upto[begin[i]]  # true matches below its distance
        t = v[blocked]
        lt = lt_first if t == v[f] else lt_last if t == v[lst] else _count_lt(items, h, t)
        if lt == begin[i]:  # nothing of another identity below it: ties by column
            other = _first_other_at(row, t, cols, m)
            for j in range(begin[i], end[i]):
                n_lead += is_true[order[j]] and cols[order[j]] < other
        lead[r] = n_lead
    return -1


@njit(nogil=True, cache=True)
def _count_le_split(head, h, w, k, passes, out, spare):
    """``out[j]`` = the items of ``head[:h]`` at or below ``w[j]``, for the ``k`` sorted ``w``: a pass per needle
    for at most ``passes`` of them, else the items split at the middle needle (one scalar pass, into a row of
    ``spare``, the two rows taking turns by depth) and each half counted for its half of the needles, and so on.
    (A loop over a stack, not recursion: numba's cache cannot hold recursive functions.)"""
    stack = np.empty((130, 6), np.int64)  # start, stop, first needle, last needle + 1, items below, depth
    stack[0, 0] = 0
    stack[0, 1] = h
    stack[0, 2] = 0
    stack[0, 3] = k
    stack[0, 4] = 0
    stack[0, 5] = 0
    top = 1
    leaf = max(passes, 1)
    while top > 0:
        top -= 1
        start, stop, lo, hi, below, depth = stack[top]
        src = head if depth == 0 else spare[(depth - 1) % 2]
        if hi - lo <= leaf:
            items = src[start:stop]
            for j in range(lo, hi - 1, 2):
                n0, n1 = _count_le2(items, stop - start, w[j], w[j + 1])
                out[j] = below + n0
                out[j + 1] = below + n1
            if (hi - lo) % 2:
                out[hi - 1] = below + _count_le(items, stop - start, w[hi - 1])
            continue
        dst = spare[depth % 2]
        mid = (lo + hi) // 2
        t = w[mid - 1]
        # items at or below t fill dst[start:] upwards, the others dst[:stop] downwards; each item is written to
        # both ends, and the write that does not count is overwritten later (or is the same item)
        n_left = 0
        n_right = 0
        for i in range(start, stop):
            x = src[i]
            dst[start + n_left] = x
            dst[stop - 1 - n_right] = x
            at_or_below = x <= t
            n_left += at_or_below
            n_right += not at_or_below
        for child in range(2):
            stack[top, 0] = start if child == 0 else start + n_left
            stack[top, 1] = start + n_left if child == 0 else stop
            stack[top, 2] = lo if child == 0 else mid
            stack[top, 3] = mid if child == 0 else hi
            stack[top, 4] = below if child == 0 else below + n_left
            stack[top, 5] = depth + 1
            top += 1
