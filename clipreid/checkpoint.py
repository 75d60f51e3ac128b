"""Checkpoint files: where a run keeps them, and reading and writing them safely.

A clipreid checkpoint is a ``torch.save`` dict with at least ``model`` (the encoder's state dict) and
``model_spec``; ``last.pt`` adds what resuming needs. Files are read with ``weights_only=True`` (no pickled code)
and written to a temporary name renamed into place.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .errors import UserError
from .fileio import atomic_path


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """torch.save to a temporary file renamed into place: a crash never leaves a half-written checkpoint."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def checkpoint_file(path: str | Path, weights: str = "last") -> Path:
    """The checkpoint file a path names; UserError if there is none.

    A run folder gives its ``last.pt`` (the last epoch's weights, what the original submits), else its best.pt;
    ``weights="best"`` gives its ``best.pt`` (the epoch of the best validation mAP), else its last.pt. A file is
    used as given.
    """
    path = Path(path)
    if path.is_dir():
        names = ("best.pt", "last.pt") if weights == "best" else ("last.pt", "best.pt")
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


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """``torch.load`` with ``weights_only=True`` (no pickled code), with one-line errors."""
    path = checkpoint_file(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise UserError(f"cannot read checkpoint {path}: {str(err).splitlines()[0]}") from err
    if not isinstance(state, dict) or "model" not in state or "model_spec" not in state:
        raise UserError(f"{path} is not a clipreid checkpoint (no 'model' and 'model_spec' entries)")
    return state
