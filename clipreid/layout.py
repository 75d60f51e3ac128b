"""Facts about the DeepSportradar player re-identification layout, shared by every stage.

After extraction the data folder (``data/data_reid`` by default) holds::

    reid_training/{player}_{sequence}_{frame}.jpeg
    reid_test/query/{player}_{sequence}_00.jpeg
    reid_test/gallery/{player}_{sequence}_{frame}.jpeg
    reid_challenge/query/{n}.jpeg        anonymous integer names
    reid_challenge/gallery/{n}.jpeg

Frame ``00`` is the first frame of a sequence: the query frame.
"""

from __future__ import annotations

DATASET_DIRNAME = "data_reid"
TRAIN_DIR = "reid_training"
TEST_QUERY_DIR = "reid_test/query"
TEST_GALLERY_DIR = "reid_test/gallery"
CHALLENGE_QUERY_DIR = "reid_challenge/query"
CHALLENGE_GALLERY_DIR = "reid_challenge/gallery"
IMAGE_DIRS = (TRAIN_DIR, TEST_QUERY_DIR, TEST_GALLERY_DIR, CHALLENGE_QUERY_DIR, CHALLENGE_GALLERY_DIR)
IMAGE_SUFFIX = ".jpeg"
QUERY_FRAME = 0


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
