"""Segmenter (ALGM): 2x2 windows merged whole after one block's attention (local), ToMe-style
matching after another's (global), static fractions from the plan or a calibration; the global
site's learned metric and its soft forward. The merging block is the ViT family's.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from edgemerge.contracts.errors import EdgemergeError
from edgemerge.merge import core, soft
from edgemerge.merge.family import Family, SoftModel, register
from edgemerge.merge.families.vit import _vit_of, swap_block, vit_counts
from edgemerge.merge.patch import GlobalSite, WindowSite
from edgemerge.merge.patch import apply_merging, identity_or_state, remove_merging
from edgemerge.merge.plan import ALGMPlan, algm_global_count
from edgemerge.merge.soft import SIZE_FLOOR, SoftStats
from edgemerge.models.segmenter import Segmenter
from edgemerge.models.tokens import TokenState


def soft_segmenter_forward(model: Segmenter, plan: ALGMPlan, metric: nn.Module, images: Tensor, *,
                           top_k: int = 3, tau_score: float = 0.1, tau_pick: float = 0.1,
                           stats: SoftStats | None = None) -> Tensor:
    """images [B, 3, H, W] -> logits [B, K, H, W], the global site merged softly with `metric`.

    `model` is patched for `plan` (apply_merging): its local block merges hard; its global block's
    own merge is bypassed here."""
    enc = model.encoder
    p = enc.num_prefix_tokens
    x, state = enc.embed(images), TokenState()
    assign, src, dst, bias = None, (), (), None
    for i, blk in enumerate(enc.blocks):
        if i < plan.global_layer:
            x, state = blk(x, state)  # the hard window step happens in here
            continue
        a, _ = blk.attn(blk.norm1(x), bias if assign is not None else state.attn_bias())
        x = x + a
        if i == plan.global_layer:
            n = x.shape[1]
            src, dst = core.alternating(n, p)
            r = algm_global_count(plan.global_fraction, n, p)
            assign = soft.soft_bipartite(metric(x.detach()), r, src, dst, p, top_k=top_k,
                                         tau_score=tau_score, tau_pick=tau_pick)
            size = state.size[..., 0] if state.size is not None else x.new_ones(x.shape[:2])
            x, merged_size = soft.soft_merge(x, size, assign, src, dst)
            presence = (merged_size / size).clamp(SIZE_FLOOR, 1.0)  # sources 1 - m, destinations 1
            bias = presence.log()[:, None, None, :]  # [B, 1, 1, N]
            if stats is not None:
                stats.note(r, assign)
        x = x + blk.mlp(blk.norm2(x))
    tokens = enc.norm(x)
    dec_bias = bias[..., p:] if bias is not None else None
    scores = model.decoder(tokens[:, p:], dec_bias).float()  # [B, N', K]
    if assign is not None:  # soft unmerge over the full sequence (prefix rows are never read)
        full = torch.cat([scores.new_zeros(scores.shape[0], p, scores.shape[-1]), scores], dim=1)
        scores = soft.soft_unmerge(full, assign, src, dst)[:, p:]
    return model.masks(scores, state, images.shape[-2:])



def soft_model(model, plan: ALGMPlan, merge_state: dict[str, Tensor], opts) -> SoftModel:
    """ALGM's global site: one Linear(C -> C) on the tokens (the checkpoint's, else the identity)."""
    import dataclasses

    [weight_key] = learned_metric_keys(model.config, plan)  # the key export and validate read
    key = weight_key.removesuffix("weight")
    metric = identity_or_state(model.encoder.pos_embed.shape[-1], merge_state, key, model.encoder.pos_embed).float()
    hard = dataclasses.replace(plan, metric="tokens")  # the global block's own merge is bypassed

    def forward(images: Tensor, stats) -> Tensor:
        apply_merging(model, hard)
        try:
            return soft_segmenter_forward(model, plan, metric, images, top_k=opts.top_k, tau_score=opts.tau_score,
                                          tau_pick=opts.tau_pick, stats=stats)
        finally:
            remove_merging(model)

    def state() -> dict[str, Tensor]:
        return {key + name: v.detach().clone() for name, v in metric.state_dict().items()}

    return SoftModel(nn.ModuleDict({"global": metric}), forward, state)



# ---- the adapter ------------------------------------------------------------------------------------

def plan_of(v: dict, calibration: dict | None = None, mode: str | None = None) -> ALGMPlan:
    cal = calibration or {}
    return ALGMPlan(local_layer=int(v["local_layer"]), global_layer=int(v["global_layer"]),
                    threshold=float(v["threshold"]),
                    local_fraction=float(cal.get("local_fraction", v["local_fraction"])),
                    global_fraction=float(cal.get("global_fraction", v["global_fraction"])),
                    mode=mode or "static", metric=v.get("metric", "tokens"))


def patch(model: nn.Module, plan: ALGMPlan, state: dict[str, Tensor] | None) -> None:
    vit = _vit_of(model)
    protect = vit.num_prefix_tokens
    adaptive = plan.mode == "adaptive"
    depth = len(vit.blocks)
    if not (0 <= plan.local_layer < plan.global_layer < depth):
        raise EdgemergeError(f"ALGM layers {plan.local_layer}/{plan.global_layer} do not fit {depth} blocks")
    swap_block(model, vit, plan.local_layer,
               WindowSite(tuple(vit.grid_size), plan.local_fraction, plan.threshold, adaptive, protect))
    swap_block(model, vit, plan.global_layer, GlobalSite(plan.global_fraction, plan.global_layer, adaptive, protect))
    if plan.metric == "learned":
        prefix = next(n for n, m in model.named_modules() if m is vit)
        key = f"{prefix + '.' if prefix else ''}blocks.{plan.global_layer}.dtem_metric."
        vit.blocks[plan.global_layer].dtem_metric = identity_or_state(vit.pos_embed.shape[-1], state or {}, key,
                                                                      vit.pos_embed)


def learned_metric_keys(cfg, plan: ALGMPlan) -> list[str]:
    return [f"encoder.blocks.{plan.global_layer}.dtem_metric.weight"] if plan.metric == "learned" else []


FAMILY = register(Family(
    names=("segmenter",), plan_class=ALGMPlan, plan=plan_of, patch=patch, counts=vit_counts,
    unit=lambda cfg: cfg.patch_size, learned_metric_keys=learned_metric_keys, soft=soft_model,
    train_variant="algm-lm",
    takes_calibration=True))
