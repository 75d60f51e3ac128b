"""compute_scores against a per-query sklearn loop, on hand-worked examples, and on its failure paths."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from clipreid.metrics import compute_scores

KEYS = ("mAP", "rank1", "rank5", "rank10", "mINP")


def reference_scores(distmat, query_ids, gallery_ids, query_cams=None, gallery_cams=None) -> dict:
    """The straightforward definition: one query at a time, AP from sklearn, CMC and mINP from a stable argsort."""
    distmat, gallery_ids = np.asarray(distmat, dtype=np.float64), np.asarray(gallery_ids)
    aps, firsts, inps = [], [], []
    for i, qid in enumerate(query_ids):
        keep = np.ones(len(gallery_ids), dtype=bool)
        if query_cams is not None:
            keep = ~((gallery_ids == qid) & (np.asarray(gallery_cams) == query_cams[i]))
        dist, y_true = distmat[i][keep], gallery_ids[keep] == qid
        if not y_true.any():
            continue
        aps.append(average_precision_score(y_true, -dist))
        hits = np.flatnonzero(y_true[np.argsort(dist, kind="stable")]) + 1  # 1-based positions of the matches
        firsts.append(hits[0])
        inps.append(len(hits) / hits[-1])
    firsts = np.array(firsts)
    return {"mAP": np.mean(aps), "rank1": np.mean(firsts <= 1), "rank5": np.mean(firsts <= 5),
            "rank10": np.mean(firsts <= 10), "mINP": np.mean(inps), "num_valid_queries": len(aps)}


def reference_allshots(distmat, query_ids, gallery_ids, query_cams=None, gallery_cams=None) -> float:
    """open-reid's cmc(single_gallery_shot=False, first_match_break=False) rank-1, one query at a time: match j
    (0-based among the matches) at position k adds 1/num_matches to CMC[k - j]."""
    distmat, gallery_ids = np.asarray(distmat, dtype=np.float64), np.asarray(gallery_ids)
    shares = []
    for i, qid in enumerate(query_ids):
        keep = np.ones(len(gallery_ids), dtype=bool)
        if query_cams is not None:
            keep = ~((gallery_ids == qid) & (np.asarray(gallery_cams) == query_cams[i]))
        matches = (gallery_ids[keep] == qid)[np.argsort(distmat[i][keep], kind="stable")]
        if not matches.any():
            continue
        cmc = np.zeros(len(matches))
        for j, k in enumerate(np.flatnonzero(matches)):
            cmc[k - j] += 1 / matches.sum()
        shares.append(cmc[0])
    return float(np.mean(shares))


class NoFloat64(TorchDispatchMode):
    """Fails any torch op that makes a float64 tensor: Apple's MPS has no float64, so scoring and re-ranking of
    float32 inputs must not create one (checked here on the CPU, where every device op passes through)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.dtype == torch.float64:
                raise AssertionError(f"{func} made a float64 tensor")
        return out


