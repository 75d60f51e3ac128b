"""Fine-tuning loop: optimiser, schedule, mixed precision, validation, checkpoints, resume and DDP.

``train(cfg)`` takes a :class:`TrainConfig` (``train.py``'s Config inherits it) and returns the run folder.
A run folder holds ``train_config.json``, ``log.jsonl`` (one line per epoch; epoch 0 is the model before
training), ``curves.png``, ``last.pt`` (the last epoch's weights and everything needed to resume) and
``best.pt`` (the weights of the best validation mAP, or of the last epoch without validation), each with its
provenance (``clipreid.checkpoint``: selection, and for a fold run the groups it never trained on).

Exact resume: the batches of an epoch and the augmentation of each step come from generators seeded by
(seed, epoch, step), not from a running random state, so a run resumed from ``last.pt`` computes the same
steps as one that never stopped.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import re
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .checkpoint import BEST_PT, LAST_PT, read_checkpoint, run_dir_of, save_checkpoint, selection_record
from .config import config_from_dict, config_to_dict, given_fields, save_config
from .dataset import (
    ImageSet,
    PairBatchSampler,
    PairDataset,
    Split,
    Validation,
    contiguous_labels,
    fold_identity,
    load_split,
)
from .errors import UserError
from .fileio import StagedFolder, check_writable, write_text
from .inference import Rerank, validate_reranked
from .loss import ReIDLoss
from .model import ModelSpec, ReIDEncoder, build_encoder
from .progress import progress_bar
from .runtime import Precision, Runtime, autocast, resolve_precision, setup_runtime
from .tracking import Tracker, open_tracker
from .transforms import AugmentConfig, Interpolation, augment_pairs, decode_images, to_device
from .visualize import save_training_curves
from .weights import encoder_checkpoint, encoder_file_of, rebuild_encoder

LOG_NAME = "log.jsonl"
CURVES_NAME = "curves.png"
CONFIG_NAME = "train_config.json"
# Fields a resumed run may change: where and how it runs, not what it computes.
Schedule = Literal["polynomial", "cosine", "linear", "constant"]
RUNTIME_FIELDS = {"device", "progress", "num_workers", "resume", "compile", "cache_images", "overwrite", "stop_after",
                  "log_every", "report_to", "eval_precision"}


@dataclass
class TrainConfig:
    """What ``train`` reads: ``train.py``'s Config inherits it and gives the defaults, the help and the checks."""

    # data
    data_dir: Path
    validation: Validation
    fold: int
    output_dir: Path
    run_name: str | None
    overwrite: bool
    resume: Path | None
    stop_after: int | None
    # model
    model: str
    pretrained: str
    remove_proj: bool
    img_size: tuple[int, int] | None
    grad_checkpointing: bool
    pretrained_tag: str | None
    mean: tuple[float, float, float] | None
    std: tuple[float, float, float] | None
    interpolation: Interpolation
    # batches and augmentation
    batch_size: int
    flip: bool  # paired horizontal flip in training (not the test-time flip of InferenceOptions)
    sharpen: bool
    random_erasing: bool
    cache_images: bool
    num_workers: int
    # loss
    losses: tuple[str, ...]
    loss_weights: tuple[float, ...] | None
    label_smoothing: float
    triplet_margin: float | None
    # optimisation
    epochs: int
    lr: float
    lr_end: float
    scheduler: Schedule
    poly_power: float
    warmup_epochs: float
    weight_decay: float
    decay_all: bool
    grad_accum: int
    clip_grad: float | None
    precision: Precision
    compile: bool
    channels_last: bool
    # validation
    zero_shot: bool
    eval_batch_size: int
    eval_precision: Precision | None
    val_flip: bool
    val_rerank: tuple[Rerank, ...]
    # run
    seed: int
    device: str
    log_every: int
    report_to: Literal["none", "tensorboard"]
    progress: bool


# --------------------------------------------------------------------------------------------------------------
# optimiser and schedule


