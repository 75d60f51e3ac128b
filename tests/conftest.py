"""Make the repository root importable (the project runs as scripts from there, it is not installed); one torch
thread; the shared synthetic datasets."""

import os
import sys
from pathlib import Path

# One torch thread, in this process and in the scripts the tests start (they inherit the variable; torch reads it
# when imported, after this file): the tiny models of the tests on a few cores run faster without threads to
# synchronise, 10x faster when the cores are busy. A value set outside is kept.
os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


import pytest  # noqa: E402


def _make_synthetic(root: Path, train_players: int, **spec) -> Path:
    from clipreid.preprocess import preprocess
    from clipreid.synthetic import SyntheticSpec, generate_synthetic_dataset

    generate_synthetic_dataset(root, SyntheticSpec(num_train_players=train_players, seed=0, **spec), progress=False)
    preprocess(root, n_folds=10, check_images=False, progress=False)
    return root


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> Path:
    """A synthetic dataset to learn on (300 training players of 2-4 crops: many identities in few images, so that
    two short epochs clearly learn), with its DataFrames, shared by the session."""
    return _make_synthetic(tmp_path_factory.mktemp("synthetic") / "synthetic_reid", 300, frames_per_player=(2, 4))


@pytest.fixture(scope="session")
def synthetic_small(tmp_path_factory) -> Path:
    """A small synthetic dataset (48 training players, about 400 crops) for tests of mechanics, not learning."""
    return _make_synthetic(tmp_path_factory.mktemp("synthetic_small") / "synthetic_reid", 48)


@pytest.fixture(scope="session")
def synthetic_tiny(tmp_path_factory) -> Path:
    """A tiny synthetic dataset (24 training players of 2-3 crops, 8 test players: 80 crops in 11 games, so 10 folds)
    for training mechanics: an epoch of 8 pairs a step is a few steps."""
    return _make_synthetic(tmp_path_factory.mktemp("synthetic_tiny") / "synthetic_reid", 24, num_test_players=8,
                           num_challenge_players=4, players_per_sequence=3, frames_per_player=(2, 3))


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's tests (``pytestmark = pytest.mark.usefixtures("one_thread")``): tiny models
    on 2 cores run faster without a second thread to synchronise with."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
