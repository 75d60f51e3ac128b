"""Pictures: valid PNGs of the documented size, placeholders for missing images, curves for any number of epochs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from clipreid.visualize import (
    BORDER,
    CAPTION,
    FOOTER,
    GAP,
    HEADER,
    MISSING_COLOUR,
    PAD,
    PANEL,
    QUERY_COLOUR,
    RIGHT_COLOUR,
    WRONG_COLOUR,
    nice_ticks,
    save_ranked_lists,
    save_training_curves,
)


@pytest.fixture
def crops(tmp_path):
    """4 query and 10 gallery crops (tall, wide and tiny), ids query [0, 1, 2, 3], gallery i % 4."""
    paths = []
    for i in range(14):
        size = [(20, 50), (60, 30), (5, 5)][i % 3]
        path = tmp_path / f"{i}.jpeg"
        Image.new("RGB", size, (20 * i % 255, 100, 200)).save(path)
        paths.append(path)
    return paths[:4], paths[4:], np.arange(4), np.arange(10) % 4


def _grid_size(rows, topk, cell):
    return (PAD + (topk + 1) * (cell[0] + 2 * BORDER + PAD) + GAP,
            HEADER + PAD + rows * (cell[1] + 2 * BORDER + CAPTION + PAD))


def test_ranked_lists_size_and_border_colours(tmp_path, crops):
    query_paths, gallery_paths, query_ids, gallery_ids = crops
    distmat = np.tile(np.arange(10, dtype=np.float32), (4, 1))  # every query ranks gallery 0, 1, 2, ... in order
    out = tmp_path / "ranks.png"
    shown = save_ranked_lists(out, query_paths, gallery_paths, distmat, query_ids, gallery_ids, queries=[1, 3], topk=5)
    assert shown == [1, 3]
    with Image.open(out) as image:
        assert image.format == "PNG"
        assert image.size == _grid_size(2, 5, (64, 128))
        image = image.convert("RGB")
        # the top-left pixel of the first gallery tile's frame: query 1 vs gallery 0 (id 0) is wrong -> red
        x = PAD + (64 + 2 * BORDER + PAD) + GAP
        assert image.getpixel((x, HEADER + PAD)) == WRONG_COLOUR
        # rank 2 is gallery 1 (id 1), the right player -> green
        assert image.getpixel((x + 64 + 2 * BORDER + PAD, HEADER + PAD)) == RIGHT_COLOUR
        # the legend's first swatch is the query colour; without a title the title line stays white
        assert image.getpixel((PAD + 5, PAD + 22)) == QUERY_COLOUR
        assert {image.getpixel((x, y)) for x in range(image.width) for y in range(PAD + 12)} == {(255, 255, 255)}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left behind


def test_ranked_lists_random_sample_torch_input_and_placeholders(tmp_path, crops):
    query_paths, gallery_paths, query_ids, gallery_ids = crops
    gallery_paths = [tmp_path / "gone.jpeg", None, *gallery_paths[2:]]
    distmat = torch.arange(40, dtype=torch.float32).reshape(4, 10)
    out = tmp_path / "ranks.png"
    shown = save_ranked_lists(
        out, query_paths, gallery_paths, distmat, torch.arange(4), gallery_ids, num_queries=3, topk=20, cell=(32, 48)
    )
    assert len(shown) == 3 and len(set(shown)) == 3
    with Image.open(out) as image:
        assert image.size == _grid_size(3, 10, (32, 48))  # topk is capped at the gallery size
        image = image.convert("RGB")
        x = PAD + (32 + 2 * BORDER + PAD) + GAP + BORDER
        assert image.getpixel((x + 1, HEADER + PAD + BORDER + 1)) == MISSING_COLOUR  # gallery 0 is missing: grey
    again = tmp_path / "again.png"
    assert save_ranked_lists(again, query_paths, gallery_paths, distmat, query_ids, gallery_ids, num_queries=3) == shown


def test_ranked_lists_leave_out_same_id_same_camera(tmp_path, crops):
    """As the metrics do: a gallery image of the query's id seen by the query's camera is no evidence."""
    query_paths, gallery_paths, query_ids, gallery_ids = crops
    distmat = np.tile(np.arange(10, dtype=np.float32), (4, 1))
    query_cams = np.zeros(4, dtype=int)
    gallery_cams = np.array([0, 0, 1, 0, 0, 1, 0, 0, 0, 0])  # gallery 1 (id 1) shares query 1's camera: left out
    out = tmp_path / "ranks.png"
    save_ranked_lists(out, query_paths, gallery_paths, distmat, query_ids, gallery_ids, queries=[1], topk=4,
                      query_cams=query_cams, gallery_cams=gallery_cams, title="tiny, re-ranking none: test split")
    pitch = 64 + 2 * BORDER + PAD
    x = PAD + pitch + GAP
    with Image.open(out) as image:
        image = image.convert("RGB")
        # ranks: gallery 0 (id 0, wrong), gallery 2 (id 2, wrong), gallery 3 (id 3, wrong), gallery 4 (id 0, wrong);
        # gallery 5 (id 1, other camera) would be rank 5, not shown; without cameras rank 2 was the right one
        colours = [image.getpixel((x + r * pitch, HEADER + PAD)) for r in range(4)]
        assert colours == [WRONG_COLOUR] * 4
        assert len(image.crop((0, 0, image.width, PAD + 12)).convert("L").getcolors(4096)) > 1  # the title
    save_ranked_lists(out, query_paths, gallery_paths, distmat, query_ids, gallery_ids, queries=[1], topk=6,
                      query_cams=query_cams, gallery_cams=gallery_cams)
    with Image.open(out) as image:
        image = image.convert("RGB")
        assert image.getpixel((x + 4 * pitch, HEADER + PAD)) == RIGHT_COLOUR  # gallery 5: other camera, rank 5
    with pytest.raises(ValueError, match="both query_cams and gallery_cams"):
        save_ranked_lists(out, query_paths, gallery_paths, distmat, query_ids, gallery_ids, query_cams=query_cams)


def test_ranked_lists_rejects_mismatched_inputs(tmp_path, crops):
    query_paths, gallery_paths, query_ids, gallery_ids = crops
    with pytest.raises(ValueError, match="distmat is 4 x 9"):
        save_ranked_lists(tmp_path / "x.png", query_paths, gallery_paths, np.zeros((4, 9)), query_ids, gallery_ids)
    with pytest.raises(ValueError, match="query indices"):
        save_ranked_lists(
            tmp_path / "x.png", query_paths, gallery_paths, np.zeros((4, 10)), query_ids, gallery_ids, [4]
        )


def test_training_curves_one_epoch(tmp_path):
    out = tmp_path / "curves.png"
    save_training_curves(out, [{"epoch": 1, "train_loss": 1.2, "lr": 3e-5, "mAP": 0.8, "note": "text is skipped"}])
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size == (3 * PANEL[0], PANEL[1])


def test_training_curves_several_epochs_with_missing_values(tmp_path):
    records = [
        {"epoch": 1, "train_loss": 2.0, "lr": 4e-5},
        {"epoch": 2, "train_loss": 1.5, "lr": 3e-5, "mAP": 0.7, "rank1": 0.8},
        {"epoch": 3, "train_loss": float("nan"), "lr": 2e-5},
        {"epoch": 4, "train_loss": 1.0, "lr": 1e-5, "mAP": 0.9, "rank1": 0.95, "mINP": 0.5},
    ]
    out = tmp_path / "curves.png"
    save_training_curves(out, records)
    with Image.open(out) as image:
        assert image.size == (3 * PANEL[0], 2 * PANEL[1])  # 5 numeric keys: 3 + 2 charts
        assert len(image.convert("L").getcolors(4096)) > 2  # something was drawn


def test_training_curves_drop_constant_series(tmp_path):
    records = [{"epoch": e, "train_loss": 2.0 / (e + 1), "lr": 1e-3, "logit_scale": 14.29, "mAP": 0.1 * e}
               for e in range(5)]
    records[0].pop("train_loss")  # epoch 0 (before training) has no loss
    out = tmp_path / "curves.png"
    assert save_training_curves(out, records) == ["mAP", "train_loss"]  # in order of first appearance
    with Image.open(out) as image:
        assert image.size == (2 * PANEL[0], PANEL[1] + FOOTER)  # two charts and the line naming the constants
        footer = image.convert("L").crop((0, PANEL[1], image.width, image.height))
        assert len(footer.getcolors(4096)) > 1


def test_nice_ticks():
    assert nice_ticks(0.12, 0.87) == [0.0, 0.5, 1.0]
    assert nice_ticks(0.09, 0.31) == [0.0, 0.1, 0.2, 0.3, 0.4]
    assert nice_ticks(1.0, 8.0, 6) == [0.0, 2.0, 4.0, 6.0, 8.0]
    assert nice_ticks(1e-5, 2e-3) == [0.0, 0.001, 0.002]
    assert nice_ticks(13.6, 14.3) == [13.5, 14.0, 14.5]
    assert nice_ticks(3.0, 3.0) == [3.0]


def test_training_curves_without_numbers(tmp_path):
    out = tmp_path / "curves.png"
    save_training_curves(out, [])
    with Image.open(out) as image:
        assert image.size == PANEL
