"""Evaluation of trained checkpoints: mAP, rank-1/5/10 and mINP with and without re-ranking, and their fusion.

``evaluate(cfg)`` takes an :class:`EvaluateConfig` (``evaluate.py``'s Config inherits it) and returns an
:class:`EvalReport`. Three splits:

- ``test``: the test split's queries against its gallery;
- ``fold``: the frame-00 queries of GroupKFold fold ``fold`` against the fold's other images;
- ``folds``: each checkpoint on the fold it was held out from in training (``train.py --validation fold``),
  with the mean and standard deviation over the checkpoints.

For several checkpoints on the test or fold split, a ``fused`` row is the similarity fusion (element-wise mean)
of their distance matrices, per re-ranking method. The helpers here (features of a checkpoint, re-ranking by
name, fusion by name) are shared with ``clipreid.prediction`` and the trainer.

Which weights are scored is said out loud (README: "Which weights"; ``clipreid.checkpoint`` reads them): every row
names its epoch, scoring a ``best.pt`` on the split that selected it adds a warning line, and a fold checkpoint is
refused on a ``train_df.csv`` whose fold is no longer the one it held out.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch

from .checkpoint import (
    CheckpointInfo,
    RunWeights,
    check_fold_identity,
    checkpoint_file,
    checkpoint_info,
    checkpoint_labels,
    run_dir_of,
    selection_warning,
    trained_on_warning,
    weights_lines,
)
from .config import save_config
from .dataset import Split, load_split
from .errors import UserError
from .features import ImageCache
from .fileio import check_writable, file_set, write_text
from .inference import (
    InferenceOptions,
    RerankOptions,
    fuse,
    load_for_inference,
    query_gallery_features,
    rerank_all,
    split_scores,
)
from .layout import TRAIN_DF
from .model import ReIDEncoder
from .runtime import pick_device
from .visualize import RANKED_PNG, save_ranked_lists

METRICS = (("mAP", "mAP"), ("rank1", "rank-1"), ("rank5", "rank-5"), ("rank10", "rank-10"), ("mINP", "mINP"))
ALLSHOTS = ("rank1_allshots", "rank-1 allshots")  # the toolkit's allshots CMC, shown when the metrics give it
RESULTS_CSV, RESULTS_MD, CONFIG_NAME = "eval_results.csv", "eval_results.md", "evaluate_config.json"
FUSED = "fused"
EvalSplit = Literal["test", "fold", "folds"]


@dataclass
class EvaluateConfig(InferenceOptions, RerankOptions):
    """What ``evaluate`` reads: ``evaluate.py``'s Config inherits it and gives the defaults and the help."""

    checkpoints: tuple[Path, ...]  # run folders or .pt files, at least one
    run_weights: RunWeights
    checkpoint_model: str | None
    data_dir: Path
    split: EvalSplit
    fold: int
    camera_rule: bool | None  # None: on when train_df.csv has cameras
    output_dir: Path | None  # None: <run folder of the first checkpoint>/eval
    ranked_lists: int
    topk: int


# --------------------------------------------------------------------------------------------------------------
# shared helpers: features, re-ranking and fusion by name


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
    weights: str = ""  # which weights: "epoch 4 (last)", "epoch 2 (best mAP on the test split)"; empty for fusions
    epoch: int | None = None


def metric_columns(rows: Sequence[Row]) -> tuple[tuple[str, str], ...]:
    """The metric columns of a table: METRICS, with the toolkit's allshots rank-1 after rank-1 when every row
    has it."""
    if rows and all(ALLSHOTS[0] in r.scores for r in rows):
        return (*METRICS[:2], ALLSHOTS, *METRICS[2:])
    return METRICS


def _cell(row: Row, key: str) -> str:
    text = f"{100 * row.scores[key]:.2f}"
    return f"{text} ± {100 * row.std[key]:.2f}" if row.std is not None else text


def format_table(rows: Sequence[Row], *, markdown: bool = False, folds: bool = False) -> str:
    """The rows as an aligned text table (or a Markdown table); metrics in %, the weights' epoch beside the
    model."""
    metrics = metric_columns(rows)
    header = ["model", "epoch", *(["fold"] if folds else []), "re-ranking", *(name for _, name in metrics)]
    body = [[r.model, "" if r.epoch is None else str(r.epoch), *([("" if r.fold is None else str(r.fold))]
                                                                 if folds else []), r.rerank,
             *(_cell(r, k) for k, _ in metrics)] for r in rows]
    n_text = 4 if folds else 3  # left-aligned columns
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
    metrics = metric_columns(rows)
    for r in rows:
        base = {"model": r.model, "checkpoint": r.checkpoint, "epoch": r.epoch, "weights": r.weights, "split": split,
                "fold": r.fold, "rerank": r.rerank}
        records.append({**base, **{k: r.scores[k] for k, _ in metrics},
                        "queries": r.scores.get("num_valid_queries")})
        if r.std is not None:
            records[-1]["model"] = "mean"
            records.append({**base, "model": "std", **{k: r.std[k] for k, _ in metrics}, "queries": None})
    frame = pd.DataFrame.from_records(records)
    for col in ("epoch", "fold", "queries"):
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


