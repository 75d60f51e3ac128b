"""Typed stage inputs: the library's stage functions take typed configs that the scripts' Configs inherit; every
value is checked once, where it enters (parse or load), and the scripts' --help is what it was."""

from __future__ import annotations

import dataclasses
import importlib
import typing

import pytest

from clipreid.config import build_parser, config_to_dict, parse_config
from clipreid.evaluation import EvaluateConfig
from clipreid.inference import FusionOptions, InferenceOptions, RerankOptions
from clipreid.prediction import PredictConfig
from clipreid.rank_folders import RankConfig
from clipreid.trainer import TrainConfig

# script -> the typed inputs of the stage(s) its main() calls
STAGES = {"evaluate": (EvaluateConfig,), "predict": (PredictConfig, RankConfig), "train": (TrainConfig,)}
LIBRARY = (InferenceOptions, RerankOptions, FusionOptions, EvaluateConfig, PredictConfig, RankConfig, TrainConfig)


@pytest.mark.parametrize("script", sorted(STAGES))
def test_each_script_redeclares_every_typed_field_with_its_default(script):
    config = importlib.import_module(script).Config
    own = typing.get_type_hints(config)
    declared = config.__dict__["__annotations__"]  # the script's class body, not what it inherits
    for base in STAGES[script]:
        assert issubclass(config, base)
        for name, tp in typing.get_type_hints(base).items():
            assert name in declared, f"{script}.py does not redeclare {name} (its default and help belong there)"
            assert own[name] == tp, f"{script}.py declares {name}: {own[name]}, the library {tp}"
    for f in dataclasses.fields(config):
        assert f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING, f.name


@pytest.mark.parametrize("cls", LIBRARY, ids=lambda c: c.__name__)
def test_library_inputs_have_no_defaults(cls):
    # a default here would be a second one, free to disagree with the script's (cache_images and num_workers did)
    assert all(f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
               for f in dataclasses.fields(cls))


@pytest.mark.parametrize("script", sorted(STAGES))
def test_help_and_saved_configs_keep_the_scripts_field_order(script):
    config = importlib.import_module(script).Config
    fields = {f.name for f in dataclasses.fields(config)}
    body = [name for name in config.__dict__["__annotations__"] if name in fields]  # in the script's order
    assert [d for d in dict.fromkeys(a.dest for a in build_parser(config)._actions) if d in fields] == body
    assert list(config_to_dict(config())) == body


def _fails(capsys, cls, argv, text):
    with pytest.raises(SystemExit) as exit_:
        parse_config(cls, argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and text in err and err.strip().count("\n") == 0, err


@pytest.mark.parametrize(("argv", "text"), [
    (["--checkpoints", "none", "--query-dir", "q"], "--query-dir q: expected with at least one checkpoint"),
    (["--checkpoints", "a.pt", "--submissions", "x.csv", "--query-dir", "q"], "and no --submissions"),
    (["--checkpoints", "a.pt", "b.pt", "--weights", "1", "--query-dir", "q"], "one weight per checkpoint"),
    (["--rerank", "fancy", "--query-dir", "q"], "--rerank: expected one of none, k_reciprocal, hard"),
    (["--topk", "0", "--query-dir", "q"], "--topk 0: expected a number of at least 1"),
    (["--ranked-lists", "-1"], "--ranked-lists -1: expected a number of at least 0"),
    (["--sets", "train"], "--sets: expected one of test, challenge"),
    (["--fusion", "dissimilarity", "--checkpoints", "a.pt", "b.pt", "--weights", "1", "1"], "it weighs the models"),
])
def test_predict_values_are_checked_where_they_enter(argv, text, capsys):
    _fails(capsys, importlib.import_module("predict").Config, argv, text)


def test_train_val_rerank_is_checked_at_parse_not_after_the_first_epoch(capsys):
    _fails(capsys, importlib.import_module("train").Config, ["--val-rerank", "fancy"],
           "--val-rerank: expected one of none, k_reciprocal, hard, got 'fancy'")
    assert parse_config(importlib.import_module("train").Config, ["--val-rerank", "hard"]).val_rerank == ("hard",)


def test_evaluate_values_are_checked_where_they_enter(capsys):
    config = importlib.import_module("evaluate").Config
    _fails(capsys, config, ["--rerank", "none", "fancy"], "--rerank: expected one of none, k_reciprocal, hard")
    _fails(capsys, config, ["--split", "folz"], "--split: expected one of test, fold, folds")
    _fails(capsys, config, ["--k1", "0"], "--k1 0: expected a number of at least 1")
