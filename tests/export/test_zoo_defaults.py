"""Every zoo family exports at its default resolution with its default variants and passes the
self-check (the fair argmax judgement included): what a user's first `edgemerge export` runs.

CI runs each configuration once and rotates the seed (random weights) over 0, 1, 2 across them;
`python benchmarks/zoo_defaults.py` runs every configuration for all three seeds."""

import pytest

from edgemerge.export.bundle import ExportOptions, export_bundle

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
