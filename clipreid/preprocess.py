"""Build the tables the later stages read: ``train_df.csv`` (train + test rows, with folds) and ``challenge_df.csv``.

Every path in them is relative to the data folder, so a table stays valid wherever the scripts run from:
an image of ``train_df`` is ``data_dir / folder / img_id``, an image of ``challenge_df`` is ``data_dir / img_id``.
Files that cannot be used (unreadable images, names that do not parse) are left out, listed in
``preprocess_skipped.txt`` beside the tables and counted in the summary, rather than crashing a later stage.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.model_selection import GroupKFold
from tqdm import tqdm

from clipreid.errors import UserError
from clipreid.fileio import atomic_path
from clipreid.layout import (
    CHALLENGE_GALLERY_DIR,
    CHALLENGE_QUERY_DIR,
    IMAGE_SUFFIX,
    QUERY_FRAME,
    TEST_GALLERY_DIR,
    TEST_QUERY_DIR,
    TRAIN_DIR,
    parse_challenge_name,
    parse_player_name,
)

LAYOUTS = ("synergyreid", "market1501")
IMAGE_SUFFIXES = (IMAGE_SUFFIX, ".jpg", ".png")  # compared lower-cased
TRAIN_DF = "train_df.csv"
CHALLENGE_DF = "challenge_df.csv"
SKIPPED_TXT = "preprocess_skipped.txt"
TRAIN_COLUMNS = ["img_id", "folder", "player", "game", "split", "img_type", "fold"]
CHALLENGE_COLUMNS = ["img_id", "player", "img_type"]
MARKET_DIRS = {"bounding_box_train": "train", "query": "test", "bounding_box_test": "test"}
DOWNLOAD_HINT = "run `python download_data.py` (or `python download_data.py --source synthetic`)"
MARKET_HINT = "a Market-1501 folder holds bounding_box_train/, query/ and bounding_box_test/"

# Reasons a file is left out: the text before ':' in a skip reason, with the summary's wording.
UNREADABLE, BAD_NAME, NOT_IMAGE, DUPLICATE = "unreadable image", "unrecognised name", "not an image", "duplicate id"
SKIP_WORDING = {
    UNREADABLE: "unreadable images",
    BAD_NAME: "files with unrecognised names",
    NOT_IMAGE: "files that are not .jpeg/.jpg/.png images",
    DUPLICATE: "challenge images with a duplicate id",
}

Item = tuple[str, dict]  # (path relative to data_dir, the row parsed from its name)


@dataclass
class PreprocessResult:
    """The tables, what was left out and why, and (after ``preprocess``) the files written."""

    train_df: pd.DataFrame
    challenge_df: pd.DataFrame | None
    skipped: list[tuple[str, str]]  # (path relative to data_dir, reason)
    layout: str = "synergyreid"
    notes: list[str] = field(default_factory=list)
    paths: dict[str, Path] = field(default_factory=dict)

    def summary(self) -> str:
        """A few human lines: counts per split, single-image players, what was left out and where it is listed."""
        df = self.train_df
        groups = "sequences" if self.layout == "synergyreid" else "identities"
        lines = [f"train_df: {len(df):,} images, {df.game.nunique():,} {groups}, {df.fold.nunique()} folds"]
        for split, part in df.groupby("split", sort=False):
            n_q = int((part.img_type == "q").sum())
            lines.append(
                f"  {split}: {len(part):,} images of {part.player.nunique():,} players "
                f"({n_q:,} queries, {len(part) - n_q:,} gallery)"
            )
        single = int((df.groupby(["split", "player"]).size() == 1).sum())
        lines.append(f"  players with a single image: {single:,} (kept)")
        if self.challenge_df is not None:
            n_q = int((self.challenge_df.img_type == "q").sum())
            lines.append(f"challenge_df: {n_q:,} queries, {len(self.challenge_df) - n_q:,} gallery")
        lines += self.notes
        where = f"see {self.paths['skipped']}" if "skipped" in self.paths else "listed in result.skipped"
        for reason, n in Counter(r.split(":")[0] for _, r in self.skipped).items():
            lines.append(f"left out {n:,} {SKIP_WORDING.get(reason, reason)} ({where})")
        lines += [f"wrote {p}" for key, p in self.paths.items() if key != "skipped"]
        return "\n".join(lines)


def _image_files(data_dir: Path, folder: str, hint: str, skipped: list) -> list[Path]:
    """The image files of ``data_dir / folder`` sorted by name; other files go to ``skipped``."""
    path = data_dir / folder
    if not path.is_dir():
        raise UserError(f"folder {path} not found: {hint}")
    files = []
    for p in sorted(path.iterdir()):
        if p.name.startswith(".") or not p.is_file():  # .DS_Store, ._ resource forks, sub-folders
            continue
        if p.suffix.lower() in IMAGE_SUFFIXES:
            files.append(p)
        else:
            skipped.append((f"{folder}/{p.name}", f"{NOT_IMAGE}: suffix {p.suffix or '(none)'!r}"))
    if not files:
        raise UserError(f"no .jpeg/.jpg/.png images in {path}: {hint}")
    return files


def _parse_folder(data_dir: Path, folder: str, parse: Callable[[str], dict], hint: str, skipped: list) -> list[Item]:
    """``parse`` every image name of a folder; names it rejects (ValueError) go to ``skipped``."""
    items = []
    for p in _image_files(data_dir, folder, hint, skipped):
        try:
            items.append((f"{folder}/{p.name}", parse(p.stem)))
        except ValueError as e:
            skipped.append((f"{folder}/{p.name}", f"{BAD_NAME}: {e}"))
    return items


def _image_problem(path: Path, decode: bool) -> str | None:
    """Why ``path`` is not a usable image, or None.

    ``verify()`` misses truncated JPEGs, so the image is fully decoded: about 0.2 ms for a 100x200 crop
    (0.5 ms with a cold disk cache), a few seconds for the whole DeepSportradar set.
    """
    try:
        if path.stat().st_size == 0:
            return f"{UNREADABLE}: empty file (0 bytes)"
        if decode:
            with Image.open(path) as im:
                im.load()
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... depending on the damage
        return f"{UNREADABLE}: {type(e).__name__}: {e}"
    return None


def _drop_unreadable(
    data_dir: Path, items: list[Item], check_images: bool, progress: bool, skipped: list
) -> list[Item]:
    """Keep the items whose image opens; the others go to ``skipped``."""
    kept = []
    for rel, row in tqdm(items, desc="checking images", unit="img", disable=not (progress and check_images)):
        problem = _image_problem(data_dir / rel, decode=check_images)
        if problem:
            skipped.append((rel, problem))
        else:
            kept.append((rel, row))
    return kept


def _require_kept(items: list[Item], folders: list[str], data_dir: Path) -> None:
    """Every folder must keep at least one image once the bad ones are left out."""
    kept = {rel.rsplit("/", 1)[0] for rel, _ in items}
    for folder in folders:
        if folder not in kept:
            raise UserError(f"no usable images left in {data_dir / folder}: every file there was left out")


def assign_folds(df: pd.DataFrame, n_folds: int, group_col: str = "game") -> pd.Series:
    """Fold of every row: the index of the ``GroupKFold`` split whose validation part holds it.

    Grouping keeps a whole sequence (or identity) in one fold. GroupKFold (without shuffle) places groups by
    their labels and sizes only, so the folds do not depend on the row or filesystem order.
    """
    n_groups = int(df[group_col].nunique())
    if n_folds < 2:
        raise UserError(f"n_folds must be at least 2, got {n_folds}")
    if n_groups < n_folds:
        raise UserError(
            f"there are only {n_groups} sequences ({group_col!r} groups) for n_folds={n_folds}: "
            f"lower n_folds to {n_groups} or fewer"
        )
    fold = np.empty(len(df), dtype=np.int64)
    for k, (_, val) in enumerate(GroupKFold(n_splits=n_folds).split(df, groups=df[group_col])):
        fold[val] = k
    return pd.Series(fold, index=df.index, name="fold")


def _sorted_with_folds(rows: list[dict], n_folds: int) -> pd.DataFrame:
    """Rows sorted by (train before test, folder, img_id) with their fold, index 0..n-1."""
    df = pd.DataFrame(rows)
    df["_split"] = (df.split != "train").astype(int)
    df = df.sort_values(["_split", "folder", "img_id"], kind="stable").drop(columns="_split").reset_index(drop=True)
    df["fold"] = assign_folds(df, n_folds)
    return df


def _synergy_row(stem: str) -> dict:
    player, sequence, frame = parse_player_name(stem)
    return {"player": player, "sequence": sequence, "frame": frame}


def _challenge_row(stem: str) -> dict:
    return {"player": parse_challenge_name(stem)}


def build_synergy_frames(
    data_dir: Path, n_folds: int = 10, check_images: bool = True, progress: bool = True
) -> PreprocessResult:
    """``train_df`` (reid_training + reid_test) and ``challenge_df`` (or None) for the DeepSportradar layout."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UserError(f"data folder {data_dir} not found: {DOWNLOAD_HINT}")
    skipped: list[tuple[str, str]] = []
    items = []
    for folder in (TRAIN_DIR, TEST_QUERY_DIR, TEST_GALLERY_DIR):
        items += _parse_folder(data_dir, folder, _synergy_row, DOWNLOAD_HINT, skipped)

    challenge_dirs = [d for d in (CHALLENGE_QUERY_DIR, CHALLENGE_GALLERY_DIR) if (data_dir / d).is_dir()]
    if len(challenge_dirs) == 1:
        missing = CHALLENGE_GALLERY_DIR if challenge_dirs == [CHALLENGE_QUERY_DIR] else CHALLENGE_QUERY_DIR
        raise UserError(
            f"folder {data_dir / missing} not found but {data_dir / challenge_dirs[0]} exists: {DOWNLOAD_HINT}"
        )
    challenge_items = []
    for folder in challenge_dirs:
        challenge_items += _parse_folder(data_dir, folder, _challenge_row, DOWNLOAD_HINT, skipped)

    items = _drop_unreadable(data_dir, items + challenge_items, check_images, progress, skipped)
    _require_kept(items, [TRAIN_DIR, TEST_QUERY_DIR, TEST_GALLERY_DIR, *challenge_dirs], data_dir)
    rows, challenge_rows = [], []
    for rel, row in items:
        folder, img_id = rel.rsplit("/", 1)
        if folder in challenge_dirs:
            img_type = "q" if folder == CHALLENGE_QUERY_DIR else "g"
            challenge_rows.append({"img_id": rel, "player": row["player"], "img_type": img_type})
            continue
        split = "train" if folder == TRAIN_DIR else "test"
        is_query = folder == TEST_QUERY_DIR or (folder == TRAIN_DIR and row["frame"] == QUERY_FRAME)
        rows.append(
            {
                "img_id": img_id,
                "folder": folder,
                "player": row["player"],
                "game": f"{split}_{row['sequence']}",  # sequences are numbered per split, as in CLIP-ReIdent
                "split": split,
                "img_type": "q" if is_query else "g",
            }
        )
    train_df = _sorted_with_folds(rows, n_folds)[TRAIN_COLUMNS]

    notes = []
    challenge_df = None
    if challenge_dirs:
        challenge_df = pd.DataFrame(challenge_rows, columns=CHALLENGE_COLUMNS)
        # '7.jpeg' and '007.jpeg' in one folder would give one id two rows of the submission matrix.
        dup = challenge_df.duplicated(["img_type", "player"])
        for r in challenge_df[dup].itertuples():
            skipped.append((r.img_id, f"{DUPLICATE}: another file in the same folder has the id {r.player}"))
        challenge_df = challenge_df[~dup]
        challenge_df = challenge_df.sort_values(["img_type", "player"], ascending=[False, True], kind="stable")
        challenge_df = challenge_df.reset_index(drop=True)
    else:
        notes.append("no reid_challenge/ folders: no challenge_df (fine for data without a challenge set)")
    return PreprocessResult(train_df, challenge_df, sorted(skipped), "synergyreid", notes)


