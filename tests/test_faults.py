"""Fault injection: every failure ends in one clear line, and nothing is left half-written.

Values that cannot work, unwritable output folders, a full disk or a vanished folder midway through a set of
files, a process killed while writing, an interrupted training run, broken DataFrames, unreadable images and
CSVs whose repeated ids cannot be matched. Each case checks the exit status, the one line on stderr (no
traceback) and what the output folder holds afterwards. Most cases call ``config.run(Config, main, argv)`` in
the test process; a few run the scripts as a user does.
"""

from __future__ import annotations

import errno
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import download_data
import evaluate as evaluate_script
import predict as predict_script
import preprocess_data
import train as train_script
from clipreid import trainer
from clipreid.checkpoint import save_checkpoint
from clipreid.config import load_config, run, save_config
from clipreid.errors import UserError
from clipreid.features import embed
from clipreid.model import ModelSpec, build_encoder
from clipreid.prediction import load_set
from clipreid.submission import write_distance_matrix
from clipreid.weights import encoder_checkpoint

ROOT = Path(__file__).resolve().parents[1]
CPU = ["--device", "cpu", "--no-progress", "--num-workers", "0"]
TINY = ["--model", "tiny-vit", "--pretrained", "none", "--batch-size", "8", "--lr", "2e-3", "--no-zero-shot",
        "--no-cache-images", *CPU]


pytestmark = pytest.mark.usefixtures("one_thread")


def run_script(module, argv, capsys) -> tuple[int, str, str]:
    """``config.run`` of a script's Config and main, in process: (exit status, stdout, stderr)."""
    capsys.readouterr()
    try:
        run(module.Config, module.main, [str(a) for a in argv])
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert "Traceback" not in err
    return err.strip()


def listing(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones included) with its bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def no_hidden(folder: Path) -> bool:
    return not [p for p in folder.rglob(".*")]


# --------------------------------------------------------------------------------------------------------------
# values that cannot work: exit status 2 before any work, one line naming the flag


@pytest.mark.parametrize("module, argv, message", [
    (train_script, ["--lr", "0"], "--lr 0.0: expected a finite number above 0"),
    (train_script, ["--lr", "-1e-4"], "--lr -0.0001: expected a finite number above 0"),
    (train_script, ["--lr", "nan"], "--lr nan: expected a finite number above 0"),
    (train_script, ["--epochs", "0"], "--epochs 0: expected a number of at least 1"),
    (train_script, ["--grad-accum", "0"], "--grad-accum 0: expected a number of at least 1"),
    (train_script, ["--batch-size", "0"], "--batch-size 0: expected a number of at least 1"),
    (train_script, ["--device", "tpu9"], "--device tpu9: expected a device this machine has: auto, cpu"),
    (train_script, ["--warmup-epochs", "5"], "--warmup-epochs 5.0: expected at most --epochs (4)"),
    (train_script, ["--losses", "infonce", "arcface"], "--losses infonce arcface: expected values among infonce, "
                                                       "id, triplet"),
    (train_script, ["--loss-weights", "1", "1"], "--loss-weights 1.0 1.0: expected one weight per loss (infonce)"),
    (train_script, ["--label-smoothing", "1"], "--label-smoothing 1.0: expected a number from 0 to below 1"),
    (train_script, ["--run-name", "a/b"], "--run-name a/b: expected a plain folder name"),
    (evaluate_script, ["--k1", "0"], "--k1 0: expected a number of at least 1"),
    (evaluate_script, ["--lambda-value", "1.5"], "--lambda-value 1.5: expected a number from 0 to 1"),
    (evaluate_script, ["--rerank", "none", "fast"], "--rerank: expected one of none, k_reciprocal, hard, got "
                                                    "'fast'"),
    (evaluate_script, ["--topk", "0"], "--topk 0: expected a number of at least 1"),
    (predict_script, ["--weights", "1", "2"], "--weights 1.0 2.0: expected one weight per checkpoint, then one per "
                                              "submission CSV (1 in all)"),
    (predict_script, ["--checkpoints", "none"],
     "--submissions (empty): expected at least one CSV when --checkpoints is none"),
    (predict_script, ["--fusion", "dissimilarity", "--weights", "1"], "--weights 1.0: expected none with --fusion "
                                                                      "dissimilarity"),
    (predict_script, ["--sets", "val"], "--sets: expected one of test, challenge, got 'val'"),
    (preprocess_data, ["--n-folds", "1"], "--n-folds 1: expected a number of at least 2"),
    (download_data, ["--synthetic-train-players", "0"], "--synthetic-train-players 0: expected a number of at "
                                                        "least 2"),
])
def test_values_that_cannot_work_stop_before_any_work(module, argv, message, capsys, monkeypatch):
    monkeypatch.setattr(module, "main", lambda cfg: pytest.fail("main ran with a config that cannot work"))
    code, _, err = run_script(module, argv, capsys)
    assert code == 2
    line = one_line(err)
    assert "error: " in line
    assert message in line


