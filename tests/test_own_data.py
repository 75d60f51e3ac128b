"""Users' own datasets end to end: a folder per identity and a CSV without cameras go through preprocess_data.py,
training, evaluation and prediction of the test split; a train-only dataset trains and scores on a fold."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clipreid.dataset import read_train_df
from clipreid.errors import UserError
from clipreid.evaluation import evaluate
from clipreid.layout import IDENTITIES_CSV, TRAIN_COLUMNS, TRAIN_DF
from clipreid.prediction import predict
from clipreid.submission import read_distance_matrix
from clipreid.trainer import train
from evaluate import Config as EvalConfig
from predict import Config as PredictConfig
from train import Config as TrainConfig

ROOT = Path(__file__).resolve().parents[1]
# One torch thread: on a few busy cores, idle worker threads spin and slow these tiny models down.
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}
RUN = dict(device="cpu", progress=False, num_workers=0)


pytestmark = pytest.mark.usefixtures("one_thread")


def preprocess_script(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, str(ROOT / "preprocess_data.py"), *map(str, args), "--no-progress"],
                       cwd=cwd, capture_output=True, text=True, timeout=300, env=ONE_THREAD)
    assert r.returncode == 0, r.stderr
    return r


@pytest.fixture(scope="module")
def crops(synthetic_small) -> pd.DataFrame:
    """Synthetic crops of 24 training and all 12 test players: source path, identity name, original split."""
    df = pd.read_csv(synthetic_small / TRAIN_DF)
    keep = sorted(df[df.split == "train"].player.unique())[:24] + sorted(df[df.split == "test"].player.unique())
    df = df[df.player.isin(keep)]
    return pd.DataFrame({
        "src": [synthetic_small / f / i for f, i in zip(df.folder, df.img_id, strict=True)],
        "name": "player-" + df.player.astype(str),  # string names: ids are assigned by preprocessing
        "file": df.img_id.to_numpy(),
        "role": np.where(df.split == "train", "train", np.where(df.img_type == "q", "query", "gallery")),
    })


def tiny_train(data_dir: Path, out: Path, **overrides) -> Path:
    base = dict(data_dir=data_dir, output_dir=out, model="tiny-vit", pretrained="none", epochs=1, batch_size=8,
                lr=2e-3, zero_shot=False, **RUN)
    return train(TrainConfig(**{**base, **overrides}))


def score_and_predict(data_dir: Path, run_dir: Path, out: Path) -> tuple[pd.DataFrame, Path]:
    """evaluate.py's and predict.py's stages on the test split; returns the results table and the raw matrix."""
    evaluate(EvalConfig(checkpoints=(run_dir,), data_dir=data_dir, output_dir=out / "eval", rerank=("none",),
                        ranked_lists=0, **RUN))
    results = pd.read_csv(out / "eval" / "eval_results.csv")
    predict(PredictConfig(checkpoints=(run_dir / "best.pt",), data_dir=data_dir, sets=("test",),
                          output_dir=out / "submission", **RUN))
    return results, out / "submission" / "test_raw.csv"


def check_test_submission(data_dir: Path, matrix: Path) -> None:
    """The test matrix holds the test split's player ids, which identities.csv maps back to the names."""
    df = pd.read_csv(data_dir / TRAIN_DF)
    test = df[df.split == "test"]
    distmat, q, g = read_distance_matrix(matrix)
    assert sorted(q.tolist()) == sorted(test[test.img_type == "q"].player)
    assert sorted(g.tolist()) == sorted(test[test.img_type == "g"].player)
    assert np.isfinite(distmat).all() and (distmat >= -1e-6).all()
    names = pd.read_csv(data_dir / IDENTITIES_CSV).set_index("player").identity
    assert names[q].str.startswith("player-").all()


