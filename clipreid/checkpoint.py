"""Checkpoint files: where a run keeps them, reading and writing them safely, and what their weights are.

A clipreid checkpoint is a ``torch.save`` dict with at least ``model`` (the encoder's state dict) and
``model_spec``, ``preprocess`` (image_size, mean, std, interpolation as used in training) and ``arch`` (what
rebuilds the architecture offline); ``last.pt`` adds what resuming needs. Every checkpoint the trainer writes
also records its provenance: ``epoch``, ``selection`` (how its weights were chosen, ``selection_record``), the
training ``config`` and, for a fold run, ``held_out`` (the groups of the fold it never trained on).
``checkpoint_info`` reads these back so that evaluate and predict say which weights they score and warn, or
refuse, when the images scored are not held out from them.

Invariants: files are read with ``weights_only=True`` (no pickled code) and written to a temporary name renamed
into place; a run folder gives its ``last.pt`` or ``best.pt`` (``checkpoint_file``), never anything else.
``clipreid.weights.read_encoder_file`` reads the other weights formats (the original CLIP-ReIdent and 2023 files).
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from .dataset import fold_identity
from .errors import UserError
from .fileio import atomic_path
from .layout import TRAIN_DF

LAST_PT, BEST_PT = "last.pt", "best.pt"  # a run folder's checkpoints: the last epoch's (and resume), the best epoch's
RunWeights = Literal["last", "best"]  # which of them a run folder gives


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """torch.save to a temporary file renamed into place: a crash never leaves a half-written checkpoint."""
    # through a Python file: torch.save to a path reports a full disk as "unexpected pos", not as the OSError
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(state, f)


def checkpoint_file(path: str | Path, weights: RunWeights = "last") -> Path:
    """The checkpoint file a path names; UserError if there is none.

    A run folder gives its ``last.pt`` (the last epoch's weights, what the original submits), else its best.pt;
    ``weights="best"`` gives its ``best.pt`` (the epoch of the best validation mAP), else its last.pt. A file is
    used as given.
    """
    path = Path(path)
    if path.is_dir():
        names = (BEST_PT, LAST_PT) if weights == "best" else (LAST_PT, BEST_PT)
        for name in names:
            if (path / name).is_file():
                return path / name
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found; train one with train.py (it writes model/<run>/last.pt)")
    return path


def run_dir_of(checkpoint: str | Path) -> Path:
    """The run folder of a checkpoint path (a run folder is its own)."""
    checkpoint = Path(checkpoint)
    return checkpoint if checkpoint.is_dir() else checkpoint.parent


def load_checkpoint_file(path: str | Path, *, mmap: bool = False) -> Any:
    """``torch.load`` of a checkpoint file with ``weights_only=True`` (no pickled code); every failure (missing,
    empty, truncated, corrupt, holding pickled objects) is a one-line UserError naming the file. ``mmap`` maps the
    tensors instead of reading them (to look at a checkpoint's other entries), where the file format allows it."""
    path = checkpoint_file(path)
    if path.stat().st_size == 0:
        raise UserError(f"cannot read checkpoint {path}: the file is empty (0 bytes), probably cut off while it was "
                        "copied or written; copy it again or use another checkpoint")
    try:
        if mmap:
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as err:
                if "mmap" not in str(err):
                    raise
                # a legacy (non-zip) torch.save file cannot be memory-mapped: read it whole
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "global" in str(err).lower():  # a class or function to import: pickled objects, not tensors
            raise UserError(f"cannot read checkpoint {path}: it holds pickled Python objects besides tensors, which "
                            "are not loaded (loading them could run code); re-save it as a plain dict of tensors "
                            "(torch.save(model.state_dict(), ...))") from None
        reason = "it is not a PyTorch file, or it is corrupt"
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, AttributeError, IndexError) as err:
        text = str(err).lower()
        reason = ("it is truncated (cut off while copied or written)"
                  if any(w in text for w in ("central directory", "eof", "unexpected end", "truncat"))
                  else "it is not a PyTorch file, or it is corrupt")
    raise UserError(f"cannot read checkpoint {path}: {reason}; copy it again or use another checkpoint")


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A clipreid checkpoint (``model`` and ``model_spec`` entries at least), with one-line errors."""
    path = checkpoint_file(path)
    state = load_checkpoint_file(path)
    if not isinstance(state, dict) or "model" not in state or "model_spec" not in state:
        raise UserError(f"{path} is not a clipreid checkpoint (no 'model' and 'model_spec' entries); "
                        "give a best.pt / last.pt written by train.py, or its run folder")
    return state


# --------------------------------------------------------------------------------------------------------------
# provenance: which weights a checkpoint holds, and on which images they may be scored


def checkpoint_labels(checkpoints: Sequence[Path]) -> list[str]:
    """Short unique names for table rows: the run folder's name, with ``/best`` (or the file's stem) for any file
    but a last.pt; the paths when two would be equal, and ``#2``, ``#3`` for a file given again."""
    labels = []
    for path in checkpoints:
        path = Path(path)
        label = run_dir_of(path).name or str(path)
        if path.suffix == ".pt" and path.name != LAST_PT:
            label += f"/{path.stem}"
        labels.append(label)
    if len(set(labels)) < len(labels):
        labels = [str(p) for p in checkpoints]
    seen: dict[str, int] = {}
    for i, label in enumerate(labels):  # the same file given twice: still one row, one folder each
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            labels[i] = f"{label} #{seen[label]}"
    return labels


