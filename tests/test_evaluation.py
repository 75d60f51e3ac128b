"""Stages 4 and 5: the embedding API, evaluate.py and predict.py end to end on a tiny model and synthetic data."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from clipreid.checkpoint import read_checkpoint
from clipreid.config import parse_config
from clipreid.dataset import read_train_df
from clipreid.errors import UserError
from clipreid.evaluation import evaluate
from clipreid.features import embed
from clipreid.metrics import compute_scores
from clipreid.prediction import predict
from clipreid.rerank import squared_distances
from clipreid.submission import read_distance_matrix
from clipreid.trainer import train
from clipreid.weights import load_encoder
from evaluate import Config as EvalConfig
from predict import Config as PredictConfig
from train import Config as TrainConfig

ROOT = Path(__file__).resolve().parents[1]
RUN = ["--device", "cpu", "--no-progress", "--num-workers", "0"]
# One torch thread: on a few busy cores, idle worker threads spin and slow these tiny models down 10-50x.
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def tiny_train(data_dir: Path, out: Path, **overrides) -> Path:
    base = dict(data_dir=data_dir, output_dir=out, model="tiny-vit", pretrained="none", epochs=1, batch_size=16,
                lr=2e-3, progress=False, device="cpu", zero_shot=False, num_workers=0)
    return train(TrainConfig(**{**base, **overrides}))


def script(name: str, *args: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / name), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env=ONE_THREAD)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run_dir(synthetic_small, tmp_path_factory) -> Path:
    """A tiny model trained for one epoch, validated on the test split."""
    return tiny_train(synthetic_small, tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def predicted(synthetic_small, run_dir, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """predict.py on both sets with k-reciprocal re-ranking, run once for the module."""
    out = tmp_path_factory.mktemp("submission")
    r = script("predict.py", "--checkpoints", run_dir, "--data-dir", synthetic_small, "--output-dir",
               out, *RUN, cwd=out)
    assert r.returncode == 0, r.stderr
    return out, r


def predict_config(data_dir: Path, out: Path, **overrides) -> PredictConfig:
    base = dict(data_dir=data_dir, output_dir=out, device="cpu", progress=False, num_workers=0)
    return PredictConfig(**{**base, **overrides})


# --------------------------------------------------------------------------------------------------------------
# embed


def test_embed_folder_paths_and_images_agree(synthetic_small, run_dir):
    folder = synthetic_small / "reid_test" / "query"
    paths = sorted(folder.glob("*.jpeg"))
    f_folder, names = embed(run_dir / "best.pt", folder, device="cpu", progress=False)
    assert names == [p.name for p in paths]
    assert f_folder.dtype == torch.float32 and f_folder.shape == (len(paths), 64)
    torch.testing.assert_close(f_folder.norm(dim=1), torch.ones(len(paths)))

    f_paths, names = embed(run_dir, [str(p) for p in paths], device="cpu", batch_size=5, progress=False)
    assert names == [str(p) for p in paths]
    torch.testing.assert_close(f_paths, f_folder)

    encoder = load_encoder(run_dir / "best.pt")
    pil = [Image.open(p).convert("RGB") for p in paths]
    f_pil, names = embed(encoder, pil, progress=False)
    assert names == [str(i) for i in range(len(paths))]
    torch.testing.assert_close(f_pil, f_folder)
    f_arrays, _ = embed(encoder, [np.asarray(im) for im in pil], progress=False)
    torch.testing.assert_close(f_arrays, f_folder)

    # flip averages an image with its mirror image: an exactly mirrored input (already letterboxed) gives the same
    boxed = [torch.from_numpy(np.array(im.resize((64, 128)))).permute(2, 0, 1) for im in pil[:3]]
    f_flip, _ = embed(encoder, boxed, flip=True, progress=False)
    f_flip_mirror, _ = embed(encoder, [b.flip(-1) for b in boxed], flip=True, progress=False)
    torch.testing.assert_close(f_flip, f_flip_mirror, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(f_flip, embed(encoder, boxed, progress=False)[0], atol=1e-4)


def test_embed_bad_inputs_are_clear(run_dir, tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(UserError, match="no .jpg/.jpeg/.png images under .*empty"):
        embed(run_dir, tmp_path / "empty", progress=False)
    with pytest.raises(UserError, match="image .*missing.jpg not found"):
        embed(run_dir, [tmp_path / "missing.jpg"], progress=False)
    with pytest.raises(UserError, match="empty"):
        embed(run_dir, [], progress=False)
    with pytest.raises(ValueError, match=r"inputs\[0\].*HxWx3"):
        embed(run_dir, [np.zeros((8, 8), np.uint8)], progress=False)


# --------------------------------------------------------------------------------------------------------------
# evaluate.py


def test_evaluate_script_end_to_end(synthetic_small, run_dir, tmp_path):
    out = tmp_path / "eval"
    r = script("evaluate.py", "--checkpoints", run_dir, "--data-dir", synthetic_small, "--output-dir", out,
               "--ranked-lists", "4", *RUN, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "test split of" in r.stdout and "12 queries" in r.stdout
    assert "scored 12 of 12 queries; same-camera rule off" in r.stdout  # no cameras in the synthetic data
    # a run folder is scored with its last.pt, and the table says which epoch that is
    assert f"weights: {run_dir.name} = {run_dir / 'last.pt'}, epoch 1 (last)" in r.stdout and "warning" not in r.stdout
    assert re.search(r"model\s+epoch\s+re-ranking\s+mAP\s+rank-1\s+(rank-1 allshots\s+)?rank-5\s+rank-10\s+mINP",
                     r.stdout)
    for method in ("none", "k_reciprocal", "hard"):
        assert re.search(rf"{run_dir.name}\s+1\s+{method}\s+\d+\.\d\d", r.stdout), method
    assert f"ranked lists ({run_dir.name}, re-ranking " in r.stdout and str(out / "ranked_lists.png") in r.stdout

    results = pd.read_csv(out / "eval_results.csv")
    assert list(results.rerank) == ["none", "k_reciprocal", "hard"]
    assert results.epoch.tolist() == [1, 1, 1] and set(results.weights) == {"epoch 1 (last)"}
    metrics = results[["mAP", "rank1", "rank5", "rank10", "mINP"]].to_numpy()
    assert ((metrics >= 0) & (metrics <= 1)).all()
    assert (results.rank1 <= results.rank5).all() and (results.rank5 <= results.rank10).all()
    # the raw row is the validation that training logged for the same weights
    logged = read_checkpoint(run_dir / "last.pt")["metrics"]
    assert results.mAP[0] == pytest.approx(logged["mAP"], abs=1e-6)
    assert results.rank1[0] == pytest.approx(logged["rank1"], abs=1e-6)
    md = (out / "eval_results.md").read_text()
    assert "| model | epoch | re-ranking | mAP | rank-1 |" in md and "epoch 1 (last)" in md
    assert json.loads((out / "evaluate_config.json").read_text())["output_dir"] == str(out)
    with Image.open(out / "ranked_lists.png") as picture:
        assert picture.height > 4 * 128


def test_evaluate_two_checkpoints_adds_the_fusion(synthetic_small, run_dir, tmp_path):
    cfg = EvalConfig(checkpoints=(run_dir, run_dir / "best.pt"), data_dir=synthetic_small, split="fold", fold=2,
                     rerank=("none",), device="cpu", num_workers=0, output_dir=tmp_path, ranked_lists=0,
                     progress=False)
    report = evaluate(cfg)
    assert [r.model for r in report.rows] == [run_dir.name, f"{run_dir.name}/best", "fused"]
    # the fusion of one model with itself is that model
    assert report.rows[2].scores == pytest.approx(report.rows[0].scores)
    # a model validated on the test split trained on fold 2's train-split images: said, not hidden
    assert f"warning: {run_dir.name} was trained holding out the test split, not fold 2" in report.title
    assert report.ranked_lists is None and not (tmp_path / "ranked_lists.png").exists()


def test_decoded_image_cache_gives_the_streamed_results_and_decodes_once(synthetic_small, run_dir, tmp_path,
                                                                           monkeypatch):
    import clipreid.features as features

    decoded = []
    real = features.decode_images
    monkeypatch.setattr(features, "decode_images", lambda paths, *a, **k: decoded.append(len(paths)) or
                        real(paths, *a, **k))
    base = dict(checkpoints=(run_dir, run_dir / "best.pt"), data_dir=synthetic_small, rerank=("none",), device="cpu",
                num_workers=0, output_dir=tmp_path, ranked_lists=0, progress=False)
    cached = evaluate(EvalConfig(**base, cache_images=True))
    streamed = evaluate(EvalConfig(**base, cache_images=False))
    assert len(decoded) == 1  # one decode for both checkpoints; none when streaming
    # best.pt was chosen by test-split mAP and is scored on the test split: one warning, for it alone
    warnings = [line for line in cached.title.splitlines() if line.startswith("warning")]
    assert len(warnings) == 1 and warnings[0].startswith(f"warning: {run_dir.name}/best holds the epoch (1) of the "
                                                         "best mAP on the test split")
    assert f"{run_dir.name}/best = {run_dir / 'best.pt'}, epoch 1 (best mAP on the test split)" in cached.title
    for a, b in zip(cached.rows, streamed.rows, strict=True):
        assert a.scores == pytest.approx(b.scores, abs=1e-9)


def test_evaluate_folds_mean_and_std(synthetic_small, tmp_path):
    runs = [tiny_train(synthetic_small, tmp_path, validation="fold", fold=k) for k in (0, 1)]
    out = tmp_path / "folds"
    r = script("evaluate.py", "--split", "folds", "--checkpoints", *runs, "--rerank", "none", "hard", "--data-dir",
               synthetic_small, "--output-dir", out, *RUN, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert re.search(r"mean ± std \(2\)\s+none\s+\d+\.\d\d ± \d+\.\d\d", r.stdout)
    results = pd.read_csv(out / "eval_results.csv")
    models = results[results.model.str.contains("fold")]
    assert sorted(models.fold.tolist()) == [0, 0, 1, 1]
    for method in ("none", "hard"):
        per_fold = models[models.rerank == method].mAP.to_numpy()
        mean = results[(results.model == "mean") & (results.rerank == method)].mAP.item()
        std = results[(results.model == "std") & (results.rerank == method)].mAP.item()
        assert mean == pytest.approx(per_fold.mean()) and std == pytest.approx(per_fold.std(ddof=1))
    assert not (out / "ranked_lists.png").exists()

    # the same table re-folded (preprocess with another n_folds): fold 0 is other sequences now, refused
    refolded = tmp_path / "refolded"
    refolded.mkdir()
    from clipreid.preprocess import assign_folds

    df = pd.read_csv(synthetic_small / "train_df.csv")
    df["fold"] = assign_folds(df, 5)
    df.to_csv(refolded / "train_df.csv", index=False)
    for split in ("folds", "fold"):
        with pytest.raises(UserError, match=r"held out fold 0 of 10 folds .* re-run preprocess_data.py --n-folds 10"):
            evaluate(EvalConfig(checkpoints=tuple(runs), data_dir=refolded, split=split, fold=0, rerank=("none",),
                                device="cpu", num_workers=0, output_dir=tmp_path / "x", progress=False))


def test_scored_queries_and_the_camera_rule(synthetic_small, run_dir, tmp_path):
    """Queries without a match (after the same-camera rule) are counted out loud; --no-camera-rule turns it off."""
    df = read_train_df(synthetic_small)
    df["folder"] = [os.path.relpath(synthetic_small / f, tmp_path) for f in df.folder]
    test = df.split == "test"
    players = sorted(df.player[test & (df.img_type == "q")])
    same_cam, no_gallery = players[0], players[1]
    df["camera"] = np.where(test & (df.img_type == "g") & (df.player != same_cam), 2, 1)
    df = df[~(test & (df.img_type == "g") & (df.player == no_gallery))]
    df.to_csv(tmp_path / "train_df.csv", index=False)
    base = dict(checkpoints=(run_dir,), data_dir=tmp_path, rerank=("none",), ranked_lists=0, device="cpu",
                progress=False, num_workers=0)
    lines = {}
    for rule in (None, True, False):
        report = evaluate(EvalConfig(**base, camera_rule=rule, output_dir=tmp_path / f"eval_{rule}"))
        lines[rule] = report.title.splitlines()[1]
        assert pd.read_csv(tmp_path / f"eval_{rule}" / "eval_results.csv").queries[0] == (11 if rule is False
                                                                                         else 10)
    assert lines[None] == lines[True] == ("scored 10 of 12 queries (2 have no match in the gallery from another "
                                          "camera); same-camera rule on")
    assert lines[False] == "scored 11 of 12 queries (1 has no match in the gallery); same-camera rule off"
    assert parse_config(EvalConfig, ["--no-camera-rule"]).camera_rule is False
    assert parse_config(EvalConfig, ["--camera-rule"]).camera_rule is True
    with pytest.raises(UserError, match="camera_rule: .*train_df.csv has no camera column"):
        evaluate(EvalConfig(**{**base, "data_dir": synthetic_small}, camera_rule=True, output_dir=tmp_path / "x"))
    assert not (tmp_path / "x").exists()


def test_tables_show_the_allshots_rank1_when_the_metrics_give_it():
    from clipreid.evaluation import Row, format_table, results_frame

    scores = {"mAP": 0.5, "rank1": 0.6, "rank5": 0.7, "rank10": 0.8, "mINP": 0.3}
    plain = [Row("a", "none", scores, epoch=4)]
    assert "allshots" not in format_table(plain) and "rank1_allshots" not in results_frame(plain, "test")
    rows = [Row("a", "none", {**scores, "rank1_allshots": 0.55}, epoch=4, weights="epoch 4 (last)")]
    header, line = format_table(rows).splitlines()
    assert re.match(r"model\s+epoch\s+re-ranking\s+mAP\s+rank-1\s+rank-1 allshots\s+rank-5", header)
    assert re.match(r"a\s+4\s+none\s+50\.00\s+60\.00\s+55\.00\s+70\.00", line)
    frame = results_frame(rows, "test")
    assert frame.rank1_allshots.tolist() == [0.55] and frame.epoch.tolist() == [4]
    assert "| rank-1 | rank-1 allshots |" in format_table(rows, markdown=True)


def test_folds_need_fold_trained_checkpoints(synthetic_small, run_dir, tmp_path):
    r = script("evaluate.py", "--split", "folds", "--checkpoints", run_dir, "--data-dir", synthetic_small, *RUN,
               cwd=tmp_path)
    assert r.returncode == 1
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "validation=test, not fold" in r.stderr


# --------------------------------------------------------------------------------------------------------------
# predict.py


def test_predict_script_writes_valid_submissions(synthetic_small, run_dir, predicted):
    out, r = predicted
    files = {p.name for p in out.glob("*.csv")}
    assert files == {"test_raw.csv", "test_k_reciprocal.csv", "challenge_raw.csv", "challenge_k_reciprocal.csv"}
    assert (out / "predict_config.json").is_file()
    # the weights are the run's last.pt, named with their epoch in the summary and the log
    assert f"weights: {run_dir.name} = {run_dir / 'last.pt'}, epoch 1 (last)" in r.stdout
    log = json.loads((out / "predict_log.json").read_text())
    assert [(c["file"], c["epoch"], c["weights"], c["warning"]) for c in log["checkpoints"]] == \
        [(str(run_dir / "last.pt"), 1, "last", None)]
    assert sorted(Path(f["path"]).name for f in log["files"]) == sorted(files)
    challenge = pd.read_csv(synthetic_small / "challenge_df.csv")
    truth = json.loads((synthetic_small / "synthetic.json").read_text())["challenge_players"]
    for name in sorted(files):
        text = (out / name).read_text()
        rows = text.splitlines()
        assert re.fullmatch(r"0(,\d+)+", rows[0])
        assert all(re.fullmatch(r"\d+(,\d+\.\d{5})+", row) for row in rows[1:]), name
        distmat, q, g = read_distance_matrix(out / name)
        assert (np.diff(q) >= 0).all() and (np.diff(g) >= 0).all()
        players = q, g  # test ids are the players
        if name.startswith("challenge"):
            assert q.tolist() == sorted(challenge[challenge.img_type == "q"].player)
            assert g.tolist() == sorted(challenge[challenge.img_type == "g"].player)
            # the synthetic challenge's ground truth is in synthetic.json, so it is scored too
            players = ([truth["reid_challenge/query"][str(i)] for i in q],
                       [truth["reid_challenge/gallery"][str(i)] for i in g])
        # the printed scores are those of the file as written
        scores = compute_scores(distmat, *players)
        line = next(x for x in r.stdout.splitlines() if x.strip().startswith(f"wrote {out / name}"))
        assert f"mAP {100 * scores['mAP']:.2f}  rank-1 {100 * scores['rank1']:.2f}" in line

    # the raw test matrix is the squared distance of the model's features, rows and columns sorted by id
    test = pd.read_csv(synthetic_small / "train_df.csv").query("split == 'test'")
    paths = [synthetic_small / f / i for f, i in zip(test.folder, test.img_id, strict=True)]
    features, _ = embed(run_dir, paths, device="cpu", progress=False)
    is_q = torch.tensor((test.img_type == "q").tolist())
    expected = squared_distances(features[is_q], features[~is_q]).numpy()
    players = test.player.to_numpy()
    q_order = np.argsort(players[is_q.numpy()], kind="stable")
    g_order = np.argsort(players[~is_q.numpy()], kind="stable")
    distmat, _, _ = read_distance_matrix(out / "test_raw.csv")
    np.testing.assert_allclose(distmat, expected[np.ix_(q_order, g_order)], atol=6e-6)


def test_predict_writes_every_reranking_and_each_models_own_csvs(synthetic_small, run_dir, predicted, tmp_path):
    """Several checkpoints: the fused CSVs of every requested re-ranking, and each model's own in a subfolder;
    best.pt (selected on the test split) scored on the test set is warned about."""
    out, _ = predicted
    report = predict(predict_config(synthetic_small, tmp_path, checkpoints=(run_dir, run_dir / "best.pt"),
                                    sets=("test",), rerank=("none", "k_reciprocal", "hard")))
    names = ("test_raw.csv", "test_k_reciprocal.csv", "test_hard.csv")
    assert {p.name for p in tmp_path.glob("*.csv")} == set(names)
    for folder in (run_dir.name, f"{run_dir.name}_best"):
        assert {p.name for p in (tmp_path / folder).glob("*.csv")} == set(names)
    # a model's own CSV is what predicting with it alone writes
    assert (tmp_path / run_dir.name / "test_raw.csv").read_text() == (out / "test_raw.csv").read_text()
    assert (tmp_path / run_dir.name / "test_k_reciprocal.csv").read_text() == \
        (out / "test_k_reciprocal.csv").read_text()
    summary = report.summary()
    assert f"warning: {run_dir.name}/best holds the epoch (1) of the best mAP on the test split" in summary
    log = json.loads((tmp_path / "predict_log.json").read_text())
    assert [c["description"] for c in log["checkpoints"]] == ["epoch 1 (last)", "epoch 1 (best mAP on the test split)"]
    assert len(log["files"]) == 9 and all(f["scores"] is not None for f in log["files"])


def test_fusing_a_checkpoint_with_its_own_csv(synthetic_small, run_dir, predicted, tmp_path):
    out, _ = predicted
    predict(predict_config(synthetic_small, tmp_path, checkpoints=(run_dir,), submissions=(out / "{set}_raw.csv",),
                           rerank=("none",)))
    assert {p.name for p in tmp_path.glob("*.csv")} == {"test_raw.csv", "challenge_raw.csv"}
    for name in ("test_raw.csv", "challenge_raw.csv"):
        fused, q, g = read_distance_matrix(tmp_path / name)
        alone, q0, g0 = read_distance_matrix(out / name)
        assert np.array_equal(q, q0) and np.array_equal(g, g0)
        np.testing.assert_allclose(fused, alone, atol=1.01e-5)


def test_fusing_csvs_with_shuffled_columns(synthetic_small, predicted, tmp_path):
    out, _ = predicted
    distmat, q, g = read_distance_matrix(out / "challenge_k_reciprocal.csv")
    perm = np.random.default_rng(0).permutation(len(g))
    shuffled = tmp_path / "shuffled.csv"
    lines = ["0," + ",".join(map(str, g[perm]))]
    lines += [f"{qid}," + ",".join(f"{v:.5f}" for v in row[perm]) for qid, row in zip(q, distmat, strict=True)]
    shuffled.write_text("\n".join(lines) + "\n")
    for fusion in ("similarity", "dissimilarity", "winners"):
        predict(predict_config(synthetic_small, tmp_path / fusion, checkpoints=None, sets=("challenge",),
                               submissions=(shuffled, out / "challenge_k_reciprocal.csv"), fusion=fusion))
        # two copies of one matrix fuse to that matrix, whatever the fusion
        assert (tmp_path / fusion / "challenge_raw.csv").read_text() == \
            (out / "challenge_k_reciprocal.csv").read_text()


def test_mismatched_ids_are_one_line_errors(synthetic_small, predicted, tmp_path):
    out, _ = predicted
    lines = (out / "challenge_raw.csv").read_text().splitlines()
    dropped = tmp_path / "dropped.csv"
    dropped.write_text("\n".join(",".join(line.split(",")[:-1]) for line in lines) + "\n")
    with pytest.raises(UserError) as err:
        predict(predict_config(synthetic_small, tmp_path, checkpoints=None, sets=("challenge",),
                               submissions=(out / "challenge_raw.csv", dropped)))
    message = str(err.value)
    assert "\n" not in message and "dropped.csv" in message and "gallery ids differ" in message
    # a test-set matrix given for the challenge set
    with pytest.raises(UserError, match="query ids differ"):
        predict(predict_config(synthetic_small, tmp_path, checkpoints=None, sets=("challenge",),
                               submissions=(out / "test_raw.csv",)))
    # one CSV for two sets
    with pytest.raises(UserError, match=r"write \{set\} in its path"):
        predict(predict_config(synthetic_small, tmp_path, checkpoints=None, submissions=(out / "test_raw.csv",)))
    assert not list(tmp_path.glob("*_raw.csv"))
