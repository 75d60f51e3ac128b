"""Run under torchrun (gloo, CPU): each rank trains one micro-batch on its half of a fixed batch of uint8 pairs
with the trainer's own ``forward_backward`` (augmentation drawn for the global batch, all-gathered loss).

Usage: ddp_loss_worker.py OUT CASE..., each CASE LOSSES:AUGMENT with LOSSES comma-separated and AUGMENT "on" (flip,
sharpen and random erasing) or "off"; the cases share one launch (the processes' start is most of the time). Writes
each case's loss and every parameter gradient (after DDP's averaging) to OUT/<case_dir(CASE)>/rank<r>.pt.
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from clipreid.loss import ReIDLoss  # noqa: E402
from clipreid.model import ModelSpec, ReIDEncoder, build_encoder  # noqa: E402
from clipreid.trainer import forward_backward  # noqa: E402
from clipreid.transforms import AugmentConfig  # noqa: E402

PAIRS = 8
STEP_SEED = 7


def setup(losses: str, augment: str) -> tuple[ReIDEncoder, ReIDLoss, AugmentConfig, tuple[torch.Tensor, ...]]:
    """The model, loss, augmentation and the whole batch (anchors, positives, labels), the same in every process."""
    torch.manual_seed(0)
    encoder = build_encoder(ModelSpec("tiny-vit", "none"))
    loss_fn = ReIDLoss(tuple(losses.split(",")), feature_dim=encoder.feature_dim, num_classes=PAIRS)
    on = augment == "on"
    aug = AugmentConfig(flip=on, sharpen=on, random_erasing=on)
    g = torch.Generator().manual_seed(1)
    anchors = torch.randint(0, 256, (PAIRS, 3, 128, 64), generator=g, dtype=torch.uint8)
    noise = torch.randint(-40, 41, anchors.shape, generator=g)
    positives = (anchors.int() + noise).clamp(0, 255).to(torch.uint8)
    return encoder, loss_fn, aug, (anchors, positives, torch.arange(PAIRS))


def case_dir(losses: str, augment: str) -> str:
    return f"{losses.replace(',', '+')}-{augment}"


def run_case(out: Path, losses: str, augment: str, rank: int, world: int) -> None:
    encoder, loss_fn, aug, (anchors, positives, labels) = setup(losses, augment)
    n = PAIRS // world
    part = slice(rank * n, (rank + 1) * n)
    model = nn.parallel.DistributedDataParallel(encoder)
    loss, _ = forward_backward(model, encoder, loss_fn, anchors[part], positives[part], labels[part], aug,
                               torch.float32, torch.Generator().manual_seed(STEP_SEED), rank=rank, world_size=world)
    grads = {k: p.grad.clone() for k, p in encoder.named_parameters()}
    grads.update({f"loss.{k}": p.grad.clone() for k, p in loss_fn.named_parameters()})
    # the classifier is outside DDP: every rank computes the same global loss, so its gradient is already global
    folder = out / case_dir(losses, augment)
    folder.mkdir(exist_ok=True)
    torch.save({"loss": loss.detach(), "grads": grads}, folder / f"rank{rank}.pt")


def main() -> None:
    out = Path(sys.argv[1])
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    for case in sys.argv[2:]:
        run_case(out, *case.split(":"), rank, world)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
