"""The six `edgemerge` ops as plain data: one table that docs/ops.md, the ONNX exporter's nodes,
the Python `tensorrt.plugin` registration and the AOT kernel ABI are all checked against.

Imports nothing from TensorRT (nor torch), so the descriptors can be compared with docs/ops.md and
with an exported ONNX file on a machine without a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

DOMAIN = "edgemerge"  # ONNX domain of the nodes, also the TensorRT plugin namespace
PLUGIN_VERSION = "1"

FLOAT_TYPES = ("float32", "float16")


@dataclass(frozen=True)
class Attr:
    """An ONNX node attribute. `kind` is the ONNX attribute type: int, ints, float, string."""

    name: str
    kind: str
    to_plugin: bool = True  # False: consumed by TensorRT's ONNX parser, not a plugin field


@dataclass(frozen=True)
class Port:
    """An input or output tensor: name, allowed dtypes, shape in the symbols of docs/ops.md.

    `like` names the input whose dtype this tensor must have (or shares, for outputs).
    """

    name: str
    dtypes: tuple[str, ...]
    shape: tuple[str, ...]
    like: str | None = None


@dataclass(frozen=True)
class KernelABI:
    """How the AOT Python plugin launches the shared CUDA kernel body of an op (plugins/kernels/).

    TensorRT's AOT plugins launch one `extern "C" __global__` function whose arguments are
    (input pointers..., int32 scalars..., output pointers...). The kernel files order theirs
    differently, so the AOT path compiles a generated wrapper that `#include`s the kernel file and
    calls its `__device__` body template with `body_args` (port and scalar names, in the body's
    order). `grid(dims, cdiv)` -> (x, y) and `shared_mem(dims)` use the same launch geometry as the
    file's C++ launcher (`launchTokenMerge`, ...). Ops whose kernels need several launches and
    scratch memory (the match ops) have no single-launch body: their Python plugin is JIT.
    """

    source: str
    body: str  # with {T} for the element type
    body_args: tuple[str, ...]
    scalars: tuple[str, ...]
    block: int
    grid: Callable[[dict, Callable], tuple]
    shared_mem: Callable[[dict], object] = lambda dims: 0


@dataclass(frozen=True)
class OpSpec:
    name: str
    attributes: tuple[Attr, ...]
    inputs: tuple[Port, ...]
    outputs: tuple[Port, ...]
    kernel: KernelABI | None
    torch_op: str = ""  # the torch.library op (`torch.ops.edgemerge.<torch_op>`) the exporter translates

    @property
    def plugin_id(self) -> str:
        return f"{DOMAIN}::{self.name}"

    def plugin_attributes(self) -> tuple[Attr, ...]:
        return tuple(a for a in self.attributes if a.to_plugin)


_NS = Attr("plugin_namespace", "string", to_plugin=False)

OPS: dict[str, OpSpec] = {
    op.name: op
    for op in (
        OpSpec(
            name="TokenMatchBipartite",
            torch_op="match_bipartite",
            attributes=(Attr("r", "int"), Attr("src", "ints"), Attr("dst", "ints"),
                        Attr("protect", "int"), _NS),
            inputs=(Port("metric", ("float32",), ("B", "N", "C")),),
            outputs=(Port("slot", ("int32",), ("B", "N")),),
            kernel=None,  # four launches + scratch (tokenMatchBipartiteKernel.cu)
        ),
        OpSpec(
            name="TokenMatchCell",
            torch_op="match_cell",
            attributes=(Attr("r", "int"), Attr("height", "int"), Attr("width", "int"), Attr("sy", "int"),
                        Attr("sx", "int"), _NS),
            inputs=(Port("metric", ("float32",), ("B", "N", "C")),),
            outputs=(Port("slot", ("int32",), ("B", "N")),),
            kernel=None,  # three launches + scratch (tokenMatchCellKernel.cu)
        ),
        OpSpec(
            name="TokenMatchWindow",
            torch_op="match_window",
            attributes=(Attr("height", "int"), Attr("width", "int"), Attr("k", "int"),
                        Attr("protect", "int"), _NS),
            inputs=(Port("metric", ("float32",), ("B", "N", "C")),),
            outputs=(Port("slot", ("int32",), ("B", "N")),),
            kernel=None,  # four launches + scratch (tokenMatchWindowKernel.cu)
        ),
        OpSpec(
            name="TokenMerge",
            torch_op="token_merge",
            attributes=(Attr("num_out", "int"), _NS),
            inputs=(Port("x", FLOAT_TYPES, ("B", "N", "C")),
                    Port("size", FLOAT_TYPES, ("B", "N", "1"), like="x"),
                    Port("slot", ("int32",), ("B", "N"))),
            outputs=(Port("merged", FLOAT_TYPES, ("B", "M", "C"), like="x"),
                     Port("merged_size", FLOAT_TYPES, ("B", "M", "1"), like="x")),
            kernel=KernelABI(
                source="tokenMergeKernel.cu",
                body="tokenMergeBody<{T}>",
                body_args=("x", "size", "slot", "merged", "merged_size", "N", "M", "C"),
                scalars=("N", "M", "C"),
                block=128,  # kMergeBlock
                grid=lambda d, cdiv: (d["M"], d["B"]),
                # C floats + kMergeBlock ints; expression first: tensorrt.plugin's shape
                # expressions have no reflected operators (4 * C would raise)
                shared_mem=lambda d: d["C"] * 4 + 4 * 128,
            ),
        ),
        OpSpec(
            name="TokenMergeCell",
            torch_op="token_merge_cell",
            attributes=(Attr("height", "int"), Attr("width", "int"), Attr("sy", "int"), Attr("sx", "int"),
                        Attr("num_out", "int"), _NS),
            inputs=(Port("x", FLOAT_TYPES, ("B", "N", "C")),
                    Port("size", FLOAT_TYPES, ("B", "N", "1"), like="x"),
                    Port("slot", ("int32",), ("B", "N"))),
            outputs=(Port("merged", FLOAT_TYPES, ("B", "M", "C"), like="x"),
                     Port("merged_size", FLOAT_TYPES, ("B", "M", "1"), like="x")),
            kernel=KernelABI(
                source="tokenMergeCellKernel.cu",
                body="tokenMergeCellBody<{T}>",
                body_args=("x", "size", "slot", "merged", "merged_size", "N", "M", "C", "height", "width", "sy", "sx"),
                scalars=("N", "M", "C", "height", "width", "sy", "sx"),
                block=128,  # kMergeCellBlock
                # a block per token (kept ones copy themselves) and one per cell; the attributes are ints
                grid=lambda d, cdiv: (d["N"] + (d["height"] // d["sy"]) * (d["width"] // d["sx"]), d["B"]),
            ),
        ),
        OpSpec(
            name="TokenUnmerge",
            torch_op="token_unmerge",
            attributes=(_NS,),
            inputs=(Port("merged", FLOAT_TYPES, ("B", "M", "C")),
                    Port("slot", ("int32",), ("B", "N"))),
            outputs=(Port("x", FLOAT_TYPES, ("B", "N", "C"), like="merged"),),
            kernel=KernelABI(
                source="tokenUnmergeKernel.cu",
                body="tokenUnmergeBody<{T}>",
                body_args=("merged", "slot", "x", "B", "N", "M", "C"),
                scalars=("B", "N", "M", "C"),
                block=256,  # grid-stride loop: any grid
                grid=lambda d, cdiv: (cdiv(d["B"] * d["N"] * d["C"], 256), 1),
            ),
        ),
    )
}


def descriptors() -> dict[str, dict]:
    """The table as plain dicts: op -> {attributes: [(name, kind)], inputs/outputs: [(name, dtypes)]}."""
    return {
        name: {
            "attributes": [(a.name, a.kind) for a in op.attributes],
            "inputs": [(p.name, p.dtypes) for p in op.inputs],
            "outputs": [(p.name, p.dtypes) for p in op.outputs],
        }
        for name, op in OPS.items()
    }


_ONNX_DTYPES = {1: "float32", 10: "float16", 6: "int32", 7: "int64"}
_ONNX_ATTR_KINDS = {1: "float", 2: "int", 3: "string", 6: "floats", 7: "ints"}


def check_onnx_model(model) -> list[str]:
    """Problems with the `edgemerge` nodes of an `onnx.ModelProto` (empty list: all agree).

    Checks per node: a known op, exactly the spec's attributes with the right kinds,
    `plugin_namespace == "edgemerge"`, the number of inputs/outputs, the dtypes where the graph
    states them, and a model-local function of the same domain/name (so ORT and TensorRT without
    the plugin can run it).
    """
    problems: list[str] = []
    graph = model.graph
    dtypes: dict[str, str] = {}
    for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
        et = vi.type.tensor_type.elem_type
        if et:
            dtypes[vi.name] = _ONNX_DTYPES.get(et, str(et))
    for init in graph.initializer:
        dtypes[init.name] = _ONNX_DTYPES.get(init.data_type, str(init.data_type))
    functions = {(f.domain, f.name) for f in model.functions}

    for node in graph.node:
        if node.domain != DOMAIN:
            continue
        where = f"node {node.name or node.op_type!r} ({node.op_type})"
        op = OPS.get(node.op_type)
        if op is None:
            problems.append(f"{where}: unknown op in domain {DOMAIN!r}")
            continue
        got = {a.name: _ONNX_ATTR_KINDS.get(a.type, str(a.type)) for a in node.attribute}
        want = {a.name: a.kind for a in op.attributes}
        if got != want:
            problems.append(f"{where}: attributes {sorted(got.items())} != spec {sorted(want.items())}")
        ns = [a.s.decode() for a in node.attribute if a.name == "plugin_namespace"]
        if ns and ns[0] != DOMAIN:
            problems.append(f"{where}: plugin_namespace={ns[0]!r}, expected {DOMAIN!r}")
        if len(node.input) != len(op.inputs) or len(node.output) != len(op.outputs):
            problems.append(
                f"{where}: {len(node.input)} inputs/{len(node.output)} outputs, "
                f"spec has {len(op.inputs)}/{len(op.outputs)}")
            continue
        for ports, names in ((op.inputs, node.input), (op.outputs, node.output)):
            for port, tname in zip(ports, names):
                dt = dtypes.get(tname)
                if dt is not None and dt not in port.dtypes:
                    problems.append(f"{where}: {port.name} ({tname}) is {dt}, spec allows {port.dtypes}")
        if (DOMAIN, node.op_type) not in functions:
            problems.append(f"{where}: no model-local function {DOMAIN}::{node.op_type}")
    return problems
