"""Checkpoints: what they carry (preprocessing, an offline-rebuildable architecture), the original CLIP-ReIdent and
2023 layouts, and one-line errors for every kind of bad file."""

from __future__ import annotations

import json
import math
import socket

import numpy as np
import pytest
import torch
from torch import nn

import train
from clipreid.checkpoint import read_checkpoint
from clipreid.errors import UserError
from clipreid.features import embed
from clipreid.model import IMAGENET_MEAN, OPENAI_MEAN, ModelSpec, build_encoder
from clipreid.trainer import train as run_training
from clipreid.transforms import normalize, to_uint8_tensor
from clipreid.weights import encoder_checkpoint, load_encoder


def _images(n: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (50 + 7 * i, 23 + 3 * i, 3), dtype=np.uint8) for i in range(n)]


def _features(encoder, images, size, mean, std, interpolation) -> torch.Tensor:
    x = normalize(torch.stack([to_uint8_tensor(im, size, interpolation) for im in images]), mean, std)
    with torch.no_grad():
        return torch.nn.functional.normalize(encoder.eval()(x), dim=-1)


def test_trained_checkpoint_carries_and_applies_its_preprocessing(synthetic_small, tmp_path):
    mean, std = (0.3, 0.4, 0.5), (0.2, 0.3, 0.4)
    cfg = train.Config(data_dir=synthetic_small, output_dir=tmp_path, model="tiny-vit", pretrained="none", epochs=2,
                       stop_after=1, batch_size=16, lr=2e-3, progress=False, device="cpu", zero_shot=False,
                       num_workers=0, validation="none", img_size=(32, 16), mean=mean, std=std,
                       interpolation="bicubic")
    run_dir = run_training(cfg)
    run_training(train.Config(**{**cfg.__dict__, "resume": run_dir / "last.pt", "stop_after": None}))
    for name in ("best.pt", "last.pt"):
        stored = read_checkpoint(run_dir / name)
        assert stored["preprocess"] == {"image_size": [32, 16], "mean": list(mean), "std": list(std),
                                        "interpolation": "bicubic"}
        assert stored["epoch"] == 2
    encoder = load_encoder(run_dir / "best.pt")
    assert (encoder.image_size, encoder.mean, encoder.std, encoder.interpolation) == ((32, 16), mean, std, "bicubic")
    # embed letterboxes and normalises as training did
    got, _ = embed(run_dir / "best.pt", _images(), device="cpu", progress=False)
    want = _features(encoder, _images(), (32, 16), mean, std, "bicubic")
    torch.testing.assert_close(got, want)
    other = _features(encoder, _images(), (32, 16), OPENAI_MEAN, (0.27, 0.26, 0.28), "bilinear")
    assert not torch.allclose(got, other, atol=1e-4)


def test_a_checkpoint_without_its_preprocessing_is_refused_in_one_line(tmp_path):
    # train.py always stores the preprocessing; no release wrote a checkpoint without it, so none is guessed
    enc = build_encoder(ModelSpec("tiny-vit", "none"))
    torch.save({"model": enc.state_dict(), "model_spec": enc.spec.to_dict()}, tmp_path / "cut.pt")
    with pytest.raises(UserError, match="no 'preprocess' entry") as err:
        load_encoder(tmp_path / "cut.pt")
    assert "\n" not in str(err.value)


