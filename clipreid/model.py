"""The image encoder: an open_clip visual tower (text tower dropped) or a timm backbone, plus a learnable logit scale.

    encoder = build_encoder(ModelSpec("ViT-L-14-quickgelu", "openai"))   # the CLIP-ReIdent recipe
    encoder = build_encoder(ModelSpec("eva02_large_patch14_448", "mim_m38m_ft_in22k_in1k"))   # a timm model
    encoder = build_encoder(ModelSpec("tiny-vit", "none"))               # CPU tests and the demo
    encoder = load_encoder("model/<run>/best.pt")                        # a clipreid checkpoint
    encoder = load_encoder("weights_e3.pth", model="ViT-L-14-quickgelu")  # the original CLIP-ReIdent's (OpenAI ViT-L)

A checkpoint stores the ``ModelSpec``, the preprocessing used in training (input size, mean, std, resize
interpolation) and what rebuilds the architecture offline (the open_clip model config, or the timm name with its
tag), so every rebuild scores images exactly as training saw them without fetching any pretrained weights.
``read_encoder_file`` turns any supported file into an ``EncoderFile`` (spec, preprocessing, architecture, state
dict): clipreid checkpoints, the original CLIP-ReIdent ``weights_e{epoch}.pth`` and the 2023 code's timm ones.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import logging
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .blocks import speed_up_blocks
from .checkpoint import checkpoint_file, load_checkpoint_file
from .errors import UserError, first_line
from .transforms import INTERPOLATIONS

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TINY_VIT = "tiny-vit"
TINY_VIT_DEMO = "tiny-vit-demo"  # 8 px patches (4x the tokens): sees numbers and socks; for `make demo`
TINY_PATCH = {TINY_VIT: 16, TINY_VIT_DEMO: 8}
NO_WEIGHTS = ("", "none")
DEFAULT_LOGIT_SCALE = 1 / 0.07


@dataclass
class ModelSpec:
    """What to build: a model name, its pretrained weights, the few options that change the architecture, and
    the preprocessing overrides (none = the weights' own)."""

    name: str = "ViT-L-14-quickgelu"  # open_clip name, timm name, or "tiny-vit"
    pretrained: str = "openai"  # open_clip tag / timm tag, a weights file, or "none"; ignored for local-dir:/hf-hub:
    # drop the visual projection of a ViT (CLIP-ReIdent: 1024-d features for ViT-L); an open_clip ResNet's attention
    # pool keeps its output projection (it is the pool's own output layer)
    remove_proj: bool = True
    img_size: tuple[int, int] | None = None  # (height, width); None = the model's own input size
    grad_checkpointing: bool = False  # recompute activations in backward: less memory, about 30% slower
    pretrained_tag: str | None = None  # the open_clip/timm tag a weights *file* came from (its preprocessing is used)
    mean: tuple[float, float, float] | None = None  # normalisation mean; None = the weights' own
    std: tuple[float, float, float] | None = None  # normalisation std; None = the weights' own
    interpolation: str = "bilinear"  # letterbox resize: bilinear (OpenCV's, as the original) or bicubic

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in ("img_size", "mean", "std"):
            d[k] = list(d[k]) if d[k] is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        d = dict(d)
        for k in ("img_size", "mean", "std"):
            if d.get(k) is not None:
                d[k] = tuple(d[k])
        return cls(**{k: v for k, v in d.items() if k in {f.name for f in dataclasses.fields(cls)}})


class ReIDEncoder(nn.Module):
    """Backbone mapping normalised images (B, 3, H, W) to features (B, D), with the contrastive logit scale.

    ``image_size``, ``mean``, ``std`` and ``interpolation`` are the preprocessing its images get (letterbox to
    ``image_size`` with ``interpolation``, then normalise); ``arch`` says how to rebuild the architecture offline.
    """

    def __init__(self, backbone: nn.Module, spec: ModelSpec, image_size: tuple[int, int], mean: tuple[float, ...],
                 std: tuple[float, ...], feature_dim: int, logit_scale: float, interpolation: str = "bilinear",
                 arch: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.spec = spec
        self.arch = arch
        self.feature_dim = int(feature_dim)
        self.set_preprocess({"image_size": image_size, "mean": mean, "std": std, "interpolation": interpolation})
        # Stored as a log, as in CLIP, and trained unclamped as in CLIP-ReIdent: a clamp at the starting value
        # (100 for OpenAI weights) would have a zero gradient there and freeze it.
        self.logit_scale = nn.Parameter(torch.tensor(math.log(logit_scale), dtype=torch.float32))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images)

    def scale(self) -> torch.Tensor:
        """exp(logit scale): the temperature of the contrastive losses, a trained parameter."""
        return self.logit_scale.exp()

    def preprocess(self) -> dict[str, Any]:
        """The preprocessing as stored in checkpoints: image_size (h, w), mean, std, interpolation."""
        return {"image_size": list(self.image_size), "mean": list(self.mean), "std": list(self.std),
                "interpolation": self.interpolation}

    def set_preprocess(self, values: dict[str, Any]) -> None:
        """Set (some of) image_size, mean, std and interpolation, checked."""
        if values.get("image_size") is not None:
            self.image_size = tuple(int(s) for s in values["image_size"])
        for key in ("mean", "std"):
            if values.get(key) is not None:
                setattr(self, key, _channel_triple(values[key], key))
        if values.get("interpolation") is not None:
            self.interpolation = check_interpolation(values["interpolation"])

    def describe(self) -> str:
        n = sum(p.numel() for p in self.parameters())
        h, w = self.image_size
        return f"{self.spec.name} ({self.spec.pretrained or 'none'}): {n / 1e6:.1f}M parameters, {h}x{w} input " \
               f"({self.interpolation}, mean {_fmt(self.mean)}, std {_fmt(self.std)}), {self.feature_dim}-d " \
               f"features, logit scale {self.scale().item():.2f}"


def _fmt(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.3g}" for v in values) + ")"


