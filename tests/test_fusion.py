"""Similarity and dissimilarity fusion: hand-worked examples and a per-query reference of the winners' script."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from clipreid.fusion import dissimilarity_fusion, dissimilarity_weights, similarity_fusion, winners_fusion

# 3 models x 2 queries x 5 gallery items, used with topk=2 (majority = 3 // 2 + 1 = 2 models).
A = np.array([[0.1, 0.2, 0.3, 0.4, 0.5], [0.1, 0.2, 0.3, 0.4, 0.5]])
B = np.array([[0.1, 0.5, 0.2, 0.4, 0.3], [0.2, 0.1, 0.5, 0.4, 0.3]])
C = np.array([[0.2, 0.1, 0.5, 0.3, 0.4], [0.5, 0.4, 0.3, 0.2, 0.1]])
# Query 0: top-2 A {0, 1}, B {0, 2}, C {0, 1}; votes 0:3, 1:2, 2:1 -> agreed {0, 1}.
#   agreement A 2, B 1, C 2 (total 5) -> shares .4 .2 .4 -> inverses 2.5 5 2.5 -> weights .25 .5 .25
#   fused = .25 A + .5 B + .25 C = [.125, .325, .3, .375, .375]
# Query 1: top-2 A {0, 1}, B {1, 0}, C {4, 3}; agreed {0, 1}.
#   agreement A 2, B 2, C 0 (total 4) -> shares .5 .5 and 0.1 for C -> inverses 2 2 10 -> weights 1/7 1/7 5/7
#   fused = (A + B + 5 C) / 7 = [2.8, 2.3, 2.3, 1.8, 1.3] / 7
EXPECTED_WEIGHTS = [[0.25, 1 / 7], [0.5, 1 / 7], [0.25, 5 / 7]]  # models x queries
EXPECTED = np.array([[0.125, 0.325, 0.3, 0.375, 0.375], np.array([2.8, 2.3, 2.3, 1.8, 1.3]) / 7])


def test_dissimilarity_fusion_worked_example_numpy_and_torch():
    np.testing.assert_allclose(dissimilarity_weights([A, B, C], topk=2).numpy(), EXPECTED_WEIGHTS)
    fused = dissimilarity_fusion([A, B, C], topk=2)
    assert isinstance(fused, np.ndarray) and fused.dtype == np.float64
    np.testing.assert_allclose(fused, EXPECTED)
    tensors = [torch.tensor(m, dtype=torch.float32) for m in (A, B, C)]
    fused_t = dissimilarity_fusion(tensors, topk=2)
    assert isinstance(fused_t, torch.Tensor) and fused_t.dtype == torch.float32
    np.testing.assert_allclose(fused_t.numpy(), EXPECTED, rtol=1e-6)


def test_dissimilarity_fusion_without_any_agreement_is_the_mean():
    # 2 models need both to agree; top-1 of X is item 0 and of Y is item 1: no agreement -> 1/M each.
    x = np.array([[0.1, 0.9, 0.5]])
    y = np.array([[0.8, 0.2, 0.5]])
    np.testing.assert_allclose(dissimilarity_fusion([x, y], topk=1), [[0.45, 0.55, 0.5]])


def test_topk_ties_go_to_the_lower_index():
    # x is all ties: its top-2 is {0, 1} (the lowest indices, as a stable sort gives); z's top-2 is {2, 3}.
    # Models x, x, z: agreed {0, 1}; agreement 2, 2, 0 -> shares .5 .5 .1 -> weights 1/7 1/7 5/7.
    # Had ties gone to the highest indices, x's top-2 would be {2, 3} like z's and every weight would be 1/3.
    x = np.zeros((1, 4))
    z = np.array([[1.0, 1.0, 0.0, 0.0]])
    np.testing.assert_allclose(dissimilarity_weights([x, x, z], topk=2).numpy()[:, 0], [1 / 7, 1 / 7, 5 / 7])


def _reference_dissim(matrices, topk):
    """Per-query port of the winners' my_py/dissim_fuse.py (our own words, same rules)."""
    num = len(matrices)
    out = np.zeros_like(matrices[0])
    for q in range(matrices[0].shape[0]):
        tops = [sorted(range(m.shape[1]), key=lambda j, m=m: m[q, j])[:topk] for m in matrices]
        votes = Counter(j for top in tops for j in top)
        agreed = {j for j, c in votes.items() if c >= num // 2 + 1}
        inter = [len(agreed & set(top)) for top in tops]
        total = sum(inter)
        shares = [1 / num if total == 0 else (i / total if i else 0.1) for i in inter]
        inverse = [1 / s for s in shares]
        for m, inv in zip(matrices, inverse, strict=True):
            out[q] += inv / sum(inverse) * m[q]
    return out


@pytest.mark.parametrize("num_models", [1, 2, 3, 4])
def test_dissimilarity_fusion_matches_a_per_query_reference(num_models):
    rng = np.random.default_rng(num_models)
    # rounded to 2 decimals so that ties happen, as they do in CSVs rounded to 5
    matrices = [np.round(rng.random((12, 40)), 2) for _ in range(num_models)]
    for topk in (1, 5, 15, 100):
        np.testing.assert_allclose(dissimilarity_fusion(matrices, topk), _reference_dissim(matrices, topk))


def test_similarity_fusion_mean_and_weights():
    x = np.array([[0.0, 1.0], [2.0, 4.0]])
    y = np.array([[1.0, 3.0], [0.0, 0.0]])
    # plain mean: [[.5, 2], [1, 2]]
    np.testing.assert_allclose(similarity_fusion([x, y]), [[0.5, 2.0], [1.0, 2.0]])
    # weights 3 and 1 -> .75 and .25: [[.25, 1.5], [1.5, 3]]
    np.testing.assert_allclose(similarity_fusion([x, y], weights=[3, 1]), [[0.25, 1.5], [1.5, 3.0]])
    fused = similarity_fusion([torch.from_numpy(x).float(), torch.from_numpy(y).float()], weights=[3, 1])
    assert isinstance(fused, torch.Tensor) and fused.dtype == torch.float32
    np.testing.assert_allclose(fused.numpy(), [[0.25, 1.5], [1.5, 3.0]])
    assert similarity_fusion([x.astype(np.float32)]).dtype == np.float32


def test_similarity_fusion_rejects_bad_input():
    x = np.zeros((2, 3))
    with pytest.raises(ValueError, match="same shape"):
        similarity_fusion([x, np.zeros((3, 2))])
    with pytest.raises(ValueError, match="2 weights for 3"):
        similarity_fusion([x, x, x], weights=[1, 1])
    with pytest.raises(ValueError, match=">= 0"):
        similarity_fusion([x, x], weights=[1, -1])
    with pytest.raises(ValueError, match="not all be 0"):
        similarity_fusion([x, x], weights=[0, 0])
    with pytest.raises(ValueError, match="at least one"):
        similarity_fusion([])
    with pytest.raises(ValueError, match="same shape"):
        dissimilarity_fusion([x, np.zeros((2, 4))])
    with pytest.raises(ValueError, match="topk"):
        dissimilarity_fusion([x], topk=0)


def test_winners_fusion_is_the_mean_of_sim_and_dissim():
    # sim = (A + B + C) / 3; the result is (sim + dissim) / 2
    sim = (A + B + C) / 3
    np.testing.assert_allclose(winners_fusion([A, B, C], topk=2), (sim + EXPECTED) / 2)
