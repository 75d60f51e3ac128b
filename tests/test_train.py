"""Training: losses against hand-computed values, DDP equivalence, schedules, exact resume,
mixed precision on the CPU, checkpoints, and a short run on the synthetic data that must learn."""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from clipreid.checkpoint import read_checkpoint
from clipreid.dataset import PairBatchSampler, load_split
from clipreid.errors import UserError
from clipreid.loss import ReIDLoss, batch_hard_triplet, info_nce
from clipreid.model import ModelSpec, build_encoder
from clipreid.trainer import (
    build_optimizer,
    forward_backward,
    load_scaler_state,
    log_due,
    lr_factor,
    micro_batches_in_step,
    sync_context,
    train,
)
from clipreid.transforms import AugmentConfig, augment_pairs
from clipreid.weights import load_encoder
from train import Config

ROOT = Path(__file__).resolve().parents[1]


def tiny_config(data_dir: Path, out: Path, **overrides) -> Config:
    base = dict(data_dir=data_dir, output_dir=out, model="tiny-vit", pretrained="none", epochs=2, batch_size=8,
                lr=2e-3, lr_end=1e-5, progress=False, device="cpu", zero_shot=False, num_workers=0)
    return Config(**{**base, **overrides})


# --------------------------------------------------------------------------------------------------------------
# losses


def test_info_nce_hand_computed():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # logits = I: each row's cross-entropy is log(1 + e^-1) = 0.313262 without smoothing; with smoothing 0.1 the
    # target is (0.95, 0.05): 0.95 * 0.313262 + 0.05 * 1.313262 = 0.363262; both directions are equal.
    assert info_nce(a, a, 1.0, label_smoothing=0.0).item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)
    assert info_nce(a, a, 1.0, label_smoothing=0.1).item() == pytest.approx(0.363262, abs=1e-6)
    # asymmetric case: A = [[1,0],[0,1]], P = [[1,0],[1,0]] with scale 2: logits A·Pᵀ = [[2,2],[0,0]]
    # rows: both rows are uniform -> log 2 each; columns (P·Aᵀ = [[2,0],[2,0]]): row 0 -> log(1+e^-2) = 0.126928,
    # row 1 (target 1) -> log(1+e^2) = 2.126928; mean = (log 2 + (0.126928 + 2.126928) / 2) / 2
    p = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    expected = (math.log(2) + (0.126928 + 2.126928) / 2) / 2
    assert info_nce(a, p, 2.0, label_smoothing=0.0).item() == pytest.approx(expected, abs=1e-5)


def test_info_nce_normalises_features():
    a, p = torch.randn(6, 5), torch.randn(6, 5)
    assert info_nce(a, p, 10.0).item() == pytest.approx(info_nce(3 * a, 0.5 * p, 10.0).item(), abs=1e-5)


def test_batch_hard_triplet_hand_computed():
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [-1.0, 0.0]])
    y = torch.tensor([0, 0, 1, 1])
    # image 0: positive 1 at sqrt2, nearest negative 2 at 0 -> relu(1.41421 - 0 + 0.3) = 1.71421
    # image 1: positive 0 at sqrt2, negatives 2 and 3 both at sqrt2 -> 0.3
    # image 2: positive 3 at 2, nearest negative 0 at 0 -> 2.3; image 3: positive 2 at 2, negative 1 at sqrt2 -> 0.88579
    expected = (1.71421 + 0.3 + 2.3 + 0.88579) / 4
    assert batch_hard_triplet(f, y, 0.3).item() == pytest.approx(expected, abs=1e-4)


def test_batch_hard_triplet_leaves_out_images_without_a_positive():
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [-1.0, 0.0], [0.6, -0.8]], requires_grad=True)
    y = torch.tensor([0, 0, 1, 1, 7])  # image 4 has no positive and is no nearest negative: as above
    assert batch_hard_triplet(f, y, 0.3).item() == pytest.approx((1.71421 + 0.3 + 2.3 + 0.88579) / 4, abs=1e-4)
    # soft margin: log(1 + exp(d_pos - d_neg)) over the same four images
    soft = (math.log1p(math.exp(1.41421)) + math.log1p(1) + math.log1p(math.exp(2)) + math.log1p(math.exp(0.58579)))
    assert batch_hard_triplet(f, y, None).item() == pytest.approx(soft / 4, abs=1e-4)
    alone = batch_hard_triplet(f, torch.arange(5), 0.3)  # no image has a positive: 0, with a zero gradient
    alone.backward()
    assert alone.item() == 0.0 and torch.equal(f.grad, torch.zeros_like(f))


