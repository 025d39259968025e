"""Standard-op bodies of the `edgemerge` ops, as model-local ONNX functions (spec: docs/ops.md).

One body per op type, shared by every node of that type through attribute references
(`ref_attr_name`), so ONNX Runtime runs the file as it is and TensorRT without our plugin inlines
the body. The same bodies, inlined, are the `--merge-ops native` graph.

What the bodies avoid, because TensorRT builds them wrongly or not at all: ScatterElements /
ScatterND with a reduction (merge sums are a one-hot MatMul instead), TopK with K > 3840
(selection runs TopK over the smaller side, `K = min(r, S - r)`), ReduceMax (axes moved
between opsets; ArgMax + GatherElements serves every opset >= 13).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import AttributeProto, FunctionProto, TensorProto, helper
from onnx.defs import OpSchema

from edgemerge.graphs import BODY_PREFIX

DOMAIN = "edgemerge"
DOMAIN_VERSION = 1
PLUGIN_NAMESPACE = "edgemerge"

# op_type -> (inputs, outputs, {attribute: type}); the single table the schemas come from.
OPS: dict[str, tuple[list[str], list[str], dict[str, int]]] = {
    "TokenMatchBipartite": (
        ["metric"],
        ["slot"],
        {"r": AttributeProto.INT, "src": AttributeProto.INTS, "dst": AttributeProto.INTS,
         "protect": AttributeProto.INT},
    ),
    "TokenMatchWindow": (
        ["metric"],
        ["slot"],
        {"height": AttributeProto.INT, "width": AttributeProto.INT, "k": AttributeProto.INT,
         "protect": AttributeProto.INT},
    ),
    "TokenMerge": (["x", "size", "slot"], ["merged", "merged_size"], {"num_out": AttributeProto.INT}),
    "TokenUnmerge": (["merged", "slot"], ["x"], {}),
}


def register_schemas() -> None:
    """Register our ops with onnx so that the checker and onnxscript know them (idempotent)."""
    A = OpSchema.AttrType
    kinds = {AttributeProto.INT: A.INT, AttributeProto.INTS: A.INTS}
    for name, (inputs, outputs, attrs) in OPS.items():
        if onnx.defs.has(name, DOMAIN):
            continue
        types = {"metric": "M", "slot": "I"}
        schema = OpSchema(
            name, DOMAIN, DOMAIN_VERSION,
            inputs=[OpSchema.FormalParameter(i, types.get(i, "T")) for i in inputs],
            outputs=[OpSchema.FormalParameter(o, types.get(o, "T")) for o in outputs],
            type_constraints=[
                ("T", ["tensor(float)", "tensor(float16)"], "tokens"),
                ("M", ["tensor(float)"], "matching runs in fp32"),
                ("I", ["tensor(int32)"], "slot indices"),
            ],
            attributes=[OpSchema.Attribute(a, kinds[t], "") for a, t in attrs.items()]
            + [OpSchema.Attribute("plugin_namespace", A.STRING, "TensorRT plugin namespace")],
        )
        onnx.defs.register_schema(schema)


class _Body:
    """A tiny graph writer: `b("Add", x, y)` appends a node and returns its output name."""

    def __init__(self, op_type: str):
        self.nodes: list[onnx.NodeProto] = []
        # Reserved prefix + op: unable to collide with an outer graph name (export refuses those),
        # nor with another op's body, in a parser that binds function tensors by name.
        self.prefix = f"{BODY_PREFIX}{op_type}_"

    def __call__(self, op: str, *inputs: str, n_out: int = 1, **attrs):
        outs = [f"{self.prefix}{len(self.nodes)}_{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op, list(inputs), outs, **attrs))
        return outs[0] if n_out == 1 else outs

    def attr(self, name: str, kind: int) -> str:
        """A Constant whose value is the calling node's attribute `name`."""
        out = f"{self.prefix}{len(self.nodes)}_{name}"
        node = helper.make_node("Constant", [], [out])
        a = AttributeProto()
        a.name, a.type, a.ref_attr_name = ("value_int", AttributeProto.INT, name) if kind == AttributeProto.INT \
            else ("value_ints", AttributeProto.INTS, name)
        node.attribute.append(a)
        self.nodes.append(node)
        return out

    def const(self, value, dtype: int = TensorProto.INT64) -> str:
        vals = value if isinstance(value, list) else [value]
        t = helper.make_tensor("v", dtype, [len(vals)] if isinstance(value, list) else [], vals)
        return self("Constant", value=t)