def test_folder_per_identity_end_to_end(crops, tmp_path):
    data = tmp_path / "my_players"
    for r in crops.itertuples():  # every image of a player in one folder, the original splits forgotten
        (data / r.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(r.src, data / r.name / r.file)
    r = preprocess_script("--data-dir", data, "--layout", "folders", "--holdout", "0.25", "--n-folds", "4",
                          cwd=tmp_path)
    assert "held out 10 of 36 identities" in r.stdout  # the seeded hashes below 0.25 and "cameras: none" in r.stdout

    df = pd.read_csv(data / TRAIN_DF)
    assert list(df.columns) == TRAIN_COLUMNS  # no camera column: the camera rule is off
    assert all((data / f / i).is_file() for f, i in zip(df.folder, df.img_id, strict=True))
    test = df[df.split == "test"]
    assert test.player.nunique() == 10 and (test[test.img_type == "q"].groupby("player").size() == 1).all()
    assert not set(test.player) & set(df[df.split == "train"].player)

    run_dir = tiny_train(data, tmp_path / "runs")
    results, matrix = score_and_predict(data, run_dir, tmp_path)
    assert 0 < results.mAP[0] <= 1 and 0 <= results.rank1[0] <= 1
    check_test_submission(data, matrix)


def test_csv_without_cameras_end_to_end(crops, tmp_path):
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    for r in crops.itertuples():
        shutil.copy(r.src, data / "images" / r.file)
    # the CSV sits in its own folder: paths are relative to it; the split column keeps the original split
    lists = tmp_path / "lists"
    lists.mkdir()
    pd.DataFrame({"path": "../data/images/" + crops.file, "id": crops.name, "split": crops.role}).to_csv(
        lists / "players.csv", index=False)
    preprocess_script("--data-dir", data, "--layout", "csv", "--csv", lists / "players.csv", "--n-folds", "4",
                      cwd=tmp_path)

    df = pd.read_csv(data / TRAIN_DF)
    assert list(df.columns) == TRAIN_COLUMNS
    assert set(df.folder) == {"images"}  # relative to the data folder, whichever folder the CSV is in
    test = df[df.split == "test"]
    assert (test.img_type == "q").sum() == (crops.role == "query").sum()
    assert test.player.nunique() == 12 and df[df.split == "train"].player.nunique() == 24

    run_dir = tiny_train(data, tmp_path / "runs")
    results, matrix = score_and_predict(data, run_dir, tmp_path)
    assert 0 < results.mAP[0] <= 1
    check_test_submission(data, matrix)


def test_train_only_dataset_validates_on_a_fold(crops, tmp_path):
    data = tmp_path / "train_only"
    train_crops = crops[crops.role == "train"]
    for r in train_crops.itertuples():
        (data / "train" / r.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(r.src, data / "train" / r.name / r.file)
    r = preprocess_script("--data-dir", data, "--layout", "folders", "--n-folds", "3", cwd=tmp_path)
    assert "train only" in r.stdout
    df = pd.read_csv(data / TRAIN_DF)
    assert set(df.split) == {"train"} and sorted(df.fold.unique()) == [0, 1, 2]
    assert (df.groupby("player").fold.nunique() == 1).all()  # folds group by identity

    with pytest.raises(UserError, match="no test split.*--validation fold"):
        tiny_train(data, tmp_path / "runs")
    run_dir = tiny_train(data, tmp_path / "runs", validation="fold", fold=1)
    evaluate(EvalConfig(checkpoints=(run_dir,), data_dir=data, split="fold", fold=1, rerank=("none",),
                        output_dir=tmp_path / "eval", ranked_lists=0, **RUN))
    results = pd.read_csv(tmp_path / "eval" / "eval_results.csv")
    assert 0 < results.mAP[0] <= 1


def test_numeric_identity_folders_end_to_end(crops, tmp_path):
    """Folders named 001/ .. 012/: train_df.csv's folder column reads back as "001", not 1, in every stage."""
    data = tmp_path / "numbered"
    names = sorted(crops.name.unique())[:12]
    for k, name in enumerate(names, start=1):
        for r in crops[crops.name == name].iloc[:3].itertuples():
            (data / f"{k:03d}").mkdir(parents=True, exist_ok=True)
            shutil.copy(r.src, data / f"{k:03d}" / r.file)
    r = preprocess_script("--data-dir", data, "--layout", "folders", "--holdout", "0.4", "--n-folds", "3",
                          cwd=tmp_path)
    assert "held out 2 of 12 identities" in r.stdout  # 009 and 006: their seeded hashes are 0.09 and 0.38
    df = read_train_df(data)
    assert set(df.folder) == {f"{k:03d}" for k in range(1, 13)}
    assert set(df.player[df.split == "test"]) == {6, 9}  # the names' own numbers
    assert (df.player == df.folder.astype(int)).all()

    run_dir = tiny_train(data, tmp_path / "runs")
    results, matrix = score_and_predict(data, run_dir, tmp_path)
    assert 0 < results.mAP[0] <= 1 and results.queries[0] == 2
    _, q, g = read_distance_matrix(matrix)
    assert sorted(q.tolist()) == [6, 9] and set(g.tolist()) == {6, 9}
