"""The challenge's submission CSV: a distance matrix with query ids down column 0 and gallery ids along row 0.

Layout ((m+1) x (n+1), comma-separated): the first line is ``0`` followed by the n gallery ids; each following
line is a query id followed by its n distances printed with 5 decimals. Ids are integers, query rows are sorted
by id ascending (the challenge requires it) and gallery columns too. In the test split ids are player ids, so the
same id appears many times; sorting is stable so repeated ids keep their relative order.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from clipreid.errors import UserError
from clipreid.fileio import atomic_path

_INT = re.compile(r"[+-]?[0-9]+")


def _to_numpy(x: Any) -> np.ndarray:
    """numpy view of a numpy array, torch tensor or sequence (torch is not imported for this)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if not x.dtype.is_floating_point and not x.dtype.is_complex:
            return x.numpy()
        return x.double().numpy() if x.element_size() < 4 else x.numpy()
    return np.asarray(x)


def _int_ids(ids: Any, what: str) -> np.ndarray:
    """Ids as an int64 vector; ValueError for anything that is not integral."""
    arr = _to_numpy(ids)
    if arr.ndim != 1:
        raise ValueError(f"{what} ids must be a 1-d sequence, got shape {arr.shape}")
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64)
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr) | (arr != np.round(arr))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{what} ids must be integers: {what} id at position {i} is {arr[i]!r}")
        return arr.astype(np.int64)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    raise ValueError(f"{what} ids must be integers, got {arr.dtype} values such as {arr[0]!r}")


def write_distance_matrix(path: str | os.PathLike, distmat: Any, query_ids: Any, gallery_ids: Any) -> None:
    """Write ``distmat`` (m x n, numpy or torch) as the challenge CSV, rows and columns sorted by id, atomically."""
    d = _to_numpy(distmat)
    if d.ndim != 2:
        raise ValueError(f"distmat must be 2-d (queries x gallery), got shape {d.shape}")
    q = _int_ids(query_ids, "query")
    g = _int_ids(gallery_ids, "gallery")
    if d.shape != (len(q), len(g)):
        raise ValueError(f"distmat has shape {d.shape} but there are {len(q)} query ids and {len(g)} gallery ids")
    d = np.asarray(d, dtype=np.float64)
    if not np.isfinite(d).all():
        i, j = (int(k) for k in np.argwhere(~np.isfinite(d))[0])
        raise ValueError(f"distmat[{i}, {j}] is {d[i, j]}; a submission needs finite distances")
    q_order = np.argsort(q, kind="stable")
    g_order = np.argsort(g, kind="stable")
    d = d[np.ix_(q_order, g_order)]
    # One format string per row: formatting is the cost here (about 1 s at 618 x 9,505), not the loop over rows.
    row_format = ",".join(["%.5f"] * d.shape[1])
    with atomic_path(path) as tmp, open(tmp, "w", encoding="ascii", newline="\n") as f:
        f.write("0," + ",".join(map(str, g[g_order].tolist())) + "\n")
        for qid, row in zip(q[q_order].tolist(), d.tolist(), strict=True):
            f.write(f"{qid},{row_format % tuple(row)}\n")


def read_distance_matrix(
    path: str | os.PathLike, dtype: type[np.floating] = np.float64
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read and validate a submission CSV; return (distmat, query_ids, gallery_ids) as numpy arrays.

    Raises UserError naming the file and the first problem found. Rows and columns in messages are counted from 1
    as in a spreadsheet: the header is row 1 and the query ids are column 1. Query ids must be sorted ascending
    (the challenge requires it); gallery order is not checked (use ``align_to`` to reorder). Repeated ids are
    allowed (the test split repeats player ids); negative distances are allowed, NaN and inf are not.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a folder, expected a distance matrix CSV file") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text file, expected a distance matrix CSV") from None
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise UserError(
            f"{path}: the file is empty, expected a distance matrix CSV with a header row '0,<gallery ids>'"
        )

    header = lines[0].split(",")
    if header[0].strip() != "0":
        raise UserError(f"{path}: row 1, column 1: the header starts with {header[0]!r}, expected '0'")
    if len(header) < 2:
        raise UserError(f"{path}: row 1: the header has no gallery ids")
    gallery_ids = np.empty(len(header) - 1, dtype=np.int64)
    for j, cell in enumerate(header[1:]):
        if not _INT.fullmatch(cell.strip()):
            raise UserError(f"{path}: row 1, column {j + 2}: gallery id {cell!r} is not an integer")
        gallery_ids[j] = int(cell)
    if len(lines) < 2:
        raise UserError(f"{path}: no query rows after the header")

    ncols = len(header)
    distmat = np.empty((len(lines) - 1, ncols - 1), dtype=np.float64)
    query_ids = np.empty(len(lines) - 1, dtype=np.int64)
    for i, line in enumerate(lines[1:]):
        row = i + 2
        cells = line.split(",")
        if not line.strip():
            raise UserError(f"{path}: row {row} is empty")
        if len(cells) != ncols:
            raise UserError(f"{path}: row {row} has {len(cells)} columns, expected {ncols} like the header")
        if not _INT.fullmatch(cells[0].strip()):
            raise UserError(f"{path}: row {row}: query id {cells[0]!r} is not an integer")
        query_ids[i] = int(cells[0])
        try:
            values = np.array(cells[1:], dtype=np.float64)
        except ValueError:
            for j, cell in enumerate(cells[1:]):
                try:
                    float(cell)
                except ValueError:
                    raise UserError(f"{path}: row {row}, column {j + 2}: {cell!r} is not a number") from None
            raise UserError(f"{path}: row {row}: a distance is not a number") from None
        finite = np.isfinite(values)
        if not finite.all():
            j = int(np.argmin(finite))
            raise UserError(f"{path}: row {row}, column {j + 2}: {cells[j + 1]!r} is not a finite number")
        distmat[i] = values

    unsorted = np.flatnonzero(query_ids[1:] < query_ids[:-1])
    if unsorted.size:
        k = int(unsorted[0])
        raise UserError(
            f"{path}: query ids must be sorted ascending: row {k + 3} has id {query_ids[k + 1]} "
            f"after {query_ids[k]} in row {k + 2}"
        )
    return distmat.astype(dtype, copy=False), query_ids, gallery_ids


