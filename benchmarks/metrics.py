"""Speed and memory of ``clipreid.metrics.compute_scores`` against the per-query sklearn loop, timed in the same run.

Distances are squared Euclidean (2 - 2 cos) between L2-normalised random clustered features, at the sizes of the
test split (50 x 910), the 2023 challenge set (618 x 9,505; one camera, so no camera rule) and Market-1501
(3,368 x 15,913, 6 random cameras and the camera rule); ``--scale`` adds 12,000 x 88,000 (MSMT17-like, 15
cameras; ours only, the reference would take far too long). The "hard" Market-size case is a weak model's distances:
true matches uniform in [0, 1), every other item uniform in [0.35, 1.35), so true matches spread through the row.

The floor, timed in the same process on the same threads: one comparison pass over the q x g matrix in plain torch
(each row against its last true match's distance, ``torch.le`` into a reused buffer, the same row chunks as
``compute_scores``), the least any scoring must do. "x floor" is ours over it.

    .venv/bin/python benchmarks/metrics.py                   # cuda if available, else cpu
    .venv/bin/python benchmarks/metrics.py --scale --device cuda

torch's CPU threads wait passively (``OMP_WAIT_POLICY=PASSIVE`` unless set otherwise): on a machine shared with
other jobs, OpenMP's default spin-waiting at every parallel op made ours 5-7x slower in wall time (and 5x more
CPU time) than one thread; the reference is single-threaded numpy either way.

Peak memory is the rise above the level before the call: ``torch.cuda.max_memory_allocated`` on a GPU; on the CPU
the process's resident size sampled every millisecond (tracemalloc cannot see torch's CPU allocations, and
``resource``'s ru_maxrss cannot be reset between measurements).
"""

from __future__ import annotations

import os
import platform
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts its threads (see above)

import numba  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.metrics import average_precision_score  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clipreid.config import run  # noqa: E402
from clipreid.metrics import CHUNK_ELEMENTS, compute_scores  # noqa: E402

# (queries, gallery, identities, cameras, hard)
SIZES = [(50, 910, 50, 1, False), (618, 9_505, 618, 1, False), (3_368, 15_913, 750, 6, False),
         (3_368, 15_913, 750, 6, True)]
SCALE = (12_000, 88_000, 3_000, 15, False)
KEYS = ("mAP", "rank1", "rank5", "rank10", "mINP", "rank1_allshots")


@dataclass
class Config:
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: cuda if available, else cpu
    scale: bool = False  # also time ours at 12,000 x 88,000
    repeats: int = 3  # timed runs of ours, the best reported; the reference runs once
    dim: int = 128  # feature dimension
    noise: float = 1.5  # feature noise around each identity's centre (sets how hard the ranking is)
    seed: int = 0


def reference_scores(distmat: np.ndarray, query_ids: np.ndarray, gallery_ids: np.ndarray,
                     query_cams: np.ndarray | None = None, gallery_cams: np.ndarray | None = None) -> dict:
    """The per-query definition: AP from sklearn, CMC, mINP and allshots rank-1 from a stable argsort."""
    aps, firsts, inps, leads = [], [], [], []
    for i, (dist, qid) in enumerate(zip(distmat, query_ids, strict=True)):
        y_true = gallery_ids == qid
        if query_cams is not None:
            keep = ~(y_true & (gallery_cams == query_cams[i]))
            dist, y_true = dist[keep], y_true[keep]
        if not y_true.any():
            continue
        aps.append(average_precision_score(y_true, -dist))
        hits = np.flatnonzero(y_true[np.argsort(dist, kind="stable")])  # 0-based positions of the matches
        firsts.append(hits[0] + 1)
        inps.append(len(hits) / (hits[-1] + 1))
        leads.append(np.mean(hits == np.arange(len(hits))))  # matches with no other identity before them
    firsts = np.array(firsts)
    return {"mAP": np.mean(aps), "rank1": np.mean(firsts <= 1), "rank5": np.mean(firsts <= 5),
            "rank10": np.mean(firsts <= 10), "mINP": np.mean(inps), "rank1_allshots": np.mean(leads)}


def make_case(n_query: int, n_gallery: int, n_ids: int, n_cams: int, hard: bool, cfg: Config, device: torch.device):
    """Random clustered features -> q x g squared Euclidean distances (float32, on ``device``), the ids and (with
    more than one camera) random cameras. ``hard``: true matches' distances uniform in [0, 1), others' in
    [0.35, 1.35) instead."""
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    centres = torch.randn(n_ids, cfg.dim, generator=gen)
    query_ids = torch.randperm(n_ids, generator=gen).repeat(n_query // n_ids + 1)[:n_query]  # every id queried
    gallery_ids = torch.randint(0, n_ids, (n_gallery,), generator=gen)

    def features(ids: torch.Tensor) -> torch.Tensor:
        f = centres[ids] + cfg.noise * torch.randn(len(ids), cfg.dim, generator=gen)
        return torch.nn.functional.normalize(f, dim=1).to(device)

    if hard:
        same = (query_ids[:, None] == gallery_ids[None, :]).to(device)
        noise = torch.rand(n_query, n_gallery, generator=gen).to(device)
        distmat = torch.where(same, noise, noise + 0.35)
    else:
        distmat = 2 - 2 * features(query_ids) @ features(gallery_ids).T
    cams = [None, None]
    if n_cams > 1:
        cams = [torch.randint(0, n_cams, (n,), generator=gen).numpy() for n in (n_query, n_gallery)]
    return distmat, query_ids.numpy(), gallery_ids.numpy(), *cams


class PeakMemory:
    """Peak memory above the level at entry, in bytes, of the code run inside the ``with`` block (None: off)."""

    def __init__(self, device: torch.device | None):
        self.device, self.peak = device, 0

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self) -> None:
        while not self._done.wait(0.001):
            self.peak = max(self.peak, self._rss() - self._start)

    def __enter__(self) -> PeakMemory:
        if self.device is None:
            return self
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        else:
            self._start, self._done = self._rss(), threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device is None:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self._start
        else:
            self._done.set()
            self._thread.join()
            self.peak = max(self.peak, self._rss() - self._start)


