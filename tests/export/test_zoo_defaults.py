"""Every zoo family exports at its default resolution with its default variants and passes the
self-check (the fair argmax judgement included): what a user's first `edgemerge export` runs.

CI runs each configuration once and rotates the seed (random weights) over 0, 1, 2 across them;
`python benchmarks/zoo_defaults.py` runs every configuration for all three seeds."""

import pytest

from edgemerge.contracts.manifest import ExportOptions
from edgemerge.export.bundle import export_bundle

CONFIGS = [("segmenter-vit-t", "algm"), ("segmenter-vit-s", "algm"), ("segformer-b0", "hq"),
           ("segformer-b0", "fast"), ("segformer-b0", "n2d"), ("deit-t", "tome"), ("deit-t", "dtem"),
           ("vit-t", "tome"), ("vit-t", "dtem")]


@pytest.mark.slow
@pytest.mark.parametrize("model,variant,seed", [(m, v, i % 3) for i, (m, v) in enumerate(CONFIGS)],
                         ids=[f"{m}-{v}-seed{i % 3}" for i, (m, v) in enumerate(CONFIGS)])
def test_default_export_passes_its_self_check(tmp_path, model, variant, seed):
    manifest = export_bundle(ExportOptions(model, variant, seed=seed, out=str(tmp_path / "b")))
    check = manifest["self_check"]
    assert check["passed"] and check["argmax_agreement"] == 1.0
    ties = check["near_ties"]
    assert ties["decidable"] > 0 and ties["flipped"] <= ties["pixels"]


@pytest.mark.slow
def test_distilled_deit_exports_at_its_defaults(tmp_path):
    """DeiT with its distillation token (a checkpoint's, as Hugging Face's DeiT*WithTeacher):
    two protected tokens, counts read off that model, and the self-check passes. (`dtem` on a
    checkpoint needs its trained metric, so the default `tome` is the one to run here.)"""
    variant = "tome"
    from dataclasses import replace

    import torch

    from edgemerge.models.checkpoint import save_checkpoint
    from edgemerge.models.registry import build_from_config, configure

    zoo = configure("deit-t")
    torch.manual_seed(1)
    model = build_from_config(replace(zoo, extra={**zoo.extra, "distilled": True}))
    save_checkpoint(model, tmp_path / "deit-t-distilled.pth")
    manifest = export_bundle(ExportOptions("deit-t", variant, checkpoint=str(tmp_path / "deit-t-distilled.pth"),
                                           out=str(tmp_path / "b")))
    assert manifest["self_check"]["passed"] and manifest["self_check"]["argmax_agreement"] == 1.0
    plain = export_bundle(ExportOptions("deit-t", variant, out=str(tmp_path / "plain")))
    assert manifest["plan"]["tokens_in"] == plain["plan"]["tokens_in"] + 1  # CLS and the distillation token
    assert manifest["plan"]["sites"] != plain["plan"]["sites"]
