"""Each line's k smallest (re-ranking's neighbour search on the CPU) against a plain stable sort."""

import numpy as np
import pytest
import torch

import clipreid.nearest as nearest
from clipreid.nearest import smallest_in_columns, smallest_in_rows


def stable_smallest(lines: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values, indices, maxima): each row's k smallest, equal values by index, as a stable argsort picks them."""
    order = np.argsort(lines, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(lines, order, 1), order, lines.max(1)


def odd_matrix(rng: np.random.Generator, shape: tuple[int, int], kind: str) -> np.ndarray:
    if kind == "ties":  # few distinct values: ties across every boundary
        return rng.integers(0, 4, shape).astype(np.float32)
    x = rng.random(shape).astype(np.float64 if kind == "float64" else np.float32)
    if kind == "inf":  # many infinite distances: some lines have fewer than k finite ones
        x[rng.random(shape) < 0.6] = np.inf
    if kind == "zeros":  # -0.0 and 0.0 are equal values
        x[rng.random(shape) < 0.3] = -0.0
        x[rng.random(shape) < 0.3] = 0.0
    return x


SETTINGS = {  # (GROUP, BLOCK_ELEMENTS, CHUNK_COLUMNS, ROWS, KEYS, threads): every loop runs more than once
    "defaults": (32, 2**19, 1024, 256, 4096, 1),
    "small blocks": (4, 300, 5, 12, 7, 1),
    "threads": (3, 200, 3, 8, 5, 2),
    "one item a group": (1, 64, 2, 1, 3, 2),
}


@pytest.fixture(params=SETTINGS.values(), ids=SETTINGS.keys())
def settings(request, monkeypatch):
    group, block, columns, rows, keys, threads = request.param
    for name, value in (("GROUP", group), ("BLOCK_ELEMENTS", block), ("CHUNK_COLUMNS", columns), ("ROWS", rows),
                        ("KEYS", keys)):
        monkeypatch.setattr(nearest, name, value)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("kind", ["plain", "ties", "inf", "zeros", "float64"])
def test_rows_match_a_stable_sort(settings, kind):
    rng = np.random.default_rng(len(kind))
    for _ in range(12):
        n_rows, n = int(rng.integers(1, 30)), int(rng.integers(1, 200))
        k = int(rng.integers(1, n + 1))
        d = odd_matrix(rng, (n_rows, n), kind)
        got = smallest_in_rows(d, k)
        for a, b in zip(got, stable_smallest(d, k), strict=True):
            np.testing.assert_array_equal(a, b)
        assert got.values.dtype == d.dtype


@pytest.mark.parametrize("kind", ["plain", "ties", "inf", "zeros", "float64"])
def test_columns_read_in_place_match_a_stable_sort(settings, kind):
    rng = np.random.default_rng(10 + len(kind))
    for _ in range(12):
        n, c = int(rng.integers(1, 150)), int(rng.integers(1, 20))
        k = int(rng.integers(1, n + 1))
        wide = odd_matrix(rng, (n, c + 9), kind)  # parts are views with a row stride wider than their columns
        cuts = np.sort(rng.integers(0, n + 1, int(rng.integers(0, 3))))
        parts = [wide[a:b, 4:4 + c] for a, b in zip([0, *cuts], [*cuts, n], strict=True)]
        got = smallest_in_columns(parts, k)
        for a, b in zip(got, stable_smallest(np.ascontiguousarray(wide[:, 4:4 + c].T), k), strict=True):
            np.testing.assert_array_equal(a, b)


def test_nan_or_a_negative_value_leaves_it_to_the_caller(settings):
    rng = np.random.default_rng(3)
    for bad in (np.nan, -1e-30, -np.inf):
        d = rng.random((6, 80)).astype(np.float32)
        d[4, 17] = bad
        assert smallest_in_rows(d, 5) is None
        columns = np.ascontiguousarray(d.T)  # its columns are the rows of d
        assert smallest_in_columns([columns[:40], columns[40:]], 5) is None
        assert smallest_in_rows(d[:4], 5) is not None  # the other rows alone are fine
