"""The top-level scripts as a user runs them: flags, saved configs, one-line errors, stages chained."""

from __future__ import annotations

import dataclasses
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
# Every top-level script on disk, not a list kept by hand (one left out of such a list once hid a --help crash).
SCRIPTS = sorted(p.name for p in ROOT.glob("*.py"))


def script(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run a top-level script from another folder, as ``python /path/to/script.py ...``."""
    return subprocess.run([sys.executable, str(ROOT / name), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    """Stages 1 and 2 on a tiny synthetic dataset, run once for the module."""
    work = tmp_path_factory.mktemp("work")
    r = script("download_data.py", "--source", "synthetic", "--synthetic-train-players", "18",
               "--synthetic-test-players", "6", "--synthetic-challenge-players", "6", "--seed", "3",
               "--no-progress", cwd=work)
    assert r.returncode == 0, r.stderr
    data = work / "data" / "synthetic_reid"
    r = script("preprocess_data.py", "--data-dir", "data/synthetic_reid", "--n-folds", "4", "--no-progress",
               cwd=work)
    assert r.returncode == 0, r.stderr
    assert "train_df:" in r.stdout and "wrote data/synthetic_reid/train_df.csv" in r.stdout
    return data


def test_the_five_stages_are_found():
    assert {"download_data.py", "preprocess_data.py", "train.py", "evaluate.py", "predict.py"} <= set(SCRIPTS)


@pytest.mark.parametrize("name", SCRIPTS)
def test_help_lists_every_field(name, tmp_path):
    r = script(name, "--help", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "--data-dir" in r.stdout and "default:" in r.stdout and "--config" in r.stdout
    config = importlib.import_module(name.removesuffix(".py")).Config
    for f in dataclasses.fields(config):
        assert "--" + f.name.replace("_", "-") in r.stdout


@pytest.mark.parametrize("name", SCRIPTS)
def test_unknown_flag_is_one_line(name, tmp_path):
    r = script(name, "--data-dri", "x", cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0
    assert "unknown option --data-dri (did you mean --data-dir?)" in r.stderr


def test_stages_chain_on_synthetic_data(synthetic):
    train = pd.read_csv(synthetic / "train_df.csv")
    challenge = pd.read_csv(synthetic / "challenge_df.csv")
    assert list(train.columns) == ["img_id", "folder", "player", "game", "split", "img_type", "fold"]
    assert list(challenge.columns) == ["img_id", "player", "img_type"]
    assert train.groupby("split").player.nunique().to_dict() == {"train": 18, "test": 6}
    assert (synthetic / "contact_sheet.png").stat().st_size > 0
    for row in train.itertuples():
        assert (synthetic / row.folder / row.img_id).is_file()
    for row in challenge.itertuples():
        assert (synthetic / row.img_id).is_file()
    # a sequence never spans two folds, every player is in exactly one fold, and every fold is used
    assert (train.groupby("game").fold.nunique() == 1).all()
    assert (train.groupby(["split", "player"]).fold.nunique() == 1).all()
    assert sorted(train.fold.unique()) == [0, 1, 2, 3]
    # every test query's player has gallery images, and train queries are frame 00
    test = train[train.split == "test"]
    assert set(test[test.img_type == "q"].player) <= set(test[test.img_type == "g"].player)
    train_q = train[(train.split == "train") & (train.img_type == "q")]
    assert train_q.img_id.str.endswith("_00.jpeg").all()
    assert train_q.player.is_unique
    # the synthetic generator's single-image training player survives preprocessing
    sizes = train[train.split == "train"].groupby("player").size()
    assert (sizes == 1).sum() == 1


def test_resolved_configs_saved_and_loadable(synthetic):
    sys.path.insert(0, str(ROOT))
    try:
        import download_data
        import preprocess_data
    finally:
        sys.path.remove(str(ROOT))
    from clipreid.config import load_config

    cfg = load_config(download_data.Config, synthetic / "download_config.json")
    assert cfg.source == "synthetic" and cfg.seed == 3 and cfg.synthetic_train_players == 18
    cfg = load_config(preprocess_data.Config, synthetic / "preprocess_config.json")
    assert cfg.n_folds == 4 and cfg.data_dir == Path("data/synthetic_reid")
    assert json.loads((synthetic / "preprocess_config.json").read_text())["layout"] == "synergyreid"


def test_saved_config_reruns_the_stage(synthetic, tmp_path):
    r = script("preprocess_data.py", "--config", str(synthetic / "preprocess_config.json"), "--data-dir",
               str(synthetic), "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "4 folds" in r.stdout


def test_existing_dataset_needs_force(synthetic):
    r = script("download_data.py", "--source", "synthetic", "--data-dir", str(synthetic.parent), "--no-progress",
               cwd=synthetic.parent)
    assert r.returncode == 1
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1
    assert "Traceback" not in r.stderr


def test_missing_data_is_one_line_error(tmp_path):
    r = script("preprocess_data.py", "--data-dir", "data/nothing_here", cwd=tmp_path)
    assert r.returncode == 1
    assert r.stderr == "error: data folder data/nothing_here not found: run `python download_data.py` " \
                       "(or `python download_data.py --source synthetic`)\n"


def test_download_offline_is_one_line_error(tmp_path):
    # A url on a closed loopback port: what a user without a network sees, without touching the network.
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = script("download_data.py", "--url", f"http://127.0.0.1:{port}/x.zip", "--no-progress", cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith("error: cannot reach") and r.stderr.count("\n") == 1
    assert not (tmp_path / "data" / "data_reid").exists()
