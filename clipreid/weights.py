"""Weights files apart from model building: every format's reader, and the encoder rebuilt from a file.

``read_encoder_file`` turns any supported file into an ``EncoderFile`` (spec, preprocessing, architecture, state
dict): a clipreid checkpoint (``clipreid.checkpoint``), an original CLIP-ReIdent ``weights_e{epoch}.pth`` (its
open_clip tower read from the tensors, ``--checkpoint-model`` naming what they cannot say), a 2023-code timm
checkpoint, and an exported ``model.safetensors`` with its model card in the metadata. ``rebuild_encoder`` and
``load_encoder`` build the architecture (``clipreid.model``, offline when the file stores it) and load the weights
strictly.

Invariants: a file is read with ``weights_only=True`` (no pickled code); weights load strictly (a missing,
unexpected or mis-shaped tensor is a one-line UserError); an encoder scores images with the preprocessing stored
with its weights. A new format is one reader here (``WEIGHTS_FORMATS``, or ``READERS_BY_SUFFIX`` for a suffix of
its own); this module imports ``model``, never the other way round, and ``export`` imports both.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .checkpoint import checkpoint_file, load_checkpoint_file
from .errors import UserError, first_line
from .model import (
    DEFAULT_LOGIT_SCALE,
    IMAGENET_MEAN,
    IMAGENET_STD,
    OPENAI_MEAN,
    OPENAI_STD,
    ModelSpec,
    ReIDEncoder,
    build_architecture,
)

METADATA_KEY = "clipreid"  # the safetensors metadata entry that holds an export's model card (JSON)
CARD_NAME = "model.json"  # the same card beside the export, for people and other tools


@dataclass
class EncoderFile:
    """What a weights file holds, whatever its format: enough to rebuild the encoder and load it strictly."""

    spec: ModelSpec
    weights: dict[str, torch.Tensor]  # the ReIDEncoder's state dict
    preprocess: dict[str, Any]  # image_size/mean/std/interpolation; missing keys: the architecture's
    arch: dict[str, Any] | None = None  # see ReIDEncoder.arch; None: rebuild from the spec
    format: str = "clipreid"  # clipreid, clip-reident, timm-2023 or safetensors
    drop_unexpected: tuple[str, ...] = field(default_factory=tuple)  # key prefixes to leave out (a 2023 classifier)


def encoder_checkpoint(encoder: ReIDEncoder) -> dict[str, Any]:
    """The entries of a clipreid checkpoint that rebuild ``encoder``: weights, spec, preprocessing, architecture."""
    return {"model": encoder.state_dict(), "model_spec": encoder.spec.to_dict(), "preprocess": encoder.preprocessing(),
            "arch": encoder.arch}


def _read_clipreid(state: Any, path: Path, model: str | None) -> EncoderFile | None:
    if not isinstance(state, dict) or "model" not in state or "model_spec" not in state:
        return None
    if not isinstance(state["model"], dict) or not isinstance(state["model_spec"], dict):
        raise UserError(f"checkpoint {path} is damaged: its 'model' / 'model_spec' entries are not dictionaries")
    if not isinstance(state.get("preprocess"), dict):
        raise UserError(f"checkpoint {path} is damaged: it has no 'preprocess' entry (the input size, mean, std and "
                        "resizing it was trained with), which train.py always writes")
    spec = ModelSpec.from_dict(state["model_spec"])
    return EncoderFile(spec, dict(state["model"]), dict(state["preprocess"]), state.get("arch"), "clipreid")


def encoder_file_of(state: dict[str, Any], path: str | Path) -> EncoderFile:
    """The EncoderFile of an already loaded clipreid checkpoint dict (e.g. the last.pt a run resumes from)."""
    found = _read_clipreid(state, Path(path), None)
    if found is None:
        raise UserError(f"{path} is not a clipreid checkpoint (no 'model' and 'model_spec' entries)")
    return found


def _strip_module(state: dict[str, Any]) -> dict[str, Any]:
    if state and all(isinstance(k, str) and k.startswith("module.") for k in state):
        return {k.removeprefix("module."): v for k, v in state.items()}  # saved from DataParallel
    return state


def _resblock_count(keys: list[str], prefix: str) -> int:
    """1 + the largest block index under ``prefix`` (``transformer.resblocks.`` or ``layer1.``), 0 if none."""
    found = [int(k[len(prefix):].split(".")[0]) for k in keys if k.startswith(prefix)]
    return 1 + max(found) if found else 0


def _open_clip_shapes(visual: dict[str, torch.Tensor], path: Path) -> dict[str, Any]:
    """What the tensors of an open_clip visual tower fix: the family (ViT or ModifiedResNet), input size, width,
    depth, patch size and MLP width of a ViT, block counts of a ResNet, the output width of a kept projection."""
    keys = list(visual)
    try:
        if "attnpool.positional_embedding" in visual:  # open_clip's ModifiedResNet (RN50, RN101, RN50x4, ...)
            grid = math.isqrt(visual["attnpool.positional_embedding"].shape[0] - 1)
            return {"family": "ResNet", "image_size": grid * 32, "width": int(visual["conv3.weight"].shape[0]),
                    "layers": [_resblock_count(keys, f"layer{i}.") for i in range(1, 5)],
                    "embed_dim": int(visual["attnpool.c_proj.weight"].shape[0])}
        if "positional_embedding" in visual:
            width, _, patch, _ = visual["conv1.weight"].shape
            tokens = visual["positional_embedding"].shape[0]
            grid = math.isqrt(tokens - 1)
            if grid * grid + 1 != tokens:
                raise UserError(f"checkpoint {path}: {tokens} position embeddings in model.visual.* are not a square "
                                "grid plus a class token; expected an original CLIP-ReIdent open_clip ViT")
            proj = visual.get("proj")
            return {"family": "ViT", "image_size": grid * patch, "width": int(width), "patch_size": int(patch),
                    "layers": _resblock_count(keys, "transformer.resblocks."),
                    "mlp_width": int(visual["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]),
                    "embed_dim": int(proj.shape[1]) if proj is not None else None}
    except (KeyError, ValueError, IndexError) as err:
        raise UserError(f"checkpoint {path} looks like an original CLIP-ReIdent file (model.visual.*) but lacks its "
                        f"{first_line(err)} tensor: is the file complete?") from err
    raise UserError(f"checkpoint {path}: its model.visual.* tensors are neither an open_clip ViT nor an open_clip "
                    "ResNet (no positional_embedding, no attnpool); expected an original CLIP-ReIdent file")


def _shape_problem(model_cfg: dict[str, Any], shapes: dict[str, Any]) -> str | None:
    """How the open_clip model config differs from the tensors' shapes (None: it fits; the input size is the
    file's own either way, as the positional embedding fixes it)."""
    vision = model_cfg.get("vision_cfg", {})
    resnet = isinstance(vision.get("layers"), (list, tuple))
    if vision.get("timm_model_name") or resnet != (shapes["family"] == "ResNet"):
        return f"it is not an open_clip {shapes['family']}"
    own = {"width": vision.get("width", 768), "layers": list(vision["layers"]) if shapes["family"] == "ResNet"
           else vision.get("layers", 12)}
    if shapes["family"] == "ViT":
        own["patch_size"] = vision.get("patch_size", 16)
        own["mlp_width"] = int(own["width"] * vision.get("mlp_ratio", 4.0))
    if shapes.get("embed_dim") is not None:
        own["embed_dim"] = model_cfg.get("embed_dim")
    for key, value in own.items():
        if value != shapes[key]:
            return f"{key} {value} in its config, {shapes[key]} in the file"
    return None


