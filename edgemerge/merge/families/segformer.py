"""Segformer (Segformer++ merging): keys/values merged after the spatial reduction, queries
merged (or n2d-pooled) and restored, MixFFN's fc1 input merged, proportional attention, a learned
metric per site; its soft (trainable) forward; its plan-file table; its counts.

Every merge hook publishes a `core.SiteEvent` (stage, block, kind, grid, tokens in/out, slot).
"""

from __future__ import annotations

import math
from typing import Any, Callable

from torch import Tensor, nn

from edgemerge.contracts.errors import EdgemergeError
from edgemerge.merge import core, soft
from edgemerge.merge.family import Family, SoftModel, register
from edgemerge.merge.patch import (SegformerPPAttention, SegformerPPMixFFN, _swap, identity_or_state, pool_queries,
                                   remove_merging)
from edgemerge.merge.plan import GridSite, SegformerPlan, grid_sites
from edgemerge.merge.soft import SIZE_FLOOR, SoftStats
from edgemerge.models.segformer import MixFFN, SegformerAttention


def segformer_metrics(attn: nn.Module, plan: SegformerPlan, stage: int, state: dict[str, Tensor],
                      prefix: str) -> nn.ModuleDict:
    """The learned metric of each site of one Segformer attention ("kv", "q"): the checkpoint's
    (keys PREFIX{kv,q}.weight/bias), else Linear(C -> C) = identity, which is Segformer++'s metric."""
    out = nn.ModuleDict()
    C = attn.q.in_features
    w0 = attn.q.weight
    for kind, sites in (("kv", plan.kv), ("q", plan.q)):
        if stage not in sites:
            continue
        out[kind] = identity_or_state(C, state, f"{prefix}{kind}.", w0)
    return out


# ---- soft (trainable) forward ---------------------------------------------------------------------

class SoftSegformerAttention(SegformerAttention):
    em_kv: GridSite | None
    em_q: GridSite | None
    em_pool: bool
    em_proportional: bool
    em_tau: float
    em_top_k: int
    em_stats: SoftStats | None

    def _assign(self, kind: str, tokens: Tensor, site: GridSite, hw: tuple[int, int]):
        return _soft_assign(self.dtem_metric[kind](tokens.detach()), site, hw, top_k=self.em_top_k,
                            tau=self.em_tau, stats=self.em_stats)

    def reduce_kv(self, kv: Tensor, hw: tuple[int, int]) -> tuple[Tensor, Tensor | None]:
        if self.em_kv is None:
            return kv, None
        assign, src, dst = self._assign("kv", kv, self.em_kv, hw)
        kv, size = soft.soft_merge(kv, kv.new_ones(kv.shape[:2]), assign, src, dst)
        size = size.clamp_min(SIZE_FLOOR) if self.em_proportional else size.clamp(SIZE_FLOOR, 1.0)
        return kv, size.log()[:, None, None, :].to(kv.dtype)  # [B, 1, 1, Nkv]

    def reduce_queries(self, x: Tensor, hw: tuple[int, int]) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
        if self.em_pool:  # pooled queries have no metric: the same fixed op as at inference
            return pool_queries(x, hw)
        if self.em_q is None:
            return x, lambda t: t
        return _soft_merged(x, *self._assign("q", x, self.em_q, hw))


class SoftMixFFN(MixFFN):
    """fc1 on the softly merged tokens (all kept), its output unmerged softly before the conv."""

    em_ffn: GridSite
    em_tau: float
    em_top_k: int

    def reduce_tokens(self, x: Tensor, hw: tuple[int, int]) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
        return _soft_merged(x, *_soft_assign(x.detach(), self.em_ffn, hw, top_k=self.em_top_k, tau=self.em_tau))