def random_case(seed: int, n_query: int = 40, n_gallery: int = 300, n_ids: int = 30, n_cams: int = 0,
                decimals: int | None = None):
    """Clustered features -> squared Euclidean distances; query ids beyond the gallery's have no match."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_ids + 5, 16))
    gallery_ids = rng.integers(0, n_ids, n_gallery)
    query_ids = rng.integers(0, n_ids + 5, n_query)  # ids >= n_ids never appear in the gallery
    gallery = centers[gallery_ids] + rng.normal(scale=1.2, size=(n_gallery, 16))
    query = centers[query_ids] + rng.normal(scale=1.2, size=(n_query, 16))
    dist = ((query[:, None, :] - gallery[None, :, :]) ** 2).sum(-1)
    dist /= dist.max()
    if decimals is not None:
        dist = np.round(dist, decimals)
    cams = (rng.integers(0, n_cams, n_query), rng.integers(0, n_cams, n_gallery)) if n_cams else (None, None)
    return dist, query_ids, gallery_ids, *cams


def assert_close(ours: dict, ref: dict, tol: float = 1e-6) -> None:
    assert ours["num_valid_queries"] == ref["num_valid_queries"]
    for key in KEYS:
        assert isinstance(ours[key], float)
        assert ours[key] == pytest.approx(ref[key], abs=tol), key


@pytest.mark.parametrize("seed", range(4))
def test_matches_sklearn_on_random_distances(seed):
    case = random_case(seed)
    assert_close(compute_scores(*case), reference_scores(*case))


@pytest.mark.parametrize("decimals", [1, 2])
def test_matches_sklearn_with_many_ties(decimals):
    case = random_case(10 + decimals, decimals=decimals)
    assert len(np.unique(case[0][0])) < case[0].shape[1] / 3  # most distances are tied with another
    assert_close(compute_scores(*case), reference_scores(*case))


def test_ties_in_float32_are_ties():
    dist, qids, gids, _, _ = random_case(3, decimals=1)
    dist32 = dist.astype(np.float32)
    assert_close(compute_scores(dist32, qids, gids), reference_scores(dist32, qids, gids))


@pytest.mark.parametrize("decimals", [None, 1])
def test_matches_sklearn_with_cameras(decimals):
    case = random_case(20, n_query=60, n_cams=3, decimals=decimals)
    ours, ref = compute_scores(*case), reference_scores(*case)
    assert_close(ours, ref)
    assert ours != compute_scores(*case[:3])  # the camera rule changed something


def test_queries_without_a_match_are_skipped():
    dist, qids, gids, _, _ = random_case(5)
    unmatched = ~np.isin(qids, gids)
    assert 0 < unmatched.sum() < len(qids)
    ours = compute_scores(dist, qids, gids)
    assert ours["num_valid_queries"] == (~unmatched).sum()
    only_matched = compute_scores(dist[~unmatched], qids[~unmatched], gids)
    assert {k: ours[k] for k in KEYS} == pytest.approx({k: only_matched[k] for k in KEYS}, abs=1e-12)


def test_numpy_torch_and_list_inputs_agree():
    dist, qids, gids, qcams, gcams = random_case(7, n_cams=2, decimals=2)
    expected = compute_scores(dist, qids, gids, qcams, gcams)
    variants = [
        (torch.from_numpy(dist), torch.from_numpy(qids), torch.from_numpy(gids), torch.from_numpy(qcams),
         torch.from_numpy(gcams)),
        (dist, qids.tolist(), gids.tolist(), qcams.tolist(), gcams.tolist()),
        (dist, [f"p{i}" for i in qids], [f"p{i}" for i in gids], qcams.astype(float), gcams.astype(float)),
        (np.asfortranarray(dist), qids.astype(np.int32), gids.astype(np.uint16), qcams, gcams),
        # ids beyond 16 bits, or negative, are grouped without the 16-bit radix sort; 65535 and 0 with it
        (dist, qids + 10**6, gids + 10**6, qcams, gcams),
        (dist, -qids - 70_000, -gids - 70_000, qcams, gcams),
        (dist, 65_535 - qids, 65_535 - gids, qcams, gcams),
    ]
    for variant in variants:
        assert compute_scores(*variant) == expected
    # float32 rounds the distances differently, so only approximately the same
    as32 = compute_scores(torch.from_numpy(dist).float(), qids, gids, qcams, gcams)
    assert {k: as32[k] for k in KEYS} == pytest.approx({k: expected[k] for k in KEYS}, abs=0.02)


@pytest.mark.parametrize("chunk_size", [1, 3, 17])
def test_chunking_does_not_change_the_result(chunk_size):
    case = random_case(8, n_cams=2, decimals=1)
    assert compute_scores(*case, chunk_size=chunk_size) == compute_scores(*case)


def test_worked_example_with_ties():
    # gallery ids          1    2    1    3    1
    distmat = np.array([[0.5, 0.1, 0.3, 0.3, 0.9],   # query id 1
                        [0.2, 0.4, 0.6, 0.1, 0.8],   # query id 3
                        [0.1, 0.2, 0.3, 0.4, 0.5]])  # query id 7: no match, skipped
    # Query 1, ascending: 0.1 (id 2), 0.3 (id 1), 0.3 (id 3), 0.5 (id 1), 0.9 (id 1); 3 true matches.
    #   AP, the 0.3 tie as one threshold: at 0.3 recall 1/3 with precision 1/3 (1 of 3 items), at 0.5 recall +1/3
    #   with precision 2/4, at 0.9 recall +1/3 with precision 3/5: AP = 1/9 + 1/6 + 1/5 = 43/90.
    #   (Breaking the tie in gallery order would give (1/2 + 2/4 + 3/5) / 3 = 8/15 instead.)
    #   First match at position 2: not in rank-1, in rank-5. Last match at position 5: INP = 3/5.
    # Query 3: its one match is nearest: AP 1, rank-1, INP 1.
    scores = compute_scores(distmat, [1, 3, 7], [1, 2, 1, 3, 1])
    assert scores["num_valid_queries"] == 2
    assert scores["mAP"] == pytest.approx((43 / 90 + 1) / 2)
    assert scores["rank1"] == 0.5
    assert scores["rank5"] == scores["rank10"] == 1.0
    assert scores["mINP"] == pytest.approx((3 / 5 + 1) / 2)


def test_worked_example_with_cameras():
    # Query id 1 from camera 0. Gallery ids 1, 2, 1, 3, 1 from cameras 0, 0, 1, 0, 1: item 0 (id 1, camera 0) is
    # ignored; item 1 (id 2, camera 0) stays. Kept, ascending: 0.1 (id 2), 0.3 (id 1), 0.3 (id 3), 0.9 (id 1).
    #   AP: at 0.3 recall 1/2 with precision 1/3, at 0.9 recall +1/2 with precision 2/4: 1/6 + 1/4 = 5/12.
    #   First match at position 2; last match at position 4 (the ignored 0.5 does not count): INP = 2/4.
    distmat = np.array([[0.5, 0.1, 0.3, 0.3, 0.9]])
    scores = compute_scores(distmat, [1], [1, 2, 1, 3, 1], [0], [0, 0, 1, 0, 1])
    assert scores["mAP"] == pytest.approx(5 / 12)
    assert (scores["rank1"], scores["rank5"], scores["rank10"]) == (0.0, 1.0, 1.0)
    assert scores["mINP"] == pytest.approx(0.5)


def test_rank_k_counts_positions_in_the_stable_order():
    # Query id 5: its one match (item 6) comes after 6 closer impostors: position 7, so rank-1 and rank-5 miss,
    # rank-10 hits; AP = INP = 1/7.
    # Query id 6: its one match (item 10) ties at 0.2 with item 0, listed before it: the stable order puts the
    # match at position 2 (rank-1 misses, rank-5 hits, INP 1/2), and the tie is one threshold holding 2 items
    # of which 1 is true: AP = 1/2.
    gallery = [0, 1, 2, 3, 4, 7, 5, 8, 9, 10, 6]
    distmat = np.array([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1],
                        [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 0.2]])
    scores = compute_scores(distmat, [5, 6], gallery)
    assert (scores["rank1"], scores["rank5"], scores["rank10"]) == (0.0, 0.5, 1.0)
    assert scores["mINP"] == pytest.approx((1 / 7 + 1 / 2) / 2)
    assert scores["mAP"] == pytest.approx((1 / 7 + 1 / 2) / 2)


def test_perfect_ranking_scores_one():
    ids = np.repeat(np.arange(10), 4)
    distmat = (ids[:, None] != ids[None, :]).astype(np.float32) + np.random.default_rng(0).random((40, 40)) * 0.1
    assert {k: v for k, v in compute_scores(distmat, ids, ids).items() if k in KEYS} == dict.fromkeys(KEYS, 1.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_matches_cpu():
    case = random_case(9, n_cams=3, decimals=1)
    on_gpu = compute_scores(torch.from_numpy(case[0]).cuda(), *case[1:])
    assert on_gpu == pytest.approx(compute_scores(*case), abs=1e-12)
    assert compute_scores(*case, device="cuda") == pytest.approx(on_gpu, abs=1e-12)


@pytest.mark.parametrize(("args", "message"), [
    ((np.zeros((10, 4)), range(9), range(4)), "distmat has 10 rows but 9 query ids"),
    ((np.zeros((3, 4)), range(3), range(5)), "distmat has 4 columns but 5 gallery ids"),
    ((np.zeros(4), range(1), range(4)), "distmat must be 2-D"),
    ((np.zeros((3, 4)), np.zeros((3, 1)), range(4)), "query_ids must be 1-D"),
    ((np.zeros((3, 4)), range(3), range(4), [0, 0, 0], None), "give both query_cams and gallery_cams"),
    ((np.zeros((3, 4)), range(3), range(4), [0, 0], [0] * 4), "distmat has 3 rows but 2 query cameras"),
    ((np.zeros((3, 4)), range(3), range(4), [0] * 3, [0] * 3), "distmat has 4 columns but 3 gallery cameras"),
    ((np.zeros((0, 4)), [], range(4)), "distmat is empty"),
    ((np.ones((2, 3)), [1, 2], [3, 4, 5]), "no query has a true match"),
])
def test_bad_input_fails_with_one_line(args, message):
    with pytest.raises(ValueError, match=message) as info:
        compute_scores(*args)
    assert "\n" not in str(info.value)


def test_a_gallery_too_wide_for_the_cpu_counts_fails_with_one_line():
    # broadcast views: a 1 x 2**31 matrix and its ids without the 8 GiB
    wide = np.broadcast_to(np.float32(0.5), (1, 2**31))
    with pytest.raises(ValueError, match=r"2,147,483,648 columns; the CPU counts a row in 32 bits"):
        compute_scores(wide, [0], np.broadcast_to(0, (2**31,)))


def test_nan_distance_names_the_row():
    distmat = np.zeros((5, 3))
    distmat[3, 1] = np.nan
    with pytest.raises(ValueError, match=r"distmat contains NaN \(first in query row 3\)"):
        compute_scores(distmat, range(5), range(3), chunk_size=2)


def test_only_same_camera_matches_means_no_valid_query():
    with pytest.raises(ValueError, match="no query has a true match"):
        compute_scores(np.zeros((1, 2)), [1], [1, 1], [0], [0, 0])


@pytest.mark.parametrize(("seed", "n_cams"), [(30, 0), (31, 0), (32, 3)])
def test_allshots_rank1_matches_the_per_query_definition(seed, n_cams):
    case = random_case(seed, n_cams=n_cams)
    assert len(np.unique(case[0])) == case[0].size  # no ties: the order is the same however ties are broken
    ours = compute_scores(*case)
    assert ours["rank1_allshots"] == pytest.approx(reference_allshots(*case), abs=1e-12)
    assert 0 < ours["rank1_allshots"] < ours["rank1"]  # first-match break credits a query for any one match


def test_allshots_rank1_worked_example():
    # gallery ids            1    1    2    1    3
    distmat = np.array([[0.2, 0.1, 0.3, 0.5, 0.4],   # query id 1: 0.1 (1), 0.2 (1), 0.3 (2), 0.4 (3), 0.5 (1)
                        [0.9, 0.8, 0.1, 0.7, 0.6],   # query id 2: its one match is nearest
                        [0.1, 0.2, 0.3, 0.4, 0.5]])  # query id 3: id 1, 1, 2, 1 come before its match
    # Query 1: matches at positions 0, 1, 4 with 0, 0 and 2 other items before them: 2 of 3 lead -> 2/3.
    # Query 2: 1/1. Query 3: 0/1. allshots rank-1 = (2/3 + 1 + 0) / 3; first-match rank-1 = 2/3.
    scores = compute_scores(distmat, [1, 2, 3], [1, 1, 2, 1, 3])
    assert scores["rank1_allshots"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert scores["rank1"] == pytest.approx(2 / 3)


def test_allshots_rank1_ties_follow_the_stable_order():
    # A true match tied with another identity's item leads only when it comes first in the gallery, as in rank-k.
    distmat = np.array([[0.1, 0.1, 0.5], [0.1, 0.1, 0.5]])
    scores = compute_scores(distmat, [1, 1], [1, 2, 1])  # the match at 0.1 comes before the tied id 2
    assert (scores["rank1"], scores["rank1_allshots"]) == (1.0, 0.5)
    scores = compute_scores(distmat, [1, 1], [2, 1, 1])  # now the id 2 item comes first
    assert (scores["rank1"], scores["rank1_allshots"]) == (0.0, 0.0)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_negative_and_signed_zero_distances(dtype):
    # Negative distances (e.g. minus a similarity) and -0.0 == 0.0 ties must order like the floats do.
    dist, qids, gids, qcams, gcams = random_case(40, n_cams=2, decimals=1)
    dist = (dist - 0.3).astype(dtype)
    every_other = dist[:, ::2]
    every_other[every_other == 0] = -0.0
    assert np.signbit(dist[dist == 0]).any() and not np.signbit(dist[dist == 0]).all()
    ours, ref = compute_scores(dist, qids, gids, qcams, gcams), reference_scores(dist, qids, gids, qcams, gcams)
    assert_close(ours, ref, tol=1e-12)
    assert ours["rank1_allshots"] == pytest.approx(reference_allshots(dist, qids, gids, qcams, gcams), abs=1e-12)


def test_integer_and_infinite_distances():
    dist, qids, gids, _, _ = random_case(41, decimals=1)
    as_int = np.round(dist * 10).astype(np.int64) - 4
    assert_close(compute_scores(as_int, qids, gids), reference_scores(as_int, qids, gids), tol=1e-12)
    assert compute_scores(torch.from_numpy(as_int), qids, gids) == compute_scores(as_int, qids, gids)
    with_inf = dist.copy()
    with_inf[dist > 0.6] = np.inf  # most true matches of some queries at infinity, tied with everything there
    finite = np.where(np.isinf(with_inf), 1e300, with_inf)  # sklearn refuses infinity; the same order and ties
    assert_close(compute_scores(with_inf, qids, gids), reference_scores(finite, qids, gids), tol=1e-12)


def test_every_distance_equal():
    # The worst case for the heads (every item ties with the last match): one threshold, ranks in gallery order.
    gids = np.array([3, 1, 2, 1])
    scores = compute_scores(np.zeros((2, 4)), [1, 2], gids)
    assert scores["mAP"] == pytest.approx((2 / 4 + 1 / 4) / 2)
    assert scores["rank1"] == 0.0 and scores["rank5"] == 1.0
    assert scores["mINP"] == pytest.approx((2 / 4 + 1 / 3) / 2)
    assert scores["rank1_allshots"] == 0.0


@pytest.mark.parametrize("ids_as_tensors", [False, True])
def test_no_float64_on_the_device_for_float32_input(ids_as_tensors):
    dist, qids, gids, qcams, gcams = random_case(42, n_cams=3, decimals=2)
    args = [torch.from_numpy(a) if ids_as_tensors else a for a in (qids, gids, qcams, gcams)]
    dist32 = torch.from_numpy(dist).float()
    with NoFloat64():
        ours = compute_scores(dist32, *args, chunk_size=7)
    with pytest.raises(AssertionError, match="float64"), NoFloat64():  # the guard can fail
        torch.ones(2, dtype=torch.float32).double()
    ref = reference_scores(dist.astype(np.float32), qids, gids, qcams, gcams)
    assert_close(ours, ref, tol=1e-12)


@pytest.mark.parametrize("kind", ["numpy", "torch"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
@pytest.mark.parametrize("where", [(3, 1), (0, 0), (5, 9)])  # one true match's own distance among them
def test_nan_is_an_error_in_every_precision(kind, dtype, where):
    """The same rule for every float dtype: half precisions were widened before the check and scored NaN."""
    if kind == "numpy" and dtype == "bfloat16":
        pytest.skip("numpy has no bfloat16")
    gen = np.random.default_rng(0)
    distmat = gen.random((6, 10))
    query_ids, gallery_ids = np.arange(6) % 3, np.arange(10) % 3
    distmat[where] = np.nan
    if kind == "numpy":
        distmat = distmat.astype(dtype)
    else:
        distmat = torch.from_numpy(distmat).to(getattr(torch, dtype))
    with pytest.raises(ValueError, match=rf"distmat contains NaN \(first in query row {where[0]}\)"):
        compute_scores(distmat, query_ids, gallery_ids)
    with pytest.raises(ValueError, match=rf"distmat contains NaN \(first in query row {where[0]}\)"):
        compute_scores(distmat, query_ids, gallery_ids, chunk_size=2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_sklearn_on_hard_distances(dtype):
    """A weak model: true matches spread through the whole row, so no query's scores come from a short head."""
    rng = np.random.default_rng(5)
    qids, gids = rng.integers(0, 12, 30), rng.integers(0, 12, 400)
    qcams, gcams = rng.integers(0, 3, 30), rng.integers(0, 3, 400)
    same = qids[:, None] == gids[None, :]
    dist = np.where(same, rng.random(same.shape), 0.35 + rng.random(same.shape)).astype(dtype)
    dist[:, 7] = dist[:, 3]  # a few exact ties between items of any identity
    ours, ref = compute_scores(dist, qids, gids, qcams, gcams), reference_scores(dist, qids, gids, qcams, gcams)
    assert_close(ours, ref, tol=1e-12)
    assert ours["rank1_allshots"] == pytest.approx(reference_allshots(dist, qids, gids, qcams, gcams), abs=1e-12)
    assert compute_scores(torch.from_numpy(dist), qids, gids, qcams, gcams, chunk_size=4) == ours


