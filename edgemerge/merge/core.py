"""Matching functions in ToMe's shape: compute the assignment once, return merge/unmerge closures.

With a count of 0 they return identities, so callers never branch. Every count is a Python int
resolved from static shapes, so a patched model exports with static token counts.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Callable, NamedTuple

import torch
from torch import Tensor

from edgemerge.merge import ops  # noqa: F401  (registers torch.ops.edgemerge.*)


class MergeFns(NamedTuple):
    """merge(x [B,N,C], size [B,N,1] | None) -> (x [B,M,C], size [B,M,1]); unmerge [B,M,C] -> [B,N,C]."""

    merge: Callable[..., tuple[Tensor, Tensor | None]]
    unmerge: Callable[[Tensor], Tensor]
    slot: Tensor | None  # [B, N] int32, None for the identity


def identity() -> MergeFns:
    return MergeFns(lambda x, size=None: (x, size), lambda x: x, None)


def from_slot(slot: Tensor, num_out: int) -> MergeFns:
    def merge(x: Tensor, size: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if size is None:
            size = x.new_ones(x.shape[0], x.shape[1], 1)
        return torch.ops.edgemerge.token_merge(x, size.to(x.dtype), slot, num_out)

    return MergeFns(merge, lambda x: torch.ops.edgemerge.token_unmerge(x, slot), slot)


def from_cell_slot(slot: Tensor, num_out: int, height: int, width: int, sy: int, sx: int) -> MergeFns:
    """from_slot for slots in TokenMatchCell's layout: the merge is TokenMergeCell (O(N*C): cell
    sums by a reshape, no [N, M] one-hot), the unmerge the same gather."""
    def merge(x: Tensor, size: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if size is None:
            size = x.new_ones(x.shape[0], x.shape[1], 1)
        return torch.ops.edgemerge.token_merge_cell(x, size.to(x.dtype), slot, height, width, sy, sx, num_out)

    return MergeFns(merge, lambda x: torch.ops.edgemerge.token_unmerge(x, slot), slot)


@lru_cache(maxsize=64)
def alternating(n: int, prefix: int = 0) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """ToMe's split: even positions are sources (CLS at 0 among them), odd are destinations.

    The first `prefix` positions are always sources, so that `protect=prefix` keeps every prefix
    token (CLS and DeiT's distillation token at 1) out of the merge, as a source and as a destination.
    """
    src = tuple(i for i in range(n) if i < prefix or i % 2 == 0)
    return src, tuple(i for i in range(n) if i >= prefix and i % 2 == 1)


@lru_cache(maxsize=64)
def grid(height: int, width: int, sy: int, sx: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Segformer++'s split: the top-left token of every sy x sx cell is a destination."""
    if height % sy or width % sx:
        raise ValueError(f"a {height}x{width} token grid does not divide into {sy}x{sx} cells")
    dst = tuple(i * width + j for i in range(0, height, sy) for j in range(0, width, sx))
    dst_set = set(dst)
    return tuple(i for i in range(height * width) if i not in dst_set), dst


_replay: list[Tensor] | None = None


@contextmanager
def replay_decisions(slots: Iterable[Tensor]) -> Iterator[None]:
    """Use these slots, in call order, instead of matching (PyTorch only, never exported).

    Lets a check run PyTorch with another backend's merge decisions, so that a flipped near-tie
    (which legitimately merges other tokens) is told apart from a numerical error.
    """
    global _replay
    _replay = list(slots)
    try:
        yield
    except BaseException:  # Ctrl-C, SIGTERM, a failure mid-forward: that one, not "not used"
        _replay = None
        raise
    left, _replay = _replay, None
    if left:
        raise RuntimeError(f"{len(left)} replayed merge decisions were not used")


class MatchEvent(NamedTuple):
    """One merge decision, as observers see it (calibrate, show, validate, the self-check)."""

    kind: str  # "bipartite" | "window" | "cell"
    metric: Tensor  # [B, N, C] what the match ran on
    count: int  # sources (bipartite) or windows (window) asked to merge
    capacity: int  # how many could: unprotected sources, or 2x2 windows
    args: dict  # src, dst, protect | height, width, protect | cell: src, dst (core.grid's), height, width, sy, sx, protect 0
    slot: Tensor | None  # [B, N] the decision used here; None when nothing merges
    own: Tensor | None  # PyTorch's own decision: `slot`, except while replaying another's


class SiteEvent(NamedTuple):
    """One merge site's pass, as the family's merge hook publishes it after reducing its tokens:
    where (module, stage, block, kind, token grid), tokens in and out, and the decision."""

    module: str  # the patched module's name in the model, e.g. 'encoder.stages.0.blocks.1.attn'
    stage: int | None  # 1-based stage of a hierarchical model (Segformer); None for a plain ViT
    block: int  # block index (within the stage, or in the ViT)
    kind: str  # 'kv' | 'queries' | 'pool' | 'ffn' (Segformer) | 'tokens' (ViT: ToMe, DTEM, ALGM)
    grid: tuple[int, int] | None  # the (h, w) token grid of the site's input; ViT: the patch grid
    tokens_in: int
    tokens_out: int
    slot: Tensor | None  # [B, tokens_in] the merged token holding each input token; None: none merged
    source: Tensor | None = None  # ViT: [B, patches + prefix] the token holding each original one, after the site


_observers: list[Callable[[MatchEvent | SiteEvent], None]] = []


@contextmanager
def observe(callback: Callable[[MatchEvent | SiteEvent], None]) -> Iterator[None]:
    """Call `callback` with every MatchEvent (a matching decision) and SiteEvent (a merge site's
    pass) while the block runs (PyTorch only, never exported).

    The one channel into merging: counts, show, calibrate, validate and the self-check subscribe
    here instead of rebinding functions or methods, so they compose and always restore. Callbacks
    take the event types they want (isinstance)."""
    _observers.append(callback)
    try:
        yield
    finally:
        _observers.remove(callback)


@contextmanager
def record_decisions() -> Iterator[list[Tensor]]:
    """Collect PyTorch's own slot at every merge site, in call order, while the block runs."""
    slots: list[Tensor] = []
    with observe(lambda e: isinstance(e, MatchEvent) and e.own is not None and slots.append(e.own)):
        yield slots


def observed() -> bool:
    """Whether anyone listens: hooks build a SiteEvent only then (an export traces none)."""
    return bool(_observers)


def publish(event: SiteEvent) -> None:
    """A merge hook's report of one pass (see SiteEvent)."""
    _notify(event)


@contextmanager
def site_named(label: str) -> Iterator[None]:
    """A grid the site cannot divide (core.grid / window_match's ValueError) named by its site
    ("stage 2 keys/values"), so a refusal says where."""
    try:
        yield
    except ValueError as e:
        raise ValueError(f"{label}: {e}") from None


def _decide(compute: Callable[[], Tensor], n: int) -> tuple[Tensor, Tensor | None]:
    """(the slot to use here, PyTorch's own decision when someone observes it)."""
    if _replay is None:
        slot = compute()
        return slot, slot
    if not _replay:
        raise RuntimeError("more merge sites than replayed decisions")
    slot = _replay.pop(0).to(torch.int32)
    if slot.shape[1] != n:
        raise RuntimeError(f"replayed slot for {slot.shape[1]} tokens at a site with {n}")
    return slot, (compute() if _observers else None)  # what PyTorch would decide given the same history


def _notify(event: MatchEvent | SiteEvent) -> None:
    for callback in list(_observers):
        callback(event)


def bipartite_match(metric: Tensor, r: int, src: tuple[int, ...], dst: tuple[int, ...], protect: int = 0) -> MergeFns:
    """Merge the r sources most similar (cosine) to their best destination (ToMe, Segformer++)."""
    args = {"src": src, "dst": dst, "protect": protect}
    if r <= 0:
        _notify(MatchEvent("bipartite", metric, 0, len(src) - protect, args, None, None))
        return identity()
    slot, own = _decide(lambda: torch.ops.edgemerge.match_bipartite(metric.float(), r, list(src), list(dst), protect),
                        metric.shape[1])
    _notify(MatchEvent("bipartite", metric, int(r), len(src) - protect, args, slot, own))
    return from_slot(slot, metric.shape[1] - r)


def cell_match(metric: Tensor, r: int, height: int, width: int, sy: int, sx: int) -> MergeFns:
    """Merge the r sources most similar to their own cell's anchor (TokenMatchCell): Segformer++'s
    grid matching with each source's candidates cut to its cell's anchor, O(N*C) instead of
    S x D scores. Its event carries `core.grid`'s src/dst, so everything that reads a bipartite
    decision (the judge's destinations, counts, show) reads this one unchanged."""
    src, dst = grid(height, width, sy, sx)
    args = {"src": src, "dst": dst, "protect": 0, "height": height, "width": width, "sy": sy, "sx": sx}
    if r <= 0:
        _notify(MatchEvent("cell", metric, 0, len(src), args, None, None))
        return identity()
    slot, own = _decide(lambda: torch.ops.edgemerge.match_cell(metric.float(), r, height, width, sy, sx),
                        metric.shape[1])
    _notify(MatchEvent("cell", metric, int(r), len(src), args, slot, own))
    return from_cell_slot(slot, metric.shape[1] - r, height, width, sy, sx)


def window_match(metric: Tensor, height: int, width: int, k: int, protect: int = 0) -> MergeFns:
    """Merge the k most uniform 2x2 windows whole, 4 tokens -> 1 (ALGM's local step)."""
    if height % 2 or width % 2:
        raise ValueError(f"a {height}x{width} patch grid is not even (ALGM merges 2x2 windows)")
    args = {"height": height, "width": width, "protect": protect}
    capacity = (height // 2) * (width // 2)
    if k <= 0:
        _notify(MatchEvent("window", metric, 0, capacity, args, None, None))
        return identity()
    slot, own = _decide(lambda: torch.ops.edgemerge.match_window(metric.float(), height, width, k, protect),
                        metric.shape[1])
    _notify(MatchEvent("window", metric, int(k), capacity, args, slot, own))
    return from_slot(slot, metric.shape[1] - 3 * k)


def bipartite_node_max(metric: Tensor, src: tuple[int, ...], dst: tuple[int, ...], protect: int = 0) -> Tensor:
    """Best-match cosine of every source [B, S] (protected ones -inf), for adaptive counts."""
    m = ops._normalize(metric)
    node_max = (m[:, list(src)] @ m[:, list(dst)].transpose(1, 2)).amax(-1)
    node_max[:, :protect] = -torch.inf
    return node_max


def compose_source(source: Tensor | None, slot: Tensor | None) -> Tensor | None:
    """Track, for every original token, which current token holds it: source' = slot[source]."""
    if slot is None:
        return source
    if source is None:
        return slot.long()
    return slot.long().gather(1, source)
