"""Training pairs and validation splits read from ``train_df.csv``.

Every epoch each training image is an anchor once, paired with a random *other* image of the same player
(itself when the player has a single image), and a batch never holds two pairs of the same player: with the
InfoNCE loss every other pair in the batch is a negative, so a repeated player would be a false negative.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from .errors import UserError
from .layout import GALLERY, IDENTITIES_CSV, QUERY, TRAIN_COLUMNS, TRAIN_DF
from .transforms import load_image

Validation = Literal["test", "fold", "none"]


@dataclass
class Split:
    """Image paths and player ids of a training set and, optionally, a validation query/gallery set."""

    train_paths: list[Path]
    train_players: np.ndarray
    query_paths: list[Path]
    query_players: np.ndarray
    gallery_paths: list[Path]
    gallery_players: np.ndarray
    query_cams: np.ndarray | None = None
    gallery_cams: np.ndarray | None = None

    def describe(self) -> str:
        text = f"train: {len(self.train_paths)} images of {len(np.unique(self.train_players))} players"
        if self.query_paths:
            text += f"; validation: {len(self.query_paths)} queries, {len(self.gallery_paths)} gallery images"
        return text


TRAIN_INTEGERS = ("player", "fold", "camera")  # the integer columns of train_df.csv (camera: when it has one)


def read_train_df(data_dir: str | Path) -> pd.DataFrame:
    """Read and check ``train_df.csv`` of a data folder."""
    path = Path(data_dir) / TRAIN_DF
    if not path.is_file():
        raise UserError(f"{path} not found; run `python preprocess_data.py --data-dir {data_dir}` first")
    return read_table(path, TRAIN_COLUMNS, integer_columns=TRAIN_INTEGERS)


def read_table(path: Path, columns: Sequence[str], integer_columns: Sequence[str] = ()) -> pd.DataFrame:
    """Read a CSV written by this project exactly as written: every column a string (``001`` stays ``001``,
    ``NA`` stays ``NA``, an empty cell stays empty) except ``integer_columns`` (those present), read as int64.

    The one reader of the project's tables (train_df.csv, challenge_df.csv, identities.csv). UserError naming the
    file for an empty or broken one, a missing column, or a non-integer value in ``integer_columns``.
    """
    fix = f"re-run `python preprocess_data.py --data-dir {path.parent}`"
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    except pd.errors.EmptyDataError:
        raise UserError(f"{path} is empty; {fix}") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not a readable CSV ({str(e).splitlines()[0]}); {fix}") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise UserError(f"{path} lacks the columns {missing}; {fix}")
    if df.empty:
        raise UserError(f"{path} has no rows; {fix}")
    for col in integer_columns:
        if col not in df.columns:
            continue
        text = df[col].str.strip().str.replace(r"\.0*$", "", regex=True)  # 7.0 too: a whole number
        bad = ~text.str.fullmatch(r"[+-]?\d{1,18}").to_numpy(bool)
        if bad.any():
            row = int(bad.argmax())
            value = df[col].iloc[row]
            shown = value if re.fullmatch(r"\s*[+-]?[\d.]+(e[+-]?\d+)?\s*", value, re.IGNORECASE) else repr(value)
            raise UserError(f"{path}: row {row + 2}: {col} {shown} is not an integer; {fix}")
        df[col] = text.astype(np.int64)
    return df


def read_identities(data_dir: str | Path) -> pd.DataFrame:
    """``identities.csv`` of an own-data folder: ``player`` (int64), ``identity`` (the name as written), ``images``."""
    return read_table(Path(data_dir) / IDENTITIES_CSV, ("player", "identity", "images"),
                      integer_columns=("player", "images"))


def fold_identity(data_dir: str | Path, fold: int) -> dict[str, Any]:
    """Which groups (sequences, or identities in the Market-1501 layout) fold ``fold`` of a data folder's
    train_df.csv holds, and of how many folds: what a fold checkpoint records as its held-out set."""
    df = read_train_df(data_dir)
    return {"fold": int(fold), "n_folds": int(df.fold.nunique()),
            "groups": sorted(str(g) for g in df.loc[df.fold == fold, "game"].unique())}


def load_split(data_dir: str | Path, validation: Validation = "test", fold: int = 0) -> Split:
    """Choose training and validation rows of ``train_df.csv``.

    - ``test``: train on the train split, validate on the test split's queries and gallery;
    - ``fold``: validate on the rows of fold ``fold`` (frame-00 rows are the queries), train on the
      rest of train+test;
    - ``none``: train on every train+test row (the final model for a submission), no validation.
    """
    data_dir = Path(data_dir)
    df = read_train_df(data_dir)
    if validation == "test":
        train, val = df[df.split == "train"], df[df.split == "test"]
    elif validation == "fold":
        folds = sorted(df.fold.unique())
        if fold not in folds:
            raise UserError(f"fold {fold} does not exist in {data_dir / TRAIN_DF}; folds are {folds}")
        train, val = df[df.fold != fold], df[df.fold == fold]
    elif validation == "none":
        train, val = df, df.iloc[:0]
    else:
        raise ValueError(f"validation must be test, fold or none, not {validation!r}")  # a Literal: checked at parse
    if train.empty:
        raise UserError(f"no training rows in {data_dir / TRAIN_DF} for validation={validation}")
    query, gallery = val[val.img_type == QUERY], val[val.img_type == GALLERY]
    if validation == "test" and val.empty:
        raise UserError(f"{data_dir / TRAIN_DF} has no test split (no query/gallery images): "
                        "validate on a fold instead (train.py --validation fold, evaluate.py --split fold)")
    if validation != "none" and (query.empty or gallery.empty):
        raise UserError(f"the validation set ({validation}) of {data_dir / TRAIN_DF} has no queries or no gallery")

    def paths(rows: pd.DataFrame) -> list[Path]:
        return [data_dir / f / i for f, i in zip(rows.folder, rows.img_id, strict=True)]

    has_cams = "camera" in df.columns
    return Split(
        train_paths=paths(train), train_players=train.player.to_numpy(np.int64),
        query_paths=paths(query), query_players=query.player.to_numpy(np.int64),
        gallery_paths=paths(gallery), gallery_players=gallery.player.to_numpy(np.int64),
        query_cams=query.camera.to_numpy(np.int64) if has_cams else None,
        gallery_cams=gallery.camera.to_numpy(np.int64) if has_cams else None,
    )


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    # A fresh generator per (seed, epoch): the batches of an epoch do not depend on what ran before it,
    # which is what makes resuming exact.
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch * 7_919)


class PairBatchSampler:
    """Batches of (anchor, positive) index pairs with distinct players, as random as shuffled data.

    The global batch is ``batch_size * world_size`` pairs of distinct players; rank ``r`` of a distributed run
    takes its slice, so players are distinct within each rank's share and across ranks (the InfoNCE negatives
    are gathered from all ranks). Each image is an anchor once per epoch; the slots left over (fewer than one
    batch) are filled with extra anchors of players not yet in their batch, so every batch is full (equal shapes
    on all ranks). A player with more images than there are batches is subsampled for that epoch.

    Construction: the images and the empty slots are shuffled together and cut into batches, exactly as shuffled
    data would be; then each repeated player in a batch is swapped with a random slot of another batch that lacks
    that player and whose own player is not in the first batch. Every swap removes one repeat and creates none,
    so the line-ups stay those of shuffled batches (a player meets about as many different others per epoch),
    unlike dealing each player's images as a block round-robin, which keeps the same neighbours together. When a
    repeat has no such swap (shapes with hardly more players than a batch has slots) the shuffle is redrawn, and
    after a few draws the epoch falls back to that block deal, which always succeeds.
    """

    SHUFFLE_ATTEMPTS = 8

    def __init__(self, players: np.ndarray, batch_size: int, *, seed: int = 1, world_size: int = 1, rank: int = 0):
        self.players = np.asarray(players, dtype=np.int64)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.world_size, self.rank = int(world_size), int(rank)
        self.global_batch = self.batch_size * self.world_size
        unique, inverse = np.unique(self.players, return_inverse=True)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")  # train.py checks it at parse
        if len(unique) < self.global_batch:
            raise UserError(f"a batch of {self.global_batch} pairs needs {self.global_batch} different players, but "
                            f"the training set has {len(unique)}: lower batch_size")
        self._label = inverse.astype(np.int64)  # the player of each image as 0..P-1
        self._order = np.argsort(self._label, kind="stable")  # image indices grouped by player
        self._counts = np.bincount(self._label)
        self._start = np.concatenate([[0], np.cumsum(self._counts)[:-1]])  # each player's offset in _order
        self._rank_in_player = np.empty(len(self._label), dtype=np.int64)  # position of each image in its group
        self._rank_in_player[self._order] = np.arange(len(self._label)) - self._start[self._label[self._order]]
        self.num_batches = math.ceil(len(self.players) / self.global_batch)

    def __len__(self) -> int:
        return self.num_batches

    def global_batches(self, epoch: int) -> list[np.ndarray]:
        """All (global_batch, 2) arrays of (anchor, positive) indices of an epoch, identical on every rank."""
        g = _epoch_generator(self.seed, epoch)
        for _ in range(self.SHUFFLE_ATTEMPTS):
            grid = self._shuffled_grid(g)
            if self._separate_repeats(grid, g):
                break
        else:  # a shape too tight for swaps (about as many players as slots per batch): the block deal
            grid = self._dealt_grid(g)
        self._fill_empty(grid, g)
        anchors = grid.reshape(-1)
        pairs = np.stack([anchors, self._positives(anchors, g)], axis=1)
        return list(pairs.reshape(self.num_batches, self.global_batch, 2))

    def _kept_anchors(self, g: torch.Generator) -> np.ndarray:
        """Every image, except that a player with more images than batches keeps a random ``num_batches``."""
        if self._counts.max() <= self.num_batches:
            return np.arange(len(self._label))
        key = torch.rand(len(self._label), generator=g, dtype=torch.float64).numpy()
        order = np.lexsort((key, self._label))  # by player, then randomly within the player
        position = np.arange(len(order)) - self._start[self._label[order]]
        return np.sort(order[position < self.num_batches])

    def _shuffled_grid(self, g: torch.Generator) -> np.ndarray:
        """(num_batches, global_batch) image indices, -1 for an empty slot: images and empty slots shuffled."""
        kept = self._kept_anchors(g)
        slots = np.concatenate([kept, np.full(self.num_batches * self.global_batch - len(kept), -1)])
        return slots[torch.randperm(len(slots), generator=g).numpy()].reshape(self.num_batches, self.global_batch)

    def _dealt_grid(self, g: torch.Generator) -> np.ndarray:
        """The block deal: players in random order, each one's images consecutive, dealt round-robin. Never
        repeats a player in a batch (no player has more images than there are batches), but keeps neighbours."""
        nb = self.num_batches
        kept = self._kept_anchors(g)
        kept = kept[torch.randperm(len(kept), generator=g).numpy()]
        player_rank = np.argsort(torch.randperm(len(self._counts), generator=g).numpy())
        anchors = kept[np.argsort(player_rank[self._label[kept]], kind="stable")]
        grid = np.full((nb, self.global_batch), -1, dtype=np.int64)
        k = np.arange(len(anchors))
        grid[k % nb, k // nb] = anchors
        return grid

    def _separate_repeats(self, grid: np.ndarray, g: torch.Generator) -> bool:
        """Swap repeated players out of their batches, in place; False when some repeat has no valid swap."""
        n_players = len(self._counts)
        labels = np.where(grid >= 0, self._label[np.maximum(grid, 0)], n_players)  # n_players marks an empty slot
        present = np.zeros((self.num_batches, n_players + 1), dtype=np.int64)
        rows = np.repeat(np.arange(self.num_batches), self.global_batch)
        np.add.at(present, (rows, labels.reshape(-1)), 1)
        present[:, n_players] = 0  # an empty slot is nobody: never a repeat, fits any batch
        repeats = np.argwhere((labels < n_players) & (present[rows, labels.reshape(-1)].reshape(grid.shape) > 1))
        for b, j in repeats:
            p = labels[b, j]
            if present[b, p] < 2:
                continue  # an earlier swap already took one of this player's images out of batch b
            # a slot (c, k) of a batch without p, holding a player q not in batch b (or nothing)
            fits = (present[:, p] == 0)[:, None] & (present[b][labels] == 0)
            candidates = np.flatnonzero(fits)
            if len(candidates) == 0:
                return False
            c, k = divmod(int(candidates[int(torch.randint(len(candidates), (1,), generator=g))]), self.global_batch)
            q = labels[c, k]
            grid[b, j], grid[c, k] = grid[c, k], grid[b, j]
            labels[b, j], labels[c, k] = q, p
            present[b, p] -= 1
            present[c, p] += 1
            if q < n_players:
                present[c, q] -= 1
                present[b, q] += 1
        return True

    def _fill_empty(self, grid: np.ndarray, g: torch.Generator) -> None:
        """Fill the empty slots of each batch with a random image of a random player not in the batch."""
        for b in np.flatnonzero((grid < 0).any(axis=1)):
            empty = np.flatnonzero(grid[b] < 0)
            free = np.setdiff1d(np.arange(len(self._counts)), self._label[grid[b][grid[b] >= 0]])
            chosen = free[torch.randperm(len(free), generator=g)[: len(empty)].numpy()]
            draws = torch.rand(len(chosen), generator=g, dtype=torch.float64).numpy()
            offsets = np.minimum((draws * self._counts[chosen]).astype(np.int64), self._counts[chosen] - 1)
            grid[b, empty] = self._order[self._start[chosen] + offsets]

    def _positives(self, anchors: np.ndarray, g: torch.Generator) -> np.ndarray:
        """A uniformly random other image of each anchor's player (the anchor itself for a single image)."""
        label = self._label[anchors]
        others = self._counts[label] - 1
        draws = torch.rand(len(anchors), generator=g, dtype=torch.float64).numpy()
        pick = np.minimum((draws * others).astype(np.int64), np.maximum(others - 1, 0))
        pick += pick >= self._rank_in_player[anchors]  # skip the anchor's own position in its group
        return np.where(others > 0, self._order[self._start[label] + np.minimum(pick, others)], anchors)

    def batches(self, epoch: int, start: int = 0) -> Iterator[list[tuple[int, int]]]:
        """This rank's share of each batch of an epoch, from batch ``start`` on."""
        lo, hi = self.rank * self.batch_size, (self.rank + 1) * self.batch_size
        for batch in self.global_batches(epoch)[start:]:
            yield [(int(a), int(p)) for a, p in batch[lo:hi]]


class ImageSet(Dataset):
    """Letterboxed uint8 images, decoded on demand or all at once into memory (``cache``)."""

    def __init__(self, paths: list[Path], size: tuple[int, int], cache: torch.Tensor | None = None,
                 interpolation: str = "bilinear"):
        self.paths = list(paths)
        self.size = tuple(size)
        self.cache = cache
        self.interpolation = interpolation

    def __len__(self) -> int:
        return len(self.paths)

    def image(self, i: int) -> torch.Tensor:
        return self.cache[i] if self.cache is not None else load_image(self.paths[i], self.size, self.interpolation)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.image(i), i


class PairDataset(Dataset):
    """Indexed by (anchor, positive) pairs from :class:`PairBatchSampler`; returns both images and the label."""

    def __init__(self, images: ImageSet, labels: np.ndarray):
        self.images = images
        self.labels = torch.as_tensor(labels, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, pair: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        a, p = pair
        return self.images.image(a), self.images.image(p), self.labels[a]


def contiguous_labels(players: np.ndarray) -> np.ndarray:
    """Player ids -> labels 0..C-1 (for the identity classifier)."""
    return np.unique(np.asarray(players), return_inverse=True)[1].astype(np.int64)