@pytest.mark.parametrize("passes, copy_passes", [(32, 10), (2, 10), (32, 0), (2, 10**9)])
def test_cpu_kernel_blocks_threads_and_every_way_of_counting(monkeypatch, passes, copy_passes):
    """Small blocks over two threads: rows whose head is most of the row beside rows with short heads, heads counted
    a pass per true match or split by needles (``passes`` 2: every row with three or more), copied out of the row
    or counted in place (``copy_passes`` 0: every head copied; 10**9: none), ties between identities at every
    boundary, in float32, float64 and int64; NaN names the matrix's first NaN row."""
    import clipreid.metrics as metrics

    monkeypatch.setattr(metrics, "BLOCK_ELEMENTS", 3 * 97)
    monkeypatch.setattr(metrics, "NEEDLE_PASSES", passes)
    monkeypatch.setattr(metrics, "COPY_PASSES", copy_passes)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    rng = np.random.default_rng(8)
    qids, gids = rng.integers(0, 9, 50), rng.integers(0, 9, 97)
    qids[10] = 9  # no true match: no score reads row 10, but its NaN is an error too
    qcams, gcams = rng.integers(0, 3, 50), rng.integers(0, 3, 97)
    same = qids[:, None] == gids[None, :]
    weak = np.where(same, rng.random(same.shape), 0.35 + rng.random(same.shape))  # heads: most of the row
    strong = np.where(same, 0.2 * rng.random(same.shape), 0.1 + rng.random(same.shape))  # heads: a few items
    is_weak = rng.random(50) < 0.5
    dist = np.round(np.where(is_weak[:, None], weak, strong), 2)
    for values in (dist.astype(np.float32), dist, (dist * 100).astype(np.int64)):
        ours, ref = compute_scores(values, qids, gids, qcams, gcams), reference_scores(values, qids, gids, qcams, gcams)
        assert_close(ours, ref, tol=1e-12)
        assert ours["rank1_allshots"] == pytest.approx(reference_allshots(values, qids, gids, qcams, gcams), abs=1e-12)
    # blocks of 3 rows dealt in turn: 36 and 37 share a block; row 42 is the first thread's, which stops there,
    # 39 the other's
    for rows, first in (([37], 37), ([42], 42), ([37, 36], 36), ([42, 39], 39), ([10], 10), ([10, 5], 5)):
        with_nan = dist.copy()
        with_nan[rows, 5] = np.nan
        with pytest.raises(ValueError, match=rf"distmat contains NaN \(first in query row {first}\)"):
            compute_scores(with_nan, qids, gids, qcams, gcams)


