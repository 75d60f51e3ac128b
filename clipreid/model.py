"""The image encoder: an open_clip visual tower (text tower dropped) or a timm backbone, plus a learnable logit scale.

    encoder = build_encoder(ModelSpec("ViT-L-14-quickgelu", "openai"))   # the CLIP-ReIdent recipe
    encoder = build_encoder(ModelSpec("eva02_large_patch14_448", "mim_m38m_ft_in22k_in1k"))   # a timm model
    encoder = build_encoder(ModelSpec("tiny-vit", "none"))               # CPU tests and the demo

``ModelSpec`` is everything needed to rebuild the architecture; checkpoints store it, so evaluation rebuilds
the network without fetching any pretrained weights.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .blocks import speed_up_blocks
from .checkpoint import checkpoint_file, read_checkpoint, run_dir_of  # noqa: F401 (re-exported)
from .errors import UserError

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
TINY_VIT = "tiny-vit"
NO_WEIGHTS = ("", "none")
MAX_LOGIT_SCALE = 100.0
DEFAULT_LOGIT_SCALE = 1 / 0.07


@dataclass
class ModelSpec:
    """What to build: a model name, its pretrained weights and the few options that change the architecture."""

    name: str = "ViT-L-14-quickgelu"  # open_clip name, timm name, or "tiny-vit"
    pretrained: str = "openai"  # open_clip tag / timm tag, a weights file, or "none"; ignored for local-dir:/hf-hub:
    remove_proj: bool = True  # drop the visual projection of a ViT (CLIP-ReIdent: 1024-d features for ViT-L)
    img_size: tuple[int, int] | None = None  # (height, width); None = the model's own input size
    grad_checkpointing: bool = False  # recompute activations in backward: less memory, about 30% slower

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["img_size"] = list(self.img_size) if self.img_size else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        d = dict(d)
        if d.get("img_size") is not None:
            d["img_size"] = tuple(d["img_size"])
        return cls(**{k: v for k, v in d.items() if k in {f.name for f in dataclasses.fields(cls)}})


class ReIDEncoder(nn.Module):
    """Backbone mapping normalised images (B, 3, H, W) to features (B, D), with the contrastive logit scale."""

    def __init__(self, backbone: nn.Module, spec: ModelSpec, image_size: tuple[int, int], mean: tuple[float, ...],
                 std: tuple[float, ...], feature_dim: int, logit_scale: float) -> None:
        super().__init__()
        self.backbone = backbone
        self.spec = spec
        self.image_size = tuple(image_size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.feature_dim = int(feature_dim)
        # Stored as a log, as in CLIP; the scale itself is exp() of it, clamped at 100.
        self.logit_scale = nn.Parameter(torch.tensor(math.log(logit_scale), dtype=torch.float32))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images)

    def scale(self) -> torch.Tensor:
        """exp(logit scale), clamped at 100 as in CLIP training."""
        return self.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    def clamp_logit_scale(self) -> None:
        with torch.no_grad():
            self.logit_scale.clamp_(0.0, math.log(MAX_LOGIT_SCALE))

    def describe(self) -> str:
        n = sum(p.numel() for p in self.parameters())
        h, w = self.image_size
        return f"{self.spec.name} ({self.spec.pretrained or 'none'}): {n / 1e6:.1f}M parameters, {h}x{w} input, " \
               f"{self.feature_dim}-d features, logit scale {self.scale().item():.2f}"


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


def _build_open_clip(spec: ModelSpec) -> tuple[nn.Module, tuple[int, int], tuple, tuple, int, float]:
    import open_clip

    name, tag = spec.name, (spec.pretrained or "").strip()
    has_schema = name.startswith(("hf-hub:", "local-dir:"))
    use_weights = has_schema or tag.lower() not in NO_WEIGHTS
    if use_weights and not has_schema and not os.path.isfile(tag):
        tags = open_clip.list_pretrained_tags_by_model(name)
        if tag not in tags:
            raise UserError(f"open_clip has no '{tag}' weights for {name}; known tags: {', '.join(tags) or 'none'} "
                            "(or give a weights file, or 'none' for random init)")
    kwargs: dict[str, Any] = {}
    if spec.img_size is not None:
        kwargs["force_image_size"] = tuple(spec.img_size)
    try:
        logging.getLogger().disabled = True  # open_clip logs a warning for the random init we asked for
        clip = open_clip.create_model(name, pretrained=tag if use_weights and not has_schema else None,
                                      load_weights=use_weights, **kwargs)
    except UserError:
        raise
    except Exception as err:  # network, hub and file errors come in many types from several libraries
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if has_schema:
            raise UserError(f"cannot load {name}: {first}") from err
        if os.path.isfile(tag):
            raise UserError(f"cannot load weights file {tag} into {name}: {first}") from err
        raise UserError(f"cannot fetch the '{tag}' weights of {name} ({first}); {_weights_hint(name, tag)}") from err
    finally:
        logging.getLogger().disabled = False
    visual = clip.visual
    pp = open_clip.get_model_preprocess_cfg(clip)
    size = visual.image_size if hasattr(visual, "image_size") else pp.get("size", 224)
    size = tuple(size) if isinstance(size, (tuple, list)) else (int(size), int(size))
    mean = tuple(pp.get("mean", OPENAI_MEAN))
    std = tuple(pp.get("std", OPENAI_STD))
    scale = float(clip.logit_scale.exp().item()) if use_weights and hasattr(clip, "logit_scale") \
        else DEFAULT_LOGIT_SCALE
    feature_dim = int(getattr(visual, "output_dim", 0))
    if spec.remove_proj and isinstance(getattr(visual, "proj", None), nn.Parameter):
        visual.proj = None
        feature_dim = int(visual.ln_post.normalized_shape[0])
    if spec.grad_checkpointing:
        visual.set_grad_checkpointing(True)
    del clip  # drops the text tower
    return visual, size, mean, std, feature_dim, scale


def _build_tiny(spec: ModelSpec) -> tuple[nn.Module, tuple[int, int], tuple, tuple, int, float]:
    """A 4-layer, width-64 ViT on 128x64 crops: milliseconds per step on a laptop CPU."""
    from open_clip.transformer import VisionTransformer

    if spec.pretrained.lower() not in NO_WEIGHTS and not os.path.isfile(spec.pretrained):
        raise UserError(f"{TINY_VIT} has no pretrained weights; use --pretrained none")
    size = tuple(spec.img_size) if spec.img_size else (128, 64)
    if size[0] % 16 or size[1] % 16:
        raise UserError(f"img_size {size} must be multiples of 16 for {TINY_VIT}")
    visual = VisionTransformer(image_size=size, patch_size=16, width=64, layers=4, heads=4, mlp_ratio=2.0,
                               output_dim=64, act_layer=nn.GELU)
    feature_dim = 64
    if spec.remove_proj:
        visual.proj = None
    if spec.grad_checkpointing:
        visual.set_grad_checkpointing(True)
    if os.path.isfile(spec.pretrained):
        _load_backbone_file(visual, spec.pretrained)
    return visual, size, OPENAI_MEAN, OPENAI_STD, feature_dim, DEFAULT_LOGIT_SCALE


# --------------------------------------------------------------------------------------------------------------
# timm


def _build_timm(spec: ModelSpec) -> tuple[nn.Module, tuple[int, int], tuple, tuple, int, float]:
    import timm

    name, tag = spec.name.removeprefix("timm:"), (spec.pretrained or "").strip()
    is_file = os.path.isfile(tag)
    use_weights = tag.lower() not in NO_WEIGHTS
    full = name
    if use_weights and not is_file and "." not in name and tag not in ("default", "timm"):
        full = f"{name}.{tag}"
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
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if is_file:
            raise UserError(f"cannot load weights file {tag} into {name}: {first}") from err
        raise UserError(f"cannot fetch the timm weights {full} ({first}); offline? download its model.safetensors "
                        f"from https://huggingface.co/timm/{full}, pass it as --pretrained <file>, or copy a Hugging "
                        "Face cache that has it and set HF_HUB_OFFLINE=1") from err
    cfg = timm.data.resolve_data_config({}, model=backbone)
    size = tuple(spec.img_size) if spec.img_size else tuple(cfg["input_size"][1:])
    if spec.grad_checkpointing:
        backbone.set_grad_checkpointing(True)
    return backbone, size, tuple(cfg["mean"]), tuple(cfg["std"]), int(backbone.num_features), DEFAULT_LOGIT_SCALE


def _load_backbone_file(module: nn.Module, path: str) -> None:
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    module.load_state_dict(state, strict=True)


# --------------------------------------------------------------------------------------------------------------


def build_encoder(spec: ModelSpec, *, fast_blocks: bool = True) -> ReIDEncoder:
    """Build the encoder of ``spec``, fetching its pretrained weights (errors are one-line ``UserError`` s).

    ``fast_blocks`` swaps open_clip ViTs' attention and QuickGELU MLPs for ``clipreid.blocks``' drop-ins (same
    parameters and function, fewer passes over the activations); off, open_clip's own modules stay.
    """
    if spec.name == TINY_VIT:
        parts = _build_tiny(spec)
    elif _is_open_clip(spec.name):
        parts = _build_open_clip(spec)
    else:
        import timm

        name = spec.name.removeprefix("timm:")
        if not timm.is_model(name.split(".")[0]):
            import open_clip

            known = [TINY_VIT, *open_clip.list_models(), *timm.list_models()]
            close = difflib.get_close_matches(spec.name, known, n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise UserError(f"unknown model '{spec.name}': not an open_clip or timm model name{hint}")
        parts = _build_timm(spec)
    backbone, size, mean, std, feature_dim, scale = parts
    if fast_blocks:
        speed_up_blocks(backbone)
    return ReIDEncoder(backbone, spec, size, mean, std, feature_dim, min(scale, MAX_LOGIT_SCALE))


def architecture_only(spec: ModelSpec) -> ModelSpec:
    """The same spec with pretrained weights switched off: to rebuild a network whose weights a checkpoint holds."""
    name = spec.name
    keep = name.startswith(("hf-hub:", "local-dir:"))  # their architecture comes with their weights
    return dataclasses.replace(spec, pretrained=spec.pretrained if keep else "none", grad_checkpointing=False)


def checkpoint_spec(path: str | Path) -> ModelSpec:
    """Read only the ModelSpec stored in a checkpoint."""
    return ModelSpec.from_dict(read_checkpoint(path)["model_spec"])


def load_encoder(path: str | Path, device: str | torch.device = "cpu") -> ReIDEncoder:
    """Rebuild an encoder from a clipreid checkpoint (architecture from its spec, weights loaded strictly)."""
    if Path(path).suffix == ".safetensors":  # written by python -m clipreid.export
        from .export import load_safetensors

        return load_safetensors(path, device)
    state = read_checkpoint(path)
    spec = ModelSpec.from_dict(state["model_spec"])
    encoder = build_encoder(architecture_only(spec))
    encoder.spec = spec
    weights = {k.removeprefix("_orig_mod."): v for k, v in state["model"].items()}
    missing, unexpected = encoder.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise UserError(f"checkpoint {path} does not match {spec.name}: missing {list(missing)[:3]}, "
                        f"unexpected {list(unexpected)[:3]}")
    return encoder.to(device).eval()
