"""Rank your own images: unlabelled query (and gallery) folders, ranked with trained checkpoints.

``rank_folders(cfg)`` takes a :class:`RankConfig` (``predict.py``'s Config inherits it beside
``clipreid.prediction.PredictConfig``; ``--query-dir`` chooses this stage) and writes into ``cfg.output_dir``, as
one set (staged, then moved into place: a failure leaves none of it):

- ``ranking_<method>.csv``: the ``topk`` nearest gallery images of every query, columns
  ``query, rank, gallery, distance`` (rank from 1; file names relative to their folder);
- ``distances_<method>.npy``: the full query x gallery distance matrix (float32, rows and columns in the
  order of ``query_files.txt`` and ``gallery_files.txt``);
- ``query_features.npy`` / ``gallery_features.npy``: L2-normalised features (float32), one row per file;
- ``query_files.txt`` / ``gallery_files.txt``: the file names, one per line;
- ``ranked_lists.png``: a few queries and their nearest images (no ground truth), and ``predict_config.json``;
- ``skipped_files.txt``, only when some image could not be decoded: each such file (its path, a tab, the
  reason). It is left out with its name everywhere (never another image's row) and counted in the summary.

``<method>`` is ``raw`` (squared Euclidean distances, lower = more similar) and each re-ranking asked for.
Hidden files (``._x.jpg`` of macOS copies) are not images. With several checkpoints each one's matrices
(re-ranked on their own) are fused as for the challenge sets, and the features files hold the concatenation of
each checkpoint's features scaled by the square root of its fusion weight: still L2-normalised, their squared
Euclidean distances are the similarity fusion of the raw distances.

Self-ranking: without a gallery folder the query folder is ranked against itself, and a gallery folder that
holds query images (``--gallery-dir`` the query folder's parent) ranks those against the gallery without
themselves. An image and itself are one item for the re-ranking (its k-reciprocal neighbourhoods hold it once,
as the reference holds each query once, never a twin), and their distance is ``inf`` in every matrix before
fusion (so it weighs no model) and in the outputs (left out of the rankings). A query's rows are therefore the
same whether its folder is ranked alone or inside a larger gallery that contains it, up to float rounding.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .checkpoint import RunWeights, checkpoint_file, checkpoint_labels
from .config import save_config
from .errors import UserError
from .features import Embedded, ImageCache, image_features, list_images
from .fileio import file_set
from .inference import (
    FusionOptions,
    InferenceOptions,
    Rerank,
    RerankOptions,
    fuse,
    fusion_description,
    load_for_inference,
    rerank_distances,
)
from .rerank import squared_distances
from .runtime import pick_device, resolve_precision
from .visualize import RANKED_PNG, save_ranked_lists

CONFIG_NAME = "predict_config.json"
QUERY_FILES, GALLERY_FILES = "query_files.txt", "gallery_files.txt"
QUERY_FEATURES, GALLERY_FEATURES = "query_features.npy", "gallery_features.npy"
SKIPPED_FILES = "skipped_files.txt"
CACHE_BYTES = 2 << 30  # decoded images kept in memory for several checkpoints up to this size; beyond, stream
CSV_ROWS = 4096  # query rows sorted and written at a time


@dataclass
class RankConfig(InferenceOptions, RerankOptions, FusionOptions):
    """What ``rank_folders`` reads: ``predict.py``'s Config inherits it and gives the defaults and the help (its
    checks make sure a folder ranking has checkpoints, and no submission CSVs)."""

    checkpoints: tuple[Path, ...] | None
    run_weights: RunWeights
    checkpoint_model: str | None
    query_dir: Path | None  # the stage runs when it is given
    gallery_dir: Path | None  # None: the query folder against itself
    topk: int
    ranked_lists: int  # 0: no picture
    output_dir: Path


@dataclass
class RankReport:
    """What ``rank_folders`` wrote."""

    lines: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)

    def summary(self) -> str:
        return "\n".join([*self.lines, *(f"  wrote {p}" for p in self.files)])


def _names(paths: Sequence[Path], root: Path) -> list[str]:
    return [p.relative_to(root).as_posix() for p in paths]


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


def _check_names(names: Sequence[str], root: Path) -> None:
    """UserError for a file name the text outputs cannot hold: not valid UTF-8 (bytes a filesystem allows, which
    Python carries as surrogate escapes) or with a line break. Checked when listing, before any model runs."""
    for name in names:
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            shown = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            raise UserError(f"{root / shown}: the file name is not valid UTF-8, so the ranking files cannot name "
                            "it; rename it (e.g. convmv -f latin1 -t utf8) or move it out of the folder") from None
        if "\n" in name or "\r" in name:
            raise UserError(f"{str(root / name)!r}: a file name with a line break cannot be listed one per line; "
                            "rename it or move it out of the folder")


def _check_output(out: Path, roots: Sequence[Path]) -> None:
    """UserError when the output folder is inside an image folder: the next run would rank its own pictures."""
    where = out.resolve()
    for root in roots:
        if where == root.resolve() or root.resolve() in where.parents:
            raise UserError(f"--output-dir {out} is inside the image folder {root}: the next run would rank its "
                            "ranked_lists.png as a photo; choose an output folder outside it")


@dataclass
class _Images:
    """The query and gallery lists as images to embed: each file once (a query image that is also a gallery
    image is one item), with each list's items."""

    paths: list[Path]
    query: list[int]  # the item of each query
    gallery: list[int]  # the item of each gallery image