def _soft_assign(metric: Tensor, site: GridSite, hw: tuple[int, int], *, top_k: int, tau: float,
                 stats: SoftStats | None = None) -> tuple[Tensor, tuple[int, ...], tuple[int, ...]]:
    """The relaxation of patch.grid_match at one site: (assign [B, S, D], src, dst)."""
    src, dst = core.grid(hw[0], hw[1], site.sy, site.sx)
    r = site.count(metric.shape[1])
    own = None
    if site.match == "cell":  # the relaxation of TokenMatchCell: only the own anchor is a candidate
        _, cell = core.ops.cell_layout(hw[0], hw[1], site.sy, site.sx, metric.device)
        own = cell[list(src)]
    assign = soft.soft_grid(metric, r, src, dst, top_k=top_k, tau=tau, own=own)
    if stats is not None:
        stats.note(r, assign)
    return assign, src, dst


def _soft_merged(x: Tensor, assign: Tensor, src: tuple[int, ...],
                 dst: tuple[int, ...]) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
    """Tokens merged softly (all kept, sizes 1) and the soft restore of what is computed on them."""
    merged, _ = soft.soft_merge(x, x.new_ones(x.shape[:2]), assign, src, dst)
    return merged, lambda t: soft.soft_unmerge(t, assign, src, dst)


def segformer_soft_metrics(model: nn.Module, plan: SegformerPlan, state: dict[str, Tensor]) -> nn.ModuleDict:
    """Trainable metrics of every site, keyed by their checkpoint prefix (dots as '/')."""
    out = nn.ModuleDict()
    for s, stage in enumerate(model.encoder.stages, start=1):
        for b, blk in enumerate(stage.blocks):
            prefix = f"encoder.stages.{s - 1}.blocks.{b}.attn.dtem_metric."
            metrics = segformer_metrics(blk.attn, plan, s, state, prefix)
            if len(metrics):
                out[prefix.replace(".", "/")] = metrics.float()
    return out


def apply_soft_segformer(model: nn.Module, plan: SegformerPlan, metrics: nn.ModuleDict, *, tau: float,
                         top_k: int, stats: SoftStats | None = None) -> nn.Module:
    """Swap every attention and MixFFN with a site for its soft version (undo with merge.remove_merging)."""
    for s, stage in enumerate(model.encoder.stages, start=1):
        for b, blk in enumerate(stage.blocks):
            if s in plan.ffn:
                # no learned metric here (one cost more than it saved: benchmarks/README.md), but
                # the site merges as at inference: the tokens' cosine at tau 1e-6 decides as the
                # hard op (up to exact ties), with gradients through to the earlier sites' metrics
                # (the hard op has no autograd formula)
                _swap(blk.mlp, SoftMixFFN, em_ffn=plan.ffn[s], em_tau=1e-6, em_top_k=top_k)
            key = f"encoder/stages/{s - 1}/blocks/{b}/attn/dtem_metric/"
            if key not in metrics:
                continue
            _swap(blk.attn, SoftSegformerAttention, em_kv=plan.kv.get(s), em_q=plan.q.get(s),
                  em_pool=s in plan.q_pool, em_proportional=plan.proportional, em_tau=tau, em_top_k=top_k,
                  em_stats=stats)
            blk.attn.dtem_metric = metrics[key]
    return model


# ---- the adapter ------------------------------------------------------------------------------------

def plan_of(v: dict[str, Any], calibration: dict | None = None, mode: str | None = None) -> SegformerPlan:
    pool = v.get("q_pool", {})
    return SegformerPlan(kv=grid_sites(v.get("kv", {})), q=grid_sites(v.get("q", {})),
                         q_pool=tuple(int(s) for s in pool.get("stages", [])), ffn=grid_sites(v.get("ffn", {})),
                         proportional=bool(v.get("proportional", False)), metric=v.get("metric", "tokens"))


