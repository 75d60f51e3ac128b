"""The synthetic dataset: layout, determinism, edge cases, difficulty and failure paths."""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipreid import layout, synthetic
from clipreid.errors import UserError
from clipreid.synthetic import SyntheticSpec, generate_synthetic_dataset, save_contact_sheet

# 24 test players in 4 sequences give about 150 test images: enough for stable retrieval statistics.
SPEC = SyntheticSpec(num_train_players=10, num_test_players=24, num_challenge_players=6,
                     frames_per_player=(4, 8), single_image_players=2, seed=3)
TINY = SyntheticSpec(num_train_players=4, num_test_players=3, num_challenge_players=3, players_per_sequence=3,
                     frames_per_player=(2, 3), single_image_players=1, seed=0)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, dict[str, int]]:
    root = tmp_path_factory.mktemp("synthetic") / "data_reid"
    return root, generate_synthetic_dataset(root, SPEC, progress=False)


def _players(folder: Path) -> list[tuple[int, int, int]]:
    return [layout.parse_player_name(f.stem) for f in sorted(folder.glob(f"*{layout.IMAGE_SUFFIX}"))]


def _hashes(root: Path) -> dict[str, str]:
    return {str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(root.rglob("*")) if f.is_file()}


def test_layout_and_names(dataset):
    root, counts = dataset
    for name in layout.IMAGE_DIRS:
        assert (root / name).is_dir()
        files = list((root / name).iterdir())
        assert all(f.suffix == layout.IMAGE_SUFFIX for f in files)
        assert counts[name] == len(files) > 0
    assert sum(counts.values()) == len(list(root.rglob(f"*{layout.IMAGE_SUFFIX}")))

    train = _players(root / layout.TRAIN_DIR)
    query = _players(root / layout.TEST_QUERY_DIR)
    gallery = _players(root / layout.TEST_GALLERY_DIR)
    assert {p for p, _, _ in train} == set(range(SPEC.num_train_players))
    assert all(frame == layout.QUERY_FRAME for _, _, frame in query)
    assert all(frame != layout.QUERY_FRAME for _, _, frame in gallery)
    query_players = Counter(p for p, _, _ in query)
    assert set(query_players.values()) == {1}
    assert set(query_players) == {p for p, _, _ in gallery}  # every query has a match, no gallery-only ids
    test_ids = set(query_players)
    assert test_ids == set(range(SPEC.num_train_players, SPEC.num_train_players + SPEC.num_test_players))
    # Each player lives in one sequence, and train and test sequences are different games.
    sequence_of = defaultdict(set)
    for p, s, _ in train + query + gallery:
        sequence_of[p].add(s)
    assert all(len(s) == 1 for s in sequence_of.values())
    assert not {s for p, s, _ in train} & {s for p, s, _ in query}
    # Every player has frames 00..n-1 without holes.
    frames = defaultdict(list)
    for p, _, f in train + query + gallery:
        frames[p].append(f)
    assert all(sorted(f) == list(range(len(f))) for f in frames.values())


def test_challenge_names_are_anonymous_integers(dataset):
    root, counts = dataset
    truth = json.loads((root / layout.SYNTHETIC_INFO).read_text())["challenge_players"]
    for folder in (layout.CHALLENGE_QUERY_DIR, layout.CHALLENGE_GALLERY_DIR):
        ids = sorted(layout.parse_challenge_name(f.stem) for f in (root / folder).iterdir())
        assert ids == list(range(counts[folder]))  # numbered per folder
        assert sorted(int(k) for k in truth[folder]) == ids
    query_truth = {int(k): v for k, v in truth[layout.CHALLENGE_QUERY_DIR].items()}
    gallery_truth = {int(k): v for k, v in truth[layout.CHALLENGE_GALLERY_DIR].items()}
    assert sorted(Counter(query_truth.values()).values()) == [1] * SPEC.num_challenge_players
    assert set(query_truth.values()) == set(gallery_truth.values())
    assert not set(query_truth.values()) & set(range(SPEC.num_train_players + SPEC.num_test_players))
    # Name order leaks nothing: neither folder lists its players in generation order.
    assert [query_truth[i] for i in sorted(query_truth)] != sorted(query_truth.values())
    assert [gallery_truth[i] for i in sorted(gallery_truth)] != sorted(gallery_truth.values())


def test_images_open_and_vary_in_size(dataset):
    root, _ = dataset
    sizes = []
    for file in sorted(root.rglob(f"*{layout.IMAGE_SUFFIX}")):
        with Image.open(file) as image:
            assert image.format == "JPEG" and image.mode == "RGB"
            sizes.append(image.size)
    widths = [w for w, _ in sizes]
    aspects = [h / w for w, h in sizes]
    assert len(set(sizes)) > len(sizes) // 3
    assert min(widths) < 50 and max(widths) > 100
    assert min(aspects) < 1.8 and max(aspects) > 2.5


def test_single_image_players(dataset):
    root, _ = dataset
    frames = Counter(p for p, _, _ in _players(root / layout.TRAIN_DIR))
    singles = [p for p, n in frames.items() if n == 1]
    assert len(singles) == SPEC.single_image_players
    for p in singles:
        assert list((root / layout.TRAIN_DIR).glob(f"{p:03d}_*_00{layout.IMAGE_SUFFIX}"))
    assert all(n >= SPEC.frames_per_player[0] for p, n in frames.items() if p not in singles)


