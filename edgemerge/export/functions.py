"""Standard-op bodies of the `edgemerge` ops, as model-local ONNX functions (spec: docs/ops.md).

One body per op type, shared by every node of that type through attribute references
(`ref_attr_name`), so ONNX Runtime runs the file as it is and TensorRT without our plugin inlines
the body. The same bodies, inlined, are the `--merge-ops native` graph.

What the bodies avoid, because TensorRT builds them wrongly or not at all: ScatterElements /
ScatterND with a reduction (merge sums are a one-hot MatMul instead; cell merges a Reshape +
ReduceSum over each cell), TopK with K > 3840
(bipartite selection runs TopK over the smaller side, `K = min(r, S - r)`; window matching ranks
the windows by pairwise comparison, `[B, W, W]`, and uses no TopK), ReduceMax (axes moved
between opsets; ArgMax + GatherElements serves every opset >= 13).

What TensorRT's ONNX parser at 10.1 needs besides (sources: onnx-tensorrt docs/operators.md at
release/10.1-GA and at fa5aa9f6, the TensorRT v10.15 submodule; onnx-tensorrt onnxOpImporters.cpp
at release/10.1-GA; TensorRT include/NvInfer.h at v10.3.0):
- CumSum is documented for FP32/FP16/BF16 only, in both operators.md versions (10.1 builds it
  as an ILoop without a type check, onnxOpImporters.cpp lines 1127-1198; int64 comes with 10.8's
  ICumulativeLayer). Every CumSum here runs on float32 and is cast back to int64: exact, as the
  counts stay below 2^24.
- TopK, and ArgMax, which 10.1 builds on TopK, promise no order among ties (NvInfer.h addTopK:
  "Output values are sorted", nothing on ties); the reference breaks ties towards the lower
  index. The bodies use TopK's values only, never its indices, and an ArgMax index only to read
  the maximum or over distinct values (`_top_mask`, `_match_bipartite`).
- LocalFunctionImporter (onnxOpImporters.cpp lines 6458-6578) binds a function's formal inputs
  by name into the outer tensor map, and skips the binding, with a warning, when that name is
  already an outer tensor (fixed in 10.8). Every formal input and output is therefore named with
  the reserved prefix `BODY_PREFIX` (`_formal`), like the body's own tensors.
- Every other op is used only on types that operators.md at release/10.1-GA lists for it (ops
  and element types as shape inference gives them for the inlined bodies): FP32 for MatMul,
  Sqrt, ReduceSum, TopK, ArgMax, Gather, Neg, LessOrEqual, CumSum; FP32/FP16 for GatherElements
  and CastLike (the tokens' dtype), FP32 for Concat (TokenMergeCell's partial sums); FP32/INT64
  for Add, Sub, Mul, Div, Max, Equal, Greater,
  Where (condition BOOL; never a BOOL Where, which ONNX Runtime lacks); INT64 for Min, Less,
  Range, Size, Expand, Concat, ScatterElements (no reduction), ConstantOfShape (the table spells
  it "INF64"); BOOL for Not, And, Or, Xor; Shape, Slice, Reshape, (Un)Squeeze, Transpose, Cast
  among FP32/FP16/INT32/INT64/BOOL. Axes and CumSum's axis are Constant nodes, which the parser
  imports as weights (10.1 asks for "an initializer").
  operators.md says TopK's K "must be less than 3840", NvInfer.h "up to
  3840"; `bundle.native_problems` refuses K >= 3840 (the stricter reading).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import AttributeProto, FunctionProto, TensorProto, helper
from onnx.defs import OpSchema

from edgemerge.contracts.graphs import BODY_PREFIX
from edgemerge.contracts.opspec import DOMAIN
from edgemerge.contracts.opspec import OPS as SPEC

DOMAIN_VERSION = 1
PLUGIN_NAMESPACE = DOMAIN
_ATTR_TYPES = {"int": AttributeProto.INT, "ints": AttributeProto.INTS}

# op_type -> (inputs, outputs, {attribute: type}), derived from edgemerge.contracts.opspec (the op spec).
OPS: dict[str, tuple[list[str], list[str], dict[str, int]]] = {
    name: ([p.name for p in op.inputs], [p.name for p in op.outputs],
           {a.name: _ATTR_TYPES[a.kind] for a in op.plugin_attributes()})
    for name, op in SPEC.items()
}


def _type_var(dtypes: tuple[str, ...]) -> str:
    return {("float32",): "M", ("int32",): "I"}.get(tuple(dtypes), "T")


def register_schemas() -> None:
    """Register our ops with onnx so that the checker and onnxscript know them (idempotent)."""
    A = OpSchema.AttrType
    kinds = {AttributeProto.INT: A.INT, AttributeProto.INTS: A.INTS}
    for name, (_, _, attrs) in OPS.items():
        if onnx.defs.has(name, DOMAIN):
            continue
        spec = SPEC[name]
        schema = OpSchema(
            name, DOMAIN, DOMAIN_VERSION,
            inputs=[OpSchema.FormalParameter(p.name, _type_var(p.dtypes)) for p in spec.inputs],
            outputs=[OpSchema.FormalParameter(p.name, _type_var(p.dtypes)) for p in spec.outputs],
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


def _formal(op_type: str, name: str, out: bool = False) -> str:
    """A formal input/output name of `op_type`'s body: reserved prefix, so never an outer tensor."""
    return f"{BODY_PREFIX}{op_type}_{'out' if out else 'in'}_{name}"


