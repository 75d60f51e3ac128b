"""Training losses on a batch of (anchor, positive) feature pairs, and their weighted sums.

- ``infonce``: symmetric InfoNCE (CLIP-ReIdent): mean of the cross-entropies of s·A·Pᵀ and s·P·Aᵀ over
  L2-normalised features, the diagonal as labels, label smoothing 0.1;
- ``id``: identity cross-entropy with a cosine classifier head (the 2023 paper's comparison);
- ``triplet``: batch-hard triplet loss over the 2B images (each player appears twice).

Under DistributedDataParallel every rank computes the loss of the *global* batch from features gathered from
all ranks with gradients flowing back (:func:`gather_with_grad`), so the InfoNCE negatives come from every rank
and N processes with B pairs each train exactly like one process with N·B pairs.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .errors import UserError

LOSSES = ("infonce", "id", "triplet")


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums the incoming gradients of every rank and returns this rank's slice.

    Written with all_reduce, which every backend (NCCL, gloo) supports, unlike reduce_scatter.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        world, rank = dist.get_world_size(), dist.get_rank()
        ctx.rank, ctx.n = rank, x.shape[0]
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from all ranks (rank order), differentiably; identity outside distributed runs.

    Every rank then computes the same global loss; the backward sums the gradient of every rank's copy, and
    DDP's averaging of parameter gradients divides by the world size again: the gradient of the global loss.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


def gather_labels(y: torch.Tensor) -> torch.Tensor:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return y
    parts = [torch.empty_like(y) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, y.contiguous())
    return torch.cat(parts)


def info_nce(anchors: torch.Tensor, positives: torch.Tensor, scale: torch.Tensor | float,
             label_smoothing: float = 0.1) -> torch.Tensor:
    """Symmetric InfoNCE of row-aligned pairs: pair i is the positive of pair i, every other pair a negative."""
    a = F.normalize(anchors.float(), dim=-1)
    p = F.normalize(positives.float(), dim=-1)
    logits = scale * a @ p.T
    target = torch.arange(len(a), device=a.device)
    return 0.5 * (F.cross_entropy(logits, target, label_smoothing=label_smoothing)
                  + F.cross_entropy(logits.T, target, label_smoothing=label_smoothing))


def batch_hard_triplet(features: torch.Tensor, labels: torch.Tensor, margin: float | None = 0.3) -> torch.Tensor:
    """Batch-hard triplet loss (Hermans et al. 2017) on L2-normalised features with Euclidean distances.

    For each image: its farthest positive and nearest negative; hinge with ``margin``, or soft-margin
    ``log(1 + exp(d_pos - d_neg))`` when ``margin`` is None. Images without a positive are left out.
    """
    f = F.normalize(features.float(), dim=-1)
    dist_mat = torch.cdist(f, f).clamp_min(1e-12)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(f), dtype=torch.bool, device=f.device)
    pos_mask, neg_mask = same & ~eye, ~same
    valid = pos_mask.any(1) & neg_mask.any(1)
    hardest_pos = dist_mat.masked_fill(~pos_mask, float("-inf")).amax(1)
    hardest_neg = dist_mat.masked_fill(~neg_mask, float("inf")).amin(1)
    # masked mean rather than gap[valid] or `if valid.any()`: both would wait for the GPU every step
    gap = torch.where(valid, hardest_pos - hardest_neg, torch.zeros_like(hardest_pos))
    per_image = F.softplus(gap) if margin is None else F.relu(gap + margin)
    return torch.where(valid, per_image, torch.zeros_like(per_image)).sum() / valid.sum().clamp_min(1)


class CosineClassifier(nn.Module):
    """Identity logits s·cos(f, w_c): a classifier head whose scale is the encoder's logit scale."""

    def __init__(self, feature_dim: int, num_classes: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_classes, feature_dim) * feature_dim ** -0.5)

    def forward(self, features: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
        return scale * F.normalize(features.float(), dim=-1) @ F.normalize(self.weight.float(), dim=-1).T


class ReIDLoss(nn.Module):
    """Weighted sum of the named losses; ``forward`` returns the total and each part (detached) for logging."""

    def __init__(self, names: tuple[str, ...] = ("infonce",), weights: tuple[float, ...] | None = None, *,
                 feature_dim: int = 0, num_classes: int = 0, label_smoothing: float = 0.1,
                 triplet_margin: float | None = 0.3):
        super().__init__()
        names = tuple(names)
        weights = tuple(weights) if weights else (1.0,) * len(names)
        unknown = [n for n in names if n not in LOSSES]
        if not names or unknown:
            raise UserError(f"unknown loss {unknown or names}; choose from {', '.join(LOSSES)}")
        if len(weights) != len(names):
            raise UserError(f"loss_weights has {len(weights)} values for {len(names)} losses {names}")
        self.names, self.weights = names, weights
        self.label_smoothing, self.triplet_margin = label_smoothing, triplet_margin
        self.classifier = CosineClassifier(feature_dim, num_classes) if "id" in names else None

    def forward(self, anchors: torch.Tensor, positives: torch.Tensor, labels: torch.Tensor,
                scale: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        anchors, positives = gather_with_grad(anchors), gather_with_grad(positives)
        labels = gather_labels(labels)
        parts: dict[str, torch.Tensor] = {}
        for name in self.names:
            if name == "infonce":
                parts[name] = info_nce(anchors, positives, scale, self.label_smoothing)
            elif name == "id":
                logits = self.classifier(torch.cat([anchors, positives]), scale)
                parts[name] = F.cross_entropy(logits, labels.repeat(2), label_smoothing=self.label_smoothing)
            else:
                parts[name] = batch_hard_triplet(torch.cat([anchors, positives]), labels.repeat(2),
                                                 self.triplet_margin)
        total = sum(w * parts[n] for n, w in zip(self.names, self.weights, strict=True))
        return total, {n: v.detach() for n, v in parts.items()}
