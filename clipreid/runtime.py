"""Where and how code runs: the device, the precision, autocast, the process group under torchrun, and CPU work dealt
over torch's threads."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist

from .errors import UserError

Precision = Literal["auto", "bf16", "fp16", "fp32"]  # auto: bf16 on GPUs that have it, fp32 on the CPU


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` -> cuda, then mps, then cpu."""
    if name != "auto":
        device = torch.device(name)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UserError(f"device {name} requested but CUDA is not available; use --device cpu")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """``auto``: bf16 on GPUs that have it, fp16 on other GPUs, fp32 on the CPU and MPS. Training's default;
    every scoring path defaults to ``fp32``, as the original extracts features."""
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` for a reduced-precision dtype, or a no-op for fp32."""
    if dtype is None or dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup_runtime(device: str = "auto") -> Runtime:
    """One process per device under ``torchrun`` (NCCL on GPUs, gloo on the CPU), else a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Runtime(pick_device(device))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    base = pick_device(device)
    if base.type == "cuda":
        torch.cuda.set_device(local_rank)
        base = torch.device("cuda", local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if base.type == "cuda" else "gloo")
    return Runtime(base, rank, world, local_rank)


def in_threads(share: Callable[[range], bool], starts: range) -> bool:
    """``share(part)`` for the parts of ``starts`` dealt over torch's CPU threads in turn (part w is
    ``starts[w::threads]``; this thread takes the first, so memory it frees stays with it); False if any part
    returned False. For numpy work, which releases the GIL while it computes."""
    workers = max(1, min(torch.get_num_threads(), len(starts)))
    if workers == 1:
        return share(starts)
    with ThreadPoolExecutor(workers - 1) as pool:
        others = [pool.submit(share, starts[w::workers]) for w in range(1, workers)]
        mine = share(starts[::workers])
    return all([mine] + [f.result() for f in others])
