"""A Segformer-b0 bundle with cell-local MixFFN sites (TokenMatchCell) at 128x128: exports and
self-checks with plugin nodes and inlined (native), validate judges its cell sites and passes;
a planted body that scores every token against the wrong anchor (the next cell's) fails validate
on the merge-decision gate. Random weights: the logits cannot tell, the decisions must."""

from __future__ import annotations

import json

import onnx
import pytest
from click.testing import CliRunner

import plants

pytestmark = pytest.mark.slow

VARIANT = "fast-pa-ffncell"


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    from edgemerge.contracts.manifest import ExportOptions
    from edgemerge.export.bundle import export_bundle

    root, out = tmp_path_factory.mktemp("cell"), {}
    for merge_ops in ("plugin", "native"):
        path = root / merge_ops
        manifest = export_bundle(ExportOptions("segformer-b0", VARIANT, resolution=(128, 128), merge_ops=merge_ops,
                                               out=str(path)))
        out[merge_ops] = (path, manifest)
    return out


@pytest.mark.parametrize("merge_ops", ["plugin", "native"])
def test_exports_self_check_and_validate(bundles, tmp_path, merge_ops):
    from edgemerge.cli import main
    from edgemerge.contracts.opspec import check_onnx_model

    path, manifest = bundles[merge_ops]
    check = manifest["self_check"]
    assert check["passed"] and check["argmax_agreement"] == 1.0
    assert check["merge_decisions"]["same_destination_worst"] == 1.0
    proto = onnx.load(path / "model.onnx")
    cell = [n for n in proto.graph.node if n.op_type == "TokenMatchCell"]
    if merge_ops == "plugin":
        assert len(cell) == 4 and check_onnx_model(proto) == []  # MixFFN of stages 3 and 4, two blocks each
        merges = [n for n in proto.graph.node if n.op_type == "TokenMergeCell"]
        assert len(merges) == 4 and {n.input[2] for n in merges} == {n.output[0] for n in cell}
        assert "TokenMergeCell" in manifest["custom_ops"]
        assert manifest["merge_sites"]["TokenMergeCell"] == [n.name for n in merges]  # what the device route counts
    else:
        assert not cell and not proto.functions
    res = CliRunner().invoke(main, ["validate", str(path), "--out", str(tmp_path / "rep")])
    assert res.exit_code == 0, res.output
    decisions = json.loads((tmp_path / "rep" / "report.json").read_text())["merge_decisions"]
    cells = [s for s in decisions["per_site"] if s["kind"] == "cell"]
    assert len(cells) == 4 and all(s["merging_same_destination"] == 1.0 and s["merging"] > 0 for s in cells)
    assert decisions["judged_on"] == "the artifact's metric"


def wrong_anchor(model: onnx.ModelProto) -> None:
    """Inside TokenMatchCell's body, every token is scored against the next cell's anchor (its
    anchor position + sx, cyclically): the slots still name the own cell, so only the choice of
    which tokens merge is wrong, as a kernel that indexes the anchor wrongly would be."""
    f = next(f for f in model.functions if f.name == "TokenMatchCell")
    producer = {o: n for n in f.node for o in n.output}
    gather = next(n for n in f.node if n.op_type == "Gather" and producer[n.input[1]].op_type == "Add")
    anchor = gather.input[1]
    p = anchor + "__planted_"
    sx_ref = onnx.helper.make_node("Constant", [], [p + "sx"])
    sx_ref.attribute.append(onnx.AttributeProto(name="value_int", ref_attr_name="sx", type=onnx.AttributeProto.INT))
    at = list(f.node).index(gather)
    new = [sx_ref,
           onnx.helper.make_node("Size", [anchor], [p + "n"]),
           onnx.helper.make_node("Add", [anchor, p + "sx"], [p + "next"]),
           onnx.helper.make_node("Mod", [p + "next", p + "n"], [p + "wrong"])]
    for k, n in enumerate(new):
        f.node.insert(at + k, n)
    gather.input[1] = p + "wrong"


def test_validate_fails_a_body_that_matches_the_wrong_anchor(bundles, tmp_path):
    from edgemerge.cli import main

    bundle = plants.copy_bundle(bundles["plugin"][0], tmp_path / "b")
    model = onnx.load(str(bundle / "model.onnx"))
    wrong_anchor(model)
    plants.save(model, bundle)
    res = CliRunner().invoke(main, ["validate", str(bundle), "--out", str(tmp_path / "rep")])
    assert res.exit_code == 1, res.output
    line = res.stderr.strip().splitlines()[-1]
    assert "merge.same_destination_worst" in line and "merge site" in line, line
    decisions = json.loads((tmp_path / "rep" / "report.json").read_text())["merge_decisions"]
    worst = decisions["per_site"][decisions["worst_site"]]
    assert worst["kind"] == "cell" and worst["merging_same_destination"] < 0.9
