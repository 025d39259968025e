"""ViT/DeiT forward with DTEM's soft merging at every ToMe site, for training the merge metric.

The sequence keeps its full length; `n` counts the active tokens (those a hard merge would keep),
which come first after each block's sort by size (DTEM's training loop). Attention is
proportional (+ log size) as at inference, so a source whose size went to 0 disappears.
The metric sees the block's normed input detached: its gradient comes only through the merge.
Sources and destinations alternate as at inference (`core.alternating`, prefix tokens protected);
DTEM's training loop alternates the other way round (odd positions are sources), which after the
first sort by size is an equally arbitrary split.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from edgemerge.merge import core, soft
from edgemerge.merge.plan import tome_count
from edgemerge.models.vit import VisionTransformer

SIZE_FLOOR = 1e-6  # log(size) of a fully merged source: -13.8, gone from attention, finite gradients


@dataclass
class SoftStats:
    """Per site: the count r and the mass the relaxation moved (r when it behaves like the hard op)."""

    counts: list[int] = field(default_factory=list)
    mass: list[float] = field(default_factory=list)

    def note(self, r: int, assign: Tensor) -> None:
        """One site's count and the mass its assignment [B, S, D] moved (mean over the batch)."""
        self.counts.append(r)
        self.mass.append(float(assign.detach().sum((-1, -2)).mean()))


def soft_vit_forward(model: VisionTransformer, metrics: nn.ModuleList, images: Tensor, r: int, *,
                     top_k: int = 3, tau_score: float = 0.1, tau_pick: float = 0.1,
                     stats: SoftStats | None = None) -> Tensor:
    """images [B, 3, H, W] -> class logits [B, K], merging softly with `metrics[i]` at block i."""
    protect = model.num_prefix_tokens
    x = model.embed(images)
    B, N, _ = x.shape
    size = x.new_ones(B, N)
    n = N
    for blk, metric in zip(model.blocks, metrics):
        xn = blk.norm1(x)
        bias = size.clamp_min(SIZE_FLOOR).log()[:, None, None, :]  # [B, 1, 1, N]
        a, _ = blk.attn(xn, bias)
        x = x + a
        k = tome_count(r, n, protect)
        if k > 0:
            src, dst = core.alternating(n, protect)
            assign = soft.soft_bipartite(metric(xn[:, :n].detach()), k, src, dst, protect, top_k=top_k,
                                         tau_score=tau_score, tau_pick=tau_pick)
            xa, sa = soft.soft_merge(x[:, :n], size[:, :n], assign, src, dst)
            order = torch.argsort(sa[:, protect:], dim=-1, descending=True, stable=True) + protect
            x = torch.cat([xa[:, :protect], xa.gather(1, order[..., None].expand(-1, -1, xa.shape[-1])), x[:, n:]], 1)
            size = torch.cat([sa[:, :protect], sa.gather(1, order), size[:, n:]], 1)
            n -= k
            if stats is not None:
                stats.note(k, assign)
        x = x + blk.mlp(blk.norm2(x))
    x = model.norm(x)
    logits = model.head(x[:, 0])
    if model.head_dist is not None:
        logits = (logits + model.head_dist(x[:, 1])) / 2
    return logits
