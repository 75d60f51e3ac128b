"""The demo's before/after table: the untrained row is the model training started from."""

from __future__ import annotations

import json

import pytest

from clipreid.demo import Config, before_after, format_before_after, main
from clipreid.trainer import train
from train import Config as TrainConfig


@pytest.fixture(scope="module")
def demo_run(synthetic_small, tmp_path_factory):
    out = tmp_path_factory.mktemp("demo_run")
    return train(TrainConfig(data_dir=synthetic_small, output_dir=out, run_name="demo", model="tiny-vit",
                             pretrained="none", epochs=1, batch_size=16, lr=2e-3, progress=False, device="cpu",
                             num_workers=0))


def test_before_after_matches_the_training_log(synthetic_small, demo_run):
    results = before_after(demo_run, synthetic_small)
    log = [json.loads(line) for line in (demo_run / "log.jsonl").read_text().splitlines()]
    # the untrained raw row is the log's epoch 0, the trained raw row its last epoch (best.pt of a 1-epoch run)
    for key in ("mAP", "rank1"):
        assert results["untrained"]["none"][key] == pytest.approx(log[0][key], abs=1e-6)
        assert results["trained"]["none"][key] == pytest.approx(log[1][key], abs=1e-6)
    assert set(results["trained"]) == {"none", "k_reciprocal"}
    assert results["untrained"]["k_reciprocal"]["mAP"] != results["trained"]["k_reciprocal"]["mAP"]


def test_before_after_table(synthetic_small, demo_run, capsys):
    scores = {"mAP": 0.25, "rank1": 0.5}
    table = format_before_after({"untrained": {"none": scores, "k_reciprocal": scores},
                                 "trained": {"none": {"mAP": 0.875, "rank1": 1.0},
                                             "k_reciprocal": {"mAP": 0.9, "rank1": 0.95}}}, "title")
    lines = table.splitlines()
    assert lines[0] == "title"
    assert lines[1].split() == ["model", "raw", "mAP", "raw", "rank-1", "k-reciprocal", "mAP", "k-reciprocal",
                                "rank-1"]
    assert lines[2].split() == ["untrained", "25.0", "50.0", "25.0", "50.0"]
    assert lines[3].split() == ["trained", "87.5", "100.0", "90.0", "95.0"]
    main(Config(checkpoint=demo_run, data_dir=synthetic_small))
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("before / after training") and "12 queries" in printed[0]
    assert [line.split()[0] for line in printed[2:]] == ["untrained", "trained"]


def test_demo_model_is_tiny_vit_with_8px_patches():
    import torch

    from clipreid.model import ModelSpec, build_encoder

    small, demo = (build_encoder(ModelSpec(name, "none")) for name in ("tiny-vit", "tiny-vit-demo"))
    # the same weights' shapes but four times the tokens (8 px patches on 128x64: 16x8 instead of 8x4)
    assert demo.backbone.conv1.kernel_size == (8, 8) and small.backbone.conv1.kernel_size == (16, 16)
    assert demo.backbone.positional_embedding.shape[0] == 16 * 8 + 1
    with torch.no_grad():
        assert demo(torch.zeros(2, 3, 128, 64)).shape == small(torch.zeros(2, 3, 128, 64)).shape
