"""timm-style model registry: a name maps to a typed default config and one builder per family.

Each registered function is a few lines returning the published configuration; `build_model`
turns a config into a module in eval mode. Defaults (resolution, classes, mean/std) are the
ones the published checkpoints were trained with; a checkpoint may override the class count.

Segmenter decoder default: 'mask' for every size, because the published Segmenter ADE20K
checkpoints that ALGM starts from (Seg-T/S/B/L-Mask/16) use the mask transformer; pass
`decoder='linear'` for the linear variants.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

from edgemerge.contracts.errors import EdgemergeError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to build a zoo model and feed it images."""

    name: str
    family: str  # 'segformer' | 'vit' | 'deit' | 'segmenter'
    resolution: tuple[int, int]  # (H, W) default input size
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    num_classes: int
    patch_size: int  # 16 for ViT, 4 (first stride) for Segformer
    strides: tuple[int, ...]
    depths: tuple[int, ...]
    widths: tuple[int, ...]
    heads: tuple[int, ...]
    extra: dict[str, Any] = field(default_factory=dict, hash=False)


_CONFIGS: dict[str, ModelConfig] = {}


def register(fn: Callable[[], ModelConfig]) -> Callable[[], ModelConfig]:
    """Decorator: record the config the function returns under its name."""
    cfg = fn()
    _CONFIGS[cfg.name] = cfg
    return fn


def list_models() -> list[str]:
    return list(_CONFIGS)


def get_config(name: str) -> ModelConfig:
    if name not in _CONFIGS:
        raise EdgemergeError(f"unknown model {name!r}; known: {', '.join(_CONFIGS)}")
    return _CONFIGS[name]


# --- Segformer -------------------------------------------------------------------------------

def _segformer(name: str, depths: tuple[int, ...], widths: tuple[int, ...], decoder_width: int) -> ModelConfig:
    return ModelConfig(
        name, "segformer", (512, 512), IMAGENET_MEAN, IMAGENET_STD, 150, 4, (4, 2, 2, 2), depths, widths,
        (1, 2, 5, 8),
        extra=dict(sr_ratios=(8, 4, 2, 1), mlp_ratio=4, decoder_width=decoder_width, embed_eps=1e-5,
                   block_eps=1e-5, head_stage_norm=False, head_stage_bias=True),
    )


_MIT = (64, 128, 320, 512)


@register
def segformer_b0() -> ModelConfig:
    return _segformer("segformer-b0", (2, 2, 2, 2), (32, 64, 160, 256), 256)


@register
def segformer_b1() -> ModelConfig:
    return _segformer("segformer-b1", (2, 2, 2, 2), _MIT, 256)


@register
def segformer_b2() -> ModelConfig:
    return _segformer("segformer-b2", (3, 4, 6, 3), _MIT, 768)


@register
def segformer_b3() -> ModelConfig:
    return _segformer("segformer-b3", (3, 4, 18, 3), _MIT, 768)


@register
def segformer_b4() -> ModelConfig:
    return _segformer("segformer-b4", (3, 8, 27, 3), _MIT, 768)


@register
def segformer_b5() -> ModelConfig:
    return _segformer("segformer-b5", (3, 6, 40, 3), _MIT, 768)


# --- ViT / DeiT ------------------------------------------------------------------------------

_VIT_SIZES = {"t": (192, 12, 3), "s": (384, 12, 6), "b": (768, 12, 12), "l": (1024, 24, 16)}


def _vit(name: str, family: str, size: str, mean: tuple, std: tuple) -> ModelConfig:
    dim, depth, heads = _VIT_SIZES[size]
    return ModelConfig(name, family, (224, 224), mean, std, 1000, 16, (16,), (depth,), (dim,), (heads,),
                       extra=dict(mlp_ratio=4.0, eps=1e-6, qkv_bias=True, distilled=False))


@register
def vit_t() -> ModelConfig:
    return _vit("vit-t", "vit", "t", HALF, HALF)


@register
def vit_s() -> ModelConfig:
    return _vit("vit-s", "vit", "s", HALF, HALF)


@register
def vit_b() -> ModelConfig:
    return _vit("vit-b", "vit", "b", HALF, HALF)


@register
def vit_l() -> ModelConfig:
    return _vit("vit-l", "vit", "l", HALF, HALF)


@register
def deit_t() -> ModelConfig:
    return _vit("deit-t", "deit", "t", IMAGENET_MEAN, IMAGENET_STD)


@register
def deit_s() -> ModelConfig:
    return _vit("deit-s", "deit", "s", IMAGENET_MEAN, IMAGENET_STD)


@register
def deit_b() -> ModelConfig:
    return _vit("deit-b", "deit", "b", IMAGENET_MEAN, IMAGENET_STD)


# --- Segmenter -------------------------------------------------------------------------------

def _segmenter(name: str, size: str) -> ModelConfig:
    dim, depth, heads = _VIT_SIZES[size]
    # Segmenter's own ViT uses torch's default LayerNorm eps (1e-5), unlike timm's 1e-6.
    return ModelConfig(name, "segmenter", (512, 512), HALF, HALF, 150, 16, (16,), (depth,), (dim,), (heads,),
                       extra=dict(mlp_ratio=4.0, eps=1e-5, qkv_bias=True, distilled=False, decoder="mask",
                                  decoder_layers=2))


