"""The one comparison of an artifact's outputs with PyTorch's: figures, limits, the verdict.

The export's self-check (ONNX Runtime against PyTorch, in the exporting process) and `validate`
(an ONNX file or an engine, on any runtime, against PyTorch or its stored outputs) both call
`compare`; their limits sit side by side in `LIMITS`. Numpy only.

Argmax agreement is judged fairly: a pixel whose reference top-2 margin is below the near-tie
bound (twice the measured max abs error, capped at the precision's `NEAR_TIE_CAP` times the
logits' range) can flip with rounding alone, on any correct runtime. Such pixels are counted and
reported (how many, how many flipped, their largest margin) and left out of `argmax_agreement`;
every other pixel must agree. The cap keeps a broken artifact (a changed weight, a merge lowered
as an overwrite) from excusing itself with its own large error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# (profile, precision) -> {metric: (op, limit)}. "self-check": ONNX Runtime on this CPU against
# PyTorch replaying its merge decisions: strict. "artifact": any runtime (other CPUs, TensorRT)
# against PyTorch replaying the artifact's decisions. "unreplayed": an artifact whose decisions
# cannot be read (an engine, the stored reference): a near-tie flipped at one site changes every
# later token, so only argmax and cosine are judged there, and the report says the decisions were
# not checked. fp16 bounds: rel_l2 (||got - ref|| / ||ref||: a scale of 1.01 is 0.01) and the max
# error relative to the range, at levels every zoo family's fp16 export meets at its defaults,
# three seeds, with room (benchmarks/validator_bounds.py; benchmarks/README.md).
LIMITS: dict[tuple[str, str], dict[str, tuple[str, float]]] = {
    ("self-check", "fp32"): {"max_abs_rel_range": ("<=", 1e-4), "argmax_agreement": (">=", 1.0)},
    ("self-check", "fp16"): {"argmax_agreement": (">=", 0.995), "rel_l2": ("<=", 4e-3),
                             "max_abs_rel_range": ("<=", 4e-3), "cosine": (">=", 0.9999)},
    ("artifact", "fp32"): {"argmax_agreement": (">=", 0.999), "max_abs_rel_range": ("<=", 1e-3)},
    ("artifact", "fp16"): {"argmax_agreement": (">=", 0.99), "cosine": (">=", 0.9999), "rel_l2": ("<=", 5e-3),
                           "max_abs_rel_range": ("<=", 5e-3)},
    ("unreplayed", "fp32"): {"argmax_agreement": (">=", 0.999), "max_abs_rel_range": ("<=", 1e-3)},
    ("unreplayed", "fp16"): {"argmax_agreement": (">=", 0.99), "cosine": (">=", 0.999)},
}
PROFILES = ("self-check", "artifact", "unreplayed")
NEAR_TIE_FACTOR = 2.0  # a pixel is a near-tie when its margin <= this x the max abs error ...
NEAR_TIE_CAP = {"fp32": 1e-4, "fp16": 1e-2}  # ... and never above this x the range
REL_FLOOR = 1e-3  # relative errors divide by max(|ref|, REL_FLOOR * range of ref)


def limits_for(profile: str, precision: str, *, atol: float | None = None, rtol: float | None = None,
               min_agreement: float | None = None) -> dict[str, tuple[str, float]]:
    """The limits of `profile` at `precision`, with a user's overrides: --atol bounds `max_abs`
    (logit units), --rtol bounds `max_abs_rel_range` (max abs error / the reference logits' range,
    not polygraphy's per-element rtol), --min-agreement bounds `argmax_agreement`."""
    limits = dict(LIMITS[(profile, precision if precision in ("fp32", "fp16") else "fp32")])
    if atol is not None:
        limits["max_abs"] = ("<=", float(atol))
    if rtol is not None:
        limits["max_abs_rel_range"] = ("<=", float(rtol))
    if min_agreement is not None:
        limits["argmax_agreement"] = (">=", float(min_agreement))
    return limits


def bad_limit(*, atol: float | None = None, rtol: float | None = None,
              min_agreement: float | None = None) -> str | None:
    """Why user limits can be met by no comparison or mean nothing; None when they are fine."""
    for name, v in (("--atol", atol), ("--rtol", rtol)):
        if v is not None and not (math.isfinite(v) and v >= 0):
            return f"{name} must be a finite number >= 0, got {v:g}"
    if min_agreement is not None and not 0.0 <= min_agreement <= 1.0:
        return f"--min-agreement is a fraction of pixels within [0, 1] (0.99 = 99%), got {min_agreement:g}"
    return None


def _top2_margin(ref: np.ndarray) -> np.ndarray:
    """Per pixel (or image): best minus second-best class score along axis 1."""
    part = np.partition(ref, -2, axis=1)
    return part[:, -1] - part[:, -2]


def metrics(got: np.ndarray, ref: np.ndarray, precision: str = "fp32") -> dict:
    """Error figures of one output over all inputs (`got`/`ref` stacked over the batch axis);
    argmax figures for class scores on axis 1 ([B, K] or [B, K, H, W]), near-ties told apart."""
    got = got.astype(np.float64)
    ref = ref.astype(np.float64)
    span = float(ref.max() - ref.min()) or 1.0
    err = np.abs(got - ref)
    finite = bool(np.isfinite(got).all())
    rel = err / np.maximum(np.abs(ref), REL_FLOOR * span)
    g = got.reshape(len(got), -1)
    r = ref.reshape(len(ref), -1)
    cos = float("nan")
    if finite:
        cos = float(((g * r).sum(1) / np.maximum(np.linalg.norm(g, axis=1) * np.linalg.norm(r, axis=1), 1e-30)).min())
    max_abs = float(err.max()) if finite else float("inf")
    out: dict = {
        "max_abs": max_abs, "mean_abs": float(err.mean()),
        "max_rel": float(rel.max()) if finite else float("inf"), "mean_rel": float(rel.mean()),
        "range": span, "max_abs_rel_range": max_abs / span,
        "rel_l2": float(np.linalg.norm(err) / max(np.linalg.norm(ref), 1e-30)) if finite else float("inf"),
        "cosine": cos, "finite": finite,
        "argmax_agreement": None, "argmax_agreement_all": None, "near_ties": None, "miou_vs_reference": None,
    }
    if got.ndim >= 2 and got.shape[1] > 1:  # axis 1 holds class scores: [B, K] or [B, K, H, W]
        pg, pr = got.argmax(1), ref.argmax(1)
        same = pg == pr
        bound = min(NEAR_TIE_FACTOR * max_abs, NEAR_TIE_CAP.get(precision, NEAR_TIE_CAP["fp32"]) * span)
        margin = _top2_margin(ref)
        tie = margin <= bound
        decidable = int((~tie).sum())
        flipped = tie & ~same
        out["argmax_agreement"] = float(same[~tie].mean()) if decidable else 1.0
        out["argmax_agreement_all"] = float(same.mean())
        out["near_ties"] = {"bound": bound, "pixels": int(tie.sum()), "flipped": int(flipped.sum()),
                            "largest_flipped_margin": float(margin[flipped].max()) if flipped.any() else None,
                            "decidable": decidable, "decidable_disagree": int((~tie & ~same).sum())}
        if got.ndim == 4:
            out["miou_vs_reference"] = miou(confusion(pg, pr, got.shape[1]))
    return out


def confusion(pred: np.ndarray, target: np.ndarray, num_classes: int) -> np.ndarray:
    """[K, K] counts (rows: target, cols: pred); target values outside 0..K-1 (255) are ignored."""
    t = target.reshape(-1).astype(np.int64)
    p = pred.reshape(-1).astype(np.int64)
    keep = (t >= 0) & (t < num_classes) & (p >= 0) & (p < num_classes)
    return np.bincount(t[keep] * num_classes + p[keep], minlength=num_classes ** 2).reshape(num_classes, num_classes)


def miou(conf: np.ndarray) -> float | None:
    """Mean IoU over classes with a non-empty union (mmseg's nanmean); None when nothing counted."""
    inter = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - inter
    valid = union > 0
    if not valid.any():
        return None
    return float((inter[valid] / union[valid]).mean())


# Merge decisions. A token's fate is the group it merged into, named by an input position (the
# destination token for bipartite, the window's first token): slot numbers are a layout, and one
# near-tie that swaps which source merges renumbers every later kept token. Only tokens that merge
# in either decision are judged: counting the kept ones too lets two unrelated matchings agree on
# most of a ViT site (r = 13 of 197 tokens). A disagreement is excused as a near-tie when the
# scores put that token within `near_tie` (cosine units) of going the other way; the excused ones
# are counted and reported.
# Where the artifact's metric tensors can be read, the reference op decides on them (the matching
# runs in fp32 on the same input: only fp32 rounding of the cosines can flip a decision, so the
# near-tie bound is tiny and every other merging token must agree), and the metric itself must be
# close to PyTorch's given the same history (`metric_rel_l2`). Otherwise PyTorch's own metric
# decides, and fp16 rounding upstream moves the scores by far more: on random-weight ViTs most
# sources sit within 1e-2 of the threshold, so that fallback is a weaker check (`DECISION_FALLBACK`).
# Measured on every zoo family at its defaults: benchmarks/README.md, "The merge-decision gate".
DECISION_LIMITS: dict[str, dict[str, float]] = {
    "fp32": {"near_tie": 1e-5, "merging_same_destination": 1.0, "metric_rel_l2": 1e-4},
    "fp16": {"near_tie": 1e-5, "merging_same_destination": 1.0, "metric_rel_l2": 2e-2},
}
DECISION_FALLBACK: dict[str, dict[str, float]] = {
    "fp32": {"near_tie": 1e-4, "merging_same_destination": 0.99},
    "fp16": {"near_tie": 1e-3, "merging_same_destination": 0.95},
}
INVALID = -2  # a group no correct decision forms (two destinations, or none, sharing a slot)


def merge_destinations(slot: np.ndarray, kind: str, dst=(), num_out: int | None = None) -> np.ndarray:
    """[B, N] int64: for every token, the input position naming the group it merged into (its
    destination for bipartite, the window's first token for windows); -1 when it did not merge,
    INVALID for a group no correct decision forms or a slot outside [0, num_out).

    Only which tokens share a slot counts, never the slot's number, so any slot layout compares.
    A bipartite destination itself is -1: its sources carry the decision."""
    slot = np.asarray(slot, np.int64)
    slot = slot.reshape(-1, slot.shape[-1])
    B, N = slot.shape
    is_dst = np.zeros(N, bool)
    is_dst[list(dst)] = True
    out = np.full((B, N), -1, np.int64)
    for b in range(B):
        vals, inv, counts = np.unique(slot[b], return_inverse=True, return_counts=True)
        grouped = counts[inv] > 1
        if kind == "window":
            anchor = np.full(len(vals), N, np.int64)
            np.minimum.at(anchor, inv, np.arange(N))
            out[b] = np.where(grouped, anchor[inv], -1)
        else:
            anchor = np.full(len(vals), INVALID, np.int64)
            anchor[inv[is_dst]] = np.nonzero(is_dst)[0]
            anchor[np.bincount(inv, weights=is_dst, minlength=len(vals)) != 1] = INVALID
            out[b] = np.where(grouped & ~is_dst, anchor[inv], -1)
        if num_out is not None:
            out[b][(slot[b] < 0) | (slot[b] >= num_out)] = INVALID
    return out


def _unit(metric: np.ndarray) -> np.ndarray:
    m = np.asarray(metric, np.float64)
    return m / np.maximum(np.linalg.norm(m, axis=-1, keepdims=True), 1e-6)


def _threshold_gap(scores: np.ndarray, count: int) -> np.ndarray:
    """|score - the midpoint between the count-th and the next largest score| per row [B, K]:
    how far each entry is from being selected the other way (inf when nothing can swap)."""
    valid = np.isfinite(scores)
    out = np.full(scores.shape, np.inf)
    for b in range(scores.shape[0]):
        v = np.sort(scores[b][valid[b]])[::-1]
        if 0 < count < len(v):
            out[b][valid[b]] = np.abs(scores[b][valid[b]] - (v[count - 1] + v[count]) / 2)
    return out


def decision_margins(metric: np.ndarray, kind: str, count: int, args: dict) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch's scores at a site -> ([B, N] selection margin, [B, N] partner margin), cosine units.

    Selection: how far a token's score (a source's best match, a window's mean cosine) is from
    the threshold between merged and kept. Partner: how far a source's best destination is ahead
    of its second best (inf for windows). inf where the fate is fixed (protected, destinations)."""
    m = _unit(metric)
    B, N, _ = m.shape
    sel = np.full((B, N), np.inf)
    partner = np.full((B, N), np.inf)
    protect = int(args.get("protect", 0))
    if kind == "window":
        h, w = int(args["height"]), int(args["width"])
        t = m[:, protect:].reshape(B, h // 2, 2, w // 2, 2, -1).transpose(0, 1, 3, 2, 4, 5).reshape(B, -1, 4, m.shape[-1])
        gram = t @ t.transpose(0, 1, 3, 2)
        score = (gram.sum((-1, -2)) - np.trace(gram, axis1=-2, axis2=-1)) / 12.0
        gap = _threshold_gap(score, count).reshape(B, h // 2, 1, w // 2, 1)
        sel[:, protect:] = np.broadcast_to(gap, (B, h // 2, 2, w // 2, 2)).reshape(B, h * w)
        return sel, partner
    src, dst = list(args["src"]), list(args["dst"])
    if kind == "cell":  # one candidate per source, its own cell's anchor: no partner to swap
        h, w, sy, sx = (int(args[k]) for k in ("height", "width", "sy", "sx"))
        pos = np.arange(N)
        anchor = (pos // w - pos // w % sy) * w + (pos % w - pos % w % sx)
        own = (m * m[:, anchor]).sum(-1)  # [B, N]
        sel[:, src] = _threshold_gap(own[:, src], count)
        return sel, partner
    scores = m[:, src] @ m[:, dst].transpose(0, 2, 1)  # [B, S, D]
    top2 = np.sort(scores, axis=-1)[..., -2:] if len(dst) > 1 else np.concatenate(
        [np.full(scores.shape, -np.inf), scores], axis=-1)
    node_max = top2[..., -1].copy()
    node_max[:, :protect] = -np.inf
    gap = _threshold_gap(node_max, count)
    sel[:, src] = gap
    partner[:, src] = top2[..., -1] - top2[..., -2]
    partner[:, src[:protect]] = np.inf
    return sel, partner


def judge_site(got: np.ndarray, own: np.ndarray, kind: str, count: int, args: dict,
               margins: tuple[np.ndarray, np.ndarray], near_tie: float) -> dict:
    """One site's decision figures: of the tokens that merge in either decision, the fraction that
    merge into the same destination in both, near-ties (within `near_tie` of PyTorch's threshold
    or partner choice) excused and counted."""
    n = own.shape[-1]
    num_out = n - (3 * count if kind == "window" else count)
    dst = args.get("dst", ())
    want = merge_destinations(own, kind, dst, num_out)
    have = merge_destinations(np.asarray(got).reshape(own.shape), kind, dst, num_out)
    sel, partner = (np.asarray(x).reshape(want.shape) for x in margins)
    judged = (want != -1) | (have != -1)
    differ = judged & (want != have)
    both = (want >= 0) & (have >= 0)
    margin = np.where(both, partner, sel)
    excused = differ & (margin <= near_tie) & (have != INVALID)
    counted = int(judged.sum() - excused.sum())
    agree = int((judged & ~differ).sum())
    return {"merging": int(judged.sum()), "same_destination": agree, "near_ties_excused": int(excused.sum()),
            "largest_excused_margin": float(margin[excused].max()) if excused.any() else None,
            "merging_same_destination": agree / counted if counted else 1.0,
            "tokens_same_fate": float(1.0 - differ.mean())}


def _rel_l2(got: np.ndarray, ref: np.ndarray) -> float:
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-30))


def judge_decisions(sites: list[dict], got: list[np.ndarray], precision: str) -> tuple[dict, list[dict]]:
    """(figures, checks) for an artifact's merge decisions, site by site.

    `sites`: per site in call order (edgemerge.merge.reference.replay_reference): {"kind", "count",
    "args", "own" [B, N] (PyTorch's decision on its own metric), "metric", "margins", and, where the
    artifact's metric was read, "artifact_metric" and "on_artifact_metric" (the reference op's
    decision on it)}; `got`: the artifact's slots. Checks: the worst site's
    `merging_same_destination` and, with the artifact's metrics, the worst `metric_rel_l2`.
    `tokens_same_fate` (all tokens, kept ones included) is reported only."""
    key = "fp16" if precision == "fp16" else "fp32"
    exact = bool(sites) and all("on_artifact_metric" in s for s in sites)
    lim = DECISION_LIMITS[key] if exact else DECISION_FALLBACK[key]
    limits = {"same_destination_worst": (">=", lim["merging_same_destination"])}
    if exact:
        limits["metric_rel_l2_worst"] = ("<=", lim["metric_rel_l2"])
    if len(got) != len(sites):
        figures = {"sites": len(sites), "artifact_sites": len(got), "same_destination_worst": None,
                   "metric_rel_l2_worst": None}
        return figures, check(figures, limits)
    per_site = []
    for i, (s, g) in enumerate(zip(sites, got)):
        want = s["on_artifact_metric"] if exact else s["own"]
        row = {"site": i, "kind": s["kind"], "count": s["count"],
               **judge_site(g, want, s["kind"], s["count"], s["args"], s["margins"], lim["near_tie"])}
        if exact:
            row["metric_rel_l2"] = _rel_l2(s["artifact_metric"], s["metric"])
            row["pytorch_metric_same_fate"] = judge_site(g, s["own"], s["kind"], s["count"], s["args"],
                                                         s["margins"], 0.0)["tokens_same_fate"]
        per_site.append(row)
    worst = min(per_site, key=lambda p: p["merging_same_destination"]) if per_site else None
    figures = {"sites": len(sites), "judged_on": "the artifact's metric" if exact else "PyTorch's metric",
               "near_tie": lim["near_tie"],
               "same_destination_worst": worst["merging_same_destination"] if worst else 1.0,
               "worst_site": worst["site"] if worst else None,
               "near_ties_excused": sum(p["near_ties_excused"] for p in per_site),
               "largest_excused_margin": max((p["largest_excused_margin"] for p in per_site
                                              if p["largest_excused_margin"] is not None), default=None),
               "tokens_same_fate": float(np.mean([p["tokens_same_fate"] for p in per_site])) if per_site else 1.0,
               "per_site": per_site}
    if exact:
        figures["metric_rel_l2_worst"] = max((p["metric_rel_l2"] for p in per_site), default=0.0)
    return figures, check(figures, limits)


def check(figures: dict, limits: dict[str, tuple[str, float]]) -> list[dict]:
    """One row per limit: metric, value, op, threshold, passed (a missing figure fails)."""
    rows = []
    for name, (op, limit) in limits.items():
        value = figures.get(name)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            passed = False
        else:
            passed = bool(value >= limit) if op == ">=" else bool(value <= limit)
        rows.append({"metric": name, "value": value, "op": op, "threshold": limit, "passed": passed})
    return rows


def describe(row: dict, figures: dict) -> str:
    """'argmax_agreement = 0.999988 (6 of 524282 decidable pixels differ; limit >= 1)'."""
    value = row["value"]
    text = f"{row['metric']} = {'n/a' if value is None else f'{value:.6g}'}"
    ties = figures.get("near_ties")
    if row["metric"] == "argmax_agreement" and ties:
        text += (f" ({ties['decidable_disagree']} of {ties['decidable']} decidable pixels differ; "
                 f"{ties['flipped']} of {ties['pixels']} near-ties flipped, bound {ties['bound']:.3g})")
    return f"{text} (limit {row['op']} {row['threshold']:g})"


@dataclass
class Comparison:
    figures: dict
    checks: list[dict]

    @property
    def passed(self) -> bool:
        return all(c["passed"] for c in self.checks)

    def failures(self) -> str:
        """The failed checks, each with its digits and the counts behind a fraction."""
        return ", ".join(describe(c, self.figures) for c in self.checks if not c["passed"])


def compare(got: np.ndarray, ref: np.ndarray, profile: str, precision: str, **overrides) -> Comparison:
    """`got` against `ref` under `profile`'s limits at `precision` (overrides: atol, rtol, min_agreement)."""
    figures = metrics(got, ref, precision)
    return Comparison(figures, check(figures, limits_for(profile, precision, **overrides)))
