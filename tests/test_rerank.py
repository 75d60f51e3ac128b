"""Re-ranking checked against straightforward numpy loops written from the papers' steps."""

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score
from test_metrics import NoFloat64  # tests/ is on sys.path under pytest (no __init__.py)

from clipreid.rerank import hard_k_reciprocal, k_reciprocal, k_reciprocal_features, squared_distances

# --------------------------------------------------------------------------------------------------------------
# references


def sq_dist(a, b):
    return ((a[:, None, :].astype(np.float64) - b[None, :, :]) ** 2).sum(-1)


def zhong_reference(q_g, q_q, g_g, k1, k2, lambda_value):
    """The distance-matrix re-ranking as published (dense, loops), returning (jaccard, original) query rows."""
    q = len(q_g)
    full = np.concatenate([np.concatenate([q_q, q_g], 1), np.concatenate([q_g.T, g_g], 1)], 0)
    full = np.power(full, 2).astype(np.float32)
    dist = (full / full.max(axis=0)).T  # each column divided by its maximum, then transposed
    n = len(dist)
    rank = np.argsort(dist, axis=1, kind="stable")  # equal values: the lower index first

    def reciprocal(i, k):
        return [j for j in rank[i, :k + 1] if i in rank[j, :k + 1]]

    half = int(np.around(k1 / 2))
    r_full = [reciprocal(i, k1) for i in range(n)]
    r_half = [reciprocal(i, half) for i in range(n)]
    v = np.zeros((n, n), np.float32)
    for i in range(n):
        expanded = list(r_full[i])
        for c in r_full[i]:
            if len(np.intersect1d(r_half[c], r_full[i])) > 2 / 3 * len(r_half[c]):
                expanded += r_half[c]
        expanded = np.unique(np.array(expanded, dtype=int))
        weight = np.exp(-dist[i, expanded])
        v[i, expanded] = weight / weight.sum()
    if k2 != 1:
        v = np.stack([v[rank[i, :k2]].mean(0) for i in range(n)])
    jaccard = np.zeros((q, n), np.float32)
    for i in range(q):
        s = np.minimum(v[i][None, :], v).sum(1)
        jaccard[i] = 1 - s / (2 - s)
    return jaccard[:, q:], dist[:q, q:]


def zhong(q_g, q_q, g_g, k1, k2, lambda_value):
    jaccard, original = zhong_reference(q_g, q_q, g_g, k1, k2, lambda_value)
    return (1 - lambda_value) * jaccard + lambda_value * original


