"""The two numbers before a GPU run: matmul FLOPs and the bytes the other operators move, per image.

Every aten operator of one training step (the trainer's: augmented pair batch, bf16 autocast forward, InfoNCE,
backward, gradient clipping) and of one inference batch is intercepted with a ``TorchDispatchMode``. Matrix
products and attention count as FLOPs; every other operator that makes a new tensor counts the bytes of its
tensor inputs and outputs (each read and written once: a lower bound on its memory traffic); views count nothing.
From these, for a GPU with a given bf16 matmul rate and memory bandwidth (defaults: the H200 figures measured
in this workplace, 790 TFLOP/s and 4.3 TB/s; an H100 moved 3.0 TB/s):

- ``floor``: FLOPs / rate + bytes / bandwidth, the time per image no eager implementation beats;
- ``MFU ceiling``: the MFU at that floor, i.e. if every matmul ran at the full measured rate and every other
  operator at full bandwidth; launch gaps and slower matmuls only lower it.

Counting runs on the CPU at a small batch and scales per image (weights' costs, the optimiser step and the
per-step casts of the weights to bf16, are added once per step of ``batch_size`` pairs). CPU autocast casts a few
operators differently from CUDA autocast, so the bytes are an estimate, good to about 10%.

    .venv/bin/python benchmarks/roofline.py                      # ViT-B-16 and ViT-L-14, CLIP-ReIdent's 16 pairs
    .venv/bin/python benchmarks/roofline.py --batch-size 64 --bandwidth-tbs 3.0   # bigger steps, an H100
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clipreid.blocks import speed_up_blocks  # noqa: E402
from clipreid.config import run  # noqa: E402
from clipreid.loss import ReIDLoss  # noqa: E402
from clipreid.model import ModelSpec, build_encoder  # noqa: E402
from clipreid.trainer import forward_backward  # noqa: E402
from clipreid.transforms import AugmentConfig, normalize  # noqa: E402


@dataclass
class Config:
    models: tuple[str, ...] = ("ViT-B-16-quickgelu", "ViT-L-14-quickgelu")
    batch_size: int = 16  # pairs per training step (per-step costs are spread over 2 x batch_size images)
    count_batch: int = 2  # pairs (training) / images (inference) actually run on the CPU to count
    matmul_tflops: float = 790.0  # bf16 matmul rate of the GPU (H200 measured here; H100 about 790 too)
    bandwidth_tbs: float = 4.3  # memory bandwidth, read + written (H200 measured here; H100 3.0)
    blocks: Literal["none", "attention", "mlp", "both"] = "both"  # clipreid.blocks' drop-ins in use


class ByteCounter(TorchDispatchMode):
    """Bytes of tensor inputs + outputs of every non-matmul, non-view aten operator, by operator name."""

    MATMUL = {"mm", "addmm", "bmm", "baddbmm", "convolution", "convolution_backward",
              "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention_for_cpu_backward",
              "_scaled_dot_product_flash_attention",
              "_scaled_dot_product_flash_attention_backward", "_scaled_dot_product_efficient_attention",
              "_scaled_dot_product_efficient_attention_backward", "_scaled_dot_product_cudnn_attention",
              "_scaled_dot_product_cudnn_attention_backward", "_native_multi_head_attention"}

    def __init__(self) -> None:
        super().__init__()
        self.bytes: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if name in self.MATMUL or func.is_view:
            return out
        tensors_in = [a for a in _flat(args) + _flat(list((kwargs or {}).values())) if isinstance(a, torch.Tensor)]
        tensors_out = [o for o in _flat([out]) if isinstance(o, torch.Tensor)]
        # in-place ops read and write their tensor: counted like out-of-place ones
        n = sum(t.numel() * t.element_size() for t in tensors_in if t.numel() > 1)
        n += sum(t.numel() * t.element_size() for t in tensors_out)
        self.bytes[name] = self.bytes.get(name, 0) + n
        return out


def _flat(xs) -> list:
    out = []
    for x in xs:
        out.extend(_flat(x) if isinstance(x, (list, tuple)) else [x])
    return out


def count(fn) -> tuple[float, dict[str, int]]:
    """(FLOPs, bytes by operator) of one call of ``fn``."""
    flops = FlopCounterMode(display=False)
    counter = ByteCounter()
    with flops, counter:
        fn()
    return float(flops.get_total_flops()), counter.bytes


def _encoder(model: str, blocks: str):
    torch.manual_seed(0)
    encoder = build_encoder(ModelSpec(model, "none"), fast_blocks=False)
    speed_up_blocks(encoder.backbone, attention=blocks in ("attention", "both"), mlp=blocks in ("mlp", "both"))
    return encoder


def training_costs(model: str, pairs: int, blocks: str) -> tuple[float, dict[str, int]]:
    encoder = _encoder(model, blocks)
    loss_fn = ReIDLoss(("infonce",))
    x = torch.randint(0, 256, (2 * pairs, 3, *encoder.image_size), dtype=torch.uint8)

    def step() -> None:  # the trainer's own step; AdamW's bytes are added below (CPU AdamW is not CUDA's)
        forward_backward(encoder, encoder, loss_fn, x[:pairs], x[pairs:], torch.arange(pairs), AugmentConfig(),
                         torch.bfloat16, torch.Generator().manual_seed(0))
        torch.nn.utils.clip_grad_norm_(list(encoder.parameters()), 100.0)

    flops, moved = count(step)
    # fused AdamW reads param, grad, two moments and writes three (fp32): 28 bytes per parameter, once per step
    moved["adamw"] = 28 * sum(p.numel() for p in encoder.parameters())
    return flops, moved


def inference_costs(model: str, images: int, blocks: str) -> tuple[float, dict[str, int]]:
    encoder = _encoder(model, blocks).eval()
    x = torch.randint(0, 256, (images, 3, *encoder.image_size), dtype=torch.uint8)

    @torch.no_grad()
    def forward() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            encoder(normalize(x, encoder.mean, encoder.std))

    return count(forward)


def per_image(costs_small: tuple[float, dict], costs_large: tuple[float, dict], n_small: int, n_large: int
              ) -> tuple[float, float, float, dict[str, float]]:
    """(FLOPs per image, bytes per image, fixed bytes per call, bytes per image by op) from two batch sizes."""
    f_small, b_small = costs_small
    f_large, b_large = costs_large
    flops = (f_large - f_small) / (n_large - n_small)
    ops = {k: (b_large.get(k, 0) - b_small.get(k, 0)) / (n_large - n_small) for k in b_large}
    total_small, total_large = sum(b_small.values()), sum(b_large.values())
    per = (total_large - total_small) / (n_large - n_small)
    return flops, per, total_small - per * n_small, ops


def main(cfg: Config) -> None:
    rate, bw = cfg.matmul_tflops * 1e12, cfg.bandwidth_tbs * 1e12
    print(f"GPU assumed: {cfg.matmul_tflops:.0f} TFLOP/s bf16 matmul, {cfg.bandwidth_tbs:.1f} TB/s; training steps of "
          f"{cfg.batch_size} pairs; clipreid.blocks drop-ins: {cfg.blocks}")
    print(f"{'model':<22}{'pass':<11}{'GFLOP/img':>10}{'MB/img':>9}{'MB/step':>9}{'matmul us':>11}{'other us':>10}"
          f"{'floor us':>10}{'MFU ceiling':>13}  largest byte movers")
    for model in cfg.models:
        n1, n2 = cfg.count_batch, 2 * cfg.count_batch
        rows = [("training", 2 * cfg.batch_size, per_image(training_costs(model, n1, cfg.blocks),
                                                           training_costs(model, n2, cfg.blocks), 2 * n1, 2 * n2)),
                ("inference", None, per_image(inference_costs(model, n1, cfg.blocks),
                                              inference_costs(model, n2, cfg.blocks), n1, n2))]
        for name, images_per_step, (flops, per, fixed, ops) in rows:
            step_bytes = 0.0
            if images_per_step:  # per-step costs (AdamW, weight casts) spread over the step's images
                step_bytes = fixed
                per = per + step_bytes / images_per_step
            t_mm, t_other = flops / rate, per / bw
            top = sorted(ops.items(), key=lambda kv: -kv[1])[:4]
            movers = ", ".join(f"{k} {v / per:.0%}" for k, v in top)
            print(f"{model:<22}{name:<11}{flops / 1e9:>10.1f}{per / 1e6:>9.1f}{step_bytes / 1e6:>9.0f}"
                  f"{t_mm * 1e6:>11.1f}{t_other * 1e6:>10.1f}{(t_mm + t_other) * 1e6:>10.1f}"
                  f"{t_mm / (t_mm + t_other):>13.0%}  {movers}")


if __name__ == "__main__":
    run(Config, main)
