"""The presets in configs/ load and name buildable models; the README's recipe table is train.py's defaults; every
flag the README shows for a script is a field of that script's config."""

from __future__ import annotations

import importlib
import json
import re
import typing
from pathlib import Path

import pytest
import torch

from clipreid.config import build_parser, convert_value, parse_config
from train import Config as TrainConfig

ROOT = Path(__file__).resolve().parents[1]
PRESETS = sorted((ROOT / "configs").glob("*.json"))
SCRIPTS = ("download_data.py", "preprocess_data.py", "train.py", "evaluate.py", "predict.py")
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def test_presets_exist():
    assert {p.stem for p in PRESETS} >= {"clip_reident_2022", "clip_reident_2022_final", "eva_l_336_2023",
                                         "eva02_l_448_2023", "beitv2_l_224_2023", "resnet50_scratch_2023",
                                         "eva_giant_336_2023"}


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_preset_says_what_it_is_and_its_precision(path, monkeypatch, capsys):
    given = json.loads(path.read_text())
    assert isinstance(given.get("description"), str) and len(given["description"]) > 80
    assert given["precision"] == "fp16"  # the original's fp16 with a GradScaler, not the bf16 default
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit):  # --help after --config: the preset's description and values as the defaults
        parse_config(TrainConfig, ["--config", f"configs/{path.name}", "--help"], prog="train.py")
    shown = " ".join(capsys.readouterr().out.split())
    assert " ".join(given["description"].split()[:12]) in shown
    assert f"[int; default: {given['epochs']}]" in shown  # not train.py's 4 for the 2023 presets
    assert "[auto|bf16|fp16|fp32; default: fp16]" in shown  # not train.py's auto


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_preset_loads_from_the_repo_root_and_names_a_model_that_exists(path, monkeypatch):
    monkeypatch.chdir(ROOT)
    cfg = parse_config(TrainConfig, ["--config", f"configs/{path.name}", "--seed", "7"])
    assert cfg.seed == 7  # later flags override the preset
    given = json.loads(path.read_text())
    defaults = TrainConfig()
    for name in vars(defaults):  # fields the preset leaves out keep their defaults
        if name not in given and name != "seed":
            assert getattr(cfg, name) == getattr(defaults, name), name
    if cfg.model.startswith("ViT-"):  # open_clip: the name and tag are known (a ViT-L build is too slow here)
        import open_clip

        assert (cfg.model, cfg.pretrained) in open_clip.list_pretrained()
        return
    import timm

    from clipreid.model import ModelSpec, build_encoder

    if cfg.pretrained != "none":
        assert f"{cfg.model}.{cfg.pretrained}" in timm.list_pretrained()
    with torch.device("meta"):  # the architecture only, without memory or weights
        encoder = build_encoder(ModelSpec(cfg.model, "none", img_size=cfg.img_size))
    assert encoder.feature_dim > 0


def test_presets_say_the_published_settings(monkeypatch):
    monkeypatch.chdir(ROOT)

    def load(stem: str) -> TrainConfig:
        return parse_config(TrainConfig, ["--config", f"configs/{stem}.json"])

    recipe, final = load("clip_reident_2022"), load("clip_reident_2022_final")
    assert (recipe.model, recipe.pretrained, recipe.validation, final.validation) == \
        ("ViT-L-14-quickgelu", "openai", "test", "none")
    assert (recipe.epochs, recipe.batch_size, recipe.lr, recipe.clip_grad, recipe.decay_all, recipe.precision) == \
        (4, 16, 4e-5, None, True, "fp16")
    for stem in ("eva_giant_336_2023", "eva_l_336_2023", "eva02_l_448_2023", "beitv2_l_224_2023"):
        cfg = load(stem)
        assert (cfg.epochs, cfg.batch_size, cfg.sharpen, cfg.random_erasing) == (8, 32, True, True), stem
        assert (cfg.mean, cfg.std) == IMAGENET, stem
        assert cfg.validation == "test", stem  # the 2023 winners held the test split out and kept the best epoch
    assert (load("eva_giant_336_2023").model, load("eva_giant_336_2023").pretrained) == \
        ("eva_giant_patch14_336", "clip_ft_in1k")
    cnn = load("resnet50_scratch_2023")
    assert (cnn.model, cnn.pretrained, cnn.epochs, cnn.batch_size, cnn.lr, cnn.flip, cnn.img_size) == \
        ("resnet50", "none", 50, 64, 4e-4, False, (224, 224))
    assert (cnn.mean, cnn.std, cnn.sharpen, cnn.random_erasing, cnn.validation) == (*IMAGENET, True, True, "test")

    def about(stem: str) -> str:
        return json.loads((ROOT / "configs" / f"{stem}.json").read_text())["description"]

    assert '"4x8 or 4x4"' in about("beitv2_l_224_2023")  # where their report is ambiguous
    assert "98.44" in about("clip_reident_2022_final") and "earlier code base (report, section 3.2.1)" in \
        about("clip_reident_2022_final")
    assert "--run-weights best" in about("eva02_l_448_2023")