def test_weighted_loss_sum_and_unknown_names():
    torch.manual_seed(0)
    a, p, y = torch.randn(4, 8), torch.randn(4, 8), torch.arange(4)
    scale = torch.tensor(10.0)
    combo = ReIDLoss(("infonce", "triplet", "id"), (1.0, 0.5, 2.0), feature_dim=8, num_classes=4)
    total, parts = combo(a, p, y, scale)
    assert set(parts) == {"infonce", "triplet", "id"}
    parts = {k: v.item() for k, v in parts.items()}
    assert total.item() == pytest.approx(parts["infonce"] + 0.5 * parts["triplet"] + 2 * parts["id"], rel=1e-5)
    with pytest.raises(UserError, match="unknown loss"):
        ReIDLoss(("arcface",))
    with pytest.raises(UserError, match="2 values for 1 losses"):
        ReIDLoss(("infonce",), (1.0, 2.0))


def _ddp_worker():
    spec = importlib.util.spec_from_file_location("ddp_loss_worker", ROOT / "tests/helpers/ddp_loss_worker.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


DDP_CASES = [("infonce", "on"), ("infonce,id,triplet", "on")]


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory) -> Path:
    """Every case of DDP_CASES in one launch of two gloo processes (their start is most of the time)."""
    out = tmp_path_factory.mktemp("ddp")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        str(ROOT / "tests/helpers/ddp_loss_worker.py"), str(out),
                        *(f"{losses}:{augment}" for losses, augment in DDP_CASES)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


