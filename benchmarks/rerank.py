"""Speed and peak memory of k-reciprocal re-ranking: ours (sparse, chunked torch) vs the dense numpy reference.

The reference is the distance-matrix ``re_ranking`` used across the ReID field (person-reid-tiny-baseline,
CLIP-ReIdent, TransReID), rewritten below with the same dense N x N arrays. Each measurement runs in its own
subprocess on clustered random features, so its peak memory is clean: host peak RSS above what the process held
just before the call (inputs included there, not in the peak), and on a GPU the peak of
``torch.cuda.max_memory_allocated`` above the inputs. Variants:

- reference: numpy ``re_ranking(q_g, q_q, g_g)`` on float32 matrices (the matrices are its input, not timed);
- ours, matrices: ``k_reciprocal(q_g, q_q, g_g)`` on the same matrices as torch tensors on the device;
- ours, features: ``k_reciprocal_features(query, gallery)`` from the features, distances included;
- ours, hard: ``hard_k_reciprocal(query, gallery)`` (the 2023 variant; timed only, it computes other numbers).

The floors, each in its own subprocess on the same threads, plain torch: what any k-reciprocal re-ranking must do.
"floor, top-k" finds each row's k1 + 1 nearest in the (q+g) x (q+g) distance matrix (``torch.topk`` per row chunk,
the chunks ours uses; the matrix is built before the timing); "floor, mm+top-k" also computes those chunks from the
features (one ``addmm`` each). "x floor" is ours from matrices over the first, ours from features (and hard) over
the second.

    .venv/bin/python benchmarks/rerank.py                                  # 50x910, 618x9505, 3368x15913
    .venv/bin/python benchmarks/rerank.py --sizes 618x9505 --no-reference
    .venv/bin/python benchmarks/rerank.py --scale --scale-sizes 10000 50000 100000   # ours alone, vs N

torch's CPU threads wait passively (``OMP_WAIT_POLICY=PASSIVE`` unless set), as in ``benchmarks/metrics.py``: on a
machine shared with other jobs, spin-waiting made every variant many times slower.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts its threads: see benchmarks/metrics.py

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clipreid.config import run  # noqa: E402
from clipreid.errors import UserError  # noqa: E402
from clipreid.rerank import (  # noqa: E402
    hard_k_reciprocal,
    k_reciprocal,
    k_reciprocal_features,
    squared_distances,
)


@dataclass
class Config:
    sizes: tuple[str, ...] = ("50x910", "618x9505", "3368x15913")  # query x gallery: test, challenge, Market-1501
    dim: int = 512  # feature dimension
    device: str | None = None  # default: cuda if available, else cpu
    reference: bool = True  # also run the dense numpy reference
    reference_max_n: int = 20_000  # skip the reference above this many images (N^2 memory: ~9 GB at 19k)
    features: bool = True  # also run ours from features (no N x N input)
    hard: bool = True  # also time the hard-weight variant (from features)
    repeats: int = 1  # timed runs per variant in one process; the best is reported
    scale: bool = False  # scaling curve of ours (from features) alone, instead of the comparison
    scale_sizes: tuple[int, ...] = (10_000, 20_000, 50_000, 100_000)  # N = queries + gallery
    scale_query_fraction: float = 0.12  # 12k queries x 88k gallery at N = 100k
    k1: int = 20
    k2: int = 6
    lambda_value: float = 0.3
    seed: int = 0


# --------------------------------------------------------------------------------------------------------------
# the dense reference


def reference_re_ranking(q_g: np.ndarray, q_q: np.ndarray, g_g: np.ndarray, k1: int = 20, k2: int = 6,
                         lambda_value: float = 0.3) -> np.ndarray:
    """k-reciprocal re-ranking with dense N x N numpy arrays, as the field's reference implementation does it."""
    q = q_g.shape[0]
    dist = np.concatenate([np.concatenate([q_q, q_g], axis=1), np.concatenate([q_g.T, g_g], axis=1)], axis=0)
    dist = np.power(dist, 2).astype(np.float32)
    dist = np.transpose(dist / np.max(dist, axis=0))
    n = dist.shape[0]
    v = np.zeros_like(dist, dtype=np.float32)
    rank = np.argsort(dist).astype(np.int32)
    half = int(np.around(k1 / 2.0))
    for i in range(n):
        forward = rank[i, :k1 + 1]
        reciprocal = forward[np.where(rank[forward, :k1 + 1] == i)[0]]
        expanded = reciprocal
        for c in reciprocal:
            c_forward = rank[c, :half + 1]
            c_reciprocal = c_forward[np.where(rank[c_forward, :half + 1] == c)[0]]
            if len(np.intersect1d(c_reciprocal, reciprocal)) > 2.0 / 3 * len(c_reciprocal):
                expanded = np.append(expanded, c_reciprocal)
        expanded = np.unique(expanded)
        weight = np.exp(-dist[i, expanded])
        v[i, expanded] = weight / np.sum(weight)
    original = dist[:q]
    if k2 != 1:
        v_qe = np.zeros_like(v, dtype=np.float32)
        for i in range(n):
            v_qe[i] = np.mean(v[rank[i, :k2]], axis=0)
        v = v_qe
        del v_qe
    del rank
    columns = [np.where(v[:, j] != 0)[0] for j in range(n)]
    jaccard = np.zeros_like(original, dtype=np.float32)
    for i in range(q):
        s = np.zeros((1, n), dtype=np.float32)
        for j in np.where(v[i] != 0)[0]:
            s[0, columns[j]] += np.minimum(v[i, j], v[columns[j], j])
        jaccard[i] = 1 - s / (2.0 - s)
    final = jaccard * (1 - lambda_value) + original * lambda_value
    return final[:, q:]


