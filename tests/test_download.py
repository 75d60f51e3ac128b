"""The downloader against a local HTTP server: resume, md5, guarded unzip and every failure path."""

from __future__ import annotations

import errno
import hashlib
import io
import random
import re
import socket
import stat
import threading
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from clipreid import download
from clipreid.download import (
    EDITIONS,
    INNER_ZIP_PATH,
    Edition,
    download_file,
    extract_zip,
    fetch_synergyreid,
    md5sum,
)
from clipreid.errors import UserError
from clipreid.layout import (
    CHALLENGE_GALLERY_DIR,
    CHALLENGE_QUERY_DIR,
    IMAGE_DIRS,
    TEST_GALLERY_DIR,
    TEST_QUERY_DIR,
    TRAIN_DIR,
    challenge_image_name,
    player_image_name,
)

COMMIT = EDITIONS["2023"].commit
FULL_SHA = COMMIT + "a398672cf8fa34e4c88b9f636380186ac"
ARCHIVE_PATH = f"/archive/{COMMIT}.zip"


# --------------------------------------------------------------------------------------------------------------
# A local HTTP server with Range support that can drop the connection, ignore ranges or fail


@dataclass
class Server:
    url: str = ""
    files: dict[str, bytes] = field(default_factory=dict)
    cut_after: int | None = None  # send only this many body bytes, then drop the connection (once)
    ignore_range: bool = False
    status: int | None = None  # answer every request with this error status
    seen: list[dict] = field(default_factory=list)  # {"path", "range"} of every request


def _handler(state: Server) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep pytest output clean
            pass

        def do_GET(self) -> None:
            state.seen.append({"path": self.path, "range": self.headers.get("Range")})
            if state.status is not None or self.path not in state.files:
                self.send_error(state.status or 404)
                return
            data = state.files[self.path]
            start = 0
            match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
            if match and not state.ignore_range:
                start = int(match[1])
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if state.cut_after is not None:
                body, state.cut_after = body[: state.cut_after], None
                self.close_connection = True
            self.wfile.write(body)
            self.wfile.flush()

    return Handler


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    # A proxy from the environment would swallow requests meant for the loopback server.
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def server():
    state = Server()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.fixture
def dead_url() -> str:
    """A url on a loopback port where nothing listens (connection refused)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}{ARCHIVE_PATH}"


# --------------------------------------------------------------------------------------------------------------
# Tiny zips with the real layout


def _jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 16), (seed * 40 % 256, 80, 160)).save(buf, "JPEG")
    return buf.getvalue()


def _image_members() -> dict[str, bytes]:
    names = {
        TRAIN_DIR: [player_image_name(1, 1, f) for f in range(3)],
        TEST_QUERY_DIR: [player_image_name(2, 1, 0)],
        TEST_GALLERY_DIR: [player_image_name(2, 1, 1), player_image_name(2, 1, 2)],
        CHALLENGE_QUERY_DIR: [challenge_image_name(0)],
        CHALLENGE_GALLERY_DIR: [challenge_image_name(1), challenge_image_name(2)],
    }
    members, seed = {}, 0
    for folder, files in names.items():
        for name in files:
            members[f"{folder}/{name}"] = _jpeg(seed)
            seed += 1
    return members


def _zip_bytes(members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _inner_zip(root: str = "data_reid/") -> bytes:
    members = {f"{root}{name}": data for name, data in _image_members().items()}
    if root:
        members = {root: b"", **members}  # a directory entry, as zip tools write them
    return _zip_bytes(members)


def _outer_zip(inner: bytes) -> bytes:
    top = f"player-reidentification-challenge-{FULL_SHA}/"
    # Incompressible padding makes the archive big enough to cut the download in the middle.
    padding = random.Random(0).randbytes(64_000)
    return _zip_bytes(
        {top + "README.md": b"# challenge\n", top + "padding.bin": padding, top + INNER_ZIP_PATH: inner},
        zipfile.ZIP_DEFLATED,
    )


@pytest.fixture
def inner() -> bytes:
    return _inner_zip()


@pytest.fixture
def edition(monkeypatch, server, inner) -> Edition:
    """The 2023 edition pointed at the local server, with the test zip's md5."""
    ed = Edition(commit=COMMIT, md5=hashlib.md5(inner).hexdigest(), url=server.url + ARCHIVE_PATH)
    monkeypatch.setitem(EDITIONS, "2023", ed)
    server.files[ARCHIVE_PATH] = _outer_zip(inner)
    return ed


def _assert_one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert message and "\n" not in message
    return message


