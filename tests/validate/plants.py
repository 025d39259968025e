"""Wrongly built artifacts, planted in a bundle's model.onnx as a faulty build would carry them.

Written from the ONNX spec and docs/ops.md's slot layout, importing nothing of edgemerge: each
plant is one thing a broken exporter, kernel or plugin could do. `save` re-signs the manifest's
onnx_sha256, so only the comparison can tell. Used by tests/validate/test_planted_builds.py and
benchmarks/validator_bounds.py.

Note: negating a match node's whole metric input changes nothing (cosine(-a, -b) = cosine(a, b)),
so the decision plants negate the *destinations'* rows (every score flips sign: the site merges
the least similar tokens) or shuffle the tokens of the metric (an unrelated matching).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

MATCH = ("TokenMatchBipartite", "TokenMatchWindow")


def copy_bundle(bundle: Path, dst: Path) -> Path:
    shutil.copytree(bundle, dst, ignore=shutil.ignore_patterns("validate_report"))
    return dst


def save(model: onnx.ModelProto, bundle: Path) -> None:
    """Write the doctored model.onnx and re-sign the manifest's hash."""
    onnx.save(model, str(bundle / "model.onnx"))
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["onnx_sha256"] = hashlib.sha256((bundle / "model.onnx").read_bytes()).hexdigest()
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def _attrs(node) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _after_output(model: onnx.ModelProto, op: str, value: float) -> None:
    """graph output y -> y op value (in the output's dtype)."""
    out = model.graph.output[0]
    dtype = helper.tensor_dtype_to_np_dtype(out.type.tensor_type.elem_type)
    pre = out.name + "__planted"
    for n in model.graph.node:
        n.output[:] = [pre if o == out.name else o for o in n.output]
    model.graph.initializer.append(numpy_helper.from_array(np.array(value, dtype), pre + "_c"))
    model.graph.node.append(helper.make_node(op, [pre, pre + "_c"], [out.name]))


def scale_logits(model: onnx.ModelProto, factor: float = 1.01) -> None:
    _after_output(model, "Mul", factor)


def offset_logits(model: onnx.ModelProto, offset: float) -> None:
    _after_output(model, "Add", offset)


def change_one_weight(model: onnx.ModelProto) -> str:
    """The largest weight of the last weighted layer negated (a corrupted copy of one number)."""
    weights = {t.name: t for t in model.graph.initializer if len(t.dims) >= 2}
    last = next(n for n in reversed(model.graph.node) if any(i in weights for i in n.input))
    init = weights[next(i for i in last.input if i in weights)]
    w = numpy_helper.to_array(init).copy()
    k = int(np.abs(w.astype(np.float64)).argmax())
    w.flat[k] = -w.flat[k]
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    return init.name


def _match_nodes(model: onnx.ModelProto) -> list:
    return [n for n in model.graph.node if n.op_type in MATCH]


def _insert_before(model: onnx.ModelProto, node, idx: int, nodes: list, new_input: str) -> None:
    pos = list(model.graph.node).index(node)
    for k, n in enumerate(nodes):
        model.graph.node.insert(pos + k, n)
    node.input[idx] = new_input


def least_similar(model: onnx.ModelProto, site: int = 0) -> str:
    """Bipartite: the destinations' metric rows negated, so every source-destination cosine flips
    sign and the site merges the least similar pairs. Window: the metric's tokens shuffled by a
    fixed permutation (the windows then score unrelated tokens)."""
    node = _match_nodes(model)[site]
    a = _attrs(node)
    x = node.input[0]
    if node.op_type == "TokenMatchBipartite":
        n = len(a["src"]) + len(a["dst"])
        sign = np.ones((1, n, 1), np.float32)
        sign[0, list(a["dst"])] = -1.0
        model.graph.initializer.append(numpy_helper.from_array(sign, x + "__sign"))
        _insert_before(model, node, 0, [helper.make_node("Mul", [x, x + "__sign"], [x + "__planted"])], x + "__planted")
    else:
        p = int(a.get("protect", 0))
        n = p + int(a["height"]) * int(a["width"])
        perm = np.concatenate([np.arange(p), p + np.random.default_rng(0).permutation(n - p)]).astype(np.int64)
        model.graph.initializer.append(numpy_helper.from_array(perm, x + "__perm"))
        _insert_before(model, node, 0, [helper.make_node("Gather", [x, x + "__perm"], [x + "__planted"], axis=1)],
                       x + "__planted")
    return node.name