def _describe_shapes(shapes: dict[str, Any]) -> str:
    size = shapes["image_size"]
    if shapes["family"] == "ResNet":
        return f"open_clip ResNet, layers {shapes['layers']}, width {shapes['width']}, {size} px"
    return f"open_clip ViT, width {shapes['width']}, {shapes['layers']} layers, patch {shapes['patch_size']}, {size} px"


def _open_clip_names_of(shapes: dict[str, Any]) -> list[str]:
    """The open_clip model names whose visual tower has these shapes, those of the same input size and the
    shortest names (ViT-H-14 before mt5-xl-ViT-H-14) first."""
    import open_clip

    found = []
    for name in open_clip.list_models():
        cfg = open_clip.get_model_config(name) or {}
        if _shape_problem(cfg, shapes) is None:
            found.append((cfg["vision_cfg"].get("image_size", 224) != shapes["image_size"], len(name), name))
    return [name for *_, name in sorted(found)]


def _resolve_open_clip_tower(visual: dict[str, torch.Tensor], path: Path, model: str | None
                             ) -> tuple[str, dict[str, Any]]:
    """(name, open_clip model config) that rebuilds the original's visual tower of this file, or a one-line refusal.

    The tensors fix the architecture's shapes but not everything the original took from the model name it passed
    to ``open_clip.create_model``: a ViT's activation (QuickGELU for OpenAI weights, GELU for LAION and most
    others) and its head width (64 for most, 80 for ViT-H, 88 for ViT-g, 104 for ViT-bigG: the packed q/k/v
    projection is (3w, w) whatever the head count). So a ViT file needs ``checkpoint_model``. A ResNet's only
    such choice, its attention pool's head width, is 64 in every open_clip config, so a ResNet file is read from
    its tensors alone (``checkpoint_model`` may still name it).
    """
    import open_clip

    shapes = _open_clip_shapes(visual, path)
    names = _open_clip_names_of(shapes)
    if model:
        cfg = open_clip.get_model_config(model) if model in open_clip.list_models() else None
        problem = "not an open_clip model name" if cfg is None else _shape_problem(cfg, shapes)
        if problem:
            hint = f"; names that fit: {', '.join(names[:6])}" if names else ""
            raise UserError(f"--checkpoint-model {model} does not fit checkpoint {path} ({_describe_shapes(shapes)}): "
                            f"{problem}{hint}")
        name = model
    elif shapes["family"] == "ResNet":
        plain = [n for n in names if not n.endswith("-quickgelu")]
        name = (plain or names or [None])[0]
        cfg = open_clip.get_model_config(name) if name else {
            "embed_dim": shapes["embed_dim"], "vision_cfg": {"layers": shapes["layers"], "width": shapes["width"]}}
        name = name or f"RN-{'-'.join(map(str, shapes['layers']))}-w{shapes['width']}"
    else:
        quick = [n for n in names if n.endswith("-quickgelu")]
        gelu = [n for n in names if not n.endswith("-quickgelu")]
        if quick or gelu:
            hint = (f"--checkpoint-model {(quick or ['<name>-quickgelu'])[0]} (QuickGELU: OpenAI weights, as the "
                    f"authors' published file) or {(gelu or ['<name>'])[0]} (GELU: LAION and most others)")
        else:
            hint = "--checkpoint-model with the open_clip model name it was trained as (open_clip.add_model_config " \
                   "registers a custom one)"
        raise UserError(f"checkpoint {path} holds an {_describe_shapes(shapes)}, but its tensors do not say its "
                        f"activation or head count, which the original took from the model name: pass {hint}")
    cfg = copy.deepcopy(cfg)
    cfg["vision_cfg"]["image_size"] = shapes["image_size"]  # the file's own, fixed by its positional embedding
    return name, cfg


