"""The encoder builders (open_clip, timm, tiny) and the image transforms: letterbox and batched augmentation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from clipreid.errors import UserError
from clipreid.model import DEFAULT_LOGIT_SCALE, ModelSpec, build_architecture, build_encoder
from clipreid.transforms import AugmentConfig, augment_pairs, letterbox_array, load_image, normalize, to_uint8_tensor


def test_tiny_vit_features_and_projection():
    with_proj = build_encoder(ModelSpec("tiny-vit", "none", remove_proj=False))
    without = build_encoder(ModelSpec("tiny-vit", "none"))
    x = torch.randn(3, 3, 128, 64)
    assert with_proj(x).shape == (3, 64) and without(x).shape == (3, without.feature_dim)
    assert without.image_size == (128, 64)
    assert without.scale().item() == pytest.approx(DEFAULT_LOGIT_SCALE, rel=1e-5)


def test_open_clip_architecture_without_weights():
    enc = build_encoder(ModelSpec("ViT-B-32", "none", img_size=(64, 64)))
    assert enc.feature_dim == 768  # the projection (768 -> 512) was removed
    assert enc(torch.randn(1, 3, 64, 64)).shape == (1, 768)
    assert enc.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))


def test_timm_model_with_its_own_normalisation():
    enc = build_encoder(ModelSpec("resnet18", "none", img_size=(128, 64)))
    assert enc.mean == pytest.approx((0.485, 0.456, 0.406)) and enc.feature_dim == 512
    assert enc(torch.randn(2, 3, 128, 64)).shape == (2, 512)


def test_logit_scale_is_trained_from_100():
    """OpenAI weights start at exactly ln 100: unclamped, the loss has a gradient there and steps move it."""
    from clipreid.loss import info_nce
    from clipreid.trainer import build_optimizer, optimizer_update

    enc = build_encoder(ModelSpec("tiny-vit", "none"))
    with torch.no_grad():
        enc.logit_scale.fill_(math.log(100.0))
    torch.manual_seed(0)
    x = torch.randn(8, 3, 128, 64)
    anchors, positives = enc(x).chunk(2)
    info_nce(anchors, positives, enc.scale()).backward()
    assert enc.logit_scale.grad is not None and enc.logit_scale.grad.abs().item() > 1e-6
    optimizer = build_optimizer([enc], lr=1e-2, weight_decay=0.01)
    for _ in range(3):
        optimizer_update(optimizer, enc)
        anchors, positives = enc(x).chunk(2)
        info_nce(anchors, positives, enc.scale()).backward()
    assert abs(enc.logit_scale.item() - math.log(100.0)) > 1e-3
    assert enc.scale().item() == pytest.approx(math.exp(enc.logit_scale.item()), rel=1e-6)  # no clamp


FEATURE_MODELS = [
    ("mobilenetv3_small_050", (32, 32)), ("mobilenetv4_conv_small", (32, 32)), ("ghostnet_050", (32, 32)),
    ("lcnet_050", (32, 32)), ("hgnetv2_b0", (32, 32)), ("tiny-vit", (32, 32)), ("open_clip-resnet", (64, 64)),
    ("open_clip-vit", (64, 64)),
]
# small open_clip towers built from a model config, as checkpoints rebuild them (a full RN50/ViT-B is too slow here)
SMALL_OPEN_CLIP = {
    "open_clip-resnet": {"embed_dim": 32, "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16}},
    "open_clip-vit": {"embed_dim": 32, "quick_gelu": True,
                      "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16}},
}


@pytest.mark.parametrize("name, size", FEATURE_MODELS)
def test_feature_size_is_measured_and_trains(name, size):
    """Attributes lie for several families (num_features, output_dim): the measured size must fit the features
    and a step with infonce + id + triplet must run."""
    from clipreid.loss import ReIDLoss

    if name in SMALL_OPEN_CLIP:
        enc = build_architecture(ModelSpec(name, "none"), {"kind": "open_clip", "model_cfg": SMALL_OPEN_CLIP[name]})
    else:
        enc = build_encoder(ModelSpec(name, "none", img_size=size))
    enc.train()
    x = torch.randn(8, 3, *size)
    features = enc(x)
    assert features.shape == (8, enc.feature_dim)
    assert enc.training  # measuring restored the mode
    loss_fn = ReIDLoss(("infonce", "id", "triplet"), feature_dim=enc.feature_dim, num_classes=4)
    fa, fp = features.chunk(2)
    loss, _ = loss_fn(fa, fp, torch.arange(4), enc.scale())
    loss.backward()
    assert math.isfinite(loss.item()) and enc.logit_scale.grad is not None


def test_open_clip_resnet_refuses_what_it_cannot_do():
    with pytest.raises(UserError, match="square inputs of a multiple of 32") as err:
        build_encoder(ModelSpec("RN50", "none", img_size=(128, 64)))
    assert "download" not in str(err.value) and "fetch" not in str(err.value)
    with pytest.raises(UserError, match="grad_checkpointing"):
        build_encoder(ModelSpec("RN50", "none", grad_checkpointing=True))


@pytest.mark.parametrize("spec, message", [
    (ModelSpec("ViT-L-14-quickgelo", "none"), "did you mean ViT-L-14-quickgelu"),
    (ModelSpec("ViT-B-32", "nonsense"), "no 'nonsense' weights for ViT-B-32; known tags: openai"),
    (ModelSpec("resnet18", "openai"), "timm has no 'openai' weights for resnet18"),
    (ModelSpec("tiny-vit", "openai"), "no pretrained weights"),
])
def test_model_errors_are_one_line(spec, message):
    with pytest.raises(UserError, match=message) as err:
        build_encoder(spec)
    assert "\n" not in str(err.value)


def test_weights_file_that_does_not_fit_is_one_line(tmp_path):
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "w.bin")
    with pytest.raises(UserError, match="cannot load weights file"):
        build_encoder(ModelSpec("ViT-B-32", str(tmp_path / "w.bin")))


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_letterbox_keeps_aspect_and_pads_with_zeros(tmp_path, interpolation):
    tall = Image.new("RGB", (30, 90), (200, 100, 50))  # 1:3, into a 128x64 (h x w) box -> 42 x 128 centred
    boxed = letterbox_array(np.asarray(tall), (128, 64), interpolation)
    assert boxed.shape == (128, 64, 3)
    cols = np.where(boxed.any(axis=(0, 2)))[0]
    assert boxed[:, : cols[0]].max() == 0 and boxed[:, cols[-1] + 1:].max() == 0
    assert cols[-1] - cols[0] + 1 == round(30 * 128 / 90)
    assert abs(cols[0] - (64 - cols[-1] - 1)) <= 1  # centred
    tall.save(tmp_path / "a.jpeg")
    assert load_image(tmp_path / "a.jpeg", (128, 64), interpolation).shape == (3, 128, 64)
    assert torch.equal(to_uint8_tensor(tall, (128, 64), interpolation), torch.from_numpy(boxed).permute(2, 0, 1))
    (tmp_path / "bad.jpeg").write_bytes(b"not an image")
    with pytest.raises(UserError, match="cannot read image .*bad.jpeg"):
        load_image(tmp_path / "bad.jpeg", (128, 64))


def test_flip_is_paired_and_normalisation_matches():
    torch.manual_seed(0)
    a = torch.randint(0, 256, (64, 3, 8, 6), dtype=torch.uint8)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    fa, fp = augment_pairs(a, a.clone(), AugmentConfig(), mean, std, torch.Generator().manual_seed(1))
    assert torch.equal(fa, fp)  # same images, same flip decision
    plain = normalize(a, mean, std)
    flipped = torch.tensor([torch.equal(fa[i], plain[i].flip(-1)) for i in range(64)])
    kept = torch.tensor([torch.equal(fa[i], plain[i]) for i in range(64)])
    assert (flipped | kept).all() and 15 < flipped.sum() < 49


def test_sharpen_and_erasing_are_per_image_and_bounded():
    torch.manual_seed(0)
    a = torch.randint(0, 256, (200, 3, 32, 16), dtype=torch.uint8)
    cfg = AugmentConfig(flip=False, sharpen=False, random_erasing=True)
    fa, _ = augment_pairs(a, a.clone(), cfg, (0.5,) * 3, (0.5,) * 3, torch.Generator().manual_seed(3))
    plain = normalize(a, (0.5,) * 3, (0.5,) * 3)
    erased = (fa != plain).any(dim=(1, 2, 3))
    assert 60 < erased.sum() < 140  # p = 0.5
    frac = ((fa == 0) & (plain != 0)).all(1).float().mean(dim=(1, 2))[erased]
    assert frac.min() > 0.005 and frac.max() < 0.34  # area 2-33% of the image
    cfg = AugmentConfig(flip=False, sharpen=True)
    sa, _ = augment_pairs(a, a.clone(), cfg, (0.5,) * 3, (0.5,) * 3, torch.Generator().manual_seed(3))
    changed = (sa != plain).any(dim=(1, 2, 3))
    assert 60 < changed.sum() < 140
    # albumentations' kernel (1-a)·identity + a·[[-1,-1,-1],[-1,8+l,-1],[-1,-1,-1]] sums to 1 - a(1 - l): a flat
    # image keeps between 75% and 100% of its value and stays flat
    flat = torch.full((1, 3, 8, 8), 200, dtype=torch.uint8)
    for seed in range(5):
        s, _ = augment_pairs(flat, flat, cfg, (0.0,) * 3, (1.0,) * 3, torch.Generator().manual_seed(seed))
        assert s.std() < 1e-6 and 0.75 * 200 / 255 - 0.01 <= s.max() <= 200 / 255 + 1e-6


@pytest.mark.parametrize("error, message", [
    (RuntimeError("size mismatch in the attention pool"), "cannot build ViT-B-32: size mismatch in the attention pool"),
    (ConnectionError("Max retries exceeded"), "cannot fetch the 'openai' weights of ViT-B-32 \\(Max retries"),
])
def test_create_model_failure_is_a_download_failure_only_when_it_is_one(monkeypatch, error, message):
    import open_clip

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(open_clip, "create_model", fail)
    with pytest.raises(UserError, match=message) as err:
        build_encoder(ModelSpec("ViT-B-32", "openai"))
    assert "\n" not in str(err.value)
