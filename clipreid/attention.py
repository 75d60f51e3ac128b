"""Self-attention through ``F.scaled_dot_product_attention`` (flash / memory-efficient kernels) for open_clip ViTs.

open_clip's default transformer block holds an ``nn.MultiheadAttention``. In training, and in inference under
autocast, that module goes through ``F.multi_head_attention_forward``, which works sequence-first: it transposes
the batch-first input, makes a contiguous copy of the packed q/k/v projection and permutes the output back, two
extra passes over the activations per layer in forward and again in backward. ``SelfAttention`` takes over the
module's own parameters (same names, same order, so open_clip weights, clipreid checkpoints and optimiser state
load unchanged) and computes the same function batch-first, with views only, around one SDPA call.
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


def supports(mha: nn.Module) -> bool:
    """Whether ``mha`` is an ``nn.MultiheadAttention`` that ``SelfAttention`` can stand in for."""
    return (isinstance(mha, nn.MultiheadAttention) and mha.batch_first and mha._qkv_same_embed_dim
            and mha.in_proj_weight is not None and mha.bias_k is None and mha.bias_v is None
            and not mha.add_zero_attn)


def use_sdpa_attention(module: nn.Module) -> int:
    """Swap the self-attention of every open_clip transformer block in ``module`` for ``SelfAttention``, in place.

    Cross-attention blocks and modules of other shapes are left alone. Returns the number of blocks changed.
    """
    from open_clip.transformer import ResidualAttentionBlock

    changed = 0
    for block in module.modules():
        if isinstance(block, ResidualAttentionBlock) and not hasattr(block, "ln_1_kv") and supports(block.attn):
            block.attn = SelfAttention(block.attn)
            changed += 1
    return changed
