"""Keep the numerically sensitive ops of an fp16 graph in fp32, with explicit Casts.

The model is exported from PyTorch already in fp16 (a strongly typed graph that TensorRT 11
builds as it is); this pass wraps the ops where fp16 loses accuracy — normalisations, Softmax,
reductions — in Cast(fp32) ... Cast(fp16). Matching already runs in fp32 (the model casts the
metric before the match op). fp16 initializers feeding a wrapped op are stored in fp32 instead.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FP32_OPS = frozenset({"LayerNormalization", "Softmax", "ReduceMean", "ReduceSum", "ReduceL2",
                      "ReduceSumSquare", "BatchNormalization", "InstanceNormalization", "Pow", "Sqrt"})


def keep_fp32(model: onnx.ModelProto) -> onnx.ModelProto:
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {vi.name: vi.type.tensor_type.elem_type
             for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}
    inits = {t.name: t for t in model.graph.initializer}
    types.update({name: t.data_type for name, t in inits.items()})
    graph = model.graph
    new_nodes: list[onnx.NodeProto] = []
    n = 0
    for node in graph.node:
        if node.op_type not in FP32_OPS or not any(types.get(i) == TensorProto.FLOAT16 for i in node.input):
            new_nodes.append(node)
            continue
        for j, name in enumerate(node.input):
            if types.get(name) != TensorProto.FLOAT16:
                continue
            if name in inits:  # a weight: store it in fp32
                arr = numpy_helper.to_array(inits[name]).astype(np.float32)
                new_name = f"{name}__fp32"
                if new_name not in inits:
                    inits[new_name] = numpy_helper.from_array(arr, new_name)
                    graph.initializer.append(inits[new_name])
                node.input[j] = new_name
            else:
                cast_out = f"{name}__fp32_{n}"
                n += 1
                new_nodes.append(helper.make_node("Cast", [name], [cast_out], to=TensorProto.FLOAT,
                                                  name=f"{node.name}_in{j}_to_fp32"))
                node.input[j] = cast_out
        new_nodes.append(node)
        for j, name in enumerate(node.output):
            if name and types.get(name) == TensorProto.FLOAT16:
                node.output[j] = f"{name}__fp32"
                new_nodes.append(helper.make_node("Cast", [node.output[j]], [name], to=TensorProto.FLOAT16,
                                                  name=f"{node.name}_out{j}_to_fp16"))
    del graph.node[:]
    graph.node.extend(new_nodes)
    # drop fp16 initializers nothing reads any more
    used = {i for nd in graph.node for i in nd.input}
    keep = [t for t in graph.initializer if t.name in used or t.name in {o.name for o in graph.output}]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    # value_info stays valid: every original tensor name keeps its type (new names are added)
    return model
