"""DTEM: the learned metric comes from the checkpoint when it has one, else ToMe's keys."""

from __future__ import annotations

import torch

from edgemerge.export.bundle import ExportOptions, build_reference, export_bundle
from edgemerge.models import build_model


def _checkpoint(tmp_path, with_metric: bool):
    torch.manual_seed(0)
    state = build_model("vit-t", resolution=(112, 112)).state_dict()
    if with_metric:
        for i in range(12):  # Linear(192 -> 64) on the block's normed input
            state[f"blocks.{i}.dtem_metric.weight"] = torch.randn(64, 192) * 0.1
            state[f"blocks.{i}.dtem_metric.bias"] = torch.zeros(64)
    path = tmp_path / f"vit-t-{with_metric}.pth"
    torch.save(state, path)
    return path


def test_dtem_metric_loaded_and_used(tmp_path):
    x = torch.randn(1, 3, 112, 112)
    learned, _, info = build_reference("vit-t", "dtem", checkpoint=str(_checkpoint(tmp_path, True)), resolution=(112, 112))
    assert len(info.merge_state) == 24
    assert all(hasattr(blk, "dtem_metric") for blk in learned.blocks)
    plain, _, _ = build_reference("vit-t", "dtem", checkpoint=str(_checkpoint(tmp_path, False)), resolution=(112, 112))
    tome, _, _ = build_reference("vit-t", "tome", checkpoint=str(_checkpoint(tmp_path, False)), resolution=(112, 112))
    with torch.no_grad():
        assert torch.equal(plain(x), tome(x))  # no learned metric: ToMe's
        assert not torch.allclose(learned(x), tome(x))  # the learned metric changes what merges


def test_dtem_with_learned_metric_exports(tmp_path):
    m = export_bundle(ExportOptions("vit-t", "dtem", checkpoint=str(_checkpoint(tmp_path, True)), resolution=(112, 112),
                                    out=str(tmp_path / "b")))
    assert m["self_check"]["passed"] and m["checkpoint"]["format"] == "timm"
