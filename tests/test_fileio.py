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


def test_check_writable_probes_and_leaves_no_trace(tmp_path):
    from clipreid.errors import UserError
    from clipreid.fileio import check_writable

    assert check_writable(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert list(tmp_path.iterdir()) == []  # the folders made for the probe are gone again
    (tmp_path / "keep").mkdir()
    check_writable(tmp_path / "keep")
    assert list((tmp_path / "keep").iterdir()) == []
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match=r"cannot write to the --output-dir .*f/sub: a path component is a file"):
        check_writable(tmp_path / "f" / "sub", "--output-dir")
    with pytest.raises(UserError, match=r"cannot write to the output folder .*/f: a path component is a file"):
        check_writable(tmp_path / "f")


def test_file_set_into_a_new_folder_is_all_or_nothing(tmp_path):
    from clipreid.fileio import file_set

    with pytest.raises(OSError), file_set(tmp_path / "out") as stage:
        (stage / "a.csv").write_text("a")
        raise OSError(28, "No space left on device")
    assert list(tmp_path.iterdir()) == []
    with file_set(tmp_path / "out") as stage:
        (stage / "a.csv").write_text("a")
        (stage / "b.csv").write_text("b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.csv", "b.csv"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "out" / "a.csv").stat().st_mode) == 0o666 & ~umask


def test_file_set_into_an_existing_folder_keeps_other_files_and_drops_stale_members(tmp_path):
    from clipreid.fileio import file_set

    out = tmp_path / "out"
    out.mkdir()
    for name, text in [("a.csv", "old a"), ("b.png", "old b"), ("mine.txt", "mine")]:
        (out / name).write_text(text)
    with pytest.raises(RuntimeError), file_set(out, members=("a.csv", "b.png")) as stage:
        (stage / "a.csv").write_text("new a")
        raise RuntimeError("killed midway")
    assert {p.name: p.read_text() for p in out.iterdir()} == {"a.csv": "old a", "b.png": "old b", "mine.txt": "mine"}
    with file_set(out, members=("a.csv", "b.png")) as stage:
        (stage / "a.csv").write_text("new a")
    assert {p.name: p.read_text() for p in out.iterdir()} == {"a.csv": "new a", "mine.txt": "mine"}


def test_staged_folder_appears_only_on_commit_and_replaces_the_old_one(tmp_path):
    from clipreid.fileio import StagedFolder

    target = tmp_path / "run"
    folder = StagedFolder(target)
    folder.open()
    (folder.path / "config.json").write_text("{}")
    assert not target.exists()
    folder.discard()
    assert list(tmp_path.iterdir()) == []
    target.mkdir()
    (target / "old.pt").write_text("old")
    folder = StagedFolder(target)
    folder.open()
    (folder.path / "last.pt").write_text("new")
    assert (target / "old.pt").exists()
    assert folder.commit() == target and folder.path == target
    folder.discard()  # a no-op once committed
    assert [p.name for p in tmp_path.iterdir()] == ["run"]
    assert [p.name for p in target.iterdir()] == ["last.pt"]
