"""Rank your own images: unlabelled query (and gallery) folders, ranked with trained checkpoints.

``rank_folders(cfg)`` takes the config dataclass of ``predict.py`` (fields ``query_dir``, ``gallery_dir``,
``topk``, ``ranked_lists`` besides the checkpoint, re-ranking, fusion and running fields) and writes into
``cfg.output_dir``, as one set (staged, then moved into place: a failure leaves none of it):

- ``ranking_<method>.csv``: the ``topk`` nearest gallery images of every query, columns
  ``query, rank, gallery, distance`` (rank from 1; file names relative to their folder);
- ``distances_<method>.npy``: the full query x gallery distance matrix (float32, rows and columns in the
  order of ``query_files.txt`` and ``gallery_files.txt``);
- ``query_features.npy`` / ``gallery_features.npy``: L2-normalised features (float32), one row per file;
- ``query_files.txt`` / ``gallery_files.txt``: the file names, one per line;
- ``ranked_lists.png``: a few queries and their nearest images (no ground truth), and ``predict_config.json``.

``<method>`` is ``raw`` (squared Euclidean distances, lower = more similar) and each re-ranking asked for.
Without a gallery folder the query folder is ranked against itself: distances to the image itself are
``inf`` in the matrix and left out of the rankings. With several checkpoints each one's matrices (re-ranked
on their own) are fused as for the challenge sets, and the features files hold the concatenation of each
checkpoint's features scaled by the square root of its fusion weight: still L2-normalised, their squared
Euclidean distances are the similarity fusion of the raw distances.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import save_config
from .errors import UserError
from .evaluation import (
    FUSIONS,
    ImageCache,
    check_rerank,
    checkpoint_labels,
    fuse,
    load_for_inference,
    query_gallery_features,
    rerank_distances,
)
from .features import list_images, squared_distances
from .fileio import file_set
from .model import checkpoint_file
from .runtime import pick_device

CONFIG_NAME = "predict_config.json"
RANKED_PNG = "ranked_lists.png"
QUERY_FILES, GALLERY_FILES = "query_files.txt", "gallery_files.txt"
QUERY_FEATURES, GALLERY_FEATURES = "query_features.npy", "gallery_features.npy"
CACHE_BYTES = 2 << 30  # decoded images kept in memory for several checkpoints up to this size; beyond, stream
CSV_ROWS = 4096  # query rows sorted and written at a time


@dataclass
class RankReport:
    """What ``rank_folders`` wrote."""

    lines: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)

    def summary(self) -> str:
        return "\n".join([*self.lines, *(f"  wrote {p}" for p in self.files)])


def rerank_methods(rerank: str | Sequence[str]) -> list[str]:
    """The re-ranking methods of a config's ``rerank`` (one name or a tuple of names), ``none`` left out."""
    methods = [rerank] if isinstance(rerank, str) else list(rerank)
    check_rerank(methods)
    return [m for m in dict.fromkeys(methods) if m != "none"]


def _names(paths: Sequence[Path], root: Path) -> list[str]:
    return [p.relative_to(root).as_posix() for p in paths]


def _check(cfg: Any) -> tuple[list[Path], list[str]]:
    """The checkpoints and re-ranking methods of ``cfg``, every input checked before any model runs."""
    checkpoints = [Path(c) for c in (cfg.checkpoints or ())]
    if not checkpoints:
        raise UserError("checkpoints: ranking a folder needs at least one checkpoint (--checkpoints RUN/best.pt)")
    if tuple(getattr(cfg, "submissions", ()) or ()):
        raise UserError("submissions: submission CSVs hold the test/challenge sets' distances and cannot be fused "
                        "with a folder ranking; leave --submissions out with --query-dir")
    methods = rerank_methods(cfg.rerank)
    if cfg.fusion not in FUSIONS:
        raise UserError(f"fusion: unknown method {cfg.fusion!r}; choose from {', '.join(FUSIONS)}")
    if cfg.weights is not None:
        if cfg.fusion == "dissimilarity":
            raise UserError("weights: dissimilarity fusion weighs the models itself; use similarity or winners "
                            "fusion, or leave weights out")
        if len(cfg.weights) != len(checkpoints):
            raise UserError(f"weights: got {len(cfg.weights)} weights for {len(checkpoints)} checkpoints")
        if any(not math.isfinite(w) or w < 0 for w in cfg.weights) or sum(cfg.weights) <= 0:
            raise UserError(f"weights: must be finite, >= 0 and not all 0, got {list(cfg.weights)}")
    if cfg.topk < 1:
        raise UserError(f"topk: must be at least 1, got {cfg.topk}")
    if cfg.ranked_lists < 0:
        raise UserError(f"ranked_lists: must be 0 (no picture) or more, got {cfg.ranked_lists}")
    for c in checkpoints:
        checkpoint_file(c)
    return checkpoints, methods


def _exclude_self(distmat: torch.Tensor) -> torch.Tensor:
    """The matrix with ``inf`` on its diagonal: an image is not its own match."""
    distmat = distmat.clone()
    distmat.fill_diagonal_(math.inf)
    return distmat


