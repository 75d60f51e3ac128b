"""Training pairs and validation splits read from ``train_df.csv``.

Every epoch each training image is an anchor once, paired with a random *other* image of the same player
(itself when the player has a single image), and a batch never holds two pairs of the same player: with the
InfoNCE loss every other pair in the batch is a negative, so a repeated player would be a false negative.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from .errors import UserError
from .preprocess import TRAIN_COLUMNS, TRAIN_DF
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


def read_train_df(data_dir: str | Path) -> pd.DataFrame:
    """Read and check ``train_df.csv`` of a data folder."""
    path = Path(data_dir) / TRAIN_DF
    if not path.is_file():
        raise UserError(f"{path} not found; run `python preprocess_data.py --data-dir {data_dir}` first")
    df = pd.read_csv(path)
    missing = [c for c in TRAIN_COLUMNS if c not in df.columns]
    if missing:
        raise UserError(f"{path} lacks the columns {missing}; re-run preprocess_data.py")
    return df


def load_split(data_dir: str | Path, validation: Validation = "test", fold: int = 0) -> Split:
    """Choose training and validation rows of ``train_df.csv``.

    - ``test``: train on the train split, validate on the test split's queries and gallery;
    - ``fold``: validate on the rows of GroupKFold fold ``fold`` (frame-00 rows are the queries), train on the
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
        raise UserError(f"validation must be test, fold or none, not {validation!r}")
    if train.empty:
        raise UserError(f"no training rows in {data_dir / TRAIN_DF} for validation={validation}")
    query, gallery = val[val.img_type == "q"], val[val.img_type == "g"]
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


def _epoch_generator(seed: int, epoch: int, salt: int = 0) -> torch.Generator:
    # A fresh generator per (seed, epoch): the batches of an epoch do not depend on what ran before it,
    # which is what makes resuming exact.
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch * 7_919 + salt)


class PairBatchSampler:
    """Batches of (anchor, positive) index pairs with distinct players, reshuffled every epoch.

    The global batch is ``batch_size * world_size`` pairs of distinct players; rank ``r`` of a distributed run
    takes its slice, so players are distinct within each rank's share and across ranks (the InfoNCE negatives
    are gathered from all ranks). Each image is an anchor once per epoch; the few slots left over in the last
    batches are filled with extra anchors of other players so every batch is full (equal shapes on all ranks).

    Construction: players in random order, each player's images shuffled and concatenated, then dealt
    round-robin into ``ceil(N / global_batch)`` batches. A player's images are consecutive, so as long as no
    player has more images than there are batches, no batch gets a player twice; a player with more is
    subsampled for that epoch.
    """

    def __init__(self, players: np.ndarray, batch_size: int, *, seed: int = 1, world_size: int = 1, rank: int = 0):
        self.players = np.asarray(players, dtype=np.int64)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.world_size, self.rank = int(world_size), int(rank)
        self.global_batch = self.batch_size * self.world_size
        unique, inverse = np.unique(self.players, return_inverse=True)
        if self.batch_size < 1:
            raise UserError(f"batch_size must be at least 1, got {batch_size}")
        if len(unique) < self.global_batch:
            raise UserError(f"a batch of {self.global_batch} pairs needs {self.global_batch} different players, but "
                            f"the training set has {len(unique)}: lower batch_size")
        self._label = inverse  # the player of each image as 0..P-1
        order = np.argsort(inverse, kind="stable")
        counts = np.bincount(inverse)
        self._members = np.split(order, np.cumsum(counts)[:-1])  # image indices of each player
        self.num_batches = math.ceil(len(self.players) / self.global_batch)

    def __len__(self) -> int:
        return self.num_batches

    def global_batches(self, epoch: int) -> list[np.ndarray]:
        """All (global_batch, 2) arrays of (anchor, positive) indices of an epoch, identical on every rank."""
        g = _epoch_generator(self.seed, epoch)
        nb = self.num_batches
        anchors_by_player = []
        for p in torch.randperm(len(self._members), generator=g).tolist():
            members = self._members[p]
            perm = members[torch.randperm(len(members), generator=g).numpy()]
            anchors_by_player.append(perm[:nb])  # more images than batches would repeat the player in a batch
        anchors = np.concatenate(anchors_by_player)
        slots = np.arange(len(anchors)) % nb  # round-robin: consecutive images of a player go to distinct batches
        batches = [anchors[slots == b] for b in range(nb)]
        for b, batch in enumerate(batches):
            short = self.global_batch - len(batch)
            if short > 0:
                free = np.setdiff1d(np.arange(len(self._members)), self._label[batch])
                pick = torch.randperm(len(free), generator=g)[:short].tolist()
                extra = [self._members[free[i]][int(torch.randint(len(self._members[free[i]]), (1,), generator=g))]
                         for i in pick]
                batches[b] = np.concatenate([batch, np.asarray(extra, dtype=batch.dtype)])
        out = []
        for b in torch.randperm(nb, generator=g).tolist():
            batch = batches[b][torch.randperm(self.global_batch, generator=g).numpy()]
            out.append(np.stack([batch, self._positives(batch, g)], axis=1))
        return out

    def _positives(self, anchors: np.ndarray, g: torch.Generator) -> np.ndarray:
        positives = np.empty_like(anchors)
        draws = torch.rand(len(anchors), generator=g).numpy()
        for k, a in enumerate(anchors):
            members = self._members[self._label[a]]
            if len(members) == 1:
                positives[k] = a  # a single image pairs with itself; the augmentations still differ
                continue
            others = members[members != a]
            positives[k] = others[min(int(draws[k] * len(others)), len(others) - 1)]
        return positives

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