@pytest.mark.parametrize("block, passes, copy_passes, device_path", [
    (7, 32, 0, False), (50, 1, 10**9, False), (300, 0, 0, False), (300, 0, 10**9, False), (50, 32, 10, True)])
def test_every_counting_path_matches_sklearn(monkeypatch, block, passes, copy_passes, device_path):
    """Small odd matrices (one-column galleries, ties everywhere, -0.0, infinities, integers) through each way the
    CPU loop can count a row (blocks of one row or many, a pass per true match or splits down to one or none, heads
    copied out or counted in place), and through the device path (torch's sorts), run here on the CPU."""
    import clipreid.metrics as metrics

    monkeypatch.setattr(metrics, "BLOCK_ELEMENTS", block)
    monkeypatch.setattr(metrics, "NEEDLE_PASSES", passes)
    monkeypatch.setattr(metrics, "COPY_PASSES", copy_passes)
    if device_path:
        monkeypatch.setattr(metrics, "_chunk_counts_cpu", metrics._chunk_counts_device)
    rng = np.random.default_rng(block + passes + (copy_passes > 0) + device_path)
    for trial in range(30):
        q, g = int(rng.integers(1, 10)), int(rng.integers(1, 30))
        qids, gids = rng.integers(0, 4, q), rng.integers(0, 4, g)
        if trial % 3 == 0:
            dist = rng.integers(-3, 4, (q, g))
        else:
            dist = np.round(rng.normal(size=(q, g)), 1).astype([np.float32, np.float64][trial % 2])
            dist[rng.random((q, g)) < 0.1] = -0.0
            dist[rng.random((q, g)) < 0.1] = [np.inf, -np.inf][trial % 4 // 2]
        cams = (rng.integers(0, 3, q), rng.integers(0, 3, g)) if trial % 2 else (None, None)
        matched = qids[:, None] == gids[None, :]
        if cams[0] is not None:
            matched &= cams[0][:, None] != cams[1][None, :]
        if not matched.any():
            continue
        wide = dist.astype(np.float64)
        finite = np.where(np.isinf(wide), np.sign(wide) * 1e300, wide)  # sklearn refuses infinity; the same order
        ours = compute_scores(dist, qids, gids, *cams)
        assert_close(ours, reference_scores(finite, qids, gids, *cams), tol=1e-12)
        assert ours["rank1_allshots"] == pytest.approx(reference_allshots(finite, qids, gids, *cams), abs=1e-12)
