"""Stage 1: get the DeepSportradar player re-identification data, or generate the synthetic stand-in.

    python download_data.py                                  # 2023 edition into data/data_reid
    python download_data.py --edition 2022
    python download_data.py --source synthetic               # offline stand-in into data/synthetic_reid

The real data comes from the GitHub archive of the challenge toolkit at the edition's commit; its md5 is checked
before extraction. A zip you downloaded by hand and put in ``data_dir`` is used without the network.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from clipreid.config import Checks, at_least, between, rule, run, save_config
from clipreid.fileio import check_writable


@dataclass
class Config:
    source: Literal["synergyreid", "synthetic"] = "synergyreid"  # real challenge data or the synthetic stand-in
    data_dir: Path = Path("data")  # parent folder: real data goes to data_reid/, synthetic to synthetic_reid/
    edition: Literal["2023", "2022"] = "2023"  # challenge edition of the real data (commit and md5)
    url: str | None = None  # download from this address instead of the edition's GitHub archive (a mirror)
    force: bool = False  # re-extract the verified zip (real data) or regenerate (synthetic) even if data is there
    # synthetic dataset (source=synthetic): sizes and seed
    synthetic_train_players: int = 48  # training identities
    synthetic_test_players: int = 12  # test identities (one query each)
    synthetic_challenge_players: int = 12  # challenge identities (anonymous names)
    synthetic_players_per_sequence: int = 6  # players sharing a game (kits, court, lighting): look-alike teammates
    synthetic_frames_per_player: tuple[int, int] = (6, 12)  # min and max crops per player
    synthetic_occlusion_prob: float = 0.25  # chance that another player of the game overlaps a crop
    synthetic_blur_prob: float = 0.3  # chance of motion or gaussian blur on a crop
    seed: int = 0  # same seed, same bytes
    progress: bool = True  # show progress bars

    # what can work, per field: checked before any work starts (one line per field; see clipreid.config)
    checks: ClassVar[Checks] = {
        "url": rule(lambda v, c: v.split("://", 1)[0] in ("http", "https", "file"), "an http(s):// or file:// address"),
        "synthetic_train_players": at_least(2),
        "synthetic_test_players": at_least(1),
        "synthetic_challenge_players": at_least(1),
        "seed": between(0, 2**32 - 1),
    }


def main(cfg: Config) -> None:
    check_writable(cfg.data_dir, "--data-dir")
    if cfg.source == "synthetic":
        from clipreid.synthetic import SyntheticSpec, generate_synthetic_dataset, save_contact_sheet

        out = cfg.data_dir / "synthetic_reid"
        spec = SyntheticSpec(
            num_train_players=cfg.synthetic_train_players,
            num_test_players=cfg.synthetic_test_players,
            num_challenge_players=cfg.synthetic_challenge_players,
            players_per_sequence=cfg.synthetic_players_per_sequence,
            frames_per_player=cfg.synthetic_frames_per_player,
            occlusion_prob=cfg.synthetic_occlusion_prob,
            blur_prob=cfg.synthetic_blur_prob,
            seed=cfg.seed,
        )
        counts = generate_synthetic_dataset(out, spec, overwrite=cfg.force, progress=cfg.progress)
        sheet = save_contact_sheet(out, out / "contact_sheet.png")
        print(", ".join(f"{folder}: {n}" for folder, n in counts.items()))
        print(f"contact sheet: {sheet}")
    else:
        from clipreid.download import fetch_synergyreid

        out = fetch_synergyreid(cfg.data_dir, cfg.edition, url=cfg.url, force=cfg.force, progress=cfg.progress)
    save_config(cfg, out / "download_config.json")
    print(f"data ready in {out}; next: python preprocess_data.py --data-dir {out}")


if __name__ == "__main__":
    run(Config, main)