def _channel_triple(values: Any, name: str) -> tuple[float, float, float]:
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        out = ()
    if len(out) != 3 or (name == "std" and min(out) <= 0):
        raise UserError(f"{name} must be 3 numbers, one per RGB channel{' (all > 0)' if name == 'std' else ''}, "
                        f"not {values!r}")
    return out  # type: ignore[return-value]


def check_interpolation(value: str) -> str:
    """``value`` if it is a known resize interpolation, else a one-line UserError."""
    if value not in INTERPOLATIONS:
        raise UserError(f"interpolation must be {' or '.join(INTERPOLATIONS)}, not {value!r}")
    return value


@dataclass
class _Parts:
    """What a builder returns: the backbone and its own preprocessing, initial logit scale and rebuild recipe."""

    backbone: nn.Module
    size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    scale: float = DEFAULT_LOGIT_SCALE
    arch: dict[str, Any] | None = None


def measure_feature_dim(backbone: nn.Module, size: tuple[int, int], name: str = "the model") -> int:
    """The feature size of ``backbone``, from one forward pass of a dummy image (eval mode, no grad).

    ``num_features`` / ``output_dim`` attributes are wrong for several families (timm mobilenetv3/v4, ghostnet,
    lcnet, hgnetv2; open_clip towers with timm trunks).
    """
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            param = next(backbone.parameters(), None)
            dummy = torch.zeros(1, 3, *size, device=param.device if param is not None else "cpu")
            out = backbone(dummy)
    except Exception as err:
        raise UserError(f"{name} does not run on {size[0]}x{size[1]} images ({first_line(err)}); "
                        "choose another img_size") from err
    finally:
        backbone.train(was_training)
    if isinstance(out, (tuple, list)):
        out = out[0]
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UserError(f"{name} gives outputs of shape {shape}, not (batch, features): it needs a pooled head")
    return int(out.shape[1])


def _is_download_error(err: BaseException) -> bool:
    """Whether ``err`` (or what caused it) comes from the network or a model hub, not from the model itself."""
    import socket
    import urllib.error

    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        module = type(e).__module__ or ""
        if isinstance(e, (ConnectionError, TimeoutError, socket.error, urllib.error.URLError)) \
                or module.startswith(("huggingface_hub", "requests", "urllib3", "urllib")):
            return True
        e = e.__cause__ or e.__context__
    return False


# --------------------------------------------------------------------------------------------------------------
# open_clip


def _is_open_clip(name: str) -> bool:
    import open_clip

    return name.startswith(("hf-hub:", "local-dir:")) or name in open_clip.list_models()