def _logit_scale(state: dict[str, Any]) -> torch.Tensor:
    """An original or 2023 file's ``model.logit_scale``, or the fresh head's 1/0.07 when it has none."""
    return state.get("model.logit_scale", torch.tensor(math.log(DEFAULT_LOGIT_SCALE)))


def _read_clip_reident(state: Any, path: Path, model: str | None) -> EncoderFile | None:
    """The original CLIP-ReIdent weights_e{epoch}.pth: model.logit_scale and model.visual.<open_clip tower>
    (a ViT with its projection removed, or a ModifiedResNet)."""
    if not isinstance(state, dict) or "model.visual.conv1.weight" not in state:
        return None
    visual = {k.removeprefix("model.visual."): v for k, v in state.items() if k.startswith("model.visual.")}
    name, model_cfg = _resolve_open_clip_tower(visual, path, model)
    spec = ModelSpec(name, "none", remove_proj="proj" not in visual, interpolation="bilinear")
    weights = {f"backbone.{k}": v for k, v in visual.items()}
    weights["logit_scale"] = _logit_scale(state)
    size = model_cfg["vision_cfg"]["image_size"]
    preprocess = {"image_size": [size, size], "mean": list(OPENAI_MEAN), "std": list(OPENAI_STD),
                  "interpolation": "bilinear"}
    return EncoderFile(spec, weights, preprocess, {"kind": "open_clip", "model_cfg": model_cfg}, "clip-reident")


