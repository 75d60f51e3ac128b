"""The config system: every dataclass field is a typed flag, and resolved configs round-trip through JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import pytest

from clipreid.config import (
    Checks,
    at_least,
    between,
    check_config,
    config_problems,
    each,
    field_comments,
    given_fields,
    load_config,
    non_negative,
    nonempty,
    one_of,
    parse_config,
    positive,
    rule,
    run,
    save_config,
)
from clipreid.errors import UserError


@dataclass
class Demo:
    """A config like the scripts' ones."""

    batch_size: int = 16  # pairs per batch
    lr: float = 4e-5  # peak learning rate
    amp: bool = True  # mixed precision
    model: str = "ViT-L-14-quickgelu"
    # input size (width, height)
    img_size: tuple[int, int] = (224, 224)
    folds: tuple[int, ...] = (0, 1)
    checkpoint: Path | None = None  # weights to start from
    device: Literal["auto", "cpu", "cuda"] = "auto"
    data_dir: Path = Path("data")
    tags: list[str] = field(default_factory=list)
    max_steps: int | None = None


def test_defaults_when_no_flags():
    assert parse_config(Demo, []) == Demo()


def test_every_kind_of_flag():
    cfg = parse_config(
        Demo,
        ["--batch-size", "8", "--lr", "1e-3", "--no-amp", "--img-size", "128", "64", "--folds", "3,4,5",
         "--checkpoint", "model/w.pth", "--device", "cpu", "--data_dir", "/tmp/x", "--tags", "a", "b",
         "--max-steps", "100"],
    )
    assert cfg == Demo(batch_size=8, lr=1e-3, amp=False, img_size=(128, 64), folds=(3, 4, 5),
                       checkpoint=Path("model/w.pth"), device="cpu", data_dir=Path("/tmp/x"), tags=["a", "b"],
                       max_steps=100)
    assert isinstance(cfg.batch_size, int) and isinstance(cfg.img_size, tuple)


@pytest.mark.parametrize(("argv", "expected"), [
    (["--amp"], True), (["--amp", "false"], False), (["--amp", "0"], False), (["--amp", "YES"], True),
    (["--no-amp"], False), (["--no-amp", "--amp"], True),
])
def test_booleans(argv, expected):
    assert parse_config(Demo, argv).amp is expected


def test_none_for_optional_fields():
    cfg = parse_config(Demo, ["--checkpoint", "x.pth", "--checkpoint", "None", "--max-steps", "none"])
    assert cfg.checkpoint is None and cfg.max_steps is None


@pytest.mark.parametrize(("argv", "message"), [
    (["--batch-size", "eight"], "--batch-size: expected an integer, got 'eight'"),
    (["--batch-size", "1.5"], "expected an integer"),
    (["--lr", "fast"], "expected a number"),
    (["--amp", "maybe"], "expected true or false"),
    (["--img-size", "1", "2", "3"], "expected 2 values"),
    (["--device", "tpu"], "expected one of auto, cpu, cuda, got 'tpu'"),
    (["--bach-size", "8"], "unknown option --bach-size (did you mean --batch-size?)"),
    (["--zzz"], "unknown option --zzz; see"),
    (["positional"], "unknown option positional"),
    (["--batch-size"], "expected one argument"),
])
def test_bad_flags_fail_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_config(Demo, argv, prog="train.py")
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.startswith("train.py: error:") and err.count("\n") == 1, err


def test_help_lists_fields_defaults_and_comments(capsys):
    with pytest.raises(SystemExit) as exc:
        parse_config(Demo, ["--help"], prog="train.py")
    assert exc.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for expected in ["--batch-size", "pairs per batch", "default: 16", "--img-size", "input size (width, height)",
                     "default: 224 224", "--amp", "default: true", "--checkpoint", "default: none",
                     "{auto,cpu,cuda}", "default: 4e-05", "--config", "A config like the scripts' ones."]:
        assert expected in out, expected


def test_field_comments():
    comments = field_comments(Demo)
    assert comments["batch_size"] == "pairs per batch"
    assert comments["img_size"] == "input size (width, height)"
    assert "model" not in comments


def test_json_round_trip(tmp_path):
    cfg = Demo(batch_size=3, img_size=(64, 128), checkpoint=Path("a/b.pth"), device="cuda", tags=["x"])
    path = save_config(cfg, tmp_path / "run" / "config.json")
    saved = json.loads(path.read_text())
    assert saved["img_size"] == [64, 128] and saved["checkpoint"] == "a/b.pth"
    assert load_config(Demo, path) == cfg
    assert not list(path.parent.glob(".*tmp"))  # written through a temporary name


def test_config_flag_loads_then_flags_override(tmp_path):
    path = save_config(Demo(batch_size=3, lr=0.5), tmp_path / "c.json")
    cfg = parse_config(Demo, ["--config", str(path), "--lr", "0.25"])
    assert cfg.batch_size == 3 and cfg.lr == 0.25


@pytest.mark.parametrize(("content", "message"), [
    ('{"batch_sise": 3}', "unknown field 'batch_sise' (did you mean 'batch_size'?)"),
    ('{"batch_size": "x"}', "field 'batch_size': expected an integer"),
    ('{"amp": 1.5}', "field 'amp': expected true or false"),
    ('{"img_size": [1]}', "expected 2 values"),
    ("[1, 2]", "must hold a JSON object"),
    ("{not json", "is not valid JSON"),
])
def test_load_config_errors(tmp_path, content, message):
    path = tmp_path / "c.json"
    path.write_text(content)
    with pytest.raises(UserError, match=None) as exc:
        load_config(Demo, path)
    assert message in str(exc.value) and str(path) in str(exc.value)


