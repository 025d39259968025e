"""The search space, derived from the plan schema (the plan dataclass of the model's family and its
fields' `field_spec(search=...)` metadata), never listed a second time.

A candidate is a variant table in the plan-file schema (what plan.toml holds and `export --plan`
takes); Optuna sees it as categorical parameters, one per searched field (per stage for Segformer's
site tables). Held fields keep the model's shipped value (the first merging variant of
export_configs/MODEL.toml); values the shipped variants use are added to the choices, so that the
shipped variants are points of the space and can seed the search.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any

from edgemerge.merge.plan import load_variants, plan_class
from edgemerge.models.registry import ModelConfig

OFF = "off"


@dataclasses.dataclass
class Space:
    """name -> choices (strings, numbers, booleans), and how a point becomes a table and back."""

    cfg: ModelConfig
    params: dict[str, tuple]
    held: dict[str, Any]  # fields kept at the shipped value
    shipped: dict[str, dict]  # variant name -> its table (the seeds)

    def table(self, point: dict[str, Any]) -> dict[str, Any]:
        """A point (param -> choice) as a plan-file variant table."""
        cls = plan_class(self.cfg.family)
        hints = typing.get_type_hints(cls)
        out: dict[str, Any] = dict(self.held)
        for f in dataclasses.fields(cls):
            kind = typing.get_origin(hints[f.name])
            if kind is dict:  # a site per stage: stages with the same choice share one table
                groups: dict[str, list[int]] = {}
                for s in _stages(self.cfg):
                    choice = point.get(f"{f.name}.{s}", OFF)
                    if choice != OFF:
                        groups.setdefault(choice, []).append(s)
                sites = [{**_site(c), "stages": st} for c, st in groups.items()]
                if sites:
                    out[f.name] = sites[0] if len(sites) == 1 else sites
            elif kind is tuple:
                stages = [s for s in _stages(self.cfg) if point.get(f"{f.name}.{s}")]
                if stages:
                    out[f.name] = {"stages": stages}
            elif f.name in point:
                out[f.name] = point[f.name]
        return out

    def point(self, table: dict[str, Any]) -> dict[str, Any] | None:
        """The point of a table (a shipped variant), None when it lies outside the space (a plan
        the point's table does not reproduce exactly, e.g. a learned metric without one)."""
        from edgemerge.merge.plan import plan_from_table

        defaults = {f.name: f.default for f in dataclasses.fields(plan_class(self.cfg.family))
                    if f.default is not dataclasses.MISSING}
        point = {}
        for name, choices in self.params.items():
            field, _, stage = name.partition(".")
            value = table.get(field)
            if stage:
                s = int(stage)
                if isinstance(value, (dict, list)) and "stages" in (value if isinstance(value, dict) else value[0]):
                    tables = value if isinstance(value, list) else [value]
                    hit = next((t for t in tables if s in t["stages"]), None)
                    if choices and isinstance(choices[0], bool):
                        v = hit is not None
                    else:
                        v = OFF if hit is None else _choice(hit)
                else:
                    v = False if choices and isinstance(choices[0], bool) else OFF
            else:
                v = value if value is not None else self.held.get(field, defaults.get(field, choices[0]))
            if v not in choices:
                return None
            point[name] = v
        same = plan_from_table(self.cfg.name, self.table(point)) == plan_from_table(self.cfg.name, table)
        return point if same else None


def key(table: dict[str, Any]) -> str:
    """One string per plan, whatever its key order: the study's cache key."""
    return json.dumps(table, sort_keys=True)


def build(cfg: ModelConfig, learned_metric: bool = False) -> Space:
    """The model's space: every searched field of its family's plan class."""
    cls = plan_class(cfg.family)
    hints = typing.get_type_hints(cls)
    shipped = {n: v for n, v in load_variants(cfg.name).items()}
    base = next((v for n, v in shipped.items() if n != "none" and v), {})
    params: dict[str, tuple] = {}
    held: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        spec, hint = f.metadata, hints[f.name]
        kind = typing.get_origin(hint)
        if kind is dict:
            site_cls = typing.get_args(hint)[1]
            choices = [OFF, *_site_choices(site_cls, cfg, shipped.values(), f.name)]
            for s in _stages(cfg):
                params[f"{f.name}.{s}"] = tuple(choices)
        elif kind is tuple:
            for s in _stages(cfg):
                params[f"{f.name}.{s}"] = (False, True)
        elif hint is bool:
            params[f.name] = (False, True)
        elif spec.get("search") == "learned":
            if learned_metric:
                params[f.name] = tuple(spec["choices"])
            # else: the default (no learned metric to use)
        elif spec.get("search") is not None:
            values = spec["search"](cfg) if callable(spec["search"]) else spec["search"]
            values = sorted({*values, *(v[f.name] for v in shipped.values() if f.name in v)})
            params[f.name] = tuple(values)
        elif spec.get("toml", None) != "" and f.name in base:
            held[f.name] = base[f.name]
    return Space(cfg, params, held, {n: v for n, v in shipped.items()})


def _stages(cfg: ModelConfig) -> list[int]:
    return list(range(1, len(cfg.depths) + 1))


def _site_choices(site_cls: type, cfg: ModelConfig, shipped, name: str) -> list[str]:
    """'SYxSX@RATIO' for the searched grid and ratio values (square cells) and every shipped site."""
    fields = {f.name: f.metadata.get("search") for f in dataclasses.fields(site_cls)}
    # a cell of g x g tokens has one anchor: at most 1 - 1/g^2 of the tokens can merge into it
    matches = fields.get("match") or ("global",)
    choices = [f"{g}x{g}@{r}" + ("" if m == "global" else f":{m}") for g in fields["sy"] for r in fields["ratio"]
               for m in matches if r <= 1 - 1 / (g * g)]
    for v in shipped:
        tables = v.get(name)
        for t in (tables if isinstance(tables, list) else [tables] if tables else []):
            choices.append(_choice(t))
    return sorted(set(choices), key=lambda c: (int(c.split("x")[0]), float(c.split("@")[1].split(":")[0]), c))


def _choice(site: dict) -> str:
    """'SYxSX@RATIO', with ':cell' for cell-local matching (global is the default)."""
    match = site.get("match", "global")
    return f"{site['grid'][0]}x{site['grid'][1]}@{site['ratio']}" + ("" if match == "global" else f":{match}")


def _site(choice: str) -> dict[str, Any]:
    grid, rest = choice.split("@")
    ratio, _, match = rest.partition(":")
    sy, sx = grid.split("x")
    return {"ratio": float(ratio), "grid": [int(sy), int(sx)], **({"match": match} if match else {})}
