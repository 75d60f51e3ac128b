"""The demo's closing table: what training changed, the untrained model against the trained one.

``before_after(run, data_dir)`` rebuilds the run's model exactly as training started it (same architecture, same
seed, so the same initial weights as the log's epoch 0), scores it and the trained checkpoint on the test split
with raw distances and with k-reciprocal re-ranking, and returns the rows. ``format_before_after`` prints them as
a short table; ``python -m clipreid.demo --checkpoint model/demo --data-dir data/synthetic_reid`` does both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from .checkpoint import read_checkpoint, run_dir_of
from .config import Checks, available_device, run
from .dataset import load_split
from .errors import UserError
from .inference import InferenceOptions, load_for_inference, query_gallery_features, rerank_distances
from .metrics import compute_scores
from .model import ModelSpec, ReIDEncoder, build_encoder
from .runtime import pick_device

SHOWN = (("none", "raw"), ("k_reciprocal", "k-reciprocal"))  # the re-rankings of the table, with their headings


def untrained_encoder(checkpoint: str | Path) -> ReIDEncoder:
    """The encoder a run started from: its architecture and pretrained weights, seeded as the trainer seeds."""
    state = read_checkpoint(checkpoint)
    config = state.get("config") or {}
    spec = ModelSpec.from_dict(state["model_spec"])
    torch.manual_seed(int(config.get("seed", 1)))  # the trainer seeds torch just before it builds the model
    return build_encoder(spec)


def before_after(checkpoint: str | Path, data_dir: str | Path, device: str = "cpu") -> dict[str, dict[str, dict]]:
    """Scores on the test split of ``data_dir``: ``{"untrained"|"trained": {"none"|"k_reciprocal": scores}}``."""
    split = load_split(data_dir, "test")
    if not split.query_paths:
        raise UserError(f"{data_dir} has no test split to compare the untrained and trained models on")
    dev = pick_device(device)
    opts = InferenceOptions(flip=False, batch_size=64, precision="fp32", device=device, cache_images=False,
                            num_workers=0, progress=False)
    results = {}
    for name, encoder in (("untrained", untrained_encoder(checkpoint).to(dev)),
                          ("trained", load_for_inference(Path(checkpoint), dev))):
        qf, gf = query_gallery_features(encoder, split.query_paths, split.gallery_paths, device=dev, opts=opts)
        results[name] = {method: compute_scores(rerank_distances(qf, gf, method).float().cpu(), split.query_players,
                                                split.gallery_players, split.query_cams, split.gallery_cams)
                         for method, _ in SHOWN}
    return results


def format_before_after(results: dict[str, dict[str, dict]], title: str = "") -> str:
    """A short table: one row per model, mAP and rank-1 (in %) per re-ranking."""
    header = ["model", *(f"{label} {metric}" for _, label in SHOWN for metric in ("mAP", "rank-1"))]
    rows = [[name, *(f"{100 * results[name][method][key]:.1f}" for method, _ in SHOWN
                     for key in ("mAP", "rank1"))] for name in results]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
             for r in [header, *rows]]
    return "\n".join([title, *lines] if title else lines)


@dataclass
class Config:
    checkpoint: Path = Path("model/demo")  # the trained run folder (or its best.pt / last.pt)
    data_dir: Path = Path("data/synthetic_reid")  # folder holding train_df.csv, with a test split
    device: str = "cpu"  # auto = cuda, then mps, then cpu

    checks: ClassVar[Checks] = {"device": available_device}


def main(cfg: Config) -> None:
    results = before_after(cfg.checkpoint, cfg.data_dir, cfg.device)
    split = load_split(cfg.data_dir, "test")
    title = (f"before / after training ({run_dir_of(cfg.checkpoint)}), test split of {cfg.data_dir}: "
             f"{len(split.query_paths)} queries, {len(split.gallery_paths)} gallery images")
    print(format_before_after(results, title))


if __name__ == "__main__":
    run(Config, main)