def test_tag_preprocessing_of_a_weights_file_timm(tmp_path, capsys):
    import timm

    name = "vit_small_patch16_224"  # timm's default tag normalises with 0.5; its DINO weights with ImageNet's
    weights = timm.create_model(name, pretrained=False, num_classes=0, img_size=(32, 32))
    torch.save(weights.state_dict(), tmp_path / "vit.pth")
    plain = build_encoder(ModelSpec(name, str(tmp_path / "vit.pth"), img_size=(32, 32)))
    assert plain.mean == pytest.approx((0.5, 0.5, 0.5)) and "set pretrained_tag" in capsys.readouterr().out
    tagged = build_encoder(ModelSpec(name, str(tmp_path / "vit.pth"), img_size=(32, 32), pretrained_tag="dino"))
    assert tagged.mean == pytest.approx(IMAGENET_MEAN) and tagged.std == pytest.approx((0.229, 0.224, 0.225))
    torch.testing.assert_close(tagged.backbone.state_dict()["pos_embed"], weights.state_dict()["pos_embed"])
    torch.save(encoder_checkpoint(tagged), tmp_path / "best.pt")
    assert load_encoder(tmp_path / "best.pt").mean == pytest.approx(IMAGENET_MEAN)
    with pytest.raises(UserError, match="pretrained_tag: timm has no 'nonsense'"):
        build_encoder(ModelSpec(name, str(tmp_path / "vit.pth"), pretrained_tag="nonsense"))
    override = build_encoder(ModelSpec(name, str(tmp_path / "vit.pth"), img_size=(32, 32), pretrained_tag="dino",
                                       mean=(0.1, 0.2, 0.3), std=(0.2, 0.2, 0.2)))
    assert override.mean == pytest.approx((0.1, 0.2, 0.3)) and override.std == pytest.approx((0.2, 0.2, 0.2))


def test_open_clip_tag_preprocessing_survives_the_rebuild(tmp_path, monkeypatch):
    """PE-Core's 'meta' weights use mean/std 0.5; a bare rebuild would say OpenAI's: the checkpoint decides."""
    import open_clip.factory

    monkeypatch.setattr(open_clip.factory, "download_pretrained", lambda cfg, cache_dir=None: "unused.bin")
    monkeypatch.setattr(open_clip.factory, "load_checkpoint", lambda *a, **k: None)  # random weights, no download
    enc = build_encoder(ModelSpec("PE-Core-T-16-384", "meta", img_size=(64, 64)))
    assert enc.mean == pytest.approx((0.5, 0.5, 0.5)) and enc.image_size == (64, 64)
    torch.save(encoder_checkpoint(enc), tmp_path / "pe.pt")
    loaded = load_encoder(tmp_path / "pe.pt")
    assert loaded.mean == pytest.approx((0.5, 0.5, 0.5)) and loaded.image_size == (64, 64)
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(loaded(x), enc.eval()(x))


def test_local_dir_checkpoint_rebuilds_offline(tmp_path, monkeypatch):
    import open_clip

    cfg = {"embed_dim": 32, "quick_gelu": True,
           "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16},
           "text_cfg": {"context_length": 8, "vocab_size": 100, "width": 32, "heads": 2, "layers": 1}}
    folder = tmp_path / "mymodel"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": cfg, "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}))
    torch.save(open_clip.model.CLIP(**cfg).state_dict(), folder / "open_clip_pytorch_model.bin")
    enc = build_encoder(ModelSpec(f"local-dir:{folder}", "none"))
    assert enc.mean == pytest.approx((0.5, 0.5, 0.5)) and enc.feature_dim == 64
    torch.save(encoder_checkpoint(enc), tmp_path / "best.pt")
    for f in folder.iterdir():
        f.unlink()
    folder.rmdir()

    def no_network(*args, **kwargs):
        raise OSError("network unreachable (test)")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    loaded = load_encoder(tmp_path / "best.pt")
    assert loaded.mean == pytest.approx((0.5, 0.5, 0.5)) and loaded.std == pytest.approx((0.25, 0.25, 0.25))
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(loaded(x), enc.eval()(x))


# Small open_clip configs with the families' rules: OpenAI weights (QuickGELU), LAION weights (GELU), ViT-H's
# head width of 80 (width 320: 4 heads of 80, where the usual 64 would make 5), a ModifiedResNet.
TINY_VIT = {"image_size": 64, "layers": 2, "width": 128, "patch_size": 16}
TEXT = {"text_cfg": {"context_length": 8, "vocab_size": 32, "width": 32, "heads": 1, "layers": 1}}
TOWERS = {
    "ViT-T-16-quickgelu": {"embed_dim": 64, "quick_gelu": True, "vision_cfg": TINY_VIT, **TEXT},
    "ViT-T-16": {"embed_dim": 64, "vision_cfg": TINY_VIT, **TEXT},
    "ViT-T80-16": {"embed_dim": 64, "vision_cfg": {**TINY_VIT, "width": 320, "head_width": 80}, **TEXT},
    "RN-T": {"embed_dim": 32, "vision_cfg": {"image_size": 64, "layers": [1, 2, 1, 1], "width": 16}, **TEXT},
}


