"""Build the tables the later stages read: ``train_df.csv`` (train + test rows, with folds) and ``challenge_df.csv``.

Every path in them is relative to the data folder, so a table stays valid wherever the scripts run from:
an image of ``train_df`` is ``data_dir / folder / img_id``, an image of ``challenge_df`` is ``data_dir / img_id``.
Files that cannot be used (unreadable images, names that do not parse) are left out, listed in
``preprocess_skipped.txt`` beside the tables and counted in the summary, rather than crashing a later stage.
What the kept data holds that skews scores (queries with a byte-identical copy in their gallery, blank images,
players with a single image) is counted in the summary and listed in ``preprocess_report.txt``.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from clipreid.errors import UserError
from clipreid.fileio import atomic_path
from clipreid.folds import FOLD_ORDERS, group_kfold
from clipreid.layout import (
    CHALLENGE_COLUMNS,
    CHALLENGE_DF,
    CHALLENGE_GALLERY_DIR,
    CHALLENGE_QUERY_DIR,
    GALLERY,
    IDENTITIES_CSV,
    QUERY,
    QUERY_FRAME,
    TEST_GALLERY_DIR,
    TEST_QUERY_DIR,
    TRAIN_COLUMNS,
    TRAIN_DF,
    TRAIN_DIR,
    image_files,
    parse_challenge_name,
    parse_player_name,
)
from clipreid.progress import progress_bar

LAYOUTS = ("synergyreid", "market1501", "folders", "csv")


SKIPPED_TXT = "preprocess_skipped.txt"
REPORT_TXT = "preprocess_report.txt"  # byte-identical query/gallery copies, blank images, single-image players
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
    identities: pd.DataFrame | None = None  # own data: player id, identity name, images (identities.csv)
    blank: list[str] = field(default_factory=list)  # single-colour images, kept (relative to data_dir)
    copies: list[tuple[str, str, str]] = field(default_factory=list)  # (set, query, gallery image with its bytes)

    def single_images(self) -> pd.DataFrame:
        """Rows of the players (per split) that have a single image: kept, but never a scorable query."""
        df = self.train_df
        return df[df.groupby(["split", "player"]).player.transform("size") == 1]

    def report_lines(self) -> list[str]:
        """The lines of ``preprocess_report.txt``: what the kept data holds that can skew scores, by section."""
        lines = []
        if self.copies:
            lines.append("# queries with a byte-identical copy in the gallery: set <TAB> query <TAB> gallery copy")
            lines += [f"{name}\t{q}\t{g}" for name, q, g in self.copies]
        if self.blank:
            lines.append("# blank (single-colour) images, kept: path")
            lines += self.blank
        single = self.single_images()
        if len(single):
            lines.append("# players with a single image, kept: split <TAB> player <TAB> image")
            lines += [f"{r.split}\t{r.player}\t{_rel(r.folder, r.img_id)}" for r in single.itertuples()]
        return lines

    def summary(self) -> str:
        """A few human lines: counts per split, single-image players, what was left out and where it is listed."""
        df = self.train_df
        groups = "sequences" if self.layout == "synergyreid" else "identities"
        lines = [f"train_df: {len(df):,} images, {df.game.nunique():,} {groups}, {df.fold.nunique()} folds"]
        for split, part in df.groupby("split", sort=False):
            n_q = int((part.img_type == QUERY).sum())
            lines.append(
                f"  {split}: {len(part):,} images of {part.player.nunique():,} players "
                f"({n_q:,} queries, {len(part) - n_q:,} gallery)"
            )
        listed = f"listed in {self.paths['report']}" if "report" in self.paths else "listed in result.report_lines()"
        single = len(self.single_images())
        lines.append(f"  players with a single image: {single:,} (kept" + (f"; {listed})" if single else ")"))
        if self.challenge_df is not None:
            n_q = int((self.challenge_df.img_type == QUERY).sum())
            lines.append(f"challenge_df: {n_q:,} queries, {len(self.challenge_df) - n_q:,} gallery")
        lines += self.notes
        for name, n_queries in self.query_counts().items():
            n = sum(1 for c in self.copies if c[0] == name)
            if n:
                lines.append(f"{name}: {n:,} of {n_queries:,} queries have a byte-identical copy in the gallery "
                             f"(an easy match that inflates rank-1; {listed})")
        if self.blank:
            lines.append(f"blank (single-colour) images: {len(self.blank):,} (kept; {listed})")
        where = f"see {self.paths['skipped']}" if "skipped" in self.paths else "listed in result.skipped"
        for reason, n in Counter(r.split(":")[0] for _, r in self.skipped).items():
            lines.append(f"left out {n:,} {SKIP_WORDING.get(reason, reason)} ({where})")
        lines += [f"wrote {p}" for key, p in self.paths.items() if key not in ("skipped", "report")]
        return "\n".join(lines)

    def query_sets(self) -> dict[str, tuple[list[str], list[str]]]:
        """The query and gallery images (relative to data_dir) of the test split and the challenge set."""
        df = self.train_df[self.train_df.split == "test"]
        sets = {}
        if len(df):
            paths = [_rel(f, i) for f, i in zip(df.folder, df.img_id, strict=True)]
            is_q = (df.img_type == QUERY).to_numpy()
            sets["test split"] = ([p for p, q in zip(paths, is_q, strict=True) if q],
                                  [p for p, q in zip(paths, is_q, strict=True) if not q])
        if self.challenge_df is not None:
            ch = self.challenge_df
            sets["challenge set"] = (ch.img_id[ch.img_type == QUERY].tolist(),
                                     ch.img_id[ch.img_type == GALLERY].tolist())
        return sets

    def query_counts(self) -> dict[str, int]:
        return {name: len(q) for name, (q, _) in self.query_sets().items()}


def _rel(folder: str, img_id: str) -> str:
    """The path relative to data_dir of a train_df row."""
    return img_id if folder == "." else f"{folder}/{img_id}"


def _file_digest(path: Path) -> bytes:
    return hashlib.blake2b(path.read_bytes()).digest()


def find_copies(data_dir: Path, result: PreprocessResult) -> list[tuple[str, str, str]]:
    """(set, query, gallery image) for every query with a byte-identical file in its set's gallery (the first such
    gallery image by path): real re-id sets ship such copies, and each one is an exact match at distance 0."""
    copies = []
    for name, (queries, gallery) in result.query_sets().items():
        # a copy has its original's size: only files whose size occurs on both sides are read and hashed
        q_size = {q: (data_dir / q).stat().st_size for q in queries}
        g_size = {g: (data_dir / g).stat().st_size for g in sorted(gallery)}
        both = set(q_size.values()) & set(g_size.values())
        by_digest: dict[bytes, str] = {}
        for g, size in g_size.items():
            if size in both:
                by_digest.setdefault(_file_digest(data_dir / g), g)
        for q in queries:
            g = by_digest.get(_file_digest(data_dir / q)) if q_size[q] in both else None
            if g is not None:
                copies.append((name, q, g))
    return copies


def _image_files(data_dir: Path, folder: str, hint: str, skipped: list) -> list[Path]:
    """The image files of ``data_dir / folder`` sorted by name; other files go to ``skipped``."""
    path = data_dir / folder
    if not path.is_dir():
        raise UserError(f"folder {path} not found: {hint}")
    files, others = image_files(path, recursive=False)
    skipped += [(f"{folder}/{p.name}", f"{NOT_IMAGE}: suffix {p.suffix or '(none)'!r}") for p in others]
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


def _image_problem(path: Path, decode: bool) -> tuple[str | None, bool]:
    """Why ``path`` is not a usable image (or None), and whether it is blank: one colour all over.

    ``verify()`` misses truncated JPEGs, so the image is fully decoded: about 0.2 ms for a 100x200 crop
    (0.5 ms with a cold disk cache), a few seconds for the whole DeepSportradar set. Blank crops (real sets
    ship some) are kept and reported; without ``decode`` they are not looked for.
    """
    try:
        if path.stat().st_size == 0:
            return f"{UNREADABLE}: empty file (0 bytes)", False
        if decode:
            with Image.open(path) as im:
                im.load()
                extrema = im.getextrema()
            bands = extrema if isinstance(extrema[0], tuple) else (extrema,)
            return None, all(lo == hi for lo, hi in bands)
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... depending on the damage
        return f"{UNREADABLE}: {type(e).__name__}: {e}", False
    return None, False


def _drop_unreadable(
    data_dir: Path, items: list[Item], check_images: bool, progress: bool, skipped: list, blank: list | None = None
) -> list[Item]:
    """Keep the items whose image opens; the others go to ``skipped``, the paths of blank ones to ``blank``."""
    kept = []
    for rel, row in progress_bar(items, desc="checking images", unit="img", disable=not (progress and check_images)):
        problem, is_blank = _image_problem(data_dir / rel, decode=check_images)
        if problem:
            skipped.append((rel, problem))
        else:
            kept.append((rel, row))
            if is_blank and blank is not None:
                blank.append(rel)
    return kept


def _require_kept(items: list[Item], folders: list[str], data_dir: Path) -> None:
    """Every folder must keep at least one image once the bad ones are left out."""
    kept = {rel.rsplit("/", 1)[0] for rel, _ in items}
    for folder in folders:
        if folder not in kept:
            raise UserError(f"no usable images left in {data_dir / folder}: every file there was left out")


def assign_folds(df: pd.DataFrame, n_folds: int, group_col: str = "game", order: str = "original") -> pd.Series:
    """Fold of every row, keeping each group (sequence or identity) whole in one fold.

    ``GroupKFold(n_folds)``'s folds over ``group_col``, as the original code made them: ``order`` ``original``
    follows scikit-learn 1.1 with numpy 1.23 (the CLIP-ReIdent authors' versions), ``sklearn-1.9`` scikit-learn
    1.9 and later; they differ only in the order of equal-sized groups (see clipreid.folds). The row order and
    the installed libraries do not matter.
    """
    n_groups = int(df[group_col].nunique())
    if n_folds < 2:
        raise UserError(f"n_folds must be at least 2, got {n_folds}")
    if n_groups < n_folds:
        raise UserError(
            f"there are only {n_groups} sequences ({group_col!r} groups) for n_folds={n_folds}: "
            f"lower n_folds to {n_groups} or fewer"
        )
    groups, folds = group_kfold(df[group_col].to_numpy(), n_folds, order)
    fold_of = dict(zip(groups.tolist(), folds.tolist(), strict=True))
    return pd.Series(df[group_col].map(fold_of).to_numpy(np.int64), index=df.index, name="fold")


def _sorted_with_folds(rows: list[dict], n_folds: int, folds: str = "original") -> pd.DataFrame:
    """Rows sorted by (train before test, folder, img_id) with their fold, index 0..n-1."""
    df = pd.DataFrame(rows)
    df["_split"] = (df.split != "train").astype(int)
    df = df.sort_values(["_split", "folder", "img_id"], kind="stable").drop(columns="_split").reset_index(drop=True)
    df["fold"] = assign_folds(df, n_folds, order=folds)
    return df


def _synergy_row(stem: str) -> dict:
    player, _, frame = parse_player_name(stem)
    # The sequence as written in the name ('07'): the original groups its folds by "train_07", not "train_7".
    return {"player": player, "sequence": stem.split("_")[1], "frame": frame}


def _challenge_row(stem: str) -> dict:
    return {"player": parse_challenge_name(stem)}


def build_synergy_frames(
    data_dir: Path, n_folds: int = 10, check_images: bool = True, progress: bool = True, folds: str = "original"
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

    blank: list[str] = []
    items = _drop_unreadable(data_dir, items + challenge_items, check_images, progress, skipped, blank)
    _require_kept(items, [TRAIN_DIR, TEST_QUERY_DIR, TEST_GALLERY_DIR, *challenge_dirs], data_dir)
    rows, challenge_rows = [], []
    for rel, row in items:
        folder, img_id = rel.rsplit("/", 1)
        if folder in challenge_dirs:
            img_type = QUERY if folder == CHALLENGE_QUERY_DIR else GALLERY
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
                "img_type": QUERY if is_query else GALLERY,
            }
        )
    train_df = _sorted_with_folds(rows, n_folds, folds)[TRAIN_COLUMNS]

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
    return PreprocessResult(train_df, challenge_df, sorted(skipped), "synergyreid", notes, blank=sorted(blank))


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
    data_dir: Path, n_folds: int = 10, check_images: bool = True, progress: bool = True, folds: str = "original"
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
    blank: list[str] = []
    items = _drop_unreadable(data_dir, items, check_images, progress, skipped, blank)
    _require_kept(items, list(MARKET_DIRS), data_dir)

    rows = []
    notes: list[str] = []
    n_folds = _folds_for(len({row["player"] for _, row in items}), n_folds, notes)
    for rel, row in items:
        folder, img_id = rel.rsplit("/", 1)
        split = MARKET_DIRS[folder]
        game = identity_group(row["player"])
        img_type = QUERY if folder == "query" else GALLERY
        rows.append({"img_id": img_id, "folder": folder, **row, "game": game, "split": split, "img_type": img_type})
    df = _sorted_with_folds(rows, n_folds, folds)
    # One pseudo-query per (identity, camera) in train, as Market builds its query set, so fold validation can
    # use the camera-aware protocol. Rows are sorted by img_id, so the first one is the first name.
    train = df.split == "train"
    first = ~df[train].duplicated(["player", "camera"])
    df.loc[train, "img_type"] = np.where(first, QUERY, GALLERY)
    train_df = df[TRAIN_COLUMNS + ["camera"]]

    notes[:0] = [f"cameras: {train_df.camera.nunique()}"]
    notes += _shared_identities_note(train_df)
    if junk:
        notes.append(f"left out {junk:,} junk images (pid -1, ignored by the Market-1501 evaluation)")
    n_gallery_distractors = int(((train_df.player == 0) & (train_df.folder == "bounding_box_test")).sum())
    if n_gallery_distractors:
        notes.append(f"kept {n_gallery_distractors:,} distractors (pid 0) in the gallery as never-matching images")
    for folder, n in distractors.items():
        notes.append(f"left out {n:,} distractor images (pid 0) from {folder}/")
    return PreprocessResult(train_df, None, sorted(skipped), "market1501", notes, blank=sorted(blank))


# ---- users' own data: one folder per identity, or a CSV listing

FOLDER_SPLITS = {"train": "train", "query": "test", "gallery": "test"}  # subfolder (or CSV split) -> split
DEFAULT_CSV = "labels.csv"
FOLDERS_HINT = "a folder per identity: <data_dir>/<identity>/*.jpg, or <data_dir>/{train,query,gallery}/<identity>/"
CSV_HINT = "the CSV needs the columns path,id and optionally camera (an integer) and split (train, query or gallery)"


@dataclass
class OwnImage:
    """One image of a user's dataset before the table is built."""

    rel: str  # path relative to data_dir, posix
    identity: str
    camera: int | None = None
    role: str | None = None  # train, query, gallery, or None to split by identity


ID_HASH_BASE = 10**15  # names that are not all digits get ids from here up: above any digit name's own value


def _name_hash(name: str, seed: int | None = None) -> int:
    """A stable 64-bit number of a name (and seed): the same on every machine and python, unlike ``hash()``."""
    text = name if seed is None else f"{seed}:{name}"
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogateescape"), digest_size=8).digest(), "big")


def identity_id(name: str) -> int:
    """The integer player id of an identity name, a function of the name alone, so that adding or removing other
    identities never renumbers it: a name of digits below 10**15 keeps its value (``0042`` -> 42, the user's own
    numbers in submissions), any other name gets a number from its hash, between 10**15 and 9 * 10**15 (exact as
    a float64 too)."""
    if re.fullmatch(r"[0-9]+", name) and int(name) < ID_HASH_BASE:
        return int(name)
    return ID_HASH_BASE + _name_hash(name) % (8 * ID_HASH_BASE)


def identity_ids(names: list[str]) -> dict[str, int]:
    """:func:`identity_id` of every distinct name; UserError when two names would share an id (``7`` and ``007``,
    or, about once in 10**9 datasets of 10,000 names, a hash collision) rather than renumbering either."""
    ids: dict[str, int] = {}
    owner: dict[int, str] = {}
    for name in sorted(set(names)):
        number = identity_id(name)
        if number in owner:
            raise UserError(f"identities {owner[number]!r} and {name!r} would both be player {number}: rename one "
                            "of them (identity names map to player ids by their own value, see README)")
        ids[name], owner[number] = number, name
    return ids


def _hash_unit(name: str, seed: int) -> float:
    """The seeded hash of a name mapped to [0, 1): the same on every machine and python."""
    return _name_hash(name, seed) / 2**64


def _held_out(df: pd.DataFrame, holdout: float, seed: int, has_cameras: bool) -> set[str]:
    """Identities held out as the test split: those a query can be scored on whose seeded hash in [0, 1) falls
    below ``holdout``.

    Eligible identities have two images or more (with cameras: in two cameras or more, as the camera-aware
    protocol ignores same-camera matches). A threshold, not a count: whether an identity is held out depends on
    its own name, its images and the seed alone, so adding identities never moves the others (a count of the
    lowest hashes would push one out for each new one below it). The share held out is ``holdout`` on average.
    """
    sizes = df.groupby("identity").size()
    eligible = sizes[sizes >= 2].index
    if has_cameras:
        cams = df.groupby("identity").camera.nunique()
        eligible = [n for n in eligible if cams[n] >= 2]
    return {n for n in eligible if _hash_unit(n, seed) < holdout}


def identity_group(player: pd.Series | int) -> pd.Series | str:
    """The fold group of an identity's rows in the identity layouts (Market-1501, folders, CSV): the identity
    itself, whichever split its images are in, so that fold validation never trains on the identity it scores."""
    if isinstance(player, pd.Series):
        return "id_" + player.astype(str)
    return f"id_{player}"


def _folds_for(n_identities: int, n_folds: int, notes: list[str]) -> int:
    """The folds of an identity layout: ``n_folds``, or one identity per fold when there are fewer identities than
    that (with a note saying so); UserError below two identities, where no fold can validate anything."""
    if n_identities < 2:
        raise UserError(f"the data has {n_identities} identity: re-identification needs at least 2 (and a batch of "
                        "training pairs needs as many identities as pairs)")
    if n_identities < n_folds:
        notes.append(f"folds: {n_identities} instead of n_folds={n_folds}, as there are only {n_identities} "
                     "identities (each fold holds whole identities)")
        return n_identities
    return n_folds


def _shared_identities_note(df: pd.DataFrame) -> list[str]:
    """A note when identities have images in both the train and the test split (their fold groups are whole)."""
    train, test = set(df.player[df.split == "train"]), set(df.player[df.split == "test"])
    shared = train & test
    if not shared:
        return []
    return [f"train and test share {len(shared):,} of {len(train | test):,} identities: the test split scores "
            "identities the model trained on (each identity keeps all its images in one fold)"]


def build_own_frame(
    data_dir: Path,
    images: list[OwnImage],
    layout: str,
    n_folds: int = 10,
    holdout: float = 0.2,
    seed: int = 0,
    check_images: bool = True,
    progress: bool = True,
    skipped: list | None = None,
    notes: list | None = None,
    folds: str = "original",
) -> PreprocessResult:
    """``train_df`` of a user's images: the same columns as the other layouts, folds grouped by identity.

    Images with a ``role`` keep it (train; query and gallery form the test split); otherwise a ``holdout`` share
    of identities becomes the test split with one query per identity (its first image by path) and the rest
    gallery. In train, the first image of each identity (of each identity and camera) is the pseudo-query of
    fold validation. ``camera`` is a column only when the data has cameras.
    """
    skipped = [] if skipped is None else skipped
    notes = [] if notes is None else notes
    if not 0 <= holdout < 1:
        raise UserError(f"holdout must be in [0, 1), got {holdout}: the share of identities held out for testing")
    blank: list[str] = []
    items = _drop_unreadable(data_dir, [(im.rel, im) for im in images], check_images, progress, skipped, blank)
    if not items:
        raise UserError(f"no usable images in {data_dir}: every listed image was left out (see the skip list)")
    has_cameras = any(im.camera is not None for _, im in items)
    roles = {im.role for _, im in items}
    if roles != {None} and None in roles:
        raise UserError("either every image has a split (train, query, gallery) or none has")
    ids = identity_ids([im.identity for _, im in items])
    rows = []
    for rel, im in items:
        folder, _, img_id = rel.rpartition("/")
        row = {"img_id": img_id, "folder": folder or ".", "player": ids[im.identity], "identity": im.identity,
               "role": im.role}
        if has_cameras:
            row["camera"] = im.camera
        rows.append(row)
    df = pd.DataFrame(rows)

    if roles == {None}:
        test_names = _held_out(df, holdout, seed, has_cameras)
        df["split"] = np.where(df.identity.isin(test_names), "test", "train")
        if test_names:
            notes.append(f"held out {len(test_names):,} of {df.player.nunique():,} identities as the test split "
                         f"(holdout={holdout}, seed={seed}): one query each, the rest gallery")
        elif holdout > 0:
            notes.append(f"held out no identity: none of the {df.player.nunique():,} fell below the hash threshold "
                         f"holdout={holdout} (seed={seed}); raise --holdout or change --split-seed for a test split")
    else:
        if ("query" in roles) != ("gallery" in roles):
            have, lack = ("query", "gallery") if "query" in roles else ("gallery", "query")
            raise UserError(f"the data has {have} images but no {lack} images: give both, or neither (train only)")
        if "train" not in roles:
            raise UserError("the data has no train images: mark some as train (a train/ folder or split=train)")
        df["split"] = df.role.map(FOLDER_SPLITS)
    if (df.split == "train").sum() == 0:
        raise UserError(f"no training identities left: lower holdout (now {holdout})")
    if not (df.split == "test").any():
        notes.append("no query/gallery images: train only; validate with `train.py --validation fold`")
    df["game"] = identity_group(df.player)
    df["img_type"] = np.where(df.role == "query", QUERY, GALLERY)
    n_folds = _folds_for(df.player.nunique(), n_folds, notes)
    df = _sorted_with_folds(df.drop(columns=["role", "identity"]).to_dict("records"), n_folds, folds)
    # Rows are sorted by (folder, img_id): the first image of an identity is the one with the smallest path.
    pseudo = ["player", "camera"] if has_cameras else ["player"]
    train = df.split == "train"
    df.loc[train, "img_type"] = np.where(~df[train].duplicated(pseudo), QUERY, GALLERY)
    if roles == {None}:
        test = df.split == "test"
        df.loc[test, "img_type"] = np.where(~df[test].duplicated(["player"]), QUERY, GALLERY)
    train_df = df[TRAIN_COLUMNS + (["camera"] if has_cameras else [])]

    counts = train_df.groupby("player").size()
    names = {v: k for k, v in ids.items()}
    identities = pd.DataFrame({"player": counts.index, "identity": [names[p] for p in counts.index],
                               "images": counts.to_numpy()})
    notes.insert(0, f"identities: {len(identities):,} (player id of each name in {IDENTITIES_CSV})")
    notes.insert(1, f"cameras: {train_df.camera.nunique()}" if has_cameras
                 else "cameras: none (every gallery image counts, no same-camera rule)")
    notes += _shared_identities_note(train_df)
    return PreprocessResult(train_df, None, sorted(skipped), layout, notes, identities=identities,
                            blank=sorted(blank))


def _walk_images(data_dir: Path, folder: Path, skipped: list) -> list[str]:
    """Image paths under ``folder`` (any depth, hidden entries ignored), relative to data_dir, sorted."""
    images, others = image_files(folder, recursive=True)
    skipped += [(p.relative_to(data_dir).as_posix(), f"{NOT_IMAGE}: suffix {p.suffix or '(none)'!r}") for p in others]
    return [p.relative_to(data_dir).as_posix() for p in images]


def _subfolders(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def build_folders_frame(
    data_dir: Path, n_folds: int = 10, holdout: float = 0.2, seed: int = 0, check_images: bool = True,
    progress: bool = True, folds: str = "original",
) -> PreprocessResult:
    """``train_df`` for one folder per identity: ``data_dir/<identity>/`` (split by identity, see ``holdout``),
    or ``data_dir/train/<identity>/`` with optional ``query/<identity>/`` and ``gallery/<identity>/``."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UserError(f"data folder {data_dir} not found: {FOLDERS_HINT}")
    skipped: list[tuple[str, str]] = []
    notes: list[str] = []
    explicit = [name for name in FOLDER_SPLITS if (data_dir / name).is_dir()]
    if explicit:
        if "train" not in explicit:
            raise UserError(f"{data_dir} has {'/, '.join(explicit)}/ but no train/ folder: {FOLDERS_HINT}")
        others = [p.name for p in _subfolders(data_dir) if p.name not in FOLDER_SPLITS]
        if others:
            notes.append(f"ignored {len(others)} folders beside train/, query/, gallery/: {', '.join(others[:5])}")
        parents = [(data_dir / name, name) for name in explicit]
    else:
        parents = [(data_dir, None)]
    images, empty = [], 0
    for parent, role in parents:
        identities = _subfolders(parent)
        if not identities:
            raise UserError(f"no identity folders in {parent}: {FOLDERS_HINT}")
        for ident in identities:
            rels = _walk_images(data_dir, ident, skipped)
            empty += not rels
            images += [OwnImage(rel, ident.name, None, role) for rel in rels]
    if empty:
        notes.append(f"left out {empty:,} identity folders without images")
    if not images:
        raise UserError(f"no .jpeg/.jpg/.png images in the identity folders of {data_dir}: {FOLDERS_HINT}")
    return build_own_frame(data_dir, images, "folders", n_folds, holdout, seed, check_images, progress, skipped,
                           notes, folds=folds)


def _csv_error(csv_path: Path, rows: pd.Series, what: str) -> UserError:
    """One line naming the CSV, the first bad rows (1-based line numbers of the file, header = line 1) and why."""
    lines = [str(i + 2) for i in rows.index[:5]]
    more = f" and {len(rows) - 5:,} more" if len(rows) > 5 else ""
    return UserError(f"{csv_path}: line {', '.join(lines)}{more}: {what}")


def read_own_csv(csv_path: Path, data_dir: Path) -> list[OwnImage]:
    """The images a CSV lists, checked: columns, files that exist, integer cameras, known split values.

    A relative path is looked up beside the CSV first, then in data_dir; the table stores it relative to data_dir.
    """
    csv_path, data_dir = Path(csv_path), Path(data_dir)
    if not csv_path.is_file():
        raise UserError(f"CSV {csv_path} not found: pass --csv PATH ({CSV_HINT})")
    try:
        df = pd.read_csv(csv_path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise UserError(f"{csv_path} is not a readable CSV ({type(e).__name__}: {str(e).strip()}): {CSV_HINT}") from e
    df.columns = [c.strip().lower() for c in df.columns]
    for col in ("path", "id"):
        if col not in df.columns:
            raise UserError(f"{csv_path} lacks the column {col!r} (it has {', '.join(df.columns)}): {CSV_HINT}")
    if df.empty:
        raise UserError(f"{csv_path} lists no images: {CSV_HINT}")
    df = df.apply(lambda c: c.str.strip())
    for col in ("path", "id"):
        if (df[col] == "").any():
            raise _csv_error(csv_path, df[df[col] == ""], f"empty {col}")
    dup = df.duplicated("path")
    if dup.any():
        raise _csv_error(csv_path, df[dup], "path listed twice")
    cameras = None
    if "camera" in df.columns:
        bad = ~df.camera.str.fullmatch(r"[+-]?\d+")
        if bad.any():
            first = df.camera[bad].iloc[0]
            raise _csv_error(csv_path, df[bad], f"camera {first!r} is not an integer (leave the column out if "
                                                "there are no cameras)")
        cameras = df.camera.astype(int).tolist()
    roles = None
    if "split" in df.columns:
        lowered = df.split.str.lower()
        bad = ~lowered.isin(list(FOLDER_SPLITS))
        if bad.any():
            first = df.split[bad].iloc[0]
            raise _csv_error(csv_path, df[bad], f"split {first!r} is not train, query or gallery")
        roles = lowered.tolist()

    resolved, missing = [], []
    base = csv_path.parent
    for i, rel in zip(df.index, df.path, strict=True):
        p = Path(rel)
        candidates = [p] if p.is_absolute() else [base / p, data_dir / p]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            missing.append(i)
        resolved.append(found)
    if missing:
        first = df.path[missing[0]]
        where = "" if Path(first).is_absolute() else f" (looked in {base} and {data_dir})"
        raise _csv_error(csv_path, df.loc[missing], f"image {first!r} not found{where}")
    rels = [Path(os.path.relpath(p, data_dir)).as_posix() for p in resolved]
    dup = pd.Series(rels, index=df.index).duplicated()
    if dup.any():
        raise _csv_error(csv_path, df[dup], f"image {df.path[dup].iloc[0]!r} is listed twice (under another path)")
    return [OwnImage(rel, ident, None if cameras is None else cameras[k], None if roles is None else roles[k])
            for k, (rel, ident) in enumerate(zip(rels, df.id, strict=True))]


def build_csv_frame(
    data_dir: Path, csv_path: Path | None = None, n_folds: int = 10, holdout: float = 0.2, seed: int = 0,
    check_images: bool = True, progress: bool = True, folds: str = "original",
) -> PreprocessResult:
    """``train_df`` for the images listed by a CSV (``path,id[,camera][,split]``; default ``data_dir/labels.csv``)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UserError(f"data folder {data_dir} not found: it is where the tables are written")
    images = read_own_csv(data_dir / DEFAULT_CSV if csv_path is None else Path(csv_path), data_dir)
    return build_own_frame(data_dir, images, "csv", n_folds, holdout, seed, check_images, progress, folds=folds)


def preprocess(
    data_dir: Path,
    layout: str = "synergyreid",
    n_folds: int = 10,
    check_images: bool = True,
    progress: bool = True,
    csv: Path | None = None,
    holdout: float = 0.2,
    split_seed: int = 0,
    folds: str = "original",  # whose GroupKFold folds: original or sklearn-1.9 (see assign_folds)
) -> PreprocessResult:
    """Build the tables for ``layout`` and write them into ``data_dir``; return them with the paths written.

    ``csv`` (layout csv), ``holdout`` and ``split_seed`` (layouts folders and csv) describe users' own data.
    ``train_df.csv``, ``challenge_df.csv``, ``identities.csv``, ``preprocess_skipped.txt`` and
    ``preprocess_report.txt`` are written to temporary files and renamed into place only once all of them are
    complete, so a failure leaves the older set untouched. A ``challenge_df.csv``, identity map, skip list or
    report left from an earlier run is removed when this run has none.
    """
    if layout not in LAYOUTS:
        raise UserError(f"unknown layout {layout!r}: choose one of {', '.join(LAYOUTS)}")
    if folds not in FOLD_ORDERS:
        raise UserError(f"unknown folds {folds!r}: choose one of {', '.join(FOLD_ORDERS)}")
    data_dir = Path(data_dir)
    common = dict(n_folds=n_folds, check_images=check_images, progress=progress, folds=folds)
    if layout == "synergyreid":
        result = build_synergy_frames(data_dir, **common)
    elif layout == "market1501":
        result = build_market1501_frame(data_dir, **common)
    elif layout == "folders":
        result = build_folders_frame(data_dir, holdout=holdout, seed=split_seed, **common)
    else:
        result = build_csv_frame(data_dir, csv, holdout=holdout, seed=split_seed, **common)

    result.copies = find_copies(data_dir, result)
    paths = {"train_df": data_dir / TRAIN_DF}
    if result.challenge_df is not None:
        paths["challenge_df"] = data_dir / CHALLENGE_DF
    if result.identities is not None:
        paths["identities"] = data_dir / IDENTITIES_CSV
    if result.skipped:
        paths["skipped"] = data_dir / SKIPPED_TXT
    report = result.report_lines()
    if report:
        paths["report"] = data_dir / REPORT_TXT
    with ExitStack() as stack:
        tmp = {key: stack.enter_context(atomic_path(p)) for key, p in paths.items()}
        result.train_df.to_csv(tmp["train_df"], index=False)
        if "challenge_df" in tmp:
            result.challenge_df.to_csv(tmp["challenge_df"], index=False)
        if "identities" in tmp:
            result.identities.to_csv(tmp["identities"], index=False)
        if "skipped" in tmp:
            lines = [f"{rel}\t{reason}" for rel, reason in result.skipped]
            header = "# files left out by preprocessing: path relative to the data folder <TAB> reason\n"
            tmp["skipped"].write_text(header + "\n".join(lines) + "\n", encoding="utf-8")
        if "report" in tmp:
            header = "# what the kept data holds, by section; paths relative to the data folder\n"
            tmp["report"].write_text(header + "\n".join(report) + "\n", encoding="utf-8", errors="surrogateescape")
    # Tables from an earlier run that this data no longer has would point at files that are gone.
    for key, name in (("challenge_df", CHALLENGE_DF), ("identities", IDENTITIES_CSV), ("skipped", SKIPPED_TXT),
                      ("report", REPORT_TXT)):
        if key not in paths:
            (data_dir / name).unlink(missing_ok=True)
    result.paths = paths
    return result
