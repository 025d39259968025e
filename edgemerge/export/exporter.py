"""PyTorch -> ONNX: merge ops as `edgemerge` nodes with their function bodies, or inlined.

torch's dynamo exporter sees each merge op as one opaque `torch.ops.edgemerge.*` call; the
translation table below, derived from the op spec (edgemerge/contracts/opspec.py), writes it as a node in
the `edgemerge` domain whose op_type is the TensorRT plugin name, with `plugin_namespace` and its
static counts as attributes. `finalize`
then adds the model-local functions (plugin mode) or inlines them (native mode).
"""

from __future__ import annotations

import copy
import inspect
import io
import logging
import warnings
from contextlib import redirect_stderr, redirect_stdout
from typing import Any, Callable

import onnx
import onnxscript
import torch
from torch import Tensor, nn

from edgemerge.export import functions as F
from edgemerge.merge import ops as _ops  # noqa: F401  (registers torch.ops.edgemerge.*)
from edgemerge.contracts.errors import EdgemergeError
from edgemerge.export.fp16 import keep_fp32
from edgemerge.contracts.graphs import inline_merge_ops, name_merge_sites, record_match_metrics, reserved_names
from edgemerge.contracts.opspec import OPS, OpSpec

_E = onnxscript.values.Opset(F.DOMAIN, F.DOMAIN_VERSION)
_NS = F.PLUGIN_NAMESPACE


def _translation(spec: OpSpec) -> Callable[..., Any]:
    """The exporter's translation of `torch.ops.edgemerge.<spec.torch_op>`: one node in the
    `edgemerge` domain named as the plugin, the op's inputs, its plugin attributes and
    `plugin_namespace`.

    The exporter matches a translation's parameters to the torch op's arguments through its
    signature (names; `int` annotations mark attributes), so the signature is the spec's: inputs,
    then plugin attributes, as the torch ops in merge/ops.py declare them (tests/export/
    test_functions.py checks both against the spec)."""
    ins = [p.name for p in spec.inputs]
    attrs = spec.plugin_attributes()
    params = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in ins]
    params += [inspect.Parameter(a.name, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                 annotation=int if a.kind == "int" else inspect.Parameter.empty) for a in attrs]
    sig = inspect.Signature(params)
    node = getattr(_E, spec.name)
    outputs = {"_outputs": len(spec.outputs)} if len(spec.outputs) > 1 else {}

    def translate(*args: Any, **kwargs: Any) -> Any:
        bound = sig.bind(*args, **kwargs).arguments
        values = {a.name: list(bound[a.name]) if a.kind == "ints" else bound[a.name] for a in attrs}
        return node(*(bound[n] for n in ins), **values, plugin_namespace=_NS, **outputs)

    translate.__signature__ = sig  # type: ignore[attr-defined]
    translate.__annotations__ = {a.name: int for a in attrs if a.kind == "int"}
    translate.__name__ = translate.__qualname__ = f"_{spec.torch_op}"
    return translate


TRANSLATIONS = {getattr(torch.ops.edgemerge, spec.torch_op).default: _translation(spec) for spec in OPS.values()}


class IOCast(nn.Module):
    """fp32 images in, fp32 logits out, the model itself in `dtype` (fp16 exports)."""

    def __init__(self, model: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.model = copy.deepcopy(model).to(dtype)  # the fp32 reference stays as it is
        for name in getattr(model, "fp32_modules", ()):  # parts the model wants kept in fp32
            getattr(self.model, name).float()
        self.dtype = dtype

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images.to(self.dtype)).float()


def torch_to_onnx(model: nn.Module, example: Tensor, opset: int, optimize: bool = True) -> onnx.ModelProto:
    """Run torch's dynamo exporter quietly; static shapes (no dynamic axes).

    `optimize=False` leaves out onnxscript's optimizer (a tenth of a minute on segformer-b5) for
    callers that run it later anyway, as `finalize` does for native graphs."""
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    sink = io.StringIO()
    with warnings.catch_warnings(), redirect_stdout(sink), redirect_stderr(sink), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (example,), dynamo=True, opset_version=opset,
                                    custom_translation_table=TRANSLATIONS, input_names=["images"],
                                    output_names=["logits"], optimize=optimize, verbose=False)
    return program.model_proto


def model_opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _drop_stack_traces(model: onnx.ModelProto) -> None:
    """torch's exporter stores each node's Python stack trace, with absolute paths of this install,
    in its metadata: the same export would differ byte for byte between machines (and ship the
    user's directory layout). Class hierarchy and name scopes carry no paths and stay."""
    for node in model.graph.node:
        keep = [p for p in node.metadata_props if p.key != "pkg.torch.onnx.stack_trace"]
        if len(keep) != len(node.metadata_props):
            del node.metadata_props[:]
            node.metadata_props.extend(keep)


def finalize(model: onnx.ModelProto, *, merge_ops: str, precision: str) -> onnx.ModelProto:
    """Attach function bodies (plugin) or inline them (native); fp32 islands for fp16 graphs."""
    if precision == "fp16":
        model = keep_fp32(model)
    opset = model_opset(model)
    used = sorted({n.op_type for n in model.graph.node if n.domain == F.DOMAIN})
    del model.functions[:]
    model.functions.extend(F.function_proto(op, opset) for op in used)
    clash = reserved_names(model)
    if clash:
        raise EdgemergeError(f"the exported graph uses tensor names reserved for the merge-op bodies: {clash[:3]}")
    name_merge_sites(model)
    if merge_ops == "native":
        record_match_metrics(model)  # what validate reads the matchings' inputs from
        # The bodies compute counts (TopK's K, reshape sizes) from attribute constants; folding
        # them is the only optimizer pass a native export gets (torch_to_onnx(optimize=False)).
        model = inline_merge_ops(model)
    elif used and not any(o.domain == F.DOMAIN for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid(F.DOMAIN, F.DOMAIN_VERSION))
    _drop_stack_traces(model)
    model.producer_name = "edgemerge"
    from edgemerge import __version__

    model.producer_version = __version__
    return model