def _assert_no_dataset(data_dir: Path) -> None:
    assert not (data_dir / "data_reid").exists()
    assert not list(data_dir.glob(".data_reid*")), "a temporary extraction folder was left behind"


def _assert_dataset(target: Path, root_members: dict[str, bytes] | None = None) -> None:
    for name, data in (root_members or _image_members()).items():
        assert (target / name).read_bytes() == data
    assert download.is_complete(target)


# --------------------------------------------------------------------------------------------------------------
# fetch_synergyreid end to end


@pytest.mark.parametrize("root", ["data_reid/", "synergyreid_data/", ""])
def test_fetch_end_to_end(tmp_path, server, edition, monkeypatch, root):
    inner = _inner_zip(root)
    monkeypatch.setitem(EDITIONS, "2023", Edition(COMMIT, hashlib.md5(inner).hexdigest(), edition.url))
    server.files[ARCHIVE_PATH] = _outer_zip(inner)
    data_dir = tmp_path / "data"

    target = fetch_synergyreid(data_dir, "2023", progress=root == "")
    assert target == data_dir / "data_reid"
    _assert_dataset(target)
    assert (data_dir / "synergyreid_data.zip").read_bytes() == inner
    assert not (data_dir / f"player-reidentification-challenge-{COMMIT}.zip").exists()
    assert [p.name for p in data_dir.iterdir() if p.name.startswith(".")] == []
    assert not (data_dir / "data_reid" / "data_reid").exists()


def test_fetch_resumes_after_a_dropped_connection(tmp_path, server, edition, inner):
    data_dir = tmp_path / "data"
    server.cut_after = 40_000
    with pytest.raises(UserError, match="interrupted") as exc:
        fetch_synergyreid(data_dir, progress=False)
    assert "resume" in _assert_one_line(exc)
    _assert_no_dataset(data_dir)
    part = data_dir / f"player-reidentification-challenge-{COMMIT}.zip.part"
    n = part.stat().st_size
    assert 0 < n < len(server.files[ARCHIVE_PATH])

    target = fetch_synergyreid(data_dir, progress=False)
    assert server.seen[-1]["range"] == f"bytes={n}-"
    _assert_dataset(target)
    assert (data_dir / "synergyreid_data.zip").read_bytes() == inner
    assert not part.exists()


def test_unknown_edition_lists_the_known_ones(tmp_path):
    with pytest.raises(UserError, match="2022, 2023") as exc:
        fetch_synergyreid(tmp_path, "2021", progress=False)
    _assert_one_line(exc)


def test_md5_mismatch_extracts_nothing(tmp_path, server, edition, inner, monkeypatch):
    monkeypatch.setitem(EDITIONS, "2023", Edition(COMMIT, "0" * 32, edition.url))
    data_dir = tmp_path / "data"
    with pytest.raises(UserError, match="md5 mismatch") as exc:
        fetch_synergyreid(data_dir, progress=False)
    message = _assert_one_line(exc)
    assert "0" * 32 in message and hashlib.md5(inner).hexdigest() in message and "delete" in message
    _assert_no_dataset(data_dir)
    assert not (data_dir / "synergyreid_data.zip").exists()  # nothing left at the name that looks valid
    assert (data_dir / "synergyreid_data.zip.bad").read_bytes() == inner
    # The archive it came from is set aside too, so a re-run downloads afresh.
    assert (data_dir / f"player-reidentification-challenge-{COMMIT}.zip.bad").exists()
    assert not (data_dir / f"player-reidentification-challenge-{COMMIT}.zip").exists()


def test_zip_of_the_other_edition_is_named(tmp_path, edition, inner, monkeypatch, dead_url):
    monkeypatch.setitem(EDITIONS, "2022", Edition("78a9e42", edition.md5, dead_url))
    monkeypatch.setitem(EDITIONS, "2023", Edition(COMMIT, "1" * 32, dead_url))
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "synergyreid_data.zip").write_bytes(inner)
    with pytest.raises(UserError, match="is the 2022 edition") as exc:
        fetch_synergyreid(data_dir, "2023", progress=False)
    assert "1" * 32 in _assert_one_line(exc)
    _assert_no_dataset(data_dir)
    assert (data_dir / "synergyreid_data.zip").exists()  # a valid zip of another edition is kept
    assert fetch_synergyreid(data_dir, "2022", progress=False) == data_dir / "data_reid"


