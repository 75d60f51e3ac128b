"""The encoder builders (open_clip, timm, tiny) and the image transforms: letterbox and batched augmentation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from clipreid.errors import UserError
from clipreid.model import DEFAULT_LOGIT_SCALE, ModelSpec, build_encoder
from clipreid.transforms import AugmentConfig, augment_pairs, letterbox, load_image, normalize, to_uint8_tensor


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


def test_logit_scale_is_clamped_at_100():
    enc = build_encoder(ModelSpec("tiny-vit", "none"))
    with torch.no_grad():
        enc.logit_scale.fill_(10.0)
    assert enc.scale().item() == pytest.approx(100.0)
    enc.clamp_logit_scale()
    assert enc.logit_scale.item() == pytest.approx(math.log(100))


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


def test_letterbox_keeps_aspect_and_pads_with_zeros(tmp_path):
    tall = Image.new("RGB", (30, 90), (200, 100, 50))  # 1:3, into a 128x64 (h x w) box -> 42 x 128 centred
    boxed = np.array(letterbox(tall, (128, 64)))
    assert boxed.shape == (128, 64, 3)
    cols = np.where(boxed.any(axis=(0, 2)))[0]
    assert boxed[:, : cols[0]].max() == 0 and boxed[:, cols[-1] + 1:].max() == 0
    assert cols[-1] - cols[0] + 1 == round(30 * 128 / 90)
    assert abs(cols[0] - (64 - cols[-1] - 1)) <= 1  # centred
    tall.save(tmp_path / "a.jpeg")
    assert load_image(tmp_path / "a.jpeg", (128, 64)).shape == (3, 128, 64)
    assert torch.equal(to_uint8_tensor(tall, (128, 64)), torch.from_numpy(boxed).permute(2, 0, 1))
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
