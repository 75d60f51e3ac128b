"""Small file helpers: every output is written to a temporary name and renamed into place.

- ``atomic_path``: one file or folder, old content or complete new content;
- ``file_set``: several files written into a folder as a set (no mix of old and new, no partial set);
- ``StagedFolder``: a folder built under a temporary name and renamed onto its target once it is usable;
- ``check_writable``: whether a stage can write its output folder, asked before any compute.

Temporary names say who made them: ``.<target>.<host>.<boot>.<pid namespace>.<pid>.<random>.<kind>``. A process
killed before it could clean up (SIGKILL, a power cut) leaves one behind; the next write of the same target removes
those whose process is gone (same host, and an earlier boot or a pid that no longer exists), never a live one's. Folders
created for an output that then fails are removed again.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .errors import UserError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    Readers never see a half-written file or folder: either the old content or the complete new one.
    For folders an existing target is replaced. On error the temporary (and any folder made for it) is removed.
    """
    path = Path(path)
    created = _make_folder(path.parent)
    try:
        sweep_stale(path)
        tmp = _temp_path(path.parent, path.name, "tmp", is_dir=is_dir)
    except BaseException:
        _remove_created(created)
        raise
    try:
        yield tmp
        # mkstemp/mkdtemp create 0600/0700; give the result the permissions open()/mkdir() would.
        os.chmod(tmp, _default_mode(is_dir))
        if is_dir and path.exists():
            _replace_folder(tmp, path)
        else:
            os.replace(tmp, path)
    except BaseException as err:
        if is_dir:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        _remove_created(created)
        _name_the_target(err, tmp, path)
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
    trash = _temp_path(target.parent, target.name, "old", is_dir=True)
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
    created: list[Path] = []
    try:
        if folder.exists() and not folder.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "not a folder", str(folder))
        created = _make_folder(folder)
        sweep_stale(folder / PROBE)
        probe = _temp_path(folder, PROBE, "probe", is_dir=False)
        try:
            with open(probe, "wb") as f:
                f.write(b"probe")
                f.flush()
                os.fsync(f.fileno())
        finally:
            probe.unlink(missing_ok=True)
    except OSError as e:
        raise UserError(f"cannot write to the {what} {folder}: {_reason(e)}") from None
    finally:
        _remove_created(created)
    return folder


@contextlib.contextmanager
def file_set(folder: str | os.PathLike, members: Sequence[str] = ()) -> Iterator[Path]:
    """Yield a staging folder; the files written into it replace their namesakes in ``folder`` together, only
    when the block succeeds. ``members`` names the files the set may hold: those of an older set that this one
    did not write are removed, so the folder never mixes two sets.

    A new ``folder`` is built whole under a temporary name and renamed into place. Into an existing folder (which
    may hold other things) each file is renamed only after all are written: a rename needs no space, so a full
    disk or an error while writing leaves the old set untouched. On error the staging folder (and any folder made
    for it) is removed.
    """
    folder = Path(folder)
    sweep_stale(folder)
    if folder.is_dir():
        sweep_stale(folder / folder.name)  # an earlier set's staging folder inside it
    fresh = not folder.exists()
    parent = folder.parent if fresh else folder  # same filesystem as the target: renames, not copies
    created = _make_folder(parent)
    done = False
    try:
        stage = _temp_path(parent, folder.name, "staging", is_dir=True)
    except BaseException:
        _remove_created(created)
        raise
    try:
        yield stage
        for f in stage.rglob("*"):
            os.chmod(f, _default_mode(f.is_dir()))
        written = {f.name for f in stage.iterdir()}
        if fresh and not folder.exists():
            os.chmod(stage, _default_mode(True))
            os.replace(stage, folder)
            done = True
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
        done = True
    except BaseException as err:
        _name_the_target(err, stage, folder)
        raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        if not done:
            _remove_created(created)