def test_load_config_missing_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_config(Demo, tmp_path / "missing.json")


def test_run_turns_user_error_into_one_line(capsys):
    def main(cfg: Demo) -> None:
        raise UserError(f"data folder {cfg.data_dir} is empty: run download_data.py first")

    with pytest.raises(SystemExit) as exc:
        run(Demo, main, ["--data-dir", "nowhere"])
    assert exc.value.code == 1
    assert capsys.readouterr().err == "error: data folder nowhere is empty: run download_data.py first\n"


def test_run_passes_the_parsed_config():
    seen = []
    run(Demo, seen.append, ["--batch-size", "2"])
    assert seen == [Demo(batch_size=2)]


@dataclass
class Checked:
    """A config with a check table, like the scripts'."""

    lr: float = 4e-5  # peak lr; 100% of it after warm-up
    epochs: int = 4
    warmup: float = 1.0
    losses: tuple[str, ...] = ("infonce",)
    weights: tuple[float, ...] | None = None  # one per loss
    mix: float = 0.3

    checks: ClassVar[Checks] = {
        "lr": positive,
        "epochs": at_least(1),
        "warmup": (non_negative, rule(lambda v, c: v <= c.epochs, "at most --epochs ({cfg.epochs})")),
        "losses": (nonempty, one_of("infonce", "id")),
        "weights": (each(non_negative), rule(lambda v, c: len(v) == len(c.losses), "one per loss")),
        "mix": between(0, 1),
    }


def test_percent_in_a_comment_does_not_break_help(capsys):
    with pytest.raises(SystemExit) as exc:
        parse_config(Checked, ["--help"], prog="train.py")
    assert exc.value.code == 0
    assert "100% of it after warm-up" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--lr", "0"], "--lr 0.0: expected a finite number above 0"),
    (["--lr", "-1e-4"], "--lr -0.0001: expected a finite number above 0"),
    (["--lr", "inf"], "--lr inf: expected a finite number above 0"),
    (["--epochs", "0", "--warmup", "0"], "--epochs 0: expected a number of at least 1"),
    (["--warmup", "5"], "--warmup 5.0: expected at most --epochs (4)"),
    (["--warmup", "-1"], "--warmup -1.0: expected a number of at least 0"),
    (["--losses", "arcface"], "--losses arcface: expected values among infonce, id"),
    (["--weights", "1", "-1"], "--weights 1.0 -1.0: expected each value a number of at least 0 (-1.0 is not)"),
    (["--weights", "1", "1"], "--weights 1.0 1.0: expected one per loss"),
    (["--mix", "1.5"], "--mix 1.5: expected a number from 0 to 1"),
])
def test_values_that_cannot_work_are_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_config(Checked, argv, prog="train.py")
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err == f"train.py: error: {message}\n"


def test_checks_pass_for_good_values_and_none():
    cfg = parse_config(Checked, ["--weights", "none", "--warmup", "4", "--mix", "0"])
    assert config_problems(cfg) == []
    assert config_problems(Checked(lr=0.0, mix=2.0)) == ["--lr 0.0: expected a finite number above 0",
                                                          "--mix 2.0: expected a number from 0 to 1"]
    with pytest.raises(UserError, match=r"^run.json: --lr 0.0: expected a finite number above 0$"):
        check_config(Checked(lr=0.0), "run.json")


def test_a_check_on_a_missing_field_is_a_bug():
    @dataclass
    class Wrong:
        a: int = 0
        checks: ClassVar[Checks] = {"b": positive}

    with pytest.raises(TypeError, match="names 'b'"):
        config_problems(Wrong())


def test_given_fields_are_what_the_user_typed(tmp_path):
    save_config(Checked(lr=1e-3), tmp_path / "c.json")
    assert given_fields(parse_config(Checked, ["--lr", "1e-3", "--mix", "0.5"])) == {"lr", "mix"}
    from_file = parse_config(Checked, ["--config", str(tmp_path / "c.json"), "--mix", "0.5"])
    assert "mix" in given_fields(from_file) and "lr" in given_fields(from_file)
    assert given_fields(Checked()) is None


@dataclass
class Paths:
    """Lists of paths beside lists of numbers and names."""

    checkpoints: tuple[Path, ...] = ()
    submissions: tuple[Path, ...] | None = None
    img_size: tuple[int, int] = (224, 224)
    rerank: tuple[str, ...] = ("none",)
    weights: tuple[float, ...] | None = None


def test_paths_with_commas_and_spaces_stay_whole(tmp_path):
    odd = "model/run a,b/best.pt"
    cfg = parse_config(Paths, ["--checkpoints", odd, "model/c.pt", "--submissions", "x,y/{set}_raw.csv",
                               "--img-size", "128,64", "--rerank", "none,k_reciprocal", "--weights", "1,2"])
    assert cfg.checkpoints == (Path(odd), Path("model/c.pt"))
    assert cfg.submissions == (Path("x,y/{set}_raw.csv"),)
    assert cfg.img_size == (128, 64) and cfg.rerank == ("none", "k_reciprocal") and cfg.weights == (1.0, 2.0)
    # a saved config (and --config, itself a path with a comma and a space) keeps them whole too
    path = save_config(cfg, tmp_path / "runs, v2" / "c.json")
    assert load_config(Paths, path) == cfg
    assert parse_config(Paths, ["--config", str(path)]) == cfg
