"""Get the DeepSportradar player re-identification data: resumable download, md5 check, guarded unzip.

The data is the zip ``baseline/data/synergyreid/raw/synergyreid_data.zip`` committed inside
``DeepSportradar/player-reidentification-challenge``; we fetch the GitHub archive of a known commit, pull
that inner zip out of it, check the inner zip's md5 (GitHub regenerates archives, so only the inner zip has
a stable md5) and only then extract it into ``data/data_reid``. Every failure is a ``UserError`` whose one-line
message says what happened and what to do.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import stat
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import requests
import urllib3
from tqdm import tqdm

from clipreid.errors import UserError, first_line
from clipreid.fileio import atomic_path, write_text
from clipreid.layout import DATASET_DIRNAME, IMAGE_DIRS, TRAIN_DIR
from clipreid.progress import progress_bar

REPO_URL = "https://github.com/DeepSportradar/player-reidentification-challenge"
ARCHIVE_PREFIX = "player-reidentification-challenge"
INNER_ZIP_PATH = "baseline/data/synergyreid/raw/synergyreid_data.zip"
INNER_ZIP_NAME = "synergyreid_data.zip"
EDITION_MARKER = ".edition"  # written inside data_reid so a later run can tell which edition it holds


@dataclass(frozen=True)
class Edition:
    commit: str  # commit of the challenge repository holding this edition's zip
    md5: str  # md5 of the inner synergyreid_data.zip (the outer GitHub archive has no stable md5)
    url: str  # GitHub archive of that commit


def _edition(commit: str, md5: str) -> Edition:
    return Edition(commit=commit, md5=md5, url=f"{REPO_URL}/archive/{commit}.zip")


EDITIONS: dict[str, Edition] = {
    "2023": _edition("625e15c", "2a1cdbd10d2b8f0da6575e3581343e31"),
    "2022": _edition("78a9e42", "05715857791e2e88b2f11e4037fbec7d"),
}


def _log(message: str, enabled: bool = True) -> None:
    if enabled:
        print(message, flush=True)


def _gb(n_bytes: float) -> str:
    return f"{max(n_bytes, 1e8) / 1e9:.1f}"


def _os_error(exc: OSError, path: Path, need_bytes: int | None = None) -> UserError:
    """Turn a failed write into a one-line UserError (ENOSPC gets its own message)."""
    if exc.errno == errno.ENOSPC:
        amount = f"free {_gb(need_bytes)} GB" if need_bytes else "free some space"
        return UserError(f"no space left on device while writing {path}: {amount} and re-run")
    reason = exc.strerror or str(exc) or type(exc).__name__
    return UserError(f"cannot write {path} ({reason}): check the folder and its permissions, then re-run")


# --------------------------------------------------------------------------------------------------------------
# Checksums


def md5sum(path: Path) -> str:
    """Hex md5 of a file, read in 1 MiB chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    except OSError as exc:
        raise UserError(
            f"cannot read {path} ({exc.strerror or exc}): check that the file exists and is readable"
        ) from None
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------------------------
# Download


def _reason(exc: Exception) -> str:
    """A short reason from a requests exception ("Connection refused", "timed out", ...)."""
    if isinstance(exc, requests.Timeout) or "timed out" in str(exc).lower():
        return "timed out"
    found = re.findall(r"\[Errno -?\d+\] ([^'\"()\]]+)", str(exc))
    if found:
        return found[-1].strip()
    return type(exc).__name__


def _content_range(response: requests.Response) -> tuple[int | None, int | None]:
    """(start, total) from a ``Content-Range: bytes start-end/total`` (or ``bytes */total``) header."""
    match = re.match(r"bytes\s+(\d+|\*)(?:-\d+)?/(\d+|\*)", response.headers.get("Content-Range", ""))
    if not match:
        return None, None
    start, total = match.groups()
    return (None if start == "*" else int(start)), (None if total == "*" else int(total))


