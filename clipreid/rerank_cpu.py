"""k-reciprocal re-ranking's sparse steps on the CPU, as loops compiled with numba (:mod:`clipreid.rerank` runs
them there, and torch's versions elsewhere; each gives the torch version's numbers, bit for bit).

- :func:`reciprocal`: which of each item's neighbours have it among their own neighbours.
- :func:`expand_rows`: each item's k-reciprocal set grown by the half sets of its candidates that overlap it by
  more than 2/3 (Zhong et al.'s expansion), sorted and without repeats.
- :func:`min_join_rows`: the Jaccard term's sums of element-wise minima, each query non-zero (column c, value x)
  meeting the gallery non-zeros of column c, in the torch join's order, without materialising a pair.

The loops release the GIL; :func:`clipreid.runtime.in_threads` deals their rows over torch's threads.
"""

from __future__ import annotations

from numba import njit


@njit(nogil=True, cache=True)
def reciprocal(fwd, back, owner, rows_from, rows_to, hit):
    """``hit[r, a]``: ``owner[r]`` is among ``back[fwd[r, a]]``, for the rows ``rows_from``..``rows_to - 1``."""
    kb = back.shape[1]
    for r in range(rows_from, rows_to):
        o = owner[r]
        for a in range(fwd.shape[1]):
            row = back[fwd[r, a]]
            found = False
            for j in range(kb):
                found |= row[j] == o
            hit[r, a] = found


@njit(nogil=True, cache=True)
def expand_rows(base, in_base, cand, in_cand, half, in_half, strict, rows_from, rows_to, marks, ids, lengths):
    """Per row r in ``rows_from``..``rows_to - 1``: the base set (``base[r]`` where ``in_base[r]``) plus the half set
    H(c) (``half[c]`` where ``in_half[c]``) of each candidate c (``cand[r]`` where ``in_cand[r]``) of which more
    than (``strict``) or at least 2/3 are candidates of the row, sorted, without repeats, into ``ids[r -
    rows_from, :lengths[r - rows_from]]``. ``marks`` (two flags per column, all False) is returned clean."""
    w = cand.shape[1]
    h = half.shape[1]
    for r in range(rows_from, rows_to):
        for i in range(w):
            if in_cand[r, i]:
                marks[0, cand[r, i]] = True
        out = ids[r - rows_from]
        n = 0
        for i in range(base.shape[1]):
            x = base[r, i]
            if in_base[r, i] and not marks[1, x]:
                marks[1, x] = True
                out[n] = x
                n += 1
        for i in range(w):
            if not in_cand[r, i]:
                continue
            c = cand[r, i]
            size = 0
            count = 0
            for j in range(h):
                if in_half[c, j]:
                    size += 1
                    count += marks[0, half[c, j]]
            # more than 2/3 in exact integers, as the torch version (3 count > 2 size)
            if (3 * count > 2 * size) if strict else (3 * count >= 2 * size):
                for j in range(h):
                    x = half[c, j]
                    if in_half[c, j] and not marks[1, x]:
                        marks[1, x] = True
                        out[n] = x
                        n += 1
        for i in range(w):
            if in_cand[r, i]:
                marks[0, cand[r, i]] = False
        # clear the second flags and sort by insertion (a few dozen ids; numba's sort costs more at this size)
        for i in range(n):
            x = out[i]
            marks[1, x] = False
            j = i
            while j > 0 and out[j - 1] > x:
                out[j] = out[j - 1]
                j -= 1
            out[j] = x
        lengths[r - rows_from] = n


@njit(nogil=True, cache=True)
def min_join_rows(q_ptr, q_col, q_val, col_start, col_count, g_row, g_val, rows_from, rows_to, first_row, s):
    """``s[i - first_row, j] = sum_c min(q[i, c], g[j, c])`` for the query rows ``rows_from``..``rows_to - 1``
    (CSR ``q_ptr``, ``q_col``, ``q_val``) against every gallery row: the gallery's non-zeros sorted by column,
    column c's run at ``col_start[c]`` with ``col_count[c]`` entries (rows ``g_row``, values ``g_val``)."""
    for i in range(rows_from, rows_to):
        row = s[i - first_row]
        row[:] = 0
        for e in range(q_ptr[i], q_ptr[i + 1]):
            c = q_col[e]
            x = q_val[e]
            for p in range(col_start[c], col_start[c] + col_count[c]):
                y = g_val[p]
                row[g_row[p]] += x if x < y else y
