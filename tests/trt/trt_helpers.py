"""Small builders shared by the tests: a one-op TokenUnmerge ONNX model and a bundle around it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np


def unmerge_model(B=2, M=3, N=5, C=4, dtype=np.float32, with_function=True):
    """A model with one edgemerge::TokenUnmerge node and its function body (GatherElements)."""
    import onnx
    from onnx import TensorProto, helper

    elem = TensorProto.FLOAT16 if dtype == np.float16 else TensorProto.FLOAT
    opset = 17
    node = helper.make_node("TokenUnmerge", ["merged", "slot"], ["x"], domain="edgemerge",
                            name="unmerge0", plugin_namespace="edgemerge")
    # function body: x = GatherElements(merged, Expand(Unsqueeze(Cast(slot, int64), -1), [B,N,C]), axis=1)
    body = [
        helper.make_node("Cast", ["slot"], ["slot64"], to=TensorProto.INT64),
        helper.make_node("Constant", [], ["axes"], value=helper.make_tensor("axes", TensorProto.INT64, [1], [-1])),
        helper.make_node("Unsqueeze", ["slot64", "axes"], ["idx1"]),
        helper.make_node("Shape", ["idx1"], ["s_idx"]),
        helper.make_node("Shape", ["merged"], ["s_m"]),
        helper.make_node("Constant", [], ["zero"], value=helper.make_tensor("zero", TensorProto.INT64, [1], [0])),
        helper.make_node("Constant", [], ["two"], value=helper.make_tensor("two", TensorProto.INT64, [1], [2])),
        helper.make_node("Constant", [], ["three"], value=helper.make_tensor("three", TensorProto.INT64, [1], [3])),
        helper.make_node("Slice", ["s_idx", "zero", "two"], ["bn"]),
        helper.make_node("Slice", ["s_m", "two", "three"], ["c"]),
        helper.make_node("Concat", ["bn", "c"], ["shape"], axis=0),
        helper.make_node("Expand", ["idx1", "shape"], ["idx"]),
        helper.make_node("GatherElements", ["merged", "idx"], ["x"], axis=1),
    ]
    functions = []
    if with_function:
        functions.append(helper.make_function("edgemerge", "TokenUnmerge", ["merged", "slot"], ["x"], body,
                                              [helper.make_opsetid("", opset)], ["plugin_namespace"]))
    graph = helper.make_graph(
        [node], "unmerge",
        [helper.make_tensor_value_info("merged", elem, [B, M, C]),
         helper.make_tensor_value_info("slot", TensorProto.INT32, [B, N])],
        [helper.make_tensor_value_info("x", elem, [B, N, C])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                    helper.make_opsetid("edgemerge", 1)],
                              functions=functions)
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def write_bundle(directory: Path, precision="fp32", merge_ops="plugin", model=None, manifest=True) -> Path:
    """model.onnx (+ manifest.json) in `directory`; returns the ONNX path."""
    import onnx

    directory.mkdir(parents=True, exist_ok=True)
    onnx_path = directory / "model.onnx"
    dtype = np.float16 if precision == "fp16" else np.float32
    onnx.save(model or unmerge_model(dtype=dtype), str(onnx_path))
    if manifest:
        (directory / "manifest.json").write_text(json.dumps({
            "model": "test-unmerge", "variant": "none", "precision": precision, "merge_ops": merge_ops,
            "onnx_sha256": hashlib.sha256(onnx_path.read_bytes()).hexdigest(),
            "inputs": [{"name": "merged", "shape": [2, 3, 4], "dtype": "float32"},
                       {"name": "slot", "shape": [2, 5], "dtype": "int32"}],
            "outputs": [{"name": "x", "shape": [2, 5, 4], "dtype": "float32"}],
        }))
    return onnx_path