def _weights_hint(name: str, tag: str) -> str:
    import open_clip

    cfg = open_clip.get_pretrained_cfg(name, tag)
    hub = (cfg.get("hf_hub") or "").strip("/")
    where = f"https://huggingface.co/{hub}" if hub else (cfg.get("url") or "the model's release page")
    return (f"offline? download open_clip_pytorch_model.bin (or open_clip_model.safetensors) from {where}, "
            f"save it as model/{name}-{tag}.bin and pass --pretrained model/{name}-{tag}.bin; "
            "or copy a Hugging Face cache that has it and set HF_HUB_OFFLINE=1")


def _is_resnet_cfg(model_cfg: dict[str, Any] | None) -> bool:
    vision = (model_cfg or {}).get("vision_cfg", {})
    return isinstance(vision.get("layers"), (list, tuple)) and not vision.get("timm_model_name")


def _resnet_image_size(spec: ModelSpec, model_cfg: dict[str, Any], use_weights: bool) -> int | None:
    """The square input size an open_clip ResNet is built for (its attention pool's positional embedding fixes
    it); one-line refusals for what it cannot do."""
    own = int(model_cfg["vision_cfg"].get("image_size", 224))
    if spec.grad_checkpointing:
        raise UserError(f"{spec.name}: open_clip's ResNets do not support grad_checkpointing; set it to false")
    if spec.img_size is None:
        return None
    h, w = spec.img_size
    if h != w or h % 32:
        raise UserError(f"{spec.name} takes square inputs of a multiple of 32 px (its attention pool has a fixed "
                        f"grid), not img_size {h}x{w}")
    if use_weights and h != own:
        raise UserError(f"the pretrained attention pool of {spec.name} fixes its input at {own}x{own}; drop img_size "
                        f"or train from scratch with pretrained none")
    return h


def _open_clip_model_cfg(name: str, img_size: Any) -> dict[str, Any] | None:
    """The open_clip model config of ``name`` (as built, with ``img_size`` forced), or None if unavailable."""
    import open_clip

    try:
        cfg = open_clip.get_model_config(name)
    except Exception:  # hf-hub config not cached, unreadable local-dir config: no offline rebuild, not fatal
        return None
    if cfg is None:
        return None
    cfg = copy.deepcopy(cfg)
    if img_size is not None:
        cfg.setdefault("vision_cfg", {})["image_size"] = list(img_size) if isinstance(img_size, tuple) else img_size
    return cfg


def _finish_open_clip(visual: nn.Module, spec: ModelSpec) -> nn.Module:
    if spec.remove_proj and isinstance(getattr(visual, "proj", None), nn.Parameter):
        visual.proj = None
    if spec.grad_checkpointing:
        visual.set_grad_checkpointing(True)
    return visual


