"""How ``fold_goldens.json`` was made: table shapes, then the folds the real libraries give them.

The tests read the JSON only; this script is the record of where its folds came from. Run once per library set,
each in a throwaway virtual environment (the folds must come from the real GroupKFold, not from clipreid), from
the repository root:

    PYTHONPATH=. python tests/data/make_fold_goldens.py shapes  # with clipreid's requirements: writes the shapes
    python3.11 -m venv /tmp/sk11 && /tmp/sk11/bin/pip install numpy==1.23.5 scikit-learn==1.1.3 pandas
    PYTHONPATH=. /tmp/sk11/bin/python tests/data/make_fold_goldens.py record original
    python3.11 -m venv /tmp/sk19 && /tmp/sk19/bin/pip install "scikit-learn==1.9.*" numpy pandas
    PYTHONPATH=. /tmp/sk19/bin/python tests/data/make_fold_goldens.py record sklearn-1.9

``record`` runs ``GroupKFold(n_splits).split(df, groups=df["game"])`` on a DataFrame of one row per image, as the
original ``preprocess_data.py`` does, and stores the fold of each group. It checks that a shuffled row order gives
the same folds (GroupKFold numbers the groups by sorted name). Under numpy 1.23 it also stores ``np.argsort`` of
the group sizes (in sorted-name order): the tie order that clipreid.folds ports.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

GOLDENS = Path(__file__).with_name("fold_goldens.json")


def _realistic(rng: random.Random) -> dict[str, int]:
    """The DeepSportradar set's shape: 436 train players (8,569 images) and 50 test players in sequences of a few
    players each, sequences numbered per split and written as in the file names (``train_07``)."""
    sizes: dict[str, int] = {}
    for split, players, frames in (("train", 436, (8, 32)), ("test", 50, (12, 26))):
        seq = 0
        while players > 0:
            count = min(rng.randint(3, 10), players)
            sizes[f"{split}_{seq:02d}"] = sum(rng.randint(*frames) for _ in range(count))
            players -= count
            seq += 1
    return sizes


def _synthetic(**spec) -> dict[str, int]:
    """The group sizes of clipreid's synthetic dataset with ``spec`` (sequences numbered across splits)."""
    from clipreid.synthetic import SyntheticSpec, _make_players

    sizes: dict[str, int] = {}
    for split, players in _make_players(SyntheticSpec(**spec)).items():
        if split == "challenge":
            continue
        for p in players:
            key = f"{split}_{p.sequence.index:02d}"
            sizes[key] = sizes.get(key, 0) + p.num_frames
    return sizes


def _ties(rng: random.Random, n: int, hi: int, prefix: str = "g") -> dict[str, int]:
    """``n`` groups with sizes 1..hi (many ties), names in a shuffled order."""
    names = [f"{prefix}_{i}" for i in range(n)]  # unpadded: sorted order is not numeric order
    rng.shuffle(names)
    return {name: rng.randint(1, hi) for name in names}


def _synergy_files(rng: random.Random) -> dict[str, int]:
    """A DeepSportradar folder small enough for a test to write: 21 sequences of 1-3 images (many ties), one of
    them numbered 100 (sorted by name, 'train_100' comes before 'train_11')."""
    sizes = {f"train_{s:02d}": rng.randint(1, 3) for s in [*range(16), 100]}
    sizes |= {f"test_{s:02d}": rng.randint(2, 3) for s in range(4)}
    return sizes


class _Adversary:
    """McIlroy's "killer adversary" (1999) for a quicksort: values decided during the sort, each pivot candidate
    frozen as small as possible, so that the partitions come out lopsided and the introsort falls back to heapsort.
    ``v[i]`` returns an item whose ``<`` asks the adversary."""

    def __init__(self, n: int):
        self.gas = n
        self.val = [n] * n
        self.solid = 0
        self.candidate = 0

    def __len__(self) -> int:
        return len(self.val)

    def __getitem__(self, i: int) -> _Item:
        return _Item(self, i)

    def less(self, x: int, y: int) -> bool:
        val = self.val
        if val[x] == self.gas and val[y] == self.gas:
            if x == self.candidate:
                val[x], self.solid = self.solid, self.solid + 1
            else:
                val[y], self.solid = self.solid, self.solid + 1
        if val[x] == self.gas:
            self.candidate = x
        elif val[y] == self.gas:
            self.candidate = y
        return val[x] < val[y]