@pytest.mark.parametrize(("losses", "augment"), DDP_CASES)
def test_ddp_loss_and_gradients_equal_single_process(ddp_results, losses, augment):
    """Two gloo processes with 4 pairs each give the loss and gradients of one process with all 8 pairs, with
    flip, sharpen and random erasing on too: each rank augments its slice of the global batch's draws."""
    worker = _ddp_worker()
    encoder, loss_fn, aug, (anchors, positives, labels) = worker.setup(losses, augment)
    loss, _ = forward_backward(encoder, encoder, loss_fn, anchors, positives, labels, aug, torch.float32,
                               torch.Generator().manual_seed(worker.STEP_SEED))
    for rank in range(2):
        got = torch.load(ddp_results / worker.case_dir(losses, augment) / f"rank{rank}.pt", weights_only=True)
        assert got["loss"].item() == pytest.approx(loss.item(), abs=1e-5)
        for name, param in [*encoder.named_parameters(), *(("loss." + k, p) for k, p in loss_fn.named_parameters())]:
            torch.testing.assert_close(got["grads"][name], param.grad, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("world", [2, 4])
def test_augmentation_of_a_rank_is_its_slice_of_the_global_batch(world):
    g = torch.Generator().manual_seed(0)
    anchors = torch.randint(0, 256, (8, 3, 32, 16), generator=g, dtype=torch.uint8)
    positives = torch.randint(0, 256, (8, 3, 32, 16), generator=g, dtype=torch.uint8)
    cfg = AugmentConfig(flip=True, sharpen=True, random_erasing=True)
    mean, std = (0.5,) * 3, (0.25,) * 3
    whole = augment_pairs(anchors, positives, cfg, mean, std, torch.Generator().manual_seed(3))
    b = 8 // world
    shares = [augment_pairs(anchors[r * b:(r + 1) * b], positives[r * b:(r + 1) * b], cfg, mean, std,
                            torch.Generator().manual_seed(3), rank=r, world_size=world) for r in range(world)]
    for k in range(2):
        torch.testing.assert_close(torch.cat([s[k] for s in shares]), whole[k], atol=1e-6, rtol=0)
    # the ranks do not repeat each other's draws (the same images on every rank are augmented differently)
    same = [augment_pairs(anchors[:b], positives[:b], cfg, mean, std, torch.Generator().manual_seed(3), rank=r,
                          world_size=world)[0] for r in range(world)]
    assert not torch.equal(same[0], same[1])
    with pytest.raises(ValueError, match="rank 2 is not one of the 2"):
        augment_pairs(anchors, positives, cfg, mean, std, g, rank=2, world_size=2)


# --------------------------------------------------------------------------------------------------------------
# optimiser, schedule, accumulation


def test_polynomial_schedule_values():
    kw = dict(total=100, warmup=10, schedule="polynomial", lr=4e-5, lr_end=1e-5, power=2.0)
    assert lr_factor(0, **kw) == pytest.approx(0.1)  # warm-up: (step + 1) / warmup
    assert lr_factor(9, **kw) == pytest.approx(1.0)
    assert lr_factor(10, **kw) == pytest.approx(1.0)
    assert lr_factor(55, **kw) == pytest.approx(0.25 + 0.75 * 0.25)  # half-way: end + (1 - end) * 0.5^2
    assert lr_factor(100, **kw) == pytest.approx(0.25)  # lr_end / lr
    cos = dict(kw, schedule="cosine")
    assert lr_factor(55, **cos) == pytest.approx(0.25 + 0.75 * 0.5)
    assert lr_factor(55, **dict(kw, schedule="linear")) == pytest.approx(0.25 + 0.75 * 0.5)
    assert lr_factor(55, **dict(kw, schedule="constant")) == 1.0


def test_defaults_are_the_original_recipe():
    """train.py's defaults are CLIP-ReIdent's: AdamW 4e-5, decay 0.01 on every parameter, no clipping, 1 warm-up
    epoch, polynomial (power 2) decay to 1e-5, 4 epochs, 16 pairs, seed 1, InfoNCE with smoothing 0.1."""
    cfg = Config()
    assert (cfg.model, cfg.pretrained, cfg.losses, cfg.label_smoothing) == ("ViT-L-14-quickgelu", "openai",
                                                                            ("infonce",), 0.1)
    assert (cfg.lr, cfg.lr_end, cfg.weight_decay, cfg.warmup_epochs) == (4e-5, 1e-5, 0.01, 1.0)
    assert (cfg.scheduler, cfg.poly_power, cfg.epochs, cfg.batch_size, cfg.seed) == ("polynomial", 2.0, 4, 16, 1)
    assert cfg.clip_grad is None and cfg.decay_all is True and cfg.grad_accum == 1
    encoder = build_encoder(ModelSpec("tiny-vit", "none"))
    (group,) = build_optimizer([encoder], cfg.lr, cfg.weight_decay).param_groups  # decay on all by default too
    assert group["weight_decay"] == 0.01 and any(p is encoder.logit_scale for p in group["params"])
    assert len(group["params"]) == len(list(encoder.parameters()))


def test_no_weight_decay_on_norms_biases_and_logit_scale_on_request():
    encoder = build_encoder(ModelSpec("tiny-vit", "none"))
    opt = build_optimizer([encoder], 1e-3, 0.01, decay_all=False)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert any(p is encoder.logit_scale for p in no_decay["params"])
    assert all(p.ndim >= 2 for p in decay["params"])
    assert len(build_optimizer([encoder], 1e-3, 0.01, decay_all=True).param_groups) == 1


def test_log_interval_counts_optimiser_steps():
    # 10 micro-batches, 2 per step, a log every 2 steps: after micro-batches 4 and 8, and the epoch's last
    assert [i for i in range(10) if log_due(i, 10, 2, 2)] == [3, 7, 9]
    assert [i for i in range(5) if log_due(i, 5, 1, 2)] == [1, 3, 4]


def test_empty_scaler_state_is_a_fresh_scale():
    """A bf16/CPU run's disabled scaler saves {}; resumed where fp16 enables the scaler, it starts afresh."""
    enabled = torch.amp.GradScaler("cpu", enabled=True)
    with pytest.raises(RuntimeError, match="empty"):
        torch.amp.GradScaler("cpu", enabled=True).load_state_dict({})
    load_scaler_state(enabled, {})
    assert enabled.get_scale() == 2.0 ** 16
    saved = torch.amp.GradScaler("cpu", enabled=True, init_scale=8.0)
    load_scaler_state(enabled, saved.state_dict())
    assert enabled.get_scale() == 8.0
    load_scaler_state(torch.amp.GradScaler("cpu", enabled=False), saved.state_dict())  # and the other way round


def test_no_sync_reaches_ddp_through_torch_compile(tmp_path):
    """Under --compile the DDP module hides in the compiled wrapper's _orig_mod: micro-batches that do not end an
    optimiser step must still skip the gradient all-reduce."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        ddp = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(2, 2))
        for model in (ddp, torch.compile(ddp)):
            with sync_context(model, last_of_step=False):
                assert ddp.require_backward_grad_sync is False
            with sync_context(model, last_of_step=True):
                assert ddp.require_backward_grad_sync is True
    finally:
        dist.destroy_process_group()


def test_micro_batch_divisor():
    # 10 micro-batches with accum 4: steps of 4, 4 and a last one of 2
    assert [micro_batches_in_step(i, 10, 4) for i in range(10)] == [4] * 8 + [2] * 2
    assert [micro_batches_in_step(i, 3, 1) for i in range(3)] == [1, 1, 1]


# --------------------------------------------------------------------------------------------------------------
# runs on the synthetic data


def weights(path: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(path)["model"]


@pytest.fixture
def one_step_epochs(monkeypatch):
    """Epochs of one optimiser step (each epoch's first batch), for tests of what happens around the training."""
    real = PairBatchSampler.batches
    monkeypatch.setattr(PairBatchSampler, "batches", lambda self, epoch, start=0: itertools.islice(
        real(self, epoch, start), 1))


def test_resume_equals_uninterrupted_run(synthetic_tiny, tmp_path):
    full = train(tiny_config(synthetic_tiny, tmp_path / "full", epochs=2, random_erasing=True, sharpen=True))
    part = train(tiny_config(synthetic_tiny, tmp_path / "part", epochs=2, random_erasing=True, sharpen=True,
                             stop_after=1))
    assert read_checkpoint(part / "last.pt")["epoch"] == 1
    resumed = train(tiny_config(synthetic_tiny, tmp_path / "elsewhere", resume=part / "last.pt"))
    assert resumed == part
    a, b = weights(full / "last.pt"), weights(part / "last.pt")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    logs = [[json.loads(x) for x in (d / "log.jsonl").read_text().splitlines()] for d in (full, part)]
    assert [r["train_loss"] for r in logs[0]] == [r["train_loss"] for r in logs[1]]
    assert [r["mAP"] for r in logs[0]] == [r["mAP"] for r in logs[1]]


def test_existing_run_needs_resume_or_overwrite(synthetic_tiny, tmp_path, one_step_epochs):
    cfg = tiny_config(synthetic_tiny, tmp_path, epochs=1, validation="none")
    train(cfg)
    with pytest.raises(UserError, match="already holds a run.*--resume"):
        train(cfg)
    train(dataclasses.replace(cfg, overwrite=True))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_runs_on_cpu(synthetic_tiny, tmp_path, precision):
    run_dir = train(tiny_config(synthetic_tiny, tmp_path, epochs=1, precision=precision, grad_accum=2,
                                validation="fold", fold=2, eval_precision="fp32"))
    record = json.loads((run_dir / "log.jsonl").read_text().splitlines()[-1])
    assert math.isfinite(record["train_loss"]) and 0 <= record["mAP"] <= 1
    # eval_precision fp32: the logged validation is evaluate.py's fp32 scoring of the same weights
    from clipreid.evaluation import evaluate
    from evaluate import Config as EvalConfig

    report = evaluate(EvalConfig(checkpoints=(run_dir,), data_dir=synthetic_tiny, split="fold", fold=2,
                                 rerank=("none",), precision="fp32", device="cpu", num_workers=0,
                                 output_dir=tmp_path / "eval", ranked_lists=0, progress=False))
    assert report.rows[0].scores["mAP"] == pytest.approx(record["mAP"], abs=1e-6)


def test_logged_lr_is_the_lr_of_the_last_step(synthetic_tiny, tmp_path):
    """The log's lr is the one the epoch's last optimiser step used, not the scheduler's next one."""
    cfg = tiny_config(synthetic_tiny, tmp_path, epochs=2, warmup_epochs=0.0, validation="none", lr=1e-3,
                      lr_end=1e-4)
    run_dir = train(cfg)
    n = len(PairBatchSampler(load_split(synthetic_tiny, "none").train_players, cfg.batch_size))
    log = [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines()]
    kw = dict(total=2 * n, warmup=0, schedule="polynomial", lr=1e-3, lr_end=1e-4, power=2.0)
    assert [r["lr"] for r in log] == pytest.approx([1e-3 * lr_factor(n - 1, **kw), 1e-3 * lr_factor(2 * n - 1, **kw)])
    assert log[-1]["lr"] > 1e-4  # the next step's lr would be lr_end itself


def test_checkpoints_say_how_their_weights_were_chosen(synthetic_tiny, tmp_path, monkeypatch, one_step_epochs):
    """best.pt is written before last.pt; both record the selection and its split; a fold run records the
    sequences it held out."""
    import clipreid.trainer as trainer

    written = []
    real = trainer.save_checkpoint
    monkeypatch.setattr(trainer, "save_checkpoint", lambda path, state: written.append(path.name) or real(path, state))
    run_dir = train(tiny_config(synthetic_tiny, tmp_path, epochs=1, validation="fold", fold=1,
                                val_rerank=("k_reciprocal",)))
    assert written == ["best.pt", "last.pt"]
    best, last = read_checkpoint(run_dir / "best.pt"), read_checkpoint(run_dir / "last.pt")
    assert best["selection"] == {"weights": "best", "epoch": 1, "metric": "mAP", "validation": "fold", "fold": 1}
    assert last["selection"]["weights"] == "last" and last["selection"]["metric"] == "last epoch"
    import pandas as pd

    df = pd.read_csv(synthetic_tiny / "train_df.csv")
    expected = sorted(str(g) for g in df[df.fold == 1].game.unique())
    assert best["held_out"] == last["held_out"] == {"fold": 1, "n_folds": df.fold.nunique(), "groups": expected}
    # --val-rerank: the epoch's re-ranked validation is logged, equal to evaluate.py's for the same weights
    from clipreid.evaluation import evaluate
    from evaluate import Config as EvalConfig

    report = evaluate(EvalConfig(checkpoints=(run_dir,), data_dir=synthetic_tiny, split="fold", fold=1,
                                 rerank=("none", "k_reciprocal"), device="cpu", num_workers=0,
                                 output_dir=tmp_path / "eval", ranked_lists=0, progress=False))
    raw, reranked = (r.scores for r in report.rows)
    assert last["metrics"]["mAP"] == pytest.approx(raw["mAP"], abs=1e-6)
    assert last["metrics"]["mAP_k_reciprocal"] == pytest.approx(reranked["mAP"], abs=1e-6)
    assert last["metrics"]["rank1_k_reciprocal"] == pytest.approx(reranked["rank1"], abs=1e-6)
    assert "warning" not in report.title  # last.pt of a fold-1 run on fold 1: nothing to warn about


def test_channels_last_trains_a_convnet_to_the_same_loss(synthetic_tiny, tmp_path):
    """channels_last (for convolutional backbones) changes the memory layout, not the numbers."""
    runs = [train(tiny_config(synthetic_tiny, tmp_path / str(cl), model="resnet18", img_size=(64, 32), epochs=1,
                              lr=1e-3, validation="none", channels_last=cl)) for cl in (False, True)]
    losses = [json.loads((d / "log.jsonl").read_text().splitlines()[-1])["train_loss"] for d in runs]
    # Float reorderings of the channels-last kernels grow over an epoch of training (0.34% on the current synthetic
    # data); a layout bug would change the loss by far more than 1%.
    assert math.isfinite(losses[0]) and losses[1] == pytest.approx(losses[0], rel=1e-2)


def test_checkpoint_round_trip_weights_only(synthetic_tiny, tmp_path, one_step_epochs):
    run_dir = train(tiny_config(synthetic_tiny, tmp_path, epochs=1))
    state = read_checkpoint(run_dir / "best.pt")
    assert set(state) >= {"model", "model_spec", "config", "epoch", "metrics"}
    assert "optimizer" not in state  # best.pt holds weights only
    encoder = load_encoder(run_dir / "best.pt")
    torch.manual_seed(0)
    x = torch.randn(2, 3, 128, 64)
    reference = build_encoder(ModelSpec("tiny-vit", "none"))
    reference.load_state_dict(state["model"], strict=True)
    reference.eval()
    torch.testing.assert_close(encoder(x), reference(x))
    # a pickle holding code is refused by weights_only loading, with a one-line error
    torch.save({"model": {}, "model_spec": {}, "evil": Config()}, tmp_path / "evil.pt")
    with pytest.raises(UserError, match="cannot read checkpoint"):
        read_checkpoint(tmp_path / "evil.pt")
    # strict keys: a checkpoint missing a weight is rejected
    state["model"].pop("logit_scale")
    torch.save(state, tmp_path / "partial.pt")
    with pytest.raises(UserError, match="does not match.*missing"):
        load_encoder(tmp_path / "partial.pt")


def test_nan_loss_stops_clearly_and_keeps_last_checkpoint(synthetic_tiny, tmp_path, monkeypatch, one_step_epochs):
    run_dir = train(tiny_config(synthetic_tiny, tmp_path, epochs=2, stop_after=1))
    before = weights(run_dir / "last.pt")
    import clipreid.loss

    monkeypatch.setattr(clipreid.loss, "info_nce", lambda *a, **k: torch.tensor(float("nan"), requires_grad=True))
    with pytest.raises(UserError, match="diverged.*nan.*epoch 2"):
        train(tiny_config(synthetic_tiny, tmp_path, resume=run_dir / "last.pt"))
    after = weights(run_dir / "last.pt")
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_fold_and_none_validation_splits(synthetic_small):
    fold = load_split(synthetic_small, "fold", 3)
    test = load_split(synthetic_small, "test")
    none = load_split(synthetic_small, "none")
    assert len(none.train_paths) == len(fold.train_paths) + len(fold.query_paths) + len(fold.gallery_paths)
    assert not none.query_paths and test.query_paths
    with pytest.raises(UserError, match="fold 42 does not exist"):
        load_split(synthetic_small, "fold", 42)


def test_short_run_learns(synthetic_data, tmp_path):
    """Two CPU epochs of the tiny ViT must clearly beat the untrained model on the synthetic test split."""
    run_dir = train(tiny_config(synthetic_data, tmp_path, epochs=2, batch_size=16, zero_shot=True))
    log = [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == list(range(3))
    assert log[-1]["train_loss"] < log[1]["train_loss"]
    best = max(r["mAP"] for r in log[1:])
    assert best > log[0]["mAP"] + 0.05, [round(r["mAP"], 3) for r in log]
    assert (run_dir / "curves.png").stat().st_size > 0


# --------------------------------------------------------------------------------------------------------------
# train.py as a user runs it


def run_script(*args: str, cwd: Path, torchrun: bool = False) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"] \
        if torchrun else [sys.executable]
    return subprocess.run([*launcher, str(ROOT / "train.py"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


TINY_FLAGS = ("--model", "tiny-vit", "--pretrained", "none", "--no-progress", "--device", "cpu", "--batch-size", "8",
              "--lr", "2e-3", "--num-workers", "0")


def test_train_script_and_torchrun_ddp(synthetic_tiny, tmp_path):
    """train.py from the shell, single process and as 2 gloo processes under torchrun (global batch of 16 pairs)."""
    single = run_script("--data-dir", str(synthetic_tiny), "--output-dir", "out", "--epochs", "1", *TINY_FLAGS,
                        "--batch-size", "16", cwd=tmp_path)
    assert single.returncode == 0, single.stderr[-3000:]
    assert "epoch 0 (before training)" in single.stdout and "epoch 1/1" in single.stdout
    ddp = run_script("--data-dir", str(synthetic_tiny), "--output-dir", "ddp", "--epochs", "1", *TINY_FLAGS,
                     cwd=tmp_path, torchrun=True)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert "device cpu x2" in ddp.stdout
    assert ddp.stdout.count("epoch 1/1") == 1  # only rank 0 reports
    assert ddp.stdout.count("run folder:") == 1 and single.stdout.count("run folder:") == 1
    run_dir = tmp_path / "ddp" / "tiny-vit_test_seed1"
    assert {p.name for p in run_dir.iterdir()} >= {"best.pt", "last.pt", "log.jsonl", "curves.png",
                                                   "train_config.json"}
    log = [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines()]
    assert math.isfinite(log[-1]["train_loss"])


def test_train_script_errors_are_one_line(synthetic_tiny, tmp_path):
    r = run_script("--data-dir", str(tmp_path / "nowhere"), *TINY_FLAGS, cwd=tmp_path)
    assert r.returncode == 1 and r.stderr.startswith("error:") and "preprocess_data.py" in r.stderr
    assert "Traceback" not in r.stderr
    r = run_script("--data-dir", str(synthetic_tiny), "--model", "ViT-L-14-quickgelo", cwd=tmp_path)
    assert r.returncode == 1 and "did you mean ViT-L-14-quickgelu" in r.stderr and "Traceback" not in r.stderr
