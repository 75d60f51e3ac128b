"""The letterbox resize: bilinear as OpenCV's INTER_LINEAR_EXACT (the original's), checked against its formula."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from clipreid.errors import UserError
from clipreid.transforms import letterbox_array, resize_uint8


def opencv_linear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """OpenCV's bilinear resize written out: source x = (x + 0.5) * in/out - 0.5, clamped to the image, 2x2 taps."""
    h, w = image.shape[:2]

    def taps(out: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = (np.arange(out) + 0.5) * (size / out) - 0.5
        i0 = np.floor(src).astype(int)
        frac = src - i0
        frac[i0 < 0] = 0.0
        i0 = np.clip(i0, 0, size - 1)
        frac[i0 >= size - 1] = 0.0
        return i0, np.minimum(i0 + 1, size - 1), frac

    y0, y1, fy = taps(height, h)
    x0, x1, fx = taps(width, w)
    img = image.astype(np.float64)
    top = img[y0][:, x0] * (1 - fx)[None, :, None] + img[y0][:, x1] * fx[None, :, None]
    bottom = img[y1][:, x0] * (1 - fx)[None, :, None] + img[y1][:, x1] * fx[None, :, None]
    out = top * (1 - fy)[:, None, None] + bottom * fy[:, None, None]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("src, dst", [((90, 30), (128, 43)), ((200, 120), (64, 38)), ((37, 53), (37, 53)),
                                      ((50, 17), (123, 45)), ((7, 5), (128, 91))])
def test_bilinear_is_opencvs_formula(src, dst):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (*src, 3), dtype=np.uint8)
    ours = resize_uint8(image, dst, "bilinear")
    ref = opencv_linear(image, *dst)
    assert ours.shape == (*dst, 3) and ours.dtype == np.uint8
    assert np.abs(ours.astype(int) - ref.astype(int)).max() <= 1


def test_bilinear_has_no_antialiasing_and_bicubic_is_pillows():
    stripes = np.zeros((8, 8, 3), dtype=np.uint8)
    stripes[:, ::2] = 255  # 1-px stripes halved: 2x2 taps at half-pixel centres average neighbours exactly
    assert (resize_uint8(stripes, (8, 4), "bilinear") == 128).all()
    image = np.random.default_rng(1).integers(0, 256, (40, 20, 3), dtype=np.uint8)
    pil = np.asarray(Image.fromarray(image).resize((10, 20), Image.Resampling.BICUBIC))
    assert np.array_equal(resize_uint8(image, (20, 10), "bicubic"), pil)
    with pytest.raises(UserError, match="interpolation must be bilinear or bicubic"):
        resize_uint8(image, (20, 10), "nearest")


def test_letterbox_geometry_is_the_same_for_both_interpolations():
    image = np.full((90, 30, 3), 200, dtype=np.uint8)
    boxes = [letterbox_array(image, (128, 64), m) for m in ("bilinear", "bicubic")]
    for boxed in boxes:
        cols = np.where(boxed.any(axis=(0, 2)))[0]
        assert (cols[0], cols[-1]) == (10, 52)  # 43 columns, (64 - 43) // 2 = 10 on the left
        assert boxed[:, cols[0]:cols[-1] + 1].min() == 200  # a flat image stays flat
        assert boxed.shape == (128, 64, 3) and boxed.any(axis=(1, 2)).all()  # the full height is used