# Market-1501 names are {pid}_c{camera}s{sequence}_{frame}_{box}; DukeMTMC-reID ones {pid}_c{camera}_f{frame}.
_MARKET_NAME = re.compile(r"(-?\d+)_c(\d+)(?:[s_]\w*)?")


def parse_market_name(stem: str) -> tuple[int, int]:
    """``(pid, camera)`` from a Market-1501 or DukeMTMC-reID stem; ValueError if it has another shape."""
    m = _MARKET_NAME.fullmatch(stem)
    if m is None:
        raise ValueError(f"expected '{{pid}}_c{{camera}}...' (Market-1501 / DukeMTMC-reID), got {stem!r}")
    return int(m[1]), int(m[2])


def _market_row(stem: str) -> dict:
    pid, camera = parse_market_name(stem)
    return {"player": pid, "camera": camera}


def build_market1501_frame(
    data_dir: Path, n_folds: int = 10, check_images: bool = True, progress: bool = True
) -> PreprocessResult:
    """``train_df`` (with a ``camera`` column) for a folder in the Market-1501 layout; no challenge_df.

    Market-1501's own convention (its README, torchreid, open-reid): pid -1 marks junk boxes, which the official
    evaluation ignores, so they are left out; pid 0 marks distractors, kept in the gallery as never-matching
    images and dropped elsewhere.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UserError(f"data folder {data_dir} not found: {MARKET_HINT}")
    skipped: list[tuple[str, str]] = []
    items, junk, distractors = [], 0, Counter()
    for folder in MARKET_DIRS:
        for rel, row in _parse_folder(data_dir, folder, _market_row, MARKET_HINT, skipped):
            if row["player"] == -1:
                junk += 1
            elif row["player"] == 0 and folder != "bounding_box_test":
                distractors[folder] += 1
            else:
                items.append((rel, row))
    items = _drop_unreadable(data_dir, items, check_images, progress, skipped)
    _require_kept(items, list(MARKET_DIRS), data_dir)

    rows = []
    for rel, row in items:
        folder, img_id = rel.rsplit("/", 1)
        split = MARKET_DIRS[folder]
        game = f"{split}_{row['player']}"
        img_type = "q" if folder == "query" else "g"
        rows.append({"img_id": img_id, "folder": folder, **row, "game": game, "split": split, "img_type": img_type})
    df = _sorted_with_folds(rows, n_folds)
    # One pseudo-query per (identity, camera) in train, as Market builds its query set, so fold validation can
    # use the camera-aware protocol. Rows are sorted by img_id, so the first one is the first name.
    train = df.split == "train"
    first = ~df[train].duplicated(["player", "camera"])
    df.loc[train, "img_type"] = np.where(first, "q", "g")
    train_df = df[TRAIN_COLUMNS + ["camera"]]

    notes = [f"cameras: {train_df.camera.nunique()}"]
    if junk:
        notes.append(f"left out {junk:,} junk images (pid -1, ignored by the Market-1501 evaluation)")
    n_gallery_distractors = int(((train_df.player == 0) & (train_df.folder == "bounding_box_test")).sum())
    if n_gallery_distractors:
        notes.append(f"kept {n_gallery_distractors:,} distractors (pid 0) in the gallery as never-matching images")
    for folder, n in distractors.items():
        notes.append(f"left out {n:,} distractor images (pid 0) from {folder}/")
    return PreprocessResult(train_df, None, sorted(skipped), "market1501", notes)


def preprocess(
    data_dir: Path, layout: str = "synergyreid", n_folds: int = 10, check_images: bool = True, progress: bool = True
) -> PreprocessResult:
    """Build the tables for ``layout`` and write them into ``data_dir``; return them with the paths written.

    ``train_df.csv``, ``challenge_df.csv`` and ``preprocess_skipped.txt`` are written to temporary files and
    renamed into place only once all of them are complete, so a failure leaves the older set untouched. A
    ``challenge_df.csv`` or skip list left from an earlier run is removed when this run has none.
    """
    builders = {"synergyreid": build_synergy_frames, "market1501": build_market1501_frame}
    if layout not in builders:
        raise UserError(f"unknown layout {layout!r}: choose one of {', '.join(LAYOUTS)}")
    data_dir = Path(data_dir)
    result = builders[layout](data_dir, n_folds=n_folds, check_images=check_images, progress=progress)

    paths = {"train_df": data_dir / TRAIN_DF}
    if result.challenge_df is not None:
        paths["challenge_df"] = data_dir / CHALLENGE_DF
    if result.skipped:
        paths["skipped"] = data_dir / SKIPPED_TXT
    with ExitStack() as stack:
        tmp = {key: stack.enter_context(atomic_path(p)) for key, p in paths.items()}
        result.train_df.to_csv(tmp["train_df"], index=False)
        if "challenge_df" in tmp:
            result.challenge_df.to_csv(tmp["challenge_df"], index=False)
        if "skipped" in tmp:
            lines = [f"{rel}\t{reason}" for rel, reason in result.skipped]
            header = "# files left out by preprocessing: path relative to the data folder <TAB> reason\n"
            tmp["skipped"].write_text(header + "\n".join(lines) + "\n", encoding="utf-8")
    # Tables from an earlier run that this data no longer has would point at files that are gone.
    for key, name in (("challenge_df", CHALLENGE_DF), ("skipped", SKIPPED_TXT)):
        if key not in paths:
            (data_dir / name).unlink(missing_ok=True)
    result.paths = paths
    return result