def download_file(
    url: str,
    dest: Path,
    *,
    expected_md5: str | None = None,
    chunk_size: int = 1 << 20,
    timeout: float = 30.0,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``dest`` (replacing it), resuming a previous partial download; return ``dest``.

    Bytes go to ``<dest>.part``; an existing part is resumed with an HTTP Range request (a server that
    ignores it restarts from zero). Only a complete file (whose md5 matches ``expected_md5`` when given) is
    renamed onto ``dest``; a mismatching one is moved to ``<dest>.bad``. An interrupted download keeps its
    part so the next call resumes it.
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _os_error(exc, dest.parent) from None

    for _ in range(3):  # a restart (server ignored the range, or the part is longer than the file) loops once
        offset = part.stat().st_size if part.exists() else 0
        headers = {"Accept-Encoding": "identity"}  # ranges count raw bytes: no transparent gzip
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            response = requests.get(url, headers=headers, stream=True, timeout=timeout)
        except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema, requests.exceptions.InvalidSchema):
            raise UserError(f"invalid url {url!r}: give an http(s) url, or put the file at {dest} by hand") from None
        except requests.RequestException as exc:
            host = urlsplit(url).hostname or url
            raise UserError(
                f"cannot reach {host} ({_reason(exc)}): check the connection, "
                f"or download {url} by hand and put it at {dest}"
            ) from None
        with response:
            status = response.status_code
            if status == 416 and offset:
                total = _content_range(response)[1]
                if total == offset or (total is None and expected_md5 and md5sum(part) == expected_md5):
                    break  # the part already holds the whole file
                _log(f"{part} does not match the file on the server; restarting the download", progress)
                part.unlink()
                continue
            if status not in (200, 206):
                reason = f" {response.reason}" if response.reason else ""
                raise UserError(
                    f"HTTP {status}{reason} for {url}: check the url (or the edition), "
                    f"or download the file by hand and put it at {dest}"
                )
            if status == 206:
                start, total = _content_range(response)
                if start != offset:
                    part.unlink()
                    continue
                mode = "ab"
            else:
                if offset:
                    _log(f"the server ignored the resume request; downloading {url} from the start", progress)
                offset, mode = 0, "wb"
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
            _stream(response, url, part, mode, offset, total, chunk_size, progress)
            break
    else:
        raise UserError(f"the server keeps answering inconsistent ranges for {url}: delete {part} and re-run")

    if expected_md5:
        actual = md5sum(part)
        if actual != expected_md5:
            bad = dest.with_name(dest.name + ".bad")
            os.replace(part, bad)
            raise UserError(
                f"md5 mismatch for {url}: expected {expected_md5}, got {actual}; "
                f"it was kept as {bad}: delete it and re-run"
            )
    try:
        os.replace(part, dest)
    except OSError as exc:
        raise _os_error(exc, dest) from None
    return dest


def _chunks(response: requests.Response, chunk_size: int) -> Iterator[bytes]:
    """The body in pieces of at most ``chunk_size`` bytes, each yielded as soon as it arrives."""
    read1 = getattr(response.raw, "read1", None)
    if read1 is None:  # urllib3 < 2
        yield from response.iter_content(chunk_size)
        return
    # iter_content waits for full chunks and drops the partial one when the connection breaks; read1 hands
    # over what has arrived, so an interrupted download keeps every byte it received for the resume.
    while chunk := read1(chunk_size, decode_content=True):
        yield chunk


def _stream(
    response: requests.Response,
    url: str,
    part: Path,
    mode: str,
    offset: int,
    total: int | None,
    chunk_size: int,
    progress: bool,
) -> None:
    """Append the response body to ``part``; a UserError on a dropped connection or a failed write."""
    written = offset
    bar = progress_bar(
        total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024, desc=part.name, disable=not progress
    )
    try:
        with bar, open(part, mode) as f:
            for chunk in _chunks(response, chunk_size):
                f.write(chunk)
                written += len(chunk)
                bar.update(len(chunk))
    # requests' exceptions derive from OSError: catch them first, so OSError below means a failed write.
    except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
        raise UserError(
            f"the download of {url} was interrupted after {written} of {total or '?'} bytes "
            f"({_reason(exc)}): re-run to resume from {part}"
        ) from None
    except OSError as exc:
        raise _os_error(exc, part, (total - written) if total else None) from None
    if total is not None and written != total:
        raise UserError(f"the download of {url} stopped after {written} of {total} bytes: re-run to resume from {part}")


