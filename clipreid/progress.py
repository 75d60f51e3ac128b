"""Progress reporting that reads well both on a terminal and in a log file.

On a terminal ``progress_bar(...)`` is a tqdm bar. When the output is not a terminal (a log file, a pipe, a batch
job), a redrawn bar becomes hundreds of carriage-return fragments; there it prints a few plain lines instead:
one at the start, one at every quarter of the total (at most every ``min_interval`` seconds), and one at the
end with the elapsed time and the rate::

    epoch 1/8: start, 50 batch
    epoch 1/8: 25% 13/50 batch, 3.1 s, 4.2 batch/s, loss=4.1020
    ...
    epoch 1/8: done 50/50 batch in 12.0 s, 4.2 batch/s, loss=3.9012

Both kinds accept what the stages use of tqdm: iteration, ``update(n)``, ``set_postfix(...)``, ``close()`` and
``with``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any

from tqdm import tqdm

STEPS = 4  # lines between start and end when the total is known: at 25, 50 and 75 %
UNKNOWN_TOTAL_INTERVAL = 30.0  # seconds between lines when the total is unknown


def is_terminal(stream: IO[str] | None = None) -> bool:
    """True when ``stream`` (default: stderr, where tqdm draws) is an interactive terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


def _size(value: float, scale: bool, divisor: int) -> str:
    if scale:
        return tqdm.format_sizeof(value, divisor=divisor)
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"


class LogProgress:
    """tqdm's interface, printing a handful of plain lines (see the module docstring)."""

    def __init__(self, iterable: Iterable | None = None, total: float | None = None, desc: str = "",
                 unit: str = "it", *, disable: bool = False, initial: float = 0, unit_scale: bool = False,
                 unit_divisor: int = 1000, file: IO[str] | None = None, min_interval: float = 1.0,
                 **_ignored: Any) -> None:
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.disable, self.n, self.initial = disable, initial, initial
        self.unit_scale, self.unit_divisor = unit_scale, unit_divisor
        self.file, self.min_interval = file, min_interval
        self.postfix = ""
        self.start = self.last_line = time.perf_counter()
        self.next_step = 1  # the next quarter to report
        self.closed = False
        if not disable:
            total_text = "" if total is None else f", {self._amount(total)}"
            done_text = f" from {self._amount(initial)}" if initial else ""
            self._print(f"start{total_text}{done_text}")

    # -- tqdm's interface ------------------------------------------------------------------------------------

    def __iter__(self) -> Iterator:
        if self.iterable is None:
            raise TypeError("LogProgress without an iterable cannot be iterated; call update() instead")
        try:
            for item in self.iterable:
                yield item
                self.update()
        finally:
            self.close()

    def __len__(self) -> int:
        return int(self.total or 0)

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: float = 1) -> None:
        """Count ``n`` more units; print a line when a new quarter of the total is reached."""
        self.n += n
        if self.disable:
            return
        now = time.perf_counter()
        if self.total:
            step = int(STEPS * self.n / self.total)
            if self.next_step <= step < STEPS and now - self.last_line >= self.min_interval:
                self.next_step = step + 1
                self._print(self._status(now, done=False))
        elif now - self.last_line >= UNKNOWN_TOTAL_INTERVAL:
            self._print(self._status(now, done=False))

    def set_postfix(self, **values: Any) -> None:
        """Values appended to the following lines (``loss=0.4``), as on tqdm's bar."""
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        """Print the end line (once)."""
        if self.closed:
            return
        self.closed = True
        if not self.disable:
            self._print(self._status(time.perf_counter(), done=True))

    # -- the lines ------------------------------------------------------------------------------------------

    def _amount(self, value: float, of: float | None = None) -> str:
        """``value`` (``/of``) with the unit: ``12/50 batch``, or ``2.00M/4.00MB`` with ``unit_scale``."""
        text = _size(value, self.unit_scale, self.unit_divisor)
        if of is not None:
            text += "/" + _size(of, self.unit_scale, self.unit_divisor)
        return f"{text}{'' if self.unit_scale else ' '}{self.unit}"

    def _status(self, now: float, done: bool) -> str:
        elapsed = now - self.start
        count = self._amount(self.n, self.total or None)
        rate = (self.n - self.initial) / elapsed if elapsed > 0 else 0.0
        rate_text = self._amount(rate) if self.unit_scale else f"{rate:.0f} {self.unit}" if rate >= 100 \
            else f"{rate:.3g} {self.unit}"
        if done:
            text = f"done {count} in {elapsed:.1f} s, {rate_text}/s"
        else:
            percent = f"{100 * self.n / self.total:.0f}% " if self.total else ""
            text = f"{percent}{count}, {elapsed:.1f} s, {rate_text}/s"
        return f"{text}, {self.postfix}" if self.postfix else text

    def _print(self, text: str) -> None:
        self.last_line = time.perf_counter()
        prefix = f"{self.desc}: " if self.desc else ""
        print(prefix + text, file=self.file if self.file is not None else sys.stderr, flush=True)


def progress_bar(iterable: Iterable | None = None, *, total: float | None = None, desc: str = "", unit: str = "it",
             enabled: bool = True, disable: bool = False, leave: bool = True, terminal: bool | None = None,
             **kwargs: Any) -> Any:
    """A progress bar over ``iterable`` (or a counter advanced by ``update(n)``): tqdm on a terminal, a few plain
    lines otherwise (``terminal`` overrides the check of stderr). ``enabled=False`` (or tqdm's ``disable=True``)
    shows nothing.

    Other keyword arguments go to tqdm (``unit_scale``, ``unit_divisor``, ``initial``, ``file``); ``leave`` is
    tqdm's (the plain lines are always left).
    """
    show = enabled and not disable
    if terminal is None:
        terminal = is_terminal(kwargs.get("file"))
    if terminal:
        return tqdm(iterable, total=total, desc=desc, unit=unit, disable=not show, leave=leave, **kwargs)
    return LogProgress(iterable, total, desc, unit, disable=not show, **kwargs)
