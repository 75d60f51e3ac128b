"""Models you can ship: a checkpoint as safetensors weights with a JSON model card, and as an ONNX encoder.

    python -m clipreid.export model/ViT-L-14-quickgelu_test_seed1/best.pt [--output-dir DIR] [--opset 18]

writes into ``DIR`` (default: the run folder's ``export/``), as one set (staged, then moved into place):

- ``model.safetensors``: the backbone's own weights, under the keys of the open_clip visual tower or the timm
  model (no clipreid prefix), with the model card in its metadata (key ``clipreid``). ``load_encoder`` reads it
  back; open_clip and timm load it directly (see the README's "Export").
- ``model.json``: the model card: the model spec, the preprocessing (input size, mean, std, interpolation,
  letterboxing), the feature size and the logit scale.
- ``model.onnx``: the encoder with its normalisation inside the graph. Input ``images``: uint8 (N, 3, H, W)
  RGB, letterboxed as in training (resized to fit H x W keeping the aspect ratio, zero padding, centred);
  output ``features``: float32 (N, D), L2-normalised; the batch size N is dynamic. At export its outputs are
  compared with PyTorch's under onnxruntime at batch sizes 1 and 3: more than 1e-4 apart, the export fails.

Writing needs ``onnx``, ``onnxscript``, ``onnxruntime`` and ``safetensors`` (``pip install clipreid[export]``);
reading the safetensors file needs only ``safetensors``, which timm already depends on.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import checkpoint_file, run_dir_of
from .config import run_guarded
from .errors import UserError, first_line
from .fileio import check_writable, file_set, os_error_in, write_json
from .model import BACKENDS, ReIDEncoder, backend_of, build_architecture
from .weights import CARD_NAME, METADATA_KEY, load_encoder

EXPORT_PACKAGES = ("onnx", "onnxscript", "onnxruntime", "safetensors")
INSTALL_HINT = "pip install clipreid[export] (or: pip install onnx onnxscript onnxruntime safetensors)"
WEIGHTS_NAME, ONNX_NAME = "model.safetensors", "model.onnx"
CARD_FORMAT = "clipreid-export"
TOLERANCE = 1e-4
CHECK_BATCHES = (1, 3)  # two batch sizes: the ONNX graph's batch dimension must really be dynamic
DEFAULT_OPSET = 18
EXTERNAL_DATA_BYTES = 1 << 31  # ONNX protobufs stop at 2 GB: larger weights go into model.onnx.data


def require_export_packages() -> None:
    """UserError naming the missing packages when the export extra is not installed."""
    missing = [name for name in EXPORT_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(f"clipreid.export needs {', '.join(missing)}: {INSTALL_HINT}")


# --------------------------------------------------------------------------------------------------------------
# safetensors + model card


def model_card(encoder: ReIDEncoder) -> dict[str, Any]:
    """What it takes to use the weights: the spec, the preprocessing, the feature size, the ONNX interface."""
    h, w = encoder.image_size
    return {
        "format": CARD_FORMAT,
        "version": 1,
        "library": BACKENDS[backend_of(encoder.spec.name)].library,
        "model_spec": encoder.spec.to_dict(),
        "preprocessing": {
            "input_size": [h, w],  # height, width
            "mean": list(encoder.mean),
            "std": list(encoder.std),
            "interpolation": encoder.interpolation,
            "resize": "letterbox: fit inside input_size keeping the aspect ratio, pad with 0 (black), centred",
            "channels": "RGB",
        },
        "feature_dim": encoder.feature_dim,
        "logit_scale": float(encoder.scale().detach()),
        "arch": encoder.arch,  # rebuilds the architecture offline (hf-hub:/local-dir: models)
        "onnx": {"input": "images: uint8 (N, 3, H, W) RGB, letterboxed; normalisation is inside the graph",
                 "output": "features: float32 (N, feature_dim), L2-normalised"},
    }


def save_safetensors(encoder: ReIDEncoder, path: str | Path) -> dict[str, Any]:
    """Write the backbone's weights (its own keys) with the model card in the metadata; return the card."""
    from safetensors.torch import save_file

    card = model_card(encoder)
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.backbone.state_dict().items()}
    try:
        save_file(state, str(path), metadata={METADATA_KEY: json.dumps(card)})
    except Exception as err:  # safetensors wraps a full disk or an I/O error in its own error type
        os_error = os_error_in(err, path)
        if os_error is None:
            raise
        raise os_error from err
    return card


# --------------------------------------------------------------------------------------------------------------
# ONNX


class OnnxEncoder(nn.Module):
    """uint8 letterboxed RGB images (N, 3, H, W) -> L2-normalised float32 features: what the ONNX file computes."""

    def __init__(self, encoder: ReIDEncoder) -> None:
        super().__init__()
        self.encoder = encoder
        self.register_buffer("mean", torch.tensor(encoder.mean, dtype=torch.float32).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(encoder.std, dtype=torch.float32).view(1, 3, 1, 1) * 255)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.float() - self.mean) / self.std
        return F.normalize(self.encoder(x).float(), dim=-1)


