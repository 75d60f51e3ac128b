"""Ranking unlabelled folders (predict.py --query-dir): files, values against the embedding API, self mode, fusion,
re-ranking, atomic output and clear errors."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers.images import random_checkpoint, random_crop
from PIL import Image

from clipreid.errors import UserError
from clipreid.features import embed
from clipreid.inference import rerank_distances
from clipreid.rank_folders import rank_folders
from clipreid.rerank import squared_distances
from predict import Config as PredictConfig

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> tuple[Path, Path, Path, Path]:
    """(query folder with 4 images, one in a subfolder; gallery folder of 9 holding a copy of query a.png; two
    random tiny-vit checkpoints)."""
    root = tmp_path_factory.mktemp("ranking")
    query, gallery = root / "query", root / "gallery"
    for i, name in enumerate(["a.png", "b.jpg", "c.jpeg", "sub/d.png"]):
        random_crop(query / name, i)
    for i in range(8):
        random_crop(gallery / f"g{i}.jpg", 100 + i)
    (gallery / "copy_of_a.png").write_bytes((query / "a.png").read_bytes())
    return query, gallery, random_checkpoint(root / "one.pt", 0), random_checkpoint(root / "two.pt", 1)


def _cfg(checkpoints, query, out, **overrides) -> PredictConfig:
    base = dict(checkpoints=tuple(checkpoints), query_dir=query, output_dir=out, device="cpu", progress=False,
                num_workers=0, batch_size=4, topk=3, ranked_lists=2, rerank=("k_reciprocal",), k1=4,
                k2=2)
    return PredictConfig(**{**base, **overrides})


def _read_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def test_query_against_gallery_matches_the_embedding_api(folders, tmp_path):
    query, gallery, one, _ = folders
    out = tmp_path / "out"
    report = rank_folders(_cfg([one], query, out, gallery_dir=gallery))
    assert sorted(p.name for p in out.iterdir()) == sorted([
        "ranking_raw.csv", "ranking_k_reciprocal.csv", "distances_raw.npy", "distances_k_reciprocal.npy",
        "query_features.npy", "gallery_features.npy", "query_files.txt", "gallery_files.txt", "ranked_lists.png",
        "predict_config.json"])
    assert "4 queries" in report.summary() and "9 gallery images" in report.summary()
    assert _read_lines(out / "query_files.txt") == ["a.png", "b.jpg", "c.jpeg", "sub/d.png"]
    assert _read_lines(out / "gallery_files.txt") == ["copy_of_a.png", *(f"g{i}.jpg" for i in range(8))]

    qf, _ = embed(one, query, device="cpu", progress=False)
    gf, _ = embed(one, gallery, device="cpu", progress=False)
    np.testing.assert_allclose(np.load(out / "query_features.npy"), qf.numpy(), atol=1e-6)
    np.testing.assert_allclose(np.load(out / "gallery_features.npy"), gf.numpy(), atol=1e-6)
    raw = np.load(out / "distances_raw.npy")
    assert raw.shape == (4, 9) and raw.dtype == np.float32
    np.testing.assert_allclose(raw, squared_distances(qf, gf).numpy(), atol=1e-5)
    np.testing.assert_allclose(np.load(out / "distances_k_reciprocal.npy"),
                               rerank_distances(qf, gf, "k_reciprocal", k1=4, k2=2).numpy(), atol=1e-5)

    ranking = pd.read_csv(out / "ranking_raw.csv")
    assert list(ranking.columns) == ["query", "rank", "gallery", "distance"]
    assert len(ranking) == 4 * 3 and ranking["rank"].tolist() == [1, 2, 3] * 4
    names = _read_lines(out / "gallery_files.txt")
    for qi, qname in enumerate(_read_lines(out / "query_files.txt")):
        rows = ranking[ranking["query"] == qname]
        expected = np.argsort(raw[qi], kind="stable")[:3]
        assert rows["gallery"].tolist() == [names[g] for g in expected]
        np.testing.assert_allclose(rows["distance"], raw[qi, expected], atol=1e-5)
    top = ranking[(ranking["query"] == "a.png") & (ranking["rank"] == 1)].iloc[0]
    assert top["gallery"] == "copy_of_a.png" and top["distance"] < 1e-5  # the same picture is the nearest
    with Image.open(out / "ranked_lists.png") as image:
        assert image.format == "PNG"


def test_a_folder_against_itself_leaves_each_image_out(folders, tmp_path):
    _, gallery, one, _ = folders
    out = tmp_path / "self"
    rank_folders(_cfg([one], gallery, out, rerank=("none",), topk=20))
    names = _read_lines(out / "query_files.txt")
    assert _read_lines(out / "gallery_files.txt") == names and len(names) == 9
    raw = np.load(out / "distances_raw.npy")
    assert np.isinf(np.diag(raw)).all() and np.isfinite(raw[~np.eye(9, dtype=bool)]).all()
    assert not (out / "ranking_k_reciprocal.csv").exists()
    ranking = pd.read_csv(out / "ranking_raw.csv")
    assert len(ranking) == 9 * 8  # topk 20 > 8 others: every other image once, never the query itself
    assert (ranking["query"] != ranking["gallery"]).all()
    rows = ranking[ranking["query"] == "copy_of_a.png"]
    assert rows["rank"].tolist() == list(range(1, 9))
    features = np.load(out / "query_features.npy")
    np.testing.assert_allclose(np.load(out / "gallery_features.npy"), features)
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1, atol=1e-5)


def test_two_checkpoints_are_fused_and_their_features_give_the_fused_distances(folders, tmp_path):
    query, gallery, one, two = folders
    single = []
    for i, c in enumerate((one, two)):
        rank_folders(_cfg([c], query, tmp_path / f"s{i}", gallery_dir=gallery, ranked_lists=0))
        single.append(np.load(tmp_path / f"s{i}" / "distances_raw.npy"))
    out = tmp_path / "fused"
    rank_folders(_cfg([one, two], query, out, gallery_dir=gallery, weights=(3.0, 1.0), rerank=("hard",)))
    raw = np.load(out / "distances_raw.npy")
    np.testing.assert_allclose(raw, 0.75 * single[0] + 0.25 * single[1], atol=1e-5)
    qf, gf = np.load(out / "query_features.npy"), np.load(out / "gallery_features.npy")
    assert qf.shape == (4, 128)  # both 64-d models, weighted and concatenated
    np.testing.assert_allclose(np.linalg.norm(qf, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(squared_distances(torch.from_numpy(qf), torch.from_numpy(gf)).numpy(), raw,
                               atol=1e-5)
    assert (out / "ranking_hard.csv").is_file() and not (tmp_path / "s0" / "ranked_lists.png").exists()


def test_a_failure_leaves_no_partial_set(folders, tmp_path, monkeypatch):
    query, gallery, one, _ = folders
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    (out / "ranking_raw.csv").write_text("old")

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("clipreid.rank_folders.save_ranked_lists", boom)  # where it is looked up
    with pytest.raises(OSError, match="disk full"):
        rank_folders(_cfg([one], query, out, gallery_dir=gallery))
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt", "ranking_raw.csv"]
    assert (out / "ranking_raw.csv").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging folder left behind
    monkeypatch.undo()
    rank_folders(_cfg([one], query, out, gallery_dir=gallery))
    assert (out / "keep.txt").read_text() == "mine" and (out / "ranking_raw.csv").read_text() != "old"


def test_a_run_folder_gives_the_weights_asked_for(folders, tmp_path):
    query, _, one, two = folders
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(one.read_bytes())
    (run / "best.pt").write_bytes(two.read_bytes())
    for weights, expected in (("best", two), ("last", one)):
        out = tmp_path / weights
        report = rank_folders(_cfg([run], query, out, run_weights=weights, ranked_lists=0))
        qf, _ = embed(expected, query, device="cpu", progress=False)
        np.testing.assert_allclose(np.load(out / "query_features.npy"), qf.numpy(), atol=1e-6)
        assert ("run/best" in report.summary()) == (weights == "best")


def test_bad_inputs_are_one_line_errors(folders, tmp_path):
    query, gallery, one, two = folders
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (_cfg([one], empty, tmp_path / "o"), "no .jpg/.jpeg/.png images"),
        (_cfg([one], tmp_path / "nowhere", tmp_path / "o"), "not found"),
        (_cfg([one], query, tmp_path / "o", gallery_dir=empty), "no .jpg/.jpeg/.png images"),
        (_cfg([tmp_path / "missing.pt"], query, tmp_path / "o"), "not found"),
    ]
    for cfg, text in cases:
        with pytest.raises(UserError, match=text) as err:
            rank_folders(cfg)
        assert "\n" not in str(err.value)
    assert not (tmp_path / "o").exists()
    single = tmp_path / "single"
    random_crop(single / "only.png", 0)
    with pytest.raises(UserError, match="at least two"):
        rank_folders(dataclasses.replace(_cfg([one], single, tmp_path / "o")))


def test_predict_script_ranks_a_folder(folders, tmp_path):
    query, gallery, one, _ = folders
    out = tmp_path / "script"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "predict.py"), "--checkpoints", str(one), "--query-dir",
                           str(query), "--gallery-dir", str(gallery), "--output-dir", str(out), "--device", "cpu",
                           "--no-progress", "--num-workers", "0", "--topk", "2", "--rerank", "none"],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "ranked 4 queries" in done.stdout
    assert len(pd.read_csv(out / "ranking_raw.csv")) == 8
    bad = subprocess.run([sys.executable, str(ROOT / "predict.py"), "--checkpoints", str(one), "--query-dir",
                          str(tmp_path / "nowhere"), "--output-dir", str(out)],
                         capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert bad.returncode == 1 and bad.stderr.strip().startswith("error:") and len(bad.stderr.splitlines()) == 1


def test_the_picture_has_a_header_neutral_frames_and_no_self_match(folders, tmp_path):
    from clipreid.visualize import BORDER, CAPTION, GAP, HEADER, NO_TRUTH_COLOUR, PAD, QUERY_COLOUR

    query, _, one, _ = folders
    out = tmp_path / "pic"
    rank_folders(_cfg([one], query, out, topk=4, ranked_lists=4))  # 4 images against themselves: 3 others each
    ranked = np.load(out / "distances_k_reciprocal.npy")
    assert np.isinf(np.diag(ranked)).all() and np.isfinite(ranked[~np.eye(4, dtype=bool)]).all()
    pitch_x, pitch_y = 64 + 2 * BORDER + PAD, 128 + 2 * BORDER + CAPTION + PAD
    with Image.open(out / "ranked_lists.png") as image:
        assert image.size == (PAD + 5 * pitch_x + GAP, HEADER + PAD + 4 * pitch_y)
        image = image.convert("RGB")
        y = HEADER + PAD
        assert image.getpixel((PAD, y)) == QUERY_COLOUR
        assert image.getpixel((PAD + pitch_x + GAP, y)) == NO_TRUTH_COLOUR  # rank 1: no truth to colour it
        assert image.getpixel((PAD + 3 * pitch_x + GAP, y)) == NO_TRUTH_COLOUR  # rank 3, the last other image
        assert image.getpixel((PAD + 4 * pitch_x + GAP, y)) == (255, 255, 255)  # rank 4 would be itself: empty