# --------------------------------------------------------------------------------------------------------------
# which weights a checkpoint holds, and on which images they may be scored


@dataclass
class CheckpointInfo:
    """What a checkpoint file says about its weights: the epoch, how they were selected, the fold held out."""

    path: Path
    epoch: int | None = None
    weights: str = "file"  # last, best, or file (any other file)
    selection: dict[str, Any] | None = None  # best.pt: {"metric": "mAP", "validation": ..., "fold": ...}
    config: dict[str, Any] = field(default_factory=dict)
    held_out: dict[str, Any] | None = None  # fold runs: {"fold", "n_folds", "groups"}

    def describe(self) -> str:
        """``epoch 4 (last)``, ``epoch 2 (best mAP on the test split)``; what a log names the weights by."""
        epoch = f"epoch {self.epoch}" if self.epoch is not None else "epoch unknown"
        if self.selected_by_split:
            return f"{epoch} (best {self.selection['metric']} on {_split_name(self.selection)})"
        return f"{epoch} ({self.weights})"

    @property
    def selected_by_split(self) -> bool:
        return bool(self.selection) and self.selection.get("metric") == "mAP"


def _split_name(selection: dict[str, Any]) -> str:
    if selection.get("validation") == "fold":
        return f"fold {selection.get('fold')}"
    return f"the {selection.get('validation')} split"


def checkpoint_info(path: str | Path) -> CheckpointInfo:
    """Read a checkpoint file's epoch, selection and held-out fold (tensors memory-mapped, not read)."""
    path = Path(path)
    state = load_checkpoint_file(path, mmap=True)
    if not isinstance(state, dict):
        raise UserError(f"{path} is not a clipreid checkpoint (no 'model' and 'model_spec' entries)")
    config = state.get("config") or {}
    selection = state.get("selection")
    weights = selection["weights"] if selection else {LAST_PT: "last", BEST_PT: "best"}.get(path.name, "file")
    epoch = state.get("epoch")
    return CheckpointInfo(path, int(epoch) if epoch is not None else None, weights, selection, config,
                          state.get("held_out"))


def selection_warning(info: CheckpointInfo, label: str, split: str, fold: int | None = None) -> str | None:
    """A warning line when a best.pt is scored on the split whose mAP selected it (``split``: test, fold, folds;
    ``folds`` is each checkpoint's own fold), else None."""
    if not info.selected_by_split:
        return None
    sel = info.selection
    same = (split == "test" and sel.get("validation") == "test") or (
        sel.get("validation") == "fold" and (split == "folds" or (split == "fold" and sel.get("fold") == fold)))
    if not same:
        return None
    return (f"warning: {label} holds the epoch ({info.epoch}) of the best mAP on {_split_name(sel)}, the split "
            "scored here: its scores are optimistic; score last.pt (--run-weights last) for an unbiased figure")


def selection_record(weights: str, epoch: int, validation: str, fold: int) -> dict[str, Any]:
    """How a checkpoint's weights were chosen (what ``checkpoint_info`` reads back): ``best`` by validation mAP on
    a split (without validation: the last epoch), or ``last``."""
    chose_by_split = weights == "best" and validation != "none"
    return {"weights": weights, "epoch": epoch, "metric": "mAP" if chose_by_split else "last epoch",
            "validation": validation, "fold": fold if validation == "fold" else None}


def check_fold_identity(info: CheckpointInfo, data_dir: str | Path, fold: int) -> None:
    """UserError when ``info`` held out fold ``fold`` in training but train_df.csv's fold ``fold`` is now other
    groups (the table was re-folded): the model would be scored on images it trained on."""
    held = info.held_out
    if not held or int(held.get("fold", -1)) != int(fold):
        return
    now = fold_identity(data_dir, fold)
    if now["groups"] != list(held["groups"]) or now["n_folds"] != held["n_folds"]:
        common = len(set(now["groups"]) & set(held["groups"]))
        raise UserError(f"{info.path} held out fold {fold} of {held['n_folds']} folds ({len(held['groups'])} "
                        f"sequences) in training, but fold {fold} of {Path(data_dir) / TRAIN_DF} is another set "
                        f"({len(now['groups'])} sequences, {common} in common; {now['n_folds']} folds): scoring it "
                        f"there would use images it trained on; re-run preprocess_data.py --n-folds "
                        f"{held['n_folds']} (the folding it was trained with) or use --split test")


def trained_on_warning(info: CheckpointInfo, label: str, fold: int) -> str | None:
    """A warning line when a checkpoint scored on fold ``fold`` trained on images of that fold."""
    config = info.config
    if not config or (config.get("validation") == "fold" and int(config.get("fold", -1)) == int(fold)):
        return None
    held = (f"fold {config.get('fold')}" if config.get("validation") == "fold"
            else f"the {config.get('validation')} split")
    return (f"warning: {label} was trained holding out {held}, not fold {fold}: it trained on images of fold "
            f"{fold}, so these are not held-out scores")


def weights_lines(infos: Sequence[CheckpointInfo], labels: Sequence[str]) -> list[str]:
    """One line per checkpoint naming the file and the epoch of its weights, for the heading of a table or log."""
    return [f"weights: {label} = {info.path}, {info.describe()}" for info, label in zip(infos, labels, strict=True)]
