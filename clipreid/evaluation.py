"""Evaluation of trained checkpoints: mAP, rank-1/5/10 and mINP with and without re-ranking, and their fusion.

``evaluate(cfg)`` takes the config dataclass of ``evaluate.py`` (any object with its fields) and returns an
:class:`EvalReport`. Three splits:

- ``test``: the test split's queries against its gallery;
- ``fold``: the frame-00 queries of GroupKFold fold ``fold`` against the fold's other images;
- ``folds``: each checkpoint on the fold it was held out from in training (``train.py --validation fold``),
  with the mean and standard deviation over the checkpoints.

For several checkpoints on the test or fold split, a ``fused`` row is the similarity fusion (element-wise mean)
of their distance matrices, per re-ranking method. The helpers here (features of a checkpoint, re-ranking by
name, fusion by name) are shared with ``clipreid.predict``.
"""

from __future__ import annotations

import dataclasses
import gc
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .config import save_config
from .dataset import Split, load_split
from .errors import UserError
from .features import embed, extract_features, squared_distances
from .fileio import check_writable, file_set, write_text
from .fusion import dissimilarity_fusion, similarity_fusion, winners_fusion
from .metrics import compute_scores
from .model import ReIDEncoder, checkpoint_file, load_encoder, read_checkpoint, run_dir_of
from .rerank import hard_k_reciprocal, k_reciprocal_features
from .runtime import pick_device, resolve_precision
from .transforms import decode_images

RERANKS = ("none", "k_reciprocal", "hard")
FUSIONS = ("similarity", "dissimilarity", "winners")
METRICS = (("mAP", "mAP"), ("rank1", "rank-1"), ("rank5", "rank-5"), ("rank10", "rank-10"), ("mINP", "mINP"))
RESULTS_CSV, RESULTS_MD, CONFIG_NAME, RANKED_PNG = ("eval_results.csv", "eval_results.md", "evaluate_config.json",
                                                   "ranked_lists.png")
FUSED = "fused"


# --------------------------------------------------------------------------------------------------------------
# shared helpers: checkpoints, features, re-ranking and fusion by name


def checkpoint_labels(checkpoints: Sequence[Path]) -> list[str]:
    """Short unique names for table rows: the run folder's name, with ``/last`` for a last.pt."""
    labels = []
    for path in checkpoints:
        path = Path(path)
        label = run_dir_of(path).name or str(path)
        if path.suffix == ".pt" and path.name != "best.pt":
            label += f"/{path.stem}"
        labels.append(label)
    if len(set(labels)) < len(labels):
        return [str(p) for p in checkpoints]
    return labels


def check_rerank(methods: Sequence[str]) -> None:
    """UserError for a re-ranking method that is not one of ``RERANKS``."""
    bad = [m for m in methods if m not in RERANKS]
    if bad:
        raise UserError(f"rerank: unknown re-ranking {bad[0]!r}; choose from {', '.join(RERANKS)}")


def rerank_distances(query: torch.Tensor, gallery: torch.Tensor, method: str, *, k1: int = 20, k2: int = 6,
                     lambda_value: float = 0.3, hard_lambda: float = 0.7) -> torch.Tensor:
    """The q x g distance matrix of L2-normalised features for a re-ranking ``method`` (see ``RERANKS``).

    ``none``: squared Euclidean; ``k_reciprocal``: Zhong et al. (k1, k2, lambda_value); ``hard``: the 2023
    winners' hard-weight variant (k1, k2, hard_lambda). Runs on the features' device.
    """
    if method == "none":
        return squared_distances(query, gallery)
    if method == "k_reciprocal":
        return k_reciprocal_features(query, gallery, k1, k2, lambda_value)
    if method == "hard":
        return hard_k_reciprocal(query, gallery, k1, k2, hard_lambda)
    raise UserError(f"rerank: unknown re-ranking {method!r}; choose from {', '.join(RERANKS)}")


def fuse(matrices: Sequence[torch.Tensor], method: str = "similarity", weights: Sequence[float] | None = None,
         topk: int = 15) -> torch.Tensor:
    """Fuse same-shape distance matrices by ``similarity``, ``dissimilarity`` or ``winners`` fusion (float64)."""
    mats = [torch.as_tensor(m, dtype=torch.float64).cpu() for m in matrices]
    if weights is not None and len(weights) != len(mats):
        raise UserError(f"weights: got {len(weights)} weights for {len(mats)} distance matrices (one per checkpoint, "
                        "then one per submission CSV)")
    try:
        if method == "similarity":
            return similarity_fusion(mats, weights)
        if method == "dissimilarity":
            if weights is not None:
                raise UserError("weights: dissimilarity fusion weighs the models itself; use similarity or winners "
                                "fusion, or leave weights out")
            return dissimilarity_fusion(mats, topk)
        if method == "winners":
            return winners_fusion(mats, topk, weights)
    except ValueError as err:
        raise UserError(f"fusion: {err}") from None
    raise UserError(f"fusion: unknown method {method!r}; choose from {', '.join(FUSIONS)}")