def _build_open_clip(spec: ModelSpec) -> _Parts:
    import open_clip

    name, tag = spec.name, (spec.pretrained or "").strip()
    has_schema = name.startswith(("hf-hub:", "local-dir:"))
    use_weights = has_schema or tag.lower() not in NO_WEIGHTS
    is_file = not has_schema and os.path.isfile(tag)
    if use_weights and not has_schema and not is_file:
        tags = open_clip.list_pretrained_tags_by_model(name)
        if tag not in tags:
            raise UserError(f"open_clip has no '{tag}' weights for {name}; known tags: {', '.join(tags) or 'none'} "
                            "(or give a weights file, or 'none' for random init)")
    model_cfg = None if has_schema else _open_clip_model_cfg(name, None)
    kwargs: dict[str, Any] = {}
    force: Any = tuple(spec.img_size) if spec.img_size is not None else None
    if _is_resnet_cfg(model_cfg):
        force = _resnet_image_size(spec, model_cfg, use_weights)
    if force is not None:
        kwargs["force_image_size"] = force
    try:
        logging.getLogger().disabled = True  # open_clip logs a warning for the random init we asked for
        clip = open_clip.create_model(name, pretrained=tag if use_weights and not has_schema else None,
                                      load_weights=use_weights, **kwargs)
    except UserError:
        raise
    except Exception as err:  # network, hub and file errors come in many types from several libraries
        first = first_line(err)
        if has_schema:
            raise UserError(f"cannot load {name}: {first}") from err
        if is_file:
            raise UserError(f"cannot load weights file {tag} into {name}: {first}") from err
        if _is_download_error(err):
            raise UserError(f"cannot fetch the '{tag}' weights of {name} ({first}); "
                            f"{_weights_hint(name, tag)}") from err
        raise UserError(f"cannot build {name}: {first}") from err
    finally:
        logging.getLogger().disabled = False
    visual = clip.visual
    pp = open_clip.get_model_preprocess_cfg(clip)
    mean, std = tuple(pp.get("mean", OPENAI_MEAN)), tuple(pp.get("std", OPENAI_STD))
    if is_file:
        if spec.pretrained_tag:
            tags = open_clip.list_pretrained_tags_by_model(name)
            if spec.pretrained_tag not in tags:
                raise UserError(f"pretrained_tag: open_clip has no '{spec.pretrained_tag}' weights for {name}; "
                                f"known tags: {', '.join(tags) or 'none'}")
            tag_cfg = open_clip.get_pretrained_cfg(name, spec.pretrained_tag)
            mean, std = tuple(tag_cfg.get("mean", mean)), tuple(tag_cfg.get("std", std))
        elif spec.mean is None or spec.std is None:
            print(f"note: weights file {tag}: normalising with {name}'s default mean {_fmt(mean)} and std {_fmt(std)}; "
                  "set pretrained_tag to the open_clip tag the file came from (or mean/std) if it has its own")
    if _is_resnet_cfg(model_cfg) and spec.remove_proj and use_weights:
        print(f"note: {name} keeps its attention pool's output projection (remove_proj removes a ViT's projection)")
    size = visual.image_size if hasattr(visual, "image_size") else pp.get("size", 224)
    size = tuple(size) if isinstance(size, (tuple, list)) else (int(size), int(size))
    scale = float(clip.logit_scale.exp().item()) if use_weights and hasattr(clip, "logit_scale") \
        else DEFAULT_LOGIT_SCALE
    _finish_open_clip(visual, spec)
    if has_schema:
        model_cfg = _open_clip_model_cfg(name, force)  # fetched (and cached) by create_model
    elif model_cfg is not None and force is not None:
        model_cfg = _open_clip_model_cfg(name, force)
    arch = {"kind": "open_clip", "model_cfg": model_cfg} if model_cfg is not None else None
    del clip  # drops the text tower
    return _Parts(visual, size, mean, std, scale, arch)


def _open_clip_from_cfg(model_cfg: dict[str, Any], spec: ModelSpec) -> _Parts:
    """The visual tower of an open_clip model config, randomly initialised, without any download."""
    from open_clip.model import _build_vision_tower

    vision = dict(model_cfg.get("vision_cfg", {}))
    vision["timm_model_pretrained"] = False
    if isinstance(vision.get("image_size"), list):
        vision["image_size"] = tuple(vision["image_size"])
    try:
        visual = _build_vision_tower(int(model_cfg["embed_dim"]), vision, bool(model_cfg.get("quick_gelu", False)))
    except Exception as err:
        raise UserError(f"cannot rebuild {spec.name} from its stored open_clip config: {first_line(err)}") from err
    if vision.get("timm_model_name") and vision.get("image_size") and hasattr(visual, "set_input_size"):
        visual.set_input_size(vision["image_size"])  # what create_model's force_image_size does for timm trunks
    _finish_open_clip(visual, spec)
    pp = {k: v for k, v in model_cfg.get("preprocess_cfg", {}).items()}
    size = visual.image_size if hasattr(visual, "image_size") else vision.get("image_size", 224)
    size = tuple(size) if isinstance(size, (tuple, list)) else (int(size), int(size))
    return _Parts(visual, size, tuple(pp.get("mean", OPENAI_MEAN)), tuple(pp.get("std", OPENAI_STD)),
                  DEFAULT_LOGIT_SCALE, {"kind": "open_clip", "model_cfg": model_cfg})


def _build_tiny(spec: ModelSpec) -> _Parts:
    """A 4-layer, width-64 ViT on 128x64 crops: milliseconds per step on a laptop CPU (patch 16 for tiny-vit,
    8 for tiny-vit-demo)."""
    from open_clip.transformer import VisionTransformer

    if spec.pretrained.lower() not in NO_WEIGHTS and not os.path.isfile(spec.pretrained):
        raise UserError(f"{spec.name} has no pretrained weights; use --pretrained none")
    size = tuple(spec.img_size) if spec.img_size else (128, 64)
    patch = TINY_PATCH[spec.name]
    if size[0] % patch or size[1] % patch:
        raise UserError(f"img_size {size} must be multiples of {patch} for {spec.name}")
    visual = VisionTransformer(image_size=size, patch_size=patch, width=64, layers=4, heads=4, mlp_ratio=2.0,
                               output_dim=64, act_layer=nn.GELU)
    if spec.remove_proj:
        visual.proj = None
    if spec.grad_checkpointing:
        visual.set_grad_checkpointing(True)
    if os.path.isfile(spec.pretrained):
        _load_backbone_file(visual, spec.pretrained)
    return _Parts(visual, size, OPENAI_MEAN, OPENAI_STD, DEFAULT_LOGIT_SCALE, {"kind": "tiny"})


