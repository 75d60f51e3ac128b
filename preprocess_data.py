"""Stage 2: build the DataFrames the later stages read.

    python preprocess_data.py                                              # data/data_reid
    python preprocess_data.py --data-dir data/synthetic_reid
    python preprocess_data.py --data-dir data/Market-1501 --layout market1501
    python preprocess_data.py --data-dir data/my_players --layout folders  # data/my_players/<identity>/*.jpg
    python preprocess_data.py --data-dir data/my_players --layout csv --csv data/my_players/labels.csv

Writes ``train_df.csv`` (train + test images with their 10-fold GroupKFold fold) and ``challenge_df.csv`` into
the data folder, with image paths relative to that folder; for the folders and csv layouts also
``identities.csv`` (the integer player id of each identity name). Files left out are listed in
``preprocess_skipped.txt``; queries with a byte-identical copy in their gallery, blank images and single-image
players in ``preprocess_report.txt``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from clipreid.config import Checks, at_least, run, save_config
from clipreid.fileio import check_writable
from clipreid.preprocess import preprocess


@dataclass
class Config:
    data_dir: Path = Path("data/data_reid")  # the extracted dataset; the CSVs are written here
    layout: Literal["synergyreid", "market1501", "folders", "csv"] = "synergyreid"  # layout of data_dir (see README)
    csv: Path | None = None  # layout csv: the CSV of path,id[,camera][,split]; none = data_dir/labels.csv
    holdout: float = 0.2  # folders/csv without splits: share of identities held out as test queries and gallery
    split_seed: int = 0  # folders/csv without splits: seed of the hash that holds out identities below `holdout`
    # GroupKFold splits over train+test, grouped by sequence (by identity for the other layouts, one identity per
    # fold when there are fewer identities)
    n_folds: int = 10
    check_images: bool = True  # decode every image and leave out unreadable ones (listed in preprocess_skipped.txt)
    # whose GroupKFold folds: original = scikit-learn 1.1 with numpy 1.23, as the CLIP-ReIdent authors ran it (the
    # same on any machine); sklearn-1.9 = scikit-learn 1.9 and later (they differ in the order of equal-sized groups)
    folds: Literal["original", "sklearn-1.9"] = "original"
    progress: bool = True  # show progress bars

    # what can work, per field: checked before any work starts (one line per field; see clipreid.config)
    checks: ClassVar[Checks] = {
        "n_folds": at_least(2),
    }


def main(cfg: Config) -> None:
    if cfg.data_dir.is_dir():  # a missing one gets preprocess's own message
        check_writable(cfg.data_dir, "--data-dir")
    result = preprocess(cfg.data_dir, layout=cfg.layout, n_folds=cfg.n_folds, check_images=cfg.check_images,
                        progress=cfg.progress, csv=cfg.csv, holdout=cfg.holdout, split_seed=cfg.split_seed,
                        folds=cfg.folds)
    save_config(cfg, cfg.data_dir / "preprocess_config.json")
    print(result.summary())


if __name__ == "__main__":
    run(Config, main)
