"""Test inputs written in the real formats: a random-weight tiny checkpoint, a random photo-like crop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from clipreid.checkpoint import save_checkpoint
from clipreid.model import ModelSpec, build_encoder
from clipreid.weights import encoder_checkpoint


def random_checkpoint(path: Path, seed: int) -> Path:
    """A ``tiny-vit`` checkpoint with weights drawn from ``seed``, written to ``path`` (parents made)."""
    torch.manual_seed(seed)
    encoder = build_encoder(ModelSpec("tiny-vit", "none"))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, encoder_checkpoint(encoder))
    return path


def random_crop(path: Path, seed: int) -> None:
    """A player-crop-sized image (40-90 x 20-50 px) of one noisy colour drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    h, w = int(rng.integers(40, 90)), int(rng.integers(20, 50))
    base = rng.integers(0, 256, size=3)
    pixels = np.clip(base + rng.normal(0, 40, size=(h, w, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
