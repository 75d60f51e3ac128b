"""The data folder's facts and its one scanner: every stage lists images the same way."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from clipreid.features import list_images
from clipreid.layout import image_files


def _image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 8)).save(path)


def test_one_scanner_leaves_hidden_files_out_and_sorts(tmp_path):
    for rel in ("b.jpg", "a.PNG", "sub/c.jpeg", "._a.jpg", ".git/x.jpg", "sub/.hidden/y.jpg"):
        _image(tmp_path / rel)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".DS_Store").write_bytes(b"\0")
    images, others = image_files(tmp_path, recursive=True)
    assert [p.relative_to(tmp_path).as_posix() for p in images] == ["a.PNG", "b.jpg", "sub/c.jpeg"]
    assert [p.name for p in others] == ["notes.txt"]
    assert [p.name for p in image_files(tmp_path, recursive=False)[0]] == ["a.PNG", "b.jpg"]
    # the folder ranking and embed(folder) list exactly these (a macOS copy's ._a.jpg is not an image)
    assert list_images(tmp_path) == images