def destinations_permuted(model: onnx.ModelProto) -> str:
    """A match kernel that sends every merged source to the wrong destination, at every bipartite
    site: inside TokenMatchBipartite's function body, a merged source's slot (docs/ops.md: from
    len(src) - r on, one per destination) moves to the next destination's, cyclically; the
    destinations keep theirs. The node's slot output is the planted one, as a faulty kernel's
    would be. (Shifting the destinations' slots too would only renumber the merged tokens.)"""
    f = next(f for f in model.functions if f.name == "TokenMatchBipartite")
    out = f.output[0]
    raw = out + "__raw"
    for n in f.node:
        n.output[:] = [raw if o == out else o for o in n.output]

    def ref(name, attr, kind):
        node = helper.make_node("Constant", [], [name])
        a = onnx.AttributeProto(name=kind, ref_attr_name=attr,
                                type=onnx.AttributeProto.INT if kind == "value_int" else onnx.AttributeProto.INTS)
        node.attribute.append(a)
        return node

    p = out + "__p_"
    f.node.extend([
        ref(p + "r", "r", "value_int"), ref(p + "src", "src", "value_ints"), ref(p + "dst", "dst", "value_ints"),
        helper.make_node("Size", [p + "src"], [p + "S"]), helper.make_node("Size", [p + "dst"], [p + "D"]),
        helper.make_node("Sub", [p + "S", p + "r"], [p + "first"]),
        helper.make_node("Constant", [], [p + "one"], value_int=1),
        helper.make_node("Cast", [raw], [p + "raw64"], to=onnx.TensorProto.INT64),
        helper.make_node("Sub", [p + "raw64", p + "first"], [p + "rel"]),
        helper.make_node("Add", [p + "rel", p + "one"], [p + "rel1"]),
        helper.make_node("Mod", [p + "rel1", p + "D"], [p + "mod"]),
        helper.make_node("Add", [p + "mod", p + "first"], [p + "shifted"]),
        helper.make_node("Add", [p + "S", p + "D"], [p + "N"]),
        helper.make_node("Constant", [], [p + "zero"], value_int=0),
        helper.make_node("Range", [p + "zero", p + "N", p + "one"], [p + "pos"]),
        helper.make_node("Constant", [], [p + "ax0"], value_ints=[0]),
        helper.make_node("Constant", [], [p + "ax1"], value_ints=[1]),
        helper.make_node("Unsqueeze", [p + "pos", p + "ax1"], [p + "pos2"]),
        helper.make_node("Unsqueeze", [p + "src", p + "ax0"], [p + "src2"]),
        helper.make_node("Equal", [p + "pos2", p + "src2"], [p + "eq"]),
        helper.make_node("Cast", [p + "eq"], [p + "eqf"], to=onnx.TensorProto.FLOAT),
        helper.make_node("ReduceSum", [p + "eqf", p + "ax1"], [p + "is_src_f"], keepdims=0),
        helper.make_node("Constant", [], [p + "half"], value_float=0.5),
        helper.make_node("Greater", [p + "is_src_f", p + "half"], [p + "is_src"]),
        helper.make_node("GreaterOrEqual", [p + "raw64", p + "first"], [p + "past_kept"]),
        helper.make_node("And", [p + "past_kept", p + "is_src"], [p + "merging"]),
        helper.make_node("Where", [p + "merging", p + "shifted", p + "raw64"], [p + "out64"]),
        helper.make_node("Cast", [p + "out64"], [out], to=onnx.TensorProto.INT32),
    ])
    return f.name


# ---- planted decisions as slot arrays (docs/ops.md's layout), for the gate itself ---------------

def bipartite_slot(merged: np.ndarray, dest: np.ndarray, src, dst) -> np.ndarray:
    """[N] slot for one input: `merged` [S] bool, `dest` [S] destination rank for merged sources."""
    S, D = len(src), len(dst)
    r = int(merged.sum())
    slot = np.empty(S + D, np.int64)
    slot[list(src)] = np.where(merged, S - r + dest, np.cumsum(~merged) - 1)
    slot[list(dst)] = S - r + np.arange(D)
    return slot


def cosine_scores(metric: np.ndarray, src, dst) -> np.ndarray:
    m = metric / np.maximum(np.linalg.norm(metric, axis=-1, keepdims=True), 1e-6)
    return m[list(src)] @ m[list(dst)].T


def wrong_picks(metric: np.ndarray, r: int, src, dst, protect: int, wrong: int) -> np.ndarray:
    """The right matching but for `wrong` of its r picks: those best-scored sources are swapped
    for the best-scored ones it left out, each sent to its own best destination."""
    scores = cosine_scores(metric, src, dst)
    best, dest = scores.max(1), scores.argmax(1)
    best[:protect] = -np.inf
    order = np.argsort(-best, kind="stable")
    picks = np.concatenate([order[wrong:r], order[r:r + wrong]])
    merged = np.zeros(len(src), bool)
    merged[picks] = True
    return bipartite_slot(merged, dest, src, dst)


def permuted_destinations(metric: np.ndarray, r: int, src, dst, protect: int) -> np.ndarray:
    """The right sources, each sent to the next destination (cyclically) instead of its best."""
    scores = cosine_scores(metric, src, dst)
    best, dest = scores.max(1), scores.argmax(1)
    best[:protect] = -np.inf
    merged = np.zeros(len(src), bool)
    merged[np.argsort(-best, kind="stable")[:r]] = True
    return bipartite_slot(merged, (dest + 1) % len(dst), src, dst)
