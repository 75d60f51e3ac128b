"""Progress bars: tqdm on a terminal, a few plain lines in a log."""

from __future__ import annotations

import io

from tqdm import tqdm

from clipreid.progress import LogProgress, is_terminal, progress_bar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_log_lines_for_a_long_loop():
    out = io.StringIO()
    items = list(progress_bar(range(10_000), desc="decode", unit="img", file=out, min_interval=0))
    assert items == list(range(10_000))  # every item, in order
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert 2 <= len(lines) <= 5, lines  # start, 25 / 50 / 75 %, end
    assert lines[0] == "decode: start, 10000 img"
    assert [line.split()[1] for line in lines[1:-1]] == ["25%", "50%", "75%"][:len(lines) - 2]
    assert lines[-1].startswith("decode: done 10000/10000 img in ") and lines[-1].endswith(" img/s")


def test_log_lines_are_throttled_and_disabled():
    out = io.StringIO()
    for _ in progress_bar(range(1000), desc="fast", file=out, min_interval=3600):
        pass
    assert len(out.getvalue().splitlines()) == 2  # start and end only
    out = io.StringIO()
    for _ in progress_bar(range(10), file=out, enabled=False):
        pass
    for _ in progress_bar(range(10), file=out, disable=True):
        pass
    assert out.getvalue() == ""


def test_log_counter_with_postfix_and_bytes():
    out = io.StringIO()
    with progress_bar(total=4 << 20, desc="data.zip", unit="B", unit_scale=True, unit_divisor=1024, file=out,
                      min_interval=0) as bar:
        for _ in range(4):
            bar.update(1 << 20)
            bar.set_postfix(loss="0.5000")
    lines = out.getvalue().splitlines()
    assert lines[0] == "data.zip: start, 4.00MB"
    assert len(lines) == 5 and lines[2].startswith("data.zip: 50% 2.00M/4.00MB, ")
    assert lines[-1].startswith("data.zip: done 4.00M/4.00MB in ") and lines[-1].endswith("B/s, loss=0.5000")
    bar.close()  # a second close prints nothing
    assert len(out.getvalue().splitlines()) == 5


def test_unknown_total_prints_start_and_end():
    out = io.StringIO()
    for _ in progress_bar(iter(range(50)), desc="chunks", file=out):
        pass
    lines = out.getvalue().splitlines()
    assert lines[0] == "chunks: start" and lines[-1].startswith("chunks: done 50 it in ") and len(lines) == 2


def test_terminal_gets_tqdm():
    assert isinstance(progress_bar(range(3), file=_Terminal(), leave=False), tqdm)
    assert isinstance(progress_bar(range(3), file=io.StringIO()), LogProgress)
    assert isinstance(progress_bar(range(3), terminal=True, file=io.StringIO()), tqdm)
    assert is_terminal(_Terminal()) and not is_terminal(io.StringIO())