def build_optimizer(modules: list[nn.Module], lr: float, weight_decay: float, decay_all: bool = True,
                    fused: bool = False) -> torch.optim.AdamW:
    """AdamW with weight decay on every parameter (the original's); ``decay_all=False`` exempts norms, biases,
    embeddings' 1-d vectors and the logit scale."""
    decay, no_decay = [], []
    for module in modules:
        for name, p in module.named_parameters():
            if not p.requires_grad:
                continue
            skip = not decay_all and (p.ndim < 2 or name.endswith("logit_scale"))
            (no_decay if skip else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, fused=fused or None)


def lr_factor(step: int, total: int, warmup: int, schedule: Schedule, lr: float, lr_end: float,
              power: float = 2.0) -> float:
    """Multiplier of the base lr at optimiser ``step``: linear warm-up, then the decay to ``lr_end``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    end = lr_end / lr if lr > 0 else 0.0
    if schedule == "cosine":
        return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "linear":
        power = 1.0
    elif schedule != "polynomial":
        raise ValueError(f"unknown schedule {schedule!r}")
    return end + (1 - end) * (1 - progress) ** power


@dataclass
class _Schedule:
    """A picklable lr lambda (so LambdaLR's state_dict keeps it out, and resume rebuilds it from the config)."""

    total: int
    warmup: int
    schedule: Schedule
    lr: float
    lr_end: float
    power: float

    def __call__(self, step: int) -> float:
        return lr_factor(step, self.total, self.warmup, self.schedule, self.lr, self.lr_end, self.power)


# --------------------------------------------------------------------------------------------------------------
# checkpoints and logs


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))


def _write_log(run_dir: Path, records: list[dict[str, Any]]) -> None:
    write_text(run_dir / LOG_NAME, "".join(json.dumps(r) + "\n" for r in records))
    save_training_curves(run_dir / CURVES_NAME, records)


def _format_metrics(record: dict[str, Any]) -> str:
    keys = [("train_loss", "loss {:.4f}"), ("mAP", "mAP {:.2%}"), ("rank1", "rank-1 {:.2%}"),
            ("rank1_allshots", "rank-1 allshots {:.2%}"), ("rank5", "rank-5 {:.2%}"), ("mINP", "mINP {:.2%}")]
    keys += [(k, f"mAP {k.removeprefix('mAP_')} {{:.2%}}") for k in record if k.startswith("mAP_")]
    keys += [("images_per_s", "{:.0f} img/s")]
    return "  ".join(fmt.format(record[k]) for k, fmt in keys if record.get(k) is not None)


def grad_scaler(dtype: torch.dtype, device: torch.device) -> torch.amp.GradScaler:
    """The loss scaler of fp16 training on a GPU (disabled otherwise), starting at 2**10 as the original's."""
    return torch.amp.GradScaler("cuda", init_scale=2.0**10, enabled=dtype == torch.float16 and device.type == "cuda")


def load_scaler_state(scaler: torch.amp.GradScaler, state: dict[str, Any]) -> None:
    """Restore a GradScaler, unless the saved one was disabled (a bf16, fp32 or CPU run: an empty state) while
    this one is enabled (fp16 on a GPU): it then starts from a fresh scale instead of failing."""
    if state or not scaler.is_enabled():
        scaler.load_state_dict(state)


