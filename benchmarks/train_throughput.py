"""Training and feature-extraction throughput per backbone: images/s, peak memory, FLOPs per image and MFU.

One training step = ``clipreid.trainer``'s own ``forward_backward`` and ``optimizer_update``: augmentation of a
batch of uint8 pairs on the device, forward of both images, InfoNCE, backward, gradient clipping, AdamW step.
Measured in the same run:

- ``fp32``: the reference, the field's un-optimised step: fp32, no autocast, open_clip's own blocks
  (``nn.MultiheadAttention``, QuickGELU), plain AdamW;
- ``fp16 amp`` (GPUs): the field's usual mixed-precision step: fp16 autocast with a GradScaler, open_clip's
  blocks, plain AdamW;
- ``ours/oc``: ours (below) but with open_clip's own blocks: what ``clipreid.blocks`` adds;
- ``ours``: the configured precision (bf16 on GPUs), ``clipreid.blocks``' SDPA attention and fused QuickGELU
  MLP (``--blocks`` picks), fused AdamW, fed from a synthetic batch already on the device;
- ``ours+data``: the same fed from the in-memory uint8 cache through pinned memory, as training does; if it matches
  ``ours``, the data pipeline is not the bottleneck (the GPU is).

Feature extraction (``--inference``, on by default), batches of ``eval_batch_size`` images:

- ``infer fp32``: the reference, fp32 forward with open_clip's blocks on batches already on the device;
- ``infer ours``: bf16 (on GPUs) and clipreid's blocks, batches on the device;
- ``infer+data``: ``clipreid.features.extract_features`` over a CPU uint8 cache, as evaluation and validation run.

MFU = (3 x forward FLOPs per image x images/s) / peak for training, 1 x forward FLOPs for inference; the peak is
the matmul rate measured here (a large bf16 matmul on GPUs), what the GPU can really do, so MFU is conservative
rather than flattering.

    .venv/bin/python benchmarks/train_throughput.py                                    # tiny-vit on the CPU
    .venv/bin/python benchmarks/train_throughput.py --models ViT-B-16-quickgelu ViT-L-14-quickgelu   # on a GPU
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clipreid.blocks import speed_up_blocks  # noqa: E402
from clipreid.config import run  # noqa: E402
from clipreid.features import extract_features  # noqa: E402
from clipreid.loss import ReIDLoss  # noqa: E402
from clipreid.model import ModelSpec, ReIDEncoder, build_encoder  # noqa: E402
from clipreid.runtime import autocast, pick_device, resolve_precision  # noqa: E402
from clipreid.trainer import build_optimizer, forward_backward, optimizer_update  # noqa: E402
from clipreid.transforms import AugmentConfig, normalize, to_device  # noqa: E402


@dataclass
class Config:
    models: tuple[str, ...] | None = None  # none: tiny-vit on the CPU; ViT-B-16 and ViT-L-14 (quickgelu) on a GPU
    batch_size: int = 16  # pairs per training step (the recipe's 16; 2 x batch_size images)
    eval_batch_size: int = 256  # images per feature-extraction batch
    steps: int = 20  # timed steps (batches) per variant
    warmup: int = 5  # untimed steps first (cudnn autotuning, allocator, compile)
    precision: str = "auto"  # auto: bf16 on GPUs, fp32 on the CPU
    compile: bool = False  # torch.compile the backbone in the "ours" variants (training and inference)
    grad_checkpointing: bool = False
    clip_grad: float = 100.0  # clipping in every variant (train.py's --clip-grad 100; off by default); 0 = off
    reference: bool = True  # also time the fp32 reference step and ours with open_clip's attention
    inference: bool = True  # also time feature extraction
    blocks: Literal["attention", "mlp", "both"] = "both"  # which of clipreid.blocks' drop-ins "ours" uses
    device: str = "auto"


def matmul_peak(device: torch.device, dtype: torch.dtype) -> float:
    """Measured FLOP/s of a large square matmul in ``dtype`` (the practical peak of the device)."""
    n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    reps = 20 if device.type == "cuda" else 3
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forward_flops(encoder: torch.nn.Module, size: tuple[int, int], device: torch.device) -> float:
    """Forward FLOPs of one image, counted by torch's FlopCounterMode (matmuls and convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 3, *size, device=device)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        encoder(x)
    return float(counter.get_total_flops())