def _describe(counter: Counter) -> str:
    limit = 5  # ids listed before "and N more"
    items = sorted(counter.items())
    parts = [f"{i}" if c == 1 else f"{i} (x{c})" for i, c in items[:limit]]
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(parts) + more if parts else "none"


def _match(ids: np.ndarray, ref: np.ndarray, what: str, name: str) -> np.ndarray:
    """Index ``idx`` with ``ids[idx] == ref``; the k-th occurrence of an id maps to its k-th occurrence in ``ref``."""
    order, ref_order = np.argsort(ids, kind="stable"), np.argsort(ref, kind="stable")
    if len(ids) != len(ref) or not np.array_equal(ids[order], ref[ref_order]):
        have, want = Counter(ids.tolist()), Counter(ref.tolist())
        raise UserError(
            f"{name}: its {what} ids differ from the reference: missing {_describe(want - have)}; "
            f"extra {_describe(have - want)}"
        )
    counts = Counter(ref.tolist())
    repeated = max(counts.values(), default=1) > 1
    # With repeated ids, "the k-th 7 is the k-th 7" holds only if both sides list the images in the same order:
    # the reference's own order, or the order write_distance_matrix writes it in (ids sorted, stably).
    if repeated and not (np.array_equal(ids, ref) or np.array_equal(ids, ref[ref_order])):
        k = int(np.flatnonzero(ids != ref[ref_order])[0])
        example = next(i for i, c in counts.items() if c > 1)
        raise UserError(
            f"{name}: its {what} ids repeat (e.g. {example} x{counts[example]}) and come in another order than "
            f"the reference's (position {k + 1}: {ids[k]}, expected {ref[ref_order][k]}), so which {what} image "
            "is which cannot be told; "
            "fuse only matrices written for the same image list (write_distance_matrix sorts ids stably)"
        )
    index = np.empty(len(ref), dtype=np.int64)
    index[ref_order] = order
    return index


def align_to(
    distmat: Any,
    query_ids: Any,
    gallery_ids: Any,
    ref_query_ids: Any,
    ref_gallery_ids: Any,
    name: str = "distance matrix",
) -> Any:
    """Reorder rows and columns of ``distmat`` (numpy or torch; same type back) to the reference id order.

    Used before fusing CSVs from different sources. Unique ids (the challenge set) may come in any order. Repeated
    ids (the test split: player ids) cannot say which image is which, so they must come in the reference's order
    or in the order ``write_distance_matrix`` writes the reference (ids sorted stably); the k-th 7 then goes to
    the k-th reference 7. Raises UserError, prefixed with ``name``, saying which ids are missing or extra when
    the id multisets differ, or where the order differs for repeated ids.
    """
    q_index = _match(_int_ids(query_ids, "query"), _int_ids(ref_query_ids, "query"), "query", name)
    g_index = _match(_int_ids(gallery_ids, "gallery"), _int_ids(ref_gallery_ids, "gallery"), "gallery", name)
    shape = tuple(distmat.shape)
    if shape != (len(q_index), len(g_index)):
        raise ValueError(f"{name}: distmat has shape {shape} but there are {len(q_index)} x {len(g_index)} ids")
    if hasattr(distmat, "detach"):
        import torch

        rows = torch.as_tensor(q_index, device=distmat.device)
        cols = torch.as_tensor(g_index, device=distmat.device)
        return distmat[rows][:, cols]
    return np.asarray(distmat)[np.ix_(q_index, g_index)]