def test_offline_names_the_connection_and_the_manual_path(tmp_path, edition, monkeypatch, dead_url):
    monkeypatch.setitem(EDITIONS, "2023", Edition(COMMIT, edition.md5, dead_url))
    data_dir = tmp_path / "data"
    with pytest.raises(UserError, match="cannot reach 127.0.0.1") as exc:
        fetch_synergyreid(data_dir, progress=False)
    message = _assert_one_line(exc)
    assert "connection" in message.lower()
    assert str(data_dir / f"player-reidentification-challenge-{COMMIT}.zip") in message
    assert dead_url in message
    _assert_no_dataset(data_dir)


def test_http_404(tmp_path, server, edition):
    server.status = 404
    with pytest.raises(UserError, match="HTTP 404") as exc:
        fetch_synergyreid(tmp_path / "data", progress=False)
    assert edition.url in _assert_one_line(exc)
    _assert_no_dataset(tmp_path / "data")


def test_http_500_via_url_argument(tmp_path, server, edition):
    server.status = 500
    with pytest.raises(UserError, match="HTTP 500"):
        fetch_synergyreid(tmp_path / "data", url=server.url + "/mirror.zip", progress=False)
    assert server.seen[-1]["path"] == "/mirror.zip"
    _assert_no_dataset(tmp_path / "data")


def test_invalid_url(tmp_path):
    with pytest.raises(UserError, match="invalid url"):
        download_file("not a url", tmp_path / "f.bin", progress=False)


def test_preplaced_inner_zip_needs_no_network(tmp_path, edition, inner, monkeypatch, dead_url):
    monkeypatch.setitem(EDITIONS, "2023", Edition(COMMIT, edition.md5, dead_url))
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "synergyreid_data.zip").write_bytes(inner)
    _assert_dataset(fetch_synergyreid(data_dir, url=dead_url, progress=False))


def test_preplaced_outer_archive_needs_no_network(tmp_path, server, edition, inner, monkeypatch, dead_url):
    monkeypatch.setitem(EDITIONS, "2023", Edition(COMMIT, edition.md5, dead_url))
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / f"player-reidentification-challenge-{COMMIT}.zip").write_bytes(server.files[ARCHIVE_PATH])
    _assert_dataset(fetch_synergyreid(data_dir, progress=False))
    assert (data_dir / "synergyreid_data.zip").read_bytes() == inner


