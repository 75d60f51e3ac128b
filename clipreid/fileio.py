"""Small file helpers: every output is written to a temporary name and renamed into place.

- ``atomic_path``: one file or folder, old content or complete new content;
- ``file_set``: several files written into a folder as a set (no mix of old and new, no partial set);
- ``StagedFolder``: a folder built under a temporary name and renamed onto its target once it is usable;
- ``check_writable``: whether a stage can write its output folder, asked before any compute.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .errors import UserError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    Readers never see a half-written file or folder: either the old content or the complete new one.
    For folders an existing target is replaced. On error the temporary is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        # mkstemp/mkdtemp create 0600/0700; give the result the permissions open()/mkdir() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, (0o777 if is_dir else 0o666) & ~umask)
        if is_dir and path.exists():
            _replace_folder(tmp, path)
        else:
            os.replace(tmp, path)
    except BaseException:
        if is_dir:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def _default_mode(is_dir: bool) -> int:
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if is_dir else 0o666) & ~umask


def _replace_folder(new: Path, target: Path) -> None:
    """Put folder ``new`` in place of the existing folder ``target``: the old one is renamed aside first, so a
    crash in between leaves it under a hidden name, never a half-deleted target."""
    trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
    os.replace(target, trash / target.name)
    try:
        os.replace(new, target)
    except BaseException:
        os.replace(trash / target.name, target)
        shutil.rmtree(trash, ignore_errors=True)
        raise
    shutil.rmtree(trash, ignore_errors=True)


def check_writable(folder: str | os.PathLike, what: str = "output folder") -> Path:
    """Make sure files can be created in ``folder`` before any work: create it, write and delete a probe file.

    Folders created only for the probe are removed again, so a stage that fails later leaves nothing behind.
    Raises a one-line UserError naming the folder (``what`` says which, e.g. ``"--output-dir"``).
    """
    folder = Path(folder)
    missing = []
    p = folder
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    try:
        if folder.exists() and not folder.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "not a folder", str(folder))
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", dir=folder)
        try:
            os.write(fd, b"probe")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as e:
        raise UserError(f"cannot write to the {what} {folder}: {_reason(e)}") from None
    finally:
        for created in missing:  # deepest first
            with contextlib.suppress(OSError):
                created.rmdir()
    return folder


@contextlib.contextmanager
def file_set(folder: str | os.PathLike, members: Sequence[str] = ()) -> Iterator[Path]:
    """Yield a staging folder; the files written into it replace their namesakes in ``folder`` together, only
    when the block succeeds. ``members`` names the files the set may hold: those of an older set that this one
    did not write are removed, so the folder never mixes two sets.

    A new ``folder`` is built whole under a temporary name and renamed into place. Into an existing folder (which
    may hold other things) each file is renamed only after all are written: a rename needs no space, so a full
    disk or an error while writing leaves the old set untouched. On error the staging folder is removed.
    """
    folder = Path(folder)
    fresh = not folder.exists()
    parent = folder.parent if fresh else folder  # same filesystem as the target: renames, not copies
    parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".staging", dir=parent))
    try:
        yield stage
        for f in stage.rglob("*"):
            os.chmod(f, _default_mode(f.is_dir()))
        written = {f.name for f in stage.iterdir()}
        if fresh and not folder.exists():
            os.chmod(stage, _default_mode(True))
            os.replace(stage, folder)
            return
        folder.mkdir(parents=True, exist_ok=True)
        for f in sorted(stage.iterdir()):
            if f.is_dir() and (folder / f.name).is_dir():
                _replace_folder(f, folder / f.name)
            else:
                os.replace(f, folder / f.name)
        for name in members:
            if name not in written:
                with contextlib.suppress(FileNotFoundError):
                    (folder / name).unlink()
    finally:
        shutil.rmtree(stage, ignore_errors=True)


class StagedFolder:
    """A folder built under a hidden temporary name beside ``target`` and renamed onto it by :meth:`commit`.

    For an output that is only meaningful once complete enough (a training run: once its first checkpoint
    exists): until the commit, readers see nothing (or the folder it replaces); :meth:`discard` removes it.
    """

    def __init__(self, target: str | os.PathLike):
        self.target = Path(target)
        self.path = self.target  # where to write now: the temporary folder until the commit
        self.committed = False

    def open(self) -> Path:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.", suffix=".tmp", dir=self.target.parent))
        return self.path

    def commit(self) -> Path:
        """Rename the temporary folder onto the target (replacing an existing one); later writes go there."""
        if not self.committed and self.path != self.target:
            os.chmod(self.path, _default_mode(True))
            if self.target.exists():
                _replace_folder(self.path, self.target)
            else:
                os.replace(self.path, self.target)
        self.committed, self.path = True, self.target
        return self.target

    def discard(self) -> None:
        """Remove the temporary folder if it was never committed."""
        if not self.committed and self.path != self.target:
            shutil.rmtree(self.path, ignore_errors=True)
            self.path = self.target


_HINTS = {
    errno.ENOSPC: "no space left on the device; free some space and run again",
    errno.EDQUOT: "disk quota exceeded; free some space and run again",
    errno.EACCES: "permission denied; choose a folder you can write or fix its permissions",
    errno.EPERM: "operation not permitted; choose a folder you can write or fix its permissions",
    errno.EROFS: "read-only file system; choose a writable folder",
    errno.ENOENT: "no such file or folder (was it moved or deleted while the stage ran?)",
    errno.ENOTDIR: "a path component is a file, not a folder; choose another folder",
    errno.EEXIST: "a file of that name is in the way; choose another folder",
}


def _reason(e: OSError) -> str:
    return _HINTS.get(e.errno, e.strerror or str(e))


def describe_os_error(e: OSError) -> str:
    """One line for an operating-system error met while reading or writing: the file and what to do."""
    where = " -> ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
    return f"{where}: {_reason(e)}" if where else _reason(e)
