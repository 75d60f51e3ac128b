"""Stage 5: submission distance matrices for the test and challenge sets: single models and fused ensembles.

    python predict.py                                                       # the recipe's run: raw and k-reciprocal
    python predict.py --checkpoints model/run_a model/run_b --fusion winners   # an ensemble of two models
    python predict.py --checkpoints model/run_a --submissions 'model/other/{set}_hard.csv'   # a model + earlier CSVs
    python predict.py --checkpoints none --submissions a/challenge_raw.csv b/challenge_raw.csv --sets challenge
    python predict.py --checkpoints model/run_a --query-dir crops/ --output-dir model/crops_ranked   # your images

Writes ``<set>_<rerank>.csv`` for each set and each re-ranking (``<set>_raw.csv`` for none), with several inputs
each checkpoint's own CSVs in ``<model label>/``, ``predict_config.json`` and ``predict_log.json`` (which weights:
file and epoch of each checkpoint) into ``output_dir``. Which weights of a run folder: ``--run-weights`` (README:
"Which weights").
Rows are queries and columns gallery images, ids sorted, distances with 5 decimals (lower = more similar); test
ids are the true player ids, so the test matrices are scored as they are written. With ``query_dir`` it ranks
your own unlabelled images instead (``clipreid.rank_folders``): ranking CSVs, distance matrices, features, a picture.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from clipreid.config import Checks, at_least, non_negative, nonempty, rule, run
from clipreid.inference import FUSION_CHECKS, INFERENCE_CHECKS, RERANK_CHECKS, Rerank
from clipreid.prediction import PredictConfig, SetName, predict
from clipreid.rank_folders import RankConfig, rank_folders


@dataclass
class Config(PredictConfig, RankConfig):
    # inputs
    checkpoints: tuple[Path, ...] | None = (Path("model/ViT-L-14-quickgelu_test_seed1"),)  # none = CSVs only
    run_weights: Literal["last", "best"] = "last"  # a run folder's last.pt or best.pt (README: Which weights)
    # the model of an original CLIP-ReIdent file (an open_clip name: ViT-L-14-quickgelu for OpenAI weights, ViT-L-14
    # for LAION ones; a ResNet's is read from its tensors) or of a 2023-code file (a timm name)
    checkpoint_model: str | None = None
    # earlier submission CSVs to fuse; with several sets write {set} in the path: model/other/{set}_raw.csv
    submissions: tuple[Path, ...] = ()
    data_dir: Path = Path("data/data_reid")  # folder holding train_df.csv and challenge_df.csv
    sets: tuple[SetName, ...] = ("test", "challenge")  # sets to predict: test, challenge
    # your own images instead of the sets: rankings, distance matrices and features into output_dir
    query_dir: Path | None = None  # a folder of images (searched recursively) to rank
    gallery_dir: Path | None = None  # the images to rank them against; none = the query folder against itself
    topk: int = 10  # nearest gallery images per query in ranking_<method>.csv and the picture
    ranked_lists: int = 8  # queries drawn in ranked_lists.png; 0 = no picture
    flip: bool = False  # test-time augmentation: average each image's features with its mirror image's
    # re-ranking (each checkpoint on its own, before fusion)
    # re-rankings to write, each as <set>_<rerank>.csv (<set>_raw.csv for none): none, k_reciprocal, hard
    rerank: tuple[Rerank, ...] = ("none", "k_reciprocal")
    k1: int = 20  # k-reciprocal neighbours
    k2: int = 6  # query expansion neighbours
    lambda_value: float = 0.3  # k_reciprocal: weight of the original distance
    hard_lambda: float = 0.7  # hard: weight of the Jaccard distance (the 2023 winners' 0.7)
    # fusion of several inputs
    fusion: Literal["similarity", "dissimilarity", "winners"] = "similarity"  # mean, per-query weights, or both
    weights: tuple[float, ...] | None = None  # similarity weights: one per checkpoint, then per CSV; none = equal
    topk_fusion: int = 15  # gallery items per query the dissimilarity fusion compares
    # running
    batch_size: int = 64  # images per inference batch
    # fp32 as the original scores; bf16/fp16 autocast (auto: bf16 on GPUs that have it) only when asked
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "fp32"
    device: str = "auto"  # auto = cuda, then mps, then cpu
    cache_images: bool = True  # decode every image once into memory (all cores), shared by all checkpoints
    num_workers: int = 4  # DataLoader workers decoding images when cache_images is off
    output_dir: Path = Path("model/submission")  # where the CSVs go
    progress: bool = True  # progress bars

    # what can work, per field: checked before any work starts (one line per field; see clipreid.config)
    checks: ClassVar[Checks] = {
        **INFERENCE_CHECKS,
        **RERANK_CHECKS,
        **FUSION_CHECKS,
        "submissions": rule(lambda v, c: len(v) > 0 or bool(c.checkpoints),
                            "at least one CSV when --checkpoints is none"),
        "sets": nonempty,
        "query_dir": rule(lambda v, c: bool(c.checkpoints) and not c.submissions,
                          "with at least one checkpoint and no --submissions (submission CSVs hold the test and "
                          "challenge sets' distances, not a folder's)"),
        "weights": (*FUSION_CHECKS["weights"],
                    rule(lambda v, c: len(v) == len(c.checkpoints or ()) + len(c.submissions),
                         lambda v, c: f"one weight per checkpoint, then one per submission CSV "
                                      f"({len(c.checkpoints or ()) + len(c.submissions)} in all)")),
        "topk": at_least(1),
        "ranked_lists": non_negative,
    }


def main(cfg: Config) -> None:
    report = rank_folders(cfg) if cfg.query_dir is not None else predict(cfg)
    print(report.summary())


if __name__ == "__main__":
    run(Config, main)
