"""clipreid.blocks: the same function and parameters as open_clip's attention and QuickGELU MLP, fewer passes."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from clipreid.blocks import QuickGELUMLP, SelfAttention, speed_up_blocks
from clipreid.model import ModelSpec, build_encoder


def _pair(spec: ModelSpec) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    stock = build_encoder(spec, fast_blocks=False)
    ours = build_encoder(spec)
    ours.load_state_dict(stock.state_dict(), strict=True)  # same keys: stock weights load unchanged
    return stock, ours


def _ops(fn) -> set[str]:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key for e in prof.key_averages()}


@pytest.mark.parametrize("name, size, quick_gelu", [
    ("tiny-vit", (128, 64), False), ("ViT-B-32", (64, 64), False), ("ViT-B-32-quickgelu", (64, 64), True)])
def test_same_outputs_gradients_and_parameters(name, size, quick_gelu):
    stock, ours = _pair(ModelSpec(name, "none", img_size=size))
    blocks = len(ours.backbone.transformer.resblocks)
    assert sum(isinstance(m, SelfAttention) for m in ours.modules()) == blocks
    assert not any(isinstance(m, nn.MultiheadAttention) for m in ours.modules())
    assert sum(isinstance(m, QuickGELUMLP) for m in ours.modules()) == (blocks if quick_gelu else 0)
    assert [n for n, _ in stock.named_parameters()] == [n for n, _ in ours.named_parameters()]  # optimiser order
    x = torch.randn(3, 3, *size)
    for train in (True, False):
        stock.train(train)
        ours.train(train)
        torch.testing.assert_close(ours(x), stock(x), rtol=1e-5, atol=1e-5)
    # gradients in float64, where the two must agree far below float32 rounding
    stock.double().train()
    ours.double().train()
    stock(x.double()).square().sum().backward()
    ours(x.double()).square().sum().backward()
    for (n, a), (_, b) in zip(stock.named_parameters(), ours.named_parameters(), strict=True):
        if a.grad is not None:
            assert (b.grad - a.grad).norm() <= 1e-8 * a.grad.norm(), n


def test_masks_match_multihead_attention():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, batch_first=True)
    ours = SelfAttention(mha)
    x = torch.randn(2, 5, 16)
    causal = torch.triu(torch.ones(5, 5, dtype=torch.bool), 1)  # True = masked out, as nn.MultiheadAttention
    additive = torch.zeros(5, 5).masked_fill(causal, float("-inf"))
    per_head = additive.expand(2 * 4, 5, 5)
    for mask in (None, causal, additive, per_head):
        want = mha(x, x, x, need_weights=False, attn_mask=mask)[0]
        torch.testing.assert_close(ours(x, x, x, need_weights=False, attn_mask=mask)[0], want)


def test_unsupported_calls_are_refused():
    ours = SelfAttention(nn.MultiheadAttention(16, 4, batch_first=True))
    x, y = torch.randn(2, 5, 16), torch.randn(2, 5, 16)
    with pytest.raises(ValueError, match="self-attention only"):
        ours(x, y, y)
    with pytest.raises(ValueError, match="no attention weights"):
        ours(x, x, x, need_weights=True)
    with pytest.raises(ValueError, match="batch-first"):
        SelfAttention(nn.MultiheadAttention(16, 4))  # sequence-first
    cross = nn.MultiheadAttention(16, 4, kdim=8, vdim=8, batch_first=True)
    assert speed_up_blocks(nn.Sequential(cross)) == {"attention": 0, "mlp": 0}  # not an open_clip block: left alone


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_training_and_inference_run_through_sdpa(dtype):
    """The deliverable "PyTorch scaled-dot-product attention": in training (with backward) and in inference, and
    never the sequence-first multi-head attention path."""
    encoder = build_encoder(ModelSpec("tiny-vit", "none"))
    x = torch.randn(4, 3, *encoder.image_size)

    def train_step() -> None:
        encoder.train()
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            y = encoder(x)
        y.float().sum().backward()

    @torch.no_grad()
    def inference() -> None:
        encoder.eval()
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            encoder(x)

    for step in (train_step, inference):
        ops = _ops(step)
        assert "aten::scaled_dot_product_attention" in ops, step.__name__
        assert "aten::_native_multi_head_attention" not in ops and "aten::bmm" not in ops, step.__name__


def test_timm_vits_use_sdpa_too():
    encoder = build_encoder(ModelSpec("vit_tiny_patch16_224", "none", img_size=(64, 32)))
    ops = _ops(lambda: encoder(torch.randn(2, 3, 64, 32)).sum().backward())
    assert "aten::scaled_dot_product_attention" in ops


def test_quick_gelu_mlp_matches_the_three_module_mlp_in_bf16():
    from open_clip.transformer import QuickGELU

    torch.manual_seed(0)
    stock = nn.Sequential()
    stock.add_module("c_fc", nn.Linear(32, 128))
    stock.add_module("gelu", QuickGELU())
    stock.add_module("c_proj", nn.Linear(128, 32))
    ours = QuickGELUMLP(stock.c_fc, stock.c_proj)
    x = torch.randn(3, 7, 32)
    torch.testing.assert_close(ours(x), stock(x), rtol=1e-5, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a, b = ours(x), stock(x)
    assert a.dtype == b.dtype == torch.bfloat16
    assert (a.float() - b.float()).norm() / b.float().norm() < 1e-2  # bf16 rounding


def test_the_swaps_can_be_chosen():
    encoder = build_encoder(ModelSpec("ViT-B-32-quickgelu", "none", img_size=(64, 64)), fast_blocks=False)
    assert speed_up_blocks(encoder.backbone, attention=False) == {"attention": 0, "mlp": 12}
    assert speed_up_blocks(encoder.backbone, mlp=False) == {"attention": 12, "mlp": 0}
    assert speed_up_blocks(encoder.backbone) == {"attention": 0, "mlp": 0}  # already swapped: nothing left


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        encoder = build_encoder(ModelSpec("ViT-B-32-quickgelu", "none", img_size=(64, 64),
                                          grad_checkpointing=checkpointing)).double().train()
        torch.manual_seed(1)
        encoder(torch.randn(2, 3, 64, 64, dtype=torch.float64)).square().sum().backward()
        grads.append([p.grad for p in encoder.parameters()])
    for a, b in zip(*grads, strict=True):
        assert (a is None) == (b is None)  # the logit scale takes no part in the forward
        assert a is None or (a - b).norm() <= 1e-10 * a.norm()
