"""Run under torchrun (gloo, CPU): each rank computes the all-gathered loss on its half of a fixed batch.

Writes the loss and every parameter gradient (after DDP's averaging) to <out>/rank<r>.pt.
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from clipreid.loss import ReIDLoss  # noqa: E402
from clipreid.model import ModelSpec, build_encoder  # noqa: E402


def main() -> None:
    out = Path(sys.argv[1])
    losses = tuple(sys.argv[2].split(","))
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    encoder = build_encoder(ModelSpec("tiny-vit", "none"))
    loss_fn = ReIDLoss(losses, feature_dim=encoder.feature_dim, num_classes=8)
    g = torch.Generator().manual_seed(1)
    anchors = torch.randn(8, 3, 128, 64, generator=g)
    positives = anchors + 0.5 * torch.randn(8, 3, 128, 64, generator=g)
    labels = torch.arange(8)
    n = 8 // world
    part = slice(rank * n, (rank + 1) * n)
    model = nn.parallel.DistributedDataParallel(encoder)
    features = model(torch.cat([anchors[part], positives[part]]))
    fa, fp = features.chunk(2)
    loss, _ = loss_fn(fa, fp, labels[part], encoder.scale())
    loss.backward()
    grads = {k: p.grad.clone() for k, p in encoder.named_parameters()}
    grads.update({f"loss.{k}": p.grad.clone() for k, p in loss_fn.named_parameters()})
    # the classifier is outside DDP: every rank computes the same global loss, so its gradient is already global
    torch.save({"loss": loss.detach(), "grads": grads}, out / f"rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
