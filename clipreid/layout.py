"""Facts about a data folder, shared by every stage: where its images are, and the tables written beside them.

This is the one home of these names: a stage that needs a file name or a column takes it from here, never from
the stage that writes the file (``preprocess``, ``synthetic``). "Layout" means this, the data folder's shape
(``preprocess_data.py --layout``); a weights file's arrangement of tensors is its format.

After extraction the DeepSportradar data folder (``data/data_reid`` by default) holds::

    reid_training/{player}_{sequence}_{frame}.jpeg
    reid_test/query/{player}_{sequence}_00.jpeg
    reid_test/gallery/{player}_{sequence}_{frame}.jpeg
    reid_challenge/query/{n}.jpeg        anonymous integer names
    reid_challenge/gallery/{n}.jpeg

Frame ``00`` is the first frame of a sequence: the query frame. ``preprocess_data.py`` then writes the tables
``train_df.csv`` (``TRAIN_COLUMNS``: every train and test image; ``img_id`` relative to ``folder``, ``img_type``
``q``/``g`` for test queries and gallery, ``fold`` its GroupKFold fold) and ``challenge_df.csv``
(``CHALLENGE_COLUMNS``; ``img_id`` relative to the data folder). A synthetic data folder also holds
``synthetic.json``, whose ``challenge_players`` map each challenge image's integer id to its true player.
"""

from __future__ import annotations

from pathlib import Path

DATASET_DIRNAME = "data_reid"
TRAIN_DIR = "reid_training"
TEST_QUERY_DIR = "reid_test/query"
TEST_GALLERY_DIR = "reid_test/gallery"
CHALLENGE_QUERY_DIR = "reid_challenge/query"
CHALLENGE_GALLERY_DIR = "reid_challenge/gallery"
IMAGE_DIRS = (TRAIN_DIR, TEST_QUERY_DIR, TEST_GALLERY_DIR, CHALLENGE_QUERY_DIR, CHALLENGE_GALLERY_DIR)
IMAGE_SUFFIX = ".jpeg"
IMAGE_SUFFIXES = (IMAGE_SUFFIX, ".jpg", ".png")  # what any stage takes for an image, compared lower-cased
QUERY_FRAME = 0

TRAIN_DF = "train_df.csv"
CHALLENGE_DF = "challenge_df.csv"
IDENTITIES_CSV = "identities.csv"  # own data: each identity's name, its integer player id and its image count
TRAIN_COLUMNS = ["img_id", "folder", "player", "game", "split", "img_type", "fold"]
CHALLENGE_COLUMNS = ["img_id", "player", "img_type"]
QUERY, GALLERY = "q", "g"  # img_type values
SYNTHETIC_INFO = "synthetic.json"
CHALLENGE_PLAYERS = "challenge_players"  # its key: {challenge query or gallery dir: {image id: player}}


def is_hidden(path: Path, root: Path) -> bool:
    """Whether ``path`` or a folder between ``root`` and it is hidden (its name starts with "."): .DS_Store, the
    ._x.jpg resource forks of macOS copies, .git/. Never an image, for every stage."""
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def image_files(folder: Path, *, recursive: bool) -> tuple[list[Path], list[Path]]:
    """The one folder scanner: ``(images, others)``, the files in ``folder`` (and, ``recursive``, in its
    subfolders) sorted by path, hidden ones left out; images are those with a suffix of ``IMAGE_SUFFIXES``."""
    images, others = [], []
    for p in sorted(folder.rglob("*") if recursive else folder.iterdir()):
        if is_hidden(p, folder) or not p.is_file():
            continue
        (images if p.suffix.lower() in IMAGE_SUFFIXES else others).append(p)
    return images, others


def player_image_name(player: int, sequence: int, frame: int) -> str:
    """File name of a train or test crop: ``{player:03d}_{sequence:02d}_{frame:02d}.jpeg``."""
    return f"{player:03d}_{sequence:02d}_{frame:02d}{IMAGE_SUFFIX}"


def parse_player_name(stem: str) -> tuple[int, int, int]:
    """Parse ``{player}_{sequence}_{frame}`` into integers; ValueError if the stem has another shape."""
    parts = stem.split("_")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ValueError(f"expected '{{player}}_{{sequence}}_{{frame}}', got {stem!r}")
    player, sequence, frame = (int(p) for p in parts)
    return player, sequence, frame


def challenge_image_name(index: int) -> str:
    """File name of a challenge crop: the anonymous integer, zero-padded to 5 digits."""
    return f"{index:05d}{IMAGE_SUFFIX}"


def parse_challenge_name(stem: str) -> int:
    """Parse an anonymous challenge stem as an integer (padding is not relied on)."""
    if not stem.isdigit():
        raise ValueError(f"expected an integer name, got {stem!r}")
    return int(stem)
