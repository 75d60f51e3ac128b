"""Faster drop-ins for the modules of open_clip's transformer blocks: same parameters, same function.

Both take over the replaced module's own parameters (same names, same order), so open_clip weights, clipreid
checkpoints and optimiser state load unchanged, and the network computes the same function up to rounding.

- ``SelfAttention`` replaces ``nn.MultiheadAttention``. In training, and in inference under autocast, that
  module goes through ``F.multi_head_attention_forward``, which works sequence-first: it transposes the
  batch-first input, makes a contiguous copy of the packed q/k/v projection and permutes the output back, extra
  passes over the activations in forward and again in backward. ``SelfAttention`` computes batch-first, with
  views only, around one ``scaled_dot_product_attention`` call (flash kernels on GPUs).
- ``QuickGELUMLP`` replaces the ``c_fc -> QuickGELU -> c_proj`` MLP of OpenAI's CLIP models. QuickGELU,
  ``x * sigmoid(1.702 x)``, runs as three kernels forward and five backward over the widest activation of the
  network. Since ``x * sigmoid(1.702 x) = silu(1.702 x) / 1.702``, the two scale factors go into the matrix
  products' own scaling (``addmm``'s alpha, and the bias) and the activation is one fused ``silu`` kernel each way.

``benchmarks/roofline.py`` counts the bytes each saves; ``tests/test_blocks.py`` checks outputs and gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SelfAttention(nn.Module):
    """Batch-first multi-head self-attention with the parameters of an ``nn.MultiheadAttention`` it replaces.

    Called like the module it replaces (``attn(x, x, x, need_weights=False, attn_mask=mask)`` returns
    ``(output, None)``); only self-attention without attention weights is supported, which is how open_clip's
    vision blocks call it.
    """

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        if not supports(mha):
            raise ValueError("SelfAttention replaces only batch-first nn.MultiheadAttention modules with packed q/k/v "
                             "projections and no bias_k/bias_v")
        self.embed_dim = mha.embed_dim
        self.num_heads = mha.num_heads
        self.dropout = float(mha.dropout)
        self.batch_first = True
        # registration order = nn.MultiheadAttention's, so parameters() and optimiser state line up
        self.in_proj_weight = mha.in_proj_weight
        self.in_proj_bias = mha.in_proj_bias
        self.out_proj = mha.out_proj

    def forward(self, query: torch.Tensor, key: torch.Tensor | None = None, value: torch.Tensor | None = None,
                need_weights: bool = False, attn_mask: torch.Tensor | None = None,
                key_padding_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, None]:
        if need_weights or key_padding_mask is not None:
            raise ValueError("SelfAttention computes no attention weights and takes no key_padding_mask")
        if (key is not None and key is not query) or (value is not None and value is not query):
            raise ValueError("SelfAttention is self-attention only: key and value must be the query")
        b, n, e = query.shape
        h = self.num_heads
        qkv = F.linear(query, self.in_proj_weight, self.in_proj_bias).view(b, n, 3, h, e // h).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (b, h, n, d), views of the projection
        mask = None
        if attn_mask is not None:
            # nn.MultiheadAttention: True = masked out; SDPA: True = may attend. Float masks are additive in both.
            mask = ~attn_mask if attn_mask.dtype == torch.bool else attn_mask.to(q.dtype)
            if mask.dim() == 3:  # (b * h, n, n) as nn.MultiheadAttention takes it
                mask = mask.view(b, h, n, n)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(x.transpose(1, 2).reshape(b, n, e)), None

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, dropout={self.dropout}"


QUICK_GELU_SCALE = 1.702


class QuickGELUMLP(nn.Module):
    """``c_proj(quick_gelu(c_fc(x)))`` with the ``c_fc`` and ``c_proj`` linear layers of the MLP it replaces."""

    def __init__(self, c_fc: nn.Linear, c_proj: nn.Linear) -> None:
        super().__init__()
        self.c_fc = c_fc
        self.c_proj = c_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = QUICK_GELU_SCALE
        flat = x.reshape(-1, x.shape[-1])
        # s * (x W^T + b): the scale is applied by the matmul itself (alpha), the bias is a vector
        h = F.silu(torch.addmm(self.c_fc.bias * s, flat, self.c_fc.weight.t(), alpha=s))
        out = torch.addmm(self.c_proj.bias, h, self.c_proj.weight.t(), alpha=1 / s)
        return out.view(*x.shape[:-1], out.shape[-1])


def supports(mha: nn.Module) -> bool:
    """Whether ``mha`` is an ``nn.MultiheadAttention`` that ``SelfAttention`` can stand in for."""
    return (isinstance(mha, nn.MultiheadAttention) and mha.batch_first and mha._qkv_same_embed_dim
            and mha.in_proj_weight is not None and mha.bias_k is None and mha.bias_v is None
            and not mha.add_zero_attn)


def _quick_gelu_mlp(mlp: nn.Module) -> tuple[nn.Linear, nn.Linear] | None:
    """(c_fc, c_proj) of an open_clip ``c_fc -> QuickGELU -> c_proj`` MLP with biases, else None."""
    from open_clip.transformer import QuickGELU

    if not isinstance(mlp, nn.Sequential) or [n for n, _ in mlp.named_children()] != ["c_fc", "gelu", "c_proj"]:
        return None
    c_fc, act, c_proj = mlp.c_fc, mlp.gelu, mlp.c_proj
    if type(act) is not QuickGELU or not all(isinstance(m, nn.Linear) and m.bias is not None for m in (c_fc, c_proj)):
        return None
    return c_fc, c_proj


def speed_up_blocks(module: nn.Module, *, attention: bool = True, mlp: bool = True) -> dict[str, int]:
    """Swap, in place, the self-attention (``attention``) and QuickGELU MLPs (``mlp``) of every open_clip
    transformer block in ``module`` for ``SelfAttention`` and ``QuickGELUMLP``.

    Cross-attention blocks, GELU MLPs (``F.gelu`` is already one kernel) and modules of other shapes are left
    alone. Returns how many of each were changed.
    """
    from open_clip.transformer import ResidualAttentionBlock

    changed = {"attention": 0, "mlp": 0}
    for block in module.modules():
        if not isinstance(block, ResidualAttentionBlock):
            continue
        if attention and not hasattr(block, "ln_1_kv") and supports(block.attn):
            block.attn = SelfAttention(block.attn)
            changed["attention"] += 1
        parts = _quick_gelu_mlp(block.mlp) if mlp else None
        if parts is not None:
            block.mlp = QuickGELUMLP(*parts)
            changed["mlp"] += 1
    return changed
