"""The op table against docs/ops.md, against an ONNX model, and against the plugin signatures."""

import re
from pathlib import Path

import pytest

from edgemerge.contracts import opspec
from edgemerge.trt.plugins import aot_source, autotune_combination, plugin_signatures
from trt_helpers import unmerge_model

OPS_MD = Path(__file__).resolve().parents[2] / "docs" / "ops.md"
DTYPES = {"float32", "float16", "int32"}


def parse_ops_md():
    """op -> {attributes: [(name, kind|None)], inputs/outputs: [(name, shape, dtypes|None)]}."""
    text = OPS_MD.read_text()
    ops = {}
    for section in re.split(r"^## ", text, flags=re.M)[1:]:
        title = section.splitlines()[0].split()[0]
        if title not in opspec.OPS:
            continue
        items = re.split(r"^- ", section, flags=re.M)
        entry = {}
        for item in items[1:]:
            key, _, rest = item.partition(":")
            rest = " ".join(rest.split())
            if key == "attributes":
                rest = re.sub(r"\([^()]*\)", "", rest)
                entry["attributes"] = [(n, k or None) for n, k in
                                       re.findall(r"`(\w+)`\s*(ints|int|string|float)?", rest)]
            elif key in ("inputs", "output", "outputs"):
                ports = []
                for name, shape, tail in re.findall(r"`(\w+) \[([^\]]*)\]([^`]*)`", rest):
                    after = rest.split(f"`{name} [{shape}]{tail}`", 1)[1]
                    words = (tail.strip().split() or after.strip(" ,").split()[:1])
                    dt = set(words[0].strip(",").split("/")) if words else set()
                    ports.append((name, tuple(s.strip() for s in shape.split(",")),
                                  dt if dt and dt <= DTYPES else None))
                entry["outputs" if key.startswith("output") else "inputs"] = ports
        ops[title] = entry
    return ops


def test_every_op_is_documented():
    assert set(parse_ops_md()) == set(opspec.OPS)


@pytest.mark.parametrize("name", sorted(opspec.OPS))
def test_descriptors_equal_docs(name):
    doc = parse_ops_md()[name]
    op = opspec.OPS[name]
    assert [a for a, _ in doc["attributes"]] == [a.name for a in op.attributes]
    for (a, kind), spec in zip(doc["attributes"], op.attributes):
        if kind:
            assert kind == spec.kind, a
    for side in ("inputs", "outputs"):
        ports = getattr(op, side)
        assert [p[0] for p in doc[side]] == [p.name for p in ports]
        for (pname, shape, dtypes), port in zip(doc[side], ports):
            assert shape == port.shape, pname
            if dtypes:
                assert dtypes == set(port.dtypes), pname


def test_descriptors_plain_data():
    d = opspec.descriptors()
    assert d["TokenMerge"]["inputs"] == [("x", ("float32", "float16")), ("size", ("float32", "float16")),
                                         ("slot", ("int32",))]
    assert d["TokenMatchBipartite"]["attributes"][:3] == [("r", "int"), ("src", "ints"), ("dst", "ints")]


def test_check_onnx_model_accepts_a_conforming_node():
    assert opspec.check_onnx_model(unmerge_model()) == []


def test_check_onnx_model_reports_problems():
    from onnx import helper

    model = unmerge_model(with_function=False)
    model.graph.node[0].attribute.append(helper.make_attribute("bogus", 1))
    problems = opspec.check_onnx_model(model)
    assert any("bogus" in p for p in problems)
    assert any("no model-local function" in p for p in problems)


@pytest.mark.parametrize("name", sorted(opspec.OPS))
def test_plugin_signatures_follow_table(name):
    op = opspec.OPS[name]
    sig = plugin_signatures(op)
    ins = [p.name for p in op.inputs]
    attrs = [a.name for a in op.attributes if a.name != "plugin_namespace"]
    assert sig["register"] == ins + attrs
    assert sig["impl"][-2:] == ["outputs", "stream"] and sig["aot_impl"][-2:] == ["outputs", "tactic"]
    assert autotune_combination(op).count(",") == len(op.inputs) + len(op.outputs) - 1


def test_generated_register_function_has_table_signature():
    import inspect

    from edgemerge.trt.plugins import _signed

    op = opspec.OPS["TokenMatchBipartite"]
    params = plugin_signatures(op)["register"]
    fn = _signed("desc", params, {p: int for p in params}, float, lambda **a: sorted(a.items()))
    sig = inspect.signature(fn)
    assert list(sig.parameters) == params and sig.return_annotation is float
    assert all(p.annotation is int for p in sig.parameters.values())
    # called positionally and by keyword, as tensorrt.plugin does
    assert fn(*range(len(params) - 1), **{params[-1]: 9}) == sorted(
        zip(params, list(range(len(params) - 1)) + [9]))


KERNELS = Path(__file__).resolve().parents[2] / "plugins" / "kernels"


@pytest.mark.skipif(not KERNELS.is_dir(), reason="plugins/kernels not in this checkout")
@pytest.mark.parametrize("name", ["TokenMerge", "TokenUnmerge"])
def test_aot_wrapper_calls_an_existing_body(name):
    op = opspec.OPS[name]
    entry, source = aot_source(op, "float16", KERNELS)
    kernel_text = (KERNELS / op.kernel.source).read_text()
    body = op.kernel.body.split("<")[0]
    assert re.search(rf"__device__[^\n]*\bvoid {body}\(", kernel_text)
    # the body's parameter count matches what the wrapper passes
    params = re.search(rf"void {body}\(([^)]*)\)", kernel_text).group(1)
    assert params.count(",") + 1 == len(op.kernel.body_args)
    assert entry in source and "__half const* " in source
