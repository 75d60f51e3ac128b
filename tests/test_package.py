"""The installable package: a built wheel imports from anywhere, declares requirements.txt, exposes the API."""

from __future__ import annotations

import email
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

import clipreid

ROOT = Path(__file__).resolve().parents[1]
API = ["embed", "load_encoder", "build_encoder", "ModelSpec", "compute_scores", "k_reciprocal_features",
       "read_distance_matrix", "write_distance_matrix", "squared_distances"]
EXTRAS = {"export": "requirements-export.txt", "tensorboard": "requirements-tensorboard.txt"}


def requirements(name: str) -> list[str]:
    """The requirement lines of a requirements file, normalised by ``packaging`` (comments and blanks dropped)."""
    lines = (ROOT / name).read_text().splitlines()
    return [str(Requirement(line)) for line in lines if line.strip() and not line.lstrip().startswith("#")]


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the files a source distribution holds (the working tree stays clean)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ["pyproject.toml", "README.md", *(p.name for p in ROOT.glob("requirements*.txt"))]:
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "clipreid", src / "clipreid", ignore=shutil.ignore_patterns("__pycache__"))
    # No build isolation and no index: the test uses the setuptools already installed, offline.
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                        "--quiet", "-w", str(tmp / "dist"), str(src)], capture_output=True, text=True, timeout=300,
                       env=clean_env())
    assert r.returncode == 0, r.stderr
    (whl,) = (tmp / "dist").glob("clipreid-*.whl")
    return whl


def test_wheel_requires_exactly_the_requirements_files(wheel):
    with zipfile.ZipFile(wheel) as z:
        (name,) = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        meta = email.message_from_bytes(z.read(name))
    assert meta["Name"] == "clipreid" and meta["Version"] == clipreid.__version__
    declared = [Requirement(r) for r in meta.get_all("Requires-Dist")]
    base = [str(r) for r in declared if r.marker is None]
    assert base == requirements("requirements.txt")
    assert sorted(meta.get_all("Provides-Extra")) == sorted(EXTRAS)
    for extra, file in EXTRAS.items():
        got = [str(Requirement(f"{r.name}{r.specifier}")) for r in declared
               if r.marker is not None and r.marker.evaluate({"extra": extra})]
        assert got == requirements(file), extra
    assert "onnxscript" in {Requirement(r).name for r in requirements(EXTRAS["export"])}  # torch.onnx.export needs it


def test_dev_requirements_include_runtime_and_every_extra():
    lines = [line.strip() for line in (ROOT / "requirements-dev.txt").read_text().splitlines()]
    included = {line.split(None, 1)[1] for line in lines if line.startswith("-r ")}
    assert included == {"requirements.txt", *EXTRAS.values()}
    for name in ("requirements.txt", *EXTRAS.values()):  # setuptools' `file:` reads plain requirement lines only
        assert not [line for line in (ROOT / name).read_text().splitlines() if line.startswith("-")], name


def test_installed_wheel_imports_from_another_folder(wheel, tmp_path):
    target = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet", "--target",
                        str(target), str(wheel)], capture_output=True, text=True, timeout=300, env=clean_env())
    assert r.returncode == 0, r.stderr
    assert not list(target.glob("tests")) and (target / "clipreid" / "dataset.py").is_file()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = (
        "import sys, clipreid\n"
        "light = 'torch' not in sys.modules\n"
        f"from clipreid import {', '.join(API)}\n"
        "import numpy as np\n"
        "d = squared_distances(np.eye(2, dtype=np.float32), np.eye(2, dtype=np.float32))\n"
        "s = compute_scores(d, np.array([1, 2]), np.array([1, 2]))\n"
        "print(clipreid.__file__, light, s['mAP'])\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, capture_output=True, text=True, timeout=300,
                       env={**clean_env(), "PYTHONPATH": str(target)})
    assert r.returncode == 0, r.stderr
    file, light, mAP = r.stdout.split()
    assert Path(file).is_relative_to(target)
    assert light == "True"  # `import clipreid` alone does not import torch
    assert float(mAP) == 1.0


def test_top_level_api_is_the_modules_own():
    from clipreid import features, metrics, model, rerank, submission, weights

    assert clipreid.embed is features.embed and clipreid.squared_distances is rerank.squared_distances
    assert clipreid.load_encoder is weights.load_encoder and clipreid.build_encoder is model.build_encoder
    assert clipreid.ModelSpec is model.ModelSpec and clipreid.compute_scores is metrics.compute_scores
    assert clipreid.k_reciprocal_features is rerank.k_reciprocal_features
    assert clipreid.read_distance_matrix is submission.read_distance_matrix
    assert clipreid.write_distance_matrix is submission.write_distance_matrix
    assert set(API) <= set(clipreid.__all__) <= set(dir(clipreid))
    for name in clipreid.__all__:
        assert getattr(clipreid, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        clipreid.nope  # noqa: B018


def test_design_public_names_import_with_their_signatures():
    # ../shared/DESIGN.md section 5: names that tests and benchmarks outside the project rely on
    import inspect

    from clipreid.dataset import PairBatchSampler
    from clipreid.fusion import dissimilarity_fusion, similarity_fusion
    from clipreid.loss import info_nce
    from clipreid.metrics import compute_scores
    from clipreid.model import build_encoder, load_encoder
    from clipreid.rerank import hard_k_reciprocal, k_reciprocal
    from clipreid.submission import read_distance_matrix, write_distance_matrix
    from clipreid.weights import load_encoder as weights_load_encoder

    assert load_encoder is weights_load_encoder
    expected = {
        compute_scores: ["distmat", "query_ids", "gallery_ids", "query_cams", "gallery_cams"],
        k_reciprocal: ["q_g", "q_q", "g_g", "k1", "k2", "lambda_value"],
        hard_k_reciprocal: ["query_features", "gallery_features", "k1", "k2", "lambda_value"],
        similarity_fusion: ["matrices", "weights"],
        dissimilarity_fusion: ["matrices", "topk"],
        write_distance_matrix: ["path", "distmat", "query_ids", "gallery_ids"],
        read_distance_matrix: ["path"],
        load_encoder: ["path"],
        build_encoder: ["spec"],
        info_nce: ["anchors", "positives", "scale"],
    }
    for fn, names in expected.items():
        params = list(inspect.signature(fn).parameters)
        assert params[:len(names)] == names, fn.__name__
    assert {"seed", "world_size", "rank"} <= set(inspect.signature(PairBatchSampler).parameters)
    assert hasattr(PairBatchSampler, "global_batches")
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        from clipreid import model

        model.nope  # noqa: B018
