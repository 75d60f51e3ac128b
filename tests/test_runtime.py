"""clipreid.runtime.in_threads: CPU work dealt over torch's threads."""

from __future__ import annotations

import threading

import torch

from clipreid.runtime import in_threads


def test_in_threads_deals_every_start_once_in_turn_this_thread_first(monkeypatch):
    me = threading.get_ident()
    calls: list[tuple[bool, list[int]]] = []  # (on this thread, the part)

    def share(part: range) -> bool:
        calls.append((threading.get_ident() == me, list(part)))
        return 7 not in part

    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
    assert in_threads(share, range(10)) is False  # the share holding 7 failed
    assert sorted(calls) == [(False, [1, 4, 7]), (False, [2, 5, 8]), (True, [0, 3, 6, 9])]
    calls.clear()
    assert in_threads(share, range(0, 20, 8)) is True  # as many starts as threads
    assert sorted(calls) == [(False, [8]), (False, [16]), (True, [0])]
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    calls.clear()
    assert in_threads(share, range(5, 9)) is False
    assert calls == [(True, [5, 6, 7, 8])]  # one thread: this one, every start
