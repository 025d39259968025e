"""Static merge counts, read off the patched model itself.

What the manifest, `edgemerge plan` and the resolution checks report is what the model does at a
resolution: a copy of it is built on the meta device (no weights, no compute), patched with the
plan, and run once; each merge site's tokens in and out are what the site saw. Nothing re-derives
the counts, so plan and model cannot disagree (a DeiT with its distillation token protects two
tokens: the model knows, a formula would have to be told).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from edgemerge.contracts.errors import EdgemergeError
from edgemerge.merge import core
from edgemerge.merge.family import family_for
from edgemerge.merge.patch import apply_merging
from edgemerge.merge.plan import ALGMPlan, MergePlan, NoPlan
from edgemerge.models.registry import ModelConfig, build_from_config, get_config


def resolve(model: str | ModelConfig, plan: MergePlan, resolution: tuple[int, int]) -> dict[str, Any]:
    """Per-stage (Segformer) or per-site (ViT) token counts at one input resolution, from the
    patched model; a resolution the plan cannot take is refused with the nearest ones that work
    (CamVid 360x480 -> 384x512).

    `model`: a zoo name, or the config a built model carries (`model.config`: a checkpoint's DeiT
    with its distillation token differs from the zoo's). An adaptive ALGM plan (PyTorch only)
    counts as its static fractions, which is what an export of it runs."""
    cfg = get_config(model) if isinstance(model, str) else model
    try:
        return _counts(cfg, plan, resolution)
    except EdgemergeError as e:
        near = nearest_resolutions(cfg, plan, resolution)
        if not near:
            raise
        raise EdgemergeError(f"{e}; nearest resolutions that work: " + ", ".join(f"{h}x{w}" for h, w in near)
                             ) from None


def nearest_resolutions(model: str | ModelConfig, plan: MergePlan, resolution: tuple[int, int],
                        search: int = 1024) -> list[tuple[int, int]]:
    """The nearest working HxW at or above the request, then at or below it, in multiples of the
    model's total stride (Segformer: 32) or patch size (each side searched alone: the plans'
    conditions are per dimension)."""
    cfg = get_config(model) if isinstance(model, str) else model
    unit = family_for(cfg.family).unit(cfg)

    def works(h: int, w: int) -> bool:
        try:
            _counts(cfg, plan, (h, w))
            return True
        except EdgemergeError:
            return False

    def side(v: int, step: int) -> int | None:
        start = (-(-v // unit) if step > 0 else v // unit) * unit
        return next((c for c in range(start, start + step * search, step * unit) if c > 0 and works(c, c)), None)

    H, W = resolution
    out: list[tuple[int, int]] = []
    for step in (1, -1):
        h, w = side(H, step), side(W, step)
        if h is not None and w is not None and works(h, w) and (h, w) not in out:
            out.append((h, w))
    return out


def _counts(cfg: ModelConfig, plan: MergePlan, resolution: tuple[int, int]) -> dict[str, Any]:
    H, W = resolution
    if len(cfg.strides) == 1 and (H % cfg.patch_size or W % cfg.patch_size):  # one patch embedding: a ViT
        raise EdgemergeError(f"resolution {H}x{W} is not a multiple of the patch size {cfg.patch_size}")
    if isinstance(plan, ALGMPlan) and plan.mode != "static":
        plan = dataclasses.replace(plan, mode="static")
    family = family_for(cfg.family)
    with torch.device("meta"):
        model = build_from_config(dataclasses.replace(cfg, resolution=(H, W)))
    if isinstance(plan, NoPlan):  # the family's plan with no site: its hooks report the unmerged counts
        plan = family.plan_class() if _all_defaults(family.plan_class) else plan
    apply_merging(model, plan)
    events: list[core.SiteEvent] = []
    with torch.no_grad(), core.observe(lambda e: isinstance(e, core.SiteEvent) and events.append(e)):
        try:
            model(torch.empty(1, 3, H, W, device="meta"))
        except ValueError as e:  # a grid a site cannot divide, named by the site (core.site_named)
            raise EdgemergeError(f"{e}; choose a resolution whose stage grids are multiples of the cell") from None
    return family.counts(model, events)


def _all_defaults(cls: type) -> bool:
    return all(f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
               for f in dataclasses.fields(cls))
