"""Atomic writes: readers see the old content or the complete new one, never a half-written file."""

from __future__ import annotations

import os
import stat

import pytest

from clipreid.fileio import atomic_path, write_json, write_text


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "out.txt"
    write_text(path, "old\n")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk gone")
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_failed_folder_leaves_nothing(tmp_path):
    target = tmp_path / "dataset"
    with pytest.raises(RuntimeError), atomic_path(target, is_dir=True) as tmp:
        (tmp / "a.jpeg").write_bytes(b"x")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_folder_replaces_the_old_one_with_normal_permissions(tmp_path):
    target = tmp_path / "dataset"
    target.mkdir()
    (target / "stale.txt").write_text("stale")
    with atomic_path(target, is_dir=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new.txt"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o777 & ~umask
    write_json(tmp_path / "c.json", {"a": [1, 2]})
    assert stat.S_IMODE((tmp_path / "c.json").stat().st_mode) == 0o666 & ~umask
    assert (tmp_path / "c.json").read_text() == '{\n  "a": [\n    1,\n    2\n  ]\n}\n'