def write_ranking(path: Path, distmat: np.ndarray, query_names: Sequence[str], gallery_names: Sequence[str],
                  topk: int) -> None:
    """The ``topk`` nearest gallery images of each query as CSV rows ``query, rank, gallery, distance``.

    Ties keep the gallery order (a stable sort); infinite distances (the image itself) are left out.
    """
    k = min(topk, distmat.shape[1])
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write("query,rank,gallery,distance\n")
        for a in range(0, len(distmat), CSV_ROWS):
            block = distmat[a:a + CSV_ROWS]
            order = np.argsort(block, axis=1, kind="stable")[:, :k]
            values = np.take_along_axis(block, order, axis=1)
            lines = []
            for i, (row, vals) in enumerate(zip(order, values, strict=True)):
                query = _csv_field(query_names[a + i])
                lines += [f"{query},{rank},{_csv_field(gallery_names[g])},{v:.6f}\n"
                          for rank, (g, v) in enumerate(zip(row, vals, strict=True), start=1) if np.isfinite(v)]
            f.write("".join(lines))


def _csv_field(text: str) -> str:
    if any(c in text for c in ',"\n\r'):
        return '"' + text.replace('"', '""') + '"'
    return text


def _write_lines(path: Path, names: Sequence[str]) -> None:
    path.write_text("".join(f"{n}\n" for n in names), encoding="utf-8")


def rank_folders(cfg: Any) -> RankReport:
    """Rank the images of ``cfg.query_dir`` against ``cfg.gallery_dir`` (or against themselves); see the module."""
    checkpoints, methods = _check(cfg)
    query_root = Path(cfg.query_dir)
    query_paths = list_images(query_root)
    self_mode = cfg.gallery_dir is None or Path(cfg.gallery_dir).resolve() == query_root.resolve()
    gallery_root = query_root if self_mode else Path(cfg.gallery_dir)
    gallery_paths = query_paths if self_mode else list_images(gallery_root)
    if self_mode and len(query_paths) < 2:
        raise UserError(f"{query_root} holds one image: ranking a folder against itself needs at least two "
                        "(or give --gallery-dir)")
    query_names, gallery_names = _names(query_paths, query_root), _names(gallery_paths, gallery_root)
    out = Path(cfg.output_dir)
    report = RankReport()
    what = f"{len(query_paths)} images of {query_root} against each other" if self_mode else \
        f"{len(query_paths)} queries of {query_root} against {len(gallery_paths)} gallery images of {gallery_root}"
    labels = checkpoint_labels(checkpoints)
    how = ", ".join(labels) if len(labels) <= 4 else f"{len(labels)} checkpoints"
    if len(labels) > 1:
        how = f"{cfg.fusion} fusion of {how}"
    report.lines.append(f"ranked {what}; {how}")

    weights = [float(w) for w in cfg.weights] if cfg.weights is not None else [1.0] * len(checkpoints)
    total_weight = sum(weights)
    with file_set(out) as stage:  # made now: an unwritable output folder fails before any model runs
        device = pick_device(cfg.device)
        n_images = len(query_paths) + (0 if self_mode else len(gallery_paths))
        cache = ImageCache(bool(getattr(cfg, "cache_images", False)) and len(checkpoints) > 1, cfg.progress)
        matrices: dict[str, list[torch.Tensor]] = {m: [] for m in ["raw", *methods]}
        query_parts, gallery_parts = [], []
        for path, w in zip(checkpoints, weights, strict=True):
            encoder = load_for_inference(path, device)
            h, width = encoder.image_size
            use = cache if n_images * 3 * h * width <= CACHE_BYTES else None  # large folders stream from disk
            qf, gf = query_gallery_features(encoder, query_paths, [] if self_mode else gallery_paths,
                                            device=device, cfg=cfg, cache=use)
            if self_mode:
                gf = qf
            del encoder
            for m in matrices:
                d = squared_distances(qf, gf) if m == "raw" else rerank_distances(
                    qf, gf, m, k1=cfg.k1, k2=cfg.k2, lambda_value=cfg.lambda_value, hard_lambda=cfg.hard_lambda)
                matrices[m].append(d.float().cpu())
            scale = math.sqrt(w / total_weight)
            query_parts.append(qf.float().cpu() * scale)
            gallery_parts.append(gf.float().cpu() * scale)

        fusion_weights = tuple(weights) if cfg.weights is not None else None
        finals = {}
        for m, mats in matrices.items():
            fused = mats[0] if len(mats) == 1 else fuse(mats, cfg.fusion, fusion_weights, cfg.topk_fusion).float()
            finals[m] = (_exclude_self(fused) if self_mode else fused).numpy().astype(np.float32, copy=False)
            write_ranking(stage / f"ranking_{m}.csv", finals[m], query_names, gallery_names, cfg.topk)
            np.save(stage / f"distances_{m}.npy", finals[m])
        np.save(stage / QUERY_FEATURES, torch.cat(query_parts, 1).numpy())
        np.save(stage / GALLERY_FEATURES, torch.cat(gallery_parts, 1).numpy())
        _write_lines(stage / QUERY_FILES, query_names)
        _write_lines(stage / GALLERY_FILES, gallery_names)
        if cfg.ranked_lists > 0:
            from .visualize import save_ranked_lists

            shown = methods[-1] if methods else "raw"
            save_ranked_lists(stage / RANKED_PNG, query_paths, gallery_paths, finals[shown], None, None,
                              topk=cfg.topk, num_queries=cfg.ranked_lists,
                              title=f"{what}; {how}; distances: {shown}")
        save_config(cfg, stage / CONFIG_NAME)
        report.files = [out / p.name for p in sorted(stage.iterdir())]
    if cfg.ranked_lists == 0:
        (out / RANKED_PNG).unlink(missing_ok=True)  # an earlier run's picture would not match this ranking
    return report
