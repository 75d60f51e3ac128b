"""The Jaccard term of k-reciprocal re-ranking on the CPU: the sparse min-join, by a loop compiled with numba.

For each query row, each of its non-zeros (column c, value x) meets the gallery non-zeros of column c, and the
pair's minimum is added into the query's dense row of sums: the same pairs, in the same order, as the torch join
in :func:`clipreid.rerank._min_join` (so the same sums, bit for bit), without materialising a pair.
"""

from __future__ import annotations

from numba import njit


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
