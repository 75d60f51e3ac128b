"""Experiment tracking when wanted: ``train.py --report-to tensorboard`` mirrors log.jsonl into TensorBoard.

Per optimiser step (at the trainer's ``log_every`` points): ``step/loss`` (the mean loss of the micro-batches
since the previous point) and ``step/lr``. Per epoch: every numeric key of the log.jsonl record as
``epoch/<key>``, at step = the record's epoch (0 is the model before training). Files go to
``<run>/tensorboard/``; only the main process writes. ``tensorboard`` is an optional dependency.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import UserError

TRACKERS = ("none", "tensorboard")
TENSORBOARD_DIR = "tensorboard"


class Tracker:
    """Writes scalars to a TensorBoard event file (or nowhere, for ``report_to="none"``)."""

    def __init__(self, writer: Any = None, make_writer: Callable[[], Any] | None = None) -> None:
        self._writer, self._make_writer = writer, make_writer  # made on first use: no folder before a value
        self._sum, self._batches = 0.0, 0  # running sums of the epoch at the previous step point

    @property
    def writer(self) -> Any:
        if self._writer is None and self._make_writer is not None:
            self._writer = self._make_writer()
        return self._writer

    def log_step(self, step: int, loss_sum: float, batches: int, lr: float) -> None:
        """``loss_sum`` and ``batches``: the epoch's running totals (they restart at each epoch)."""
        if self.writer is None:
            return
        if batches < self._batches:
            self._sum, self._batches = 0.0, 0
        if batches > self._batches:
            self.writer.add_scalar("step/loss", (loss_sum - self._sum) / (batches - self._batches), step)
        self.writer.add_scalar("step/lr", lr, step)
        self._sum, self._batches = loss_sum, batches

    def log_epoch(self, record: dict[str, Any]) -> None:
        """Every finite number of a log.jsonl record (booleans aside), at step = its epoch."""
        if self.writer is None:
            return
        epoch = int(record.get("epoch", 0))
        for key, value in record.items():
            if key != "epoch" and isinstance(value, numbers.Real) and not isinstance(value, bool) \
                    and math.isfinite(float(value)):
                self.writer.add_scalar(f"epoch/{key}", float(value), epoch)
        self._sum, self._batches = 0.0, 0
        self.writer.flush()

    def release(self) -> None:
        """Close the event file before its folder moves; the next value opens a new one where the folder is then
        (TensorBoard's writer reopens its file by name on every flush)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._writer = self._make_writer = None


def open_tracker(report_to: str, run_dir: str | Path | Callable[[], Path]) -> Tracker:
    """A tracker for ``report_to`` (``none`` or ``tensorboard``) writing under ``run_dir``.

    ``run_dir`` may be a callable, asked when the first value is written: a new run lives under a temporary name
    until its first checkpoint (the open event file follows the folder's rename).
    """
    if report_to == "none":
        return Tracker()
    if report_to != "tensorboard":
        raise UserError(f"report_to: unknown tracker {report_to!r}; choose from {', '.join(TRACKERS)}")
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError("report_to tensorboard needs the tensorboard package: pip install tensorboard "
                        "(or pip install clipreid[tensorboard]), or leave --report-to at none") from None
    folder = run_dir if callable(run_dir) else (lambda: Path(run_dir))
    return Tracker(make_writer=lambda: SummaryWriter(log_dir=str(Path(folder()) / TENSORBOARD_DIR)))