def _cumsum(b: _Body, x: str) -> str:
    """Int64 running count along axis 1 of a float32 0/1 tensor: CumSum in float32 (exact)."""
    return b("Cast", b("CumSum", x, b.const(1)), to=TensorProto.INT64)


def _top_mask(b: _Body, score: str, r: str, n: str) -> str:
    """Bool [B, S]: the r largest of float32 `score` per row, ties to the lower index (docs/ops.md).

    TopK runs over the smaller side, K = min(r, S - r) entries: when r > S - r it picks the S - r
    *kept* entries (largest negated score). Only TopK's values are used (TensorRT orders ties
    arbitrarily): t, the K-th largest; everything above t is chosen, and of the entries equal to t
    the first `need` in tie order: lowest index first for the merged side, highest index first for
    the kept side (so the merged side's ties still go to the lower index). K = 0 chooses nothing;
    TopK itself runs with K >= 1 so no tensor is empty.
    """
    n_keep = b("Sub", n, r)
    flip = b("Greater", r, n_keep)
    k = b("Min", r, n_keep)
    k1 = b("Unsqueeze", b("Max", k, b.const(1)), b.const([0]))
    v = b("Where", flip, b("Neg", score), score)
    values, _ = b("TopK", v, k1, axis=1, largest=1, sorted=1, n_out=2)  # indices: unused
    t = b("Gather", values, b("Sub", k1, b.const(1)), axis=1)  # [B, 1], the K-th largest value
    gt, eq = b("Greater", v, t), b("Equal", v, t)
    eq_f = b("Cast", eq, to=TensorProto.FLOAT)
    need = b("Sub", b("Cast", k, to=TensorProto.FLOAT),
             b("ReduceSum", b("Cast", gt, to=TensorProto.FLOAT), b.const([1]), keepdims=1))
    rank = b("Where", flip, b("CumSum", eq_f, b.const(1), reverse=1), b("CumSum", eq_f, b.const(1)))
    chosen = b("Or", gt, b("And", eq, b("LessOrEqual", rank, need)))
    chosen = b("And", chosen, b("Greater", k, b.const(0)))
    return b("Xor", chosen, flip)