# --------------------------------------------------------------------------------------------------------------
# the README


README = (ROOT / "README.md").read_text(encoding="utf-8")
RECIPE_HEADER = "| setting | `train.py` field | default |"


def recipe_rows() -> list[tuple[list[str], str]]:
    """(fields, default) of every row of the README's recipe table."""
    lines = README.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(RECIPE_HEADER))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows.append((re.findall(r"`(\w+)`", cells[1]), cells[2].strip("`")))
    return rows


def test_readme_recipe_table_is_train_defaults():
    hints = typing.get_type_hints(TrainConfig)
    defaults = TrainConfig()
    checked = set()
    for fields, text in recipe_rows():
        assert fields, f"a recipe row without a train.py field: {text}"
        for name in fields:
            value = convert_value(text.split(), hints[name], name)  # the cell is the value as a flag takes it
            assert value == getattr(defaults, name), f"README says {name} = {text}, train.py's default is " \
                                                     f"{getattr(defaults, name)!r}"
            checked.add(name)
    assert checked >= {"model", "pretrained", "batch_size", "losses", "label_smoothing", "lr", "lr_end", "scheduler",
                       "poly_power", "warmup_epochs", "weight_decay", "decay_all", "clip_grad", "epochs",
                       "precision", "seed", "flip"}


def readme_script_flags() -> list[tuple[str, str, str]]:
    """(script, flag, line) for every --flag after a script's name in the README's shell code blocks."""
    found = []
    for block in re.findall(r"```(?:bash|sh|shell)\n(.*?)```", README, flags=re.S):
        for line in block.splitlines():
            command = line.split(" #", 1)[0]
            for script in SCRIPTS:
                at = command.find(script)
                if at >= 0:
                    found += [(script, flag, line) for flag in re.findall(r"(?<!\S)(--[a-z][\w-]*)",
                                                                          command[at + len(script):])]
    return found


def test_readme_flags_exist():
    flags = readme_script_flags()
    assert len(flags) > 20  # the parsing found the examples
    known = {script: set(build_parser(importlib.import_module(script[:-3]).Config).known_flags) for script in SCRIPTS}
    unknown = [(script, flag, line) for script, flag, line in flags if flag not in known[script]]
    assert not unknown, unknown


# --------------------------------------------------------------------------------------------------------------
# precision: scores in fp32 as the original extracts features; fp16 training's scaler starts where the original's does


@pytest.fixture
def a_cuda_device(monkeypatch) -> torch.device:
    """A CUDA device with bf16 and AMP, as resolve_precision and GradScaler see it (no GPU needed)."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda.amp.common, "amp_definitely_not_available", lambda: False)
    return torch.device("cuda")


def test_every_scoring_path_defaults_to_fp32_on_a_gpu(a_cuda_device):
    import inspect

    import evaluate
    import predict
    from clipreid.features import embed
    from clipreid.runtime import resolve_precision

    assert resolve_precision(TrainConfig().precision, a_cuda_device) == torch.bfloat16  # training: bf16 (README)
    scoring = {"evaluate.py": evaluate.Config().precision, "predict.py": predict.Config().precision,
               "train.py validation": TrainConfig().eval_precision,
               "embed()": inspect.signature(embed).parameters["precision"].default}
    assert {k: resolve_precision(v, a_cuda_device) for k, v in scoring.items()} == dict.fromkeys(scoring, torch.float32)
    assert resolve_precision("bf16", a_cuda_device) == torch.bfloat16  # reduced precision when asked


def test_fp16_grad_scaler_starts_at_2_to_the_10(a_cuda_device):
    from clipreid.trainer import grad_scaler

    scaler = grad_scaler(torch.float16, a_cuda_device)
    assert scaler.is_enabled() and scaler.get_scale() == 2.0**10  # the original's GradScaler(init_scale=2**10)
    assert not grad_scaler(torch.bfloat16, a_cuda_device).is_enabled()
    assert not grad_scaler(torch.float16, torch.device("cpu")).is_enabled()