def test_damaged_preplaced_archive(tmp_path, server, edition, monkeypatch, dead_url):
    monkeypatch.setitem(EDITIONS, "2023", Edition(COMMIT, edition.md5, dead_url))
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    outer = server.files[ARCHIVE_PATH]
    (data_dir / f"player-reidentification-challenge-{COMMIT}.zip").write_bytes(outer[: len(outer) // 2])
    with pytest.raises(UserError, match="damaged") as exc:
        fetch_synergyreid(data_dir, progress=False)
    assert "delete" in _assert_one_line(exc)
    _assert_no_dataset(data_dir)
    assert not (data_dir / "synergyreid_data.zip").exists()


def test_existing_dataset_returns_early_and_force_reextracts(tmp_path, server, edition, monkeypatch, dead_url, capsys):
    data_dir = tmp_path / "data"
    target = fetch_synergyreid(data_dir, progress=False)
    n_requests = len(server.seen)
    monkeypatch.setitem(EDITIONS, "2023", Edition(COMMIT, edition.md5, dead_url))

    probe = target / TRAIN_DIR / player_image_name(1, 1, 0)
    probe.write_bytes(b"edited")
    assert fetch_synergyreid(data_dir, url=dead_url) == target
    assert "already" in capsys.readouterr().out
    assert probe.read_bytes() == b"edited" and len(server.seen) == n_requests

    assert fetch_synergyreid(data_dir, url=dead_url, force=True, progress=False) == target
    _assert_dataset(target)

    with pytest.raises(UserError, match="holds the 2023 edition, not 2022"):
        fetch_synergyreid(data_dir, "2022", progress=False)


def test_failed_force_leaves_the_old_dataset_untouched(tmp_path, server, edition, inner, monkeypatch):
    data_dir = tmp_path / "data"
    target = fetch_synergyreid(data_dir, progress=False)
    (data_dir / "synergyreid_data.zip").write_bytes(inner[: len(inner) // 2])
    with pytest.raises(UserError):
        fetch_synergyreid(data_dir, force=True, progress=False)
    _assert_dataset(target)
    assert not list(data_dir.glob(".data_reid*"))


def test_inner_zip_without_the_layout_is_refused(tmp_path, monkeypatch, dead_url):
    bogus = _zip_bytes({"photos/a.jpeg": b"x"})
    monkeypatch.setitem(EDITIONS, "2023", Edition(COMMIT, hashlib.md5(bogus).hexdigest(), dead_url))
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "synergyreid_data.zip").write_bytes(bogus)
    with pytest.raises(UserError, match="reid_training"):
        fetch_synergyreid(data_dir, progress=False)
    _assert_no_dataset(data_dir)


class _FullDisk:
    """open() for the download module whose files accept ``budget`` bytes, then fail with ENOSPC."""

    def __init__(self, budget: int = 1000):
        self.budget = budget

    def __call__(self, path, mode="r", *args, **kwargs):
        f = open(path, mode, *args, **kwargs)
        if "r" in mode:
            return f
        outer = self

        class Writer:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                f.close()

            def write(self, data):
                if len(data) > outer.budget:
                    f.write(data[: outer.budget])
                    outer.budget = 0
                    raise OSError(errno.ENOSPC, "No space left on device")
                outer.budget -= len(data)
                return f.write(data)

        return Writer()


def test_full_disk_during_download(tmp_path, server, edition, monkeypatch):
    monkeypatch.setattr(download, "open", _FullDisk(1000), raising=False)
    data_dir = tmp_path / "data"
    with pytest.raises(UserError, match="no space left on device while writing") as exc:
        fetch_synergyreid(data_dir, progress=False)
    message = _assert_one_line(exc)
    assert re.search(r"free \d+\.\d GB", message)
    _assert_no_dataset(data_dir)
    assert not (data_dir / f"player-reidentification-challenge-{COMMIT}.zip").exists()
    assert (data_dir / f"player-reidentification-challenge-{COMMIT}.zip.part").stat().st_size == 1000  # resumable


def test_full_disk_during_extraction(tmp_path, edition, inner, monkeypatch, dead_url):
    monkeypatch.setitem(EDITIONS, "2023", Edition(COMMIT, edition.md5, dead_url))
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "synergyreid_data.zip").write_bytes(inner)
    monkeypatch.setattr(download, "open", _FullDisk(2000), raising=False)
    with pytest.raises(UserError, match="no space left on device while writing") as exc:
        fetch_synergyreid(data_dir, progress=False)
    assert str(data_dir / "data_reid") in _assert_one_line(exc)
    _assert_no_dataset(data_dir)
    assert (data_dir / "synergyreid_data.zip").read_bytes() == inner


# --------------------------------------------------------------------------------------------------------------
# download_file


def test_download_resume_is_byte_identical(tmp_path, server):
    data = bytes(range(256)) * 40
    server.files["/f.bin"] = data
    dest = tmp_path / "f.bin"
    server.cut_after = 3000
    with pytest.raises(UserError, match="interrupted"):
        download_file(server.url + "/f.bin", dest, chunk_size=256, progress=False)
    part = tmp_path / "f.bin.part"
    n = part.stat().st_size
    assert 0 < n < len(data) and not dest.exists()

    download_file(server.url + "/f.bin", dest, chunk_size=256, expected_md5=hashlib.md5(data).hexdigest())
    assert server.seen[-1]["range"] == f"bytes={n}-"
    assert dest.read_bytes() == data and not part.exists()


def test_download_restarts_when_the_server_ignores_range(tmp_path, server):
    data = b"0123456789" * 500
    server.files["/f.bin"] = data
    server.ignore_range = True
    (tmp_path / "f.bin.part").write_bytes(b"stale bytes")
    download_file(server.url + "/f.bin", tmp_path / "f.bin", progress=False)
    assert server.seen[-1]["range"] == "bytes=11-"
    assert (tmp_path / "f.bin").read_bytes() == data
    assert not (tmp_path / "f.bin.part").exists()


def test_download_complete_part_answered_416(tmp_path, server):
    data = b"abc" * 1000
    server.files["/f.bin"] = data
    (tmp_path / "f.bin.part").write_bytes(data)
    download_file(server.url + "/f.bin", tmp_path / "f.bin", progress=False)
    assert len(server.seen) == 1 and server.seen[0]["range"] == f"bytes={len(data)}-"
    assert (tmp_path / "f.bin").read_bytes() == data


def test_download_part_longer_than_the_file_restarts(tmp_path, server):
    data = b"abc" * 1000
    server.files["/f.bin"] = data
    (tmp_path / "f.bin.part").write_bytes(data + b"junk")
    download_file(server.url + "/f.bin", tmp_path / "f.bin", progress=False)
    assert [r["range"] for r in server.seen] == [f"bytes={len(data) + 4}-", None]
    assert (tmp_path / "f.bin").read_bytes() == data


def test_download_md5_mismatch_keeps_a_bad_file(tmp_path, server):
    server.files["/f.bin"] = b"payload"
    with pytest.raises(UserError, match="md5 mismatch") as exc:
        download_file(server.url + "/f.bin", tmp_path / "f.bin", expected_md5="f" * 32, progress=False)
    assert "f" * 32 in _assert_one_line(exc) and hashlib.md5(b"payload").hexdigest() in str(exc.value)
    assert not (tmp_path / "f.bin").exists() and not (tmp_path / "f.bin.part").exists()
    assert (tmp_path / "f.bin.bad").read_bytes() == b"payload"


def test_md5sum(tmp_path):
    (tmp_path / "x").write_bytes(b"hello")
    assert md5sum(tmp_path / "x") == hashlib.md5(b"hello").hexdigest()
    with pytest.raises(UserError, match="cannot read"):
        md5sum(tmp_path / "missing")


# --------------------------------------------------------------------------------------------------------------
# extract_zip guards


def _evil_zip(path: Path, name: str, *, link: bool = False) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("ok/a.txt", b"fine")
        info = zipfile.ZipInfo(name)
        if link:
            info.create_system = 3
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, b"../../outside" if link else b"evil")
    assert name in zipfile.ZipFile(path).namelist()
    return path


@pytest.mark.parametrize(
    "name, link",
    [("../evil.txt", False), ("ok/../../evil.txt", False), ("/tmp/evil.txt", False), ("ok/link", True)],
)
def test_zip_slip_is_refused(tmp_path, name, link):
    zip_path = _evil_zip(tmp_path / "evil.zip", name, link=link)
    out = tmp_path / "a" / "out"
    out.parent.mkdir()
    with pytest.raises(UserError, match="unsafe member") as exc:
        extract_zip(zip_path, out, progress=False)
    _assert_one_line(exc)
    assert not out.exists() and not (tmp_path / "a" / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()
    assert list((tmp_path / "a").iterdir()) == []


def test_zip_bomb_guards(tmp_path, inner):
    zip_path = tmp_path / "inner.zip"
    zip_path.write_bytes(inner)
    out = tmp_path / "out"
    with pytest.raises(UserError, match="zip bomb") as exc:
        extract_zip(zip_path, out, max_total_bytes=100, progress=False)
    _assert_one_line(exc)
    with pytest.raises(UserError, match="zip bomb"):
        extract_zip(zip_path, out, max_members=3, progress=False)
    assert not out.exists()


def test_member_inflating_past_its_declared_size(tmp_path, inner, monkeypatch):
    zip_path = tmp_path / "inner.zip"
    zip_path.write_bytes(inner)
    # A lying member: the stream yields more than the central directory declared.
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda self, info, *a, **k: io.BytesIO(b"x" * (info.file_size + 1)))
    with pytest.raises(UserError, match="declared"):
        extract_zip(zip_path, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["inner.zip"]


def test_truncated_zip_is_damaged(tmp_path, inner):
    zip_path = tmp_path / "inner.zip"
    zip_path.write_bytes(inner[: len(inner) // 2])
    with pytest.raises(UserError, match="damaged") as exc:
        extract_zip(zip_path, tmp_path / "out", progress=False)
    assert "delete" in _assert_one_line(exc)
    assert not (tmp_path / "out").exists()


def test_corrupt_member_is_damaged(tmp_path, inner):
    data = bytearray(inner)
    jpeg = _image_members()[f"{TRAIN_DIR}/{player_image_name(1, 1, 0)}"]
    at = data.index(jpeg) + len(jpeg) // 2
    data[at] ^= 0xFF  # stored member: the CRC check at the end of the member catches it
    zip_path = tmp_path / "inner.zip"
    zip_path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="damaged"):
        extract_zip(zip_path, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_extract_zip_with_root_strips_the_folder(tmp_path, inner):
    zip_path = tmp_path / "inner.zip"
    zip_path.write_bytes(inner)
    out = extract_zip(zip_path, tmp_path / "out", root="data_reid", progress=False)
    _assert_dataset(out)
    assert sorted(p.name for p in out.iterdir()) == sorted({d.split("/")[0] for d in IMAGE_DIRS})


def test_timeout_is_a_connection_problem(tmp_path):
    # Listening but never answering: the connection is accepted by the kernel, the response never comes.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/f.bin"
        with pytest.raises(UserError, match=r"cannot reach 127\.0\.0\.1 \(timed out\)") as exc:
            download_file(url, tmp_path / "f.bin", timeout=0.2, progress=False)
    assert str(tmp_path / "f.bin") in _assert_one_line(exc)
    assert list(tmp_path.iterdir()) == []