def _match_bipartite() -> tuple[list[onnx.NodeProto], list[str]]:
    op = "TokenMatchBipartite"
    b, metric = _Body(op), _formal(op, "metric")
    src, dst = b.attr("src", AttributeProto.INTS), b.attr("dst", AttributeProto.INTS)
    r, protect = b.attr("r", AttributeProto.INT), b.attr("protect", AttributeProto.INT)
    m = _normalize(b, metric)
    scores = b("MatMul", b("Gather", m, src, axis=1), b("Transpose", b("Gather", m, dst, axis=1), perm=[0, 2, 1]))
    n_src, n_dst = b("Size", src), b("Size", dst)
    # Best destination, the first maximum. ArgMax's index is arbitrary among ties in TensorRT, but
    # the value it points at is the maximum whichever it is; the first position holding it is then
    # the ArgMax of D - position over the maxima (0 elsewhere): distinct positive values, no ties.
    node_max = b("GatherElements", scores, b("ArgMax", scores, axis=2, keepdims=1), axis=2)  # [B, S, 1]
    d_pos = b("Cast", b("Sub", n_dst, b("Range", b.const(0), n_dst, b.const(1))), to=TensorProto.FLOAT)
    first = b("Where", b("Equal", scores, node_max), d_pos, b.const(0.0, TensorProto.FLOAT))
    node_idx = b("ArgMax", first, axis=2, keepdims=0)
    node_max = b("Squeeze", node_max, b.const([2]))
    pos = b("Range", b.const(0), n_src, b.const(1))
    node_max = b("Where", b("Less", pos, protect), b.const(float("-inf"), TensorProto.FLOAT), node_max)
    merged = _top_mask(b, node_max, r, n_src)
    base = b("Sub", n_src, r)
    unm_rank = b("Sub", _cumsum(b, b("Cast", b("Not", merged), to=TensorProto.FLOAT)), b.const(1))
    slot_src = b("Where", merged, b("Add", base, node_idx), unm_rank)
    batch = b("Slice", b("Shape", metric), b.const([0]), b.const([1]))
    slot_dst = b("Expand", b("Add", base, b("Range", b.const(0), n_dst, b.const(1))),
                 b("Concat", batch, b("Unsqueeze", n_dst, b.const([0])), axis=0))
    slot_cat = b("Concat", slot_src, slot_dst, axis=1)  # in (src..., dst...) order
    perm = b("Expand", b("Unsqueeze", b("Concat", src, dst, axis=0), b.const([0])), b("Shape", slot_cat))
    zero = b("ConstantOfShape", b("Shape", slot_cat), value=helper.make_tensor("z", TensorProto.INT64, [1], [0]))
    slot = b("ScatterElements", zero, perm, slot_cat, axis=1)  # a permutation: no reduction needed
    b.nodes.append(helper.make_node("Cast", [slot], [_formal(op, "slot", out=True)], to=TensorProto.INT32))
    return b.nodes


def _match_cell() -> tuple[list[onnx.NodeProto], list[str]]:
    """TokenMatchCell in standard ops, O(N C): each token's anchor is computed from the grid
    attributes (Range/Div, folded to constants in a native graph) and gathered, one dot product
    per token; the r best sources are chosen by `_top_mask` over all N positions with the anchors
    at -inf (they never rank among r <= S, and on the kept side they come first), so its tie rule
    (lower position first) is the spec's. Slots need no scatter: a token's slot is its own
    cell's (`S - r + cell`) when it merged or is an anchor, else its rank among the kept sources."""
    op = "TokenMatchCell"
    b, metric = _Body(op), _formal(op, "metric")
    r, h, w = (b.attr(a, AttributeProto.INT) for a in ("r", "height", "width"))
    sy, sx = b.attr("sy", AttributeProto.INT), b.attr("sx", AttributeProto.INT)
    n = b("Mul", h, w)
    pos = b("Range", b.const(0), n, b.const(1))  # [N]
    row = b("Div", pos, w)
    col = b("Sub", pos, b("Mul", row, w))
    cell_row, cell_col = b("Div", row, sy), b("Div", col, sx)
    anchor = b("Add", b("Mul", b("Mul", cell_row, sy), w), b("Mul", cell_col, sx))  # [N]
    cell = b("Add", b("Mul", cell_row, b("Div", w, sx)), cell_col)  # [N]
    is_anchor = b("Equal", anchor, pos)
    m = _normalize(b, metric)
    score = b("ReduceSum", b("Mul", m, b("Gather", m, anchor, axis=1)), b.const([2]), keepdims=0)  # [B, N]
    score = b("Where", is_anchor, b.const(float("-inf"), TensorProto.FLOAT), score)
    merged = _top_mask(b, score, r, n)
    n_src = b("Sub", n, b("Mul", b("Div", h, sy), b("Div", w, sx)))
    grouped = b("Or", merged, is_anchor)
    kept_rank = b("Sub", _cumsum(b, b("Cast", b("Not", grouped), to=TensorProto.FLOAT)), b.const(1))
    slot = b("Where", grouped, b("Add", b("Sub", n_src, r), cell), kept_rank)
    b.nodes.append(helper.make_node("Cast", [slot], [_formal(op, "slot", out=True)], to=TensorProto.INT32))
    return b.nodes


