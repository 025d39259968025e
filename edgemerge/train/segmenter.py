"""Segmenter with ALGM's global site merged softly, for training that site's learned metric.

The local 2x2-window step runs hard, as at inference (it has no metric of its own: windows merge
by their uniformity). The global step is DTEM's relaxation (`soft.soft_bipartite`, as for ViT) on
the learned metric of the tokens after the attention residual, the sequence kept at full length,
sizes weighting the soft mean as the hard merge weights it. ALGM deploys without proportional
attention, so afterwards a token counts at most once, in the encoder's and the decoder's attention
alike: a source that gave mass m keeps presence 1 - m (bias log(1 - m)), destinations count once
(train with what inference does). The decoder's class scores are unmerged softly (a source reads
its own by its kept mass plus its destinations' by theirs), then through the window step's
`source`, as `Segmenter.forward` does.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from edgemerge.merge import core, soft
from edgemerge.merge.plan import ALGMPlan, algm_global_count
from edgemerge.models.segmenter import Segmenter
from edgemerge.models.tokens import TokenState
from edgemerge.train.vit import SIZE_FLOOR, SoftStats


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
