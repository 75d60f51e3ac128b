"""preprocess: the train/challenge tables, their folds, the files left out, and the failures users can fix."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from clipreid.dataset import read_identities, read_train_df
from clipreid.errors import UserError
from clipreid.layout import player_image_name
from clipreid.preprocess import (
    CHALLENGE_COLUMNS,
    CHALLENGE_DF,
    REPORT_TXT,
    SKIPPED_TXT,
    TRAIN_COLUMNS,
    TRAIN_DF,
    _held_out,
    assign_folds,
    build_csv_frame,
    build_folders_frame,
    build_market1501_frame,
    build_synergy_frames,
    identity_id,
    identity_ids,
    parse_market_name,
    preprocess,
)

# Train: 5 sequences; player 9 has a single image. Test: 2 sequences of 2 players. 7 groups in all.
TRAIN_FILES = [player_image_name(p, s, f) for p in (1, 2, 3) for s in (0, 1, 2) for f in range(3)]
TRAIN_FILES += [player_image_name(p, s, f) for p in (4, 5) for s in (3, 4) for f in range(2)] + ["009_04_00.jpeg"]
TEST_QUERY = ["020_10_00.jpeg", "021_10_00.jpeg", "022_11_00.jpeg", "023_11_00.jpeg"]
TEST_GALLERY = [f"{p:03d}_{s}_{f:02d}.jpeg" for p, s in ((20, 10), (21, 10), (22, 11), (23, 11)) for f in (1, 2)]
CHALLENGE_QUERY = ["7.jpeg", "00012.jpeg"]
CHALLENGE_GALLERY = ["00003.jpeg", "15.png", "00100.JPG"]


def write_image(path: Path, seed: int = 0, size: tuple[int, int] = (12, 24), blank: bool = False) -> None:
    """A small two-colour image, or a ``blank`` one of a single colour (format from the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    colour = (seed * 37 % 256, seed * 91 % 256, seed * 53 % 256)
    fmt = "PNG" if path.suffix.lower() == ".png" else "JPEG"
    image = Image.new("RGB", size, colour)
    if not blank:
        image.paste(tuple(255 - c for c in colour), (0, 0, size[0] // 2, size[1] // 2))
    image.save(path, format=fmt)


def make_synergy(root: Path, challenge: bool = True, reverse: bool = False) -> Path:
    """A tiny DeepSportradar-layout folder; ``reverse`` creates the files in the opposite order."""
    data = root / "data_reid"
    files = [f"reid_training/{n}" for n in TRAIN_FILES]
    files += [f"reid_test/query/{n}" for n in TEST_QUERY] + [f"reid_test/gallery/{n}" for n in TEST_GALLERY]
    if challenge:
        files += [f"reid_challenge/query/{n}" for n in CHALLENGE_QUERY]
        files += [f"reid_challenge/gallery/{n}" for n in CHALLENGE_GALLERY]
    for i, rel in enumerate(reversed(files) if reverse else files):
        write_image(data / rel, seed=i)
    return data


# Market: 12 train identities over 2-3 cameras, 4 test identities, junk (-1) and distractors (0000).
MARKET_TRAIN = [
    f"{pid:04d}_c{cam}s1_{f:06d}_0{k}.jpg" for pid in range(2, 14) for cam in (1, 3) for f, k in ((10, 1), (20, 2))
]
MARKET_TRAIN += ["0002_c6s2_000030_01.jpg", "0000_c1s1_000001_00.jpg", "-1_c2s1_000002_00.jpg"]
MARKET_QUERY = ["0100_c1s1_000100_00.jpg", "0101_c2s1_000100_00.jpg", "0102_c4_f0001234.jpg", "0103_c5s1_000100_00.png"]
MARKET_GALLERY = [
    f"{pid:04d}_c{cam}s2_{f:06d}_01.jpg" for pid in (100, 101, 102, 103) for cam in (2, 3) for f in (1, 2)
]
MARKET_GALLERY += ["0000_c1s1_000500_01.jpg", "0000_c3s1_000600_02.jpg", "-1_c1s1_000700_01.jpg", "-1_c2s1_0_01.jpg"]


def make_market(root: Path) -> Path:
    data = root / "Market-1501"
    folders = {"bounding_box_train": MARKET_TRAIN, "query": MARKET_QUERY, "bounding_box_test": MARKET_GALLERY}
    for folder, names in folders.items():
        for i, name in enumerate(names):
            write_image(data / folder / name, seed=i)
    return data


def test_synergy_columns_dtypes_and_rows(tmp_path):
    result = build_synergy_frames(make_synergy(tmp_path), n_folds=3, progress=False)
    df, ch = result.train_df, result.challenge_df
    assert list(df.columns) == TRAIN_COLUMNS
    assert list(ch.columns) == CHALLENGE_COLUMNS
    for col in ("player", "fold"):
        assert pd.api.types.is_integer_dtype(df[col])
    for col in ("img_id", "folder", "game", "split", "img_type"):
        assert pd.api.types.is_string_dtype(df[col])
    assert pd.api.types.is_integer_dtype(ch.player)
    assert len(df) == len(TRAIN_FILES) + len(TEST_QUERY) + len(TEST_GALLERY)
    assert set(df.folder) == {"reid_training", "reid_test/query", "reid_test/gallery"}
    row = df.set_index("img_id").loc["002_01_02.jpeg"]
    assert (row.folder, row.player, row.game, row.split, row.img_type) == ("reid_training", 2, "train_01", "train", "g")
    assert set(df[df.split == "test"].game) == {"test_10", "test_11"}
    assert result.skipped == []
    assert df.index.tolist() == list(range(len(df)))


def test_query_gallery_rules(tmp_path):
    df = build_synergy_frames(make_synergy(tmp_path), n_folds=3, progress=False).train_df
    train = df[df.folder == "reid_training"]
    frame = train.img_id.str.split("_").str[2].str.split(".").str[0].astype(int)
    assert (train.img_type == (frame == 0).map({True: "q", False: "g"})).all()
    assert (df[df.folder == "reid_test/query"].img_type == "q").all()
    assert (df[df.folder == "reid_test/gallery"].img_type == "g").all()


def test_paths_are_relative_to_the_data_folder(tmp_path, monkeypatch):
    make_synergy(tmp_path / "project" / "data")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(tmp_path / "project")
    result = preprocess(Path("data/data_reid"), n_folds=3, progress=False)
    monkeypatch.chdir(elsewhere)  # the tables must still resolve from another cwd
    data = tmp_path / "project" / "data" / "data_reid"
    df = pd.read_csv(data / TRAIN_DF)
    ch = pd.read_csv(data / CHALLENGE_DF)
    assert all((data / f / i).is_file() for f, i in zip(df.folder, df.img_id, strict=True))
    assert all((data / i).is_file() for i in ch.img_id)
    for name in (TRAIN_DF, CHALLENGE_DF):
        text = (data / name).read_text()
        assert str(tmp_path) not in text and "data_reid" not in text and "data/" not in text
    assert result.paths == {
        "train_df": Path("data/data_reid") / TRAIN_DF,
        "challenge_df": Path("data/data_reid") / CHALLENGE_DF,
        "report": Path("data/data_reid") / REPORT_TXT,  # player 9 has a single image
    }


def test_challenge_ids_are_integers_from_any_padding(tmp_path):
    ch = build_synergy_frames(make_synergy(tmp_path), n_folds=3, progress=False).challenge_df
    assert ch.img_type.tolist() == ["q", "q", "g", "g", "g"]
    assert ch.player.tolist() == [7, 12, 3, 15, 100]
    assert ch.img_id.tolist()[:2] == ["reid_challenge/query/7.jpeg", "reid_challenge/query/00012.jpeg"]
    assert "reid_challenge/gallery/00100.JPG" in ch.img_id.tolist()


def test_folds_keep_each_sequence_whole(tmp_path):
    data = make_synergy(tmp_path)
    df = build_synergy_frames(data, n_folds=7, progress=False).train_df
    assert (df.groupby("game").fold.nunique() == 1).all()
    assert sorted(df.fold.unique()) == list(range(7))
    df3 = build_synergy_frames(data, n_folds=3, progress=False).train_df
    assert (df3.groupby("game").fold.nunique() == 1).all()
    assert sorted(df3.fold.unique()) == [0, 1, 2]


def test_assign_folds_direct():
    df = pd.DataFrame({"game": list("aabbbccdde")})
    fold = assign_folds(df, 3)
    assert (fold.groupby(df.game).nunique() == 1).all() and set(fold) == {0, 1, 2}
    with pytest.raises(UserError, match="only 5 sequences.*lower n_folds"):
        assign_folds(df, 6)


def test_assign_folds_golden():
    """GroupKFold's folds as scikit-learn 1.1 with numpy 1.23 made them (the original's), whatever the row order:
    groups numbered by sorted name, taken by size (ties in numpy 1.23's argsort order, here insertion-sorted:
    by name descending), each to the first lightest fold. tests/test_folds.py pins larger tables."""
    sizes = {"s3": 4, "s1": 4, "s2": 3, "s5": 2, "s4": 2, "s0": 1, "s6": 1}
    df = pd.DataFrame({"game": [g for g, n in sizes.items() for _ in range(n)]})
    # s3 -> 0, s1 -> 1, s2 -> 2 (loads 4 4 3), s5 -> 2 (4 4 5), s4 -> 0 (6 4 5), s6 -> 1 (6 5 5), s0 -> 1 (tie 1/2)
    expected = {"s0": 1, "s1": 1, "s2": 2, "s3": 0, "s4": 0, "s5": 2, "s6": 1}
    fold = assign_folds(df, 3)
    assert fold.name == "fold" and fold.index.equals(df.index)
    assert dict(zip(df.game, fold, strict=True)) == expected
    shuffled = df.sample(frac=1.0, random_state=3)  # any row order, any index: the same fold per group
    again = assign_folds(shuffled, 3)
    assert again.index.equals(shuffled.index)
    assert dict(zip(shuffled.game, again, strict=True)) == expected
    assert np.bincount(fold).tolist() == [6, 6, 5]


@pytest.mark.parametrize("folds", ["original", "sklearn-1.9"])
def test_synergy_folds_are_group_kfolds_over_the_raw_sequence(tmp_path, folds):
    """The original's folds: GroupKFold(10) grouped by ``<split>_<sequence as in the file name>``, golden folds
    from the real scikit-learn (1.1.3 with numpy 1.23.5, and 1.9) in tests/data/fold_goldens.json."""
    goldens = json.loads((Path(__file__).parent / "data" / "fold_goldens.json").read_text())
    shape = next(s for s in goldens["shapes"] if s["name"] == "synergy-files")
    data = tmp_path / "data_reid"
    for i, (game, size) in enumerate(zip(shape["groups"], shape["sizes"], strict=True)):
        split, sequence = game.split("_")
        for frame in range(size):
            folder = "reid_training" if split == "train" else "reid_test/" + ("query" if frame == 0 else "gallery")
            write_image(data / folder / f"{i:03d}_{sequence}_{frame:02d}.jpeg", seed=i)
    df = preprocess(data, n_folds=shape["n_folds"], folds=folds, check_images=False, progress=False).train_df
    assert sorted(df.game.unique()) == sorted(shape["groups"])  # 'train_07' and 'train_100', as in the names
    expected = dict(zip(shape["groups"], shape["folds"][folds], strict=True))
    assert (df.fold == df.game.map(expected)).all()
    assert pd.read_csv(data / TRAIN_DF).fold.tolist() == df.fold.tolist()
    with pytest.raises(UserError, match="unknown folds 'sklearn-1.1': choose one of original, sklearn-1.9"):
        preprocess(data, folds="sklearn-1.1", progress=False)


def test_too_few_sequences_for_the_folds(tmp_path):
    with pytest.raises(UserError, match=r"only 7 sequences .*n_folds=10.*lower n_folds"):
        build_synergy_frames(make_synergy(tmp_path), n_folds=10, progress=False)


def test_output_is_reproducible(tmp_path):
    a = preprocess(make_synergy(tmp_path / "a"), n_folds=3, progress=False)
    b = preprocess(make_synergy(tmp_path / "b", reverse=True), n_folds=3, progress=False)
    again = preprocess(make_synergy(tmp_path / "a"), n_folds=3, progress=False)
    for key in ("train_df", "challenge_df"):
        assert a.paths[key].read_bytes() == b.paths[key].read_bytes() == again.paths[key].read_bytes()


def test_corrupt_images_are_listed_and_left_out(tmp_path):
    data = make_synergy(tmp_path)
    good = (data / "reid_training" / "001_00_00.jpeg").read_bytes()
    (data / "reid_training" / "001_00_01.jpeg").write_bytes(b"")  # zero bytes
    (data / "reid_training" / "002_00_01.jpeg").write_bytes(good[: len(good) // 2])  # truncated
    (data / "reid_test" / "gallery" / "020_10_01.jpeg").write_text("not an image")
    (data / "reid_challenge" / "gallery" / "00003.jpeg").write_bytes(good[:-10])
    result = preprocess(data, n_folds=3, progress=False)
    bad = {
        "reid_training/001_00_01.jpeg",
        "reid_training/002_00_01.jpeg",
        "reid_test/gallery/020_10_01.jpeg",
        "reid_challenge/gallery/00003.jpeg",
    }
    assert {rel for rel, _ in result.skipped} == bad
    assert all(reason.startswith("unreadable image") for _, reason in result.skipped)
    kept = set(result.train_df.folder + "/" + result.train_df.img_id) | set(result.challenge_df.img_id)
    assert not kept & bad
    assert len(result.train_df) == len(TRAIN_FILES) + len(TEST_QUERY) + len(TEST_GALLERY) - 3
    lines = (data / SKIPPED_TXT).read_text().splitlines()
    assert {line.split("\t")[0] for line in lines if not line.startswith("#")} == bad
    assert f"left out 4 unreadable images (see {data / SKIPPED_TXT})" in result.summary()
    assert not list(data.glob(".*.tmp"))


def test_skip_check_images_still_catches_empty_files(tmp_path):
    data = make_synergy(tmp_path)
    (data / "reid_training" / "001_00_01.jpeg").write_bytes(b"")
    (data / "reid_training" / "002_00_01.jpeg").write_text("not an image")
    result = build_synergy_frames(data, n_folds=3, check_images=False, progress=False)
    assert [rel for rel, _ in result.skipped] == ["reid_training/001_00_01.jpeg"]


def test_unparseable_names_are_left_out(tmp_path):
    data = make_synergy(tmp_path)
    for name in ("foo.jpeg", "012_03.jpeg", "a_b_c.jpg", "001_00_00 (copy).png"):
        write_image(data / "reid_training" / name)
    write_image(data / "reid_challenge" / "query" / "q12.jpeg")
    (data / "reid_training" / "notes.txt").write_text("hello")
    (data / "reid_training" / ".DS_Store").write_bytes(b"\0")  # hidden files are ignored silently
    result = preprocess(data, n_folds=3, progress=False)
    reasons = dict(result.skipped)
    bad_names = ["foo.jpeg", "012_03.jpeg", "a_b_c.jpg", "001_00_00 (copy).png", "notes.txt"]
    assert set(reasons) == {f"reid_training/{n}" for n in bad_names} | {"reid_challenge/query/q12.jpeg"}
    assert reasons["reid_training/notes.txt"].startswith("not an image")
    assert reasons["reid_training/foo.jpeg"].startswith("unrecognised name")
    assert len(result.train_df) == len(TRAIN_FILES) + len(TEST_QUERY) + len(TEST_GALLERY)
    summary = result.summary()
    assert "left out 5 files with unrecognised names" in summary and "left out 1 files that are not" in summary


def test_duplicate_challenge_ids_are_left_out(tmp_path):
    data = make_synergy(tmp_path)
    write_image(data / "reid_challenge" / "query" / "007.jpeg")
    result = build_synergy_frames(data, n_folds=3, progress=False)
    assert result.challenge_df.player.tolist().count(7) == 1
    assert [rel for rel, reason in result.skipped if reason.startswith("duplicate id")] == [
        "reid_challenge/query/7.jpeg"
    ]


def test_single_image_players_are_kept(tmp_path):
    result = build_synergy_frames(make_synergy(tmp_path), n_folds=3, progress=False)
    assert (result.train_df.player == 9).sum() == 1
    assert "players with a single image: 1 (kept; listed in" in result.summary()
    assert "train\t9\treid_training/009_04_00.jpeg" in result.report_lines()


def test_no_challenge_folders_is_not_an_error(tmp_path):
    data = make_synergy(tmp_path, challenge=False)
    (data / CHALLENGE_DF).write_text("stale\n")
    result = preprocess(data, n_folds=3, progress=False)
    assert result.challenge_df is None and "challenge_df" not in result.paths
    assert "no challenge_df" in result.summary()
    assert not (data / CHALLENGE_DF).exists()  # a stale table would point at images that are gone


@pytest.mark.parametrize(
    ("action", "folder"),
    [
        ("remove", ""),
        ("remove", "reid_training"),
        ("empty", "reid_test/query"),
        ("empty", "reid_challenge/gallery"),
        ("remove", "reid_challenge/query"),
        ("zero_bytes", "reid_test/gallery"),
    ],
)
def test_missing_or_empty_folders_fail_clearly(tmp_path, action, folder):
    data = make_synergy(tmp_path)
    target = data / folder
    for p in sorted(target.rglob("*"), reverse=True):
        if action == "zero_bytes":
            p.write_bytes(b"")
        else:
            p.unlink() if p.is_file() else p.rmdir()
    if action == "remove":
        target.rmdir()
    with pytest.raises(UserError) as err:
        preprocess(data, n_folds=3, progress=False)
    message = str(err.value)
    assert str(target) in message and "\n" not in message
    if action != "zero_bytes":
        assert "download_data.py" in message
    assert not (data / TRAIN_DF).exists()


def test_unknown_layout(tmp_path):
    with pytest.raises(UserError, match="synergyreid, market1501"):
        preprocess(tmp_path, layout="duke")


def test_csvs_are_written_atomically(tmp_path, monkeypatch):
    data = make_synergy(tmp_path)
    (data / TRAIN_DF).write_text("older\n")

    def broken_to_csv(self, path, *args, **kwargs):
        Path(path).write_text("img_id,folder\npartial")
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_csv", broken_to_csv)
    with pytest.raises(OSError, match="disk full"):
        preprocess(data, n_folds=3, progress=False)
    assert (data / TRAIN_DF).read_text() == "older\n"
    assert not (data / CHALLENGE_DF).exists()
    assert not [p for p in data.iterdir() if p.name.endswith(".tmp")]
    (data / TRAIN_DF).unlink()
    with pytest.raises(OSError):
        preprocess(data, n_folds=3, progress=False)
    assert not (data / TRAIN_DF).exists()


def test_stale_skip_list_is_removed(tmp_path):
    data = make_synergy(tmp_path)
    (data / "reid_training" / "001_00_01.jpeg").write_bytes(b"")
    assert "skipped" in preprocess(data, n_folds=3, progress=False).paths
    (data / "reid_training" / "001_00_01.jpeg").unlink()
    assert "skipped" not in preprocess(data, n_folds=3, progress=False).paths
    assert not (data / SKIPPED_TXT).exists()


# ---- Market-1501 layout


def test_parse_market_name():
    assert parse_market_name("0002_c1s1_000451_03") == (2, 1)
    assert parse_market_name("-1_c3s2_000100_01") == (-1, 3)
    assert parse_market_name("0001_c2_f0046182") == (1, 2)  # DukeMTMC-reID
    for bad in ("0002c1s1_000451_03", "abc_c1", "0002_x1s1", "0002_c1s1 (copy)", "0002_c", "0002_c1x"):
        with pytest.raises(ValueError):
            parse_market_name(bad)


def test_market_layout(tmp_path):
    data = make_market(tmp_path)
    write_image(data / "query" / "IMG_0001.jpg")
    result = preprocess(data, layout="market1501", n_folds=4, progress=False)
    df = result.train_df
    assert list(df.columns) == TRAIN_COLUMNS + ["camera"]
    assert pd.api.types.is_integer_dtype(df.camera) and pd.api.types.is_integer_dtype(df.player)
    assert all(pd.api.types.is_string_dtype(df[c]) for c in ("img_id", "folder", "game", "split", "img_type"))
    assert result.challenge_df is None and not (data / CHALLENGE_DF).exists()
    assert [rel for rel, _ in result.skipped] == ["query/IMG_0001.jpg"]
    assert all((data / f / i).is_file() for f, i in zip(df.folder, df.img_id, strict=True))

    assert -1 not in set(df.player)  # junk left out everywhere
    distractors = df[df.player == 0]
    assert len(distractors) == 2 and (distractors.folder == "bounding_box_test").all()
    assert (distractors.img_type == "g").all()

    train = df[df.split == "train"]
    assert (train.folder == "bounding_box_train").all() and (df.game == "id_" + df.player.astype(str)).all()
    assert "share" not in result.summary()  # Market's train and test identities are disjoint
    assert len(train) == len(MARKET_TRAIN) - 2
    assert (train[train.img_type == "q"].groupby(["player", "camera"]).size() == 1).all()
    assert len(train[train.img_type == "q"]) == train.groupby(["player", "camera"]).ngroups == 12 * 2 + 1
    assert train.set_index("img_id").loc["0002_c1s1_000010_01.jpg", "img_type"] == "q"
    assert train.set_index("img_id").loc["0002_c1s1_000020_02.jpg", "img_type"] == "g"
    assert train.set_index("img_id").loc["0002_c6s2_000030_01.jpg", "img_type"] == "q"

    query = df[df.folder == "query"]
    assert (query.img_type == "q").all() and (query.split == "test").all() and len(query) == 4
    assert query.camera.tolist() == [1, 2, 4, 5]
    gallery = df[df.folder == "bounding_box_test"]
    assert (gallery.img_type == "g").all() and len(gallery) == len(MARKET_GALLERY) - 2
    assert (df.groupby("game").fold.nunique() == 1).all() and set(df.fold) == {0, 1, 2, 3}

    summary = result.summary()
    assert "left out 3 junk images (pid -1" in summary
    assert "kept 2 distractors (pid 0) in the gallery" in summary
    assert "left out 1 distractor images (pid 0) from bounding_box_train/" in summary


def test_market_missing_folder(tmp_path):
    data = make_market(tmp_path)
    for p in (data / "query").iterdir():
        p.unlink()
    (data / "query").rmdir()
    with pytest.raises(UserError, match=re.escape(str(data / "query"))):
        build_market1501_frame(data, n_folds=4, progress=False)


# ---- users' own data: a folder per identity, a CSV


def make_folders(root: Path, names: dict[str, int]) -> Path:
    """``root/<identity>/<k>.jpg`` with ``names[identity]`` images each."""
    for i, (name, n) in enumerate(names.items()):
        for k in range(n):
            write_image(root / name / f"{k:02d}.jpg", seed=i * 10 + k)
    return root


OWN = {f"player {c}": 3 for c in "abcdefghij"} | {"solo": 1}


def test_identity_ids_are_a_function_of_the_name():
    assert identity_ids(["0007", "12", "3"]) == {"0007": 7, "12": 12, "3": 3}  # integer names keep their value
    ids = identity_ids(["bob", "alice", "bob"])
    assert ids == {"alice": identity_id("alice"), "bob": identity_id("bob")}
    assert all(10**15 <= v < 9 * 10**15 for v in ids.values()) and ids["alice"] != ids["bob"]
    assert identity_id("alice") == 7559425216174729  # the same on every machine, python and run
    assert identity_id("١٢") != 12 and identity_id("10" * 10) >= 10**15  # only ASCII digits below 10**15 keep it
    # adding names never renumbers the others, whatever they sort before
    names = [f"player {k}" for k in range(200)]
    more = identity_ids(names + ["aaa", "0", "zzz", "player 1000"])
    assert all(more[n] == v for n, v in identity_ids(names).items())
    with pytest.raises(UserError, match="identities '007' and '7' would both be player 7"):
        identity_ids(["7", "007", "x"])  # rather than renumbering either


def test_folders_layout_holds_out_identities(tmp_path):
    data = make_folders(tmp_path / "own", OWN)
    (data / "notes.txt").write_text("top-level files are ignored")
    (data / "player a" / "readme.md").write_text("not an image")
    result = preprocess(data, layout="folders", n_folds=3, holdout=0.3, progress=False)
    df = result.train_df
    assert list(df.columns) == TRAIN_COLUMNS and result.challenge_df is None
    assert pd.api.types.is_integer_dtype(df.player) and pd.api.types.is_integer_dtype(df.fold)
    assert [rel for rel, _ in result.skipped] == ["player a/readme.md"]
    ids = read_identities(data)
    assert ids.set_index("identity").player.to_dict() == identity_ids(list(OWN)) and ids.player.is_monotonic_increasing
    assert ids.set_index("identity").images.to_dict() == OWN
    assert all((data / f / i).is_file() for f, i in zip(df.folder, df.img_id, strict=True))
    # the 2 of the 10 identities with two images or more whose seeded hash is below 0.3 (0.10 and 0.26; the next
    # is 0.36); "solo" cannot be a scored query, so it stays in train
    test, train = df[df.split == "test"], df[df.split == "train"]
    assert set(test.player) == {identity_id("player h"), identity_id("player i")}
    assert ids.player[ids.identity == "solo"].item() in set(train.player)
    assert (test.groupby("player").img_type.apply(lambda t: (t == "q").sum()) == 1).all()
    assert (test[test.img_type == "q"].img_id == "00.jpg").all()
    assert (train.groupby("player").img_type.apply(lambda t: (t == "q").sum()) == 1).all()
    assert (df.game == "id_" + df.player.astype(str)).all()
    assert (df.groupby("player").fold.nunique() == 1).all()
    assert "held out 2 of 11 identities" in result.summary() and "cameras: none" in result.summary()
    # the same files give the same tables; another seed holds out others
    again = preprocess(make_folders(tmp_path / "again", OWN), layout="folders", n_folds=3, holdout=0.3, progress=False)
    assert again.paths["train_df"].read_bytes() == result.paths["train_df"].read_bytes()
    other = preprocess(data, layout="folders", n_folds=3, holdout=0.3, split_seed=1, progress=False).train_df
    assert set(other[other.split == "test"].player) != set(test.player)


def test_holdout_is_stable_when_identities_are_added(tmp_path):
    names = {f"id{k:02d}": 2 for k in range(30)}
    added = {"aa": 2, "id05b": 3, "zz": 2, "000": 2} | {f"new{k}": 2 for k in range(12)}  # before, between, after

    def sides(result):
        df = result.train_df.merge(result.identities, on="player")
        return {(r.identity, f"{r.folder}/{r.img_id}"): (r.player, r.split) for r in df.itertuples()}

    small = sides(build_folders_frame(make_folders(tmp_path / "a", names), n_folds=3, progress=False))
    more = sides(build_folders_frame(make_folders(tmp_path / "b", names | added), n_folds=3, progress=False))
    held = {name for (name, _), (_, split) in small.items() if split == "test"}
    assert held == {"id13", "id24", "id00", "id15", "id08"}  # the hashes below 0.2, from 0.03 to 0.15
    # every image of every earlier identity keeps its player id and its side of the split
    assert {k: v for k, v in more.items() if k[0] in names} == small
    assert {name for (name, _), (_, split) in more.items() if split == "test"} > held


def test_holdout_share_on_many_identities():
    df = pd.DataFrame({"identity": [f"player {k}" for k in range(4000) for _ in range(2)]})
    for holdout, seed in ((0.2, 0), (0.2, 7), (0.05, 0), (0.5, 3)):
        share = len(_held_out(df, holdout, seed, has_cameras=False)) / 4000
        assert abs(share - holdout) < 0.025, (holdout, seed, share)  # binomial sd at most 0.008
    first = _held_out(df[:4000], 0.2, 0, has_cameras=False)  # the first 2,000 identities alone
    assert first == {n for n in _held_out(df, 0.2, 0, has_cameras=False) if int(n.split()[1]) < 2000}


def test_folders_layout_with_split_subfolders_and_nesting(tmp_path):
    data = tmp_path / "own"
    make_folders(data / "train", {"a": 2, "b": 2, "c": 2})
    make_folders(data / "query", {"d": 1, "e": 1})
    make_folders(data / "gallery", {"d": 2, "e": 2, "f": 1})
    write_image(data / "train" / "a" / "cam2" / "05.jpg")  # images in sub-folders of an identity count too
    df = build_folders_frame(data, n_folds=3, progress=False).train_df
    assert df.groupby("split").player.nunique().to_dict() == {"test": 3, "train": 3}
    assert sorted(df[df.folder.str.startswith("query/")].img_type) == ["q", "q"]
    assert (df[df.folder.str.startswith("gallery/")].img_type == "g").all()
    assert "train/a/cam2" in set(df.folder)
    (data / "query" / "d" / "00.jpg").unlink()
    (data / "query" / "e" / "00.jpg").unlink()
    with pytest.raises(UserError, match="gallery images but no query images"):
        build_folders_frame(data, n_folds=3, progress=False)


def test_folders_train_only(tmp_path):
    data = make_folders(tmp_path / "own" / "train", {"a": 2, "b": 3, "c": 2})
    result = build_folders_frame(data.parent, n_folds=3, progress=False)
    assert set(result.train_df.split) == {"train"} and "--validation fold" in result.summary()
    plain = build_folders_frame(make_folders(tmp_path / "plain", {"a": 2, "b": 3, "c": 2}), n_folds=3, holdout=0,
                                progress=False)
    assert set(plain.train_df.split) == {"train"}


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda d: d.mkdir(), "no identity folders in"),
        (lambda d: (d / "a").mkdir(parents=True), "no .jpeg/.jpg/.png images in the identity folders"),
        (lambda d: make_folders(d / "query", {"a": 1}), "has query/ but no train/ folder"),
        (lambda d: None, "not found"),
    ],
)
def test_folders_layout_errors(tmp_path, setup, message):
    data = tmp_path / "own"
    setup(data)
    with pytest.raises(UserError, match=re.escape(message)) as err:
        preprocess(data, layout="folders", n_folds=2, progress=False)
    assert "\n" not in str(err.value)
    assert not (data / TRAIN_DF).exists()


def make_csv_data(root: Path, camera: bool = False, split: bool = False) -> Path:
    """``root/imgs/*.jpg`` and ``root/labels.csv`` listing them (6 identities of 4 images)."""
    rows = []
    for p in range(6):
        for k in range(4):
            rel = f"imgs/{p}_{k}.jpg"
            write_image(root / rel, seed=p * 4 + k)
            row = {"path": rel, "id": f"P{p}"}
            if camera:
                row["camera"] = k % 2 + 1
            if split:
                row["split"] = "train" if p < 4 else ("query" if k == 0 else "gallery")
            rows.append(row)
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return root


def test_csv_layout_with_cameras_and_splits(tmp_path):
    data = make_csv_data(tmp_path / "own", camera=True, split=True)
    result = preprocess(data, layout="csv", n_folds=3, progress=False)  # labels.csv in data_dir is the default
    df = result.train_df
    assert list(df.columns) == TRAIN_COLUMNS + ["camera"] and pd.api.types.is_integer_dtype(df.camera)
    assert (df.folder == "imgs").all()
    test = df[df.split == "test"]
    assert len(test[test.img_type == "q"]) == 2 and set(test.player) == {identity_id("P4"), identity_id("P5")}
    train = df[df.split == "train"]
    assert len(train[train.img_type == "q"]) == 4 * 2  # one pseudo-query per identity and camera
    assert "cameras: 2" in result.summary()


def test_csv_paths_beside_the_csv_or_in_data_dir_and_holdout(tmp_path):
    data = make_csv_data(tmp_path / "own")
    listing = pd.read_csv(data / "labels.csv")
    listing.loc[:11, "path"] = "../own/" + listing.path[:12]  # relative to the CSV's folder
    (tmp_path / "lists").mkdir()
    listing.to_csv(tmp_path / "lists" / "mine.csv", index=False)
    df = build_csv_frame(data, tmp_path / "lists" / "mine.csv", n_folds=3, holdout=0.4, progress=False).train_df
    assert list(df.columns) == TRAIN_COLUMNS and (df.folder == "imgs").all() and len(df) == 24
    assert set(df[df.split == "test"].player) == {identity_id("P0"), identity_id("P3")}  # hashes 0.38, 0.21 < 0.4


def test_csv_layout_with_data_outside_data_dir(tmp_path):
    images = make_csv_data(tmp_path / "images")
    tables = tmp_path / "tables"
    tables.mkdir()
    df = build_csv_frame(tables, images / "labels.csv", n_folds=3, progress=False).train_df
    assert (df.folder == "../images/imgs").all()  # still relative to the data folder, never to the cwd
    assert all((tables / f / i).is_file() for f, i in zip(df.folder, df.img_id, strict=True))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.drop(columns="id"), "lacks the column 'id'"),
        (lambda t: t.drop(columns="path"), "lacks the column 'path'"),
        (lambda t: t.assign(path=t.path.where(t.index != 3, "imgs/no.jpg")), "line 5: image 'imgs/no.jpg' not found"),
        (lambda t: t.assign(camera=["1"] * 23 + ["c2"]), "line 25: camera 'c2' is not an integer"),
        (lambda t: t.assign(camera=[""] + ["1"] * 23), "line 2: camera '' is not an integer"),
        (lambda t: t.assign(split=["train"] * 20 + ["val"] * 4), "line 22, 23, 24, 25: split 'val' is not train"),
        (lambda t: t.assign(id=t.id.where(t.index != 0, "")), "line 2: empty id"),
        (lambda t: pd.concat([t, t.iloc[:1]], ignore_index=True), "line 26: path listed twice"),
        (lambda t: pd.concat([t, "./" + t.iloc[:1]], ignore_index=True), "line 26: image './imgs/0_0.jpg' is listed"),
        (lambda t: t.iloc[:0], "lists no images"),
    ],
)
def test_bad_csvs_are_one_line_errors(tmp_path, edit, message):
    data = make_csv_data(tmp_path / "own")
    edit(pd.read_csv(data / "labels.csv")).to_csv(data / "labels.csv", index=False)
    with pytest.raises(UserError, match=re.escape(message)) as err:
        preprocess(data, layout="csv", n_folds=3, progress=False)
    assert "\n" not in str(err.value) and str(data / "labels.csv") in str(err.value)
    assert not (data / TRAIN_DF).exists()


