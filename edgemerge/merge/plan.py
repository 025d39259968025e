"""Merge plans: variants as data (`export_configs/<model>.toml`), and the count functions the
patched model calls on static shapes. What a plan does at a resolution is read off the patched
model itself: `edgemerge.merge.counts.resolve`.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from edgemerge.contracts.errors import EdgemergeError


def field_spec(allowed: str, ok: Callable[[Any, Any], bool] | None = None, *, toml: str | None = None,
               choices: tuple[str, ...] = (), search: Any = None) -> dict[str, Any]:
    """A plan field's rule for plan files: `allowed` (said in the error), `ok(value, model config)`,
    `toml`: the key it is read from when that is not the field's name ('' = not a plan-file key),
    `choices`: the allowed strings. `search`: the values `edgemerge tune` tries (a tuple, or
    cfg -> tuple; None: held at the model's shipped value). The schema of export_configs/*.toml and
    tune's search space are derived from these."""
    return {"allowed": allowed, "ok": ok, "toml": toml, "choices": choices, "search": search}


def _stage_ok(v, cfg) -> bool:
    return 1 <= v <= len(cfg.depths)


def _layer_ok(v, cfg) -> bool:
    return 0 <= v < cfg.depths[0]


def _max_r(cfg) -> int:
    """ToMe's r at most: half the patch tokens at the model's resolution (more never merges more)."""
    return (cfg.resolution[0] // cfg.patch_size) * (cfg.resolution[1] // cfg.patch_size) // 2


@dataclass(frozen=True)
class GridSite:
    """Segformer++ merging of one token set: r = int(n * ratio) sources into one dst per cell."""

    ratio: float = field(metadata=field_spec("a number >= 0 and < 1", lambda v, cfg: 0 <= v < 1,
                                             search=(0.5, 0.7, 0.8, 0.9)))
    sy: int = field(metadata=field_spec("[rows, columns] of the cell, each >= 1", lambda v, cfg: v >= 1, toml="grid",
                                        search=(2, 4)))
    sx: int = field(metadata=field_spec("[rows, columns] of the cell, each >= 1", lambda v, cfg: v >= 1, toml="grid",
                                        search=(2, 4)))
    # "global": every source against every anchor (Segformer++, TokenMatchBipartite, S x D scores);
    # "cell": each source against its own cell's anchor only (TokenMatchCell, O(N*C))
    match: str = field(default="global", metadata=field_spec("", choices=("global", "cell"),
                                                             search=("global", "cell")))

    def count(self, n: int) -> int:
        return int(n * self.ratio)


_STAGES = field_spec("stages 1..4 of the model", _stage_ok)  # of a site table: stages = [..]


@dataclass(frozen=True)
class SegformerPlan:
    kv: dict[int, GridSite] = field(default_factory=dict, metadata=_STAGES)  # stage (1-based) -> site
    q: dict[int, GridSite] = field(default_factory=dict, metadata=_STAGES)
    # n2d: stages whose queries are 2x2-average-pooled
    q_pool: tuple[int, ...] = field(default=(), metadata=field_spec("stages 1..4 of the model", _stage_ok,
                                                                    search=(False, True)))
    # MixFFN's fc1 input merged (cosine), restored for the conv
    ffn: dict[int, GridSite] = field(default_factory=dict, metadata=_STAGES)
    proportional: bool = False  # log(size) on merged keys (Segformer++ does not use it)
    # "tokens" (Segformer++: cosine of the tokens) or "learned" (a Linear(C -> C) per site)
    metric: str = field(default="tokens", metadata=field_spec("", choices=("tokens", "learned"), search="learned"))


@dataclass(frozen=True)
class ToMePlan:
    # tokens merged per block (ToMe's constant schedule)
    r: int = field(metadata=field_spec("an integer 0..{max_r} (half the patch tokens at the model's resolution)",
                                       lambda v, cfg: 0 <= v <= _max_r(cfg),
                                       search=lambda cfg: tuple(range(0, min(_max_r(cfg), 32) + 1, 2))))
    # "keys" (ToMe) or "dtem" (a projection on norm1(x): the checkpoint's, else the keys')
    metric: str = field(default="keys", metadata=field_spec("", choices=("keys", "dtem"), search="learned"))
    metric_dim: int = field(default=64, metadata=field_spec("an integer >= 1", lambda v, cfg: v >= 1))
    proportional: bool = True


_LAYER = field_spec("a block index 0..{last_block}", _layer_ok)
_FRACTION = field_spec("a number in [0, 1]", lambda v, cfg: 0 <= v <= 1, search=tuple(i / 10 for i in range(10)))


@dataclass(frozen=True)
class ALGMPlan:
    local_layer: int = field(metadata=_LAYER)  # block index (0-based) after whose attention 2x2 windows merge
    global_layer: int = field(metadata=_LAYER)
    # adaptive local threshold (paper values per model/dataset): a cosine similarity
    threshold: float = field(metadata=field_spec("a cosine similarity in [-1, 1]", lambda v, cfg: -1 <= v <= 1))
    local_fraction: float = field(metadata=_FRACTION)  # static mode: fraction of 2x2 windows merged
    global_fraction: float = field(metadata=_FRACTION)  # static mode: fraction of mergeable sources merged
    # "static" (exportable) or "adaptive" (paper, PyTorch only): chosen by the caller, not the plan file
    mode: str = field(default="static", metadata=field_spec("", choices=("static", "adaptive"), toml=""))
    # global site: "tokens" (ALGM) or "learned" (a Linear(C -> C) on them)
    metric: str = field(default="tokens", metadata=field_spec("", choices=("tokens", "learned"), search="learned"))


@dataclass(frozen=True)
class NoPlan:
    pass


MergePlan = SegformerPlan | ToMePlan | ALGMPlan | NoPlan


def config_dir() -> Path:
    """export_configs/ beside the package (source tree) or installed as package data."""
    here = Path(__file__).resolve().parents[2] / "export_configs"
    if here.is_dir():
        return here
    return Path(__file__).resolve().parents[1] / "export_configs"  # installed wheel


def family_of(model: str) -> str:
    from edgemerge.models.registry import get_config

    return get_config(model).family


def plan_class(family: str) -> type:
    """The plan dataclass of a model family (its adapter's): the schema its tables are checked against."""
    from edgemerge.merge.family import family_for

    return family_for(family).plan_class


def _read_toml(path: Path) -> dict[str, Any]:
    """A plan file parsed, or one line naming the file and what is wrong with it."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise EdgemergeError(f"plan file {path}: TOML syntax error: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise EdgemergeError(f"cannot read plan file {path}: {e}") from None


def load_variants(model: str) -> dict[str, dict[str, Any]]:
    """The variants of export_configs/<model>.toml, each checked against the plan schema (the plan
    dataclasses' fields): any error names the file, the key and what is allowed."""
    path = config_dir() / f"{model}.toml"
    if not path.is_file():
        family_of(model)  # raises the 'unknown model' error first
        raise EdgemergeError(f"no merge config for {model} ({path} is missing)")
    doc = _read_toml(path)
    return check_plan_file(path, model, doc)


def _did_you_mean(key: str, allowed: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(key, allowed, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_plan_file(path: Path, model: str, doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """`doc` (a parsed plan file) checked against the schema; returns its variants."""
    from edgemerge.models.registry import get_config

    cfg = get_config(model)
    where = f"plan file {path}"
    unknown = [k for k in doc if k not in ("model", "variants")]
    if unknown:
        raise EdgemergeError(f"{where}: unknown top-level key {unknown[0]!r}; allowed: model, variants"
                             + _did_you_mean(unknown[0], ["model", "variants"]))
    if "model" in doc and doc["model"] != model:
        raise EdgemergeError(f"{where}: model = {doc['model']!r}, but the file is {model}'s (allowed: {model!r})")
    variants = doc.get("variants", {})
    if not isinstance(variants, dict) or not all(isinstance(v, dict) for v in variants.values()):
        raise EdgemergeError(f"{where}: variants must be tables ([variants.NAME])")
    cls = plan_class(cfg.family)
    for name, v in variants.items():
        if name == "none":
            if v:
                raise EdgemergeError(f"{where}: [variants.none] is the unmerged model and takes no keys "
                                     f"(got {', '.join(v)})")
            continue
        _check_fields(cls, v, f"{where}: variants.{name}", cfg)
    return variants


def _toml_key(f) -> str:
    t = f.metadata.get("toml")
    return f.name if t is None else t


def _describe(f, cfg) -> str:
    spec = f.metadata
    if spec.get("choices"):
        return "one of " + ", ".join(repr(c) for c in spec["choices"])
    return spec.get("allowed", "").format(max_r=_max_r(cfg), last_block=cfg.depths[0] - 1)


def _check_fields(cls: type, table: dict[str, Any], where: str, cfg, extra_keys: tuple[str, ...] = ()) -> None:
    """Every key of `table` a plan-file key of `cls` (or one of `extra_keys`), every field without a
    default given, every value of its field's type and within its rule."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if _toml_key(f)]
    by_key: dict[str, list] = {}
    for f in fields:
        by_key.setdefault(_toml_key(f), []).append(f)
    allowed = [*by_key, *extra_keys]
    for key in table:
        if key not in allowed:
            raise EdgemergeError(f"{where}: unknown key {key!r}{_did_you_mean(key, allowed)}; allowed: "
                                 f"{', '.join(allowed)}")
    for key, fs in by_key.items():
        f = fs[0]
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if key not in table:
            if required:
                raise EdgemergeError(f"{where}: missing key {key!r} ({_describe(f, cfg)})")
            continue
        value = table[key]
        if len(fs) > 1:  # several fields from one key: grid = [sy, sx]
            if not (isinstance(value, list) and len(value) == len(fs)):
                raise EdgemergeError(f"{where}.{key} = {value!r}: allowed: {_describe(f, cfg)}")
            for item, fi in zip(value, fs):
                _check_value(item, hints[fi.name], fi, f"{where}.{key}", value, cfg)
        else:
            _check_value(value, hints[f.name], f, f"{where}.{key}", value, cfg)


def _check_value(value: Any, typ: Any, f, where: str, shown: Any, cfg) -> None:
    import typing

    def bad(why: str = "") -> EdgemergeError:
        return EdgemergeError(f"{where} = {shown!r}{why}: allowed: {_describe(f, cfg)}")

    origin = typing.get_origin(typ)
    if origin is dict:  # a site table { <the site's keys>, stages = [..] }, or a list of them (per stage)
        site_cls = typing.get_args(typ)[1]
        tables = value if isinstance(value, list) else [value]
        if not tables or not all(isinstance(v, dict) for v in tables):
            raise EdgemergeError(f"{where} must be a table {{ {', '.join(_site_keys(site_cls))} }} "
                                 "or a list of them with distinct stages")
        seen: set = set()
        for i, table in enumerate(tables):
            at = f"{where}[{i}]" if isinstance(value, list) else where
            _check_fields(site_cls, table, at, cfg, extra_keys=("stages",))
            _check_stages(table.get("stages"), f, f"{at}.stages", cfg, required=True)
            twice = seen & set(table["stages"])
            if twice:
                raise EdgemergeError(f"{at}.stages: stage {min(twice)} has a site already in {where}")
            seen |= set(table["stages"])
        return
    if origin is tuple:  # stages only: { stages = [..] }
        if not isinstance(value, dict) or set(value) != {"stages"}:
            raise EdgemergeError(f"{where} must be a table {{ stages = [..] }} (got {shown!r})")
        _check_stages(value["stages"], f, f"{where}.stages", cfg, required=True)
        return
    if typ is bool:
        if not isinstance(value, bool):
            raise EdgemergeError(f"{where} = {shown!r}: allowed: true or false")
        return
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad(" (not an integer)")
    elif typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad(" (not a number)")
    elif typ is str:
        if not isinstance(value, str) or value not in f.metadata.get("choices", (value,)):
            raise bad()
        return
    ok = f.metadata.get("ok")
    if ok is not None and not ok(value, cfg):
        raise bad()


def _site_keys(site_cls: type) -> list[str]:
    import dataclasses

    return list(dict.fromkeys(_toml_key(f) for f in dataclasses.fields(site_cls) if _toml_key(f))) + ["stages"]


def _check_stages(stages: Any, f, where: str, cfg, required: bool) -> None:
    n = len(cfg.depths)
    allowed = f"a non-empty list of distinct stages 1..{n} of {cfg.name}"
    if stages is None:
        if required:
            raise EdgemergeError(f"{where.rsplit('.', 1)[0]}: missing key 'stages' ({allowed})")
        return
    if (not isinstance(stages, list) or not stages or len(set(map(repr, stages))) != len(stages)
            or not all(isinstance(s, int) and not isinstance(s, bool) and f.metadata["ok"](s, cfg) for s in stages)):
        raise EdgemergeError(f"{where} = {stages!r}: allowed: {allowed}")


def grid_sites(d: dict[str, Any] | list[dict[str, Any]]) -> dict[int, GridSite]:
    """A site table (every stage alike) or a list of them (a site per group of stages)."""
    return {int(s): GridSite(float(t["ratio"]), int(t["grid"][0]), int(t["grid"][1]), str(t.get("match", "global")))
            for t in (d if isinstance(d, list) else [d]) for s in t.get("stages", [])}


def get_plan(model: str, variant: str, *, calibration: dict[str, Any] | None = None,
             mode: str | None = None) -> MergePlan:
    """The variant's spec for `model`; `calibration` (from `edgemerge calibrate`) overrides ALGM's fractions."""
    variants = load_variants(model)
    if variant not in variants:
        raise EdgemergeError(f"unknown variant '{variant}' for {model}; known: {', '.join(variants)}")
    return plan_from_table(model, variants[variant], calibration=calibration, mode=mode, checked=True)


def plan_from_table(model: str, v: dict[str, Any], *, calibration: dict[str, Any] | None = None,
                    mode: str | None = None, checked: bool = False, where: str = "plan") -> MergePlan:
    """The plan of one variant table in the plan-file schema (`{}`: no merging), checked against
    the schema unless it was (a table from `load_variants` or `read_plan_file`). What `tune` builds
    its candidates as and a user's plan file holds: the same keys as export_configs/*.toml."""
    from edgemerge.merge.family import family_for

    family = family_of(model)
    if calibration is not None:
        check_calibration(model, family, calibration)
    if not v:
        return NoPlan()
    adapter = family_for(family)
    if not checked:
        from edgemerge.models.registry import get_config

        _check_fields(adapter.plan_class, v, where, get_config(model))
    return adapter.plan(v, calibration, mode)


PLAN_FILE_EXTRA = ("tune",)  # tables a user's plan file may add: what made it (not read by export)


def read_plan_file(path: str | Path, model: str | None = None) -> tuple[str, str, dict[str, Any], dict[str, Any]]:
    """A user's plan file (`edgemerge export --plan`, `tune`'s plan.toml): export_configs' schema
    with `model`, exactly one `[variants.NAME]` and an optional `[tune]` record. Returns (model,
    variant name, its table, the file's other tables); checked like export_configs, the file, the
    key and the allowed values named in every refusal."""
    path = Path(path)
    if not path.is_file():
        raise EdgemergeError(f"plan file {path} not found" if not path.exists() else
                             f"plan file {path} is not a regular file")
    doc = _read_toml(path)
    named = doc.get("model")
    if not isinstance(named, str):
        raise EdgemergeError(f"plan file {path}: missing key 'model' (the zoo name it is for, e.g. \"segformer-b0\")")
    if model is not None and named != model:
        raise EdgemergeError(f"plan file {path} is for {named}, not {model}: drop --model or use a plan made for it")
    extra = {k: doc.pop(k) for k in PLAN_FILE_EXTRA if k in doc}
    variants = check_plan_file(path, named, doc)
    if len(variants) != 1:
        raise EdgemergeError(f"plan file {path}: holds {len(variants)} variants ({', '.join(variants) or 'none'}); "
                             "a plan file holds exactly one [variants.NAME]")
    (name, table), = variants.items()
    return named, name, table, extra


def check_calibration(model: str, family: str, calibration: dict[str, Any]) -> None:
    """A calibration is for one model's ALGM sites: refuse it for another model or family, and one
    without both fractions (which would silently mean the defaults)."""
    from edgemerge.merge.family import family_for

    if not family_for(family).takes_calibration:
        raise EdgemergeError(f"a calibration sets ALGM's counts, which only segmenter-* models use; {model} is a "
                             f"{family} model: drop --calibration")
    made_for = calibration.get("model") if isinstance(calibration, dict) else None
    if made_for is not None and made_for != model:
        raise EdgemergeError(f"the calibration was made for {made_for}, not {model}: run `edgemerge calibrate "
                             f"--model {model}`")
    for key in ("local_fraction", "global_fraction"):
        v = calibration.get(key) if isinstance(calibration, dict) else None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
            raise EdgemergeError(f"the calibration has no {key} in [0, 1] (got {v!r}): use a file written by "
                                 "`edgemerge calibrate`")


def load_calibration(path: str | Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise EdgemergeError(f"cannot read calibration file {path}: {e}") from None


# --- static counts -------------------------------------------------------------------------

def tome_count(r: int, n: int, protect: int) -> int:
    """ToMe's clamp: at most half of the unprotected tokens can merge in one step."""
    return max(0, min(r, (n - protect) // 2))


def _fraction_of(fraction: float, n: int) -> int:
    """floor(fraction * n), robust to the representation error of calibrated fractions (1/49*49 < 1)."""
    return int(fraction * n + 1e-9)


def algm_local_count(fraction: float, grid_hw: tuple[int, int]) -> int:
    return _fraction_of(fraction, (grid_hw[0] // 2) * (grid_hw[1] // 2))


def algm_global_count(fraction: float, n: int, protect: int) -> int:
    n_src = (n + 1) // 2
    return _fraction_of(fraction, n_src - protect)


def plan_dict(plan: MergePlan) -> dict[str, Any]:
    """The plan as the manifest records it. A grid site's `match` is written only when it is not
    "global", so every bundle made before cell matching existed keeps its exact bytes
    (benchmarks/same_exports.sh)."""
    d = asdict(plan) if not isinstance(plan, NoPlan) else {}
    for sites in d.values():
        if isinstance(sites, dict):
            for site in sites.values():
                if isinstance(site, dict) and site.get("match") == "global":
                    del site["match"]
    d["method"] = type(plan).__name__.removesuffix("Plan").lower()
    return json.loads(json.dumps(d, default=str))