def timed(repeats: int, device: torch.device, fn: Callable[..., dict], *args) -> tuple[float, int, dict]:
    """Best time over ``repeats`` runs of ``fn(*args)``, the peak memory of the first, and its result."""
    best, peak, result = float("inf"), 0, {}
    for i in range(repeats):
        with PeakMemory(device if i == 0 else None) as mem:
            start = time.perf_counter()
            result = fn(*args)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            best = min(best, time.perf_counter() - start)
        peak = max(peak, mem.peak)
    return best, peak, result


def floor_pass(distmat: torch.Tensor, query_ids: np.ndarray, gallery_ids: np.ndarray, query_cams, gallery_cams,
               repeats: int, device: torch.device) -> float:
    """Best time of one comparison pass over the matrix: each row against its last true match's distance, in the
    row chunks ``compute_scores`` uses, into one reused bool buffer (the thresholds are found outside the timing)."""
    same = torch.from_numpy(query_ids[:, None] == gallery_ids[None, :])
    if query_cams is not None:
        same &= torch.from_numpy(query_cams[:, None] != gallery_cams[None, :])
    thr = torch.where(same.to(device), distmat, -float("inf")).amax(1, keepdim=True)
    step = max(1, CHUNK_ELEMENTS // distmat.shape[1])
    buf = torch.empty(min(step, len(distmat)), distmat.shape[1], dtype=torch.bool, device=device)
    best = float("inf")
    for _ in range(repeats + 1):  # the first pass faults the buffer in
        start = time.perf_counter()
        for a in range(0, len(distmat), step):
            chunk = distmat[a:a + step]
            torch.le(chunk, thr[a:a + step], out=buf[:len(chunk)])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def bench_row(n_query: int, n_gallery: int, n_ids: int, n_cams: int, hard: bool, cfg: Config, device: torch.device,
              reference: bool) -> str:
    """One printed row: times, peak memories and agreement of ours and (optionally) the reference at one size."""
    distmat, query_ids, gallery_ids, query_cams, gallery_cams = make_case(n_query, n_gallery, n_ids, n_cams, hard,
                                                                          cfg, device)
    compute_scores(distmat[:8], query_ids[:8], gallery_ids)  # warm-up
    floor_s = floor_pass(distmat, query_ids, gallery_ids, query_cams, gallery_cams, cfg.repeats, device)
    ours_s, ours_mem, ours = timed(cfg.repeats, device, compute_scores, distmat, query_ids, gallery_ids,
                                   query_cams, gallery_cams)
    mib = 2**20
    size = f"{n_query:,} x {n_gallery:,}" + (f" ({n_cams} cams)" if n_cams > 1 else "") + (" hard" if hard else "")
    quality = f"{ours['mAP']:.3f} / {ours['rank1']:.3f} / {ours['mINP']:.3f} / {ours['rank1_allshots']:.3f}"
    floor = f"{floor_s:8.3f}s {ours_s / floor_s:6.1f}x"
    if not reference:
        skipped = f"{'(skipped)':>10} {ours_s:8.3f}s {floor} {'':>9} {'':>10}"
        return f"{size:>34} {skipped} {ours_mem / mib:6.0f} MiB  {'':>10}  {quality}"
    host = distmat.cpu().numpy()
    del distmat
    ref_s, ref_mem, ref = timed(1, torch.device("cpu"), reference_scores, host, query_ids, gallery_ids, query_cams,
                                gallery_cams)
    diff = max(abs(ours[k] - ref[k]) for k in KEYS)
    return (f"{size:>34} {ref_s:9.3f}s {ours_s:8.3f}s {floor} {ref_s / ours_s:8.1f}x {ref_mem / mib:6.0f} MiB "
            f"{ours_mem / mib:6.0f} MiB  {diff:10.1e}  {quality}")


def cpu_model() -> str:
    """The CPU's model name as Linux reports it (the machine's processor string elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def main(cfg: Config) -> None:
    if cfg.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(cfg.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"device: {device} ({name}); cpu cores: {os.cpu_count()}; torch {torch.__version__}; "
          f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"cpu: {cpu_model()}; numpy {np.__version__}; numba {numba.__version__} (compute_scores' CPU loop)")
    print(f"{'queries x gallery':>34} {'reference':>10} {'ours':>9} {'floor':>9} {'x floor':>7} {'speed-up':>9} "
          f"{'ref peak':>10} "
          f"{'our peak':>10}  {'max |diff|':>10}  mAP / rank1 / mINP / allshots rank1")
    for size in SIZES:
        print(bench_row(*size, cfg, device, reference=True), flush=True)
    if cfg.scale:
        print(bench_row(*SCALE, cfg, device, reference=False), flush=True)
    print(f"load average at the end {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    run(Config, main)
