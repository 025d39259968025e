"""`edgemerge validate` fails wrongly built artifacts and passes correct ones, at every site kind.

Each planted build is a correct bundle with one fault a broken exporter, kernel or plugin could
carry (tests/validate/plants.py), its manifest re-signed as a faulty build would carry it: a
metric that makes one site merge the least similar tokens (ToMe, Segformer++) or unrelated
windows (ALGM's window step), merged sources sent to the wrong destination (every bipartite
site: ToMe, ALGM's global step, Segformer++), the logits scaled by 1.01 or shifted by 1% of their
range. Random weights, where the outputs are insensitive to a wrong matching: the merge-decision
gate must catch what the logits cannot.
"""

from __future__ import annotations

import json

import onnx
import pytest
from click.testing import CliRunner

import plants

pytest.importorskip("torch")
pytestmark = pytest.mark.slow

BUNDLES = {  # (model, variant, resolution)
    "tome": ("deit-t", "tome", None),
    "algm": ("segmenter-vit-t", "algm", (128, 128)),
    "segformer": ("segformer-b0", "fast", (128, 128)),
}
PLANTS = {
    "least-similar site 0": (lambda m, rng: plants.least_similar(m, 0), "merge.metric_rel_l2_worst"),
    "wrong destinations": (lambda m, rng: plants.destinations_permuted(m), "merge.same_destination_worst"),
    "logits x1.01": (lambda m, rng: plants.scale_logits(m, 1.01), "logits."),
    "offset 1% of range": (lambda m, rng: plants.offset_logits(m, 0.01 * rng), "logits."),
}
CASES = [(b, p, plant) for b in BUNDLES for p in ("fp32", "fp16") for plant in (None, *PLANTS)]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from edgemerge.contracts.manifest import ExportOptions
    from edgemerge.export.bundle import export_bundle

    root, made = tmp_path_factory.mktemp("planted"), {}

    def get(kind: str, precision: str):
        if (kind, precision) not in made:
            model, variant, res = BUNDLES[kind]
            out = root / f"{kind}-{precision}"
            export_bundle(ExportOptions(model, variant, resolution=res, precision=precision, out=str(out)))
            made[kind, precision] = out
        return made[kind, precision]

    return get


@pytest.mark.parametrize("kind,precision,plant", CASES, ids=[f"{b}-{p}-{x or 'correct'}" for b, p, x in CASES])
def test_validate_fails_the_planted_build_and_passes_the_correct_one(exported, tmp_path, kind, precision, plant):
    from edgemerge.cli import main

    bundle = plants.copy_bundle(exported(kind, precision), tmp_path / "b")
    if plant is not None:
        model = onnx.load(str(bundle / "model.onnx"))
        span = json.loads((bundle / "manifest.json").read_text())["self_check"]["range"]
        PLANTS[plant][0](model, span)
        plants.save(model, bundle)
    res = CliRunner().invoke(main, ["validate", str(bundle), "--out", str(tmp_path / "rep")])
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    if plant is None:
        assert res.exit_code == 0, res.output
        assert report["merge_decisions"]["same_destination_worst"] == 1.0
        return
    assert res.exit_code == 1, res.output
    line = res.stderr.strip().splitlines()[-1]
    assert PLANTS[plant][1] in line, line  # names the bound it broke ...
    if plant in ("least-similar site 0", "wrong destinations"):
        assert "merge site" in line  # ... and the site