def test_every_problem_is_named_at_once(capsys, monkeypatch):
    monkeypatch.setattr(train_script, "main", lambda cfg: pytest.fail("ran"))
    code, _, err = run_script(train_script, ["--lr", "0", "--epochs", "0", "--grad-accum", "0"], capsys)
    assert code == 2
    line = one_line(err)
    assert "--lr 0.0" in line and "--epochs 0" in line and "--grad-accum 0" in line
    assert "--warmup-epochs 1.0: expected at most --epochs (0)" in line


def test_saved_configs_get_the_same_checks(tmp_path, capsys, monkeypatch):
    path = tmp_path / "train_config.json"
    save_config(train_script.Config(lr=0.0), path)
    with pytest.raises(UserError, match=r"train_config.json: --lr 0.0: expected a finite number above 0"):
        load_config(train_script.Config, path)
    # a flag after --config may fix what the file holds
    seen = []
    monkeypatch.setattr(train_script, "main", seen.append)
    code, _, err = run_script(train_script, ["--config", path, "--lr", "1e-4"], capsys)
    assert code == 0 and seen[0].lr == 1e-4, err


def test_a_config_without_checks_still_parses():
    from dataclasses import dataclass

    from clipreid.config import parse_config

    @dataclass
    class Bare:
        n: int = 0  # any value, 100% of the time

    assert parse_config(Bare, ["--n", "-3"]).n == -3


# --------------------------------------------------------------------------------------------------------------
# the top-level error path of config.run


@pytest.mark.parametrize("exc, code, expected", [
    (UserError("the data is gone; download it again"), 1, "error: the data is gone; download it again"),
    (OSError(errno.ENOSPC, "No space left on device", "out/test_raw.csv"), 1,
     "error: out/test_raw.csv: no space left on the device; free some space and run again"),
    (PermissionError(errno.EACCES, "Permission denied", "/srv/model"), 1,
     "error: /srv/model: permission denied; choose a folder you can write or fix its permissions"),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "out/.x.tmp", None, "out/x"), 1,
     "error: out/.x.tmp -> out/x: no such file or folder (was it moved or deleted while the stage ran?)"),
    (KeyboardInterrupt(), 130, "interrupted"),
    (KeyboardInterrupt("continue with --resume model/run/last.pt"), 130,
     "interrupted; continue with --resume model/run/last.pt"),
])
def test_expected_failures_end_in_one_line(exc, code, expected, capsys, monkeypatch):
    def main(cfg):
        raise exc

    monkeypatch.setattr(preprocess_data, "main", main)
    status, _, err = run_script(preprocess_data, [], capsys)
    assert status == code
    assert one_line(err) == expected


def test_every_entry_point_takes_the_one_way_out():
    """The five scripts end in ``run(Config, main)`` and ``python -m clipreid.export`` in ``run_guarded``: one
    place says how a failure, Ctrl-C or SIGTERM ends."""
    import ast

    for script in ("download_data", "preprocess_data", "train", "evaluate", "predict"):
        tree = ast.parse((ROOT / f"{script}.py").read_text())
        guard = [n for n in tree.body if isinstance(n, ast.If) and "__main__" in ast.unparse(n.test)]
        assert [ast.unparse(n) for n in guard[0].body] == ["run(Config, main)"], script
    source = (ROOT / "clipreid" / "export.py").read_text()
    main = next(n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name == "main")
    assert "run_guarded(" in ast.unparse(main) and "SystemExit" not in ast.unparse(main)