def _match_window() -> tuple[list[onnx.NodeProto], list[str]]:
    op = "TokenMatchWindow"
    b, metric = _Body(op), _formal(op, "metric")
    h, w = b.attr("height", AttributeProto.INT), b.attr("width", AttributeProto.INT)
    k, protect = b.attr("k", AttributeProto.INT), b.attr("protect", AttributeProto.INT)
    one_d = lambda t: b("Unsqueeze", t, b.const([0]))  # noqa: E731  scalar -> [1]
    shape = b("Shape", metric)
    batch = b("Slice", shape, b.const([0]), b.const([1]))
    n_tok = b("Slice", shape, b.const([1]), b.const([2]))
    chans = b("Slice", shape, b.const([2]), b.const([3]))
    h2, w2 = b("Div", h, b.const(2)), b("Div", w, b.const(2))
    m = _normalize(b, metric)
    patches = b("Slice", m, one_d(protect), n_tok, b.const([1]))
    t = b("Reshape", patches, b("Concat", batch, one_d(h2), b.const([2]), one_d(w2), b.const([2]), chans, axis=0))
    t = b("Transpose", t, perm=[0, 1, 3, 2, 4, 5])
    n_win = b("Mul", h2, w2)
    t = b("Reshape", t, b("Concat", batch, one_d(n_win), b.const([4]), chans, axis=0))  # [B, W, 4, C]
    gram = b("MatMul", t, b("Transpose", t, perm=[0, 1, 3, 2]))
    total = b("ReduceSum", gram, b.const([2, 3]), keepdims=0)
    diag = b("ReduceSum", b("Mul", t, t), b.const([2, 3]), keepdims=0)
    score = b("Div", b("Sub", total, diag), b.const(12.0, TensorProto.FLOAT))
    # Rank of every window in descending score order, ties to the lower window index, from all
    # pairwise comparisons ([B, W, W]; W = N/4, so a sixteenth of one attention score matrix):
    # no TopK (no K limit, no tie order to rely on). The k windows of rank < k merge.
    win_pos = b("Range", b.const(0), n_win, b.const(1))
    s_w, s_v = b("Unsqueeze", score, b.const([2])), b("Unsqueeze", score, b.const([1]))  # [B, W, 1], [B, 1, W]
    lower = b("Less", b("Unsqueeze", win_pos, b.const([0])), b("Unsqueeze", win_pos, b.const([1])))  # [W, W]: v < w
    ahead = b("Or", b("Greater", s_v, s_w), b("And", b("Equal", s_v, s_w), lower))  # v ranks before w
    win_rank = b("Cast", b("ReduceSum", b("Cast", ahead, to=TensorProto.FLOAT), b.const([2]), keepdims=0),
                 to=TensorProto.INT64)  # exact: counts below 2^24
    win_merged = b("Cast", b("Less", win_rank, k), to=TensorProto.INT64)

    def to_tokens(v: str) -> str:  # [B, W] -> [B, protect + h*w], protected positions 0
        v = b("Reshape", v, b("Concat", batch, one_d(h2), b.const([1]), one_d(w2), b.const([1]), axis=0))
        v = b("Expand", v, b("Concat", batch, one_d(h2), b.const([2]), one_d(w2), b.const([2]), axis=0))
        v = b("Reshape", v, b("Concat", batch, b.const([-1]), axis=0))
        lead = b("ConstantOfShape", b("Concat", batch, one_d(protect), axis=0),
                 value=helper.make_tensor("z", TensorProto.INT64, [1], [0]))
        return b("Concat", lead, v, axis=1)

    # Layout (docs/ops.md, ALGM's order): protected tokens 0..protect-1, merged window of rank w at
    # protect + w, the other tokens in input order from protect + k.
    tok_merged = to_tokens(win_merged)
    kept_rank = b("Sub", _cumsum(b, b("Cast", b("Sub", b.const(1), tok_merged), to=TensorProto.FLOAT)), b.const(1))
    tok_pos = b("Range", b.const(0), b("Squeeze", n_tok, b.const([0])), b.const(1))
    after_windows = b("Where", b("Less", tok_pos, protect), b.const(0), k)  # [N]
    slot = b("Where", b("Cast", tok_merged, to=TensorProto.BOOL), b("Add", protect, to_tokens(win_rank)),
             b("Add", kept_rank, after_windows))
    b.nodes.append(helper.make_node("Cast", [slot], [_formal(op, "slot", out=True)], to=TensorProto.INT32))
    return b.nodes


