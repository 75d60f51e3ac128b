"""The submission CSV: exact text, round trips, every reader error and alignment of id orders."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clipreid.errors import UserError
from clipreid.submission import align_to, read_distance_matrix, write_distance_matrix


def test_exact_text_sorted_rows_and_columns(tmp_path):
    path = tmp_path / "sub.csv"
    distmat = np.array([[0.5, 0.25, 1.0], [0.123456, 2.0, 0.0]], dtype=np.float32)
    write_distance_matrix(path, distmat, query_ids=[862.0, 7], gallery_ids=np.array([30, 4, 12]))
    assert path.read_text() == (
        "0,4,12,30\n"  # columns sorted by gallery id: 4 (was column 1), 12 (column 2), 30 (column 0)
        "7,2.00000,0.00000,0.12346\n"  # rows sorted by query id: 7 first, 862.0 written as an integer
        "862,0.25000,1.00000,0.50000\n"
    )


def test_repeated_ids_keep_their_relative_order(tmp_path):
    path = tmp_path / "sub.csv"
    distmat = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
    write_distance_matrix(path, distmat, query_ids=[5, 3, 5], gallery_ids=[9, 1, 9])
    assert path.read_text().splitlines() == [
        "0,1,9,9",
        "3,5.00000,4.00000,6.00000",
        "5,2.00000,1.00000,3.00000",
        "5,8.00000,7.00000,9.00000",
    ]


def test_round_trip_with_repeated_test_split_ids(tmp_path):
    rng = np.random.default_rng(0)
    query_ids = rng.integers(0, 50, size=40)  # player ids: repeated, like the test split
    gallery_ids = rng.integers(0, 50, size=300)
    distmat = rng.random((40, 300)) * 3
    path = tmp_path / "sub.csv"
    write_distance_matrix(path, distmat, query_ids, gallery_ids)
    read, read_q, read_g = read_distance_matrix(path)
    q_order, g_order = np.argsort(query_ids, kind="stable"), np.argsort(gallery_ids, kind="stable")
    assert read.dtype == np.float64 and read_q.dtype == np.int64 and read_g.dtype == np.int64
    np.testing.assert_array_equal(read_q, query_ids[q_order])
    np.testing.assert_array_equal(read_g, gallery_ids[g_order])
    np.testing.assert_allclose(read, distmat[np.ix_(q_order, g_order)], atol=5e-6)
    # aligning back to the original order restores the original matrix
    back = align_to(read, read_q, read_g, query_ids, gallery_ids)
    np.testing.assert_allclose(back, distmat, atol=5e-6)
    assert read_distance_matrix(path, dtype=np.float32)[0].dtype == np.float32


def test_writer_rejects_bad_input(tmp_path):
    path = tmp_path / "sub.csv"
    with pytest.raises(ValueError, match="query ids must be integers.*862.5"):
        write_distance_matrix(path, np.zeros((2, 1)), [1, 862.5], [3])
    with pytest.raises(ValueError, match="gallery ids must be integers"):
        write_distance_matrix(path, np.zeros((1, 1)), [1], ["00003"])
    with pytest.raises(ValueError, match="shape"):
        write_distance_matrix(path, np.zeros((2, 2)), [1], [3, 4])
    with pytest.raises(ValueError, match="finite"):
        write_distance_matrix(path, np.array([[np.nan]]), [1], [3])
    assert not path.exists()


GOOD = "0,4,12\n7,0.10000,0.20000\n862,0.30000,0.40000\n"


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "the file is empty"),
        ("\n\n", "the file is empty"),
        ("1,4,12\n7,0.1,0.2\n", "row 1, column 1: the header starts with '1', expected '0'"),
        ("0\n7\n", "row 1: the header has no gallery ids"),
        ("0,4,1.5\n7,0.1,0.2\n", "row 1, column 3: gallery id '1.5' is not an integer"),
        ("0,4,12\n", "no query rows after the header"),
        ("0,4,12\n7,0.1,0.2\n8,0.1\n", "row 3 has 2 columns, expected 3 like the header"),
        ("0,4,12\n7,0.1,0.2\n\n8,0.1,0.2\n", "row 3 is empty"),
        ("0,4,12\n862.5,0.1,0.2\n", "row 2: query id '862.5' is not an integer"),
        ("0,4,12\n862.0,0.1,0.2\n", "row 2: query id '862.0' is not an integer"),
        ("0,4,12\n7,0.1,0.2\n8,abc,0.2\n", "row 3, column 2: 'abc' is not a number"),
        ("0,4,12\n7,0.1,\n", "row 2, column 3: '' is not a number"),
        ("0,4,12\n7,0.1,nan\n", "row 2, column 3: 'nan' is not a finite number"),
        ("0,4,12\n7,inf,0.1\n", "row 2, column 2: 'inf' is not a finite number"),
        ("0,4,12\n8,0.1,0.2\n9,0.1,0.2\n7,0.1,0.2\n", "query ids must be sorted ascending: row 4 has id 7 after 9"),
    ],
)
def test_reader_errors_name_the_file_and_the_place(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(UserError) as info:
        read_distance_matrix(path)
    assert str(info.value).startswith(f"{path}: ")
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_reader_missing_file_and_folder(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        read_distance_matrix(tmp_path / "nope.csv")
    with pytest.raises(UserError, match="is a folder"):
        read_distance_matrix(tmp_path)


def test_reader_accepts_repeats_negatives_crlf_and_a_bom(tmp_path):
    path = tmp_path / "ok.csv"
    path.write_bytes(b"\xef\xbb\xbf0,4,4\r\n7,-0.00001,0.2\r\n7,0.3,0.4\r\n")
    distmat, query_ids, gallery_ids = read_distance_matrix(path)
    np.testing.assert_array_equal(distmat, [[-0.00001, 0.2], [0.3, 0.4]])
    assert query_ids.tolist() == [7, 7] and gallery_ids.tolist() == [4, 4]


def test_align_to_reorders_unique_ids_and_matches_repeated_ids_in_the_written_order():
    distmat = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
    # unique gallery ids: any order. Repeated query ids: the reference is 5, 3, 5 (data order) and the CSV lists
    # them as write_distance_matrix writes them, 3, 5, 5 (stably sorted): row k of the CSV is reference row
    # argsort(ref)[k], so the first 5 stays the first 5.
    aligned = align_to(distmat, [3, 5, 5], [1, 2, 3], [5, 3, 5], [3, 1, 2])
    np.testing.assert_array_equal(aligned, [[6.0, 4.0, 5.0], [3.0, 1.0, 2.0], [9.0, 7.0, 8.0]])
    as_torch = align_to(torch.from_numpy(distmat), [3, 5, 5], [1, 2, 3], [5, 3, 5], [3, 1, 2])
    assert isinstance(as_torch, torch.Tensor)
    np.testing.assert_array_equal(as_torch.numpy(), aligned)
    # the reference's own order is accepted as it is
    np.testing.assert_array_equal(align_to(distmat, [5, 3, 5], [1, 2, 3], [5, 3, 5], [1, 2, 3]), distmat)


def test_align_to_refuses_repeated_ids_in_another_order():
    # The test split's gallery repeats player ids: columns 7, 3, 7 against a reference 3, 7, 7 cannot say which 7
    # is which image; matching "the k-th 7" would silently average different images.
    distmat = np.zeros((2, 3))
    with pytest.raises(UserError, match=r"b.csv: its gallery ids repeat \(e.g. 7 x2\) and come in another order "
                                        r"than the reference's \(position 1: 7, expected 3\)"):
        align_to(distmat, [1, 2], [7, 3, 7], [1, 2], [3, 7, 7], name="b.csv")
    with pytest.raises(UserError, match="query ids repeat"):
        align_to(np.zeros((3, 1)), [4, 2, 4], [1], [2, 4, 4], [1])
    # with unique ids any order is fine: entry (query 1, gallery 3) moves to reference row 3, column 3
    np.testing.assert_array_equal(align_to(np.eye(3), [1, 2, 3], [3, 1, 2], [3, 2, 1], [1, 2, 3]),
                                  [[0, 1, 0], [1, 0, 0], [0, 0, 1]])


def test_align_to_says_which_ids_are_missing_or_extra():
    distmat = np.zeros((3, 2))
    with pytest.raises(UserError, match=r"model_b.csv: its query ids differ .*missing 4, 5 \(x2\); extra 3$"):
        align_to(distmat, [3, 5, 6], [1, 2], [5, 5, 5, 4, 6], [1, 2], name="model_b.csv")
    with pytest.raises(UserError, match="gallery ids differ.*missing 3; extra none"):
        align_to(distmat, [1, 2, 3], [1, 2], [1, 2, 3], [1, 2, 3])
