"""Submission distance matrices for the test and challenge sets, from checkpoints and/or earlier submissions, fused.

``predict(cfg)`` takes a :class:`PredictConfig` (``predict.py``'s Config inherits it) and returns a
:class:`PredictReport`. For each set it writes, in the challenge's CSV format (``clipreid.submission``):

- ``<set>_<rerank>.csv`` for every re-ranking of ``cfg.rerank`` (``<set>_raw.csv`` for ``none``): each checkpoint
  re-ranked on its own, then fused;
- with several inputs, also each checkpoint's own CSVs in ``<model label>/<set>_<rerank>.csv``;
- ``predict_log.json``: the inputs (file, epoch and selection of each checkpoint's weights) and every CSV written,
  with its scores where the set has ground truth.

A run folder gives the weights ``cfg.run_weights`` names (README: "Which weights"); a best.pt selected on the
test split and scored on the test set gets a warning line.

A submission CSV given as input is an already final matrix: it joins every fusion as it is, after its rows and
columns are matched to the set's ids (``align_to``). Ids are the true player ids for the test set (the file then
scores itself) and the integer file stems for the challenge set, which is scored only when ``synthetic.json``
holds its ground truth.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from .checkpoint import (
    RunWeights,
    checkpoint_file,
    checkpoint_info,
    checkpoint_labels,
    selection_warning,
    weights_lines,
)
from .config import save_config
from .dataset import load_split, read_table
from .errors import UserError
from .features import ImageCache
from .fileio import check_writable, file_set, write_json
from .inference import (
    FusionOptions,
    InferenceOptions,
    RerankOptions,
    csv_suffix,
    fuse,
    fusion_description,
    load_for_inference,
    query_gallery_features,
    rerank_all,
)
from .layout import (
    CHALLENGE_COLUMNS,
    CHALLENGE_DF,
    CHALLENGE_GALLERY_DIR,
    CHALLENGE_PLAYERS,
    CHALLENGE_QUERY_DIR,
    GALLERY,
    QUERY,
    SYNTHETIC_INFO,
)
from .metrics import compute_scores
from .runtime import pick_device
from .submission import align_to, read_distance_matrix, write_distance_matrix

SetName = Literal["test", "challenge"]
SET_PLACEHOLDER = "{set}"
CONFIG_NAME = "predict_config.json"
LOG_NAME = "predict_log.json"


@dataclass
class PredictConfig(InferenceOptions, RerankOptions, FusionOptions):
    """What ``predict`` reads: ``predict.py``'s Config inherits it and gives the defaults and the help."""

    checkpoints: tuple[Path, ...] | None  # None or empty: submission CSVs only
    run_weights: RunWeights
    checkpoint_model: str | None
    submissions: tuple[Path, ...]  # with several sets, {set} in the path stands for the set's name
    data_dir: Path
    sets: tuple[SetName, ...]
    output_dir: Path


def _folder_name(label: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in label).strip("._") or "model"


def model_folders(labels: list[str]) -> list[str]:
    """One folder name per model label, all different: the label with characters other than letters, digits and
    ``._-`` replaced by ``_``; a name already taken (``run/best`` and ``run_best``, or ``Run`` and ``run`` on a
    case-insensitive disk) gets ``-2``, ``-3``, ... so no model's CSVs replace another's."""
    names: list[str] = []
    taken: set[str] = set()
    for label in labels:
        base = name = _folder_name(label)
        k = 2
        while name.lower() in taken:
            name = f"{base}-{k}"
            k += 1
        taken.add(name.lower())
        names.append(name)
    return names


@dataclass
class QuerySet:
    """A query/gallery set to predict, with the ids its CSV is written with and, if known, its players."""

    name: str
    query_paths: list[Path]
    gallery_paths: list[Path]
    query_ids: np.ndarray  # ids of the CSV rows (test: player ids; challenge: file stems)
    gallery_ids: np.ndarray
    truth: tuple[dict[int, int], dict[int, int]] | None = None  # challenge: file id -> player, queries and gallery
    truth_source: str = ""
    query_cams: np.ndarray | None = None  # Market-1501 layout: same id and camera is not a match
    gallery_cams: np.ndarray | None = None

    def score(self, path: Path) -> dict[str, float] | None:
        """Scores of a CSV this set was written to, as read back: what a grader sees. None without ground truth."""
        distmat, q_ids, g_ids = read_distance_matrix(path)
        if self.name == "test":
            cams = None
            if self.query_cams is not None:
                # write_distance_matrix sorts rows and columns stably by id: the cameras follow the same order
                cams = (self.query_cams[np.argsort(self.query_ids, kind="stable")],
                        self.gallery_cams[np.argsort(self.gallery_ids, kind="stable")])
            return compute_scores(distmat, q_ids, g_ids, *(cams or ()))
        if self.truth is None:
            return None
        q, g = self.truth
        return compute_scores(distmat, [q[i] for i in q_ids.tolist()], [g[i] for i in g_ids.tolist()])


