"""Stage 4: score trained checkpoints: mAP, rank-1/5/10 and mINP, with and without re-ranking.

    python evaluate.py                                                   # the recipe's checkpoint on the test split
    python evaluate.py --checkpoints model/run_a model/run_b             # two models and their fusion
    python evaluate.py --split fold --fold 3                             # GroupKFold fold 3's queries and gallery
    python evaluate.py --split folds --checkpoints model/*_fold*_seed1   # each model on its held-out fold: mean ± std
    python evaluate.py --data-dir data/synthetic_reid --checkpoints model/tiny-vit_test_seed1 --device cpu

Which weights of a run folder are scored: ``--run-weights`` (README: "Which weights"). Every table names the epoch
of the weights and warns when a best.pt is scored on the split that selected it, and says how many queries were
scored (those without a match in the gallery are not). ``--no-camera-rule`` scores data with cameras without the
same-camera rule. Features are extracted in fp32, as the original does; ``--precision bf16`` is faster on a GPU and
moves the scores slightly.

Writes ``eval_results.csv`` (fractions), ``eval_results.md`` (%), ``evaluate_config.json`` and ``ranked_lists.png``
(the best row's top-k for a few queries) into ``output_dir``, by default ``<run folder of the first checkpoint>/eval``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from clipreid.config import Checks, at_least, non_negative, nonempty, run
from clipreid.evaluation import EvaluateConfig, evaluate
from clipreid.inference import INFERENCE_CHECKS, RERANK_CHECKS, Rerank


@dataclass
class Config(EvaluateConfig):
    # what to score
    checkpoints: tuple[Path, ...] = (Path("model/ViT-L-14-quickgelu_test_seed1"),)  # run folders or .pt files
    run_weights: Literal["last", "best"] = "last"  # a run folder's last.pt or best.pt (README: Which weights)
    # the model of an original CLIP-ReIdent file (an open_clip name: ViT-L-14-quickgelu for OpenAI weights, ViT-L-14
    # for LAION ones; a ResNet's is read from its tensors) or of a 2023-code file (a timm name)
    checkpoint_model: str | None = None
    data_dir: Path = Path("data/data_reid")  # folder holding train_df.csv (written by preprocess_data.py)
    split: Literal["test", "fold", "folds"] = "test"  # test split, fold `fold`, or each checkpoint on its trained fold
    fold: int = 0  # the fold when split is fold
    flip: bool = False  # test-time augmentation: average each image's features with its mirror image's
    # the Market-1501 rule: ignore gallery images of the query's identity taken by the query's camera; none = on
    # when train_df.csv has cameras (a camera column), off otherwise
    camera_rule: bool | None = None
    # re-ranking
    rerank: tuple[Rerank, ...] = ("none", "k_reciprocal", "hard")  # methods to score: none, k_reciprocal, hard
    k1: int = 20  # k-reciprocal neighbours
    k2: int = 6  # query expansion neighbours
    lambda_value: float = 0.3  # k_reciprocal: weight of the original distance
    hard_lambda: float = 0.7  # hard: weight of the Jaccard distance (the 2023 winners' 0.7)
    # running
    batch_size: int = 64  # images per inference batch
    # fp32 as the original scores; bf16/fp16 autocast (auto: bf16 on GPUs that have it) only when asked
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "fp32"
    device: str = "auto"  # auto = cuda, then mps, then cpu
    cache_images: bool = True  # decode every image once into memory (all cores), shared by all checkpoints
    num_workers: int = 4  # DataLoader workers decoding images when cache_images is off
    # outputs
    output_dir: Path | None = None  # none = <run folder of the first checkpoint>/eval
    ranked_lists: int = 8  # queries shown in ranked_lists.png; 0 = no picture
    topk: int = 10  # gallery images per query in ranked_lists.png
    progress: bool = True  # progress bars

    # what can work, per field: checked before any work starts (one line per field; see clipreid.config)
    checks: ClassVar[Checks] = {
        **INFERENCE_CHECKS,
        **RERANK_CHECKS,
        "checkpoints": nonempty,
        "fold": at_least(0),
        "ranked_lists": non_negative,
        "topk": at_least(1),
    }


def main(cfg: Config) -> None:
    report = evaluate(cfg)
    print(report.summary())


if __name__ == "__main__":
    run(Config, main)