@pytest.fixture
def tiny_towers(monkeypatch):
    """The TOWERS configs registered with open_clip, as open_clip.add_model_config would (undone after the test)."""
    import open_clip.factory

    for name, cfg in TOWERS.items():
        monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, name, cfg)


def _original_file(name: str, path) -> nn.Module:
    """An original CLIP-ReIdent weights file of ``name`` with random weights: the tower the original builds
    (open_clip.create_model(name).visual, projection removed), saved as its bare state dict under model."""
    import open_clip

    torch.manual_seed(0)
    visual = open_clip.create_model(name, pretrained=None).visual
    if isinstance(getattr(visual, "proj", None), nn.Parameter):
        visual.proj = None
    with torch.no_grad():
        for p in visual.parameters():
            p.normal_(0, 0.1)
        for b in visual.buffers():  # a ResNet's batch-norm statistics: not the identity
            b.copy_(torch.rand_like(b.float()).to(b.dtype) + 0.5 if b.is_floating_point() else b)
    state = {"model.logit_scale": torch.tensor(math.log(42.0))}
    state.update({f"model.visual.{k}": v for k, v in visual.state_dict().items()})
    torch.save(state, path)
    return visual.eval()


@pytest.mark.parametrize("name", ["ViT-T-16-quickgelu", "ViT-T-16", "ViT-T80-16", "RN-T"])
def test_original_files_of_each_family_give_the_originals_features(tiny_towers, tmp_path, name):
    original = _original_file(name, tmp_path / "weights_e3.pth")
    enc = load_encoder(tmp_path / "weights_e3.pth", model=name)
    assert enc.image_size == (64, 64) and enc.interpolation == "bilinear" and enc.spec.name == name
    assert enc.mean == pytest.approx(OPENAI_MEAN) and enc.scale().item() == pytest.approx(42.0, rel=1e-5)
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(enc(x), original(x), atol=1e-4, rtol=0)
        torch.save(encoder_checkpoint(enc), tmp_path / "again.pt")  # a clipreid checkpoint of it round-trips
        torch.testing.assert_close(load_encoder(tmp_path / "again.pt")(x), enc(x))


def test_an_original_resnet_file_needs_no_name(tiny_towers, tmp_path):
    original = _original_file("RN-T", tmp_path / "weights_e3.pth")
    enc = load_encoder(tmp_path / "weights_e3.pth")  # a ResNet's pool heads are 64 wide in every open_clip config
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(enc(x), original(x), atol=1e-4, rtol=0)


@pytest.mark.parametrize("name, model, message", [
    ("ViT-T-16-quickgelu", None, "do not say its activation or head count.*--checkpoint-model ViT-T-16-quickgelu "
                                 r"\(QuickGELU: OpenAI weights.* or ViT-T-16 \(GELU: LAION"),
    ("ViT-T-16", None, "--checkpoint-model ViT-T-16-quickgelu"),
    ("ViT-T80-16", "ViT-T-16", "does not fit .*width 128 in its config, 320 in the file; names that fit: ViT-T80-16"),
    ("ViT-T-16", "RN-T", "does not fit .*it is not an open_clip ViT"),
    ("RN-T", "ViT-T-16", "does not fit .*it is not an open_clip ResNet; names that fit: RN-T"),
    ("ViT-T-16", "no-such-model", "not an open_clip model name; names that fit: ViT-T-16, ViT-T-16-quickgelu"),
])
def test_ambiguous_or_misnamed_original_files_are_refused_in_one_line(tiny_towers, tmp_path, name, model, message):
    _original_file(name, tmp_path / "weights_e3.pth")
    with pytest.raises(UserError, match=message) as err:
        load_encoder(tmp_path / "weights_e3.pth", model=model)
    assert "\n" not in str(err.value) and "weights_e3.pth" in str(err.value)


