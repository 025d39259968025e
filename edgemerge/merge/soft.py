"""Soft (differentiable) merging: DTEM's relaxation of the hard matching in `core`/`ops`.

Training a merge metric needs gradients through "which token merges into which", which the hard
ops (a sort and a scatter) do not have. Here the sequence keeps its full length: a source that
merges keeps its features but its size drops towards 0, and destinations take the size-weighted
soft mean of what they receive; with proportional attention (+ log size) a size-0 token is gone
from every other token's view, as it is after a hard merge. As the pick temperature goes to 0 the
assignment becomes the hard op's one-hot (tests/merge/test_soft.py). PyTorch only, never exported.

Shapes: `metric [B, N, F]`, `x [B, N, C]`, `size [B, N]`, `assign [B, S, D]` (mass each source sends
to each destination; a row sums to at most 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from edgemerge.merge.ops import _normalize

EPS = torch.finfo(torch.float32).eps  # DTEM's floor for 1 - picked mass
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



def _scores(metric: Tensor, src: Sequence[int], dst: Sequence[int]) -> Tensor:
    """Cosine similarity of every source to every destination, [B, S, D]."""
    m = _normalize(metric)
    src_t = torch.as_tensor(list(src), device=metric.device)
    dst_t = torch.as_tensor(list(dst), device=metric.device)
    return m[:, src_t] @ m[:, dst_t].transpose(1, 2)


def soft_bipartite(metric: Tensor, r: int, src: Sequence[int], dst: Sequence[int], protect: int = 0, *,
                   top_k: int = 3, tau_score: float = 0.1, tau_pick: float = 0.1) -> Tensor:
    """DTEM's relaxed top-r bipartite matching -> assign [B, S, D].

    Each source keeps its `top_k` destinations by cosine, logits = score / tau_score; r times a
    softmax over all kept entries of all sources (/ tau_pick) picks ~one (source, destination)
    pair, and log(1 - picked mass) is added to that source's logits so that it is not picked again.
    A row's mass is capped at 1 (the cap is a constant for the gradient). The first `protect`
    sources never merge (their scores are -inf), as in `ops.match_bipartite_ref`.
    """
    B, S, D = metric.shape[0], len(src), len(dst)
    if r <= 0 or S == 0 or D == 0:
        return metric.new_zeros(B, S, D, dtype=torch.float32)
    scores = _scores(metric, src, dst)  # [B, S, D]
    if protect:
        keep = torch.arange(S, device=metric.device) >= protect
        scores = scores.masked_fill(~keep[None, :, None], -torch.inf)
    k = min(top_k, D)
    top, idx = scores.topk(k, dim=-1)  # [B, S, k]
    logits = top / tau_score
    picked = torch.zeros_like(logits)
    for _ in range(r):
        p = torch.softmax(logits.reshape(B, -1) / tau_pick, dim=-1).reshape(B, S, k)
        picked = picked + p
        logits = logits + torch.log((1 - p.sum(-1, keepdim=True)).clamp_min(EPS))
    cap = (picked.sum(-1, keepdim=True).detach() - 1).clamp_min(0) + 1
    return torch.zeros_like(scores).scatter_add(-1, idx, picked / cap)


def soft_merge(x: Tensor, size: Tensor, assign: Tensor, src: Sequence[int],
               dst: Sequence[int]) -> tuple[Tensor, Tensor]:
    """Apply assign [B, S, D]: destinations take the size-weighted soft mean, sources keep their
    features with size w * (1 - mass), clamped to [0, 1] in the forward pass (the mass cap can
    overshoot by rounding) and straight-through in the backward pass. -> (x [B, N, C], size [B, N]).

    The total size is conserved: what a source loses, its destinations gain.
    """
    src_t = torch.as_tensor(list(src), device=x.device)
    dst_t = torch.as_tensor(list(dst), device=x.device)
    a = assign.to(x.dtype)
    xa, xb = x[:, src_t], x[:, dst_t]
    wa, wb = size[:, src_t], size[:, dst_t]
    gained = (a.transpose(1, 2) @ wa[..., None])[..., 0]  # [B, D]
    wb_new = wb + gained
    xb_new = (wb[..., None] * xb + a.transpose(1, 2) @ (wa[..., None] * xa)) / wb_new.clamp_min(EPS)[..., None]
    keep = 1 - a.sum(-1)
    keep = keep + (keep.clamp(0, 1) - keep).detach()
    out_x, out_size = x.clone(), size.clone()
    out_x[:, dst_t] = xb_new
    out_size[:, src_t] = wa * keep
    out_size[:, dst_t] = wb_new
    return out_x, out_size


def hard_slots(assign: Tensor, src: Sequence[int], dst: Sequence[int], n: int) -> Tensor:
    """The hard op's slot [B, N] that a (near one-hot) assignment stands for, for comparisons:
    a source merges when it sends more than half its mass, into its heaviest destination."""
    B, S, D = assign.shape
    merged = assign.sum(-1) > 0.5
    r = int(merged.sum(-1).max())
    if not bool((merged.sum(-1) == r).all()):
        raise ValueError("the assignment merges a different number of sources per image")
    unm_rank = torch.cumsum((~merged).long(), dim=1) - 1
    slot_src = torch.where(merged, S - r + assign.argmax(-1), unm_rank)
    slot = torch.empty(B, n, dtype=torch.long, device=assign.device)
    slot[:, list(src)] = slot_src
    slot[:, list(dst)] = (S - r + torch.arange(D, device=assign.device)).expand(B, D)
    return slot.int()


def soft_grid(metric: Tensor, r: int, src: Sequence[int], dst: Sequence[int], *, top_k: int = 3,
              tau: float = 0.01, own: Tensor | None = None) -> Tensor:
    """Relaxed Segformer++ matching (destinations fixed: one per grid cell) -> assign [B, S, D].

    Only "which r sources merge, into which destination" is soft: a gate on each source's best
    score against the cut between the r-th and (r+1)-th best (the cut is a constant for the
    gradient), times a softmax over the source's top_k destinations. Both sharpen to the hard
    op's decision as tau -> 0. One pass, no r-step loop: Segformer's sites merge hundreds of tokens.
    """
    B, S, D = metric.shape[0], len(src), len(dst)
    if r <= 0 or S == 0 or D == 0:
        return metric.new_zeros(B, S, D, dtype=torch.float32)
    scores = _scores(metric, src, dst)  # [B, S, D]
    if own is not None:  # cell matching: a source's only candidate is its own cell's anchor (own [S])
        scores = scores.masked_fill(own[:, None] != torch.arange(D, device=own.device), -torch.inf)
    top, idx = scores.topk(min(top_k, D), dim=-1)
    best = top[..., 0]  # [B, S]
    ranked = best.detach().sort(dim=-1, descending=True).values
    cut = (ranked[:, r - 1] + ranked[:, r]) / 2 if r < S else ranked[:, -1] - 1
    gate = torch.sigmoid((best - cut[:, None]) / tau)
    dest = torch.softmax(top / tau, dim=-1)
    return torch.zeros_like(scores).scatter_add(-1, idx, gate[..., None] * dest)


def soft_unmerge(t: Tensor, assign: Tensor, src: Sequence[int], dst: Sequence[int]) -> Tensor:
    """Soft TokenUnmerge of full-length t [B, N, C] after `soft_merge`: a source's output is its own
    by its kept mass (straight-through clamp as in soft_merge) plus its destinations' by theirs."""
    src_t = torch.as_tensor(list(src), device=t.device)
    dst_t = torch.as_tensor(list(dst), device=t.device)
    a = assign.to(t.dtype)
    keep = 1 - a.sum(-1)
    keep = keep + (keep.clamp(0, 1) - keep).detach()
    out = t.clone()
    out[:, src_t] = keep[..., None] * t[:, src_t] + a @ t[:, dst_t]
    return out
