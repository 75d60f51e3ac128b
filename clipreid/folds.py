"""scikit-learn's ``GroupKFold(n_splits)`` folds, computed without scikit-learn, in the order of a chosen release.

GroupKFold (no shuffle) numbers the groups in sorted order (``np.unique``), orders them by size with
``np.argsort(sizes)[::-1]`` and gives each in turn to the fold with the fewest samples so far (the first such
fold). Only the order of equal-sized groups differs between releases:

- ``original``: scikit-learn up to 1.8 with numpy up to 1.24, as the CLIP-ReIdent authors ran it (scikit-learn
  1.1, numpy 1.23). Their default argsort is numpy's introsort: not stable, but the same on every CPU. It is
  ported below line by line (numpy 1.23, ``npysort/quicksort.cpp``: ``aquicksort_`` and ``aheapsort_``).
  numpy 1.25 and later dispatch that argsort to SIMD sorts whose tie order depends on the CPU, so scikit-learn
  up to 1.8 on a recent numpy gives no single answer to reproduce.
- ``sklearn-1.9``: scikit-learn 1.9 and later sort stably, so equal-sized groups go by name, descending.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

FOLD_ORDERS = ("original", "sklearn-1.9")
SMALL_QUICKSORT = 15  # partitions of at most 16 elements are insertion-sorted (numpy's SMALL_QUICKSORT)


def _aheapsort(v: Sequence, tosort: list[int], start: int, n: int) -> None:
    """numpy 1.23's ``aheapsort_`` on ``tosort[start:start + n]``: the introsort's fallback past its depth limit."""
    base = start - 1  # heap indices run 1..n, as numpy's ``a = tosort - 1``
    a = tosort
    for l in range(n >> 1, 0, -1):  # noqa: E741 (numpy's names)
        _sift_down(v, a, base, a[base + l], l, n)
    while n > 1:
        tmp = a[base + n]
        a[base + n] = a[base + 1]
        n -= 1
        _sift_down(v, a, base, tmp, 1, n)


def _sift_down(v: Sequence, a: list[int], base: int, tmp: int, i: int, n: int) -> None:
    """The sift-down loop that numpy's ``aheapsort_`` writes out twice: ``tmp`` from heap position ``i`` down."""
    j = i << 1
    while j <= n:
        if j < n and v[a[base + j]] < v[a[base + j + 1]]:
            j += 1
        if v[tmp] < v[a[base + j]]:
            a[base + i] = a[base + j]
            i, j = j, j + j
        else:
            break
    a[base + i] = tmp


def introsort_argsort(v: Sequence) -> list[int]:
    """``np.argsort(v)`` as numpy 1.23 computes it for an integer array (``aquicksort_``): median-of-3 quicksort,
    insertion sort for partitions of at most 16, heapsort past a depth of ``2 * floor(log2(n))``.

    Equal values come out in the order this algorithm leaves them, which is what the port is for. ``v`` only
    needs ``v[i] < v[j]``, compared exactly as numpy compares.
    """
    num = len(v)
    t = list(range(num))
    pl, pr = 0, num - 1
    stack: list[tuple[int, int, int]] = []  # (pl, pr, depth) of the larger partitions left for later
    cdepth = max(num, 1).bit_length() * 2 - 2  # npy_get_msb(num) * 2
    while True:
        if cdepth < 0:
            _aheapsort(v, t, pl, pr - pl + 1)
        else:
            while pr - pl > SMALL_QUICKSORT:
                pm = pl + ((pr - pl) >> 1)
                if v[t[pm]] < v[t[pl]]:
                    t[pm], t[pl] = t[pl], t[pm]
                if v[t[pr]] < v[t[pm]]:
                    t[pr], t[pm] = t[pm], t[pr]
                if v[t[pm]] < v[t[pl]]:
                    t[pm], t[pl] = t[pl], t[pm]
                vp = v[t[pm]]
                pi, pj = pl, pr - 1
                t[pm], t[pj] = t[pj], t[pm]
                while True:
                    pi += 1
                    while v[t[pi]] < vp:
                        pi += 1
                    pj -= 1
                    while vp < v[t[pj]]:
                        pj -= 1
                    if pi >= pj:
                        break
                    t[pi], t[pj] = t[pj], t[pi]
                pk = pr - 1
                t[pi], t[pk] = t[pk], t[pi]
                cdepth -= 1
                if pi - pl < pr - pi:  # the larger partition waits on the stack
                    stack.append((pi + 1, pr, cdepth))
                    pr = pi - 1
                else:
                    stack.append((pl, pi - 1, cdepth))
                    pl = pi + 1
            for pi in range(pl + 1, pr + 1):  # insertion sort
                vi = t[pi]
                vp = v[vi]
                pj = pi
                while pj > pl and vp < v[t[pj - 1]]:
                    t[pj] = t[pj - 1]
                    pj -= 1
                t[pj] = vi
        if not stack:
            return t
        pl, pr, cdepth = stack.pop()


def group_kfold(groups: Sequence | np.ndarray, n_splits: int, order: str = "original") -> tuple[np.ndarray, np.ndarray]:
    """GroupKFold's ``(unique_groups, fold of each unique group)`` for the ``groups`` of the rows (any order).

    ``order`` picks the release whose tie order among equal-sized groups is followed (see ``FOLD_ORDERS``).
    The caller checks that there are at least ``n_splits`` groups.
    """
    if order not in FOLD_ORDERS:
        raise ValueError(f"unknown fold order {order!r}: choose one of {', '.join(FOLD_ORDERS)}")
    unique, inverse = np.unique(np.asarray(groups, dtype=object), return_inverse=True)
    sizes = np.bincount(inverse.reshape(-1), minlength=len(unique))
    if order == "original":
        by_size = introsort_argsort(sizes.tolist())[::-1]
    else:
        by_size = np.argsort(sizes, kind="stable")[::-1].tolist()
    load = np.zeros(n_splits, dtype=np.int64)
    fold = np.zeros(len(unique), dtype=np.int64)
    for g in by_size:
        k = int(np.argmin(load))  # the first of equally light folds
        fold[g] = k
        load[k] += sizes[g]
    return unique, fold