def load_for_inference(checkpoint: Path, device: torch.device, model: str | None = None) -> ReIDEncoder:
    """``load_encoder`` after freeing the previous model's memory (several large checkpoints in a row)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return load_encoder(checkpoint, device, model)


class ImageCache:
    """Letterboxed uint8 images decoded once per image size (on all cores) and reused by every checkpoint of a run.

    Disabled, it keeps nothing and each checkpoint streams its images from disk through DataLoader workers. At
    224 x 224 an image takes 150 KB: about 1.5 GB for the challenge set.
    """

    def __init__(self, enabled: bool = True, progress: bool = True) -> None:
        self.enabled, self.progress = enabled, progress
        self._images: dict[tuple[tuple[str, ...], tuple[int, int], str], torch.Tensor] = {}

    def get(self, paths: Sequence[Path], size: tuple[int, int], interpolation: str = "bilinear"
            ) -> torch.Tensor | None:
        """The decoded images of ``paths`` at ``size`` (resized with ``interpolation``), or None when disabled."""
        if not self.enabled:
            return None
        key = (tuple(str(p) for p in paths), tuple(size), interpolation)
        if key not in self._images:
            self._images[key] = decode_images(paths, size, progress=self.progress, desc="decode images",
                                              interpolation=interpolation)
        return self._images[key]


def query_gallery_features(encoder: ReIDEncoder, query_paths: Sequence[Path], gallery_paths: Sequence[Path], *,
                           device: torch.device, cfg: Any, cache: ImageCache | None = None
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of the query and gallery images on ``device``, in one pass (``cfg``: batch_size, flip, precision,
    num_workers, progress), from ``cache`` when it is enabled."""
    paths = [*query_paths, *gallery_paths]
    images = cache.get(paths, encoder.image_size, encoder.interpolation) if cache is not None else None
    if images is None:
        features, _ = embed(encoder, paths, batch_size=cfg.batch_size, device=str(device), flip=cfg.flip,
                            precision=cfg.precision, num_workers=getattr(cfg, "num_workers", 0),
                            progress=cfg.progress)
    else:
        features = extract_features(encoder, images, batch_size=cfg.batch_size, device=device,
                                    dtype=resolve_precision(cfg.precision, device), flip=cfg.flip,
                                    progress=cfg.progress, desc="features")
    features = features.to(device)
    return features[:len(query_paths)], features[len(query_paths):]


# --------------------------------------------------------------------------------------------------------------
# results and tables


@dataclass
class Row:
    """Scores of one model (or the fusion, or a mean) with one re-ranking method; metric values are fractions."""

    model: str
    rerank: str
    scores: dict[str, float]
    checkpoint: str = ""
    fold: int | None = None
    std: dict[str, float] | None = None  # set on mean rows: the standard deviation over folds


def _cell(row: Row, key: str) -> str:
    text = f"{100 * row.scores[key]:.2f}"
    return f"{text} ± {100 * row.std[key]:.2f}" if row.std is not None else text