def patch(model: nn.Module, plan: SegformerPlan, state: dict[str, Tensor] | None) -> None:
    stages = getattr(getattr(model, "encoder", None), "stages", None)
    if stages is None:
        raise EdgemergeError("Segformer++ plans apply to Segformer models only")
    names = {id(m): n for n, m in model.named_modules()}
    for s, stage in enumerate(stages, start=1):
        for b, blk in enumerate(stage.blocks):
            _swap(blk.attn, SegformerPPAttention, em_kv=plan.kv.get(s), em_q=plan.q.get(s),
                  em_pool=s in plan.q_pool, em_proportional=plan.proportional,
                  em_name=names[id(blk.attn)], em_stage=s, em_block=b)
            if plan.metric == "learned":
                blk.attn.dtem_metric = segformer_metrics(blk.attn, plan, s, state or {},
                                                         f"encoder.stages.{s - 1}.blocks.{b}.attn.dtem_metric.")
            if s in plan.ffn:
                _swap(blk.mlp, SegformerPPMixFFN, em_ffn=plan.ffn[s], em_name=names[id(blk.mlp)], em_stage=s,
                      em_block=b)


# a Segformer stage's counts, in the order `edgemerge plan` prints them
STAGE_COUNTS = ("queries_in", "queries_kept", "kv_in", "kv_kept", "ffn_in", "ffn_kept")


def counts(model: nn.Module, events: list[core.SiteEvent]) -> dict[str, Any]:
    """Per stage: the token grid, the blocks, and each site's tokens in and kept. A stage whose
    blocks differ gives each count as a list, one per block, so an uneven plan shows as it is."""
    per_block: dict[tuple[int, int], dict[str, Any]] = {}
    for e in events:
        c = per_block.setdefault((e.stage, e.block), {})
        if e.kind in ("queries", "pool"):
            c.update(grid=list(e.grid), queries_in=e.tokens_in, queries_kept=e.tokens_out)
            c.setdefault("ffn_in", e.tokens_in)  # a MixFFN without a site sees every token
            c.setdefault("ffn_kept", e.tokens_in)
        elif e.kind == "kv":
            c.update(kv_in=e.tokens_in, kv_kept=e.tokens_out)
        elif e.kind == "ffn":
            c.update(ffn_in=e.tokens_in, ffn_kept=e.tokens_out)
    stages = []
    for s, stage in enumerate(model.encoder.stages, start=1):
        blocks = [per_block[(s, b)] for b in range(len(stage.blocks))]
        row: dict[str, Any] = {"stage": s, "grid": blocks[0]["grid"], "blocks": len(blocks)}
        for key in STAGE_COUNTS:
            values = [c[key] for c in blocks]
            row[key] = values[0] if len(set(values)) == 1 else values
        stages.append(row)
    return {"stages": stages}


def learned_metric_keys(cfg, plan: SegformerPlan) -> list[str]:
    if plan.metric != "learned":
        return []
    return [f"encoder.stages.{s - 1}.blocks.{b}.attn.dtem_metric.{kind}.weight"
            for kind, sites in (("kv", plan.kv), ("q", plan.q)) for s in sorted(sites)
            for b in range(cfg.depths[s - 1])]


def soft_model(model: nn.Module, plan: SegformerPlan, merge_state: dict[str, Tensor], opts) -> SoftModel:
    metrics = segformer_soft_metrics(model, plan, merge_state)

    def forward(images: Tensor, stats) -> Tensor:
        apply_soft_segformer(model, plan, metrics, tau=opts.tau_grid, top_k=opts.top_k, stats=stats)
        try:
            return model(images)
        finally:
            remove_merging(model)

    def state() -> dict[str, Tensor]:
        return {key.replace("/", ".") + name: v.detach().clone() for key, mod in metrics.items()
                for name, v in mod.state_dict().items()}

    return SoftModel(metrics, forward, state)


FAMILY = register(Family(
    names=("segformer",), plan_class=SegformerPlan, plan=plan_of, patch=patch, counts=counts,
    unit=lambda cfg: math.prod(cfg.strides), learned_metric_keys=learned_metric_keys, soft=soft_model,
    train_variant="fast-pa-lm"))