class StagedFolder:
    """A folder built under a hidden temporary name beside ``target`` and renamed onto it by :meth:`commit`.

    For an output that is only meaningful once complete enough (a training run: once its first checkpoint
    exists): until the commit, readers see nothing (or the folder it replaces); :meth:`discard` removes it, as
    leaving a ``with StagedFolder(target) as folder:`` block does.
    """

    def __init__(self, target: str | os.PathLike):
        self.target = Path(target)
        self.path = self.target  # where to write now: the temporary folder until the commit
        self.committed = False
        self._created: list[Path] = []

    def open(self) -> Path:
        """Create the temporary folder (and the target's missing parents); remove dead runs' leftovers first."""
        self._created = _make_folder(self.target.parent)
        try:
            sweep_stale(self.target)
            self.path = _temp_path(self.target.parent, self.target.name, "tmp", is_dir=True)
        except BaseException:
            self.discard()
            raise
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

    def __enter__(self) -> StagedFolder:
        return self

    def __exit__(self, kind: Any, err: BaseException | None, traceback: Any) -> None:
        """Discard an uncommitted folder on every way out; an OSError names the target, not the hidden folder."""
        if err is not None and not self.committed and self.path != self.target:
            _name_the_target(err, self.path, self.target)
        self.discard()

    def discard(self) -> None:
        """Remove the temporary folder, and the parents made for it, if it was never committed."""
        if not self.committed:
            if self.path != self.target:
                shutil.rmtree(self.path, ignore_errors=True)
                self.path = self.target
            _remove_created(self._created)
            self._created = []


# --------------------------------------------------------------------------------------------------------------
# temporary names that say whose they are, and the folders made for them

PROBE = "write-probe"
_KINDS = ("tmp", "staging", "old", "probe")
_OWNED = re.compile(r"(?P<host>[0-9a-f]{8})\.(?P<boot>[0-9a-f]{8})\.(?P<ns>[0-9a-f]{8})\.(?P<pid>\d+)\.[a-z0-9_]+\."
                    r"(?P<kind>" + "|".join(_KINDS) + ")")
_UNKNOWN = "0" * 8


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:8]


@functools.cache
def _host_id() -> str:
    """This machine (or container): 8 hex digits."""
    return _digest(socket.gethostname())


@functools.cache
def _boot_id() -> str:
    """This boot of the machine (8 hex digits), or zeros where the system does not say."""
    try:
        text = Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")
    except OSError:
        return _UNKNOWN
    return text[:8] if re.fullmatch(r"[0-9a-f]{8,}", text) else _UNKNOWN


@functools.cache
def _pid_space() -> str:
    """The pid namespace (a container sharing the folder counts its own pids), or zeros where there is none."""
    try:
        return _digest(os.readlink("/proc/self/ns/pid"))
    except OSError:
        return _UNKNOWN


def _owner(pid: int | None = None) -> str:
    """``host.boot.pidspace.pid`` of this process (or of ``pid`` here): who made a temporary name."""
    return f"{_host_id()}.{_boot_id()}.{_pid_space()}.{os.getpid() if pid is None else pid}"


def _temp_path(parent: Path, name: str, kind: str, *, is_dir: bool) -> Path:
    """A new hidden file or folder in ``parent`` named for ``name``, this process and ``kind``."""
    prefix = f".{name}.{_owner()}."
    if is_dir:
        return Path(tempfile.mkdtemp(prefix=prefix, suffix=f".{kind}", dir=parent))
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=f".{kind}", dir=parent)
    os.close(fd)
    return Path(tmp)


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":  # no signal 0 there: never guess
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, owned by someone else
        return True
    return True


def _owner_gone(match: re.Match) -> bool:
    """Whether the process that made a temporary name has certainly ended: made on this machine, and before its
    last boot, or in this pid namespace by a pid that no longer exists. Another machine's or container's: never
    certain."""
    if match["host"] != _host_id():
        return False
    if _UNKNOWN not in (match["boot"], _boot_id()) and match["boot"] != _boot_id():
        return True
    if match["ns"] != _pid_space():
        return False
    return int(match["pid"]) != os.getpid() and not _pid_alive(int(match["pid"]))