def _camera_rule(split: Split, rule: bool | None, data_dir: Path) -> Split:
    """``split`` with its cameras for the same-camera rule, or without them when ``rule`` is off (None: on when
    the data has cameras); UserError when the rule is asked for on data without cameras."""
    if rule is None:
        return split
    if rule and split.query_cams is None:
        raise UserError(f"camera_rule: {Path(data_dir) / TRAIN_DF} has no camera column, so there is no same-camera "
                        "rule to apply; leave --camera-rule out (or preprocess data with cameras)")
    return split if rule else dataclasses.replace(split, query_cams=None, gallery_cams=None)


def scored_line(split: Split, scores: dict[str, float]) -> str:
    """How many queries the scores average over: queries without a true match in the gallery (after the
    same-camera rule, when it applies) are skipped by every metric."""
    n, scored = len(split.query_paths), int(scores["num_valid_queries"])
    rule = "on" if split.query_cams is not None else "off"
    where = "in the gallery" + (" from another camera" if split.query_cams is not None else "")
    skipped = f" ({n - scored} {'has' if n - scored == 1 else 'have'} no match {where})" if scored < n else ""
    return f"scored {scored} of {n} queries{skipped}; same-camera rule {rule}"


def _matrices(encoder: ReIDEncoder, split: Split, device: torch.device, cfg: EvaluateConfig,
              cache: ImageCache | None = None) -> dict[str, torch.Tensor]:
    """Distance matrices (on the CPU) of one encoder on a split, one per re-ranking method of ``cfg.rerank``."""
    qf, gf = query_gallery_features(encoder, split.query_paths, split.gallery_paths, device=device, opts=cfg,
                                    cache=cache)
    return {m: d.float().cpu() for m, d in rerank_all(qf, gf, cfg).items()}


def _fold_of(info: CheckpointInfo) -> int:
    """The fold a checkpoint was validated on in training; UserError when it was not trained with a fold."""
    config = info.config
    if config.get("validation") != "fold":
        raise UserError(f"{info.path} was trained with validation={config.get('validation', 'unknown')}, not fold; "
                        "--split folds scores each checkpoint on its held-out fold: train with --validation fold "
                        "--fold K, or use --split test")
    return int(config["fold"])


def _write_results(report: EvalReport, split: str, cfg: EvaluateConfig, stage: Path) -> None:
    """The tables and the config into the staging folder ``stage`` of ``report.output_dir``'s file set."""
    write_text(stage / RESULTS_CSV, results_frame(report.rows, split).to_csv(index=False))
    table = format_table(report.rows, markdown=True, folds=report.folds)
    write_text(stage / RESULTS_MD, f"{report.title}\n\n{table}\n")
    save_config(cfg, stage / CONFIG_NAME)
    report.files += [report.output_dir / name for name in (RESULTS_CSV, RESULTS_MD, CONFIG_NAME)]


def evaluate(cfg: EvaluateConfig) -> EvalReport:
    """Score every checkpoint of ``cfg.checkpoints`` on ``cfg.split`` with each ``cfg.rerank`` method.

    Writes eval_results.csv (fractions), eval_results.md (%), evaluate_config.json and, for the test and fold
    splits, ranked_lists.png of the best row into ``cfg.output_dir`` (default: the first checkpoint's run
    folder / eval).
    """
    checkpoints = [Path(c) for c in cfg.checkpoints]
    files = [checkpoint_file(c, cfg.run_weights) for c in checkpoints]  # a missing file fails before any work
    device = pick_device(cfg.device)
    out = Path(cfg.output_dir) if cfg.output_dir is not None else run_dir_of(checkpoints[0]) / "eval"
    check_writable(out, "--output-dir")  # before any image is decoded, not after all the work
    infos = [checkpoint_info(f) for f in files]
    cfg = dataclasses.replace(cfg, output_dir=out)
    labels = checkpoint_labels(files)
    # tables, picture and config replace the previous ones as one set, or not at all
    with file_set(out, members=(RESULTS_CSV, RESULTS_MD, CONFIG_NAME, RANKED_PNG)) as stage:
        if cfg.split == "folds":
            report = _evaluate_folds(cfg, infos, labels, device, out)
        else:
            report = _evaluate_split(cfg, infos, labels, device, out, stage)
        _write_results(report, cfg.split, cfg, stage)
    return report