def test_deterministic_for_a_seed(tmp_path):
    first = _hashes(_generated(tmp_path / "a", TINY))
    assert first == _hashes(_generated(tmp_path / "b", TINY))
    other = _hashes(_generated(tmp_path / "c", replace(TINY, seed=1)))
    shared = set(first) & set(other) - {layout.SYNTHETIC_INFO}
    assert shared and all(first[name] != other[name] for name in shared)


def _generated(root: Path, spec: SyntheticSpec) -> Path:
    generate_synthetic_dataset(root, spec, progress=False)
    return root


def _loo_rank1(features: np.ndarray, ids: np.ndarray, p: int) -> float:
    """Leave-one-out rank-1: every image queries all the others, Minkowski-p distance."""
    distance = (np.abs(features[:, None] - features[None]) ** p).sum(-1)
    np.fill_diagonal(distance, np.inf)
    return float(np.mean(ids[distance.argmin(1)] == ids))


def test_identities_learnable_but_not_by_colour_alone(dataset):
    root, _ = dataset
    files = sorted((root / "reid_test").rglob(f"*{layout.IMAGE_SUFFIX}"))
    ids = np.array([layout.parse_player_name(f.stem)[0] for f in files])
    histograms, shirts = [], []
    for file in files:
        pixels = np.asarray(Image.open(file).convert("RGB"), dtype=np.float32)
        bins = (pixels // 64).astype(int)
        hist = np.bincount((bins[..., 0] * 16 + bins[..., 1] * 4 + bins[..., 2]).ravel(), minlength=64)
        histograms.append(hist / hist.sum())
        h, w = pixels.shape[:2]
        shirts.append(pixels[h // 4: h // 2, int(w * 0.3): int(w * 0.7)].reshape(-1, 3).mean(0))
    chance = np.mean([(np.sum(ids == i) - 1) / (len(ids) - 1) for i in ids])  # about 0.04 here
    histogram_rank1 = _loo_rank1(np.array(histograms), ids, p=1)
    shirt_rank1 = _loo_rank1(np.array(shirts), ids, p=2)
    # Over seeds 0-15 of this spec: histogram rank-1 0.20-0.40 (5-11x chance), mean shirt colour 0.16-0.36.
    # A colour histogram sees the sequence, kit, skin and shoes, so it must beat chance by far (3x); but
    # teammates share kits, so neither colour cue comes near solving it (0.6 is far above what they get).
    assert histogram_rank1 > 3 * chance
    assert histogram_rank1 < 0.6
    assert shirt_rank1 < 0.6


def test_existing_folder_needs_overwrite(tmp_path):
    root = _generated(tmp_path / "data", TINY)
    before = _hashes(root)
    with pytest.raises(UserError, match="overwrite"):
        generate_synthetic_dataset(root, replace(TINY, seed=5), progress=False)
    assert _hashes(root) == before
    generate_synthetic_dataset(root, replace(TINY, seed=5), overwrite=True, progress=False)
    assert _hashes(root) != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no temporary folder left behind


def test_overwrite_refuses_a_folder_that_is_not_a_dataset(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="does not look like a dataset"):
        generate_synthetic_dataset(tmp_path, TINY, overwrite=True, progress=False)
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_empty_existing_folder_is_used(tmp_path):
    (tmp_path / "data").mkdir()
    counts = generate_synthetic_dataset(tmp_path / "data", TINY, progress=True)
    assert counts[layout.TRAIN_DIR] == len(list((tmp_path / "data" / layout.TRAIN_DIR).iterdir()))


def test_failure_leaves_no_folder(tmp_path, monkeypatch):
    render = synthetic._render_crop
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) > 3:
            raise RuntimeError("disk on fire")
        return render(*args, **kwargs)

    monkeypatch.setattr(synthetic, "_render_crop", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        generate_synthetic_dataset(tmp_path / "data", TINY, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_invalid_spec_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="frames_per_player"):
        generate_synthetic_dataset(tmp_path / "data", SyntheticSpec(frames_per_player=(1, 3)), progress=False)
    with pytest.raises(UserError, match="single_image_players"):
        generate_synthetic_dataset(tmp_path / "data", SyntheticSpec(num_train_players=2, single_image_players=3),
                                   progress=False)
    with pytest.raises(UserError, match="occlusion_prob must be a probability"):
        generate_synthetic_dataset(tmp_path / "data", SyntheticSpec(occlusion_prob=1.5), progress=False)
    with pytest.raises(UserError, match="blur_prob must be a probability"):
        generate_synthetic_dataset(tmp_path / "data", SyntheticSpec(blur_prob=-0.1), progress=False)
    assert not (tmp_path / "data").exists()


def test_contact_sheet(dataset, tmp_path):
    root, _ = dataset
    path = save_contact_sheet(root, tmp_path / "sheet.png", players=3, frames=4)
    with Image.open(path) as sheet:
        assert sheet.format == "PNG"
        width, height = sheet.size
    assert height > 3 * 128 and width > 4 * 64
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sheet.png"]
    with pytest.raises(UserError, match="no training images"):
        save_contact_sheet(tmp_path, tmp_path / "empty.png")