def _encoder(model: str, cfg: Config, device: torch.device, fast: bool, compile: bool = False) -> ReIDEncoder:
    """The encoder with open_clip's own blocks, or (``fast``) with ``cfg.blocks`` of clipreid's drop-ins."""
    torch.manual_seed(0)
    spec = ModelSpec(model, "none", grad_checkpointing=cfg.grad_checkpointing)
    encoder = build_encoder(spec, fast_blocks=False)
    if fast:
        speed_up_blocks(encoder.backbone, attention=cfg.blocks in ("attention", "both"),
                        mlp=cfg.blocks in ("mlp", "both"))
    encoder.to(device)
    if compile:  # the backbone only, so the encoder keeps its attributes for extract_features
        encoder.backbone = torch.compile(encoder.backbone)
    return encoder


def _timed(step, cfg: Config, device: torch.device) -> float:
    """Seconds for ``cfg.steps`` calls of ``step(i)`` after ``cfg.warmup`` untimed ones."""
    for i in range(cfg.warmup):
        step(i)
    sync(device)
    t = time.perf_counter()
    for i in range(cfg.steps):
        step(cfg.warmup + i)
    sync(device)
    return time.perf_counter() - t


def _op_census(step, i: int) -> tuple[int, int]:
    """(aten operator calls, of which aten::copy_) in one more call of ``step``: fewer copies, fewer passes over
    the activations, whatever the device."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step(i)
    events = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    return sum(e.count for e in events), sum(e.count for e in events if e.key == "aten::copy_")


def _peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def time_training(name: str, model: str, cfg: Config, device: torch.device, dtype: torch.dtype, *, fused: bool,
                  feed: str, fast: bool) -> dict:
    encoder = _encoder(model, cfg, device, fast, compile=cfg.compile and name.startswith("ours"))
    loss_fn = ReIDLoss(("infonce",)).to(device)
    opt = build_optimizer([encoder], 1e-5, 0.01, fused=fused)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    b, size = cfg.batch_size, encoder.image_size
    aug = AugmentConfig()
    if feed == "device":
        batch = torch.randint(0, 256, (2 * b, 3, *size), dtype=torch.uint8, device=device)
    else:  # the training path: gather from a CPU uint8 cache, pin, copy without blocking
        cache = torch.randint(0, 256, (max(512, 4 * b), 3, *size), dtype=torch.uint8)
    _reset_peak(device)

    labels = torch.arange(b, device=device)

    def step(i: int) -> None:
        if feed == "device":
            x = batch
        else:
            idx = torch.randint(0, len(cache), (2 * b,))
            x = to_device(cache[idx], device)
        forward_backward(encoder, encoder, loss_fn, x[:b], x[b:], labels, aug, dtype,
                         torch.Generator().manual_seed(i), scaler=scaler)
        optimizer_update(opt, encoder, scaler, cfg.clip_grad)

    seconds = _timed(step, cfg, device)
    peak_gib = _peak_gib(device)
    return {"variant": name, "images_per_s": 2 * b * cfg.steps / seconds, "peak_gib": peak_gib,
            "census": _op_census(step, cfg.warmup + cfg.steps),
            "size": size, "passes": 3}


@torch.no_grad()
def time_inference(name: str, model: str, cfg: Config, device: torch.device, dtype: torch.dtype, *, feed: str,
                   fast: bool) -> dict:
    encoder = _encoder(model, cfg, device, fast, compile=cfg.compile and name != "infer fp32").eval()
    b, size = cfg.eval_batch_size, encoder.image_size
    census = None
    _reset_peak(device)
    if feed == "device":
        batch = torch.randint(0, 256, (b, 3, *size), dtype=torch.uint8, device=device)

        def step(i: int) -> None:
            with autocast(device, dtype):
                encoder(normalize(batch, encoder.mean, encoder.std))

        seconds = _timed(step, cfg, device)
        census = _op_census(step, cfg.warmup + cfg.steps)
    else:  # the evaluation path: a CPU uint8 cache through extract_features (pinned copies, one copy back)
        cache = torch.randint(0, 256, (b * cfg.steps, 3, *size), dtype=torch.uint8)
        extract_features(encoder, cache[:b * cfg.warmup], batch_size=b, device=device, dtype=dtype, progress=False)
        sync(device)
        t = time.perf_counter()
        extract_features(encoder, cache, batch_size=b, device=device, dtype=dtype, progress=False)
        seconds = time.perf_counter() - t
    return {"variant": name, "images_per_s": b * cfg.steps / seconds, "peak_gib": _peak_gib(device), "census": census,
            "size": size, "passes": 1}


def main(cfg: Config) -> None:
    device = pick_device(cfg.device)
    dtype = resolve_precision(cfg.precision, device)
    models = cfg.models or (("ViT-B-16-quickgelu", "ViT-L-14-quickgelu") if device.type == "cuda" else ("tiny-vit",))
    peak_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    peak = matmul_peak(device, peak_dtype)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device: {name}   measured {str(peak_dtype).removeprefix('torch.')} matmul peak: {peak / 1e12:.2f} TFLOP/s")
    print(f"training: {cfg.batch_size} pairs ({2 * cfg.batch_size} images) per step; inference: "
          f"{cfg.eval_batch_size} images per batch; {cfg.steps} timed steps; precision "
          f"{str(dtype).removeprefix('torch.')}, compile {cfg.compile}")
    print(f"{'model':<22}{'variant':<12}{'input':>9}{'img/s':>10}{'vs ref':>9}{'peak GiB':>10}{'GFLOP/img':>11}"
          f"{'MFU':>7}{'aten ops':>10}{'copies':>8}")
    fused = device.type == "cuda"
    for model in models:
        # counted once per model: open_clip's inference fast path hides its attention from the FLOP counter
        encoder = _encoder(model, cfg, device, fast=True)
        fwd_flops = forward_flops(encoder, encoder.image_size, device)
        del encoder
        groups = [[
            *([time_training("fp32", model, cfg, device, torch.float32, fused=False, feed="device", fast=False)]
              if cfg.reference else []),
            *([time_training("fp16 amp", model, cfg, device, torch.float16, fused=False, feed="device", fast=False)]
              if cfg.reference and device.type == "cuda" else []),
            *([time_training("ours/oc", model, cfg, device, dtype, fused=fused, feed="device", fast=False)]
              if cfg.reference else []),
            time_training("ours", model, cfg, device, dtype, fused=fused, feed="device", fast=True),
            time_training("ours+data", model, cfg, device, dtype, fused=fused, feed="cache", fast=True),
        ]]
        if cfg.inference:
            groups.append([
                *([time_inference("infer fp32", model, cfg, device, torch.float32, feed="device", fast=False)]
                  if cfg.reference else []),
                time_inference("infer ours", model, cfg, device, dtype, feed="device", fast=True),
                time_inference("infer+data", model, cfg, device, dtype, feed="cache", fast=True),
            ])
        for rows in groups:
            ref = rows[0]["images_per_s"] if cfg.reference else None
            for r in rows:
                mfu = r["passes"] * fwd_flops * r["images_per_s"] / peak
                ratio = f"{r['images_per_s'] / ref:.2f}x" if ref else "-"
                h, w = r["size"]
                mem = "-" if r["peak_gib"] is None else f"{r['peak_gib']:.2f}"
                ops, copies = r["census"] or ("-", "-")
                print(f"{model:<22}{r['variant']:<12}{f'{h}x{w}':>9}{r['images_per_s']:>10.1f}{ratio:>9}"
                      f"{mem:>10}{fwd_flops / 1e9:>11.2f}{mfu:>7.1%}{ops:>10}{copies:>8}")


if __name__ == "__main__":
    run(Config, main)
