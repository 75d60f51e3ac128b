"""Checkpoint files: where a run keeps them, and reading and writing them safely.

A clipreid checkpoint is a ``torch.save`` dict with at least ``model`` (the encoder's state dict) and
``model_spec``, and since the preprocessing travels with the weights, ``preprocess`` (image_size, mean, std,
interpolation as used in training) and ``arch`` (what rebuilds the architecture offline); ``last.pt`` adds what
resuming needs. Files are read with ``weights_only=True`` (no pickled code)
and written to a temporary name renamed into place. ``clipreid.model.read_encoder_file`` reads the other
layouts (the original CLIP-ReIdent and 2023 weights files).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from .errors import UserError
from .fileio import atomic_path


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """torch.save to a temporary file renamed into place: a crash never leaves a half-written checkpoint."""
    # through a Python file: torch.save to a path reports a full disk as "unexpected pos", not as the OSError
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(state, f)


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
