"""ViT/DeiT (ToMe, DTEM): r tokens merged per block between attention and MLP, on the keys or on a
learned metric fused into the qkv GEMM; the merging block ALGM's sites use too; the soft forward.

Every merging block publishes a `core.SiteEvent` (block, grid, tokens in/out, slot, source).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from edgemerge.contracts.errors import EdgemergeError
from edgemerge.merge import core, soft
from edgemerge.merge.family import Family, SoftModel, register
from edgemerge.merge.patch import MergingBlock, ToMeSite, _swap, fuse_metric
from edgemerge.merge.plan import ToMePlan, tome_count
from edgemerge.merge.soft import SIZE_FLOOR, SoftStats
from edgemerge.models.vit import VisionTransformer


@torch.no_grad()
def keys_projection(attn: nn.Module, dim: int) -> nn.Linear:
    """Linear(C -> dim) on the block's normed input that gives ToMe's metric (head-averaged keys).

    Rows past the head size are zero, which changes no cosine, so a DTEM metric initialised here
    merges exactly what ToMe merges: training the metric can only start from the published
    behaviour. A DTEM plan without a learned metric uses it too (its graph has the metric GEMM).
    """
    qkv: nn.Linear = attn.qkv
    C, h = qkv.in_features, attn.num_heads
    d = C // h
    if dim < d:
        raise EdgemergeError(f"metric_dim {dim} is below the head size {d}: the keys' metric does not fit")
    w_k = qkv.weight[C: 2 * C].reshape(h, d, C).mean(0)  # [d, C]
    b_k = qkv.bias[C: 2 * C].reshape(h, d).mean(0) if qkv.bias is not None else qkv.weight.new_zeros(d)
    proj = nn.Linear(C, dim).to(qkv.weight.device, qkv.weight.dtype)
    proj.weight.zero_()
    proj.bias.zero_()
    proj.weight[:d] = w_k
    proj.bias[:d] = b_k
    return proj


def _vit_of(model: nn.Module) -> VisionTransformer:
    if isinstance(model, VisionTransformer):
        return model
    for m in model.modules():
        if isinstance(m, VisionTransformer):
            return m
    raise EdgemergeError(f"{type(model).__name__} has no ViT backbone to merge")


# ---- soft (trainable) forward ---------------------------------------------------------------------

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


def _metrics_from(model, plan, merge_state: dict[str, Tensor]) -> nn.ModuleList:
    """One projection per block: the checkpoint's learned one if it has it, else the keys'."""
    out = []
    for i, blk in enumerate(model.blocks):
        key = f"blocks.{i}.dtem_metric."
        if key + "weight" in merge_state:
            w = merge_state[key + "weight"]
            proj = nn.Linear(w.shape[1], w.shape[0])
            proj.load_state_dict({"weight": w, "bias": merge_state[key + "bias"]})
        else:
            proj = keys_projection(blk.attn, plan.metric_dim)
        out.append(proj.float())
    return nn.ModuleList(out)


def metric_state(metrics: nn.ModuleList) -> dict[str, Tensor]:
    """The metric tensors under the keys a checkpoint carries them (blocks.{i}.dtem_metric.*)."""
    return {f"blocks.{i}.dtem_metric.{k}": v.detach().clone() for i, m in enumerate(metrics)
            for k, v in m.state_dict().items()}


# ---- the adapter ------------------------------------------------------------------------------------

def swap_block(model: nn.Module, vit: VisionTransformer, i: int, site) -> MergingBlock:
    """Block i of `vit` made a MergingBlock with `site` (ToMe, ALGM), named for its SiteEvents."""
    blk = vit.blocks[i]
    name = next(n for n, m in model.named_modules() if m is blk)
    _swap(blk, MergingBlock, em_site=site, em_name=name, em_block=i, em_grid=tuple(vit.grid_size))
    return blk


def plan_of(v: dict, calibration: dict | None = None, mode: str | None = None) -> ToMePlan:
    return ToMePlan(r=int(v["r"]), metric=v.get("metric", "keys"), metric_dim=int(v.get("metric_dim", 64)),
                    proportional=bool(v.get("proportional", True)))


def patch(model: nn.Module, plan: ToMePlan, state: dict[str, Tensor] | None) -> None:
    vit = _vit_of(model)
    protect = vit.num_prefix_tokens
    for i in range(len(vit.blocks)):
        blk = swap_block(model, vit, i, ToMeSite(plan.r, protect, plan.proportional))
        key = f"blocks.{i}.dtem_metric."
        if plan.metric != "dtem":
            continue
        if state and key + "weight" in state:
            w = state[key + "weight"]
            proj = nn.Linear(w.shape[1], w.shape[0]).to(w.device, w.dtype)
            proj.load_state_dict({"weight": w, "bias": state[key + "bias"]})
        else:
            proj = keys_projection(blk.attn, plan.metric_dim)
        fuse_metric(blk.attn, proj)


def vit_counts(model: nn.Module, events: list[core.SiteEvent]) -> dict:
    """The merging blocks (tokens in and kept), and the tokens into and out of the encoder."""
    vit = _vit_of(model)
    n_in = vit.grid_size[0] * vit.grid_size[1] + vit.num_prefix_tokens
    sites = [{"block": e.block, "tokens_in": e.tokens_in, "tokens_kept": e.tokens_out}
             for e in events if e.tokens_in != e.tokens_out]
    return {"sites": sites, "tokens_out": events[-1].tokens_out if events else n_in, "tokens_in": n_in}


def learned_metric_keys(cfg, plan: ToMePlan) -> list[str]:
    return [f"blocks.{i}.dtem_metric.weight" for i in range(cfg.depths[0])] if plan.metric == "dtem" else []


def soft_model(model: nn.Module, plan: ToMePlan, merge_state: dict[str, Tensor], opts) -> SoftModel:
    metrics = _metrics_from(model, plan, merge_state)
    return SoftModel(metrics,
                     lambda images, stats: soft_vit_forward(model, metrics, images, plan.r, top_k=opts.top_k,
                                                            tau_score=opts.tau_score, tau_pick=opts.tau_pick,
                                                            stats=stats),
                     lambda: metric_state(metrics))


FAMILY = register(Family(
    names=("vit", "deit"), plan_class=ToMePlan, plan=plan_of, patch=patch, counts=vit_counts,
    unit=lambda cfg: cfg.patch_size, learned_metric_keys=learned_metric_keys, soft=soft_model,
    train_variant="dtem", task="classify"))
