"""Checks that need a CUDA GPU (skipped elsewhere): the GPU paths give the CPU's results and use the fast kernels.

    python -m pytest -q tests/test_gpu.py     # on a GPU machine, with the benchmarks of benchmarks/gpu.sh
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from clipreid.features import extract_features
from clipreid.loss import ReIDLoss
from clipreid.metrics import compute_scores
from clipreid.model import ModelSpec, build_encoder
from clipreid.rerank import hard_k_reciprocal, k_reciprocal, k_reciprocal_features, squared_distances
from clipreid.trainer import build_optimizer, forward_backward, optimizer_update, train
from clipreid.transforms import AugmentConfig
from tests.test_rerank import clustered, matrices
from tests.test_train import tiny_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

FUSED_SDPA = ("aten::_scaled_dot_product_flash_attention", "aten::_scaled_dot_product_efficient_attention",
              "aten::_scaled_dot_product_cudnn_attention")


def _mostly_equal(gpu: torch.Tensor, cpu: np.ndarray, q_ids: np.ndarray, g_ids: np.ndarray) -> None:
    """Distances computed on each device round differently, so a near-tie at a k boundary may flip a neighbour
    set and move a few entries: nearly all entries must agree, and the mAP to 1e-3."""
    gpu = gpu.cpu().numpy()
    assert np.mean(np.abs(gpu - cpu) < 1e-5) > 0.99
    assert compute_scores(gpu, q_ids, g_ids)["mAP"] == pytest.approx(compute_scores(cpu, q_ids, g_ids)["mAP"],
                                                                      abs=1e-3)


def test_re_ranking_on_the_gpu_matches_the_cpu():
    qf, gf, q_ids, g_ids = clustered(60, 400, dim=32)
    cpu = k_reciprocal(*matrices(qf, gf))
    gpu = k_reciprocal(*(torch.from_numpy(m).cuda() for m in matrices(qf, gf)))
    assert gpu.is_cuda
    # the same distance matrices in: the same neighbours, sums in another order
    np.testing.assert_allclose(gpu.cpu().numpy(), cpu, atol=2e-6)
    _mostly_equal(k_reciprocal_features(torch.from_numpy(qf).cuda(), torch.from_numpy(gf).cuda()), cpu, q_ids, g_ids)
    _mostly_equal(hard_k_reciprocal(torch.from_numpy(qf).cuda(), torch.from_numpy(gf).cuda()),
                  hard_k_reciprocal(qf, gf), q_ids, g_ids)


def test_distances_on_the_gpu_match_the_cpu():
    qf, gf, _, _ = clustered(30, 200, dim=64)
    np.testing.assert_allclose(squared_distances(torch.from_numpy(qf).cuda(), torch.from_numpy(gf).cuda())
                               .cpu().numpy(), squared_distances(qf, gf), atol=1e-5)


@pytest.mark.parametrize("train_mode", [True, False])
def test_bf16_attention_uses_a_fused_kernel(train_mode):
    encoder = build_encoder(ModelSpec("ViT-B-16-quickgelu", "none")).cuda().train(train_mode)
    x = torch.randn(4, 3, 224, 224, device="cuda")
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        with torch.set_grad_enabled(train_mode), torch.autocast("cuda", dtype=torch.bfloat16):
            y = encoder(x)
        if train_mode:
            y.float().sum().backward()
        torch.cuda.synchronize()
    ops = {e.key for e in prof.key_averages()}
    assert any(op in ops for op in FUSED_SDPA), sorted(o for o in ops if "attention" in o)
    assert "aten::_scaled_dot_product_attention_math" not in ops


def test_fast_blocks_match_open_clip_in_bf16():
    torch.manual_seed(0)
    stock = build_encoder(ModelSpec("ViT-B-16-quickgelu", "none"), fast_blocks=False).cuda().eval()
    ours = build_encoder(ModelSpec("ViT-B-16-quickgelu", "none")).cuda().eval()
    ours.load_state_dict(stock.state_dict())
    x = torch.randn(8, 3, 224, 224, device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        a, b = stock(x).float(), ours(x).float()
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
    assert cos.min().item() > 0.999


def test_features_on_the_gpu_match_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # the patch convolution in true fp32
    torch.manual_seed(0)
    encoder = build_encoder(ModelSpec("tiny-vit", "none"))
    images = torch.randint(0, 256, (70, 3, *encoder.image_size), dtype=torch.uint8)
    cpu = extract_features(encoder, images, batch_size=16, progress=False)
    fp32 = extract_features(encoder.cuda(), images, batch_size=16, device="cuda", progress=False)
    bf16 = extract_features(encoder, images, batch_size=16, device="cuda", dtype=torch.bfloat16, progress=False)
    assert fp32.device.type == "cpu" and fp32.shape == cpu.shape
    torch.testing.assert_close(fp32, cpu, atol=1e-4, rtol=1e-4)
    assert torch.nn.functional.cosine_similarity(bf16, cpu).min().item() > 0.99


def test_scoring_defaults_to_fp32_and_fp16_scales_from_2_to_the_10_on_the_gpu(monkeypatch):
    """embed() with its default precision on a GPU gives the CPU's fp32 features; an fp16 run's scaler starts at
    the original's 2**10."""
    import evaluate
    from clipreid.features import embed
    from clipreid.runtime import resolve_precision
    from clipreid.trainer import grad_scaler

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    torch.manual_seed(0)
    encoder = build_encoder(ModelSpec("tiny-vit", "none"))
    images = [np.random.default_rng(i).integers(0, 256, (90, 40, 3), dtype=np.uint8) for i in range(6)]
    cpu, _ = embed(encoder, images, progress=False)
    gpu, _ = embed(encoder, images, device="cuda", progress=False)
    torch.testing.assert_close(gpu, cpu, atol=1e-4, rtol=1e-4)
    assert resolve_precision(evaluate.Config().precision, torch.device("cuda")) == torch.float32
    scaler = grad_scaler(torch.float16, torch.device("cuda"))
    assert scaler.is_enabled() and scaler.scale(torch.ones((), device="cuda")).item() == 2.0**10


