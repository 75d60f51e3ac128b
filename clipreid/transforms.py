"""Image preprocessing: letterbox decoding to uint8, and batched augmentation on whatever device the batch is on.

Images are decoded once into letterboxed ``uint8`` tensors (3, H, W) (optionally cached in memory), and every
random operation of training runs afterwards on whole batches, on the GPU when there is one, so JPEG decoding
and per-sample Python transforms never starve the accelerator. Random decisions come from a ``torch.Generator``
on the CPU, so a batch is augmented identically on any device for a given seed.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .errors import UserError, first_line
from .progress import progress_bar

Interpolation = Literal["bilinear", "bicubic"]  # bilinear: OpenCV's INTER_LINEAR_EXACT, as the original
INTERPOLATIONS: tuple[str, ...] = get_args(Interpolation)


def resize_uint8(image: np.ndarray, size: tuple[int, int], interpolation: str = "bilinear") -> np.ndarray:
    """Resize an HxWx3 uint8 array to ``size`` = (height, width).

    ``bilinear`` is OpenCV's ``INTER_LINEAR_EXACT`` (the original's letterbox): half-pixel centres, 2x2 taps, no
    antialiasing, rounded to the nearest grey level (torch computes it; OpenCV is not needed). ``bicubic`` is
    Pillow's (antialiased when shrinking).
    """
    height, width = size
    if interpolation == "bicubic":
        return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BICUBIC))
    if interpolation != "bilinear":
        raise UserError(f"interpolation must be {' or '.join(INTERPOLATIONS)}, not {interpolation!r}")
    if image.shape[:2] == (height, width):
        return image
    x = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)[None].float()  # a writable copy
    out = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=False)
    return out[0].round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


def letterbox_array(image: np.ndarray, size: tuple[int, int], interpolation: str = "bilinear") -> np.ndarray:
    """Letterbox an HxWx3 uint8 array into ``size`` = (height, width): aspect kept, zero padding, centred
    (a shortest-side resize and centre crop would cut heads and feet off tall player crops)."""
    height, width = size
    h, w = image.shape[:2]
    scale = min(width / w, height / h)
    new_w = max(1, min(width, round(w * scale)))
    new_h = max(1, min(height, round(h * scale)))
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    top, left = (height - new_h) // 2, (width - new_w) // 2
    canvas[top:top + new_h, left:left + new_w] = resize_uint8(image, (new_h, new_w), interpolation)
    return canvas


def _to_tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).contiguous()


def read_image(path: str | Path, size: tuple[int, int], interpolation: str = "bilinear"
               ) -> tuple[torch.Tensor | None, str]:
    """``(image, "")`` with ``path`` decoded and letterboxed to uint8 (3, height, width), or ``(None, reason)``
    when it cannot be decoded: the one rule for an unreadable image, as preprocess_data.py applies it (whatever
    Pillow raises, a decompression-bomb error for a 200-megapixel file included)."""
    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"))
    except Exception as err:  # noqa: BLE001  OSError, SyntaxError, ValueError, DecompressionBombError, ...
        return None, first_line(err)
    return _to_tensor(letterbox_array(array, size, interpolation)), ""


def load_image(path: str | Path, size: tuple[int, int], interpolation: str = "bilinear") -> torch.Tensor:
    """Decode ``path`` and letterbox it to a ``uint8`` tensor of shape (3, height, width)."""
    image, reason = read_image(path, size, interpolation)
    if image is None:
        raise UserError(f"cannot read image {path}: {reason}; re-run preprocess_data.py to leave it out")
    return image


def to_uint8_tensor(image: Image.Image | np.ndarray | torch.Tensor, size: tuple[int, int],
                    interpolation: str = "bilinear") -> torch.Tensor:
    """Letterbox an in-memory image (PIL, HxWx3 uint8 array, or 3xHxW uint8 tensor) to (3, height, width) uint8."""
    if isinstance(image, torch.Tensor):
        image = image.permute(1, 2, 0).cpu().numpy() if image.ndim == 3 and image.shape[0] == 3 else image.numpy()
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ValueError(f"expected a uint8 image array, got {image.dtype}")
        array = image if image.ndim == 3 and image.shape[2] == 3 else np.asarray(Image.fromarray(image).convert("RGB"))
    else:
        array = np.asarray(image.convert("RGB"))
    return _to_tensor(letterbox_array(array, size, interpolation))


def decode_images(
    paths: Sequence[str | Path], size: tuple[int, int], *, workers: int = 0, progress: bool = True,
    desc: str = "decode", interpolation: str = "bilinear", problems: dict[int, str] | None = None,
) -> torch.Tensor:
    """Decode and letterbox every image into one ``uint8`` tensor (N, 3, height, width), using a thread pool.

    Pillow releases the GIL while decoding, so threads scale; ``workers=0`` picks the number of CPU cores.
    An unreadable image raises a UserError, or, with a ``problems`` dict, stays black and its index is recorded
    there with the reason.
    """
    out = torch.empty((len(paths), 3, *size), dtype=torch.uint8)
    workers = workers or min(16, torch.get_num_threads() or 1, len(paths) or 1)

    def work(i: int) -> None:
        if problems is None:
            out[i] = load_image(paths[i], size, interpolation)
            return
        image, reason = read_image(paths[i], size, interpolation)
        if image is None:
            out[i] = 0
            problems[i] = reason
        else:
            out[i] = image

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for _ in progress_bar(pool.map(work, range(len(paths))), total=len(paths), desc=desc, disable=not progress,
                      leave=False, unit="img"):
            pass
    return out


def to_device(values: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU tensor onto ``device`` without stalling the host: through pinned memory on CUDA (kept if already
    pinned, as DataLoader batches are).

    A plain ``.to("cuda")`` of pageable memory waits for all queued GPU work, once per batch here, which would stop
    the host from queuing the next batch while the GPU finishes the last.
    """
    if device.type == "cuda" and values.device.type == "cpu":
        return values.pin_memory().to(device, non_blocking=True)
    return values.to(device)