def _normalize(b: _Body, metric: str) -> str:
    ss = b("ReduceSum", b("Mul", metric, metric), b.const([-1]), keepdims=1)
    return b("Div", metric, b("Max", b("Sqrt", ss), b.const(1e-6, TensorProto.FLOAT)))


def _top_mask(b: _Body, score: str, r: str, n: str) -> str:
    """Bool [B, S]: the r largest of `score` per row, ties to the lower index (docs/ops.md).

    TopK runs over the smaller side: when r > S - r it selects the S - r *kept* entries by the
    negated score on the reversed sequence, so ties still resolve towards the lower index.
    """
    pos = b("Range", b.const(0), n, b.const(1))
    rev = b("Sub", b("Sub", n, b.const(1)), pos)
    n_keep = b("Sub", n, r)
    flip = b("Greater", r, n_keep)
    k = b("Unsqueeze", b("Min", r, n_keep), b.const([0]))
    v = b("Where", flip, b("Neg", b("Gather", score, rev, axis=1)), score)
    _, idx = b("TopK", v, k, axis=1, largest=1, sorted=1, n_out=2)
    zeros = b("ConstantOfShape", b("Shape", v), value=helper.make_tensor("z", TensorProto.FLOAT, [1], [0.0]))
    ones = b("ConstantOfShape", b("Shape", idx), value=helper.make_tensor("o", TensorProto.FLOAT, [1], [1.0]))
    sel = b("Cast", b("ScatterElements", zeros, idx, ones, axis=1), to=TensorProto.BOOL)
    order = b("Where", flip, rev, pos)  # (Where on int64: ONNX Runtime has no bool Where)
    return b("Xor", b("Gather", sel, order, axis=1), flip)


def _match_bipartite() -> tuple[list[onnx.NodeProto], list[str]]:
    b = _Body("TokenMatchBipartite")
    src, dst = b.attr("src", AttributeProto.INTS), b.attr("dst", AttributeProto.INTS)
    r, protect = b.attr("r", AttributeProto.INT), b.attr("protect", AttributeProto.INT)
    m = _normalize(b, "metric")
    scores = b("MatMul", b("Gather", m, src, axis=1), b("Transpose", b("Gather", m, dst, axis=1), perm=[0, 2, 1]))
    node_idx = b("ArgMax", scores, axis=2, keepdims=1)  # first maximum on ties
    node_max = b("Squeeze", b("GatherElements", scores, node_idx, axis=2), b.const([2]))
    node_idx = b("Squeeze", node_idx, b.const([2]))
    n_src, n_dst = b("Size", src), b("Size", dst)
    pos = b("Range", b.const(0), n_src, b.const(1))
    node_max = b("Where", b("Less", pos, protect), b.const(float("-inf"), TensorProto.FLOAT), node_max)
    merged = _top_mask(b, node_max, r, n_src)
    base = b("Sub", n_src, r)
    unm_rank = b("Sub", b("CumSum", b("Cast", b("Not", merged), to=TensorProto.INT64), b.const(1)), b.const(1))
    slot_src = b("Where", merged, b("Add", base, node_idx), unm_rank)
    batch = b("Slice", b("Shape", "metric"), b.const([0]), b.const([1]))
    slot_dst = b("Expand", b("Add", base, b("Range", b.const(0), n_dst, b.const(1))),
                 b("Concat", batch, b("Unsqueeze", n_dst, b.const([0])), axis=0))
    slot_cat = b("Concat", slot_src, slot_dst, axis=1)  # in (src..., dst...) order
    perm = b("Expand", b("Unsqueeze", b("Concat", src, dst, axis=0), b.const([0])), b("Shape", slot_cat))
    zero = b("ConstantOfShape", b("Shape", slot_cat), value=helper.make_tensor("z", TensorProto.INT64, [1], [0]))
    slot = b("ScatterElements", zero, perm, slot_cat, axis=1)  # a permutation: no reduction needed
    b.nodes.append(helper.make_node("Cast", [slot], ["slot"], to=TensorProto.INT32))
    return b.nodes, ["metric"]


