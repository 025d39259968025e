"""Apply a merge plan to a zoo model by swapping module classes (tomesd's patch), and undo it.

What the swapped classes are and how a plan places them is the model family's
(`edgemerge.merge.family`, adapters in `edgemerge.merge.families`); this module is the part every
family shares. The subclasses only override the models' merge hooks (`SegformerAttention.reduce_queries`
/ `reduce_kv`, ViT `Block.reduce_tokens`); every count comes from the plan's count functions on
static shapes, so nothing in `forward` mutates module state and the patched model exports with
static token counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgemerge.merge import core
from edgemerge.merge.family import family_for, family_of_plan
from edgemerge.merge.plan import (GridSite, MergePlan, NoPlan, algm_global_count, algm_local_count,
                                  tome_count)
from edgemerge.models.segformer import MixFFN, SegformerAttention
from edgemerge.models.tokens import TokenState
from edgemerge.models.vit import Attention, Block

_ORIGINAL = "_em_original_class"


# ---- the built-in families' merge hooks --------------------------------------------------------------
# Their adapters (edgemerge.merge.families) place them; they are defined here because every exported
# node records its module's class path (ONNX metadata "namespace"): moving a class changes every
# bundle's bytes, so these paths are kept (tests/merge/test_family.py pins them). A new family
# defines its hooks in its own module.

def _where(module: nn.Module, what: str) -> str:
    """'stage 2 keys/values': how a refusal names the site."""
    return f"stage {getattr(module, 'em_stage', '?')} {what}"


def _publish_segformer(module: nn.Module, kind: str, hw: tuple[int, int], n_in: int, n_out: int, slot: Tensor | None) -> None:
    if core.observed():
        core.publish(core.SiteEvent(getattr(module, "em_name", "?"), getattr(module, "em_stage", None),
                                    getattr(module, "em_block", -1), kind, tuple(hw), n_in, n_out,
                                    slot))


class SegformerPPAttention(SegformerAttention):
    """Segformer++: keys/values merged after the spatial reduction, queries merged and restored."""

    em_kv: GridSite | None
    em_q: GridSite | None
    em_pool: bool
    em_proportional: bool

    def reduce_kv(self, kv: Tensor, hw: tuple[int, int]) -> tuple[Tensor, Tensor | None]:
        n = kv.shape[1]
        if self.em_kv is None:
            _publish_segformer(self, "kv", hw, n, n, None)
            return kv, None
        with core.site_named(_where(self, "keys/values")):
            fns = grid_match(self._metric("kv", kv), self.em_kv, hw)
        kv, size = fns.merge(kv)
        _publish_segformer(self, "kv", hw, n, kv.shape[1], fns.slot)
        if not self.em_proportional or size is None:
            return kv, None
        return kv, size.log().transpose(1, 2)[:, None].to(kv.dtype)  # [B, 1, 1, Nkv]

    def reduce_queries(self, x: Tensor, hw: tuple[int, int]):
        n = x.shape[1]
        if self.em_pool:  # n2d: 2x2 average pooling, nearest-neighbour restore
            with core.site_named(_where(self, "queries")):
                pooled, restore = pool_queries(x, hw)
            _publish_segformer(self, "pool", hw, n, pooled.shape[1], None)
            return pooled, restore
        if self.em_q is None:
            _publish_segformer(self, "queries", hw, n, n, None)
            return x, lambda t: t
        with core.site_named(_where(self, "queries")):
            fns = grid_match(self._metric("q", x), self.em_q, hw)
        merged = fns.merge(x)[0]
        _publish_segformer(self, "queries", hw, n, merged.shape[1], fns.slot)
        return merged, fns.unmerge

    def _metric(self, kind: str, tokens: Tensor) -> Tensor:
        """The tokens themselves (Segformer++), or a learned projection of them (one MatMul)."""
        learned = getattr(self, "dtem_metric", None)
        return learned[kind](tokens) if learned is not None and kind in learned else tokens


class SegformerPPMixFFN(MixFFN):
    """MixFFN with fc1's input merged by grid matching and fc1's output restored for the conv."""

    em_ffn: GridSite

    def reduce_tokens(self, x: Tensor, hw: tuple[int, int]):
        with core.site_named(_where(self, "MixFFN")):
            fns = grid_match(x, self.em_ffn, hw)
        merged = fns.merge(x)[0]
        _publish_segformer(self, "ffn", hw, x.shape[1], merged.shape[1], fns.slot)
        return merged, fns.unmerge


def grid_match(metric: Tensor, site: GridSite, hw: tuple[int, int]) -> core.MergeFns:
    """Segformer++'s matching at one site: site.count(N) sources into the anchors of the cells of
    an hw token grid, decided on `metric` [B, N, C]; each source against every anchor ("global")
    or only its own cell's ("cell": O(N*C), where the global S x D scores cost more than the
    site saves, e.g. the MixFFN at 1024x1024)."""
    if site.match == "cell":
        return core.cell_match(metric, site.count(metric.shape[1]), hw[0], hw[1], site.sy, site.sx)
    src, dst = core.grid(hw[0], hw[1], site.sy, site.sx)
    return core.bipartite_match(metric, site.count(metric.shape[1]), src, dst)


def pool_queries(x: Tensor, hw: tuple[int, int]) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
    """n2d's queries: 2x2 average pooling, and the nearest-neighbour restore of the outputs."""
    B, N, C = x.shape
    H, W = hw
    if H % 2 or W % 2:
        raise ValueError(f"a {H}x{W} token grid is not even (n2d pools 2x2 cells)")
    pooled = x.reshape(B, H // 2, 2, W // 2, 2, C).mean(dim=(2, 4)).reshape(B, -1, C)

    def restore(t: Tensor) -> Tensor:
        t = t.reshape(B, H // 2, 1, W // 2, 1, C).expand(B, H // 2, 2, W // 2, 2, C)
        return t.reshape(B, N, C)

    return pooled, restore



class FusedMetricAttention(Attention):
    """DTEM's eval path: the learned metric shares attn.qkv's input, so one GEMM [C -> 3C + F]
    computes both and the metric is returned where ToMe's keys were. The fused weight is made
    when the model is patched (`fuse_metric`), as DTEM's `DTEMLinear.update()` does, so the
    exported graph holds one weight initializer."""

    dtem_metric: nn.Linear
    em_fused_weight: Tensor  # non-persistent buffers: they follow .half()/.to() and stay out of state_dict
    em_fused_bias: Tensor

    def forward(self, x: Tensor, bias: Tensor | None = None) -> tuple[Tensor, Tensor]:
        y = F.linear(x, self.em_fused_weight, self.em_fused_bias)  # [B, N, 3C + F]
        out, _ = self.attend(y[..., : self.qkv.out_features], bias)
        return out, y[..., self.qkv.out_features:]


@torch.no_grad()
def fuse_metric(attn: Attention, metric: nn.Linear) -> None:
    """Patch `attn` to compute q, k, v and the metric in one GEMM (undo with remove_merging)."""
    qkv = attn.qkv
    qkv_bias = qkv.bias if qkv.bias is not None else qkv.weight.new_zeros(qkv.out_features)
    _swap(attn, FusedMetricAttention)
    attn.register_buffer("em_fused_weight", torch.cat([qkv.weight, metric.weight]), persistent=False)
    attn.register_buffer("em_fused_bias", torch.cat([qkv_bias, metric.bias]), persistent=False)
    attn.dtem_metric = metric


@dataclass
class ToMeSite:
    r: int
    protect: int = 1
    proportional: bool = True


@dataclass
class WindowSite:
    """ALGM local: merge 2x2 windows whole; static fraction or adaptive threshold."""

    grid_hw: tuple[int, int]
    fraction: float
    threshold: float
    adaptive: bool
    protect: int = 1


@dataclass
class GlobalSite:
    """ALGM global: ToMe matching with r from a static fraction or mean + std / layer."""

    fraction: float
    layer: int
    adaptive: bool
    protect: int = 1


class MergingBlock(Block):
    """ViT block that reduces tokens between attention and MLP (ToMe, DTEM, ALGM)."""

    em_site: ToMeSite | WindowSite | GlobalSite

    def reduce_tokens(self, x: Tensor, state: TokenState, keys: Tensor, normed: Tensor):
        site = self.em_site
        N = x.shape[1]
        if isinstance(site, WindowSite):
            h, w = site.grid_hw
            if site.adaptive:
                scores = core.ops.window_scores(x, h, w, site.protect)
                k = int((scores >= site.threshold).sum(-1).min())  # one count per batch
            else:
                k = algm_local_count(site.fraction, site.grid_hw)
            with core.site_named("ALGM"):
                fns = core.window_match(x, h, w, k, site.protect)
            proportional = False
        else:
            src, dst = core.alternating(N, site.protect)
            if isinstance(site, ToMeSite):
                metric = keys  # ToMe's keys, or the learned metric FusedMetricAttention returns in their place
                r = tome_count(site.r, N, site.protect)
                proportional = site.proportional
            else:  # ALGM global: the tokens after the attention residual, or a learned projection of them
                learned = getattr(self, "dtem_metric", None)
                metric = x if learned is None else learned(x)
                if site.adaptive:
                    # ALGM's turbo_matching: one cut for the batch, the batch mean of the per-image
                    # means plus the batch mean of the per-image stds / layer; r = the fewest sources
                    # at or above it in any image (one count per batch). Batch 1: mean + std / layer.
                    node_max = core.bipartite_node_max(metric, src, dst, site.protect)[:, site.protect:]
                    cut = node_max.mean(-1).mean() + node_max.std(-1).mean() / max(site.layer, 1)
                    r = int((node_max >= cut).sum(-1).min())
                else:
                    r = algm_global_count(site.fraction, N, site.protect)
                proportional = False
            fns = core.bipartite_match(metric, r, src, dst, site.protect)
        if fns.slot is None:
            _publish_tokens(self, N, N, None, state.source)
            return x, state
        x, size = fns.merge(x, state.size)
        merged = TokenState(size, core.compose_source(state.source, fns.slot), proportional)
        _publish_tokens(self, N, x.shape[1], fns.slot, merged.source)
        return x, merged


def _publish_tokens(block: nn.Module, n_in: int, n_out: int, slot: Tensor | None, source: Tensor | None) -> None:
    if core.observed():
        core.publish(core.SiteEvent(getattr(block, "em_name", "?"), None, getattr(block, "em_block", -1), "tokens",
                                    getattr(block, "em_grid", None), n_in, n_out, slot, source))


def identity_or_state(dim: int, state: dict[str, Tensor], key: str, like: Tensor) -> nn.Linear:
    """A learned metric Linear(dim -> dim): the checkpoint's (KEY weight/bias), else the identity,
    which is the metric of the site without one (so training starts from the published behaviour)."""
    proj = nn.Linear(dim, dim).to(like.device, like.dtype)
    if key + "weight" in state:
        proj.load_state_dict({"weight": state[key + "weight"], "bias": state[key + "bias"]})
    else:
        with torch.no_grad():
            proj.weight.copy_(torch.eye(dim))
            proj.bias.zero_()
    return proj



def learned_metric_keys(model_name: str, plan: MergePlan) -> list[str]:
    """The weight key of every learned metric `plan` reads from a checkpoint ([] if it reads none)."""
    from edgemerge.models.registry import get_config

    if isinstance(plan, NoPlan):
        return []
    cfg = get_config(model_name)
    return family_for(cfg.family).learned_metric_keys(cfg, plan)


def _swap(module: nn.Module, cls: type, **attrs) -> None:
    if not hasattr(module, _ORIGINAL):
        setattr(module, _ORIGINAL, module.__class__)
    module.__class__ = cls
    for k, v in attrs.items():
        setattr(module, k, v)



def apply_merging(model: nn.Module, plan: MergePlan, *, dtem_state: dict[str, Tensor] | None = None) -> nn.Module:
    """Patch `model` in place for `plan` (NoPlan leaves it untouched); returns the model."""
    remove_merging(model)
    if isinstance(plan, NoPlan):
        return model
    config = getattr(model, "config", None)
    family = family_for(config.family) if config is not None else family_of_plan(plan)
    if not isinstance(plan, family.plan_class):
        family = family_of_plan(plan)  # refused by its patch when the model is not of that family
    family.patch(model, plan, dtem_state)
    return model


def remove_merging(model: nn.Module) -> nn.Module:
    """Undo `apply_merging`: original classes back, merge attributes and DTEM projections gone."""
    for m in model.modules():
        original = m.__dict__.pop(_ORIGINAL, None)
        if original is not None:
            m.__class__ = original
            for k in [k for k in m.__dict__ if k.startswith("em_")]:
                del m.__dict__[k]
            if "dtem_metric" in m._modules:
                del m._modules["dtem_metric"]
            for k in [k for k in m._buffers if k.startswith("em_")]:
                del m._buffers[k]
    return model


@torch.no_grad()
def merged_model(name: str, variant: str, **build) -> nn.Module:
    """Convenience: a zoo model with random weights, patched for `variant`."""
    from edgemerge.merge.plan import get_plan
    from edgemerge.models.registry import build_model

    return apply_merging(build_model(name, **build), get_plan(name, variant))

