"""The k smallest values of every row, or every column, of a distance matrix on the CPU, and each line's maximum.

Re-ranking needs each image's k nearest (k about 20) among tens of thousands. ``torch.topk`` keeps a heap per
row at about 3 ns an element on one thread. Here each line is cut into ``GROUP``-item groups (items ``v, v + G,
v + 2G, ...`` of a line of G groups) and each group's minimum taken, one vectorised pass. The k-th smallest of
those minima bounds the line's k-th smallest from above (k distinct items lie at or below it), and only groups
whose minimum is at or below that bound can hold an item at or below it: their items are read again and the
line's candidates sorted (value, then index). The same values as ``torch.topk``; among equal values the lower
index comes first, as a stable sort leaves them (``torch.topk`` leaves their order unspecified).

Columns are read in place, without transposing the matrix (a transposed copy alone costs about 2 ns an element
on the CPU): a group is then a set of rows, and the minima an element-wise reduction over slabs of rows.

Lines are dealt over torch's CPU threads (numpy releases the GIL in its loops). A line that holds NaN or a
negative value makes the call return None: the caller takes its general way (it squares such distances).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .runtime import in_threads

# items per group: the minima to select from are 1/GROUP of a line, and each selected group costs GROUP reads
GROUP = 32
# elements of a block of rows handled at once (its passes stay in cache); columns go CHUNK_COLUMNS at a time, ROWS
# rows of them at once (wide enough to read whole pages of a row-major matrix, short enough to stay in cache)
BLOCK_ELEMENTS = 2**19
CHUNK_COLUMNS = 512
ROWS = 256
KEYS = 4096


class Smallest(NamedTuple):
    """Per line: its k smallest values ascending (equal values by index), their indices, and the line's maximum."""

    values: np.ndarray
    indices: np.ndarray
    maxima: np.ndarray


