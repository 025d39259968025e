"""ONNX graph transforms that the exporter and the TensorRT side share (torch-free).

`inline_merge_ops` is how a graph with `edgemerge` nodes becomes the standard-op graph that
`--merge-ops native` exports and that a TensorRT build without our plugins is given: the model-local
functions inlined, then folded, so every count (TopK's K, reshape sizes) is a plain constant.
Needs onnx and onnxscript, not torch, so `edgemerge build` and the device script can derive it;
onnx is imported where it is used, so the device side imports this module without it.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

from edgemerge.contracts.opspec import DOMAIN, OPS

if TYPE_CHECKING:
    import onnx

MATCH_OPS = tuple(name for name in OPS if name.startswith("TokenMatch"))
# In a native (inlined) graph the op's output keeps the exporter's name: a Cast to int32 named so.
_NATIVE_SLOT = re.compile(rf"^({'|'.join(OPS[n].torch_op for n in MATCH_OPS)})(_\d+)?$")  # match_bipartite, ...
# Tensor names inside the function bodies start with this; export refuses an outer graph that uses
# it, so the parser's local-function importer (which binds by name) can never confuse the two.
BODY_PREFIX = "__edgemerge_"


def inline_merge_ops(model: "onnx.ModelProto") -> "onnx.ModelProto":
    """The model with its `edgemerge` functions inlined and constants folded (no custom domain)."""
    import onnx.inliner
    import onnxscript.optimizer

    model = onnx.inliner.inline_local_functions(model)
    keep = [o for o in model.opset_import if o.domain != DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(keep)
    return onnxscript.optimizer.optimize(model)


def merge_sites(model: "onnx.ModelProto") -> dict[str, list[str]]:
    """op_type -> the names of its `edgemerge` nodes, in graph order: the plugin layers an engine
    built with our plugins must hold (the parser names each layer after its node)."""
    sites: dict[str, list[str]] = {}
    for node in model.graph.node:
        if node.domain == DOMAIN:
            sites.setdefault(node.op_type, []).append(node.name)
    return sites


def name_merge_sites(model: "onnx.ModelProto") -> None:
    """Give every `edgemerge` node a unique, stable name (`TokenMerge_3`) where it has none or
    shares one: the build record matches plugin layers to sites by these names."""
    taken = {n.name for n in model.graph.node if n.domain != DOMAIN}
    counts: dict[str, int] = {}
    for node in model.graph.node:
        if node.domain != DOMAIN:
            continue
        if not node.name or node.name in taken:
            i = counts.get(node.op_type, 0)
            while f"{node.op_type}_{i}" in taken:
                i += 1
            node.name = f"{node.op_type}_{i}"
            counts[node.op_type] = i + 1
        taken.add(node.name)


def reserved_names(model: "onnx.ModelProto") -> list[str]:
    """Outer-graph tensor names that use the function bodies' reserved prefix."""
    g = model.graph
    names = [v.name for v in list(g.input) + list(g.output) + list(g.value_info)]
    names += [t.name for t in g.initializer] + [o for n in g.node for o in n.output]
    return sorted({n for n in names if n.startswith(BODY_PREFIX)})


def slot_tensors(model) -> list[str] | None:
    """Names of the slot tensors in graph order: outputs of TokenMatch* nodes (plugin mode) or
    the int32 Casts that end their inlined bodies (native mode); None when none can be found."""
    import onnx

    names = [n.output[0] for n in model.graph.node if n.op_type in MATCH_OPS]
    if not names:
        names = [n.output[0] for n in model.graph.node if n.op_type == "Cast" and _NATIVE_SLOT.match(n.output[0])
                 and any(a.name == "to" and a.i == onnx.TensorProto.INT32 for a in n.attribute)]
    return names or None


MATCH_METRICS_KEY = "edgemerge.match_metrics"


def record_match_metrics(model: "onnx.ModelProto") -> None:
    """Before inlining: note each match node's metric input in the model's metadata_props, so a
    native graph (no match nodes left) still tells which tensors its matchings read."""
    import json

    names = [n.input[0] for n in model.graph.node if n.op_type in MATCH_OPS]
    if names:
        entry = model.metadata_props.add()
        entry.key, entry.value = MATCH_METRICS_KEY, json.dumps(names)


def match_metrics(model) -> list[str] | None:
    """Names of the tensors the merge sites match on, in graph order (the slot tensors' order):
    the TokenMatch* nodes' first inputs, or what `record_match_metrics` noted before inlining;
    None when they cannot be found."""
    import json

    names = [n.input[0] for n in model.graph.node if n.op_type in MATCH_OPS]
    if not names:
        noted = next((p.value for p in model.metadata_props if p.key == MATCH_METRICS_KEY), None)
        produced = {o for n in model.graph.node for o in n.output}
        names = json.loads(noted) if noted else []
        if not all(n in produced for n in names):
            return None
    return names or None


def with_outputs(model, names: list[str]):
    """A copy of `model` (onnx.ModelProto) with `names` added to its graph outputs (types left to
    the runtime)."""
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    have = {o.name for o in out.graph.output}
    for name in names:
        if name not in have:
            out.graph.output.append(onnx.ValueInfoProto(name=name))
            have.add(name)
    return out


def onnx_has_fp16(onnx_path: str | os.PathLike) -> bool:
    """Whether the graph is fp16-typed: float16 inputs, outputs, initializers, value_info or Casts."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    F16 = onnx.TensorProto.FLOAT16
    g = model.graph
    if any(v.type.tensor_type.elem_type == F16 for v in list(g.input) + list(g.output) + list(g.value_info)):
        return True
    if any(t.data_type == F16 for t in g.initializer):
        return True
    for node in g.node:
        if node.op_type == "Cast" and any(a.name == "to" and a.i == F16 for a in node.attribute):
            return True
        if node.op_type == "Constant" and any(a.t.data_type == F16 for a in node.attribute if a.type == 4):
            return True
    return False