# --------------------------------------------------------------------------------------------------------------
# timm


def _build_timm(spec: ModelSpec) -> _Parts:
    import timm

    name, tag = spec.name.removeprefix("timm:"), (spec.pretrained or "").strip()
    is_file = os.path.isfile(tag)
    use_weights = tag.lower() not in NO_WEIGHTS
    full = name
    if use_weights and not is_file and "." not in name and tag not in ("default", "timm"):
        full = f"{name}.{tag}"
    if is_file and spec.pretrained_tag and "." not in name:
        full = f"{name}.{spec.pretrained_tag}"  # the tag's architecture details and preprocessing, the file's weights
        if not timm.list_pretrained(full):
            raise UserError(f"pretrained_tag: timm has no '{spec.pretrained_tag}' weights for {name}")
    if use_weights and not is_file and not timm.list_pretrained(full):
        tags = sorted({n.split(".", 1)[1] for n in timm.list_pretrained(f"{name.split('.')[0]}.*")})
        raise UserError(f"timm has no '{tag}' weights for {name}; known tags: {', '.join(tags) or 'none'} "
                        "(or 'default' for timm's default, a weights file, or 'none' for random init)")
    kwargs: dict[str, Any] = {"num_classes": 0}
    if spec.img_size is not None:
        kwargs["img_size"] = tuple(spec.img_size)
    if is_file:
        kwargs["pretrained_cfg_overlay"] = {"file": tag}
    try:
        try:
            backbone = timm.create_model(full, pretrained=use_weights, **kwargs)
        except TypeError:
            if "img_size" not in kwargs:
                raise
            kwargs.pop("img_size")  # CNNs take any input size and have no img_size argument
            backbone = timm.create_model(full, pretrained=use_weights, **kwargs)
    except Exception as err:
        first = first_line(err)
        if is_file:
            raise UserError(f"cannot load weights file {tag} into {name}: {first}") from err
        if not use_weights or not _is_download_error(err):
            raise UserError(f"cannot build {full}: {first}") from err
        raise UserError(f"cannot fetch the timm weights {full} ({first}); offline? download its model.safetensors "
                        f"from https://huggingface.co/timm/{full}, pass it as --pretrained <file>, or copy a Hugging "
                        "Face cache that has it and set HF_HUB_OFFLINE=1") from err
    cfg = timm.data.resolve_data_config({}, model=backbone)
    if is_file and not spec.pretrained_tag and (spec.mean is None or spec.std is None):
        print(f"note: weights file {tag}: normalising with {full}'s default mean {_fmt(cfg['mean'])} and std "
              f"{_fmt(cfg['std'])}; set pretrained_tag to the timm tag the file came from (or mean/std)")
    size = tuple(spec.img_size) if spec.img_size else tuple(cfg["input_size"][1:])
    if spec.grad_checkpointing:
        backbone.set_grad_checkpointing(True)
    arch = {"kind": "timm", "name": full, "img_size": list(spec.img_size) if "img_size" in kwargs else None}
    return _Parts(backbone, size, tuple(cfg["mean"]), tuple(cfg["std"]), DEFAULT_LOGIT_SCALE, arch)


def _load_backbone_file(module: nn.Module, path: str) -> None:
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    module.load_state_dict(state, strict=True)


# --------------------------------------------------------------------------------------------------------------
# building


def _check_spec(spec: ModelSpec) -> None:
    check_interpolation(spec.interpolation)
    for key in ("mean", "std"):
        if getattr(spec, key) is not None:
            _channel_triple(getattr(spec, key), key)


def _assemble(parts: _Parts, spec: ModelSpec, fast_blocks: bool) -> ReIDEncoder:
    feature_dim = measure_feature_dim(parts.backbone, parts.size, spec.name)
    if fast_blocks:
        speed_up_blocks(parts.backbone)
    mean = spec.mean if spec.mean is not None else parts.mean
    std = spec.std if spec.std is not None else parts.std
    return ReIDEncoder(parts.backbone, spec, parts.size, mean, std, feature_dim, parts.scale, spec.interpolation,
                       parts.arch)