@functools.lru_cache(maxsize=16)
def _channel_stats(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(255 mean, 255 std) as (1, 3, 1, 1) tensors on ``device``, made once per model and device."""
    stats = torch.tensor([mean, std], dtype=torch.float32).view(2, 1, 3, 1, 1) * 255.0
    stats = to_device(stats, device)
    return stats[0], stats[1]


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float],
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float, scaled to [0, 1] and standardised per channel."""
    mean_t, std_t = _channel_stats(tuple(map(float, mean)), tuple(map(float, std)), images.device)
    return ((images.float() - mean_t) / std_t).to(dtype)


@dataclass
class AugmentConfig:
    """Training augmentation: the paired flip of CLIP-ReIdent and the 2023 winners' sharpen and random erasing."""

    flip: bool = True  # horizontal flip, p=0.5, the same decision for both images of a pair
    sharpen: bool = False  # sharpen, p=0.5, alpha in [0.2, 0.5], lightness in [0.5, 1.0] (albumentations' Sharpen)
    random_erasing: bool = False  # erase a box, p=0.5, area 2-33%, aspect 0.3-3.3, filled with 0 after normalising
    p: float = 0.5  # probability of each random operation


def _sharpen(images: torch.Tensor, apply: torch.Tensor, alpha: torch.Tensor, lightness: torch.Tensor) -> torch.Tensor:
    """Sharpen the float images (B, 3, H, W) in [0, 1] where ``apply`` is True, with per-image strengths."""
    b, c, h, w = images.shape
    # built without item assignment, which copies a host scalar (a GPU sync) on CUDA
    identity = F.pad(torch.ones(1, 1, device=images.device), (1, 1, 1, 1))
    effect = -torch.ones(b, 3, 3, device=images.device)
    effect[:, 1, 1] = 8.0 + lightness
    alpha = torch.where(apply, alpha, torch.zeros_like(alpha)).view(b, 1, 1)
    kernel = (1 - alpha) * identity + alpha * effect  # (B, 3, 3)
    kernel = kernel.repeat_interleave(c, dim=0).unsqueeze(1).to(images.dtype)  # one depthwise kernel per channel
    padded = F.pad(images.reshape(1, b * c, h, w), (1, 1, 1, 1), mode="reflect")
    return F.conv2d(padded, kernel, groups=b * c).reshape(b, c, h, w).clamp_(0.0, 1.0)


def _erasing_boxes(n: int, h: int, w: int, generator: torch.Generator) -> torch.Tensor:
    """(n, 4) boxes (top, left, height, width) as torchvision's RandomErasing draws them (its defaults: 10
    attempts, area 2-33%, aspect 0.3-3.3); height 0 = no box."""
    attempts, scale, ratio = 10, (0.02, 0.33), (0.3, 3.3)
    area = h * w * (scale[0] + (scale[1] - scale[0]) * torch.rand(n, attempts, generator=generator))
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(lo + (hi - lo) * torch.rand(n, attempts, generator=generator))
    bh = torch.sqrt(area * aspect).round().long()
    bw = torch.sqrt(area / aspect).round().long()
    fits = (bh < h) & (bw < w) & (bh > 0) & (bw > 0)
    first = torch.where(fits.any(1), fits.float().argmax(1), torch.full((n,), -1))
    u = torch.rand(n, 2, generator=generator)
    boxes = torch.zeros(n, 4, dtype=torch.long)
    ok = first >= 0
    idx = first.clamp(min=0)
    bh = bh.gather(1, idx[:, None]).squeeze(1)
    bw = bw.gather(1, idx[:, None]).squeeze(1)
    boxes[:, 0] = (u[:, 0] * (h - bh + 1).float()).long().clamp(max=h - 1)
    boxes[:, 1] = (u[:, 1] * (w - bw + 1).float()).long().clamp(max=w - 1)
    boxes[:, 2] = torch.where(ok, bh, torch.zeros_like(bh))
    boxes[:, 3] = torch.where(ok, bw, torch.zeros_like(bw))
    return boxes


def _erase(images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Zero the (top, left, height, width) box of each image, vectorised with a mask."""
    b, _, h, w = images.shape
    boxes = to_device(boxes, images.device)
    rows = torch.arange(h, device=images.device).view(1, h, 1)
    cols = torch.arange(w, device=images.device).view(1, 1, w)
    top, left, bh, bw = (boxes[:, i].view(b, 1, 1) for i in range(4))
    mask = (rows >= top) & (rows < top + bh) & (cols >= left) & (cols < left + bw)
    return images.masked_fill(mask.unsqueeze(1), 0.0)


def augment_pairs(
    anchors: torch.Tensor, positives: torch.Tensor, cfg: AugmentConfig, mean: Sequence[float], std: Sequence[float],
    generator: torch.Generator, *, rank: int = 0, world_size: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment and normalise a batch of uint8 pairs (B, 3, H, W) on their device; returns float tensors.

    Flip is decided once per pair; sharpen and erasing independently per image. The random draws are made for the
    global batch of ``world_size * B`` pairs and rank ``rank`` takes its slice, so every process of a distributed
    run draws the same numbers and augments its own pairs as one process would augment the whole global batch
    (with the generator seeded by step, not by rank, each rank would otherwise repeat rank 0's draws).
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not one of the {world_size} processes")
    b = anchors.shape[0]
    n = b * world_size
    # image i of this rank's (2B) stack [anchors; positives] is image take[i] of the global stack
    own = torch.arange(rank * b, (rank + 1) * b)
    take = torch.cat([own, n + own])
    images = torch.cat([anchors, positives])  # (2B, 3, H, W)
    if cfg.flip:
        flip = (torch.rand(n, generator=generator) < cfg.p).repeat(2)[take]
        images = torch.where(to_device(flip, images.device).view(-1, 1, 1, 1), images.flip(-1), images)
    if cfg.sharpen:
        apply, alpha, lightness = (torch.rand(2 * n, generator=generator)[take] for _ in range(3))
        apply = to_device(apply < cfg.p, images.device)
        alpha = to_device(0.2 + 0.3 * alpha, images.device)
        lightness = to_device(0.5 + 0.5 * lightness, images.device)
        images = (_sharpen(images.float() / 255.0, apply, alpha, lightness) * 255.0).round_().to(torch.uint8)
    images = normalize(images, mean, std, torch.float32)
    if cfg.random_erasing:
        apply = torch.rand(2 * n, generator=generator) < cfg.p
        boxes = _erasing_boxes(2 * n, images.shape[-2], images.shape[-1], generator)
        boxes[~apply, 2:] = 0
        images = _erase(images, boxes[take])
    return images[:b], images[b:]