def _merge() -> tuple[list[onnx.NodeProto], list[str]]:
    """Sums in fp32 whatever the dtype of x (docs/ops.md): in fp16, size * x alone overflows
    once a ToMe token has absorbed a few dozen others (65504 / 50 is 1310)."""
    op = "TokenMerge"
    b = _Body(op)
    x, size_in, slot = (_formal(op, n) for n in ("x", "size", "slot"))
    num_out = b.attr("num_out", AttributeProto.INT)
    rng = b("Range", b.const(0), num_out, b.const(1))
    onehot = b("Equal", b("Unsqueeze", b("Cast", slot, to=TensorProto.INT64), b.const([2])), rng)  # [B, N, M]
    onehot_t = b("Transpose", b("Cast", onehot, to=TensorProto.FLOAT), perm=[0, 2, 1])
    size = b("Cast", size_in, to=TensorProto.FLOAT)
    sums = b("MatMul", onehot_t, b("Mul", b("Cast", x, to=TensorProto.FLOAT), size))
    merged_size = b("MatMul", onehot_t, size)
    merged = b("Div", sums, b("Max", merged_size, b.const(1e-6, TensorProto.FLOAT)))
    b.nodes.append(helper.make_node("CastLike", [merged, x], [_formal(op, "merged", out=True)]))
    b.nodes.append(helper.make_node("CastLike", [merged_size, size_in], [_formal(op, "merged_size", out=True)]))
    return b.nodes


def _per_cell(b: _Body, t: str, batch: str, grid: tuple[str, str, str, str], cells: str) -> str:
    """[B, N, c] -> [B, cells, c]: Reshape to [B, H/sy, sy, W/sx, sx, c], ReduceSum over the two
    in-cell axes. Every token lands in its own cell by its position: no scatter, no one-hot."""
    one_d = lambda v: b("Unsqueeze", v, b.const([0]))  # noqa: E731  scalar -> [1]
    rows, sy, cols, sx = grid
    t = b("Reshape", t, b("Concat", batch, one_d(rows), one_d(sy), one_d(cols), one_d(sx), b.const([-1]), axis=0))
    t = b("ReduceSum", t, b.const([2, 4]), keepdims=0)  # [B, H/sy, W/sx, c]
    return b("Reshape", t, b("Concat", batch, one_d(cells), b.const([-1]), axis=0))