def format_table(rows: Sequence[Row], *, markdown: bool = False, folds: bool = False) -> str:
    """The rows as an aligned text table (or a Markdown table); metrics in %."""
    header = ["model", *(["fold"] if folds else []), "re-ranking", *(name for _, name in METRICS)]
    body = [[r.model, *([("" if r.fold is None else str(r.fold))] if folds else []), r.rerank,
             *(_cell(r, k) for k, _ in METRICS)] for r in rows]
    n_text = 3 if folds else 2  # left-aligned columns
    if markdown:
        lines = ["| " + " | ".join(header) + " |",
                 "|" + "|".join("---" if i < n_text else "---:" for i in range(len(header))) + "|"]
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
        return "\n".join(lines)
    widths = [max(len(c) for c in col) for col in zip(header, *body, strict=True)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i < n_text else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    return "\n".join([line(header), *(line(cells) for cells in body)])


def results_frame(rows: Sequence[Row], split: str) -> pd.DataFrame:
    """One line per row (mean rows are followed by a ``std`` line); metrics as fractions in [0, 1]."""
    records = []
    for r in rows:
        base = {"model": r.model, "checkpoint": r.checkpoint, "split": split, "fold": r.fold, "rerank": r.rerank}
        records.append({**base, **{k: r.scores[k] for k, _ in METRICS},
                        "queries": r.scores.get("num_valid_queries")})
        if r.std is not None:
            records[-1]["model"] = "mean"
            records.append({**base, "model": "std", **{k: r.std[k] for k, _ in METRICS}, "queries": None})
    frame = pd.DataFrame.from_records(records)
    for col in ("fold", "queries"):
        frame[col] = frame[col].astype("Int64")
    return frame


@dataclass
class EvalReport:
    """What ``evaluate`` computed and wrote."""

    title: str
    rows: list[Row]
    folds: bool
    output_dir: Path
    files: list[Path] = field(default_factory=list)
    ranked_lists: Path | None = None
    ranked_row: Row | None = None

    def summary(self) -> str:
        lines = [self.title, format_table(self.rows, folds=self.folds), ""]
        lines += [f"wrote {p}" for p in self.files]
        if self.ranked_lists is not None and self.ranked_row is not None:
            lines.append(f"ranked lists ({self.ranked_row.model}, re-ranking {self.ranked_row.rerank}): "
                         f"{self.ranked_lists}")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------
# evaluate


def _scores(distmat: torch.Tensor, split: Split) -> dict[str, float]:
    return compute_scores(distmat, split.query_players, split.gallery_players, split.query_cams, split.gallery_cams)


def _matrices(encoder: ReIDEncoder, split: Split, device: torch.device, cfg: Any,
              cache: ImageCache | None = None) -> dict[str, Any]:
    """Distance matrices (on the CPU) of one encoder on a split, one per re-ranking method of ``cfg.rerank``."""
    qf, gf = query_gallery_features(encoder, split.query_paths, split.gallery_paths, device=device, cfg=cfg,
                                    cache=cache)
    return {m: rerank_distances(qf, gf, m, k1=cfg.k1, k2=cfg.k2, lambda_value=cfg.lambda_value,
                                hard_lambda=cfg.hard_lambda).float().cpu() for m in dict.fromkeys(cfg.rerank)}


def _fold_of(checkpoint: Path) -> int:
    """The fold a checkpoint was validated on in training; UserError when it was not trained with a fold."""
    config = read_checkpoint(checkpoint).get("config") or {}
    if config.get("validation") != "fold":
        raise UserError(f"{checkpoint} was trained with validation={config.get('validation', 'unknown')}, not fold; "
                        "--split folds scores each checkpoint on its held-out fold: train with --validation fold "
                        "--fold K, or use --split test")
    return int(config["fold"])


def _write_results(report: EvalReport, split: str, cfg: Any, stage: Path) -> None:
    """The tables and the config into the staging folder ``stage`` of ``report.output_dir``'s file set."""
    write_text(stage / RESULTS_CSV, results_frame(report.rows, split).to_csv(index=False))
    table = format_table(report.rows, markdown=True, folds=report.folds)
    write_text(stage / RESULTS_MD, f"{report.title}\n\n{table}\n")
    save_config(cfg, stage / CONFIG_NAME)
    report.files += [report.output_dir / name for name in (RESULTS_CSV, RESULTS_MD, CONFIG_NAME)]


def evaluate(cfg: Any) -> EvalReport:
    """Score every checkpoint of ``cfg.checkpoints`` on ``cfg.split`` with each ``cfg.rerank`` method.

    Writes eval_results.csv (fractions), eval_results.md (%), evaluate_config.json and, for the test and fold
    splits, ranked_lists.png of the best row into ``cfg.output_dir`` (default: the first checkpoint's run
    folder / eval).
    """
    checkpoints = [Path(c) for c in cfg.checkpoints]
    if not checkpoints:
        raise UserError("checkpoints: give at least one checkpoint (a best.pt / last.pt, or its run folder)")
    if not cfg.rerank:
        raise UserError("rerank: give at least one of " + ", ".join(RERANKS))
    check_rerank(cfg.rerank)
    for c in checkpoints:
        checkpoint_file(c)  # a missing file fails now, not after the first model's work
    device = pick_device(cfg.device)
    out = Path(cfg.output_dir) if cfg.output_dir is not None else run_dir_of(checkpoints[0]) / "eval"
    check_writable(out, "--output-dir")  # before any image is decoded, not after all the work
    cfg = dataclasses.replace(cfg, output_dir=out) if dataclasses.is_dataclass(cfg) else cfg
    labels = checkpoint_labels(checkpoints)
    if cfg.split not in ("test", "fold", "folds"):
        raise UserError(f"split must be test, fold or folds, not {cfg.split!r}")
    # tables, picture and config replace the previous ones as one set, or not at all
    with file_set(out, members=(RESULTS_CSV, RESULTS_MD, CONFIG_NAME, RANKED_PNG)) as stage:
        if cfg.split == "folds":
            report = _evaluate_folds(cfg, checkpoints, labels, device, out)
        else:
            report = _evaluate_split(cfg, checkpoints, labels, device, out, stage)
        _write_results(report, cfg.split, cfg, stage)
    return report


def _evaluate_split(cfg: Any, checkpoints: list[Path], labels: list[str], device: torch.device,
                    out: Path, stage: Path | None = None) -> EvalReport:
    split = load_split(cfg.data_dir, "test" if cfg.split == "test" else "fold", cfg.fold)
    where = "test split" if cfg.split == "test" else f"fold {cfg.fold}"
    title = f"{where} of {cfg.data_dir}: {len(split.query_paths)} queries, {len(split.gallery_paths)} gallery images"
    results: list[tuple[Row, torch.Tensor]] = []  # every row with its distance matrix
    per_model = []
    cache = ImageCache(getattr(cfg, "cache_images", False), cfg.progress)
    for path, label in zip(checkpoints, labels, strict=True):
        encoder = load_for_inference(path, device, getattr(cfg, "checkpoint_model", None))
        mats = _matrices(encoder, split, device, cfg, cache)
        del encoder
        per_model.append(mats)
        results += [(Row(label, m, _scores(d, split), str(path)), d) for m, d in mats.items()]
    if len(checkpoints) > 1:
        for m in per_model[0]:
            fused = fuse([mats[m] for mats in per_model], "similarity")
            results.append((Row(FUSED, m, _scores(fused, split)), fused))
    report = EvalReport(title, [r for r, _ in results], False, out)
    if cfg.ranked_lists > 0:
        best, distmat = max(results, key=lambda rd: rd[0].scores["mAP"])  # the first of equal rows
        path = out / RANKED_PNG
        from .visualize import save_ranked_lists

        save_ranked_lists((stage or out) / RANKED_PNG, split.query_paths, split.gallery_paths, distmat,
                          split.query_players, split.gallery_players, topk=cfg.topk, num_queries=cfg.ranked_lists,
                          query_cams=split.query_cams, gallery_cams=split.gallery_cams,
                          title=f"{best.model}, re-ranking {best.rerank}: {title}")
        report.ranked_lists, report.ranked_row = path, best
    return report


def _evaluate_folds(cfg: Any, checkpoints: list[Path], labels: list[str], device: torch.device,
                    out: Path) -> EvalReport:
    folds = [_fold_of(c) for c in checkpoints]  # every checkpoint is checked before any work
    splits: dict[int, Split] = {}
    rows = []
    cache = ImageCache(getattr(cfg, "cache_images", False), cfg.progress)
    for path, label, fold in zip(checkpoints, labels, folds, strict=True):
        if fold not in splits:
            splits[fold] = load_split(cfg.data_dir, "fold", fold)
        split = splits[fold]
        print(f"{label}: fold {fold} of {cfg.data_dir}, {len(split.query_paths)} queries, "
              f"{len(split.gallery_paths)} gallery images", flush=True)
        encoder = load_for_inference(path, device, getattr(cfg, "checkpoint_model", None))
        mats = _matrices(encoder, split, device, cfg, cache)
        del encoder
        rows += [Row(label, m, _scores(d, split), str(path), fold) for m, d in mats.items()]
    n = len(checkpoints)
    for m in dict.fromkeys(cfg.rerank):
        values = {k: np.array([r.scores[k] for r in rows if r.rerank == m]) for k, _ in METRICS}
        mean = {k: float(v.mean()) for k, v in values.items()}
        std = {k: float(v.std(ddof=1)) if n > 1 else 0.0 for k, v in values.items()}
        rows.append(Row(f"mean ± std ({n})", m, mean, std=std))
    title = (f"{n} checkpoint(s), each on its held-out fold of {cfg.data_dir}; mean ± std (sample standard "
             "deviation) over the checkpoints")
    return EvalReport(title, rows, True, out)