def _challenge_truth(data_dir: Path, query_ids: np.ndarray, gallery_ids: np.ndarray) -> tuple[dict, dict] | None:
    """The file id -> player maps of ``synthetic.json`` when it covers every challenge image."""
    path = data_dir / SYNTHETIC_INFO
    if not path.is_file():
        return None
    try:
        players = json.loads(path.read_text(encoding="utf-8"))[CHALLENGE_PLAYERS]
        q = {int(k): int(v) for k, v in players[CHALLENGE_QUERY_DIR].items()}
        g = {int(k): int(v) for k, v in players[CHALLENGE_GALLERY_DIR].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # not a synthetic dataset's info file: no ground truth, nothing to fail over
    if not (set(query_ids.tolist()) <= q.keys() and set(gallery_ids.tolist()) <= g.keys()):
        return None
    return q, g


def load_set(data_dir: str | Path, name: SetName) -> QuerySet:
    """The ``test`` split (from train_df.csv) or the ``challenge`` set (from challenge_df.csv) of a data folder."""
    data_dir = Path(data_dir)
    if name == "test":
        split = load_split(data_dir, "test")
        return QuerySet(name, split.query_paths, split.gallery_paths, split.query_players, split.gallery_players,
                        truth_source="test split ids", query_cams=split.query_cams, gallery_cams=split.gallery_cams)
    path = data_dir / CHALLENGE_DF
    if not path.is_file():
        raise UserError(f"{path} not found: preprocess_data.py writes it when "
                        f"{data_dir / Path(CHALLENGE_QUERY_DIR).parent}/ exists; or leave the challenge out with "
                        "--sets test")
    df = read_table(path, CHALLENGE_COLUMNS, integer_columns=("player",))
    query, gallery = df[df.img_type == QUERY], df[df.img_type == GALLERY]
    if query.empty or gallery.empty:
        raise UserError(f"{path} has no queries or no gallery images; re-run preprocess_data.py")
    q_ids, g_ids = query.player.to_numpy(np.int64), gallery.player.to_numpy(np.int64)
    truth = _challenge_truth(data_dir, q_ids, g_ids)
    return QuerySet(name, [data_dir / p for p in query.img_id], [data_dir / p for p in gallery.img_id], q_ids, g_ids,
                    truth, f"ground truth of {data_dir / SYNTHETIC_INFO}" if truth else "")


def _submission_for(path: Path, set_name: str, n_sets: int) -> Path:
    text = str(path)
    if SET_PLACEHOLDER in text:
        return Path(text.replace(SET_PLACEHOLDER, set_name))
    if n_sets > 1:
        raise UserError(f"submissions: {path} is one set's matrix but {n_sets} sets are asked for; write {{set}} in "
                        f"its path (e.g. model/other/{{set}}_raw.csv) or pass --sets {set_name}")
    return path


@dataclass
class Written:
    """One written CSV and its scores (None when the set has no ground truth)."""

    path: Path
    scores: dict[str, float] | None
    model: str = ""  # the model label of a single model's CSV; empty for the fused (or only) one


@dataclass
class PredictReport:
    """What ``predict`` wrote, per set."""

    lines: list[str] = field(default_factory=list)
    files: dict[str, list[Written]] = field(default_factory=dict)
    config_path: Path | None = None
    log_path: Path | None = None

    def summary(self) -> str:
        lines = list(self.lines)
        lines += [f"wrote {p}" for p in (self.config_path, self.log_path) if p is not None]
        return "\n".join(lines)


def predict(cfg: PredictConfig) -> PredictReport:
    """Write the fused (and re-ranked) submission CSVs of every set of ``cfg.sets`` into ``cfg.output_dir``."""
    checkpoints = [Path(c) for c in (cfg.checkpoints or ())]
    submissions = [Path(s) for s in cfg.submissions]
    sets = list(dict.fromkeys(cfg.sets))
    reranks = list(dict.fromkeys(cfg.rerank))
    n_inputs = len(checkpoints) + len(submissions)
    files = [checkpoint_file(c, cfg.run_weights) for c in checkpoints]
    out = check_writable(Path(cfg.output_dir), "--output-dir")  # before any work, not after all of it
    infos = [checkpoint_info(f) for f in files]

    # Everything that can fail on the inputs fails before any model runs.
    qsets = {name: load_set(cfg.data_dir, name) for name in sets}
    given: dict[str, list[torch.Tensor]] = {}
    for name, qset in qsets.items():
        given[name] = []
        for sub in submissions:
            path = _submission_for(sub, name, len(sets))
            distmat, q_ids, g_ids = read_distance_matrix(path)
            aligned = align_to(distmat, q_ids, g_ids, qset.query_ids, qset.gallery_ids,
                               name=f"{path} (as the {name} set of {cfg.data_dir})")
            given[name].append(torch.from_numpy(aligned))

    # per set, per re-ranking: one distance matrix per checkpoint
    mats: dict[str, dict[str, list[torch.Tensor]]] = {name: {m: [] for m in reranks} for name in sets}
    if checkpoints:
        device = pick_device(cfg.device)
        cache = ImageCache(cfg.cache_images, cfg.progress)
        for info in infos:
            encoder = load_for_inference(info.path, device, cfg.checkpoint_model)
            for name, qset in qsets.items():
                qf, gf = query_gallery_features(encoder, qset.query_paths, qset.gallery_paths, device=device, opts=cfg,
                                                cache=cache)
                for method, distmat in rerank_all(qf, gf, cfg).items():
                    mats[name][method].append(distmat.cpu())
            del encoder

    report = PredictReport()
    labels = checkpoint_labels(files)
    names = labels + [str(s) for s in submissions]
    weights = tuple(cfg.weights) if cfg.weights is not None else None
    how = fusion_description(names, cfg.fusion)
    report.lines += weights_lines(infos, labels)
    warnings = {label: selection_warning(info, label, "test") for info, label in zip(infos, labels, strict=True)}
    if "test" in sets:
        report.lines += [w for w in warnings.values() if w]
    # each model's own CSVs beside the fused ones, when there is a fusion
    folders = model_folders(labels)
    targets = [("", "", -1)] + ([(f, label, i) for i, (f, label) in enumerate(zip(folders, labels, strict=True))]
                                if n_inputs > 1 else [])
    width = max(len(str(out / folder / f"{name}_{csv_suffix(m)}.csv")) for name in sets for m in reranks
                for folder, _, _ in targets)
    # the CSVs, the config and the log replace the previous ones as one set, or not at all (a full disk midway)
    with file_set(out) as stage:
        for name, qset in qsets.items():
            report.lines.append(f"{name}: {len(qset.query_ids)} queries x {len(qset.gallery_ids)} gallery images; "
                                f"{how}")
            report.files[name] = []
            for folder, label, index in targets:
                for method in reranks:
                    if label:
                        matrix = mats[name][method][index]
                    else:
                        matrix = fuse([*mats[name][method], *given[name]], cfg.fusion, weights, cfg.topk_fusion)
                    rel = Path(folder) / f"{name}_{csv_suffix(method)}.csv"
                    (stage / rel).parent.mkdir(parents=True, exist_ok=True)
                    write_distance_matrix(stage / rel, matrix, qset.query_ids, qset.gallery_ids)
                    scores = qset.score(stage / rel)
                    path = out / rel
                    report.files[name].append(Written(path, scores, label))
                    text = f"  wrote {str(path):<{width}}"
                    if scores is not None:
                        text += (f"  mAP {100 * scores['mAP']:.2f}  rank-1 {100 * scores['rank1']:.2f}  "
                                 f"({qset.truth_source})")
                    report.lines.append(text.rstrip())
            if name == "challenge" and qset.truth is None:
                report.lines.append("  (no ground truth for the challenge set: not scored)")
        report.config_path = out / CONFIG_NAME
        save_config(cfg, stage / CONFIG_NAME)
        report.log_path = out / LOG_NAME
        write_json(stage / LOG_NAME, {
            "checkpoints": [{"label": label, "given": str(c), "file": str(info.path), "epoch": info.epoch,
                             "weights": info.weights, "selection": info.selection, "description": info.describe(),
                             "warning": warnings[label], "folder": folder if n_inputs > 1 else None}
                            for c, info, label, folder in zip(checkpoints, infos, labels, folders, strict=True)],
            "submissions": [str(s) for s in submissions],
            "fusion": cfg.fusion if n_inputs > 1 else None,
            "files": [{"set": name, "path": str(w.path), "model": w.model or None,
                       "scores": {k: float(v) for k, v in w.scores.items()} if w.scores is not None else None}
                      for name, written in report.files.items() for w in written],
        })
    return report