def _match_window() -> tuple[list[onnx.NodeProto], list[str]]:
    b = _Body("TokenMatchWindow")
    h, w = b.attr("height", AttributeProto.INT), b.attr("width", AttributeProto.INT)
    k, protect = b.attr("k", AttributeProto.INT), b.attr("protect", AttributeProto.INT)
    one_d = lambda t: b("Unsqueeze", t, b.const([0]))  # noqa: E731  scalar -> [1]
    shape = b("Shape", "metric")
    batch = b("Slice", shape, b.const([0]), b.const([1]))
    n_tok = b("Slice", shape, b.const([1]), b.const([2]))
    chans = b("Slice", shape, b.const([2]), b.const([3]))
    h2, w2 = b("Div", h, b.const(2)), b("Div", w, b.const(2))
    m = _normalize(b, "metric")
    patches = b("Slice", m, one_d(protect), n_tok, b.const([1]))
    t = b("Reshape", patches, b("Concat", batch, one_d(h2), b.const([2]), one_d(w2), b.const([2]), chans, axis=0))
    t = b("Transpose", t, perm=[0, 1, 3, 2, 4, 5])
    n_win = b("Mul", h2, w2)
    t = b("Reshape", t, b("Concat", batch, one_d(n_win), b.const([4]), chans, axis=0))  # [B, W, 4, C]
    gram = b("MatMul", t, b("Transpose", t, perm=[0, 1, 3, 2]))
    total = b("ReduceSum", gram, b.const([2, 3]), keepdims=0)
    diag = b("ReduceSum", b("Mul", t, t), b.const([2, 3]), keepdims=0)
    score = b("Div", b("Sub", total, diag), b.const(12.0, TensorProto.FLOAT))
    win_merged = b("Cast", _top_mask(b, score, k, n_win), to=TensorProto.INT64)
    first_win_slot = b("Sub", b("Squeeze", n_tok, b.const([0])), b("Mul", b.const(4), k))
    win_slot = b("Add", first_win_slot, b("Sub", b("CumSum", win_merged, b.const(1)), b.const(1)))

    def to_tokens(v: str) -> str:  # [B, W] -> [B, protect + h*w], protected positions 0
        v = b("Reshape", v, b("Concat", batch, one_d(h2), b.const([1]), one_d(w2), b.const([1]), axis=0))
        v = b("Expand", v, b("Concat", batch, one_d(h2), b.const([2]), one_d(w2), b.const([2]), axis=0))
        v = b("Reshape", v, b("Concat", batch, b.const([-1]), axis=0))
        lead = b("ConstantOfShape", b("Concat", batch, one_d(protect), axis=0),
                 value=helper.make_tensor("z", TensorProto.INT64, [1], [0]))
        return b("Concat", lead, v, axis=1)

    tok_merged = to_tokens(win_merged)
    unm_rank = b("Sub", b("CumSum", b("Sub", b.const(1), tok_merged), b.const(1)), b.const(1))
    slot = b("Where", b("Cast", tok_merged, to=TensorProto.BOOL), to_tokens(win_slot), unm_rank)
    b.nodes.append(helper.make_node("Cast", [slot], ["slot"], to=TensorProto.INT32))
    return b.nodes, ["metric"]


