"""What the TensorRT-safe lowering of TokenMerge costs, measured on ONNX Runtime CPU.

Compares the function body edgemerge ships (one-hot [B, N, M] MatMul, then Div) with the
lowering TensorRT cannot be trusted with (ScatterElements with reduction="add"), on the token
counts of Segformer++ stage 3 of segformer-b5 at 1024x1024 (4096 queries, 320 channels).

    python benchmarks/lowering_cost.py [--iters 50]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from edgemerge.export.functions import DOMAIN, function_proto


def merge_model(n: int, m: int, c: int, scatter: bool) -> bytes:
    if scatter:  # sums via ScatterElements(add): what TensorRT gets wrong (NVIDIA/TensorRT #3750)
        nodes = [
            helper.make_node("Mul", ["x", "size"], ["xs"]),
            helper.make_node("Cast", ["slot"], ["s64"], to=TensorProto.INT64),
            helper.make_node("Unsqueeze", ["s64", "ax"], ["s3"]),
            helper.make_node("Expand", ["s3", "shape_c"], ["idx"]),
            helper.make_node("ScatterElements", ["zeros_c", "idx", "xs"], ["sums"], axis=1, reduction="add"),
            helper.make_node("ScatterElements", ["zeros_1", "s3", "size"], ["merged_size"], axis=1, reduction="add"),
            helper.make_node("Div", ["sums", "merged_size"], ["merged"]),
        ]
        inits = [helper.make_tensor("ax", TensorProto.INT64, [1], [2]),
                 helper.make_tensor("shape_c", TensorProto.INT64, [3], [1, n, c]),
                 helper.make_tensor("zeros_c", TensorProto.FLOAT, [1, m, c], np.zeros(m * c, np.float32)),
                 helper.make_tensor("zeros_1", TensorProto.FLOAT, [1, m, 1], np.zeros(m, np.float32))]
        funcs, imports = [], [helper.make_opsetid("", 18)]
    else:
        nodes = [helper.make_node("TokenMerge", ["x", "size", "slot"], ["merged", "merged_size"], domain=DOMAIN,
                                  num_out=m, plugin_namespace="edgemerge")]
        inits, funcs = [], [function_proto("TokenMerge", 18)]
        imports = [helper.make_opsetid("", 18), helper.make_opsetid(DOMAIN, 1)]
    graph = helper.make_graph(nodes, "merge", [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n, c]),
        helper.make_tensor_value_info("size", TensorProto.FLOAT, [1, n, 1]),
        helper.make_tensor_value_info("slot", TensorProto.INT32, [1, n])],
        [helper.make_tensor_value_info("merged", TensorProto.FLOAT, [1, m, c])], inits)
    return helper.make_model(graph, opset_imports=imports, functions=funcs, ir_version=10).SerializeToString()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=50)
    args = ap.parse_args()
    n, c = 4096, 320
    rng = np.random.default_rng(0)
    for m in (410, 820):  # fast / hq kept queries
        slot = np.concatenate([np.arange(m), rng.integers(0, m, n - m)]).astype(np.int32)[None]
        feeds = {"x": rng.standard_normal((1, n, c), np.float32), "size": np.ones((1, n, 1), np.float32), "slot": slot}
        sessions = {k: ort.InferenceSession(merge_model(n, m, c, k == "scatter_add"), providers=["CPUExecutionProvider"])
                    for k in ("onehot_matmul", "scatter_add")}
        times = {k: [] for k in sessions}
        outs = {k: s.run(None, feeds)[0] for k, s in sessions.items()}
        for _ in range(args.iters):  # interleaved
            for k, s in sessions.items():
                t = time.perf_counter()
                s.run(None, feeds)
                times[k].append(time.perf_counter() - t)
        med = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
        err = float(np.abs(outs["onehot_matmul"] - outs["scatter_add"]).max())
        print(f"N={n} M={m} C={c}: one-hot MatMul {med['onehot_matmul']:.2f} ms, ScatterElements(add) "
              f"{med['scatter_add']:.2f} ms, ratio {med['onehot_matmul'] / med['scatter_add']:.1f}x, max diff {err:.1e}")


if __name__ == "__main__":
    main()
