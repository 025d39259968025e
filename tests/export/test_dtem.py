"""DTEM: checkpoints in DTEM's own layout load, their metric decides the merges, and a DTEM
variant without a learned metric is refused (with a checkpoint) or starts from the keys (without)."""

from __future__ import annotations

import onnx
import pytest
import torch
from click.testing import CliRunner

from edgemerge.cli import main
from edgemerge.contracts.manifest import ExportOptions
from edgemerge.export.bundle import export_bundle
from edgemerge.merge.reference import build_reference
from edgemerge.merge import core
from edgemerge.models.registry import build_model
from edgemerge.models.checkpoint import load_checkpoint

RES = (112, 112)
C, DEPTH, F = 192, 12, 64  # vit-t; DTEM's metric width for C < 1024


def _timm_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return build_model("vit-t").state_dict()  # timm's names, 224x224 position embeddings


def _dtem_file(tmp_path, state, *, parts: bool = True, fused: bool = True, stale: bool = False):
    """A file as movinghoon/DTEM's train.py saves it: DDP keys, qkv_layer/metric_layer + fused qkv."""
    g = torch.Generator().manual_seed(1)
    out = {}
    for key, value in state.items():
        if ".attn.qkv." not in key:
            out["module." + key] = value
            continue
        i, kind = key.split(".")[1], key.rsplit(".", 1)[1]
        metric = torch.randn(F, C, generator=g) * 0.2 if kind == "weight" else torch.randn(F, generator=g) * 0.1
        if parts:
            out[f"module.blocks.{i}.attn.qkv.qkv_layer.{kind}"] = value
            out[f"module.blocks.{i}.attn.qkv.metric_layer.{kind}"] = metric
        if fused:
            copy = torch.cat([value, metric])
            out[f"module.blocks.{i}.attn.qkv.{kind}"] = copy + 1.0 if stale else copy
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=1e-4)
    path = tmp_path / f"dtem-{parts}-{fused}-{stale}.pth.tar"
    torch.save({"epoch": 30, "best_acc": 72.1, "state_dict": out, "optimizer": opt.state_dict()}, path)
    return path, out


def _slots(model, x) -> list[torch.Tensor]:
    with torch.no_grad(), core.record_decisions() as slots:
        model(x)
    return slots


def test_dtem_layout_loads_with_its_metric(tmp_path):
    state = _timm_state()
    path, raw = _dtem_file(tmp_path, state)
    model, info = load_checkpoint("vit-t", path, resolution=RES)
    assert info.format == "dtem" and len(info.merge_state) == 2 * DEPTH
    for i in (0, DEPTH - 1):
        fused = raw[f"module.blocks.{i}.attn.qkv.weight"]
        assert fused.shape == (3 * C + F, C)
        assert torch.equal(model.blocks[i].attn.qkv.weight, fused[: 3 * C])
        assert torch.equal(info.merge_state[f"blocks.{i}.dtem_metric.weight"], fused[3 * C:])
        assert torch.equal(model.blocks[i].attn.qkv.bias, raw[f"module.blocks.{i}.attn.qkv.bias"][: 3 * C])
    # the rest is timm's layout under module.
    assert torch.equal(model.head.weight, state["head.weight"])


def test_dtem_metric_changes_the_merge_decisions(tmp_path):
    path, _ = _dtem_file(tmp_path, _timm_state())
    x = torch.randn(1, 3, *RES, generator=torch.Generator().manual_seed(2))
    learned, _, info = build_reference("vit-t", "dtem", checkpoint=str(path), resolution=RES)
    keys, _, _ = build_reference("vit-t", "tome", checkpoint=str(path), resolution=RES)
    assert all(hasattr(blk.attn, "dtem_metric") for blk in learned.blocks)
    a, b = _slots(learned, x), _slots(keys, x)
    assert len(a) == len(b) > 1
    assert not torch.equal(a[0], b[0])  # same input to block 0: only the metric differs


def test_only_the_fused_copy_splits_like_the_parts(tmp_path):
    state = _timm_state()
    both, _ = _dtem_file(tmp_path, state)
    fused_only, _ = _dtem_file(tmp_path, state, parts=False)
    m1, i1 = load_checkpoint("vit-t", both, resolution=RES)
    m2, i2 = load_checkpoint("vit-t", fused_only, resolution=RES)
    assert i2.format == "dtem"
    assert all(torch.equal(i1.merge_state[k], i2.merge_state[k]) for k in i1.merge_state)
    assert all(torch.equal(v, m2.state_dict()[k]) for k, v in m1.state_dict().items())


def test_stale_fused_copy_warns_and_uses_the_parts(tmp_path):
    state = _timm_state()
    path, raw = _dtem_file(tmp_path, state, stale=True)
    with pytest.warns(UserWarning, match="fused"):
        model, info = load_checkpoint("vit-t", path, resolution=RES)
    assert torch.equal(model.blocks[3].attn.qkv.weight, raw["module.blocks.3.attn.qkv.qkv_layer.weight"])


def test_dtem_variant_without_a_metric_is_one_line_exit_2(tmp_path):
    plain = tmp_path / "timm.pth"
    torch.save(_timm_state(), plain)
    res = CliRunner().invoke(main, ["export", "-m", "vit-t", "-v", "dtem", "-r", "112x112", "-c", str(plain),
                                    "-o", str(tmp_path / "out")])
    assert res.exit_code == 2, res.output
    errors = [ln for ln in res.output.splitlines() if ln.startswith("edgemerge: error:")]
    assert len(errors) == 1 and "dtem_metric" in errors[0] and "tome" in errors[0]
    assert not (tmp_path / "out").exists()


def test_dtem_without_checkpoint_starts_from_the_keys():
    """Random weights, no checkpoint: the metric projection reproduces ToMe's keys exactly."""
    x = torch.randn(2, 3, *RES, generator=torch.Generator().manual_seed(3))
    dtem, _, _ = build_reference("vit-t", "dtem", resolution=RES)
    tome, _, _ = build_reference("vit-t", "tome", resolution=RES)
    assert all(blk.attn.dtem_metric.out_features == F for blk in dtem.blocks)
    for a, b in zip(_slots(dtem, x), _slots(tome, x)):
        assert torch.equal(a, b)


def _matmuls(path) -> list[onnx.NodeProto]:
    return [n for n in onnx.load(path).graph.node if n.op_type == "MatMul"]


@pytest.mark.slow
def test_dtem_checkpoint_exports_with_the_metric_in_the_qkv_gemm(tmp_path):
    """As DTEM's eval does: one GEMM [C -> 3C + F] per block, no MatMul more than ToMe's graph."""
    path, _ = _dtem_file(tmp_path, _timm_state())
    m = export_bundle(ExportOptions("vit-t", "dtem", checkpoint=str(path), resolution=RES, out=str(tmp_path / "b")))
    assert m["self_check"]["passed"] and m["checkpoint"]["format"] == "dtem"
    export_bundle(ExportOptions("vit-t", "tome", checkpoint=str(path), resolution=RES, out=str(tmp_path / "t")))
    dtem, tome = _matmuls(tmp_path / "b" / "model.onnx"), _matmuls(tmp_path / "t" / "model.onnx")
    assert len(dtem) == len(tome)
    proto = onnx.load(tmp_path / "b" / "model.onnx")
    dims = {i.name: list(i.dims) for i in proto.graph.initializer}
    assert sum(dims.get(n.input[1]) == [C, 3 * C + F] for n in dtem) == DEPTH