def test_missing_csv_and_bad_holdout(tmp_path):
    (tmp_path / "own").mkdir()
    with pytest.raises(UserError, match="labels.csv not found: pass --csv"):
        preprocess(tmp_path / "own", layout="csv", progress=False)
    data = make_csv_data(tmp_path / "data")
    with pytest.raises(UserError, match=r"holdout must be in \[0, 1\)"):
        preprocess(data, layout="csv", holdout=1.0, progress=False)


def test_stale_identity_map_is_removed(tmp_path):
    data = make_synergy(tmp_path)
    (data / "identities.csv").write_text("player,identity\n1,x\n")
    preprocess(data, n_folds=3, progress=False)
    assert not (data / "identities.csv").exists()


# ---- folds group whole identities; what the data holds; small datasets; tables read back as written


def test_folds_group_an_identity_across_train_query_and_gallery(tmp_path):
    data = tmp_path / "own"
    make_folders(data / "train", {"a": 2, "b": 2, "c": 2, "d": 2})
    make_folders(data / "query", {"a": 1, "e": 1})  # a is in train and in the test split
    make_folders(data / "gallery", {"a": 2, "e": 2})
    result = build_folders_frame(data, n_folds=3, progress=False)
    df = result.train_df
    assert (df.groupby("player").fold.nunique() == 1).all()  # a's train, query and gallery images: one fold
    assert df.game.nunique() == 5
    assert "train and test share 1 of 5 identities" in result.summary()
    # the same for a CSV with a split column and for a Market-1501 folder
    rows = [{"path": f"train/{n}/00.jpg", "id": n, "split": "train"} for n in "abcd"]
    rows += [{"path": f"train/{n}/01.jpg", "id": n, "split": "train"} for n in "abcd"]
    rows += [{"path": "query/a/00.jpg", "id": "a", "split": "query"}, {"path": "gallery/a/00.jpg", "id": "a",
                                                                       "split": "gallery"}]
    pd.DataFrame(rows).to_csv(data / "labels.csv", index=False)
    result = build_csv_frame(data, n_folds=3, progress=False)
    assert (result.train_df.groupby("player").fold.nunique() == 1).all()
    assert "train and test share 1 of 4 identities" in result.summary()
    market = make_market(tmp_path)
    write_image(market / "query" / "0002_c2s1_000100_00.jpg", seed=99)  # a train identity queried in the test
    result = build_market1501_frame(market, n_folds=4, progress=False)
    assert (result.train_df.groupby("player").fold.nunique() == 1).all()
    assert "train and test share 1 of" in result.summary()