@pytest.mark.parametrize("exc", [RuntimeError("a bug"), OSError("no errno: a bug"), ZeroDivisionError()])
def test_bugs_keep_their_traceback(exc, capsys, monkeypatch):
    def main(cfg):
        raise exc

    monkeypatch.setattr(preprocess_data, "main", main)
    with pytest.raises(type(exc)):
        run(preprocess_data.Config, preprocess_data.main, [])


# --------------------------------------------------------------------------------------------------------------
# output folders that cannot be written: one line before any work


def test_unwritable_output_folders_fail_before_any_work(synthetic_small, tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    # evaluate and predict: a model must not even be loaded
    monkeypatch.setattr("clipreid.evaluation.load_for_inference", lambda *a: pytest.fail("loaded a model"))
    monkeypatch.setattr("clipreid.prediction.load_set", lambda *a: pytest.fail("read the data"))
    ckpt = tmp_path / "best.pt"
    ckpt.write_bytes(b"")
    for module, argv in [(evaluate_script, ["--checkpoints", ckpt, "--data-dir", synthetic_small]),
                         (predict_script, ["--checkpoints", ckpt, "--data-dir", synthetic_small])]:
        code, _, err = run_script(module, [*argv, "--output-dir", blocker / "sub", *CPU], capsys)
        assert code == 1
        assert one_line(err) == (f"error: cannot write to the --output-dir {blocker / 'sub'}: a path component is "
                                 "a file, not a folder; choose another folder")
    # train: before the data is read
    monkeypatch.setattr(trainer, "load_split", lambda *a: pytest.fail("read the data"))
    code, _, err = run_script(train_script, ["--data-dir", synthetic_small, "--output-dir", blocker / "sub", *TINY],
                              capsys)
    assert code == 1 and "cannot write to the --output-dir" in one_line(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "best.pt"]


def test_a_read_only_folder_is_named(tmp_path, capsys, monkeypatch):
    # Tests run as root, where chmod does not stop writes: the probe meets the error a read-only folder gives.
    def refuse(*args, **kwargs):
        raise PermissionError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr("clipreid.fileio.tempfile.mkstemp", refuse)
    code, _, err = run_script(download_data, ["--source", "synthetic", "--data-dir", tmp_path / "data"], capsys)
    assert code == 1
    assert one_line(err) == (f"error: cannot write to the --data-dir {tmp_path / 'data'}: read-only file system; "
                             "choose a writable folder")
    assert list(tmp_path.iterdir()) == []  # the probe's folders are gone again


# --------------------------------------------------------------------------------------------------------------
# predict.py: the CSV set is replaced whole or not at all


@pytest.fixture(scope="module")
def given_csvs(synthetic_small, tmp_path_factory) -> Path:
    """Submission CSVs for both sets of the small synthetic data (random distances): predict without a model."""
    folder = tmp_path_factory.mktemp("given")
    rng = np.random.default_rng(0)
    for name in ("test", "challenge"):
        qset = load_set(synthetic_small, name)
        write_distance_matrix(folder / f"{name}_raw.csv", rng.random((len(qset.query_ids), len(qset.gallery_ids))),
                              qset.query_ids, qset.gallery_ids)
    return folder


def predict_argv(data: Path, given: Path, out: Path) -> list:
    return ["--checkpoints", "none", "--submissions", given / "{set}_raw.csv", "--rerank", "none",
            "--data-dir", data, "--output-dir", out, *CPU]


def old_set(out: Path) -> dict[str, bytes]:
    out.mkdir(parents=True)
    for name in ("test_raw.csv", "challenge_raw.csv", "predict_config.json"):
        (out / name).write_text(f"old {name}\n")
    (out / "notes.txt").write_text("the user's own file\n")
    return listing(out)


def test_full_disk_midway_keeps_the_old_set(synthetic_small, given_csvs, tmp_path, capsys, monkeypatch):
    out = tmp_path / "submission"
    before = old_set(out)
    real = write_distance_matrix
    calls = []

    def second_write_fills_the_disk(path, *args):
        calls.append(path)
        if len(calls) == 2:
            with open(path, "w") as f:
                f.write("0,1,2\n3,0.1")  # part of a file, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, *args)

    monkeypatch.setattr("clipreid.prediction.write_distance_matrix", second_write_fills_the_disk)
    code, _, err = run_script(predict_script, predict_argv(synthetic_small, given_csvs, out), capsys)
    assert code == 1 and len(calls) == 2
    assert one_line(err).endswith("challenge_raw.csv: no space left on the device; free some space and run again")
    assert listing(out) == before  # not one new CSV, no staging left behind


@pytest.mark.parametrize("code_, reason", [
    (errno.EIO, "input/output error (a failing disk or a network folder that went away); check it and run again"),
    (errno.ESTALE, "Stale file handle"), (errno.ENXIO, "No such device or address"),
])
def test_every_write_failure_is_one_line(synthetic_small, given_csvs, tmp_path, capsys, monkeypatch, code_, reason):
    out = tmp_path / "submission"
    before = old_set(out)

    def fails(path, *args):
        raise OSError(code_, reason, str(path))

    monkeypatch.setattr("clipreid.prediction.write_distance_matrix", fails)
    code, _, err = run_script(predict_script, predict_argv(synthetic_small, given_csvs, out), capsys)
    assert code == 1
    assert one_line(err) == f"error: {out / 'test_raw.csv'}: {reason}"
    assert listing(out) == before


def test_a_vanished_output_folder_is_one_line(synthetic_small, given_csvs, tmp_path, capsys, monkeypatch):
    out = tmp_path / "submission"
    old_set(out)
    real = write_distance_matrix

    def write_then_lose_the_folder(path, *args):
        real(path, *args)
        import shutil

        shutil.rmtree(out)  # another process cleans up the folder while predict writes

    monkeypatch.setattr("clipreid.prediction.write_distance_matrix", write_then_lose_the_folder)
    code, _, err = run_script(predict_script, predict_argv(synthetic_small, given_csvs, out), capsys)
    assert code == 1
    assert "no such file" in one_line(err)


def test_predict_set_replaces_the_old_one_and_keeps_other_files(synthetic_small, given_csvs, tmp_path, capsys):
    out = tmp_path / "submission"
    old_set(out)
    code, stdout, err = run_script(predict_script, predict_argv(synthetic_small, given_csvs, out), capsys)
    assert code == 0, err
    files = listing(out)
    assert sorted(files) == ["challenge_raw.csv", "notes.txt", "predict_config.json", "predict_log.json",
                             "test_raw.csv"]
    assert files["notes.txt"] == b"the user's own file\n"
    assert files["test_raw.csv"] == (given_csvs / "test_raw.csv").read_bytes()  # one input: fused = itself
    assert f"wrote {out / 'test_raw.csv'}" in stdout


def test_predict_killed_while_writing_leaves_the_old_set(synthetic_small, given_csvs, tmp_path, capsys):
    out = tmp_path / "submission"
    before = old_set(out)
    code = (
        "import os, signal, sys\n"
        "import clipreid.prediction as P, predict\n"
        "from clipreid.config import run\n"
        "real = P.write_distance_matrix\n"
        "def write_then_die(path, *a):\n"
        "    real(path, *a)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "P.write_distance_matrix = write_then_die\n"
        "run(predict.Config, predict.main, sys.argv[1:])\n"
    )
    r = subprocess.run([sys.executable, "-c", code, *map(str, predict_argv(synthetic_small, given_csvs, out))],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == -9, r.stderr
    after = listing(out)
    # the visible files are the old set; only a hidden staging folder may remain from the killed process
    assert {k: v for k, v in after.items() if not k.startswith(".")} == before
    assert not no_hidden(out)
    # ... until the next run of the same output, which removes it (its process is gone)
    code, _, err = run_script(predict_script, predict_argv(synthetic_small, given_csvs, out), capsys)
    assert code == 0, err
    assert no_hidden(out) and no_hidden(tmp_path)


PREDICT_STAND_IN = (
    "import os, signal, sys\n"
    "import clipreid.prediction as P, predict\n"
    "from clipreid.config import run\n"
    "real = P.write_distance_matrix\n"
    "def write_then_stop(path, *a):\n"
    "    real(path, *a)\n"
    "    os.kill(os.getpid(), signal.SIGTERM)\n"
    "P.write_distance_matrix = write_then_stop\n"
    "run(predict.Config, predict.main, sys.argv[1:])\n"
)


def test_sigterm_cleans_up_like_ctrl_c(synthetic_small, given_csvs, tmp_path):
    """``kill`` (or a job scheduler's stop) midway: the old set stays, no staging folder, no parent made for it."""
    out = tmp_path / "submission"
    before = old_set(out)
    r = subprocess.run([sys.executable, "-c", PREDICT_STAND_IN, *map(str, predict_argv(synthetic_small, given_csvs,
                                                                                          out))],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 143, r.stderr
    assert one_line(r.stderr) == "terminated"
    assert listing(out) == before
    fresh = tmp_path / "new" / "a" / "b"
    r = subprocess.run([sys.executable, "-c", PREDICT_STAND_IN, *map(str, predict_argv(synthetic_small, given_csvs,
                                                                                          fresh))],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 143 and one_line(r.stderr) == "terminated"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["submission"]


def test_repeated_ids_in_another_order_are_refused(synthetic_small, given_csvs, tmp_path, capsys):
    from clipreid.submission import read_distance_matrix

    distmat, q_ids, g_ids = read_distance_matrix(given_csvs / "test_raw.csv")
    order = np.argsort(-g_ids, kind="stable")  # gallery columns by descending player id: repeated ids reordered
    shuffled = tmp_path / "shuffled.csv"
    with open(shuffled, "w") as f:
        f.write("0," + ",".join(map(str, g_ids[order])) + "\n")
        for qid, row in zip(q_ids, distmat[:, order], strict=True):
            f.write(f"{qid}," + ",".join(f"{v:.5f}" for v in row) + "\n")
    argv = ["--checkpoints", "none", "--submissions", shuffled, "--sets", "test", "--rerank", "none",
            "--data-dir", synthetic_small, "--output-dir", tmp_path / "out", *CPU]
    code, _, err = run_script(predict_script, argv, capsys)
    assert code == 1
    line = one_line(err)
    assert "shuffled.csv" in line and "gallery ids repeat" in line and "another order" in line
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------------------------
# evaluate.py: tables, picture and config as one set


@pytest.fixture(scope="module")
def random_checkpoint(tmp_path_factory) -> Path:
    """A tiny ViT with random weights saved as a clipreid checkpoint (no training)."""
    torch.manual_seed(0)
    spec = ModelSpec("tiny-vit", "none")
    encoder = build_encoder(spec)
    path = tmp_path_factory.mktemp("run") / "tiny" / "best.pt"
    path.parent.mkdir()
    save_checkpoint(path, {**encoder_checkpoint(encoder), "config": {}})
    return path


def test_evaluate_failing_midway_keeps_the_old_results(synthetic_small, random_checkpoint, tmp_path, capsys,
                                                       monkeypatch):
    out = tmp_path / "eval"
    argv = ["--checkpoints", random_checkpoint, "--data-dir", synthetic_small, "--rerank", "none",
            "--output-dir", out, "--ranked-lists", "2", *CPU]
    code, _, err = run_script(evaluate_script, argv, capsys)
    assert code == 0, err
    first = listing(out)
    assert sorted(first) == ["eval_results.csv", "eval_results.md", "evaluate_config.json", "ranked_lists.png"]

    def full_disk(cfg, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr("clipreid.evaluation.save_config", full_disk)  # after the tables and the picture
    code, _, err = run_script(evaluate_script, [*argv, "--k1", "5"], capsys)
    assert code == 1
    assert "evaluate_config.json: no space left on the device" in one_line(err)
    assert listing(out) == first
    monkeypatch.undo()
    # a new set without a picture leaves no old picture beside the new tables
    code, _, err = run_script(evaluate_script, [*argv[:-len(CPU) - 2], "--ranked-lists", "0", *CPU], capsys)
    assert code == 0, err
    assert sorted(listing(out)) == ["eval_results.csv", "eval_results.md", "evaluate_config.json"]


# --------------------------------------------------------------------------------------------------------------
# train.py: a run folder appears only with its first checkpoint; interrupts say how to resume


def test_training_that_fails_before_its_first_checkpoint_leaves_nothing(synthetic_small, tmp_path, capsys,
                                                                        monkeypatch):
    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "runs" / "x"))

    monkeypatch.setattr(trainer, "_train_epoch", disk_full)
    code, stdout, err = run_script(train_script, ["--data-dir", synthetic_small, "--output-dir", tmp_path / "runs",
                                                  "--validation", "none", *TINY], capsys)
    assert code == 1
    assert one_line(err).endswith("no space left on the device; free some space and run again")
    assert not (tmp_path / "runs").exists() or list((tmp_path / "runs").iterdir()) == []


def test_training_stopped_by_sigterm_before_its_first_checkpoint_leaves_nothing(synthetic_small, tmp_path):
    code = (
        "import os, signal, sys\n"
        "import train\n"
        "from clipreid import trainer\n"
        "from clipreid.config import run\n"
        "def stop(*a, **k):\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "trainer._train_epoch = stop\n"
        "run(train.Config, train.main, sys.argv[1:])\n"
    )
    argv = ["--data-dir", synthetic_small, "--output-dir", tmp_path / "new" / "runs", "--run-name", "r",
            "--validation", "none", *TINY]
    r = subprocess.run([sys.executable, "-c", code, *map(str, argv)], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 143, r.stderr
    assert one_line(r.stderr) == "terminated"
    assert list(tmp_path.iterdir()) == []  # no hidden run folder, no parents made for it


def test_a_failure_writing_the_run_folder_is_one_line_naming_it(synthetic_small, tmp_path, capsys, monkeypatch):
    def stale(cfg, path):
        raise OSError(errno.ESTALE, "Stale file handle", str(path))

    monkeypatch.setattr(trainer, "save_config", stale)
    monkeypatch.setattr(trainer, "_train_epoch", lambda *a, **k: pytest.fail("trained"))
    runs = tmp_path / "new" / "runs"
    code, _, err = run_script(train_script, ["--data-dir", synthetic_small, "--output-dir", runs, "--run-name", "r",
                                             "--validation", "none", *TINY], capsys)
    assert code == 1
    assert one_line(err) == f"error: {runs / 'r' / 'train_config.json'}: Stale file handle"
    assert list(tmp_path.iterdir()) == []


def test_interrupted_training_says_how_to_resume_and_overwrite_keeps_the_old_run(synthetic_small, tmp_path, capsys,
                                                                                 monkeypatch):
    real = trainer._train_epoch
    runs = tmp_path / "runs"
    argv = ["--data-dir", synthetic_small, "--output-dir", runs, "--validation", "none", "--epochs", "2",
            "--run-name", "r", *TINY]

    def interrupt_second_epoch(*args, **kwargs):
        if args[-1] == 1:  # epoch index
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "_train_epoch", interrupt_second_epoch)
    code, _, err = run_script(train_script, argv, capsys)
    assert code == 130
    assert one_line(err) == f"interrupted; continue with --resume {runs / 'r' / 'last.pt'}"
    finished = listing(runs / "r")
    assert {"last.pt", "best.pt", "log.jsonl", "train_config.json"} <= set(finished)

    # --overwrite that fails before its first checkpoint leaves the old run as it was
    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "x")

    monkeypatch.setattr(trainer, "_train_epoch", disk_full)
    code, _, err = run_script(train_script, [*argv, "--overwrite"], capsys)
    assert code == 1 and "no space left" in one_line(err)
    assert listing(runs / "r") == finished and no_hidden(runs)

    # resuming names only what was changed on its command line, not every field that differs from the defaults
    monkeypatch.setattr(trainer, "_train_epoch", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    code, stdout, err = run_script(train_script, ["--resume", runs / "r" / "last.pt", "--lr", "0.5", *CPU], capsys)
    assert code == 130
    assert "ignoring the differing lr\n" in stdout
    assert one_line(err) == f"interrupted; continue with --resume {runs / 'r' / 'last.pt'}"


def test_a_folder_that_is_not_a_run_is_not_taken_over(synthetic_small, tmp_path, capsys, monkeypatch):
    (tmp_path / "runs" / "r").mkdir(parents=True)
    (tmp_path / "runs" / "r" / "mine.txt").write_text("keep")
    monkeypatch.setattr(trainer, "_train_epoch", lambda *a, **k: pytest.fail("trained"))
    code, _, err = run_script(train_script, ["--data-dir", synthetic_small, "--output-dir", tmp_path / "runs",
                                             "--run-name", "r", *TINY], capsys)
    assert code == 1 and "is not a finished run" in one_line(err)
    assert listing(tmp_path / "runs") == {"r/mine.txt": b"keep"}


def test_epochs_zero_and_lr_zero_as_a_user_types_them(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), "--epochs", "0", "--lr", "0"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stdout == ""
    line = one_line(r.stderr)
    assert line.startswith("train.py: error: --epochs 0: expected a number of at least 1; --lr 0.0: expected")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------------------------
# broken DataFrames


@pytest.mark.parametrize("text, message", [
    ("", "train_df.csv is empty; re-run `python preprocess_data.py --data-dir"),
    ("img_id,folder,player,game,split,img_type,fold\n", "train_df.csv has no rows"),
    ("img_id,folder,player,game,split,img_type,fold\na.jpeg,reid_training,3,1,train,g,0\n"
     "b.jpeg,reid_training,seven,1,train,g,0\n", "train_df.csv: row 3: player 'seven' is not an integer"),
    ("img_id,folder,player,game,split,img_type,fold\na.jpeg,reid_training,3,1,train,g,0.5\n",
     "train_df.csv: row 2: fold 0.5 is not an integer"),
])
def test_broken_train_df_is_one_line(text, message, tmp_path, capsys, monkeypatch):
    (tmp_path / "train_df.csv").write_text(text)
    code, _, err = run_script(train_script, ["--data-dir", tmp_path, "--output-dir", tmp_path / "runs", *TINY],
                              capsys)
    assert code == 1
    assert message in one_line(err)
    assert not (tmp_path / "runs").exists()


def test_whole_number_floats_are_integers(tmp_path):
    from clipreid.dataset import read_table

    (tmp_path / "t.csv").write_text("player,x\n3.0,a\n4,b\n")
    df = read_table(tmp_path / "t.csv", ["player"], integer_columns=["player"])
    assert df.player.tolist() == [3, 4] and df.player.dtype == np.int64


# --------------------------------------------------------------------------------------------------------------
# embed(): one unreadable image does not end the folder


def test_embed_skips_unreadable_images_and_names_them(synthetic_small, tmp_path):
    from PIL import Image

    folder = tmp_path / "crops"
    folder.mkdir()
    sources = sorted((synthetic_small / "reid_test" / "query").glob("*.jpeg"))[:3]
    for i, src in enumerate(sources):
        Image.open(src).save(folder / f"{i}.jpeg")
    (folder / "1b.jpeg").write_bytes(b"not an image")
    encoder = build_encoder(ModelSpec("tiny-vit", "none"))
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable image\(s\): 1b.jpeg$"):
        features, names = embed(encoder, folder, batch_size=2, progress=False)
    assert names == ["0.jpeg", "1.jpeg", "2.jpeg"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        alone, _ = embed(encoder, [folder / n for n in names], batch_size=2, progress=False)
    torch.testing.assert_close(features, alone)  # the features belong to the names returned
    with pytest.raises(UserError, match=r"cannot read image .*1b.jpeg: cannot identify image file") as info:
        embed(encoder, folder, on_error="raise", progress=False)
    assert "preprocess_data" not in str(info.value)
    with pytest.raises(UserError, match="none of the 1 images could be read"):
        embed(encoder, [folder / "1b.jpeg"], progress=False)
