"""The one inference image path: a file name always travels with its own features (unreadable, hidden, oversized
and oddly named files), per-model folders never collide, and self-ranking is self-free before fusion and
re-ranking."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers.images import random_checkpoint, random_crop
from PIL import Image

from clipreid.checkpoint import checkpoint_labels
from clipreid.errors import UserError
from clipreid.evaluation import evaluate
from clipreid.features import embed, image_features, list_images
from clipreid.fusion import dissimilarity_fusion, dissimilarity_weights
from clipreid.prediction import model_folders, predict
from clipreid.rank_folders import rank_folders
from clipreid.rerank import hard_k_reciprocal, k_reciprocal_features, squared_distances
from clipreid.transforms import load_image
from clipreid.weights import load_encoder
from evaluate import Config as EvalConfig
from predict import Config as PredictConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def _truncated(path: Path, seed: int) -> None:
    """A JPEG cut in half: its header opens, its pixels do not decode."""
    random_crop(path, seed)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("models")
    return random_checkpoint(root / "one.pt", 0), random_checkpoint(root / "two.pt", 1)


def _cfg(checkpoints, query, out, **overrides) -> PredictConfig:
    base = dict(checkpoints=tuple(checkpoints), query_dir=query, output_dir=out, device="cpu", progress=False,
                num_workers=0, batch_size=3, topk=3, ranked_lists=0, rerank=("none",), k1=4, k2=2)
    return PredictConfig(**{**base, **overrides})


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def _bad_folder(root: Path) -> tuple[Path, list[str]]:
    """A gallery folder with 6 good crops, a truncated JPEG between them, a macOS ._ file and a hidden folder."""
    gallery = root / "gallery"
    for i in range(6):
        random_crop(gallery / f"g{i}.jpg", 10 + i)
    _truncated(gallery / "g2b.jpg", 99)
    (gallery / "._g1.jpg").write_bytes(b"\x00\x05\x16\x07 AppleDouble resource fork")
    random_crop(gallery / ".thumbs" / "g7.jpg", 7)
    return gallery, [f"g{i}.jpg" for i in range(6)]


# --------------------------------------------------------------------------------------------------------------
# item 1: names stay with their features


def test_hidden_files_are_not_images(tmp_path):
    gallery, good = _bad_folder(tmp_path)
    assert [p.relative_to(gallery).as_posix() for p in list_images(gallery)] == sorted([*good, "g2b.jpg"])


def test_an_unreadable_gallery_image_leaves_with_its_name_for_one_or_two_checkpoints(models, tmp_path):
    one, _ = models
    gallery, good = _bad_folder(tmp_path)
    query = tmp_path / "query"
    for i in range(3):
        random_crop(query / f"q{i}.png", 50 + i)
    encoder = load_encoder(one, "cpu")
    clean = image_features(encoder, [gallery / n for n in good], batch_size=3, progress=False).features
    clean_q = image_features(encoder, sorted(query.iterdir()), batch_size=3, progress=False).features

    copy = tmp_path / "copy.pt"
    shutil.copy(one, copy)
    outs = []
    for checkpoints, cache in (([one], False), ([one, copy], True), ([one, copy], False)):
        out = tmp_path / f"out{len(checkpoints)}{cache}"
        report = rank_folders(_cfg(checkpoints, query, out, gallery_dir=gallery, cache_images=cache))
        assert _lines(out / "gallery_files.txt") == good
        assert _lines(out / "skipped_files.txt")[0].startswith(f"{gallery / 'g2b.jpg'}\t")
        assert len(_lines(out / "skipped_files.txt")) == 1
        assert "left out 1 unreadable image(s)" in report.summary() and "g2b.jpg" in report.summary()
        raw = np.load(out / "distances_raw.npy")
        assert raw.shape == (3, 6)
        np.testing.assert_allclose(raw, squared_distances(clean_q, clean).numpy(), atol=1e-5)
        ranking = pd.read_csv(out / "ranking_raw.csv")
        assert set(ranking.gallery) <= set(good)
        outs.append((raw, np.load(out / "gallery_features.npy")))
    np.testing.assert_allclose(outs[0][1], clean.numpy(), atol=1e-6)  # row r is gallery_files.txt line r
    # one checkpoint (streamed) and two (cached or not): the same names, rows and distances
    np.testing.assert_array_equal(outs[0][0], outs[1][0])
    np.testing.assert_array_equal(outs[1][0], outs[2][0])
    # a clean run afterwards leaves no stale list of skipped files behind
    (gallery / "g2b.jpg").unlink()
    rank_folders(_cfg([one], query, tmp_path / "out1False", gallery_dir=gallery))
    assert not (tmp_path / "out1False" / "skipped_files.txt").exists()


@pytest.fixture
def broken_set(synthetic_small, tmp_path) -> tuple[Path, Path]:
    """A copy of the small synthetic set whose test gallery image became unreadable after preprocessing."""
    data = tmp_path / "data"
    shutil.copytree(synthetic_small, data)
    victim = sorted((data / "reid_test" / "gallery").glob("*.jpeg"))[3]
    victim.write_bytes(victim.read_bytes()[:200])
    return data, victim


@pytest.mark.parametrize("cache", [True, False])
def test_evaluate_and_predict_stop_with_one_line_naming_an_unreadable_image(broken_set, models, tmp_path, cache):
    data, victim = broken_set
    one, two = models
    run = dict(device="cpu", progress=False, num_workers=0, cache_images=cache)
    with pytest.raises(UserError, match=f"cannot read image {victim}") as err:
        evaluate(EvalConfig(checkpoints=(one, two), data_dir=data, rerank=("none",), output_dir=tmp_path / "e",
                            ranked_lists=0, **run))
    assert "\n" not in str(err.value) and "preprocess_data.py" in str(err.value)
    with pytest.raises(UserError, match=f"cannot read image {victim}") as err:
        predict(PredictConfig(checkpoints=(one,), data_dir=data, sets=("test",), rerank=("none",),
                              output_dir=tmp_path / "p", **run))
    assert "\n" not in str(err.value)
    assert not (tmp_path / "e").exists() or not any((tmp_path / "e").iterdir())
    assert not (tmp_path / "p").exists() or not any((tmp_path / "p").iterdir())


def test_a_decompression_bomb_is_an_unreadable_image_everywhere(models, tmp_path, monkeypatch):
    one, _ = models
    folder = tmp_path / "imgs"
    for i in range(3):
        random_crop(folder / f"a{i}.png", i)
    Image.fromarray(np.zeros((80, 80, 3), np.uint8)).save(folder / "a1big.png")  # 6400 pixels
    # more than twice MAX_IMAGE_PIXELS is PIL's DecompressionBombError (an Exception, not an OSError); a
    # 200-megapixel photo meets the default limit the same way
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)
    with pytest.raises(UserError, match="a1big.png"):
        load_image(folder / "a1big.png", (128, 64))
    encoder = load_encoder(one, "cpu")
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable image\(s\): a1big.png$"):
        features, names = embed(encoder, folder, progress=False)
    assert names == ["a0.png", "a1.png", "a2.png"] and len(features) == 3
    rank_folders(_cfg([one], folder, tmp_path / "out"))
    assert _lines(tmp_path / "out" / "query_files.txt") == names
    assert "a1big.png" in _lines(tmp_path / "out" / "skipped_files.txt")[0]


def test_names_that_are_not_utf8_are_refused_before_any_model_runs(models, tmp_path):
    one, _ = models
    folder = tmp_path / "imgs"
    for i in range(2):
        random_crop(folder / f"a{i}.png", i)
    random_crop(folder / os.fsdecode(b"caf\xe9.png"), 5)
    with pytest.raises(UserError, match=r"caf\\xe9.png: the file name is not valid UTF-8") as err:
        rank_folders(_cfg([one], folder, tmp_path / "out"))
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_an_output_folder_inside_an_image_folder_is_refused(models, tmp_path):
    one, _ = models
    query, gallery = tmp_path / "q", tmp_path / "g"
    for i in range(2):
        random_crop(query / f"a{i}.png", i)
        random_crop(gallery / f"b{i}.png", 10 + i)
    for out, kwargs in ((query / "ranked", {}), (gallery / "sub" / "ranked", {"gallery_dir": gallery}),
                        (query, {})):
        with pytest.raises(UserError, match="is inside the image folder") as err:
            rank_folders(_cfg([one], query, out, **kwargs))
        assert "\n" not in str(err.value)
    assert sorted(p.name for p in query.iterdir()) == ["a0.png", "a1.png"]
    assert sorted(p.name for p in gallery.iterdir()) == ["b0.png", "b1.png"]


# --------------------------------------------------------------------------------------------------------------
# item 2: per-model folders never collide


def test_model_folders_never_collide(synthetic_small, tmp_path):
    assert model_folders(["run/best", "run_best", "Run_best", "run_best-2"]) == [
        "run_best", "run_best-2", "Run_best-3", "run_best-2-2"]
    best = tmp_path / "run" / "best.pt"
    last = tmp_path / "run_best" / "last.pt"
    random_checkpoint(best, 0)
    random_checkpoint(last, 1)
    assert checkpoint_labels([best, last]) == ["run/best", "run_best"]
    assert checkpoint_labels([best, best]) == [str(best), f"{best} #2"]
    out = tmp_path / "sub"
    predict(PredictConfig(checkpoints=(best, last), data_dir=synthetic_small, sets=("test",), rerank=("none",),
                          output_dir=out, device="cpu", progress=False, num_workers=0))
    for folder, checkpoint in (("run_best", best), ("run_best-2", last)):
        alone = tmp_path / f"alone_{folder}"
        predict(PredictConfig(checkpoints=(checkpoint,), data_dir=synthetic_small, sets=("test",),
                              rerank=("none",), output_dir=alone, device="cpu", progress=False, num_workers=0))
        assert (out / folder / "test_raw.csv").read_text() == (alone / "test_raw.csv").read_text()


# --------------------------------------------------------------------------------------------------------------
# item 5: self-ranking is self-free before fusion and re-ranking


def _without_diagonal(m: torch.Tensor) -> torch.Tensor:
    n = len(m)
    return m[~torch.eye(n, dtype=torch.bool)].view(n, n - 1)


def test_dissimilarity_weights_ignore_the_self_distance_as_if_its_column_were_gone():
    g = torch.Generator().manual_seed(0)
    for n, topk in ((12, 3), (12, 11), (5, 15)):
        mats = []
        for _ in range(3):
            f = torch.nn.functional.normalize(torch.randn(n, 6, generator=g), dim=1)
            d = squared_distances(f, f)
            mats.append(d.fill_diagonal_(float("inf")))
        expected = dissimilarity_weights([_without_diagonal(m) for m in mats], topk)
        torch.testing.assert_close(dissimilarity_weights(mats, topk), expected)
        fused = dissimilarity_fusion(mats, topk)
        assert torch.isinf(fused.diagonal()).all()
        torch.testing.assert_close(_without_diagonal(fused), dissimilarity_fusion(
            [_without_diagonal(m) for m in mats], topk))


def test_rerank_holds_a_shared_image_once():
    g = torch.Generator().manual_seed(1)
    f = torch.nn.functional.normalize(torch.randn(30, 8, generator=g), dim=1)
    full = k_reciprocal_features(f, f, 5, 3, shared=30)
    # the q+g set is the 30 images once, whichever split of it is asked for (to float32's last bit: a distance's
    # rounding follows squared_distances' operand order, which says which image is the query)
    torch.testing.assert_close(full[:12, 12:], k_reciprocal_features(f[:12], f[12:], 5, 3), rtol=0, atol=1e-6)
    torch.testing.assert_close(k_reciprocal_features(f[:12], f, 5, 3, shared=12), full[:12], rtol=0, atol=1e-6)
    hard = hard_k_reciprocal(f, f, 5, 3, shared=30)
    torch.testing.assert_close(hard_k_reciprocal(f[:12], f, 5, 3, shared=12), hard[:12], rtol=0, atol=0)
    # without shared items nothing changes: the twin of each image is another item
    assert not torch.allclose(k_reciprocal_features(f, f, 5, 3), full)
    with pytest.raises(ValueError, match="shared"):
        k_reciprocal_features(f[:3], f, shared=4)


def test_self_ranking_excludes_itself_before_fusion(models, tmp_path):
    # three models: with two, a strict majority is both, so their agreements are always equal
    checkpoints = [*models, random_checkpoint(tmp_path / "three.pt", 2)]
    folder = tmp_path / "imgs"
    for i in range(9):
        random_crop(folder / f"a{i}.png", 20 + i)
    singles = []
    for i, c in enumerate(checkpoints):
        rank_folders(_cfg([c], folder, tmp_path / f"s{i}"))
        singles.append(torch.from_numpy(np.load(tmp_path / f"s{i}" / "distances_raw.npy")).double())
    out = tmp_path / "fused"
    rank_folders(_cfg(checkpoints, folder, out, fusion="dissimilarity", topk_fusion=3))
    fused = torch.from_numpy(np.load(out / "distances_raw.npy")).double()
    assert torch.isinf(fused.diagonal()).all()
    expected = dissimilarity_fusion([_without_diagonal(m) for m in singles], 3)
    torch.testing.assert_close(_without_diagonal(fused), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", ["k_reciprocal", "hard"])
def test_a_gallery_holding_the_query_folder_ranks_those_queries_as_self_mode_does(models, tmp_path, method):
    one, two = models
    parent = tmp_path / "all"
    for i in range(5):
        random_crop(parent / f"a{i}.png", 30 + i)
        random_crop(parent / "sub" / f"s{i}.png", 40 + i)
    k = dict(rerank=("none", method), k1=3, k2=2, fusion="dissimilarity", topk_fusion=3)
    rank_folders(_cfg([one, two], parent, tmp_path / "self", **k))
    inside = tmp_path / "inside"
    report = rank_folders(_cfg([one, two], parent / "sub", inside, gallery_dir=parent, **k))
    assert "5 queries are gallery images" in report.summary()
    names = _lines(tmp_path / "self" / "query_files.txt")
    assert _lines(inside / "gallery_files.txt") == names
    rows = [names.index(f"sub/{n}") for n in _lines(inside / "query_files.txt")]
    for m in ("raw", method):
        whole = np.load(tmp_path / "self" / f"distances_{m}.npy")[rows]
        part = np.load(inside / f"distances_{m}.npy")
        assert np.isinf(part).sum() == 5  # each query's own entry, and nothing else
        np.testing.assert_allclose(part, whole, atol=1e-5)
        ranking = pd.read_csv(inside / f"ranking_{m}.csv")
        assert not (("sub/" + ranking["query"]) == ranking["gallery"]).any()
