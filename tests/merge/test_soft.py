"""The soft merge relaxes the hard one: at low temperature it decides and merges what the hard
ToMe op does; at any temperature it conserves size and sends gradients only to the metric."""

from __future__ import annotations

import pytest
import torch

from edgemerge.merge import core, ops, soft

N, C, F, R = 33, 8, 16, 7  # CLS + 32 tokens: 17 sources (CLS protected), 16 destinations


def _tie_free(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, metric) whose hard decisions have margins far above the temperatures tested."""
    src, dst = core.alternating(N, 1)
    for s in range(seed, seed + 1000):
        g = torch.Generator().manual_seed(s)
        metric = torch.randn(2, N, F, generator=g)
        m = ops._normalize(metric)
        scores = (m[:, list(src)] @ m[:, list(dst)].transpose(1, 2))[:, 1:]
        best = scores.topk(2, dim=-1).values
        node_max = best[..., 0].sort(dim=-1, descending=True).values
        if (best[..., 0] - best[..., 1]).min() > 3e-3 and (node_max[:, :-1] - node_max[:, 1:]).min() > 3e-3:
            return torch.randn(2, N, C, generator=g), metric
    raise AssertionError("no tie-free draw")


@pytest.mark.parametrize("seed", [0, 100])
def test_low_temperature_is_the_hard_op(seed):
    x, metric = _tie_free(seed)
    src, dst = core.alternating(N, 1)
    hard_slot = ops.match_bipartite_ref(metric, R, src, dst, protect=1)
    hard_x, hard_size = ops.token_merge_ref(x, torch.ones(2, N, 1), hard_slot, N - R)
    gaps = []
    for tau in (0.1, 0.01, 0.001):
        assign = soft.soft_bipartite(metric, R, src, dst, protect=1, tau_pick=tau)
        to = hard_slot[:, list(src)].long() - (len(src) - R)  # destination index of a merged source
        merged = to >= 0
        onehot = torch.nn.functional.one_hot(to.clamp_min(0), len(dst)).float() * merged[..., None]
        gaps.append(float((assign - onehot).abs().max()))
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 1e-3, gaps  # tends to the hard assignment
    assert torch.equal(soft.hard_slots(assign, src, dst, N), hard_slot)  # same slots
    soft_x, soft_size = soft.soft_merge(x, torch.ones(2, N), assign, src, dst)
    for b in range(2):
        for t in range(N):
            j = int(hard_slot[b, t])
            is_merged_src = t in src and bool(merged[b, src.index(t)])
            if is_merged_src:
                assert soft_size[b, t] < 1e-3
            else:  # every token the hard op keeps is where the soft op leaves it, same value and size
                torch.testing.assert_close(soft_x[b, t], hard_x[b, j], atol=2e-3, rtol=0)
                assert abs(float(soft_size[b, t] - hard_size[b, j, 0])) < 1e-3


def test_size_is_conserved_and_mass_bounded():
    g = torch.Generator().manual_seed(5)
    metric, x = torch.randn(3, N, F, generator=g), torch.randn(3, N, C, generator=g)
    size = torch.rand(3, N, generator=g) * 3 + 0.5
    src, dst = core.alternating(N, 1)
    assign = soft.soft_bipartite(metric, R, src, dst, protect=1)
    mass = assign.sum(-1)
    assert bool((mass <= 1 + 1e-5).all()) and bool((mass[:, 0] == 0).all())  # CLS protected
    assert float(assign.sum((-1, -2)).max()) <= R + 1e-4  # r picks of mass 1, less what the cap cut
    _, new_size = soft.soft_merge(x, size, assign, src, dst)
    torch.testing.assert_close(new_size.sum(-1), size.sum(-1), rtol=1e-5, atol=1e-4)
    assert bool((new_size >= 0).all())


def test_only_the_metric_receives_gradients():
    torch.manual_seed(0)
    backbone = torch.nn.Linear(C, C).requires_grad_(False)  # frozen
    metric_layer = torch.nn.Linear(C, F)
    head = torch.nn.Linear(C, 1).requires_grad_(False)
    tokens = torch.randn(2, N, C)
    x = backbone(tokens)
    src, dst = core.alternating(N, 1)
    assign = soft.soft_bipartite(metric_layer(x.detach()), R, src, dst, protect=1)
    merged, size = soft.soft_merge(x, torch.ones(2, N), assign, src, dst)
    attn = torch.softmax(merged @ merged.transpose(1, 2) + size.clamp_min(1e-6).log()[:, None], dim=-1)
    (head(attn @ merged) ** 2).mean().backward()
    for p in metric_layer.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    assert all(p.grad is None for m in (backbone, head) for p in m.parameters())


def test_zero_count_is_the_identity():
    x, metric = _tie_free(0)
    src, dst = core.alternating(N, 1)
    assign = soft.soft_bipartite(metric, 0, src, dst, protect=1)
    out, size = soft.soft_merge(x, torch.ones(2, N), assign, src, dst)
    assert torch.equal(out, x) and torch.equal(size, torch.ones(2, N))


def test_soft_grid_tends_to_the_hard_grid_op():
    """Segformer++'s relaxation: at low tau the same slots as the hard op on a grid split, and the
    soft unmerge gives every token its hard slot's value."""
    g = torch.Generator().manual_seed(7)
    src, dst = core.grid(8, 8, 2, 2)
    r = int(len(src) * 0.6)
    metric = torch.randn(2, 64, F, generator=g)
    hard = ops.match_bipartite_ref(metric, r, src, dst)
    gaps = []
    for tau in (1e-2, 1e-4, 1e-6):
        assign = soft.soft_grid(metric, r, src, dst, tau=tau)
        gaps.append(float((assign.sum(-1) - (hard[:, list(src)] >= len(src) - r).float()).abs().max()))
    assert gaps[-1] < 1e-3 and gaps[0] > gaps[-1], gaps
    assert torch.equal(soft.hard_slots(assign, src, dst, 64), hard)
    x = torch.randn(2, 64, C, generator=g)
    hard_x, _ = ops.token_merge_ref(x, torch.ones(2, 64, 1), hard, 64 - r)
    soft_x, _ = soft.soft_merge(x, torch.ones(2, 64), assign, src, dst)
    torch.testing.assert_close(soft.soft_unmerge(soft_x, assign, src, dst),
                               ops.token_unmerge_ref(hard_x, hard), atol=1e-3, rtol=0)