def _read_timm_2023(state: Any, path: Path, model: str | None) -> EncoderFile | None:
    """The 2023 winners' timm checkpoints: model.<timm keys>, maybe model.logit_scale; the timm name is given."""
    if not isinstance(state, dict) or not state or not all(isinstance(k, str) and k.startswith("model.")
                                                         for k in state):
        return None
    if not model:
        raise UserError(f"checkpoint {path} looks like one of the 2023 code (tensors under 'model.'): name its timm "
                        "model with --checkpoint-model NAME (load_encoder(path, model=NAME))")
    import timm

    name = model.removeprefix("timm:")
    if not timm.is_model(name.split(".")[0]):
        raise UserError(f"checkpoint_model: '{model}' is not a timm model name")
    weights = {f"backbone.{k.removeprefix('model.')}": v for k, v in state.items() if k != "model.logit_scale"}
    weights["logit_scale"] = _logit_scale(state)
    # the 2023 code normalised every timm backbone with ImageNet mean/std and letterboxed as CLIP-ReIdent did
    spec = ModelSpec(name, "none", remove_proj=False, mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation="bilinear")
    preprocess = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "interpolation": "bilinear"}
    return EncoderFile(spec, weights, preprocess, {"kind": "timm", "name": name, "img_size": None}, "timm-2023",
                       drop_unexpected=("classifier",))


def read_safetensors(path: str | Path) -> EncoderFile:
    """What an exported ``model.safetensors`` holds (weights, spec, preprocessing, architecture): for load_encoder."""
    try:
        from safetensors import safe_open
        from safetensors.torch import load_file
    except ImportError:
        raise UserError(f"reading {path} needs safetensors: pip install safetensors") from None
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        state = load_file(str(path))
    except Exception as err:  # the library raises its own error types for damaged files
        raise UserError(f"cannot read {path}: {first_line(err)}") from None
    try:
        card = json.loads(metadata[METADATA_KEY])
        spec = ModelSpec.from_dict(card["model_spec"])
        pre = card["preprocessing"]
        preprocess = {"image_size": [int(x) for x in pre["input_size"]], "mean": pre["mean"], "std": pre["std"],
                      "interpolation": pre["interpolation"]}
        scale = float(card["logit_scale"])
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(f"{path} has no clipreid model card (safetensors metadata '{METADATA_KEY}'): {err}; export "
                        "it with python -m clipreid.export") from None
    weights = {f"backbone.{k}": v for k, v in state.items()}
    weights["logit_scale"] = torch.tensor(math.log(scale), dtype=torch.float32)
    return EncoderFile(spec, weights, preprocess=preprocess, arch=card["arch"], format="safetensors")


