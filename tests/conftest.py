"""Make the repository root importable (the project runs as scripts from there, it is not installed)."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


import pytest  # noqa: E402


def _make_synthetic(root: Path, train_players: int) -> Path:
    from clipreid.preprocess import preprocess
    from clipreid.synthetic import SyntheticSpec, generate_synthetic_dataset

    generate_synthetic_dataset(root, SyntheticSpec(num_train_players=train_players, seed=0), progress=False)
    preprocess(root, n_folds=10, check_images=False, progress=False)
    return root


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> Path:
    """The demo's synthetic dataset (200 training players) with its DataFrames (about 5 s), shared by the session."""
    return _make_synthetic(tmp_path_factory.mktemp("synthetic") / "synthetic_reid", 200)


@pytest.fixture(scope="session")
def synthetic_small(tmp_path_factory) -> Path:
    """A small synthetic dataset (48 training players, about 400 crops) for tests of mechanics, not learning."""
    return _make_synthetic(tmp_path_factory.mktemp("synthetic_small") / "synthetic_reid", 48)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's tests (``pytestmark = pytest.mark.usefixtures("one_thread")``): tiny models
    on 2 cores run faster without a second thread to synchronise with."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