# --------------------------------------------------------------------------------------------------------------
# data and measurement


def clustered_features(num_query: int, num_gallery: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalised float32 features: one query per identity, gallery images spread over the identities."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((num_query, dim), dtype=np.float32)
    ids = np.concatenate([np.arange(num_query), rng.integers(num_query, size=num_gallery)])
    feats = np.empty((len(ids), dim), np.float32)
    for a in range(0, len(ids), 8192):  # in blocks: N = 100k x 512 needs no float64 temporary
        block = centres[ids[a:a + 8192]] + rng.standard_normal((len(ids[a:a + 8192]), dim), dtype=np.float32)
        feats[a:a + 8192] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return feats[:num_query], feats[num_query:]


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def _reset_peak_rss() -> int:
    """Reset the kernel's peak-RSS mark (Linux) and return the current RSS in bytes."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _status_bytes("VmRSS")
    except OSError:  # not Linux: the peak since the process started (ru_maxrss, KiB on Linux, bytes on macOS)
        scale = 1 if sys.platform == "darwin" else 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _peak_rss() -> int:
    try:
        return _status_bytes("VmHWM")
    except (OSError, KeyError):
        scale = 1 if sys.platform == "darwin" else 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _worker(task: dict, conn) -> None:
    """One measurement in a fresh process; sends back seconds and peak bytes, saves the output if asked."""
    torch.set_grad_enabled(False)
    qf, gf = np.load(task["query"]), np.load(task["gallery"])
    device = torch.device(task["device"])
    params = dict(k1=task["k1"], k2=task["k2"], lambda_value=task["lambda_value"])
    method = task["method"]
    if method.startswith("floor"):
        x, y = torch.from_numpy(qf).to(device), torch.from_numpy(gf).to(device)
        z = torch.cat([x, y])
        n, k = len(z), min(task["k1"] + 1, len(z))
        step = max(1, (1 << 23 if device.type == "cpu" else 1 << 26) // n)
        buf = torch.empty(min(step, n), n, device=device)
        if method == "floor_topk":
            full = squared_distances(z, z)

            def call():
                for a in range(0, n, step):
                    full[a:a + step].topk(k, 1, largest=False, sorted=True)
        else:
            z_sq = (z * z).sum(1)

            def call():
                for a in range(0, n, step):
                    d = torch.addmm(z_sq[None, :], z[a:a + step], z.T, alpha=-2, out=buf[:len(z[a:a + step])])
                    d.topk(k, 1, largest=False, sorted=True)
        call()  # warm-up: faults the buffer in
    elif method == "reference":
        mats = [squared_distances(a, b) for a, b in ((qf, gf), (qf, qf), (gf, gf))]
        reference_re_ranking(*_tiny_matrices(), **params)  # warm-up

        def call():
            return reference_re_ranking(*mats, **params)
    else:
        x, y = torch.from_numpy(qf).to(device), torch.from_numpy(gf).to(device)
        tiny = [torch.from_numpy(m).to(device) for m in _tiny_matrices()]
        k_reciprocal(*tiny, **params)  # warm-up: thread pools, CUDA context and kernels
        if method == "matrices":
            mats = [squared_distances(a, b) for a, b in ((x, y), (x, x), (y, y))]

            def call():
                return k_reciprocal(*mats, **params)
        elif method == "features":
            def call():
                return k_reciprocal_features(x, y, **params)
        else:
            params["lambda_value"] = 0.7

            def call():
                return hard_k_reciprocal(x, y, **params)
    cuda = device.type == "cuda"
    best, host_peak, gpu_peak, out = float("inf"), 0, 0, None
    for _ in range(task["repeats"]):
        out = None
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            gpu_base = torch.cuda.memory_allocated()
        rss = _reset_peak_rss()
        start = time.perf_counter()
        out = call()
        if cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
        host_peak = max(host_peak, _peak_rss() - rss)
        if cuda:
            gpu_peak = max(gpu_peak, torch.cuda.max_memory_allocated() - gpu_base)
    if task.get("out") and out is not None:
        np.save(task["out"], out.cpu().numpy() if isinstance(out, torch.Tensor) else out)
    conn.send(dict(seconds=best, host_peak=host_peak, gpu_peak=gpu_peak))


def _tiny_matrices() -> list[np.ndarray]:
    qf, gf = clustered_features(4, 30, 8, seed=1)
    return [squared_distances(a, b) for a, b in ((qf, gf), (qf, qf), (gf, gf))]


def measure(task: dict) -> dict | None:
    """Run ``_worker`` in a spawned process; None if it died (e.g. killed for memory)."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_worker, args=(task, child))
    proc.start()
    child.close()
    try:
        result = parent.recv()
    except EOFError:
        result = None
    proc.join()
    return result if proc.exitcode == 0 else None


def _times(ratio: float, better: str, worse: str) -> str:
    return f"{ratio:5.1f}x {better}" if ratio >= 1 else f"{1 / ratio:5.1f}x {worse}"


def _mb(n_bytes: float) -> str:
    return f"{n_bytes / 2**20:8.0f} MB"


# --------------------------------------------------------------------------------------------------------------
# the two runs


def compare(cfg: Config, device: str, work: Path) -> None:
    print(f"{'size':>14} {'N':>7}  {'variant':<16} {'time':>9}  {'host peak':>11}  {'gpu peak':>11}  x floor  "
          f"vs reference")
    for spec in cfg.sizes:
        try:
            num_query, num_gallery = (int(v) for v in spec.lower().split("x"))
        except ValueError:
            raise UserError(f"--sizes: expected QUERYxGALLERY like 618x9505, got {spec!r}") from None
        n = num_query + num_gallery
        qf, gf = clustered_features(num_query, num_gallery, cfg.dim, cfg.seed)
        np.save(work / "q.npy", qf)
        np.save(work / "g.npy", gf)
        base = dict(query=str(work / "q.npy"), gallery=str(work / "g.npy"), k1=cfg.k1, k2=cfg.k2,
                    lambda_value=cfg.lambda_value, repeats=cfg.repeats)
        variants = []
        if cfg.reference and n <= cfg.reference_max_n:
            variants.append(("reference numpy", dict(method="reference", device="cpu")))
        variants.append(("ours, matrices", dict(method="matrices", device=device)))
        if cfg.features:
            variants.append(("ours, features", dict(method="features", device=device)))
        if cfg.hard:
            variants.append(("ours, hard", dict(method="hard", device=device)))
        floors = {}
        for kind in ("topk", "mm"):
            result = measure({**base, "method": f"floor_{kind}", "device": device})
            floors[kind] = result["seconds"] if result else float("nan")
        ref, ref_out, label = None, None, f"{num_query} x {num_gallery}"
        for name, seconds in (("floor, top-k", floors["topk"]), ("floor, mm+top-k", floors["mm"])):
            print(f"{label:>14} {n:>7,}  {name:<16} {seconds:7.2f} s", flush=True)
            label = ""
        for name, extra in variants:
            out_path = work / f"{extra['method']}.npy"
            result = measure({**base, **extra, "out": str(out_path)})
            if result is None:
                print(f"{label:>14} {n:>7,}  {name:<16} failed (out of memory?)", flush=True)
                continue
            gpu = _mb(result["gpu_peak"]) if extra["device"].startswith("cuda") else f"{'-':>11}"
            floor = floors["topk" if extra["method"] == "matrices" else "mm"]
            x_floor = f"{result['seconds'] / floor:6.1f}x" if extra["method"] != "reference" else f"{'':>7}"
            line = (f"{label:>14} {n:>7,}  {name:<16} {result['seconds']:7.2f} s  {_mb(result['host_peak'])}  {gpu}"
                    f"  {x_floor}")
            out = np.load(out_path)
            if extra["method"] == "reference":
                ref, ref_out = result, out
            elif ref is not None and extra["method"] != "hard":
                mem = max(result["host_peak"], result["gpu_peak"], 1)
                line += (f"  {_times(ref['seconds'] / result['seconds'], 'faster', 'slower')}, "
                         f"{_times(ref['host_peak'] / mem, 'less memory', 'more memory')}, "
                         f"max |diff| {np.abs(out - ref_out).max():.1e}")
            print(line, flush=True)
            label = ""


def scale(cfg: Config, device: str, work: Path) -> None:
    print(f"ours from features, {cfg.scale_query_fraction:.0%} queries; 'output' is the q x g float32 result itself; "
          f"floor: addmm + top-k per row chunk over all N x N distances")
    print(f"{'N':>8} {'q x g':>16} {'time':>9}  {'floor':>9}  x floor  {'per query':>9}  {'host peak':>11}  "
          f"{'gpu peak':>11}  {'output':>11}  {'peak - output per image':>24}")
    for n in cfg.scale_sizes:
        num_query = max(1, round(n * cfg.scale_query_fraction))
        qf, gf = clustered_features(num_query, n - num_query, cfg.dim, cfg.seed)
        np.save(work / "q.npy", qf)
        np.save(work / "g.npy", gf)
        del qf, gf
        base = dict(query=str(work / "q.npy"), gallery=str(work / "g.npy"), k1=cfg.k1, k2=cfg.k2,
                    lambda_value=cfg.lambda_value, repeats=cfg.repeats, device=device)
        result = measure({**base, "method": "features"})
        label = f"{num_query:,} x {n - num_query:,}"
        if result is None:
            print(f"{n:>8,} {label:>16} failed (out of memory?)", flush=True)
            continue
        floor = measure({**base, "method": "floor_mm"})
        floor_s = floor["seconds"] if floor else float("nan")
        output = num_query * (n - num_query) * 4
        cuda = device.startswith("cuda")
        peak = result["gpu_peak"] if cuda else result["host_peak"]
        gpu = _mb(result["gpu_peak"]) if cuda else f"{'-':>11}"
        print(f"{n:>8,} {label:>16} {result['seconds']:7.2f} s  {floor_s:7.2f} s  {result['seconds'] / floor_s:6.1f}x  "
              f"{result['seconds'] / num_query * 1e3:6.2f} ms  {_mb(result['host_peak'])}  {gpu}  {_mb(output)}  "
              f"{(peak - output) / n / 1024:18.1f} KiB", flush=True)


def main(cfg: Config) -> None:
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    where = torch.cuda.get_device_name(device) if device.startswith("cuda") else f"{os.cpu_count()} CPU cores"
    print(f"device: {device} ({where}), torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"features: {cfg.dim}-d clustered, float32; k1={cfg.k1} k2={cfg.k2} lambda={cfg.lambda_value}; "
          f"load average {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="bench_rerank_") as tmp:
        (scale if cfg.scale else compare)(cfg, device, Path(tmp))
    print(f"load average at the end {' '.join(f'{v:.1f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    run(Config, main)