def build_encoder(spec: ModelSpec, *, fast_blocks: bool = True) -> ReIDEncoder:
    """Build the encoder of ``spec``, fetching its pretrained weights (errors are one-line ``UserError`` s).

    ``fast_blocks`` swaps open_clip ViTs' attention and QuickGELU MLPs for ``clipreid.blocks``' drop-ins (same
    parameters and function, fewer passes over the activations); off, open_clip's own modules stay.
    """
    _check_spec(spec)
    if spec.name in TINY_PATCH:
        parts = _build_tiny(spec)
    elif _is_open_clip(spec.name):
        parts = _build_open_clip(spec)
    else:
        import timm

        name = spec.name.removeprefix("timm:")
        if not timm.is_model(name.split(".")[0]):
            import open_clip

            known = [*TINY_PATCH, *open_clip.list_models(), *timm.list_models()]
            close = difflib.get_close_matches(spec.name, known, n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise UserError(f"unknown model '{spec.name}': not an open_clip or timm model name{hint}")
        parts = _build_timm(spec)
    return _assemble(parts, spec, fast_blocks)


def architecture_only(spec: ModelSpec) -> ModelSpec:
    """The same spec with pretrained weights switched off: to rebuild a network whose weights a checkpoint holds
    (for checkpoints that predate the stored architecture; ``hf-hub:``/``local-dir:`` names then need their source)."""
    name = spec.name
    keep = name.startswith(("hf-hub:", "local-dir:"))  # their architecture comes with their weights
    return dataclasses.replace(spec, pretrained=spec.pretrained if keep else "none", pretrained_tag=None,
                               grad_checkpointing=False)


def build_architecture(spec: ModelSpec, arch: dict[str, Any] | None, *, fast_blocks: bool = True) -> ReIDEncoder:
    """The randomly initialised network of a checkpoint: from its stored ``arch`` (offline), else from ``spec``."""
    _check_spec(spec)
    kind = (arch or {}).get("kind")
    if kind == "open_clip" and arch.get("model_cfg"):
        parts = _open_clip_from_cfg(arch["model_cfg"], spec)
    elif kind == "timm" and arch.get("name"):
        img = arch.get("img_size")
        parts = _build_timm(dataclasses.replace(spec, name=arch["name"], pretrained="none", pretrained_tag=None,
                                                img_size=tuple(img) if img else None))
    else:
        bare = dataclasses.replace(architecture_only(spec), grad_checkpointing=spec.grad_checkpointing)
        return build_encoder(bare, fast_blocks=fast_blocks)
    return _assemble(parts, spec, fast_blocks)


# --------------------------------------------------------------------------------------------------------------
# checkpoint files: any supported layout -> (spec, preprocessing, architecture, state dict)


@dataclass
class EncoderFile:
    """What a weights file holds, whatever its layout: enough to rebuild the encoder and load it strictly."""

    spec: ModelSpec
    weights: dict[str, torch.Tensor]  # the ReIDEncoder's state dict
    preprocess: dict[str, Any] | None = None  # image_size/mean/std/interpolation; missing keys: the architecture's
    arch: dict[str, Any] | None = None  # see ReIDEncoder.arch; None: rebuild from the spec
    layout: str = "clipreid"  # clipreid, clip-reident or timm-2023
    drop_unexpected: tuple[str, ...] = field(default_factory=tuple)  # key prefixes to leave out (a 2023 classifier)


def encoder_checkpoint(encoder: ReIDEncoder) -> dict[str, Any]:
    """The entries of a clipreid checkpoint that rebuild ``encoder``: weights, spec, preprocessing, architecture."""
    return {"model": encoder.state_dict(), "model_spec": encoder.spec.to_dict(), "preprocess": encoder.preprocess(),
            "arch": encoder.arch}


def _clipreid_layout(state: Any, path: Path, model: str | None) -> EncoderFile | None:
    if not isinstance(state, dict) or "model" not in state or "model_spec" not in state:
        return None
    if not isinstance(state["model"], dict) or not isinstance(state["model_spec"], dict):
        raise UserError(f"checkpoint {path} is damaged: its 'model' / 'model_spec' entries are not dictionaries")
    spec = ModelSpec.from_dict(state["model_spec"])
    weights = {k.removeprefix("_orig_mod."): v for k, v in state["model"].items()}
    preprocess = state.get("preprocess")
    return EncoderFile(spec, weights, dict(preprocess) if preprocess else None, state.get("arch"), "clipreid")


def encoder_file_of(state: dict[str, Any], path: str | Path) -> EncoderFile:
    """The EncoderFile of an already loaded clipreid checkpoint dict (e.g. the last.pt a run resumes from)."""
    found = _clipreid_layout(state, Path(path), None)
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


def _clip_reident_layout(state: Any, path: Path, model: str | None) -> EncoderFile | None:
    """The original CLIP-ReIdent weights_e{epoch}.pth: model.logit_scale and model.visual.<open_clip tower>
    (a ViT with its projection removed, or a ModifiedResNet)."""
    if not isinstance(state, dict) or "model.visual.conv1.weight" not in state:
        return None
    visual = {k.removeprefix("model.visual."): v for k, v in state.items() if k.startswith("model.visual.")}
    name, model_cfg = _resolve_open_clip_tower(visual, path, model)
    spec = ModelSpec(name, "none", remove_proj="proj" not in visual, interpolation="bilinear")
    weights = {f"backbone.{k}": v for k, v in visual.items()}
    weights["logit_scale"] = state.get("model.logit_scale", torch.tensor(math.log(DEFAULT_LOGIT_SCALE)))
    size = model_cfg["vision_cfg"]["image_size"]
    preprocess = {"image_size": [size, size], "mean": list(OPENAI_MEAN), "std": list(OPENAI_STD),
                  "interpolation": "bilinear"}
    return EncoderFile(spec, weights, preprocess, {"kind": "open_clip", "model_cfg": model_cfg}, "clip-reident")


def _timm_2023_layout(state: Any, path: Path, model: str | None) -> EncoderFile | None:
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
    weights["logit_scale"] = state.get("model.logit_scale", torch.tensor(math.log(DEFAULT_LOGIT_SCALE)))
    # the 2023 code normalised every timm backbone with ImageNet mean/std and letterboxed as CLIP-ReIdent did
    spec = ModelSpec(name, "none", remove_proj=False, mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation="bilinear")
    preprocess = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "interpolation": "bilinear"}
    return EncoderFile(spec, weights, preprocess, {"kind": "timm", "name": name, "img_size": None}, "timm-2023",
                       drop_unexpected=("classifier",))


