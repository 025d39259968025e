"""save_checkpoint (what train-metric writes) rebuilds the same model: the format-specific details
a converter inferred from the input (LayerNorm eps, head variant) travel with the tensors."""

from __future__ import annotations

import torch

from edgemerge.models.registry import build_model
from edgemerge.models.checkpoint import load_checkpoint
from edgemerge.models import convert
from edgemerge.models.checkpoint import save_checkpoint

RES = (64, 64)


def test_nvlabs_eps_survive_a_save(tmp_path):
    torch.manual_seed(0)
    src = build_model("segformer-b0", resolution=RES)
    torch.save(convert.segformer_to_nvlabs(src.state_dict()), tmp_path / "nvlabs.pth")
    model, info = load_checkpoint("segformer-b0", tmp_path / "nvlabs.pth", resolution=RES)
    assert info.format == "nvlabs" and model.encoder.stages[0].blocks[0].norm1.eps == 1e-6
    metric = {"encoder.stages.0.blocks.0.attn.dtem_metric.kv.weight": torch.eye(32),
              "encoder.stages.0.blocks.0.attn.dtem_metric.kv.bias": torch.zeros(32)}
    save_checkpoint(model, tmp_path / "ours.pth", metric)
    again, info2 = load_checkpoint("segformer-b0", tmp_path / "ours.pth", resolution=RES)
    assert info2.format == "edgemerge"
    assert again.encoder.stages[0].blocks[0].norm1.eps == 1e-6  # not the zoo default 1e-5
    assert again.encoder.stages[0].patch_embed.norm.eps == 1e-5
    assert set(info2.merge_state) == set(metric)
    x = torch.randn(1, 3, *RES)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))


def test_plain_state_dicts_still_load_without_the_details(tmp_path):
    torch.manual_seed(0)
    torch.save(build_model("vit-t", resolution=RES).state_dict(), tmp_path / "plain.pth")
    model, info = load_checkpoint("vit-t", tmp_path / "plain.pth", resolution=RES)
    assert info.format == "timm" and model.blocks[0].norm1.eps == 1e-6