def test_fewer_identities_than_folds(tmp_path):
    data = make_folders(tmp_path / "own" / "train", {"a": 2, "b": 3, "c": 1})
    result = preprocess(data.parent, layout="folders", n_folds=10, progress=False)
    assert sorted(result.train_df.fold.unique()) == [0, 1, 2]  # one identity per fold
    summary = result.summary()
    assert "folds: 3 instead of n_folds=10, as there are only 3 identities" in summary
    assert "players with a single image: 1 (kept; listed in" in summary
    report = (data.parent / REPORT_TXT).read_text()
    assert f"train\t{identity_id('c')}\ttrain/c/00.jpg" in report.splitlines()
    make_folders(tmp_path / "one", {"a": 3})
    with pytest.raises(UserError, match="the data has 1 identity: re-identification needs at least 2"):
        preprocess(tmp_path / "one", layout="folders", n_folds=10, progress=False)


def test_copies_and_blank_images_are_reported(tmp_path):
    data = make_synergy(tmp_path)
    gallery = data / "reid_test" / "gallery"
    # query 020's own copy under a gallery name, and a blank gallery crop
    (gallery / "020_10_03.jpeg").write_bytes((data / "reid_test" / "query" / "020_10_00.jpeg").read_bytes())
    write_image(gallery / "021_10_03.jpeg", seed=5, blank=True)
    ch = data / "reid_challenge"
    (ch / "gallery" / "00200.jpeg").write_bytes((ch / "query" / "7.jpeg").read_bytes())
    result = preprocess(data, n_folds=3, progress=False)
    assert result.copies == [("test split", "reid_test/query/020_10_00.jpeg", "reid_test/gallery/020_10_03.jpeg"),
                             ("challenge set", "reid_challenge/query/7.jpeg", "reid_challenge/gallery/00200.jpeg")]
    assert result.blank == ["reid_test/gallery/021_10_03.jpeg"]
    summary = result.summary()
    assert "test split: 1 of 4 queries have a byte-identical copy in the gallery" in summary
    assert "challenge set: 1 of 2 queries have a byte-identical copy in the gallery" in summary
    assert f"blank (single-colour) images: 1 (kept; listed in {data / REPORT_TXT})" in summary
    lines = (data / REPORT_TXT).read_text().splitlines()
    assert "test split\treid_test/query/020_10_00.jpeg\treid_test/gallery/020_10_03.jpeg" in lines
    assert "reid_test/gallery/021_10_03.jpeg" in lines
    # a clean data set has no report; a stale one goes
    for p in (gallery / "020_10_03.jpeg", gallery / "021_10_03.jpeg", ch / "gallery" / "00200.jpeg",
              data / "reid_training" / "009_04_00.jpeg"):
        p.unlink()
    result = preprocess(data, n_folds=3, progress=False)
    assert "report" not in result.paths and not (data / REPORT_TXT).exists()
    assert "byte-identical" not in result.summary() and "single-colour" not in result.summary()


def test_tables_read_back_as_written(tmp_path):
    """Numeric and NA-like folder names stay strings; ids stay integers; one reader for every table."""
    data = make_folders(tmp_path / "own", {"001": 2, "0042": 3, "NA": 2, "7e3": 2, "null": 2})
    preprocess(data, layout="folders", n_folds=2, holdout=0, progress=False)
    df = read_train_df(data)
    assert set(df.folder) == {"001", "0042", "NA", "7e3", "null"}
    assert all((data / f / i).is_file() for f, i in zip(df.folder, df.img_id, strict=True))
    assert df.player.dtype == np.int64 and df.fold.dtype == np.int64
    assert df.set_index("folder").player.to_dict() == identity_ids(["001", "0042", "NA", "7e3", "null"])
    ids = read_identities(data)
    assert ids.set_index("identity").images.to_dict() == {"001": 2, "0042": 3, "NA": 2, "7e3": 2, "null": 2}
    assert ids.set_index("identity").player["0042"] == 42
