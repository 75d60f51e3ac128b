"""Stage 3: fine-tune an image encoder for re-identification (CLIP-ReIdent: ViT-L/14 with InfoNCE).

    python train.py                                              # the paper's recipe on data/data_reid
    python train.py --validation fold --fold 3                   # validate on GroupKFold fold 3
    python train.py --model tiny-vit --pretrained none --data-dir data/synthetic_reid --epochs 6   # CPU demo
    python train.py --config configs/clip_reident_2022.json      # a preset (configs/); later flags override it
    python train.py --config configs/eva02_l_448_2023.json --help   # what a preset is, its values as the defaults
    python train.py --resume model/<run>/last.pt                 # continue an interrupted run exactly
    torchrun --nproc_per_node 4 train.py                         # DistributedDataParallel, one process per GPU

The defaults are the original recipe (README: the recipe table, and the differences on purpose): bf16 instead of
fp16 on GPUs is one (``--precision fp16`` reproduces it; validation scores in fp32, as the original). Writes
``model/<run>/``: ``last.pt`` (the last epoch, and what resuming needs), ``best.pt`` (best validation mAP),
``log.jsonl``, ``curves.png`` and ``train_config.json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from clipreid.config import (
    Checks,
    at_least,
    available_device,
    between,
    each,
    non_negative,
    nonempty,
    one_of,
    positive,
    rule,
    run,
)
from clipreid.inference import Rerank
from clipreid.loss import LOSSES
from clipreid.trainer import TrainConfig, is_main_process, train


@dataclass
class Config(TrainConfig):
    # data
    data_dir: Path = Path("data/data_reid")  # folder holding train_df.csv (written by preprocess_data.py)
    validation: Literal["test", "fold", "none"] = "test"  # test split, a GroupKFold fold, or none (train on all)
    fold: int = 0  # the validation fold when validation is fold
    output_dir: Path = Path("model")  # runs are written to output_dir/run_name
    run_name: str | None = None  # default: <model>_<validation>_seed<seed>
    overwrite: bool = False  # replace an existing run of the same name
    resume: Path | None = None  # last.pt (or its run folder) of an interrupted run to continue
    stop_after: int | None = None  # stop once this many epochs are done (continue later with --resume)
    # model
    model: str = "ViT-L-14-quickgelu"  # open_clip name (ViT-B-16-quickgelu, RN50, ...), timm name, or tiny-vit
    pretrained: str = "openai"  # open_clip/timm tag, a weights file, or none; local-dir:/hf-hub: names need none
    remove_proj: bool = True  # drop the ViT's visual projection (1024-d features for ViT-L-14)
    img_size: tuple[int, int] | None = None  # input (height, width); none = the model's own
    grad_checkpointing: bool = False  # trade compute for memory
    pretrained_tag: str | None = None  # the open_clip/timm tag a weights file came from: its mean/std are used
    mean: tuple[float, float, float] | None = None  # normalisation mean; none = the weights' own
    std: tuple[float, float, float] | None = None  # normalisation std; none = the weights' own
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"  # letterbox resize (bilinear: OpenCV's, as the original)
    # batches and augmentation
    batch_size: int = 16  # pairs per batch (per process under torchrun), all of different players
    flip: bool = True  # paired horizontal flip, p=0.5
    sharpen: bool = False  # 2023 winners: sharpen, p=0.5
    random_erasing: bool = False  # 2023 winners: random erasing, p=0.5, area 2-33%
    cache_images: bool = True  # decode and letterbox every image once, into memory (about 1.3 GB at 224 px)
    num_workers: int = 4  # DataLoader workers when images are not cached
    # loss
    losses: tuple[str, ...] = ("infonce",)  # any of infonce, id, triplet
    loss_weights: tuple[float, ...] | None = None  # one weight per loss; none = all 1
    label_smoothing: float = 0.1  # for infonce and id
    triplet_margin: float | None = 0.3  # none = soft margin
    # optimisation
    epochs: int = 4
    lr: float = 4e-5  # 4e-4 for CNNs trained from scratch
    lr_end: float = 1e-5  # the lr the decay ends at
    scheduler: Literal["polynomial", "cosine", "linear", "constant"] = "polynomial"
    poly_power: float = 2.0  # power of the polynomial decay
    warmup_epochs: float = 1.0  # linear warm-up, stepped per optimiser step
    weight_decay: float = 0.01  # AdamW weight decay
    decay_all: bool = True  # weight decay on every parameter, as the original; false exempts norms, biases, logit scale
    grad_accum: int = 1  # micro-batches per optimiser step (each is its own InfoNCE batch)
    clip_grad: float | None = None  # max gradient norm; none = no clipping (the original clips nothing)
    # auto: bf16 on GPUs that have it, fp32 on CPU; fp16 (with a GradScaler on GPUs) is the original's
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    compile: bool = False  # torch.compile the model
    channels_last: bool = False  # channels-last memory format (helps CNNs on GPUs)
    # validation
    zero_shot: bool = True  # evaluate the model before training (logged as epoch 0)
    eval_batch_size: int = 64
    # validation precision: fp32 as the original scores; none = the training precision
    eval_precision: Literal["auto", "bf16", "fp16", "fp32"] | None = "fp32"
    val_flip: bool = False  # flip test-time augmentation in validation
    val_rerank: tuple[Rerank, ...] = ()  # also log these re-rankings' mAP and rank-1 each epoch: k_reciprocal, hard
    # run
    seed: int = 1
    device: str = "auto"  # auto = cuda, then mps, then cpu
    log_every: int = 10  # optimiser steps between progress updates (and divergence checks)
    report_to: Literal["none", "tensorboard"] = "none"  # tensorboard: log.jsonl's values into <run>/tensorboard/
    progress: bool = True  # progress bars

    # what can work, per field: checked before any work starts (one line per field; see clipreid.config)
    checks: ClassVar[Checks] = {
        "fold": at_least(0),
        "run_name": rule(lambda v, c: v.strip() not in ("", ".", "..") and "/" not in v, "a plain folder name"),
        "stop_after": at_least(1),
        "img_size": each(at_least(1)),
        "batch_size": at_least(1),
        "num_workers": non_negative,
        "losses": (nonempty, one_of(*LOSSES), rule(lambda v, c: len(set(v)) == len(v), "each loss once")),
        "loss_weights": (each(non_negative), rule(lambda v, c: len(v) == len(c.losses),
                                                  lambda v, c: f"one weight per loss ({' '.join(c.losses)})"),
                         rule(lambda v, c: sum(v) > 0, "at least one weight > 0")),
        "label_smoothing": (non_negative, rule(lambda v, c: v < 1, "a number from 0 to below 1")),
        "triplet_margin": non_negative,
        "epochs": at_least(1),
        "lr": positive,
        "lr_end": non_negative,
        "poly_power": positive,
        "warmup_epochs": (non_negative, rule(lambda v, c: v <= c.epochs, "at most --epochs ({cfg.epochs})")),
        "weight_decay": non_negative,
        "grad_accum": at_least(1),
        "clip_grad": positive,
        "eval_batch_size": at_least(1),
        "seed": between(0, 2**32 - 1),
        "device": available_device,
        "log_every": at_least(1),
    }


def main(cfg: Config) -> None:
    run_dir = train(cfg)
    if is_main_process():
        print(f"run folder: {run_dir}  (last.pt, best.pt, log.jsonl, curves.png)")


if __name__ == "__main__":
    run(Config, main)
