"""The MixFFN site (xfast-ffn-*): fc1 runs on the merged tokens, its output is restored to the grid
for the depthwise conv, fc2 runs at full size; the soft op used in training tends to it."""

from __future__ import annotations

import pytest
import torch

from edgemerge.contracts.manifest import ExportOptions
from edgemerge.export.bundle import export_bundle
from edgemerge.merge.patch import apply_merging
from edgemerge.merge.plan import get_plan
from edgemerge.merge.counts import resolve
from edgemerge.merge.patch import SegformerPPMixFFN
from edgemerge.merge.patch import _swap
from edgemerge.merge.plan import GridSite
from edgemerge.models.registry import build_model
from edgemerge.models.segformer import MixFFN
from edgemerge.merge.families.segformer import SoftMixFFN

RES = (128, 128)


def _tokens_seen(model, x) -> dict[str, int]:
    seen: dict[str, int] = {}
    hooks = [m.register_forward_hook(lambda m, a, o, n=n: seen.__setitem__(n, a[0].shape[1]))
             for n, m in model.named_modules() if n.endswith(("mlp.fc1", "mlp.fc2"))]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return seen


def test_fc1_runs_on_the_kept_tokens_and_fc2_on_all():
    torch.manual_seed(0)
    model = apply_merging(build_model("segformer-b0", resolution=RES).eval(), get_plan("segformer-b0", "xfast-ffn-pa"))
    seen = _tokens_seen(model, torch.randn(1, 3, *RES))
    stages = resolve("segformer-b0", get_plan("segformer-b0", "xfast-ffn-pa"), RES)["stages"]
    for s in stages:
        for b in range(s["blocks"]):
            prefix = f"encoder.stages.{s['stage'] - 1}.blocks.{b}.mlp"
            assert seen[prefix + ".fc1"] == s["ffn_kept"]
            assert seen[prefix + ".fc2"] == s["ffn_in"]
    assert [s["ffn_kept"] < s["ffn_in"] for s in stages] == [False, False, True, True]


def _ffn(cls, site: GridSite, **attrs) -> MixFFN:
    torch.manual_seed(0)
    mlp = MixFFN(16, 64).eval()
    _swap(mlp, cls, em_ffn=site, **attrs)
    return mlp


def test_uniform_cells_merge_exactly():
    """Tokens equal within each 2x2 cell (and distinct across cells): merging fc1's input changes
    nothing, so the restore for the conv puts every token back where it was."""
    torch.manual_seed(0)
    cells = torch.randn(1, 4, 4, 16)
    x = cells.repeat_interleave(2, 1).repeat_interleave(2, 2).reshape(1, 64, 16)
    plain = MixFFN(16, 64).eval()
    merged = _ffn(SegformerPPMixFFN, GridSite(0.75, 2, 2))
    merged.load_state_dict(plain.state_dict())
    with torch.no_grad():
        assert torch.allclose(merged(x, (8, 8)), plain(x, (8, 8)), atol=1e-6)
        y = torch.randn(1, 64, 16)
        assert not torch.allclose(merged(y, (8, 8)), plain(y, (8, 8)), atol=1e-3)  # a real merge changes it


@pytest.mark.parametrize("ratio,grid", [(0.75, 2), (0.5, 2), (0.8, 4)])
def test_soft_site_tends_to_the_hard_one(ratio, grid):
    """The training forward's relaxation decides as the exported op when the temperature falls."""
    site = GridSite(ratio, grid, grid)
    hard = _ffn(SegformerPPMixFFN, site)
    x = torch.randn(2, 64, 16)
    with torch.no_grad():
        want = hard(x, (8, 8))
        errs = []
        for tau in (1e-2, 1e-4, 1e-6):
            soft = _ffn(SoftMixFFN, site, em_tau=tau, em_top_k=3)
            errs.append((soft(x, (8, 8)) - want).abs().max().item())
    assert errs[-1] < 1e-4 * want.abs().max().item() and errs[-1] <= errs[0]


def test_gradients_pass_through_the_site():
    """The site has no metric to train, but what comes before it (earlier sites' metrics) must get
    gradients through it: the hard op has no autograd formula, the soft one does."""
    soft = _ffn(SoftMixFFN, GridSite(0.75, 2, 2), em_tau=1e-6, em_top_k=3)
    soft.requires_grad_(False)
    x = torch.randn(1, 64, 16, requires_grad=True)
    soft(x, (8, 8)).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_training_merges_the_site_as_inference_does():
    from edgemerge.merge.families.segformer import apply_soft_segformer, segformer_soft_metrics

    plan = get_plan("segformer-b0", "xfast-ffn-pa-lm")
    torch.manual_seed(0)
    model = build_model("segformer-b0", resolution=RES).eval()
    metrics = segformer_soft_metrics(model, plan, {})
    assert not any("mlp" in k for k in metrics)  # no learned metric at the MixFFN sites
    apply_soft_segformer(model, plan, metrics, tau=0.01, top_k=3)
    mlp = model.encoder.stages[2].blocks[0].mlp
    assert isinstance(mlp, SoftMixFFN) and mlp.em_tau <= 1e-6
    assert not isinstance(model.encoder.stages[1].blocks[0].mlp, SoftMixFFN)


@pytest.mark.slow
def test_ffn_variant_exports_with_a_passing_self_check(tmp_path):
    manifest = export_bundle(ExportOptions("segformer-b0", "xfast-ffn-pa", resolution=RES, out=str(tmp_path / "b")))
    assert manifest["self_check"]["passed"]
    stages = manifest["plan"]["stages"]
    assert [(s["ffn_in"], s["ffn_kept"]) for s in stages[2:]] == [(64, 16), (16, 4)]


def test_show_records_the_ffn_sites():
    from edgemerge.show.merges import record_merges

    torch.manual_seed(0)
    model = apply_merging(build_model("segformer-b0", resolution=RES).eval(), get_plan("segformer-b0", "xfast-ffn-pa"))
    with record_merges(model) as sites, torch.no_grad():
        model(torch.randn(1, 3, *RES))
    stages = {s["stage"]: s for s in resolve("segformer-b0", get_plan("segformer-b0", "xfast-ffn-pa"), RES)["stages"]}
    ffn = [s for s in sites if s.kind == "ffn"]
    assert [(s.stage, s.block) for s in ffn] == [(3, 0), (3, 1), (4, 0), (4, 1)]
    assert all(s.tokens_out == stages[s.stage]["ffn_kept"] for s in ffn)