# --------------------------------------------------------------------------------------------------------------
# Guarded zip extraction


def _damaged(zip_path: Path, exc: BaseException) -> UserError:
    return UserError(f"{zip_path} is damaged ({first_line(exc)}): delete it and re-run to download it again")


def _open_zip(zip_path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(zip_path)
    except FileNotFoundError:
        raise UserError(f"{zip_path} does not exist: download it first (or check the path)") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError) as exc:
        raise _damaged(zip_path, exc) from None


def _member_path(zip_path: Path, info: zipfile.ZipInfo) -> PurePosixPath:
    """The member's relative path; UserError for absolute paths, '..' and links (zip slip)."""
    name = info.filename.replace("\\", "/")
    parts = name.split("/")
    is_link = stat.S_ISLNK(info.external_attr >> 16)
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name) or ".." in parts or is_link:
        raise UserError(
            f"{zip_path} holds an unsafe member {info.filename!r} (absolute path, '..' or link): "
            "refusing to extract it; delete the file and get it again from the official source"
        )
    return PurePosixPath(*[p for p in parts if p not in ("", ".")])


def extract_zip(
    zip_path: Path,
    target: Path,
    *,
    max_total_bytes: int = 8 << 30,
    max_members: int = 200_000,
    progress: bool = True,
    root: str = "",
) -> Path:
    """Extract ``zip_path`` into the folder ``target`` (replacing it) and return ``target``.

    With ``root`` only the members under that folder of the zip are extracted, with the folder stripped.
    Guards: members with absolute paths, '..' or symbolic links are refused (zip slip); more than
    ``max_members`` members, more than ``max_total_bytes`` declared uncompressed bytes, or a member that
    inflates past its declared size are refused (zip bomb). Everything is extracted into a temporary
    folder beside ``target`` that is renamed into place only when complete.
    """
    zip_path, target = Path(zip_path), Path(target)
    prefix = PurePosixPath(root.strip("/")) if root.strip("/") else None
    with _open_zip(zip_path) as zf:
        infos = zf.infolist()
        if len(infos) > max_members:
            raise UserError(
                f"{zip_path} holds {len(infos)} members, more than the limit of {max_members}: refusing to "
                "extract it (zip bomb guard); raise max_members if the archive is trusted"
            )
        members: list[tuple[zipfile.ZipInfo, PurePosixPath]] = []
        for info in infos:
            path = _member_path(zip_path, info)
            if prefix is not None:
                if prefix not in path.parents:
                    continue
                path = path.relative_to(prefix)
            if path.parts:
                members.append((info, path))
        total = sum(info.file_size for info, _ in members)
        if total > max_total_bytes:
            raise UserError(
                f"{zip_path} declares {total} uncompressed bytes, more than the limit of {max_total_bytes}: "
                "refusing to extract it (zip bomb guard); raise max_total_bytes if the archive is trusted"
            )
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            free = shutil.disk_usage(target.parent).free
        except OSError as exc:
            raise _os_error(exc, target.parent) from None
        if free < total:
            raise UserError(
                f"no space left on device for extracting {zip_path} into {target}: it needs {_gb(total)} GB, "
                f"{_gb(free)} GB are free: free {_gb(total - free)} GB and re-run"
            )
        try:
            with atomic_path(target, is_dir=True) as tmp:
                bar = progress_bar(
                    total=total,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=f"extract {zip_path.name}",
                    disable=not progress,
                )
                with bar:
                    for info, path in members:
                        _extract_member(zf, zip_path, info, tmp.joinpath(*path.parts), bar)
        except OSError as exc:
            # The temporary folder is gone by now: what is missing is the whole size minus what is free.
            try:
                free = shutil.disk_usage(target.parent).free
            except OSError:
                free = 0
            raise _os_error(exc, target, total - free if total > free else None) from None
    return target


def _copy_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, dest: Path, bar: tqdm, too_big: str) -> None:
    """Stream one member to ``dest``, never writing more than its declared size (``too_big`` is the error)."""
    written = 0
    with zf.open(info) as src, open(dest, "wb") as dst:
        while chunk := src.read(1 << 20):
            written += len(chunk)
            if written > info.file_size:
                raise UserError(too_big)
            dst.write(chunk)
            bar.update(len(chunk))