# The readers of torch.save files, tried in order: a reader returns None for a format that is not its own. A
# format with its own suffix is an entry of READERS_BY_SUFFIX instead, chosen before torch.load.
WEIGHTS_FORMATS = (_read_clipreid, _read_clip_reident, _read_timm_2023)
READERS_BY_SUFFIX = {".safetensors": read_safetensors}


def read_encoder_file(path: str | Path, model: str | None = None) -> EncoderFile:
    """Read any supported weights file (a clipreid checkpoint or run folder, an original CLIP-ReIdent
    ``weights_e{epoch}.pth`` with ``model`` naming its open_clip model (a ViT's activation and head width are not in
    its tensors), a 2023-code timm checkpoint with ``model`` naming its timm model, a ``.safetensors`` export)."""
    path = checkpoint_file(path)
    if path.suffix in READERS_BY_SUFFIX:
        return READERS_BY_SUFFIX[path.suffix](path)
    state = load_checkpoint_file(path)
    if isinstance(state, dict):
        state = _strip_module(state)
    for reader in WEIGHTS_FORMATS:
        found = reader(state, path, model)
        if found is not None:
            return found
    raise UserError(f"{path} is neither a clipreid checkpoint (a dict with 'model' and 'model_spec', written by "
                    "train.py) nor an original CLIP-ReIdent / 2023-code weights file ('model.visual.*' or 'model.*' "
                    "tensors); give a best.pt / last.pt or its run folder")


def _load_weights(encoder: ReIDEncoder, found: EncoderFile, path: Path) -> None:
    """Load ``found.weights`` strictly, with one-line errors for keys or shapes that do not fit."""
    own = encoder.state_dict()
    weights = dict(found.weights)
    if found.drop_unexpected:
        classifier = getattr(encoder.backbone, "pretrained_cfg", {}).get("classifier")
        if classifier:  # the 2023 code kept the ImageNet head; our backbones have none
            weights = {k: v for k, v in weights.items()
                       if k in own or not k.startswith(f"backbone.{classifier}.")}
    name = found.spec.name
    not_tensors = [k for k, v in weights.items() if not isinstance(v, torch.Tensor)]
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    if missing or unexpected or not_tensors:
        raise UserError(f"checkpoint {path} does not match {name}: missing {missing[:3]}, unexpected "
                        f"{unexpected[:3]}{f', not tensors {not_tensors[:3]}' if not_tensors else ''} "
                        f"({len(missing)} missing, {len(unexpected)} unexpected); was it saved from another model?")
    bad = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in weights.items() if tuple(v.shape) != own[k].shape]
    if bad:
        k, got, want = bad[0]
        raise UserError(f"checkpoint {path} does not fit {name}: {k} is {list(got)} in the file but {list(want)} in "
                        f"the model ({len(bad)} tensors differ); the file was saved from another architecture or "
                        "input size")
    encoder.load_state_dict(weights, strict=True)


def rebuild_encoder(found: EncoderFile, path: str | Path, *, training: bool = False) -> ReIDEncoder:
    """The encoder of a read file: its architecture (offline when stored), its preprocessing, its weights."""
    spec = found.spec if training else dataclasses.replace(found.spec, grad_checkpointing=False)
    encoder = build_architecture(spec, found.arch)
    encoder.spec = found.spec
    encoder.set_preprocessing(found.preprocess)
    _load_weights(encoder, found, Path(path))
    return encoder


def load_encoder(path: str | Path, device: str | torch.device = "cpu", model: str | None = None) -> ReIDEncoder:
    """Rebuild an encoder from a checkpoint (see ``read_encoder_file``), in eval mode on ``device``: the stored
    architecture and preprocessing, weights loaded strictly. ``model``: the open_clip name of an original
    CLIP-ReIdent ViT file (its activation and head width), the timm name of a 2023-code checkpoint."""
    found = read_encoder_file(path, model)
    return rebuild_encoder(found, checkpoint_file(path)).to(device).eval()
