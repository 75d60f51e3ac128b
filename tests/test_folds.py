"""Folds as scikit-learn's GroupKFold made them, pinned by golden tables from the real libraries.

``data/fold_goldens.json`` holds table shapes (group names and sizes) with the folds that GroupKFold gave them
under scikit-learn 1.1.3 + numpy 1.23.5 (the CLIP-ReIdent authors' versions: ``original``) and under
scikit-learn 1.9 (``sklearn-1.9``), and numpy 1.23's argsort of the group sizes; ``data/make_fold_goldens.py``
made it.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clipreid.folds import FOLD_ORDERS, group_kfold, introsort_argsort
from clipreid.preprocess import assign_folds

GOLDENS = json.loads((Path(__file__).parent / "data" / "fold_goldens.json").read_text())
SHAPES = {s["name"]: s for s in GOLDENS["shapes"]}


def rows_of(shape: dict, seed: int | None = None) -> list[str]:
    """One group name per image, as a train_df's ``game`` column; shuffled when ``seed`` is given."""
    game = [g for g, n in zip(shape["groups"], shape["sizes"], strict=True) for _ in range(n)]
    return game if seed is None else random.Random(seed).sample(game, len(game))


def test_goldens_come_from_the_libraries_they_name():
    assert GOLDENS["libraries"] == {
        "original": "scikit-learn 1.1.3, numpy 1.23.5",
        "sklearn-1.9": "scikit-learn 1.9.1, numpy 2.4.6",
    }
    assert set(FOLD_ORDERS) == set(GOLDENS["libraries"])
    for shape in GOLDENS["shapes"]:
        assert set(shape["folds"]) == set(FOLD_ORDERS)


@pytest.mark.parametrize("order", FOLD_ORDERS)
@pytest.mark.parametrize("name", list(SHAPES))
def test_assign_folds_equals_group_kfold(name, order):
    shape = SHAPES[name]
    expected = dict(zip(shape["groups"], shape["folds"][order], strict=True))
    df = pd.DataFrame({"game": rows_of(shape, seed=1)}, index=np.arange(sum(shape["sizes"]))[::-1] + 7)
    fold = assign_folds(df, shape["n_folds"], order=order)
    assert fold.index.equals(df.index)
    assert (fold.to_numpy() == df.game.map(expected).to_numpy()).all()


@pytest.mark.parametrize("name", list(SHAPES))
def test_introsort_argsort_equals_numpy_1_23(name):
    shape = SHAPES[name]
    unique, inverse = np.unique(np.asarray(rows_of(shape), dtype=object), return_inverse=True)
    sizes = np.bincount(inverse).tolist()
    assert introsort_argsort(sizes) == shape["numpy_1_23_argsort"]


def test_shapes_cover_the_sort_paths():
    """Insertion sort only (up to 16 groups, where both orders agree), quicksort partitions, and the heapsort
    fallback; the orders differ where equal-sized groups are many."""
    n = {name: len(s["groups"]) for name, s in SHAPES.items()}
    assert min(n.values()) <= 16 < max(n.values())
    assert n["300-groups-heapsort-fallback"] == 300
    for name, shape in SHAPES.items():
        same = shape["folds"]["original"] == shape["folds"]["sklearn-1.9"]
        assert same == (len(shape["groups"]) <= 16 or len(set(shape["sizes"])) == len(shape["sizes"])), name


def test_introsort_argsort_small_cases():
    assert introsort_argsort([]) == []
    assert introsort_argsort([5]) == [0]
    assert introsort_argsort([3, 1, 2]) == [1, 2, 0]
    # 17 equal values: one partition step, which leaves ties out of index order (numpy 1.23.5's own answer)
    assert introsort_argsort([4] * 17) == [0, 14, 13, 12, 11, 10, 9, 15, 8, 6, 5, 4, 3, 2, 1, 7, 16]


def test_group_kfold_numbers_groups_by_sorted_name():
    """Names sort as strings ('train_10' before 'train_9'); the folds are a function of names and sizes alone."""
    unique, fold = group_kfold(["train_9", "train_10", "train_10", "test_00"], 2, "original")
    assert unique.tolist() == ["test_00", "train_10", "train_9"]
    assert fold.tolist() == [1, 0, 1]  # train_10 (2 images) first, then 'train_9' (index 2 wins the tie), test_00
    with pytest.raises(ValueError, match="unknown fold order"):
        group_kfold(["a", "b"], 2, "sklearn-1.1")