def _extract_member(zf: zipfile.ZipFile, zip_path: Path, info: zipfile.ZipInfo, dest: Path, bar: tqdm) -> None:
    """Write one member to ``dest``; OSError (a failed write) is left to the caller."""
    try:
        if info.is_dir():
            dest.mkdir(parents=True, exist_ok=True)
            return
        dest.parent.mkdir(parents=True, exist_ok=True)
        too_big = (
            f"{zip_path}: member {info.filename!r} inflates past its declared {info.file_size} bytes: "
            "refusing to extract it (zip bomb guard); delete the file and re-run"
        )
        _copy_member(zf, info, dest, bar, too_big)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
        # RuntimeError: encrypted member; NotImplementedError: unsupported compression
        raise _damaged(zip_path, exc) from None


# --------------------------------------------------------------------------------------------------------------
# The SynergyReID dataset


def is_complete(dataset_dir: Path) -> bool:
    """True if all five image folders of the layout exist and are non-empty."""
    dataset_dir = Path(dataset_dir)
    for sub in IMAGE_DIRS:
        folder = dataset_dir / sub
        if not folder.is_dir() or next(folder.iterdir(), None) is None:
            return False
    return True


def _pull_inner_zip(outer: Path, inner: Path, progress: bool) -> None:
    """Copy the inner data zip out of the GitHub archive ``outer`` to ``inner`` (atomically)."""
    with _open_zip(outer) as zf:
        names = [n for n in zf.namelist() if n == INNER_ZIP_PATH or n.endswith("/" + INNER_ZIP_PATH)]
        if not names:
            raise UserError(
                f"{outer} does not contain {INNER_ZIP_PATH}: it is not an archive of the challenge repository "
                "with the data; delete it and re-run"
            )
        info = zf.getinfo(min(names, key=len))
        _log(f"taking {INNER_ZIP_NAME} out of {outer}", progress)
        try:
            with atomic_path(inner) as tmp:
                bar = progress_bar(
                    total=info.file_size,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=INNER_ZIP_NAME,
                    disable=not progress,
                )
                too_big = (
                    f"{outer}: {INNER_ZIP_PATH} inflates past its declared size: "
                    "the archive is damaged; delete it and re-run"
                )
                with bar:
                    _copy_member(zf, info, tmp, bar, too_big)
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
            raise _damaged(outer, exc) from None
        except OSError as exc:
            raise _os_error(exc, inner, info.file_size) from None


def _check_md5(inner: Path, edition: str, source: Path | None = None) -> None:
    """UserError unless ``inner`` has the edition's md5.

    A zip of another known edition stays where it is (it is valid, just not the one asked for); any other
    mismatching zip is moved to ``.bad``, and so is the archive ``source`` it was taken from, so that a re-run
    downloads afresh instead of finding the same bad file.
    """
    expected = EDITIONS[edition].md5
    actual = md5sum(inner)
    if actual == expected:
        return
    other = [name for name, ed in EDITIONS.items() if ed.md5 == actual]
    if other:
        raise UserError(
            f"{inner} is the {other[0]} edition (md5 {actual}), not {edition} (md5 {expected}): "
            f"use edition {other[0]}, or delete {inner} and re-run to download {edition}"
        )
    bad = inner.with_name(inner.name + ".bad")
    os.replace(inner, bad)
    moved = f"it was moved to {bad}"
    if source is not None and source.exists():
        os.replace(source, source.with_name(source.name + ".bad"))
        moved = f"it and {source} were moved to .bad files"
    raise UserError(
        f"md5 mismatch for {inner}: expected {expected} ({edition} edition), got {actual}; {moved}: "
        "delete them and re-run to download again (or check that the edition is right)"
    )


def _held_edition(target: Path) -> str | None:
    """The edition recorded in ``target`` by a previous extraction, None if unknown."""
    try:
        words = (target / EDITION_MARKER).read_text(encoding="utf-8").split()
    except OSError:
        return None
    return words[0] if words else None