def sweep_stale(target: str | os.PathLike) -> list[Path]:
    """Remove the temporary files and folders beside ``target`` that a killed process left while writing it (only
    ours, only of processes that have ended); return them. A folder a crash left renamed aside while it was being
    replaced comes back as ``target`` when nothing took its place."""
    target = Path(target)
    prefix = f".{target.name}."
    try:
        entries = [e.name for e in os.scandir(target.parent) if e.name.startswith(prefix)]
    except OSError:
        return []
    removed = []
    for entry in sorted(entries):
        match = _OWNED.fullmatch(entry[len(prefix):])
        if match is None or not _owner_gone(match):
            continue
        stale = target.parent / entry
        with contextlib.suppress(OSError):
            if match["kind"] == "old" and not os.path.lexists(target) and (stale / target.name).is_dir():
                os.replace(stale / target.name, target)
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale)
            else:
                stale.unlink()
            removed.append(stale)
    return removed


def _name_the_target(err: BaseException, tmp: Path, target: Path) -> None:
    """An OSError met while writing the temporary ``tmp`` names the file the user asked for, not the hidden one."""
    if not isinstance(err, OSError):
        return
    for attr in ("filename", "filename2"):
        name = getattr(err, attr, None)
        if isinstance(name, str | os.PathLike) and name:
            with contextlib.suppress(ValueError):
                setattr(err, attr, str(target / Path(name).relative_to(tmp)) if Path(name) != tmp else str(target))


def _make_folder(folder: Path) -> list[Path]:
    """``mkdir -p folder``; the folders it created, deepest first (for :func:`_remove_created`)."""
    missing = []
    p = folder
    while not os.path.lexists(p) and p != p.parent:
        missing.append(p)
        p = p.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except BaseException:
        _remove_created(missing)
        raise
    return missing


def _remove_created(created: list[Path]) -> None:
    """Remove folders that :func:`_make_folder` created, where they are still empty."""
    for p in created:
        with contextlib.suppress(OSError):
            p.rmdir()


_HINTS = {
    errno.ENOSPC: "no space left on the device; free some space and run again",
    errno.EDQUOT: "disk quota exceeded; free some space and run again",
    errno.EACCES: "permission denied; choose a folder you can write or fix its permissions",
    errno.EPERM: "operation not permitted; choose a folder you can write or fix its permissions",
    errno.EROFS: "read-only file system; choose a writable folder",
    errno.ENOENT: "no such file or folder (was it moved or deleted while the stage ran?)",
    errno.ENOTDIR: "a path component is a file, not a folder; choose another folder",
    errno.EEXIST: "a file of that name is in the way; choose another folder",
    errno.EIO: "input/output error (a failing disk or a network folder that went away); check it and run again",
    errno.EFBIG: "file too large for this file system; choose a folder on another one",
}


def os_error_in(err: BaseException, path: str | os.PathLike) -> OSError | None:
    """The operating-system error inside a library's own exception type, as an OSError naming ``path``: Rust
    libraries (safetensors) report ``... (os error 28) ...``. None when ``err`` does not wrap one."""
    if isinstance(err, OSError):
        return err
    match = re.search(r"\(os error (\d+)\)", str(err))
    if match is None:
        return None
    code = int(match.group(1))
    return OSError(code, os.strerror(code), str(path))


def _reason(e: OSError) -> str:
    return _HINTS.get(e.errno, e.strerror or str(e))


def describe_os_error(e: OSError) -> str:
    """One line for an operating-system error met while reading or writing: the file and what to do."""
    where = " -> ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
    return f"{where}: {_reason(e)}" if where else _reason(e)