def test_vit_h_and_l_files_say_which_names_fit():
    """ViT-H-14's shapes (on the meta device: no memory) are rebuilt with its head width of 80 once named; ViT-L-14's
    refusal names the OpenAI (QuickGELU) and the LAION (GELU) configs."""
    import open_clip
    from open_clip.model import _build_vision_tower

    from clipreid.weights import _resolve_open_clip_tower

    for name, heads in (("ViT-H-14", 80), ("ViT-L-14", 64)):
        cfg = open_clip.get_model_config(name)
        with torch.device("meta"):
            visual = _build_vision_tower(cfg["embed_dim"], cfg["vision_cfg"]).state_dict()
        del visual["proj"]
        named = f"--checkpoint-model {name}-quickgelu \\(QuickGELU: OpenAI.* or {name} \\(GELU"
        with pytest.raises(UserError, match=named):
            _resolve_open_clip_tower(visual, "weights_e3.pth", None)
        _, cfg = _resolve_open_clip_tower(visual, "weights_e3.pth", name)
        assert cfg["vision_cfg"].get("head_width", 64) == heads and not cfg.get("quick_gelu")
        _, cfg = _resolve_open_clip_tower(visual, "weights_e3.pth", f"{name}-quickgelu")
        assert cfg["vision_cfg"].get("head_width", 64) == heads and cfg["quick_gelu"]


def test_2023_timm_checkpoint_needs_and_uses_its_model_name(tmp_path):
    import timm

    torch.manual_seed(0)
    net = timm.create_model("mobilenetv3_small_050", pretrained=False)  # with its ImageNet head, as 2023 saved it
    state = {f"model.{k}": v for k, v in net.state_dict().items()}
    torch.save(state, tmp_path / "weights_e8.pth")
    with pytest.raises(UserError, match="--checkpoint-model NAME"):
        load_encoder(tmp_path / "weights_e8.pth")
    enc = load_encoder(tmp_path / "weights_e8.pth", model="mobilenetv3_small_050")
    assert enc.mean == pytest.approx(IMAGENET_MEAN) and enc.interpolation == "bilinear"
    net.reset_classifier(0)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(enc(x), net.eval()(x))
        assert enc(x).shape == (2, enc.feature_dim)


def _bad_files(tmp_path):
    enc = build_encoder(ModelSpec("tiny-vit", "none"))
    good = tmp_path / "good.pt"
    torch.save(encoder_checkpoint(enc), good)
    data = good.read_bytes()
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "corrupt.pt").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    torch.save({"encoder": {"w": torch.zeros(2)}}, tmp_path / "foreign.pt")
    torch.save({"model": {}, "model_spec": {}, "evil": train.Config()}, tmp_path / "pickled.pt")
    state = encoder_checkpoint(enc)
    state["model"]["backbone.conv1.weight"] = torch.zeros(64, 3, 8, 8)
    torch.save(state, tmp_path / "mismatched.pt")
    state = encoder_checkpoint(enc)
    state["model_spec"]["name"] = "nonexistent-model-xyz"
    torch.save(state, tmp_path / "unknown_model.pt")


@pytest.mark.parametrize("name, message", [
    ("missing.pt", "not found"),
    ("empty.pt", "empty \\(0 bytes\\)"),
    ("truncated.pt", "truncated"),
    ("corrupt.pt", "not a PyTorch file, or it is corrupt"),
    ("foreign.pt", "neither a clipreid checkpoint"),
    ("pickled.pt", "pickled Python objects"),
    ("mismatched.pt", "does not fit tiny-vit: backbone.conv1.weight is \\[64, 3, 8, 8\\] in the file"),
])
def test_bad_checkpoints_fail_in_one_line(tmp_path, name, message):
    _bad_files(tmp_path)
    with pytest.raises(UserError, match=message) as err:
        load_encoder(tmp_path / name)
    text = str(err.value)
    assert "\n" not in text and name in text and "weights_only" not in text
