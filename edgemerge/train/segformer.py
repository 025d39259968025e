"""Segformer++ sites merged softly, for training their learned metric (keys/values and queries;
MixFFN's fc1 sites, which have none, merge at a near-zero temperature as at inference).

Each attention's sites start from fresh tokens (sizes 1), so no state crosses blocks. Keys/values:
the soft merge keeps all Nkv tokens and removes a merged one through the attention bias,
log(size) with proportional attention, else log(min(size, 1)) - a destination counts once, as a
hard-merged key does without proportional attention (train with what inference does). Queries:
merged softly, attention on all of them, outputs unmerged softly; MixFFN's fc1 input the same way.
"""

from __future__ import annotations

from typing import Callable

from torch import Tensor, nn

from edgemerge.merge import core, soft
from edgemerge.merge.patch import _swap, pool_queries, segformer_metrics
from edgemerge.merge.plan import GridSite, SegformerPlan
from edgemerge.models.segformer import MixFFN, SegformerAttention
from edgemerge.train.vit import SIZE_FLOOR, SoftStats


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
    assign = soft.soft_grid(metric, r, src, dst, top_k=top_k, tau=tau)
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
