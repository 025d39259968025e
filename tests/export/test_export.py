"""Export: every family x variant x merge-ops x precision self-checks; files are what TensorRT needs."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from edgemerge.cli import main
from edgemerge.contracts.manifest import ExportOptions
from edgemerge.export.bundle import export_bundle, native_problems
from edgemerge.export.functions import DOMAIN

REPO = Path(__file__).resolve().parents[2]

# (model, small resolution, variants): every zoo family, every variant
FAMILIES = [
    ("segformer-b0", (128, 128), ["none", "hq", "fast", "n2d"]),
    ("vit-t", (112, 112), ["none", "tome", "dtem"]),
    ("deit-t", (112, 112), ["tome"]),
    ("segmenter-vit-t", (128, 128), ["none", "algm"]),
]
CASES = [(m, r, v, mo, p) for m, r, vs in FAMILIES for v in vs for mo in ("plugin", "native") for p in ("fp32", "fp16")]


@pytest.mark.slow
@pytest.mark.parametrize("model,res,variant,merge_ops,precision", CASES,
                         ids=[f"{m}-{v}-{mo}-{p}" for m, _, v, mo, p in CASES])
def test_export_self_checks(tmp_path, model, res, variant, merge_ops, precision):
    out = tmp_path / "bundle"
    manifest = export_bundle(ExportOptions(model, variant, resolution=res, precision=precision,
                                           merge_ops=merge_ops, out=str(out)))
    check = manifest["self_check"]
    assert check["passed"]
    if precision == "fp32":
        assert check["argmax_agreement"] == 1.0 and check["max_abs_rel_range"] <= 1e-4
    else:
        assert check["argmax_agreement"] >= 0.995
    decisions = check["merge_decisions"]
    assert decisions.get("same_destination_worst", 1.0) == 1.0  # near-ties excused, counted
    if decisions["sites"]:
        assert decisions["judged_on"] == "the artifact's metric"  # plugin and native graphs alike
        assert decisions["metric_rel_l2_worst"] <= (1e-4 if precision == "fp32" else 2e-2)
    sites = {"none": 0, "n2d": 0}.get(variant)
    assert sites is None or check["merge_decisions"]["sites"] == sites
    proto = onnx.load(out / "model.onnx")
    custom = [n for n in proto.graph.node if n.domain == DOMAIN]
    merges = variant not in ("none", "n2d")
    if merge_ops == "plugin" and merges:
        assert custom, "plugin mode must write edgemerge nodes"
        for n in custom:
            attrs = {a.name: a for a in n.attribute}
            assert attrs["plugin_namespace"].s == b"edgemerge"
        assert {(f.domain, f.name) for f in proto.functions} == {(DOMAIN, n.op_type) for n in custom}
        assert any(o.domain == DOMAIN for o in proto.opset_import)
        from edgemerge.contracts.opspec import check_onnx_model

        assert check_onnx_model(proto) == []
    if merge_ops == "native":
        assert not custom and not proto.functions
        assert not any(o.domain == DOMAIN for o in proto.opset_import)
        assert native_problems(proto) == []
    if precision == "fp16":
        kinds = {t.data_type for t in proto.graph.initializer}
        assert onnx.TensorProto.FLOAT16 in kinds
        typed = onnx.shape_inference.infer_shapes(proto)
        dtype = {v.name: v.type.tensor_type.elem_type for v in [*typed.graph.value_info, *typed.graph.input]}
        dtype.update({t.name: t.data_type for t in proto.graph.initializer})
        ln = [n for n in proto.graph.node if n.op_type in ("LayerNormalization", "Softmax")]
        assert ln and all(dtype[i] == onnx.TensorProto.FLOAT for n in ln for i in n.input if i)
        assert manifest["inputs"][0]["dtype"] == "float32" and manifest["outputs"][0]["dtype"] == "float32"
    m = json.loads((out / "manifest.json").read_text())
    for key in ("model", "variant", "resolution", "batch", "precision", "merge_ops", "plan", "inputs", "outputs",
                "mean", "std", "num_classes", "checkpoint", "seed", "onnx_sha256", "versions", "self_check"):
        assert key in m
    assert m["checkpoint"] is None and m["seed"] == 0
    assert set(m["versions"]) >= {"edgemerge", "torch", "onnx", "onnxruntime"}
    assert (out / "reference.npz").is_file() and (out / "build_on_device.sh").is_file()


def test_reexport_is_byte_identical(tmp_path):
    args = ["export", "-m", "segformer-b0", "-v", "fast", "-r", "128x128"]
    runner = CliRunner()
    for d in ("a", "b"):
        res = runner.invoke(main, args + ["-o", str(tmp_path / d)])
        assert res.exit_code == 0, res.output
    data = (tmp_path / "a/model.onnx").read_bytes()
    assert data == (tmp_path / "b/model.onnx").read_bytes()
    # nor does it depend on where edgemerge is installed (torch records stack traces with paths)
    import edgemerge

    assert str(Path(edgemerge.__file__).resolve().parent).encode() not in data


def test_function_body_selection_fits_tensorrt_at_1024x2048():
    """Stage 3 of segformer-b5 at 1024x2048: 8192 queries, r = 7372 of 7680 sources on a 4x4 grid.
    The inlined body must select with TopK K <= 3840 and still equal the PyTorch reference."""
    import onnx.inliner
    import onnxruntime as ort
    import onnxscript.optimizer

    from edgemerge.export.functions import function_proto
    from edgemerge.merge import core, ops

    h, w, C = 64, 128, 8
    src, dst = core.grid(h, w, 4, 4)
    r = int(h * w * 0.9)
    node = onnx.helper.make_node("TokenMatchBipartite", ["metric"], ["slot"], domain=DOMAIN, r=r,
                                 src=list(src), dst=list(dst), protect=0, plugin_namespace="edgemerge")
    graph = onnx.helper.make_graph(
        [node], "g", [onnx.helper.make_tensor_value_info("metric", onnx.TensorProto.FLOAT, [1, h * w, C])],
        [onnx.helper.make_tensor_value_info("slot", onnx.TensorProto.INT32, [1, h * w])])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18),
                                                         onnx.helper.make_opsetid(DOMAIN, 1)],
                                   functions=[function_proto("TokenMatchBipartite", 18)], ir_version=10)
    native = onnxscript.optimizer.optimize(onnx.inliner.inline_local_functions(model))
    topk = [n for n in native.graph.node if n.op_type == "TopK"]
    assert topk and native_problems(native) == []
    metric = torch.randn(1, h * w, C)
    got = ort.InferenceSession(native.SerializeToString()).run(None, {"metric": metric.numpy()})[0]
    assert np.array_equal(got, ops.match_bipartite_ref(metric, r, src, dst).numpy())


def test_hf_checkpoint_exports_and_matches_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.SegformerConfig(num_labels=5, depths=[2, 2, 2, 2], hidden_sizes=[32, 64, 160, 256],
                                       decoder_hidden_size=256, num_attention_heads=[1, 2, 5, 8])
    torch.manual_seed(0)
    ref = transformers.SegformerForSemanticSegmentation(cfg).eval()
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    ref.save_pretrained(tmp_path / "hf")
    manifest = export_bundle(ExportOptions("segformer-b0", "none", checkpoint=str(tmp_path / "hf"),
                                           resolution=(128, 128), out=str(tmp_path / "b")))
    assert manifest["num_classes"] == 5 and manifest["checkpoint"]["format"] == "hf"
    import onnxruntime as ort

    x = torch.randn(1, 3, 128, 128)
    got = ort.InferenceSession(str(tmp_path / "b/model.onnx")).run(None, {"images": x.numpy()})[0]
    with torch.no_grad():
        want = ref(pixel_values=x).logits.numpy()
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-4 * (want.max() - want.min())


def _bad(tmp_path, args):
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["export", *args, "-o", str(out)])
    assert res.exit_code != 0
    lines = [ln for ln in res.output.strip().splitlines() if ln.startswith("edgemerge: error:")]
    assert len(lines) == 1, res.output
    assert not out.exists() or not any(out.iterdir())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no temp dir left
    return lines[0]


def test_bad_model(tmp_path):
    assert "unknown model" in _bad(tmp_path, ["-m", "segformer-b9"])


def test_bad_variant(tmp_path):
    msg = _bad(tmp_path, ["-m", "segformer-b0", "-v", "tome"])
    assert "unknown variant 'tome'" in msg and "fast" in msg


def test_bad_resolution_for_plan(tmp_path):
    # 160x160 -> stage-1 keys/values on a 5x5 grid, which 4x4 cells cannot divide
    msg = _bad(tmp_path, ["-m", "segformer-b0", "-v", "fast", "-r", "160x160"])
    assert "5x5 token grid does not divide into 4x4 cells" in msg


def test_bad_resolution_text(tmp_path):
    assert "HxW" in _bad(tmp_path, ["-m", "segformer-b0", "-r", "big"])


def test_checkpoint_of_another_model(tmp_path):
    from edgemerge.models.registry import build_model

    torch.save(build_model("segformer-b0").state_dict(), tmp_path / "b0.pth")
    msg = _bad(tmp_path, ["-m", "segformer-b2", "-c", str(tmp_path / "b0.pth"), "-r", "64x64"])
    assert "segformer-b2" in msg


def test_missing_checkpoint(tmp_path):
    assert "checkpoint not found" in _bad(tmp_path, ["-m", "segformer-b0", "-c", str(tmp_path / "nope")])


def test_unwritable_output(tmp_path):
    """/proc accepts no new entries, even from root (for whom permission bits do not apply)."""
    target = Path("/proc") / f"edgemerge-test-{os.getpid()}"
    res = CliRunner().invoke(main, ["export", "-m", "segformer-b0", "-r", "64x64", "-o", str(target)])
    assert res.exit_code == 2 and "not writable" in res.output
    assert len(res.output.strip().splitlines()[-1:]) == 1 and not target.exists()


def test_output_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    res = CliRunner().invoke(main, ["export", "-m", "segformer-b0", "-r", "64x64", "-o", str(f)])
    assert res.exit_code == 2 and "not a directory" in res.output and f.read_text() == "x"


def test_failed_self_check_leaves_nothing(tmp_path, monkeypatch):
    """A self-check failure (simulated by a broken ORT run) exits 1 and writes no bundle."""
    import edgemerge.export.bundle as bundle

    def broken_runs(model_bytes, batches):
        return [[np.zeros((x.shape[0], 150, 16, 16), np.float32)] for x in batches]

    monkeypatch.setattr(bundle, "_onnxruntime_runs", broken_runs)
    res = CliRunner().invoke(main, ["export", "-m", "segformer-b0", "-r", "64x64", "-o", str(tmp_path / "b")])
    assert res.exit_code == 1 and "self-check failed" in res.output
    assert not (tmp_path / "b").exists()
    assert [p.name for p in tmp_path.iterdir()] == []


def test_plugins_agree_with_exported_nodes(tmp_path):
    """The op spec (which the C++ creators and the Python plugins are checked against) matches the
    nodes of real exports."""
    from edgemerge.contracts.opspec import OPS, check_onnx_model

    cpp = {name: [a.name for a in op.plugin_attributes()] for name, op in OPS.items()}
    seen = set()
    for model, variant, res in [("segformer-b0", "fast", (128, 128)), ("segmenter-vit-t", "algm", (128, 128))]:
        export_bundle(ExportOptions(model, variant, resolution=res, out=str(tmp_path / variant)))
        proto = onnx.load(tmp_path / variant / "model.onnx")
        assert check_onnx_model(proto) == []
        for n in proto.graph.node:
            if n.domain == DOMAIN:
                seen.add(n.op_type)
                assert sorted(a.name for a in n.attribute if a.name != "plugin_namespace") == sorted(cpp[n.op_type])
    assert seen == {"TokenMatchBipartite", "TokenMatchWindow", "TokenMerge", "TokenUnmerge"}


def test_wrong_match_lowering_fails_on_decisions(tmp_path, monkeypatch):
    """A match body that picks other tokens (here: the smallest scores) fails the decision check,
    even though PyTorch replaying its decisions would reproduce the logits."""
    import edgemerge.export.functions as F

    original = F._top_mask

    def inverted(b, score, r, n):
        return original(b, b("Neg", score), r, n)

    monkeypatch.setattr(F, "_top_mask", inverted)
    res = CliRunner().invoke(main, ["export", "-m", "segformer-b0", "-v", "fast", "-r", "128x128",
                                    "-o", str(tmp_path / "b")])
    assert res.exit_code == 1 and "same_destination_worst" in res.output
    assert not (tmp_path / "b").exists()