# Tried in order; a reader returns None for a layout that is not its own. A new format (e.g. a .safetensors
# weights file with a JSON spec) is one more reader here, chosen by the file's suffix before torch.load.
ENCODER_LAYOUTS = (_clipreid_layout, _clip_reident_layout, _timm_2023_layout)


def read_encoder_file(path: str | Path, model: str | None = None) -> EncoderFile:
    """Read any supported weights file (a clipreid checkpoint or run folder, an original CLIP-ReIdent
    ``weights_e{epoch}.pth`` with ``model`` naming its open_clip model (a ViT's activation and head width are not in
    its tensors), a 2023-code timm checkpoint with ``model`` naming its timm model, a ``.safetensors`` export)."""
    path = checkpoint_file(path)
    if path.suffix == ".safetensors":  # written by python -m clipreid.export
        from .export import read_safetensors

        return read_safetensors(path)
    state = load_checkpoint_file(path)
    if isinstance(state, dict):
        state = _strip_module(state)
    for reader in ENCODER_LAYOUTS:
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
    if found.preprocess is None:
        encoder.set_preprocess({"interpolation": "bicubic"})  # what training used before it was stored
        warnings.warn(f"checkpoint {path} predates stored preprocessing: assuming the bare architecture's "
                      f"{encoder.image_size[0]}x{encoder.image_size[1]} input, mean {_fmt(encoder.mean)}, std "
                      f"{_fmt(encoder.std)} and bicubic resizing", stacklevel=3)
    else:
        encoder.set_preprocess(found.preprocess)
    _load_weights(encoder, found, Path(path))
    return encoder


def load_encoder(path: str | Path, device: str | torch.device = "cpu", model: str | None = None) -> ReIDEncoder:
    """Rebuild an encoder from a checkpoint (see ``read_encoder_file``), in eval mode on ``device``: the stored
    architecture and preprocessing, weights loaded strictly. ``model``: the open_clip name of an original
    CLIP-ReIdent ViT file (its activation and head width), the timm name of a 2023-code checkpoint."""
    found = read_encoder_file(path, model)
    return rebuild_encoder(found, checkpoint_file(path)).to(device).eval()