@register
def segmenter_vit_t() -> ModelConfig:
    return _segmenter("segmenter-vit-t", "t")


@register
def segmenter_vit_s() -> ModelConfig:
    return _segmenter("segmenter-vit-s", "s")


@register
def segmenter_vit_b() -> ModelConfig:
    return _segmenter("segmenter-vit-b", "b")


@register
def segmenter_vit_l() -> ModelConfig:
    return _segmenter("segmenter-vit-l", "l")


# --- building --------------------------------------------------------------------------------

def _build_segformer(cfg: ModelConfig) -> nn.Module:
    from edgemerge.models.segformer import Segformer

    e = cfg.extra
    return Segformer(cfg.depths, cfg.widths, cfg.heads, cfg.num_classes, e["decoder_width"], e["sr_ratios"],
                     e["mlp_ratio"], e["embed_eps"], e["block_eps"], e["head_stage_norm"], e["head_stage_bias"])


def _vit_backbone(cfg: ModelConfig, num_classes: int) -> nn.Module:
    from edgemerge.models.vit import VisionTransformer

    e = cfg.extra
    return VisionTransformer(cfg.resolution, cfg.patch_size, cfg.widths[0], cfg.depths[0], cfg.heads[0],
                             e["mlp_ratio"], num_classes, e["qkv_bias"], e["eps"], e["distilled"],
                             e.get("dist_head", False))


def _build_vit(cfg: ModelConfig) -> nn.Module:
    return _vit_backbone(cfg, cfg.num_classes)


def _build_segmenter(cfg: ModelConfig) -> nn.Module:
    from edgemerge.models.segmenter import DecoderLinear, MaskTransformer, Segmenter

    dim, kind = cfg.widths[0], cfg.extra["decoder"]
    if kind == "linear":
        decoder: nn.Module = DecoderLinear(dim, cfg.num_classes)
    elif kind == "mask":
        decoder = MaskTransformer(dim, cfg.num_classes, dim, dim // 64, cfg.extra["decoder_layers"], cfg.extra["eps"])
    else:
        raise EdgemergeError(f"unknown Segmenter decoder {kind!r}; known: linear, mask")
    return Segmenter(_vit_backbone(cfg, 0), decoder, cfg.num_classes)


_BUILDERS: dict[str, Callable[[ModelConfig], nn.Module]] = {
    "segformer": _build_segformer, "vit": _build_vit, "deit": _build_vit, "segmenter": _build_segmenter,
}


def register_builder(family: str, build: Callable[[ModelConfig], nn.Module]) -> None:
    """The module builder of a new model family (its configs come with `register`); docs/extending.md."""
    _BUILDERS[family] = build


def configure(name: str, *, num_classes: int | None = None, resolution: tuple[int, int] | None = None,
              decoder: str | None = None) -> ModelConfig:
    """The named config with the user's overrides applied (and checked)."""
    cfg = get_config(name)
    changes: dict[str, Any] = {}
    if num_classes is not None:
        if num_classes < 1:
            raise EdgemergeError(f"num_classes must be >= 1, got {num_classes}")
        changes["num_classes"] = int(num_classes)
    if resolution is not None:
        h, w = (int(resolution), int(resolution)) if isinstance(resolution, int) else map(int, resolution)
        step = 32 if cfg.family == "segformer" else cfg.patch_size
        if h <= 0 or w <= 0 or h % step or w % step:
            raise EdgemergeError(f"resolution {h}x{w} for {name} must be positive multiples of {step}")
        changes["resolution"] = (h, w)
    if decoder is not None:
        if cfg.family != "segmenter":
            raise EdgemergeError(f"{name} has no decoder choice (only segmenter-* models do)")
        if decoder not in ("linear", "mask"):
            raise EdgemergeError(f"unknown Segmenter decoder {decoder!r}; known: linear, mask")
        changes["extra"] = {**cfg.extra, "decoder": decoder}
    return dataclasses.replace(cfg, **changes)


def build_from_config(cfg: ModelConfig) -> nn.Module:
    """Build a (randomly initialised) model from a config, in eval mode; the config is kept at
    `model.config` so later steps (merge plans, export manifests) can read it."""
    model = _BUILDERS[cfg.family](cfg).eval()
    model.config = cfg  # type: ignore[assignment]
    return model


def build_model(name: str, *, num_classes: int | None = None, resolution: tuple[int, int] | None = None,
                decoder: str | None = None) -> nn.Module:
    """Build a zoo model by name with random weights, in eval mode; the config is at `model.config`."""
    cfg = configure(name, num_classes=num_classes, resolution=resolution, decoder=decoder)
    return build_from_config(cfg)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def deployed_form(model: nn.Module) -> nn.Module:
    """The form that is exported and that references run: Segformer's decode head folded (exact
    up to rounding; see SegformerHead.fold), for merged models and unmerged baselines alike."""
    fold = getattr(model, "fold_decoder", None)
    if fold is not None:
        fold()
    return model
