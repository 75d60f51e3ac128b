"""Speed of the data stages on a synthetic dataset the size of the real one (about 19k crops).

Each figure is printed next to a reference measured in the same run, as a ratio:

- synthetic generation: images per second (absolute; no reference exists);
- guarded extraction (``clipreid.download.extract_zip``) vs plain ``zipfile.ZipFile.extractall``;
- preprocessing with every image decoded (``check_images=True``) vs listing names only (``check_images=False``).

    .venv/bin/python benchmarks/bench_data_stages.py                # real-size, about 2 minutes on 2 cores
    .venv/bin/python benchmarks/bench_data_stages.py --train-players 48 --frames 6 12 --n-folds 4
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clipreid.config import run  # noqa: E402
from clipreid.download import extract_zip  # noqa: E402
from clipreid.preprocess import preprocess  # noqa: E402
from clipreid.synthetic import SyntheticSpec, generate_synthetic_dataset  # noqa: E402


@dataclass
class Config:
    # the real set has 436 train ids (8,569 crops), 50 test ids (960) and 468-618 challenge ids (9-10k crops)
    train_players: int = 436
    test_players: int = 50
    challenge_players: int = 468
    frames: tuple[int, int] = (15, 25)  # frames per player: about 20 on average, as in the real train split
    n_folds: int = 10  # GroupKFold splits (needs at least this many train+test sequences)
    repeats: int = 3  # timed runs of each variant; the best is reported
    workdir: Path | None = None  # where to build the data (default: a temporary folder, removed afterwards)


def best_of(repeats: int, fn) -> float:
    """Fastest of ``repeats`` runs of ``fn()``, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(cfg: Config) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench_data_")) if cfg.workdir is None else cfg.workdir
    try:
        spec = SyntheticSpec(num_train_players=cfg.train_players, num_test_players=cfg.test_players,
                             num_challenge_players=cfg.challenge_players, frames_per_player=cfg.frames)
        data = work / "data_reid"
        start = time.perf_counter()
        counts = generate_synthetic_dataset(data, spec, overwrite=True, progress=False)
        gen = time.perf_counter() - start
        n = sum(counts.values())
        print(f"cpu cores: {os.cpu_count()}   images: {n:,}")
        print(f"synthetic generation        {gen:7.2f} s   {n / gen:8.0f} img/s")

        archive = work / "data.zip"
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
            for f in sorted(data.rglob("*")):
                zf.write(f, f.relative_to(work))

        def plain() -> None:
            shutil.rmtree(work / "plain", ignore_errors=True)
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(work / "plain")

        def guarded() -> None:
            extract_zip(archive, work / "guarded", progress=False)

        ref = best_of(cfg.repeats, plain)
        ours = best_of(cfg.repeats, guarded)
        print(f"extract: zipfile.extractall {ref:7.2f} s   (reference)")
        print(f"extract: extract_zip        {ours:7.2f} s   {ours / ref:5.2f}x the reference")

        def prep(check: bool) -> None:
            preprocess(data, n_folds=cfg.n_folds, check_images=check, progress=False)

        listing = best_of(cfg.repeats, lambda: prep(False))
        checked = best_of(cfg.repeats, lambda: prep(True))
        print(f"preprocess, names only      {listing:7.2f} s   (reference)")
        print(f"preprocess, images decoded  {checked:7.2f} s   {checked / listing:5.2f}x the reference, "
              f"{(checked - listing) / n * 1e3:.2f} ms per image for the check")
    finally:
        if cfg.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    run(Config, main)
