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


# --------------------------------------------------------------------------------------------------------------
# nothing left behind: a killed writer's temporaries go with the next write, made folders go with a failure


def _hidden(folder):
    return sorted(p.name for p in folder.rglob(".*"))


def test_a_killed_writers_temporaries_go_with_the_next_write_and_a_live_ones_stay(tmp_path):
    import signal
    import subprocess
    import sys
    from pathlib import Path

    from clipreid.fileio import StagedFolder, file_set

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.csv").write_text("old")
    code = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from clipreid.fileio import StagedFolder, atomic_path, file_set\n"
        "root = Path(sys.argv[1])\n"
        "StagedFolder(root / 'runs' / 'r').open()\n"
        "with file_set(root / 'out') as stage, file_set(root / 'new') as stage2, atomic_path(root / 'f.txt') as t:\n"
        "    (stage / 'a.csv').write_text('half')\n"
        "    t.write_text('half')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=Path(__file__).parents[1],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == -signal.SIGKILL, r.stderr
    left = _hidden(tmp_path)
    assert len(left) == 4, left  # .r.*.tmp, .out.*.staging (in out/), .new.*.staging, .f.txt.*.tmp
    # a live process's temporaries (this test's parent process) look the same and must stay
    from clipreid import fileio

    live_name = f".f.txt.{fileio._owner(os.getppid())}.abcdefgh.tmp"
    (tmp_path / live_name).write_text("still being written")

    folder = StagedFolder(tmp_path / "runs" / "r")
    folder.open()
    folder.discard()
    with file_set(tmp_path / "out") as stage:
        (stage / "a.csv").write_text("new")
    with file_set(tmp_path / "new") as stage:
        (stage / "a.csv").write_text("new")
    write_text(tmp_path / "f.txt", "new")
    assert _hidden(tmp_path) == [live_name]
    assert (tmp_path / "out" / "a.csv").read_text() == "new" and (tmp_path / "out" / "old.csv").read_text() == "old"


def test_a_folder_renamed_aside_by_a_killed_writer_comes_back(tmp_path):
    from clipreid import fileio

    target = tmp_path / "dataset"
    owner = fileio._owner(999999999)  # a pid no system hands out
    aside = tmp_path / f".dataset.{owner}.abcdefgh.old"
    (aside / "dataset").mkdir(parents=True)
    (aside / "dataset" / "a.jpeg").write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(target, is_dir=True):
        raise RuntimeError("failed again")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset"]
    assert (target / "a.jpeg").read_bytes() == b"old"


def test_another_machines_temporaries_are_never_touched_and_an_earlier_boots_go(tmp_path):
    from clipreid import fileio

    _, boot, space, pid = fileio._owner(999999999).split(".")
    other = "0123abcd" if fileio._host_id() != "0123abcd" else "0123abce"
    foreign = [tmp_path / f".out.{other}.{boot}.{space}.{pid}.abcdefgh.staging",  # another machine
               tmp_path / f".out.{fileio._host_id()}.{boot}.{other}.{pid}.abcdefgh.staging"]  # another container
    for f in foreign:
        f.mkdir()
    earlier_boot = tmp_path / f".out.{fileio._host_id()}.{other}.{space}.{os.getpid()}.abcdefgh.staging"
    earlier_boot.mkdir()  # this machine before it restarted: every process of then is gone, whatever its pid
    with fileio.file_set(tmp_path / "out") as stage:
        (stage / "a").write_text("x")
    assert all(f.exists() for f in foreign) and not earlier_boot.exists()


def test_a_failed_write_removes_the_folders_it_made(tmp_path):
    from clipreid.fileio import StagedFolder, file_set

    (tmp_path / "keep").mkdir()
    with pytest.raises(RuntimeError), file_set(tmp_path / "a" / "b" / "c") as stage:
        (stage / "x.csv").write_text("half")
        raise RuntimeError("failed")
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "d" / "e" / "f.txt") as tmp:
        tmp.write_text("half")
        raise RuntimeError("failed")
    with pytest.raises(KeyboardInterrupt), file_set(tmp_path / "keep" / "g" / "h") as stage:
        raise KeyboardInterrupt
    folder = StagedFolder(tmp_path / "runs" / "deep" / "r")
    folder.open()
    folder.discard()
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == ["keep"]
    # a successful write keeps the folders it made
    with file_set(tmp_path / "a" / "b" / "c") as stage:
        (stage / "x.csv").write_text("x")
    assert (tmp_path / "a" / "b" / "c" / "x.csv").read_text() == "x"