def _items(query_paths: Sequence[Path], gallery_paths: Sequence[Path]) -> _Images:
    item_of = {os.path.realpath(p): i for i, p in reversed(list(enumerate(query_paths)))}
    paths, gallery = list(query_paths), []
    for p in gallery_paths:
        key = os.path.realpath(p)
        if key not in item_of:
            item_of[key] = len(paths)
            paths.append(p)
        gallery.append(item_of[key])
    return _Images(paths, list(range(len(query_paths))), gallery)


def _self_arrangement(query_items: np.ndarray, gallery_items: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """(query order, gallery order, shared) for ``rerank_distances``: the queries that are gallery images last,
    their gallery entries first in the same order, so the re-ranking holds each image once."""
    first = {}
    for j, item in enumerate(gallery_items.tolist()):
        first.setdefault(item, j)
    shared = [i for i, item in enumerate(query_items.tolist()) if item in first]
    alone = [i for i, item in enumerate(query_items.tolist()) if item not in first]
    partners = [first[query_items[i]] for i in shared]
    rest = sorted(set(range(len(gallery_items))) - set(partners))
    return np.array(alone + shared, dtype=np.int64), np.array(partners + rest, dtype=np.int64), len(shared)


def _distances(qf: torch.Tensor, gf: torch.Tensor, method: str, cfg: RerankOptions,
               arrangement: tuple[np.ndarray, np.ndarray, int], self_pairs: tuple[torch.Tensor, torch.Tensor]
               ) -> torch.Tensor:
    """One model's q x g matrix for ``method`` (raw or a re-ranking), ``inf`` where a query meets itself."""
    if method == "raw":
        d = squared_distances(qf, gf)
    else:
        q_order, g_order, shared = arrangement
        ranked = rerank_distances(qf[q_order], gf[g_order], method, k1=cfg.k1, k2=cfg.k2,
                                  lambda_value=cfg.lambda_value, hard_lambda=cfg.hard_lambda, shared=shared)
        d = torch.empty_like(ranked)
        d[torch.as_tensor(q_order)[:, None], torch.as_tensor(g_order)[None, :]] = ranked
    return _exclude(d.float().cpu(), self_pairs)


def _self_pairs(query_items: np.ndarray, gallery_items: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, columns) where a query meets its own image in the gallery (index pairs: no q x g mask in memory)."""
    columns: dict[int, list[int]] = {}
    for j, item in enumerate(gallery_items.tolist()):
        columns.setdefault(item, []).append(j)
    pairs = [(i, j) for i, item in enumerate(query_items.tolist()) for j in columns.get(item, ())]
    rows, cols = zip(*pairs, strict=True) if pairs else ((), ())
    return torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long)


def _exclude(d: torch.Tensor, self_pairs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """``d`` with ``inf`` where a query meets itself: an image is not its own match."""
    d[self_pairs] = math.inf
    return d


def _kept(got: Embedded, items: Sequence[int], paths: Sequence[Path], root: Path, what: str) -> list[int]:
    """The positions in ``items`` whose image was read; UserError when none was."""
    read = set(got.kept)
    kept = [k for k, item in enumerate(items) if item in read]
    if not kept:
        reason = dict(got.unreadable).get(Path(paths[0]), "it could not be decoded")
        raise UserError(f"none of the {len(items)} {what} of {root} could be read, e.g. {paths[0]}: {reason}")
    return kept


def rank_folders(cfg: RankConfig) -> RankReport:
    """Rank the images of ``cfg.query_dir`` against ``cfg.gallery_dir`` (or against themselves); see the module."""
    files = [checkpoint_file(c, cfg.run_weights) for c in cfg.checkpoints or ()]  # a missing one fails first
    methods: list[Rerank] = [m for m in dict.fromkeys(cfg.rerank) if m != "none"]
    query_root = Path(cfg.query_dir)
    self_mode = cfg.gallery_dir is None or Path(cfg.gallery_dir).resolve() == query_root.resolve()
    gallery_root = query_root if self_mode else Path(cfg.gallery_dir)
    query_paths = list_images(query_root)
    gallery_paths = query_paths if self_mode else list_images(gallery_root)
    out = Path(cfg.output_dir)
    _check_output(out, [query_root] if self_mode else [query_root, gallery_root])
    if self_mode and len(query_paths) < 2:
        raise UserError(f"{query_root} holds one image: ranking a folder against itself needs at least two "
                        "(or give --gallery-dir)")
    query_names, gallery_names = _names(query_paths, query_root), _names(gallery_paths, gallery_root)
    _check_names(query_names, query_root)
    _check_names(gallery_names, gallery_root)
    images = _items(query_paths, gallery_paths)
    report = RankReport()
    labels = checkpoint_labels(files)
    how = fusion_description(labels, cfg.fusion, "checkpoints")

    weights = [float(w) for w in cfg.weights] if cfg.weights is not None else [1.0] * len(files)
    total_weight = sum(weights)
    members = [f"{kind}_{m}.{ext}" for m in ("raw", "k_reciprocal", "hard")
               for kind, ext in (("ranking", "csv"), ("distances", "npy"))] + [RANKED_PNG, SKIPPED_FILES]
    # made now: an unwritable output folder fails before any model runs; an older set's extra files go
    with file_set(out, members=members) as stage:
        device = pick_device(cfg.device)
        cache = ImageCache(cfg.cache_images and len(files) > 1, cfg.progress)
        matrices: dict[str, list[torch.Tensor]] = {m: [] for m in ["raw", *methods]}
        query_parts, gallery_parts = [], []
        first: Embedded | None = None
        for path, w in zip(files, weights, strict=True):
            encoder = load_for_inference(path, device, cfg.checkpoint_model)
            h, width = encoder.image_size
            use = cache if len(images.paths) * 3 * h * width <= CACHE_BYTES else None  # large folders stream
            got = image_features(encoder, images.paths, batch_size=cfg.batch_size, device=device,
                                 dtype=resolve_precision(cfg.precision, device), flip=cfg.flip,
                                 num_workers=cfg.num_workers, progress=cfg.progress, cache=use,
                                 on_error="skip", desc="features")
            del encoder
            if first is None:
                first = got
                kq = _kept(got, images.query, query_paths, query_root, "query images")
                kg = _kept(got, images.gallery, gallery_paths, gallery_root, "gallery images")
                if self_mode and len(kq) < 2:
                    raise UserError(f"{query_root}: only one of its {len(query_paths)} images could be read; "
                                    "ranking a folder against itself needs at least two (see the files left out: "
                                    f"{first.unreadable[0][0]}: {first.unreadable[0][1]})")
                row_of = {item: r for r, item in enumerate(got.kept)}
                q_rows = torch.tensor([row_of[images.query[k]] for k in kq], dtype=torch.long)
                g_rows = torch.tensor([row_of[images.gallery[k]] for k in kg], dtype=torch.long)
                q_items = np.array([images.query[k] for k in kq], dtype=np.int64)
                g_items = np.array([images.gallery[k] for k in kg], dtype=np.int64)
                self_pairs = _self_pairs(q_items, g_items)
                arrangement = _self_arrangement(q_items, g_items)
            elif got.kept != first.kept:  # a file changed while the run went on
                changed = sorted(set(got.kept) ^ set(first.kept))[0]
                raise UserError(f"{images.paths[changed]} was readable for one checkpoint and not for another: "
                                "did the folder change during the run? run again")
            qf, gf = got.features[q_rows].to(device), got.features[g_rows].to(device)
            for m in matrices:
                matrices[m].append(_distances(qf, gf, m, cfg, arrangement, self_pairs))
            scale = math.sqrt(w / total_weight)
            query_parts.append(qf.float().cpu() * scale)
            gallery_parts.append(gf.float().cpu() * scale)

        query_names = [query_names[k] for k in kq]
        gallery_names = [gallery_names[k] for k in kg]
        query_paths = [query_paths[k] for k in kq]
        gallery_paths = [gallery_paths[k] for k in kg]
        n_self = len(set(self_pairs[0].tolist()))
        if self_mode:
            what = f"{len(query_paths)} images of {query_root} against each other"
        else:
            what = (f"{len(query_paths)} queries of {query_root} against {len(gallery_paths)} gallery images of "
                    f"{gallery_root}")
            if n_self:
                what += f" ({n_self} queries are gallery images: each left out of its own ranking)"
        report.lines.append(f"ranked {what}; {how}")
        if first.unreadable:
            names = [str(p) for p, _ in first.unreadable]
            listed = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            report.lines.append(f"left out {len(names)} unreadable image(s), listed in {out / SKIPPED_FILES}: "
                                f"{listed}")
            (stage / SKIPPED_FILES).write_text("".join(f"{p}\t{reason}\n" for p, reason in first.unreadable),
                                               encoding="utf-8")

        fusion_weights = tuple(weights) if cfg.weights is not None else None
        finals = {}
        for m, mats in matrices.items():
            fused = mats[0] if len(mats) == 1 else fuse(mats, cfg.fusion, fusion_weights, cfg.topk_fusion).float()
            # again after the fusion: a model of weight 0 turns inf into NaN there
            finals[m] = _exclude(fused.clone() if len(mats) == 1 else fused, self_pairs).numpy().astype(
                np.float32, copy=False)
            write_ranking(stage / f"ranking_{m}.csv", finals[m], query_names, gallery_names, cfg.topk)
            np.save(stage / f"distances_{m}.npy", finals[m])
        np.save(stage / QUERY_FEATURES, torch.cat(query_parts, 1).numpy())
        np.save(stage / GALLERY_FEATURES, torch.cat(gallery_parts, 1).numpy())
        _write_lines(stage / QUERY_FILES, query_names)
        _write_lines(stage / GALLERY_FILES, gallery_names)
        if cfg.ranked_lists > 0:
            shown = methods[-1] if methods else "raw"
            save_ranked_lists(stage / RANKED_PNG, query_paths, gallery_paths, finals[shown], None, None,
                              topk=cfg.topk, num_queries=cfg.ranked_lists,
                              title=f"{what}; {how}; distances: {shown}")
        save_config(cfg, stage / CONFIG_NAME)
        report.files = [out / p.name for p in sorted(stage.iterdir())]
    return report