def smallest_in_rows(d: np.ndarray, k: int) -> Smallest | None:
    """The :class:`Smallest` of each row of ``d`` (rows x n, C-contiguous, 1 <= k <= n); None where a row
    holds NaN or a negative value."""
    n_rows, n = d.shape
    out = _empty(n_rows, k, d.dtype)
    step = max(1, BLOCK_ELEMENTS // n)
    ok = in_threads(lambda starts: all(_rows_block(d[a:a + step], k, out, a) for a in starts),
                    range(0, n_rows, step))
    return out if ok else None


def smallest_in_columns(parts: list[np.ndarray], k: int) -> Smallest | None:
    """The :class:`Smallest` of each column of the matrix whose rows are those of ``parts`` one after another
    (each part rows x c, its rows contiguous and apart: a row stride of at least c; 1 <= k <= all rows);
    indices count the rows of all parts in turn. None where a column holds NaN or a negative value."""
    c = parts[0].shape[1]
    out = _empty(c, k, parts[0].dtype)
    ok = in_threads(lambda starts: all(_columns_block([p[:, a:a + CHUNK_COLUMNS] for p in parts], k, out, a)
                                       for a in starts), range(0, c, CHUNK_COLUMNS))
    return out if ok else None


def _empty(n_lines: int, k: int, dtype: np.dtype) -> Smallest:
    return Smallest(np.empty((n_lines, k), dtype), np.empty((n_lines, k), np.int64), np.empty(n_lines, dtype))


def _group(n: int, k: int) -> tuple[int, int]:
    """(items per group, groups) for a line of n items: at least k keys (groups and left-over items)."""
    group = max(1, min(GROUP, n // k))
    return group, n // group


def _flat(x: np.ndarray) -> np.ndarray:
    """A 1-D view from x[0, 0] to x[-1, -1] of a 2-D array with contiguous rows: x[i, j] is at i * stride + j."""
    return np.lib.stride_tricks.as_strided(x, ((len(x) - 1) * (x.strides[0] // x.itemsize) + x.shape[1],),
                                           (x.itemsize,))


def _rows_block(x: np.ndarray, k: int, out: Smallest, a: int) -> bool:
    r, n = x.shape
    group, g = _group(n, k)
    slabs = np.lib.stride_tricks.as_strided(x, (r, group, g), (x.strides[0], g * x.itemsize, x.itemsize))
    keys = np.minimum.reduce(slabs, axis=1)
    if g * group < n:  # the items left over are keys of their own
        keys = np.concatenate([keys, x[:, g * group:]], 1)
    if np.isnan(keys).any():
        return False
    bound = np.partition(keys, k - 1, axis=1)[:, k - 1]
    line, key = np.divmod(np.flatnonzero(keys <= bound[:, None]), keys.shape[1])
    at = line * n + np.where(key < g, key, key + g * group - g)  # a key's first item
    grouped = key < g
    members = (at[grouped, None] + g * np.arange(group)).ravel()
    members = members[x.ravel().take(members) <= np.repeat(bound[line[grouped]], group)]
    at = np.concatenate([members, at[~grouped]])
    line = at // n
    return _sort_lines(line, at - line * n, x.ravel().take(at), x.max(1), k, out, a)


def _columns_block(parts: list[np.ndarray], k: int, out: Smallest, a: int) -> bool:
    c = parts[0].shape[1]
    group, _ = _group(sum(len(p) for p in parts), k)
    span = max(group, ROWS // group * group)  # rows of a part reduced at a time, a whole number of groups
    # per key row: its part, its first row there and its items' spacing (0: a left-over row, a key of its own)
    blocks = [(i, r, min(r + span, len(p))) for i, p in enumerate(parts) for r in range(0, len(p), span)]
    part, first, spacing = (np.concatenate(x) for x in zip(*(_block_keys(i, r, e, group) for i, r, e in blocks),
                                                            strict=True))
    rows = np.empty((len(part), c), parts[0].dtype)
    maxima = np.full(c, -np.inf, parts[0].dtype)
    o = 0
    for i, r, e in blocks:
        x = parts[i][r:e]
        g = len(x) // group
        np.minimum.reduce(np.lib.stride_tricks.as_strided(x, (group, g, c), (g * x.strides[0], x.strides[0],
                                                                             x.itemsize)), axis=0, out=rows[o:o + g])
        rows[o + g:o + len(x) - g * group + g] = x[g * group:]
        o += len(x) - g * group + g
        np.maximum(maxima, x.max(0), out=maxima)
    if np.isnan(rows).any() or np.isnan(maxima).any():
        return False
    bound = np.partition(rows, k - 1, axis=0)[k - 1].copy()
    key, col = np.divmod(np.flatnonzero(rows <= bound), c)
    del rows
    part, first, spacing = part[key], first[key], spacing[key]
    offsets = np.cumsum([0] + [len(p) for p in parts])
    lines, indices, values = [], [], []
    u = np.arange(group)
    for i, p in enumerate(parts):
        stride = p.strides[0] // p.itemsize
        mine = np.flatnonzero(part == i)
        for s in range(0, len(mine), KEYS):  # a bounded number of keys at a time: GROUP reads each
            sel = mine[s:s + KEYS]
            # each selected key's items, as places in the part's memory; a left-over row's key has one item
            at = np.multiply.outer(spacing[sel] * stride, u)
            at += (first[sel] * stride + col[sel])[:, None]
            value = _flat(p).take(at)
            keep = (value <= bound[col[sel], None]) & ((spacing[sel, None] > 0) | (u == 0))
            line = np.broadcast_to(col[sel, None], at.shape)[keep]
            lines.append(line)
            indices.append((at[keep] - line) // stride + offsets[i])
            values.append(value[keep])
    return _sort_lines(np.concatenate(lines), np.concatenate(indices), np.concatenate(values), maxima, k, out, a)


def _block_keys(part: int, start: int, stop: int, group: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(part, first row, spacing) of the key rows of rows start..stop-1 of a part: its groups, then its rows left
    over (spacing 0)."""
    n = stop - start
    g = n // group
    left = np.arange(g * group, n) + start
    return (np.full(g + len(left), part), np.concatenate([np.arange(g) + start, left]),
            np.concatenate([np.full(g, g), np.zeros(len(left), np.int64)]))


def _sort_lines(line: np.ndarray, index: np.ndarray, value: np.ndarray, maxima: np.ndarray, k: int,
                out: Smallest, a: int) -> bool:
    """Writes each line's k smallest candidates (value, then index, ascending) from (line, index, value) triples
    (every line has at least k) and the lines' maxima into ``out`` from line ``a`` on; False if a value is
    negative."""
    if len(value) and value.min() < 0:
        return False
    n_lines = len(maxima)
    order = np.argsort(line, kind="stable")
    line, index, value = line[order], index[order], value[order]
    count = np.bincount(line, minlength=n_lines)
    place = np.arange(len(line)) - (np.cumsum(count) - count)[line]
    v = np.full((n_lines, int(count.max())), np.inf, value.dtype)
    i = np.full(v.shape, np.iinfo(np.int64).max)
    v[line, place] = value
    i[line, place] = index
    pick = np.lexsort((i, v), axis=1)[:, :k]
    out.values[a:a + n_lines] = np.take_along_axis(v, pick, 1)
    out.indices[a:a + n_lines] = np.take_along_axis(i, pick, 1)
    out.maxima[a:a + n_lines] = maxima
    return True