def _merge_cell() -> tuple[list[onnx.NodeProto], list[str]]:
    """TokenMergeCell in standard ops, O(N C): TokenMerge on TokenMatchCell's slots without the
    [B, N, M] one-hot. Tokens with slot >= K (K = num_out - cells) are summed into their own cell by
    a Reshape + ReduceSum (`_per_cell`); the kept tokens' positions come from one ScatterElements
    without a reduction that writes each position to its slot (kept) or to K + its rank among the
    grouped tokens (a permutation of N, as in `_match_bipartite`), whose first K entries gather x
    and size. Products and sums in fp32 whatever the dtype of x, then one Div (docs/ops.md). Every
    intermediate has >= 1 row: the kept part is gathered for max(K, 1) rows and the surplus row
    sliced off the result when K = 0 (every source merged)."""
    op = "TokenMergeCell"
    b = _Body(op)
    x, size_in, slot = (_formal(op, n) for n in ("x", "size", "slot"))
    h, w, sy, sx, num_out = (b.attr(a, AttributeProto.INT) for a in ("height", "width", "sy", "sx", "num_out"))
    one_d = lambda v: b("Unsqueeze", v, b.const([0]))  # noqa: E731  scalar -> [1]
    rows, cols = b("Div", h, sy), b("Div", w, sx)
    cells = b("Mul", rows, cols)
    k = b("Sub", num_out, cells)
    shape = b("Shape", x)
    batch, chans = b("Slice", shape, b.const([0]), b.const([1])), b("Slice", shape, b.const([2]), b.const([3]))
    slot64 = b("Cast", slot, to=TensorProto.INT64)  # [B, N]
    grouped = b("Not", b("Less", slot64, k))
    grouped_f = b("Cast", grouped, to=TensorProto.FLOAT)
    xf, size = b("Cast", x, to=TensorProto.FLOAT), b("Cast", size_in, to=TensorProto.FLOAT)
    grouped_size = b("Mul", size, b("Unsqueeze", grouped_f, b.const([2])))  # [B, N, 1]
    grid = (rows, sy, cols, sx)
    cell_sums = _per_cell(b, b("Mul", xf, grouped_size), batch, grid, cells)  # [B, cells, C]
    cell_sizes = _per_cell(b, grouped_size, batch, grid, cells)  # [B, cells, 1]
    # the kept tokens' positions in slot order: position p goes to its slot when kept, to K + its
    # rank among the grouped otherwise; distinct targets covering 0..N-1, so no reduction is needed
    grouped_rank = b("Sub", _cumsum(b, grouped_f), b.const(1))
    target = b("Where", grouped, b("Add", k, grouped_rank), slot64)
    pos = b("Expand", b("Unsqueeze", b("Range", b.const(0), b("Mul", h, w), b.const(1)), b.const([0])), b("Shape", slot64))
    perm = b("ScatterElements", b("Mul", pos, b.const(0)), target, pos, axis=1)  # [B, N]
    k1 = b("Max", k, b.const(1))
    kept = b("Unsqueeze", b("Slice", perm, b.const([0]), one_d(k1), b.const([1])), b.const([2]))  # [B, max(K, 1), 1]
    kept_size = b("GatherElements", size, kept, axis=1)
    kept_x = b("GatherElements", xf, b("Expand", kept, b("Concat", batch, one_d(k1), chans, axis=0)), axis=1)
    first = one_d(b("Sub", k1, k))  # 1 when K = 0: the gathered row is not an output
    end = b("Add", first, one_d(num_out))
    sums = b("Slice", b("Concat", b("Mul", kept_x, kept_size), cell_sums, axis=1), first, end, b.const([1]))
    merged_size = b("Slice", b("Concat", kept_size, cell_sizes, axis=1), first, end, b.const([1]))
    merged = b("Div", sums, b("Max", merged_size, b.const(1e-6, TensorProto.FLOAT)))
    b.nodes.append(helper.make_node("CastLike", [merged, x], [_formal(op, "merged", out=True)]))
    b.nodes.append(helper.make_node("CastLike", [merged_size, size_in], [_formal(op, "merged_size", out=True)]))
    return b.nodes


def _unmerge() -> tuple[list[onnx.NodeProto], list[str]]:
    op = "TokenUnmerge"
    b = _Body(op)
    merged, slot = _formal(op, "merged"), _formal(op, "slot")
    chans = b("Slice", b("Shape", merged), b.const([2]), b.const([3]))
    idx = b("Expand", b("Unsqueeze", b("Cast", slot, to=TensorProto.INT64), b.const([2])),
            b("Concat", b("Shape", slot), chans, axis=0))
    b.nodes.append(helper.make_node("GatherElements", [merged, idx], [_formal(op, "x", out=True)], axis=1))
    return b.nodes


_BODIES = {
    "TokenMatchBipartite": _match_bipartite,
    "TokenMatchCell": _match_cell,
    "TokenMatchWindow": _match_window,
    "TokenMerge": _merge,
    "TokenMergeCell": _merge_cell,
    "TokenUnmerge": _unmerge,
}


def function_proto(op_type: str, opset: int) -> FunctionProto:
    """The model-local function for `op_type`; its default-domain opset must equal the model's."""
    inputs, outputs, attrs = OPS[op_type]
    return helper.make_function(
        DOMAIN, op_type, [_formal(op_type, i) for i in inputs], [_formal(op_type, o, out=True) for o in outputs],
        _BODIES[op_type](),
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
    elif op_type.startswith("TokenMerge"):
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