def _evaluate_split(cfg: EvaluateConfig, infos: list[CheckpointInfo], labels: list[str], device: torch.device,
                    out: Path, stage: Path) -> EvalReport:
    warnings = []
    for info, label in zip(infos, labels, strict=True):  # every checkpoint is checked before any work
        if cfg.split == "fold":
            check_fold_identity(info, cfg.data_dir, cfg.fold)
            warnings.append(trained_on_warning(info, label, cfg.fold))
        warnings.append(selection_warning(info, label, cfg.split, cfg.fold))
    split = load_split(cfg.data_dir, "test" if cfg.split == "test" else "fold", cfg.fold)
    split = _camera_rule(split, cfg.camera_rule, cfg.data_dir)
    where = "test split" if cfg.split == "test" else f"fold {cfg.fold}"
    title = f"{where} of {cfg.data_dir}: {len(split.query_paths)} queries, {len(split.gallery_paths)} gallery images"
    lines = [*weights_lines(infos, labels), *filter(None, warnings)]
    results: list[tuple[Row, torch.Tensor]] = []  # every row with its distance matrix
    per_model = []
    cache = ImageCache(cfg.cache_images, cfg.progress)
    for info, label in zip(infos, labels, strict=True):
        encoder = load_for_inference(info.path, device, cfg.checkpoint_model)
        mats = _matrices(encoder, split, device, cfg, cache)
        del encoder
        per_model.append(mats)
        results += [(Row(label, m, split_scores(d, split), str(info.path), weights=info.describe(),
                         epoch=info.epoch), d) for m, d in mats.items()]
    if len(infos) > 1:
        for m in per_model[0]:
            fused = fuse([mats[m] for mats in per_model], "similarity")
            results.append((Row(FUSED, m, split_scores(fused, split)), fused))
    title = "\n".join([title, scored_line(split, results[0][0].scores), *lines])
    report = EvalReport(title, [r for r, _ in results], False, out)
    if cfg.ranked_lists > 0:
        best, distmat = max(results, key=lambda rd: rd[0].scores["mAP"])  # the first of equal rows
        path = out / RANKED_PNG
        save_ranked_lists(stage / RANKED_PNG, split.query_paths, split.gallery_paths, distmat,
                          split.query_players, split.gallery_players, topk=cfg.topk, num_queries=cfg.ranked_lists,
                          query_cams=split.query_cams, gallery_cams=split.gallery_cams,
                          title=f"{best.model}, re-ranking {best.rerank}: {title.splitlines()[0]}")
        report.ranked_lists, report.ranked_row = path, best
    return report


def _evaluate_folds(cfg: EvaluateConfig, infos: list[CheckpointInfo], labels: list[str], device: torch.device,
                    out: Path) -> EvalReport:
    folds = [_fold_of(info) for info in infos]  # every checkpoint is checked before any work
    for info, fold in zip(infos, folds, strict=True):
        check_fold_identity(info, cfg.data_dir, fold)
    warnings = [selection_warning(info, label, "folds") for info, label in zip(infos, labels, strict=True)]
    splits: dict[int, Split] = {}
    rows, scored = [], []
    cache = ImageCache(cfg.cache_images, cfg.progress)
    for info, label, fold in zip(infos, labels, folds, strict=True):
        path = info.path
        if fold not in splits:
            splits[fold] = _camera_rule(load_split(cfg.data_dir, "fold", fold), cfg.camera_rule,
                                        cfg.data_dir)
        split = splits[fold]
        print(f"{label}: fold {fold} of {cfg.data_dir}, {len(split.query_paths)} queries, "
              f"{len(split.gallery_paths)} gallery images", flush=True)
        encoder = load_for_inference(path, device, cfg.checkpoint_model)
        mats = _matrices(encoder, split, device, cfg, cache)
        del encoder
        rows += [Row(label, m, split_scores(d, split), str(path), fold, weights=info.describe(), epoch=info.epoch)
                 for m, d in mats.items()]
        scored.append(f"{label}: {scored_line(split, rows[-1].scores)}")
    n = len(infos)
    for m in dict.fromkeys(cfg.rerank):
        values = {k: np.array([r.scores[k] for r in rows if r.rerank == m]) for k, _ in metric_columns(rows)}
        mean = {k: float(v.mean()) for k, v in values.items()}
        std = {k: float(v.std(ddof=1)) if n > 1 else 0.0 for k, v in values.items()}
        rows.append(Row(f"mean ± std ({n})", m, mean, std=std))
    title = (f"{n} checkpoint(s), each on its held-out fold of {cfg.data_dir}; mean ± std (sample standard "
             "deviation) over the checkpoints")
    title = "\n".join([title, *scored, *weights_lines(infos, labels), *filter(None, warnings)])
    return EvalReport(title, rows, True, out)