def log_due(i: int, n: int, accum: int, log_every: int) -> bool:
    """Whether micro-batch ``i`` (of ``n``) ends a log interval: every ``log_every`` optimiser steps, and the
    epoch's last micro-batch."""
    if i + 1 == n:
        return True
    return (i + 1) % accum == 0 and ((i + 1) // accum) % log_every == 0


def sync_context(model: nn.Module, last_of_step: bool):
    """DDP's ``no_sync`` for a micro-batch that does not end an optimiser step (also through torch.compile's
    wrapper, which hides the DDP module in ``_orig_mod``); a no-op otherwise."""
    ddp = getattr(model, "_orig_mod", model)
    if last_of_step or not isinstance(ddp, nn.parallel.DistributedDataParallel):
        return nullcontext()
    return ddp.no_sync()


# --------------------------------------------------------------------------------------------------------------
# the run


def _run_dir(cfg: TrainConfig) -> Path:
    name = cfg.run_name or re.sub(r"[^A-Za-z0-9._-]+", "-",
                                  f"{Path(cfg.model).name}_{cfg.validation}"
                                  f"{cfg.fold if cfg.validation == 'fold' else ''}_seed{cfg.seed}")
    return Path(cfg.output_dir) / name


def _resolve_resume(cfg: TrainConfig) -> tuple[TrainConfig, dict[str, Any] | None]:
    """Return the config to run with and the checkpoint state to restore (None for a fresh run)."""
    if not cfg.resume:
        return cfg, None
    path = Path(cfg.resume)
    if path.is_dir():
        path = path / LAST_PT
    state = read_checkpoint(path)
    if "optimizer" not in state:
        raise UserError(f"{path} holds weights only (best.pt); resume from the run's last.pt")
    saved = config_from_dict(type(cfg), state["config"], source=str(path))
    given = given_fields(cfg)  # what the user typed; unknown for configs built in code: compare every field
    ignored = [f.name for f in dataclasses.fields(cfg) if f.name not in RUNTIME_FIELDS
               and (given is None or f.name in given) and getattr(cfg, f.name) != getattr(saved, f.name)]
    if ignored:
        print(f"resuming {path}: using its saved config; ignoring the differing {', '.join(ignored)}")
    runtime = {k: getattr(cfg, k) for k in RUNTIME_FIELDS}
    return dataclasses.replace(saved, **runtime), state


def train(cfg: TrainConfig) -> Path:
    """Fine-tune an encoder as ``cfg`` says; return the run folder."""
    rt = setup_runtime(cfg.device)
    try:
        return _train(cfg, rt)
    except KeyboardInterrupt:
        last = (run_dir_of(cfg.resume) if cfg.resume else _run_dir(cfg)) / LAST_PT
        raise KeyboardInterrupt(f"continue with --resume {last}" if last.is_file() else "") from None
    finally:
        if rt.distributed and dist.is_initialized():
            dist.destroy_process_group()


def _train(cfg: TrainConfig, rt: Runtime) -> Path:
    cfg, state = _resolve_resume(cfg)
    run_dir = _run_dir(cfg) if state is None else run_dir_of(cfg.resume)
    if state is None and (run_dir / LAST_PT).exists() and not cfg.overwrite:
        raise UserError(f"{run_dir} already holds a run; --resume {run_dir / LAST_PT} continues it, "
                        "--overwrite replaces it, --run-name NAME starts another")
    if state is None and run_dir.exists() and not cfg.overwrite and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise UserError(f"{run_dir} exists and is not a finished run (no last.pt); --overwrite replaces it, "
                        "--run-name NAME starts another")
    if rt.is_main:
        check_writable(run_dir.parent if state is None else run_dir, "--output-dir" if state is None else "run folder")
    # A fresh run is built under a hidden name and appears as run_dir once its first checkpoint is saved: a run
    # that fails before leaves nothing that looks like a run (and --overwrite keeps the old one until then).
    with StagedFolder(run_dir) as folder:
        return _train_into(cfg, rt, state, folder)


def _train_into(cfg: TrainConfig, rt: Runtime, state: dict[str, Any] | None, folder: StagedFolder) -> Path:
    run_dir = folder.target
    say = print if rt.is_main else (lambda *a, **k: None)
    tracker = open_tracker(cfg.report_to if rt.is_main else "none", lambda: folder.path)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    if rt.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    split: Split = load_split(cfg.data_dir, cfg.validation, cfg.fold)
    spec = ModelSpec(cfg.model, cfg.pretrained, cfg.remove_proj, cfg.img_size, cfg.grad_checkpointing,
                     pretrained_tag=cfg.pretrained_tag, mean=cfg.mean, std=cfg.std, interpolation=cfg.interpolation)
    # on resume, the checkpoint's stored architecture, preprocessing and weights (nothing fetched)
    encoder: ReIDEncoder = (build_encoder(spec) if state is None
                            else rebuild_encoder(encoder_file_of(state, cfg.resume), cfg.resume, training=True))
    encoder.spec = spec
    labels = contiguous_labels(split.train_players)
    loss_fn = ReIDLoss(tuple(cfg.losses), tuple(cfg.loss_weights) if cfg.loss_weights else None,
                       feature_dim=encoder.feature_dim, num_classes=int(labels.max()) + 1,
                       label_smoothing=cfg.label_smoothing, triplet_margin=cfg.triplet_margin)
    encoder.to(rt.device)
    loss_fn.to(rt.device)
    if cfg.channels_last:
        encoder.to(memory_format=torch.channels_last)
    dtype = resolve_precision(cfg.precision, rt.device)
    say(f"{encoder.describe()}\n{split.describe()}\ndevice {rt.device} x{rt.world_size}, precision "
        f"{str(dtype).removeprefix('torch.')}, run folder {run_dir}")

    sampler = PairBatchSampler(split.train_players, cfg.batch_size, seed=cfg.seed, world_size=rt.world_size,
                               rank=rt.rank)
    size, interp = encoder.image_size, encoder.interpolation
    cache = (decode_images(split.train_paths, size, progress=cfg.progress and rt.is_main, desc="decode train",
                           interpolation=interp) if cfg.cache_images else None)
    pairs = PairDataset(ImageSet(split.train_paths, size, cache, interp), labels)
    val_sets = None
    if split.query_paths and rt.is_main:
        if cfg.cache_images:
            val_sets = tuple(decode_images(p, size, progress=cfg.progress, desc="decode validation",
                                           interpolation=interp) for p in (split.query_paths, split.gallery_paths))
        else:
            val_sets = (ImageSet(split.query_paths, size, interpolation=interp),
                        ImageSet(split.gallery_paths, size, interpolation=interp))

    optimizer = build_optimizer([encoder, loss_fn], cfg.lr, cfg.weight_decay, cfg.decay_all,
                                fused=rt.device.type == "cuda")
    steps_per_epoch = math.ceil(len(sampler) / cfg.grad_accum)
    total_steps = steps_per_epoch * cfg.epochs
    schedule = _Schedule(total=total_steps, warmup=round(cfg.warmup_epochs * steps_per_epoch),
                         schedule=cfg.scheduler, lr=cfg.lr, lr_end=cfg.lr_end, power=cfg.poly_power)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    scaler = grad_scaler(dtype, rt.device)

    start_epoch, best, history = 0, -1.0, []
    if state is not None:
        encoder.load_state_dict(state["model"], strict=True)
        loss_fn.load_state_dict(state["loss"], strict=True)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        load_scaler_state(scaler, state["scaler"])
        _set_rng_state(state["rng"])
        start_epoch, best, history = int(state["epoch"]), float(state["best"]), list(state["history"])
        say(f"resumed after epoch {start_epoch} of {cfg.epochs}")
    model: nn.Module = encoder
    if rt.distributed:
        model = nn.parallel.DistributedDataParallel(
            encoder, device_ids=[rt.local_rank] if rt.device.type == "cuda" else None)
    if cfg.compile:
        model = torch.compile(model)

    if rt.is_main:
        if state is None:
            folder.open()
        save_config(cfg, folder.path / CONFIG_NAME)

    eval_dtype = resolve_precision(cfg.eval_precision, rt.device) if cfg.eval_precision else dtype
    held_out = fold_identity(cfg.data_dir, cfg.fold) if cfg.validation == "fold" else None

    def evaluate_now() -> dict[str, float]:
        if val_sets is None:
            return {}
        return validate_reranked(encoder, *val_sets, split, cfg.val_rerank, batch_size=cfg.eval_batch_size,
                                 dtype=eval_dtype, flip=cfg.val_flip, num_workers=cfg.num_workers,
                                 progress=cfg.progress)

    if state is None and cfg.zero_shot and val_sets is not None:
        record = {"epoch": 0, **evaluate_now(), "logit_scale": float(encoder.scale().detach())}
        history.append(record)
        say(f"epoch 0 (before training): {_format_metrics(record)}")
        _write_log(folder.path, history)
        tracker.log_epoch(record)
    _barrier(rt)

    augment = AugmentConfig(cfg.flip, cfg.sharpen, cfg.random_erasing)
    for epoch in range(start_epoch, cfg.epochs):
        record = _train_epoch(cfg, rt, model, encoder, loss_fn, optimizer, scheduler, scaler, sampler, pairs,
                              augment, dtype, epoch, tracker=tracker)
        record.update(evaluate_now())
        record["logit_scale"] = float(encoder.scale().detach())
        history.append(record)
        if rt.is_main:
            metric = record.get("mAP", float(epoch))
            improved = metric > best
            best = max(best, metric)
            common = {**encoder_checkpoint(encoder), "config": config_to_dict(cfg), "epoch": epoch + 1,
                      "metrics": record, **({"held_out": held_out} if held_out is not None else {})}
            # best.pt first: a kill between the two leaves the previous last.pt, whose resume redoes this epoch and
            # writes both; the other order would leave a resumable run that never rewrites the better best.pt
            if improved:
                save_checkpoint(folder.path / BEST_PT,
                                {**common, "selection": selection_record("best", epoch + 1, cfg.validation, cfg.fold)})
            save_checkpoint(folder.path / LAST_PT, {
                **common, "selection": selection_record("last", epoch + 1, cfg.validation, cfg.fold),
                "loss": loss_fn.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "rng": _rng_state(), "best": best, "history": history})
            _write_log(folder.path, history)
            if not folder.committed:
                tracker.release()
            folder.commit()
            tracker.log_epoch(record)
            say(f"epoch {epoch + 1}/{cfg.epochs}: {_format_metrics(record)}" + ("  (best)" if improved else ""))
        _barrier(rt)
        if cfg.stop_after is not None and epoch + 1 >= cfg.stop_after and epoch + 1 < cfg.epochs:
            say(f"stopping after epoch {epoch + 1} as asked; continue with --resume {run_dir / LAST_PT}")
            break
    tracker.close()
    return run_dir


def is_main_process() -> bool:
    """True in a single process and in rank 0 of a torchrun job (what prints a run's closing lines)."""
    return int(os.environ.get("RANK", "0")) == 0


def _barrier(rt: Runtime) -> None:
    if rt.distributed:
        dist.barrier()


def micro_batches_in_step(i: int, n: int, accum: int) -> int:
    """How many micro-batches the optimiser step of micro-batch ``i`` (of ``n``) averages: the loss divisor.

    ``accum``, except for a shorter last step of the epoch.
    """
    return min(accum, n - (i - i % accum))


def forward_backward(model: nn.Module, encoder: ReIDEncoder, loss_fn: ReIDLoss, anchors: torch.Tensor,
                     positives: torch.Tensor, labels: torch.Tensor, augment: AugmentConfig, dtype: torch.dtype,
                     generator: torch.Generator, *, scaler: torch.amp.GradScaler | None = None, divisor: int = 1,
                     channels_last: bool = False, rank: int = 0, world_size: int = 1
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One micro-batch of training on the device: augment the uint8 pairs, forward both images through
    ``model`` (the encoder, or its DDP/compiled wrapper) under autocast, the loss, and backward of loss/divisor.

    ``rank`` of ``world_size`` processes augments its slice of the global batch (see ``augment_pairs``).
    Returns the loss and its parts, detached; nothing here waits for the GPU.
    """
    anchors, positives = augment_pairs(anchors, positives, augment, encoder.mean, encoder.std, generator,
                                       rank=rank, world_size=world_size)
    if channels_last:
        anchors = anchors.contiguous(memory_format=torch.channels_last)
        positives = positives.contiguous(memory_format=torch.channels_last)
    with autocast(anchors.device, dtype):
        features = model(torch.cat([anchors, positives]))
    fa, fp = features.float().chunk(2)
    loss, parts = loss_fn(fa, fp, labels, encoder.scale())
    scaled = loss / divisor
    (scaler.scale(scaled) if scaler is not None else scaled).backward()
    return loss.detach(), parts


def optimizer_update(optimizer: torch.optim.Optimizer, encoder: ReIDEncoder,
                     scaler: torch.amp.GradScaler | None = None, clip_grad: float | None = None) -> None:
    """The optimiser step after the accumulated backward passes: gradient clipping (on unscaled gradients), the
    step (skipped by the scaler on inf/NaN fp16 gradients) and zeroed gradients; the logit scale is not clamped."""
    if scaler is None:
        scaler = torch.amp.GradScaler(enabled=False)
    if clip_grad:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], clip_grad)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


def _step_generator(seed: int, epoch: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 1_000_033 + step)


def _train_epoch(cfg: TrainConfig, rt: Runtime, model: nn.Module, encoder: ReIDEncoder, loss_fn: ReIDLoss,
                 optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
                 scaler: torch.amp.GradScaler,
                 sampler: PairBatchSampler, pairs: PairDataset, augment: AugmentConfig, dtype: torch.dtype,
                 epoch: int, tracker: Tracker | None = None) -> dict[str, Any]:
    model.train()
    loader = torch.utils.data.DataLoader(
        pairs, batch_sampler=list(sampler.batches(epoch)), num_workers=0 if pairs.images.cache is not None
        else cfg.num_workers, pin_memory=rt.device.type == "cuda")
    bar = progress_bar(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not (cfg.progress and rt.is_main),
               leave=False, unit="batch")
    loss_sum = torch.zeros((), device=rt.device, dtype=torch.float64)
    parts_sum: dict[str, torch.Tensor] = {}
    n_batches, images_seen, start = 0, 0, time.perf_counter()
    accum = cfg.grad_accum
    n = len(loader)
    lr_used = optimizer.param_groups[0]["lr"]
    optimizer.zero_grad(set_to_none=True)
    for i, (anchors, positives, labels) in enumerate(bar):
        anchors, positives, labels = (to_device(t, rt.device) for t in (anchors, positives, labels))
        last_of_step = (i + 1) % accum == 0 or i + 1 == n
        with sync_context(model, last_of_step):
            loss, parts = forward_backward(model, encoder, loss_fn, anchors, positives, labels, augment, dtype,
                                           _step_generator(cfg.seed, epoch, i), scaler=scaler,
                                           divisor=micro_batches_in_step(i, n, accum),
                                           channels_last=cfg.channels_last, rank=rt.rank,
                                           world_size=rt.world_size)
        loss_sum += loss
        for k, v in parts.items():
            parts_sum[k] = parts_sum.get(k, 0.0) + v
        n_batches += 1
        images_seen += 2 * len(anchors) * rt.world_size
        if last_of_step:
            lr_used = optimizer.param_groups[0]["lr"]  # the lr this step uses; the scheduler then sets the next
            optimizer_update(optimizer, encoder, scaler, cfg.clip_grad)
            scheduler.step()
        if log_due(i, n, accum, cfg.log_every):
            mean_loss = float(loss_sum) / n_batches  # one device sync per log interval, not per step
            if not math.isfinite(mean_loss):
                raise UserError(f"training diverged: the loss became {mean_loss} in epoch {epoch + 1}, optimiser "
                                f"step {math.ceil((i + 1) / accum)}; "
                                f"the last good checkpoint is kept in the run folder (last.pt of epoch {epoch}); "
                                "lower lr, raise warmup_epochs or use precision bf16")
            rate = images_seen / max(1e-9, time.perf_counter() - start)
            bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr_used:.2e}", img_s=f"{rate:.0f}")
            if tracker is not None:
                tracker.log_step(epoch * math.ceil(n / accum) + i // accum + 1, float(loss_sum), n_batches, lr_used)
    elapsed = time.perf_counter() - start
    record: dict[str, Any] = {"epoch": epoch + 1, "train_loss": float(loss_sum) / max(1, n_batches),
                              "lr": lr_used, "images_per_s": images_seen / max(1e-9, elapsed),
                              "epoch_time_s": elapsed}
    if len(parts_sum) > 1:
        record.update({f"loss_{k}": float(v) / n_batches for k, v in parts_sum.items()})
    return record
