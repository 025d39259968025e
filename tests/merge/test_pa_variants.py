"""hq-pa / fast-pa: the paper's hq / fast counts plus proportional attention, nothing else."""

from __future__ import annotations

import dataclasses

import onnx
import pytest
import torch

from edgemerge.contracts.manifest import ExportOptions
from edgemerge.export.bundle import export_bundle
from edgemerge.merge.patch import apply_merging
from edgemerge.merge.plan import get_plan
from edgemerge.merge.counts import resolve
from edgemerge.merge.plan import SegformerPlan
from edgemerge.models.registry import build_model

SEGFORMERS = [f"segformer-b{i}" for i in range(6)]


@pytest.mark.parametrize("model", SEGFORMERS)
@pytest.mark.parametrize("base", ["hq", "fast"])
def test_pa_variant_is_base_plus_proportional(model, base):
    plain, pa = get_plan(model, base), get_plan(model, f"{base}-pa")
    assert isinstance(pa, SegformerPlan) and pa.proportional and not plain.proportional
    assert pa == dataclasses.replace(plain, proportional=True)
    assert resolve(model, pa, (512, 512)) == resolve(model, plain, (512, 512))


def _log_nodes(path) -> int:
    proto = onnx.load(path)
    return sum(n.op_type == "Log" for n in proto.graph.node)


@pytest.mark.slow
def test_fast_pa_exports_and_differs_from_fast_only_by_the_bias(tmp_path):
    res = (128, 128)
    manifests = {}
    for v in ("fast", "fast-pa"):
        manifests[v] = export_bundle(ExportOptions("segformer-b0", v, resolution=res, out=str(tmp_path / v)))
        assert manifests[v]["self_check"]["passed"]
    plans = {v: m["plan"]["plan"] for v, m in manifests.items()}
    assert plans["fast-pa"]["proportional"] is True
    assert plans["fast"] == {**plans["fast-pa"], "proportional": False}
    # the bias is log(size) of merged keys: one Log per block of the kv-merging stages (1-2)
    blocks = sum(build_model("segformer-b0").config.depths[:2])
    assert _log_nodes(tmp_path / "fast" / "model.onnx") == 0
    assert _log_nodes(tmp_path / "fast-pa" / "model.onnx") == blocks


def test_pa_changes_the_output():
    torch.manual_seed(0)
    model = build_model("segformer-b0", resolution=(128, 128)).eval()
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        out = {v: apply_merging(model, get_plan("segformer-b0", v))(x) for v in ("fast", "fast-pa")}
    assert not torch.allclose(out["fast"], out["fast-pa"], atol=1e-5)
