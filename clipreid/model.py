"""The image encoder: an open_clip visual tower (text tower dropped) or a timm backbone, plus a learnable logit scale.

    encoder = build_encoder(ModelSpec("ViT-L-14-quickgelu", "openai"))   # the CLIP-ReIdent recipe
    encoder = build_encoder(ModelSpec("eva02_large_patch14_448", "mim_m38m_ft_in22k_in1k"))   # a timm model
    encoder = build_encoder(ModelSpec("tiny-vit", "none"))               # CPU tests and the demo

Building only: every encoder records its ``ModelSpec``, its preprocessing (input size, mean, std, resize
interpolation) and ``arch``, what rebuilds the architecture offline (the open_clip model config, or the timm name
with its tag), so that ``build_architecture`` rebuilds it without fetching any pretrained weights. Reading weights
files is ``clipreid.weights`` (``load_encoder``), which imports this module, never the other way round.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from .blocks import speed_up_blocks
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
        self.set_preprocessing({"image_size": image_size, "mean": mean, "std": std, "interpolation": interpolation})
        # Stored as a log, as in CLIP, and trained unclamped as in CLIP-ReIdent: a clamp at the starting value
        # (100 for OpenAI weights) would have a zero gradient there and freeze it.
        self.logit_scale = nn.Parameter(torch.tensor(math.log(logit_scale), dtype=torch.float32))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images)

    def scale(self) -> torch.Tensor:
        """exp(logit scale): the temperature of the contrastive losses, a trained parameter."""
        return self.logit_scale.exp()

    def preprocessing(self) -> dict[str, Any]:
        """The preprocessing as stored in checkpoints: image_size (h, w), mean, std, interpolation."""
        return {"image_size": list(self.image_size), "mean": list(self.mean), "std": list(self.std),
                "interpolation": self.interpolation}

    def set_preprocessing(self, values: dict[str, Any]) -> None:
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

    if not timm.is_model(spec.name.removeprefix("timm:").split(".")[0]):
        import open_clip

        known = [*TINY_PATCH, *open_clip.list_models(), *timm.list_models()]
        close = difflib.get_close_matches(spec.name, known, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UserError(f"unknown model '{spec.name}': not an open_clip or timm model name{hint}")
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


def _rebuild_open_clip(arch: dict[str, Any], spec: ModelSpec) -> _Parts | None:
    return _open_clip_from_cfg(arch["model_cfg"], spec) if arch.get("model_cfg") else None


def _rebuild_timm(arch: dict[str, Any], spec: ModelSpec) -> _Parts | None:
    if not arch.get("name"):
        return None
    img = arch.get("img_size")
    return _build_timm(dataclasses.replace(spec, name=arch["name"], pretrained="none", pretrained_tag=None,
                                           img_size=tuple(img) if img else None))


# --------------------------------------------------------------------------------------------------------------
# the backends: one entry per library serves building, rebuilding from a stored arch, and export's model card


Backend = Literal["tiny", "open_clip", "timm"]  # also the "kind" of a stored arch


@dataclass(frozen=True)
class BackendParts:
    """How one library builds an encoder: ``build`` from a spec (pretrained weights fetched), ``rebuild`` from a
    stored ``arch`` offline (None when the arch does not say enough: rebuilt from the spec), ``library`` as the
    model card names it."""

    build: Callable[[ModelSpec], _Parts]
    rebuild: Callable[[dict[str, Any], ModelSpec], _Parts | None] | None
    library: str


BACKENDS: dict[str, BackendParts] = {
    "tiny": BackendParts(_build_tiny, None, TINY_VIT),
    "open_clip": BackendParts(_build_open_clip, _rebuild_open_clip, "open_clip"),
    "timm": BackendParts(_build_timm, _rebuild_timm, "timm"),
}


def backend_of(name: str) -> Backend:
    """The library of a model name: the tiny test ViTs, open_clip (its names, ``hf-hub:``, ``local-dir:``), else
    timm (which refuses a name it does not know, with the close ones)."""
    if name in TINY_PATCH:
        return "tiny"
    return "open_clip" if _is_open_clip(name) else "timm"


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
    return _assemble(BACKENDS[backend_of(spec.name)].build(spec), spec, fast_blocks)


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
    backend = BACKENDS.get((arch or {}).get("kind"))
    parts = backend.rebuild(arch, spec) if backend is not None and backend.rebuild is not None else None
    if parts is None:
        bare = dataclasses.replace(architecture_only(spec), grad_checkpointing=spec.grad_checkpointing)
        return build_encoder(bare, fast_blocks=fast_blocks)
    return _assemble(parts, spec, fast_blocks)


def __getattr__(name: str) -> Any:
    """``clipreid.model.load_encoder`` stays importable (a public name): it lives in ``clipreid.weights``, which
    imports this module, so it is looked up on first use rather than imported here (no import cycle)."""
    if name == "load_encoder":
        from .weights import load_encoder

        return load_encoder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