@pytest.mark.parametrize("compile_model", [False, True])
def test_training_on_the_gpu(synthetic_small, tmp_path, compile_model):
    run_dir = train(tiny_config(synthetic_small, tmp_path, epochs=2, device="cuda", precision="bf16",
                                compile=compile_model))
    log = [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["train_loss"]) for r in log) and 0 <= log[-1]["mAP"] <= 1


def test_a_training_step_never_waits_for_the_gpu():
    """No host-device synchronisation inside a step (augmentation, bf16 forward, loss, backward, clipping, fused
    AdamW), so the host queues the next step while the GPU still runs this one."""
    encoder = build_encoder(ModelSpec("tiny-vit", "none")).cuda()
    loss_fn = ReIDLoss(("infonce", "triplet")).cuda()
    opt = build_optimizer([encoder], 1e-3, 0.01, fused=True)
    batch = torch.randint(0, 256, (16, 3, *encoder.image_size), dtype=torch.uint8).pin_memory()
    aug = AugmentConfig(sharpen=True, random_erasing=True)
    labels = torch.arange(8, device="cuda")

    def step(i: int) -> None:
        x = batch.to("cuda", non_blocking=True)
        forward_backward(encoder, encoder, loss_fn, x[:8], x[8:], labels, aug, torch.bfloat16,
                         torch.Generator().manual_seed(i))
        optimizer_update(opt, encoder, clip_grad=100.0)

    step(0)  # first use: optimiser state, cached normalisation constants, cuBLAS handles
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for i in range(1, 3):
            step(i)
    finally:
        torch.cuda.set_sync_debug_mode("default")