class _Item:
    def __init__(self, adversary: _Adversary, i: int):
        self.adversary, self.i = adversary, i

    def __lt__(self, other: _Item) -> bool:
        return self.adversary.less(self.i, other.i)


def _heapsort_fallback(n: int) -> dict[str, int]:
    """Sizes on which numpy 1.23's argsort reaches its depth limit and heapsorts (checked with clipreid's port)."""
    import clipreid.folds as folds

    adversary = _Adversary(n)
    folds.introsort_argsort(adversary)
    sizes = [v + 1 for v in adversary.val]  # the remaining gas is one more tie, at the top
    calls = []
    real = folds._aheapsort
    folds._aheapsort = lambda *a: (calls.append(a[3]), real(*a))
    try:
        folds.introsort_argsort(sizes)
    finally:
        folds._aheapsort = real
    assert calls, "the adversary's sizes did not reach the heapsort fallback"
    return {f"seq_{i:04d}": s for i, s in enumerate(sizes)}


def make_shapes() -> list[dict]:
    rng = random.Random(2023)
    shapes = [
        ("realistic", _realistic(rng), 10),
        ("synthetic-default", _synthetic(), 10),
        ("synthetic-default-3-folds", _synthetic(), 3),
        ("synthetic-436-players", _synthetic(num_train_players=436, num_test_players=50, seed=1), 10),
        ("12-groups-insertion-sort", _ties(rng, 12, 3), 5),
        ("16-groups", _ties(rng, 16, 4), 10),
        ("17-groups", _ties(rng, 17, 4), 10),
        ("40-equal-groups", {f"train_{i:02d}": 7 for i in range(40)}, 10),
        ("200-groups-heavy-ties", _ties(rng, 200, 5), 10),
        ("2000-groups-heavy-ties", _ties(rng, 2000, 8, prefix="train"), 10),
        ("300-groups-heapsort-fallback", _heapsort_fallback(300), 10),
        ("synergy-files", _synergy_files(random.Random(7)), 10),
    ]
    return [{"name": n, "n_folds": k, "groups": list(s), "sizes": list(s.values())} for n, s, k in shapes]


def record(key: str) -> None:
    import numpy as np
    import pandas as pd
    import sklearn
    from sklearn.model_selection import GroupKFold

    data = json.loads(GOLDENS.read_text())
    data.setdefault("libraries", {})[key] = f"scikit-learn {sklearn.__version__}, numpy {np.__version__}"
    for shape in data["shapes"]:
        game = [g for g, n in zip(shape["groups"], shape["sizes"], strict=True) for _ in range(n)]
        results = []
        for seed in (None, 0):
            rows = list(game) if seed is None else random.Random(seed).sample(game, len(game))
            df = pd.DataFrame({"game": rows})
            df["fold"] = -1
            for fold, (_, val_idx) in enumerate(GroupKFold(n_splits=shape["n_folds"]).split(df, groups=df["game"])):
                df.loc[val_idx, "fold"] = fold
            per_group = df.groupby("game").fold.agg(["min", "max"])
            assert (per_group["min"] == per_group["max"]).all() and (per_group["min"] >= 0).all()
            results.append([int(per_group.loc[g, "min"]) for g in shape["groups"]])
        assert results[0] == results[1], f"{shape['name']}: the row order moved the folds"
        shape.setdefault("folds", {})[key] = results[0]
        if np.lib.NumpyVersion(np.__version__) < "1.25.0":  # later numpy: a SIMD argsort, its ties CPU-dependent
            sizes = np.bincount(np.unique(np.asarray(game, dtype=object), return_inverse=True)[1])
            shape["numpy_1_23_argsort"] = np.argsort(sizes).tolist()
    GOLDENS.write_text(json.dumps(data, separators=(",", ":")) + "\n")


if __name__ == "__main__":
    if sys.argv[1:] == ["shapes"]:
        GOLDENS.write_text(json.dumps({"libraries": {}, "shapes": make_shapes()}, separators=(",", ":")) + "\n")
    elif len(sys.argv) == 3 and sys.argv[1] == "record":
        record(sys.argv[2])
    else:
        sys.exit(__doc__)
