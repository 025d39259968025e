"""Small builders shared by the TensorRT tests: one-op models (the exporter's own node and function
body, from `one_op_model`), a bundle around one, and the reference outputs for it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

OPSET = 17


def op_case(op_type: str, dtype=np.float32, seed: int = 0) -> tuple[dict, dict, list[np.ndarray]]:
    """(feeds, attributes, reference outputs) for one op; the reference is edgemerge.merge.ops."""
    import torch

    from edgemerge.merge import core, ops

    g = np.random.default_rng(seed)
    t = torch.from_numpy
    if op_type == "TokenMatchBipartite":  # 8x8 grid, 4x4 cells: r > S - r, TopK over the kept side
        src, dst = core.grid(8, 8, 4, 4)
        feeds = {"metric": g.standard_normal((2, 64, 16)).astype(np.float32)}
        attrs = {"r": 50, "src": list(src), "dst": list(dst), "protect": 0}
        return feeds, attrs, [ops.match_bipartite_ref(t(feeds["metric"]), **attrs).numpy()]
    if op_type == "TokenMatchCell":  # 8x8 grid, 2x2 cells, r of 48 sources
        feeds = {"metric": g.standard_normal((2, 64, 16)).astype(np.float32)}
        attrs = {"r": 30, "height": 8, "width": 8, "sy": 2, "sx": 2}
        return feeds, attrs, [ops.match_cell_ref(t(feeds["metric"]), **attrs).numpy()]
    if op_type == "TokenMatchWindow":
        feeds = {"metric": g.standard_normal((2, 1 + 8 * 8, 16)).astype(np.float32)}
        attrs = {"height": 8, "width": 8, "k": 6, "protect": 1}
        return feeds, attrs, [ops.match_window_ref(t(feeds["metric"]), **attrs).numpy()]
    if op_type == "TokenMerge":
        feeds = {"x": g.standard_normal((2, 40, 24)).astype(dtype),
                 "size": g.integers(1, 6, (2, 40, 1)).astype(dtype),
                 "slot": g.integers(0, 11, (2, 40)).astype(np.int32)}  # slots 11, 12 stay empty
        attrs = {"num_out": 13}
        merged, size = ops.token_merge_ref(t(feeds["x"]), t(feeds["size"]), t(feeds["slot"]), 13)
        return feeds, attrs, [merged.numpy(), size.numpy()]
    if op_type == "TokenMergeCell":  # TokenMatchCell's slots on an 8x8 grid, 2x1 cells, r = 20 of 32 sources
        attrs = {"height": 8, "width": 8, "sy": 2, "sx": 1, "num_out": 44}
        slot = ops.match_cell_ref(t(g.standard_normal((2, 64, 8)).astype(np.float32)), 20, 8, 8, 2, 1)
        feeds = {"x": g.standard_normal((2, 64, 24)).astype(dtype),
                 "size": g.integers(1, 6, (2, 64, 1)).astype(dtype), "slot": slot.numpy()}
        merged, size = ops.token_merge_cell_ref(t(feeds["x"]), t(feeds["size"]), slot, **attrs)
        return feeds, attrs, [merged.numpy(), size.numpy()]
    if op_type == "TokenUnmerge":
        feeds = {"merged": g.standard_normal((2, 3, 4)).astype(dtype),
                 "slot": g.integers(0, 3, (2, 5)).astype(np.int32)}
        return feeds, {}, [ops.token_unmerge_ref(t(feeds["merged"]), t(feeds["slot"])).numpy()]
    raise KeyError(op_type)


def op_model(op_type: str, dtype=np.float32, with_function: bool = True):
    from edgemerge.export.functions import one_op_model

    feeds, attrs, _ = op_case(op_type, dtype)
    model = one_op_model(op_type, feeds, opset=OPSET, **attrs)
    if not with_function:
        del model.functions[:]
    return model


def unmerge_model(dtype=np.float32, with_function: bool = True):
    """A model with one edgemerge::TokenUnmerge node and its function body (GatherElements)."""
    return op_model("TokenUnmerge", dtype, with_function)


def write_bundle(directory: Path, precision="fp32", merge_ops="plugin", model=None, manifest=True) -> Path:
    """model.onnx (+ manifest.json) in `directory`; returns the ONNX path.

    merge_ops="native" writes the model with its function bodies inlined, as export does."""
    import onnx
    import onnx.inliner
    import onnxscript.optimizer

    from edgemerge.contracts.graphs import merge_sites

    directory.mkdir(parents=True, exist_ok=True)
    onnx_path = directory / "model.onnx"
    model = model or unmerge_model(np.float16 if precision == "fp16" else np.float32)
    if merge_ops == "native":
        model = onnxscript.optimizer.optimize(onnx.inliner.inline_local_functions(model))
    onnx.save(model, str(onnx_path))

    def ports(values) -> list[dict]:
        return [{"name": v.name, "shape": [d.dim_value for d in v.type.tensor_type.shape.dim],
                 "dtype": onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name} for v in values]

    if manifest:
        (directory / "manifest.json").write_text(json.dumps({
            "model": "test-" + model.graph.name, "variant": "none", "resolution": [1, 1], "precision": precision, "merge_ops": merge_ops,
            "onnx_sha256": hashlib.sha256(onnx_path.read_bytes()).hexdigest(),
            "inputs": ports(model.graph.input), "outputs": ports(model.graph.output),
            "merge_sites": merge_sites(model),
        }))
    return onnx_path
