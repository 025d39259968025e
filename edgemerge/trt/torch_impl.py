"""The JIT Python plugin's body: the PyTorch references of `edgemerge.merge.ops`, by plugin name.

The JIT plugin calls `run` on TensorRT's CUDA stream; the references run on any device, so the
plugin computes exactly what export's self-check and the validator compare against.
"""

from __future__ import annotations

import torch

from edgemerge.merge import ops


def run(op_name: str, inputs: list[torch.Tensor], attrs: dict) -> list[torch.Tensor]:
    """Dispatch by op name with the plugin's inputs and attributes; returns the outputs in order."""
    if op_name == "TokenMatchBipartite":
        return [ops.match_bipartite_ref(inputs[0], int(attrs["r"]), [int(i) for i in attrs["src"]],
                                        [int(i) for i in attrs["dst"]], int(attrs["protect"]))]
    if op_name == "TokenMatchCell":
        return [ops.match_cell_ref(inputs[0], *(int(attrs[k]) for k in ("r", "height", "width", "sy", "sx")))]
    if op_name == "TokenMatchWindow":
        return [ops.match_window_ref(inputs[0], int(attrs["height"]), int(attrs["width"]),
                                     int(attrs["k"]), int(attrs["protect"]))]
    if op_name == "TokenMerge":
        return list(ops.token_merge_ref(inputs[0], inputs[1], inputs[2], int(attrs["num_out"])))
    if op_name == "TokenMergeCell":
        return list(ops.token_merge_cell_ref(inputs[0], inputs[1], inputs[2],
                                             *(int(attrs[k]) for k in ("height", "width", "sy", "sx", "num_out"))))
    if op_name == "TokenUnmerge":
        return [ops.token_unmerge_ref(inputs[0], inputs[1])]
    raise KeyError(op_name)