def _plain_blocks(encoder: ReIDEncoder) -> ReIDEncoder:
    """The same weights in a build with open_clip's own attention and MLP modules (no clipreid.blocks)."""
    plain = build_architecture(encoder.spec, encoder.arch, fast_blocks=False)
    plain.load_state_dict(encoder.state_dict(), strict=True)
    plain.spec = encoder.spec
    plain.set_preprocessing(encoder.preprocessing())
    return plain.eval()


def _export_onnx(module: OnnxEncoder, path: Path, opset: int) -> None:
    h, w = module.encoder.image_size
    example = torch.zeros(2, 3, h, w, dtype=torch.uint8)
    large = sum(p.numel() * p.element_size() for p in module.parameters()) >= EXTERNAL_DATA_BYTES
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), str(path), input_names=["images"], output_names=["features"],
                          dynamic_shapes={"images": {0: torch.export.Dim("batch")}}, opset_version=opset,
                          dynamo=True, external_data=large, verbose=False)


def check_onnx(path: str | Path, module: nn.Module, *, batches: Sequence[int] = CHECK_BATCHES, seed: int = 0
               ) -> float:
    """The largest absolute difference between onnxruntime's and PyTorch's features on random uint8 images."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    h, w = module.encoder.image_size
    generator = torch.Generator().manual_seed(seed)
    worst = 0.0
    with torch.no_grad():
        for n in batches:
            images = torch.randint(0, 256, (n, 3, h, w), dtype=torch.uint8, generator=generator)
            got = session.run(["features"], {"images": images.numpy()})[0]
            if got.shape != (n, module.encoder.feature_dim):
                raise UserError(f"ONNX export check: batch of {n} gave features of shape {got.shape}, expected "
                                f"({n}, {module.encoder.feature_dim})")
            worst = max(worst, float(np.abs(got - module(images).numpy()).max()))
    return worst


@dataclass
class ExportReport:
    """What ``export`` wrote and how closely the ONNX file matches PyTorch."""

    output_dir: Path
    files: list[Path] = field(default_factory=list)
    max_abs_diff: float = 0.0
    fast_blocks: bool = True

    def summary(self) -> str:
        lines = [f"wrote {p}" for p in self.files]
        lines.append(f"ONNX vs PyTorch (batch sizes {', '.join(map(str, CHECK_BATCHES))}): max |difference| "
                     f"{self.max_abs_diff:.2e} (tolerance {TOLERANCE:g})")
        return "\n".join(lines)


def export(checkpoint: str | Path, output_dir: str | Path | None = None, *, opset: int = DEFAULT_OPSET,
           tolerance: float = TOLERANCE) -> ExportReport:
    """Export a clipreid checkpoint (or run folder) as safetensors + model card + checked ONNX; see the module."""
    require_export_packages()
    if opset < DEFAULT_OPSET:
        raise UserError(f"opset: torch's ONNX exporter needs opset {DEFAULT_OPSET} or later, got {opset}")
    path = checkpoint_file(checkpoint)
    out = Path(output_dir) if output_dir is not None else run_dir_of(path) / "export"
    check_writable(out, "--output-dir")  # before the model is loaded, not after the export
    encoder = load_encoder(path, "cpu").float().eval()
    report = ExportReport(out)
    with file_set(out) as stage:
        card = save_safetensors(encoder, stage / WEIGHTS_NAME)
        write_json(stage / CARD_NAME, card)
        module = OnnxEncoder(encoder).eval()
        try:
            _export_onnx(module, stage / ONNX_NAME, opset)
        except Exception as err:  # the fast attention blocks did not export: the same weights in open_clip's modules
            if isinstance(err, OSError) and err.errno is not None:  # the disk, not the blocks
                raise
            for leftover in stage.glob(f"{ONNX_NAME}*"):
                leftover.unlink()
            module = OnnxEncoder(_plain_blocks(encoder)).eval()
            report.fast_blocks = False
            try:
                _export_onnx(module, stage / ONNX_NAME, opset)
            except Exception as err:
                if isinstance(err, OSError) and err.errno is not None:
                    raise
                raise UserError(f"ONNX export of {encoder.spec.name} failed: {first_line(err)}") from err
        report.max_abs_diff = check_onnx(stage / ONNX_NAME, module)
        if not report.max_abs_diff <= tolerance:
            raise UserError(f"ONNX export of {path}: onnxruntime's features differ from PyTorch's by "
                            f"{report.max_abs_diff:.2e} (more than {tolerance:g}); nothing was written")
        report.files = [out / p.name for p in sorted(stage.iterdir())]
    return report


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m clipreid.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="a clipreid checkpoint (best.pt, last.pt) or its run folder")
    parser.add_argument("--output-dir", type=Path, default=None, help="default: <run folder>/export")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    args = parser.parse_args(argv)
    # the scripts' way out: one line for every expected failure, "interrupted" (exit 130) on Ctrl-C
    run_guarded(lambda: print(export(args.checkpoint, args.output_dir, opset=args.opset).summary()))


if __name__ == "__main__":
    main()