def hard_reference(qf, gf, k1, k2, lambda_value):
    """The 2023 winners' hard-weight variant as a plain double loop (see hard_k_reciprocal's docstring)."""
    m, n = len(qf), len(gf)
    d = sq_dist(np.concatenate([qf, gf]), np.concatenate([qf, gf]))
    near_all = np.argsort(d, axis=1)[:, :k1]
    near_gal = np.argsort(d[m:, m:], axis=1)[:, :k1]

    def gallery_reciprocal(g, k):
        return [h for h in near_gal[g, :k] if g in near_gal[h, :k]]

    r_p = [[x - m for x in near_all[p] if x >= m and p in near_all[x]] for p in range(m)]
    r_g = [gallery_reciprocal(g, k1) for g in range(n)]
    half = [gallery_reciprocal(g, k1 // 2) for g in range(n)]

    def expand(base, candidates):
        out = set(base)
        for c in candidates:
            if len(set(half[c]) & set(candidates)) >= len(half[c]) * (2 / 3):
                out |= set(half[c])
        return out

    v_q, v_g = np.zeros((m, n)), np.zeros((n, n))
    for p in range(m):
        v_q[p, list(expand(r_p[p], r_p[p]))] = 1
    for g in range(n):
        v_g[g, list(expand(r_g[g], [h for h in r_g[g] if h != g]))] = 1

    def mean(rows):  # no neighbours (a lone gallery item): an empty vector
        return np.mean(rows, 0) if rows else np.zeros(n)

    e_q = np.stack([mean([v_q[x] if x < m else v_g[x - m] for x in near_all[p, :k2]]) for p in range(m)])
    e_g = np.stack([mean([v_g[h] for h in near_gal[g, 1:k2 + 1]]) for g in range(n)])
    jaccard = np.ones((m, n))
    for p in range(m):
        for g in range(n):
            union = np.maximum(e_q[p], e_g[g]).sum()
            if union > 0:
                jaccard[p, g] = 1 - np.minimum(e_q[p], e_g[g]).sum() / union
    d_qg = d[:m, m:]
    return (1 - lambda_value) * d_qg / np.linalg.norm(d_qg, axis=1, keepdims=True) + lambda_value * jaccard


def clustered(num_query, num_gallery, clusters=20, dim=16, noise=0.6, seed=0):
    """L2-normalised features around ``clusters`` centres: queries cycle through the ids, gallery is random."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    q_ids = np.arange(num_query) % clusters
    g_ids = rng.integers(clusters, size=num_gallery)
    feats = centres[np.concatenate([q_ids, g_ids])] + noise * rng.normal(size=(num_query + num_gallery, dim))
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    feats = feats.astype(np.float32)
    return feats[:num_query], feats[num_query:], q_ids, g_ids


def matrices(qf, gf):
    return tuple(sq_dist(a, b).astype(np.float32) for a, b in ((qf, gf), (qf, qf), (gf, gf)))


def mean_ap(dist, q_ids, g_ids):
    return np.mean([average_precision_score(g_ids == q, -row) for q, row in zip(q_ids, dist, strict=True)])


# --------------------------------------------------------------------------------------------------------------
# Zhong et al.


@pytest.mark.parametrize("k2", [1, 3, 6])
@pytest.mark.parametrize("k1", [5, 10, 20])
@pytest.mark.parametrize("num_query,num_gallery,clusters", [(5, 40, 10), (20, 150, 20), (50, 300, 30)])
def test_k_reciprocal_matches_reference(num_query, num_gallery, clusters, k1, k2):
    qf, gf, _, _ = clustered(num_query, num_gallery, clusters, seed=k1 * 10 + k2)
    q_g, q_q, g_g = matrices(qf, gf)
    jaccard, original = zhong_reference(q_g, q_q, g_g, k1, k2, 0.3)
    for lam in (0.0, 0.3, 1.0):
        ours = k_reciprocal(q_g, q_q, g_g, k1=k1, k2=k2, lambda_value=lam)
        assert isinstance(ours, np.ndarray) and ours.shape == (num_query, num_gallery)
        np.testing.assert_allclose(ours, (1 - lam) * jaccard + lam * original, rtol=0, atol=1e-5)


def test_numpy_and_torch_inputs_agree():
    qf, gf, _, _ = clustered(12, 90, 15, seed=1)
    q_g, q_q, g_g = matrices(qf, gf)
    from_numpy = k_reciprocal(q_g, q_q, g_g)
    from_torch = k_reciprocal(torch.from_numpy(q_g), torch.from_numpy(q_q), torch.from_numpy(g_g))
    assert from_numpy.dtype == np.float32
    assert isinstance(from_torch, torch.Tensor) and from_torch.dtype == torch.float32
    np.testing.assert_allclose(from_torch.numpy(), from_numpy, atol=1e-6)
    double = k_reciprocal(q_g.astype(np.float64), q_q.astype(np.float64), g_g.astype(np.float64))
    assert double.dtype == np.float64
    np.testing.assert_allclose(double, from_numpy, atol=1e-5)
    np.testing.assert_allclose(from_numpy, zhong(q_g, q_q, g_g, 20, 6, 0.3), atol=1e-5)


def test_non_symmetric_matrices_follow_the_reference():
    # the reference normalises columns and transposes; with asymmetric q_q / g_g the orientation matters
    rng = np.random.default_rng(3)
    q_g = rng.random((6, 30)).astype(np.float32)
    q_q = rng.random((6, 6)).astype(np.float32)
    g_g = rng.random((30, 30)).astype(np.float32)
    np.fill_diagonal(q_q, 0)
    np.fill_diagonal(g_g, 0)
    np.testing.assert_allclose(k_reciprocal(q_g, q_q, g_g, k1=5, k2=3), zhong(q_g, q_q, g_g, 5, 3, 0.3), atol=1e-5)


@pytest.mark.parametrize("k1,k2", [(5, 3), (20, 6), (4, 2)])
def test_tied_distances_pick_neighbours_as_the_reference(k1, k2):
    # distances on a coarse grid tie across every set boundary (forward k1 + 1, half, k2): the neighbour sets are
    # the reference's, whose argsort takes the lower index first among equal values
    rng = np.random.default_rng(k1)
    n_q, n_g = 8, 60
    full = (np.round(rng.random((n_q + n_g, n_q + n_g)) * 5) + 1) / 6  # 6 levels, self (0) still nearest
    full = np.triu(full, 1) + np.triu(full, 1).T
    q_g, q_q, g_g = (full[:n_q, n_q:].astype(np.float32), full[:n_q, :n_q].astype(np.float32),
                     full[n_q:, n_q:].astype(np.float32))
    np.testing.assert_allclose(k_reciprocal(q_g, q_q, g_g, k1=k1, k2=k2), zhong(q_g, q_q, g_g, k1, k2, 0.3),
                               atol=1e-5)


def test_duplicate_images_rank_as_the_reference():
    # byte-identical copies (distance 0 to each other and to themselves): the reference's tie order, both entries
    qf, gf, _, _ = clustered(10, 60, 10, seed=5)
    gf = np.concatenate([qf[:6], gf[:30], gf[:30]])  # queries copied into the gallery, the gallery twice
    q_g, q_q, g_g = matrices(qf, gf)
    ref = zhong(q_g, q_q, g_g, 20, 6, 0.3)
    np.testing.assert_allclose(k_reciprocal(q_g, q_q, g_g), ref, atol=1e-5)


def test_every_way_of_finding_neighbours_gives_the_same_numbers(monkeypatch):
    # the CPU reads the gallery's rows of the full matrix in place as columns of q_g and g_g, or copies them
    # transposed (g_g not in rows), or takes the general way (torch.topk; negative distances, a GPU): one result
    import clipreid.nearest as nearest
    import clipreid.rerank as rerank

    for name, value in (("GROUP", 4), ("CHUNK_COLUMNS", 7), ("ROWS", 12), ("KEYS", 9), ("BLOCK_ELEMENTS", 500)):
        monkeypatch.setattr(nearest, name, value)
    qf, gf, _, _ = clustered(12, 90, 8, seed=9)
    gf = np.concatenate([gf, gf[:20], qf[:3]])  # copies tie across the neighbour sets' boundaries
    q_g, q_q, g_g = (torch.from_numpy(m) for m in matrices(qf, gf))
    calls = []
    monkeypatch.setattr(rerank, "smallest_in_columns", lambda *a: calls.append(1) or nearest.smallest_in_columns(*a))
    in_place = k_reciprocal(q_g, q_q, g_g)
    assert calls  # the columns were read in place
    transposed = k_reciprocal(q_g, q_q, g_g.T.contiguous().T)  # the same values, laid out by column
    assert len(calls) == 1
    torch.testing.assert_close(in_place, transposed, rtol=0, atol=0)
    monkeypatch.setattr(rerank, "smallest_in_rows", lambda *a: None)
    monkeypatch.setattr(rerank, "smallest_in_columns", lambda *a: None)
    torch.testing.assert_close(k_reciprocal(q_g, q_q, g_g), in_place, rtol=0, atol=1e-6)
    torch.testing.assert_close(in_place, torch.from_numpy(zhong(*(m.numpy() for m in (q_g, q_q, g_g)), 20, 6, 0.3)),
                               rtol=0, atol=1e-5)


def test_negative_distances_are_squared_before_ranking():
    # neighbours come from the raw distances only where squaring keeps their order (all non-negative)
    qf, gf, _, _ = clustered(10, 80, 10, seed=4)
    q_g, q_q, g_g = (m - 0.5 for m in matrices(qf, gf))
    assert (g_g < 0).any() and (g_g > 0.6).any()
    np.testing.assert_allclose(k_reciprocal(q_g, q_q, g_g, k1=6, k2=3), zhong(q_g, q_q, g_g, 6, 3, 0.3), atol=1e-5)


@pytest.mark.parametrize("k1,k2", [(20, 6), (7, 1)])
def test_features_entry_matches_matrix_api(k1, k2):
    qf, gf, _, _ = clustered(30, 200, 25, seed=2)
    mats = [squared_distances(a, b) for a, b in ((qf, gf), (qf, qf), (gf, gf))]
    from_matrices = k_reciprocal(*mats, k1=k1, k2=k2)
    from_features = k_reciprocal_features(qf, gf, k1=k1, k2=k2)
    assert isinstance(from_features, np.ndarray) and from_features.dtype == np.float32
    np.testing.assert_allclose(from_features, from_matrices, atol=1e-5)
    np.testing.assert_allclose(from_features, zhong(*matrices(qf, gf), k1, k2, 0.3), atol=1e-5)
    from_torch = k_reciprocal_features(torch.from_numpy(qf), torch.from_numpy(gf), k1=k1, k2=k2)
    assert isinstance(from_torch, torch.Tensor)
    np.testing.assert_allclose(from_torch.numpy(), from_features, atol=1e-6)


@pytest.mark.parametrize("seed", [1, 3])
def test_features_entry_breaks_near_ties_as_the_matrices_do(seed):
    """Features on a grid of sevenths: many distances are equal in exact arithmetic and differ in float32 only by
    the order their terms were added. The features path adds them in squared_distances' order for each matrix
    the reference reads (transposed ones included), so its neighbour sets are the matrices' (adding them in one
    order everywhere moved results by up to 0.15)."""
    rng = np.random.default_rng(seed)
    f = (rng.integers(-3, 4, (130, 6)) / 7).astype(np.float32) + 0.1
    qf, gf = f[:30], f[30:]
    mats = [squared_distances(a, b) for a, b in ((qf, gf), (qf, qf), (gf, gf))]
    np.testing.assert_allclose(k_reciprocal_features(qf, gf, k1=7, k2=3), k_reciprocal(*mats, k1=7, k2=3),
                               rtol=0, atol=1e-6)


def test_chunk_size_does_not_change_the_result():
    qf, gf, _, _ = clustered(25, 160, 20, seed=4)
    q_g, q_q, g_g = matrices(qf, gf)
    whole = k_reciprocal(q_g, q_q, g_g)
    for chunk in (1, 7, 26, 1000):
        np.testing.assert_allclose(k_reciprocal(q_g, q_q, g_g, chunk_size=chunk), whole, atol=1e-6)
        np.testing.assert_allclose(k_reciprocal_features(qf, gf, chunk_size=chunk),
                                   k_reciprocal_features(qf, gf), atol=1e-6)
        np.testing.assert_allclose(hard_k_reciprocal(qf, gf, chunk_size=chunk), hard_k_reciprocal(qf, gf),
                                   atol=1e-6)


def test_tiny_memory_budgets_do_not_change_the_result(monkeypatch):
    # every sparse step (expansion, query expansion, the min-join) then runs in many small chunks
    import clipreid.rerank as rerank

    qf, gf, _, _ = clustered(25, 160, 20, seed=8)
    q_g, q_q, g_g = matrices(qf, gf)
    expected = [k_reciprocal(q_g, q_q, g_g), k_reciprocal_features(qf, gf), hard_k_reciprocal(qf, gf)]
    monkeypatch.setattr(rerank, "_budgets", lambda device: (500, 300))
    got = [k_reciprocal(q_g, q_q, g_g), k_reciprocal_features(qf, gf), hard_k_reciprocal(qf, gf)]
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_k_larger_than_the_data():
    qf, gf, _, _ = clustered(3, 8, 3, seed=5)
    q_g, q_q, g_g = matrices(qf, gf)
    np.testing.assert_allclose(k_reciprocal(q_g, q_q, g_g, k1=20, k2=15), zhong(q_g, q_q, g_g, 20, 15, 0.3),
                               atol=1e-5)
    assert np.isfinite(hard_k_reciprocal(qf, gf, k1=20, k2=15)).all()


def test_bad_inputs_fail_clearly():
    qf, gf, _, _ = clustered(4, 10, 2)
    q_g, q_q, g_g = matrices(qf, gf)
    with pytest.raises(ValueError, match="g_g"):
        k_reciprocal(q_g, q_q, g_g[:5, :5])
    with pytest.raises(ValueError, match="k1"):
        k_reciprocal(q_g, q_q, g_g, k1=0)
    with pytest.raises(ValueError, match="lambda"):
        k_reciprocal_features(qf, gf, lambda_value=1.5)
    with pytest.raises(ValueError, match="shape"):
        hard_k_reciprocal(qf, gf[:, :3])


# --------------------------------------------------------------------------------------------------------------
# the 2023 hard-weight variant


@pytest.mark.parametrize("k1,k2,lam", [(20, 6, 0.7), (6, 3, 0.5), (9, 1, 1.0), (4, 5, 0.0)])
@pytest.mark.parametrize("num_query,num_gallery,clusters", [(6, 40, 8), (25, 120, 15)])
def test_hard_k_reciprocal_matches_loops(num_query, num_gallery, clusters, k1, k2, lam):
    qf, gf, _, _ = clustered(num_query, num_gallery, clusters, seed=k1 + k2)
    ours = hard_k_reciprocal(qf, gf, k1=k1, k2=k2, lambda_value=lam)
    np.testing.assert_allclose(ours, hard_reference(qf, gf, k1, k2, lam), rtol=0, atol=1e-5)


def test_hard_k_reciprocal_guards_zero_over_zero():
    # two queries close together and far from the single gallery item: with k1=2 neither query has a
    # gallery item in its reciprocal set, k2=1 keeps the query vectors empty, and a lone gallery item has no
    # neighbour to expand over, so sum(max) = 0 for every pair; the Jaccard distance must be 1, not NaN
    qf = np.array([[0.0, 0.0], [0.01, 0.0]], np.float32)
    gf = np.array([[10.0, 0.0]], np.float32)
    out = hard_k_reciprocal(qf, gf, k1=2, k2=1, lambda_value=1.0)
    np.testing.assert_array_equal(out, np.ones((2, 1), np.float32))
    np.testing.assert_allclose(hard_reference(qf, gf, 2, 1, 1.0), out)


def test_hard_k_reciprocal_torch_float64():
    qf, gf, _, _ = clustered(10, 60, 10, seed=6)
    out = hard_k_reciprocal(torch.from_numpy(qf).double(), torch.from_numpy(gf).double())
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float64
    np.testing.assert_allclose(out.numpy(), hard_reference(qf, gf, 20, 6, 0.7), atol=1e-5)


def test_no_float64_on_the_device_for_float32_input():
    # Apple's MPS has no float64: every op of the three entries must stay in float32 / integers, with the results
    # of the references (same tolerances as above); tiny chunks so that every chunked path runs under the guard
    qf, gf, _, _ = clustered(20, 150, 20, seed=9)
    q_g, q_q, g_g = (torch.from_numpy(m) for m in matrices(qf, gf))
    tq, tg = torch.from_numpy(qf), torch.from_numpy(gf)
    with NoFloat64():
        from_matrices = k_reciprocal(q_g, q_q, g_g, chunk_size=16)
        from_features = k_reciprocal_features(tq, tg, chunk_size=16)
        hard = hard_k_reciprocal(tq, tg, chunk_size=16)
    assert from_matrices.dtype == from_features.dtype == hard.dtype == torch.float32
    np.testing.assert_allclose(from_matrices.numpy(), zhong(*matrices(qf, gf), 20, 6, 0.3), atol=1e-5)
    np.testing.assert_allclose(from_features.numpy(), zhong(*matrices(qf, gf), 20, 6, 0.3), atol=1e-5)
    np.testing.assert_allclose(hard.numpy(), hard_reference(qf, gf, 20, 6, 0.7), rtol=0, atol=1e-5)


# --------------------------------------------------------------------------------------------------------------
# sanity: re-ranking helps on clustered data


def test_re_ranking_improves_map_on_clustered_data():
    qf, gf, q_ids, g_ids = clustered(40, 600, 40, dim=32, noise=1.1, seed=7)
    base = mean_ap(sq_dist(qf, gf), q_ids, g_ids)
    zhong_map = mean_ap(k_reciprocal_features(qf, gf), q_ids, g_ids)
    hard_map = mean_ap(hard_k_reciprocal(qf, gf), q_ids, g_ids)
    assert 0.3 < base < 0.9  # the test means something only if the raw ranking is imperfect
    assert zhong_map > base + 0.02
    assert hard_map > base + 0.02


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_cpu_loops_equal_the_torch_steps(monkeypatch, dtype):
    """The compiled CPU loops (reciprocal test, expansion, Jaccard join) give the torch versions' numbers, run here
    on the CPU, bit for bit: over many small chunks, a few rows a piece, on two threads, for all three
    re-rankings."""
    import clipreid.rerank as rerank

    monkeypatch.setattr(rerank, "_budgets", lambda device: (1 << 12, 300))  # many chunks of a few rows each
    monkeypatch.setattr(rerank, "JOIN_ROWS", 3)
    monkeypatch.setattr(rerank, "CPU_ROWS", 5)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    qf, gf, _, _ = clustered(23, 140, 8, seed=4)
    qf, gf = qf.astype(dtype), gf.astype(dtype)
    q_g, q_q, g_g = (m.astype(dtype) for m in matrices(qf, gf))

    def all_three():
        return [k_reciprocal(q_g, q_q, g_g), k_reciprocal_features(qf, gf), hard_k_reciprocal(qf, gf, k1=12)]

    compiled = all_three()
    monkeypatch.setattr(rerank, "_min_join_cpu", rerank._min_join_device)
    monkeypatch.setattr(rerank, "_reciprocal", rerank._reciprocal_device)
    monkeypatch.setattr(rerank, "_expand", rerank._expand_device)
    for ours, torch_steps in zip(compiled, all_three(), strict=True):
        assert ours.dtype == dtype
        np.testing.assert_array_equal(ours, torch_steps)
