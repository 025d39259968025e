"""What is particular to a model family, in one place per family: the family adapter.

Everything else (plan files, counts, FLOPs, the reference, export, validate, show, train-metric,
tune) is written once over these fields. A new family is one module that builds a `Family` and
calls `register` (docs/extending.md); no other file changes. The built-in adapters live in
`edgemerge.merge.families` and are registered on the first lookup.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from torch import Tensor, nn

from edgemerge.contracts.errors import EdgemergeError


@dataclass
class SoftModel:
    """A plan's trainable metrics, its soft-merged (differentiable) forward and the metrics under
    the checkpoint keys export reads (what `edgemerge train-metric` trains and saves)."""

    params: nn.Module
    forward: Callable[[Tensor, Any], Tensor]  # (images, SoftStats | None) -> logits
    state: Callable[[], dict[str, Tensor]]


@dataclass(frozen=True)
class Family:
    """A model family's merging, as the rest of the package asks for it.

    names: the `ModelConfig.family` values served ("vit", "deit").
    plan_class: the plan dataclass its plan-file tables are checked against (its fields' metadata
        is the schema; `tune` derives its search space from it too).
    plan: (table, calibration, mode) -> plan; the table is checked already.
    patch: (model, plan, learned-metric state) -> None: swap in the merging modules, whose hooks
        publish a `core.SiteEvent` per pass (counts, show, calibrate and validate subscribe).
    counts: (model, its SiteEvents of one forward) -> the static counts manifest.json and
        `edgemerge plan` report.
    unit: model config -> the step its resolutions come in (Segformer: 32, a ViT: the patch size).
    learned_metric_keys: (config, plan) -> the checkpoint keys of the learned metrics the plan reads.
    soft: (model, plan, learned-metric state, TrainOptions) -> SoftModel, or None (no training).
    train_variant: the learned-metric variant `edgemerge train-metric` trains by default.
    task: "segment" (dense logits [B, K, h, w]) or "classify" ([B, K]).
    takes_calibration: whether `edgemerge calibrate` makes static counts for it (ALGM).
    """

    names: tuple[str, ...]
    plan_class: type
    plan: Callable[[dict[str, Any], dict | None, str | None], Any]
    patch: Callable[[nn.Module, Any, dict | None], None]
    counts: Callable[[nn.Module, list], dict[str, Any]]
    unit: Callable[[Any], int]
    learned_metric_keys: Callable[[Any, Any], list[str]]
    soft: Callable[..., SoftModel] | None = None
    train_variant: str | None = None
    task: str = "segment"
    takes_calibration: bool = False


_FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Make `family` the adapter of its `names` (a later registration of a name replaces it)."""
    for name in family.names:
        _FAMILIES[name] = family
    return family


def family_for(name: str) -> Family:
    """The adapter of a `ModelConfig.family`."""
    import edgemerge.merge.families  # noqa: F401  (registers the built-in adapters on first use)

    try:
        return _FAMILIES[name]
    except KeyError:
        raise EdgemergeError(f"no merging for model family {name!r}; known: {', '.join(sorted(_FAMILIES))}") from None


def family_of_plan(plan: Any) -> Family:
    """The adapter whose plan class `plan` is (for a model that does not say its family)."""
    import edgemerge.merge.families  # noqa: F401

    for family in _FAMILIES.values():
        if isinstance(plan, family.plan_class):
            return family
    raise EdgemergeError(f"unsupported plan {plan!r}")