def _merge() -> tuple[list[onnx.NodeProto], list[str]]:
    """Sums in fp32 whatever the dtype of x (docs/ops.md): in fp16, size * x alone overflows
    once a ToMe token has absorbed a few dozen others (65504 / 50 is 1310)."""
    b = _Body("TokenMerge")
    num_out = b.attr("num_out", AttributeProto.INT)
    rng = b("Range", b.const(0), num_out, b.const(1))
    onehot = b("Equal", b("Unsqueeze", b("Cast", "slot", to=TensorProto.INT64), b.const([2])), rng)  # [B, N, M]
    onehot_t = b("Transpose", b("Cast", onehot, to=TensorProto.FLOAT), perm=[0, 2, 1])
    size = b("Cast", "size", to=TensorProto.FLOAT)
    sums = b("MatMul", onehot_t, b("Mul", b("Cast", "x", to=TensorProto.FLOAT), size))
    merged_size = b("MatMul", onehot_t, size)
    merged = b("Div", sums, b("Max", merged_size, b.const(1e-6, TensorProto.FLOAT)))
    b.nodes.append(helper.make_node("CastLike", [merged, "x"], ["merged"]))
    b.nodes.append(helper.make_node("CastLike", [merged_size, "size"], ["merged_size"]))
    return b.nodes, ["x", "size", "slot"]


def _unmerge() -> tuple[list[onnx.NodeProto], list[str]]:
    b = _Body("TokenUnmerge")
    chans = b("Slice", b("Shape", "merged"), b.const([2]), b.const([3]))
    idx = b("Expand", b("Unsqueeze", b("Cast", "slot", to=TensorProto.INT64), b.const([2])),
            b("Concat", b("Shape", "slot"), chans, axis=0))
    b.nodes.append(helper.make_node("GatherElements", ["merged", idx], ["x"], axis=1))
    return b.nodes, ["merged", "slot"]


_BODIES = {
    "TokenMatchBipartite": _match_bipartite,
    "TokenMatchWindow": _match_window,
    "TokenMerge": _merge,
    "TokenUnmerge": _unmerge,
}


def function_proto(op_type: str, opset: int) -> FunctionProto:
    """The model-local function for `op_type`; its default-domain opset must equal the model's."""
    nodes, inputs = _BODIES[op_type]()
    _, outputs, attrs = OPS[op_type]
    return helper.make_function(
        DOMAIN, op_type, inputs, outputs, nodes,
        opset_imports=[helper.make_opsetid("", opset)],
        attributes=list(attrs) + ["plugin_namespace"],
    )


def one_op_model(op_type: str, feeds: dict[str, np.ndarray], opset: int = 18, **attrs) -> onnx.ModelProto:
    """A model of one `edgemerge` node plus its function body, typed and shaped by `feeds`.

    The unit the three implementations are compared on: ONNX Runtime runs it (or its inlined
    body), TensorRT builds it with our plugin or without; the outputs must equal the reference.
    """
    inputs, outputs, _ = OPS[op_type]
    first = feeds[inputs[0]]
    B, N = first.shape[:2]
    if op_type.startswith("TokenMatch"):
        out_types = {"slot": (np.int32, (B, N))}
    elif op_type == "TokenMerge":
        M, C = attrs["num_out"], first.shape[2]
        out_types = {"merged": (first.dtype, (B, M, C)), "merged_size": (feeds["size"].dtype, (B, M, 1))}
    else:  # TokenUnmerge: merged [B, M, C], slot [B, N]
        out_types = {"x": (first.dtype, (B, feeds["slot"].shape[1], first.shape[2]))}

    def info(name: str, dtype, shape) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), list(shape))

    node = helper.make_node(op_type, inputs, outputs, domain=DOMAIN, name=f"{op_type}_0",
                            plugin_namespace=PLUGIN_NAMESPACE, **attrs)
    graph = helper.make_graph([node], op_type, [info(n, feeds[n].dtype, feeds[n].shape) for n in inputs],
                              [info(n, *out_types[n]) for n in outputs])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                   helper.make_opsetid(DOMAIN, DOMAIN_VERSION)],
                             functions=[function_proto(op_type, opset)], ir_version=10)


register_schemas()