def _dataset_root(zip_path: Path) -> str:
    """The folder inside the data zip that holds ``reid_training`` ("" if the folders are at the top)."""
    with _open_zip(zip_path) as zf:
        names = [n.replace("\\", "/") for n in zf.namelist()]
    roots = set()
    for name in names:
        parts = name.split("/")
        if TRAIN_DIR in parts[:-1] and parts[0] != "__MACOSX":
            roots.add("/".join(parts[: parts.index(TRAIN_DIR)]))
    if not roots:
        raise UserError(f"{zip_path} has no {TRAIN_DIR}/ folder: it is not the SynergyReID data; delete it and re-run")
    root = min(roots, key=lambda r: (r.count("/"), len(r)))
    base = f"{root}/" if root else ""
    missing = [d for d in IMAGE_DIRS if not any(n.startswith(f"{base}{d}/") and not n.endswith("/") for n in names)]
    if missing:
        raise UserError(
            f"{zip_path} lacks {', '.join(missing)} under {base or 'its top level'}: it is not a complete "
            "SynergyReID zip; delete it and re-run"
        )
    return root


def fetch_synergyreid(
    data_dir: Path,
    edition: str = "2023",
    *,
    url: str | None = None,
    force: bool = False,
    progress: bool = True,
) -> Path:
    """Download, verify and extract the SynergyReID data into ``data_dir/data_reid``; return that folder.

    Files already in ``data_dir`` are used as they are, without any network (put them there by hand when
    offline):

    - ``synergyreid_data.zip``: the data zip itself (``baseline/data/synergyreid/raw/synergyreid_data.zip`` of
      the challenge repository), checked against the edition's md5;
    - ``player-reidentification-challenge-<commit>.zip``: the GitHub archive of the edition's commit
      (``EDITIONS[edition].url``, e.g. ``player-reidentification-challenge-625e15c.zip`` for 2023), from
      which ``synergyreid_data.zip`` is taken (the archive is deleted once the data zip is verified).

    Otherwise the archive is downloaded from ``url`` (default: the edition's GitHub archive), resuming a
    ``.part`` left by an interrupted run. A complete ``data_reid`` of the same edition is returned as is
    unless ``force``, which re-extracts it from the data zip. ``progress=False`` silences bars and messages.
    """
    if edition not in EDITIONS:
        raise UserError(f"unknown edition {edition!r}: choose one of {', '.join(sorted(EDITIONS))}")
    data_dir = Path(data_dir)
    info = EDITIONS[edition]
    target = data_dir / DATASET_DIRNAME
    marker = target / EDITION_MARKER

    if not force and is_complete(target):
        held = _held_edition(target)
        if held is not None and held != edition:
            raise UserError(
                f"{target} holds the {held} edition, not {edition}: use edition {held}, "
                f"or re-run with force to replace it with {edition}"
            )
        _log(f"{target} already holds the dataset; nothing to do (force re-extracts it)", progress)
        return target

    inner = data_dir / INNER_ZIP_NAME
    outer = data_dir / f"{ARCHIVE_PREFIX}-{info.commit}.zip"
    source = None  # the archive the data zip was taken from in this run
    if inner.exists():
        _log(f"using {inner}", progress)
    else:
        if outer.exists():
            _log(f"using {outer}", progress)
        else:
            _log(
                f"downloading the {edition} edition from {url or info.url} to {outer} "
                f"(offline? put {INNER_ZIP_NAME} or that archive in {data_dir} by hand)",
                progress,
            )
            download_file(url or info.url, outer, progress=progress)
        _pull_inner_zip(outer, inner, progress)
        source = outer

    _check_md5(inner, edition, source)
    if outer.exists():
        try:
            outer.unlink()  # the verified data zip holds everything we need from it
        except OSError:
            pass
    root = _dataset_root(inner)
    _log(f"extracting {inner} into {target}", progress)
    extract_zip(inner, target, root=root, progress=progress)
    try:
        write_text(marker, f"{edition} {info.md5}\n")
    except OSError as exc:
        raise _os_error(exc, marker) from None
    _log(f"the {edition} edition is ready in {target}", progress)
    return target
