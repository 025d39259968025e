"""A model family added from this file alone (docs/extending.md): its model, config and builder, its
plan dataclass, its merge hook and its adapter are defined and registered here, and the unmodified
CLI exports it from a plan file with its self-check, then validates the bundle (merge decisions
included). If any other file had to know the family, this would fail."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from edgemerge.merge import core
from edgemerge.merge.family import Family, family_for, register
from edgemerge.merge.patch import _swap
from edgemerge.merge.plan import field_spec
from edgemerge.models.registry import ModelConfig, register as register_model, register_builder

HERE = Path(__file__).resolve().parent


class ToyBlock(nn.Module):
    """A token-mixing MLP block with a merge hook that does nothing until a plan patches it."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def reduce_tokens(self, x: Tensor) -> Tensor:
        return x

    def forward(self, x: Tensor) -> Tensor:
        return self.reduce_tokens(x + self.mlp(self.norm(x)))


class ToyNet(nn.Module):
    """Patches -> tokens -> blocks -> mean token -> class logits."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        dim, p = cfg.widths[0], cfg.patch_size
        self.embed = nn.Conv2d(3, dim, p, p)
        self.blocks = nn.ModuleList(ToyBlock(dim) for _ in range(cfg.depths[0]))
        self.head = nn.Linear(dim, cfg.num_classes)

    def forward(self, images: Tensor) -> Tensor:
        x = self.embed(images).flatten(2).transpose(1, 2)
        for blk in self.blocks:
            x = blk(x)
        return self.head(x.mean(1))


@dataclass(frozen=True)
class ToyPlan:
    r: int = field(metadata=field_spec("an integer 0..32", lambda v, cfg: 0 <= v <= 32))
    blocks: int = field(default=1, metadata=field_spec("an integer >= 1", lambda v, cfg: v >= 1))


class ToyMergingBlock(ToyBlock):
    """ToMe's bipartite matching on the tokens after the MLP: r merge into their best match."""

    em_r: int
    em_block: int

    def reduce_tokens(self, x: Tensor) -> Tensor:
        n = x.shape[1]
        src, dst = core.alternating(n)
        fns = core.bipartite_match(x, min(self.em_r, n // 2), src, dst)
        merged = fns.merge(x)[0]
        if core.observed():
            core.publish(core.SiteEvent(f"blocks.{self.em_block}", None, self.em_block, "tokens", None, n,
                                        merged.shape[1], fns.slot))
        return merged


def toy_patch(model: nn.Module, plan: ToyPlan, state) -> None:
    for i, blk in enumerate(model.blocks[:plan.blocks]):
        _swap(blk, ToyMergingBlock, em_r=plan.r, em_block=i)


def toy_counts(model: nn.Module, events: list) -> dict:
    return {"sites": [{"block": e.block, "tokens_in": e.tokens_in, "tokens_kept": e.tokens_out} for e in events]}


def register_toy() -> None:
    register_model(lambda: ModelConfig("toy-net", "toy", (64, 64), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 7, 8,
                                       (8,), (3,), (32,), (1,)))
    register_builder("toy", ToyNet)
    register(Family(names=("toy",), plan_class=ToyPlan, plan=lambda v, cal, mode: ToyPlan(**v), patch=toy_patch,
                    counts=toy_counts, unit=lambda cfg: cfg.patch_size, learned_metric_keys=lambda cfg, p: [],
                    task="classify"))


PLAN = 'model = "toy-net"\n[variants.half]\nr = 16\nblocks = 2\n'


def cli(*args: str) -> subprocess.CompletedProcess:
    """The unmodified CLI, in a process where only this file registered the family."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import test_family; test_family.register_toy(); "
            "from edgemerge.cli import main; main(sys.argv[2:], prog_name='edgemerge')")
    return subprocess.run([sys.executable, "-c", code, str(HERE), *args], capture_output=True, text=True)


@pytest.mark.slow
def test_a_family_registered_here_exports_with_its_self_check_and_validates(tmp_path):
    (tmp_path / "plan.toml").write_text(PLAN)
    out = tmp_path / "toy"
    proc = cli("export", "--plan", str(tmp_path / "plan.toml"), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["family"] == "toy" and manifest["variant"] == "half"
    # 64 tokens -> 48 -> 32: the counts come from the toy's own SiteEvents, through its adapter
    assert manifest["plan"]["sites"] == [{"block": 0, "tokens_in": 64, "tokens_kept": 48},
                                         {"block": 1, "tokens_in": 48, "tokens_kept": 32}]
    assert manifest["custom_ops"] == ["TokenMatchBipartite", "TokenMerge"]
    assert manifest["self_check"]["argmax_agreement"] == 1.0
    assert manifest["reference"]["inputs"] == 8  # a classifier (the adapter's task): 8 reference inputs
    proc = cli("validate", str(out), "--out", str(tmp_path / "rep"))
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    decisions = report["merge_decisions"]
    assert report["passed"] and decisions["available"] and decisions["sites"] == 2
    assert decisions["same_destination_worst"] == 1.0
    # a plan the toy's schema refuses is refused with the file and the key, before any work
    (tmp_path / "bad.toml").write_text(PLAN.replace("r = 16", "r = 99"))
    proc = cli("export", "--plan", str(tmp_path / "bad.toml"), "-o", str(tmp_path / "never"))
    assert proc.returncode == 2 and "variants.half.r = 99: allowed: an integer 0..32" in proc.stderr
    assert not (tmp_path / "never").exists()


def test_builtin_families_have_adapters():
    for name, cls in [("segformer", "SegformerPlan"), ("vit", "ToMePlan"), ("deit", "ToMePlan"),
                      ("segmenter", "ALGMPlan")]:
        assert family_for(name).plan_class.__name__ == cls


def test_merge_hook_classes_keep_their_exported_paths():
    """Every exported node records its module's class path (ONNX metadata 'namespace'): moving a
    hook class changes every bundle's bytes (benchmarks/same_exports.sh), so the paths are pinned."""
    from edgemerge.merge import patch

    for cls in (patch.SegformerPPAttention, patch.SegformerPPMixFFN, patch.MergingBlock, patch.FusedMetricAttention):
        assert cls.__module__ == "edgemerge.merge.patch"


def test_counts_report_an_uneven_plan_per_block():
    """A stage whose blocks merge differently reports each count per block (the old watcher kept
    the last block's and misreported an uneven plan silently)."""
    import dataclasses

    from edgemerge.merge.families.segformer import counts as segformer_counts
    from edgemerge.merge.patch import apply_merging
    from edgemerge.merge.plan import get_plan
    from edgemerge.models.registry import build_from_config, get_config

    cfg = dataclasses.replace(get_config("segformer-b0"), resolution=(128, 128))
    with torch.device("meta"):
        model = build_from_config(cfg)
    apply_merging(model, get_plan("segformer-b0", "hq"))
    model.encoder.stages[0].blocks[1].attn.em_kv = None  # block 1 of stage 1 keeps its keys/values
    events: list = []
    with torch.no_grad(), core.observe(lambda e: isinstance(e, core.SiteEvent) and events.append(e)):
        model(torch.empty(1, 3, 128, 128, device="meta"))
    stage1, stage2 = segformer_counts(model, events)["stages"][:2]
    assert stage1["kv_kept"] == [7, 16] and stage1["kv_in"] == 16
    assert stage2["kv_kept"] == 7  # an even stage stays one number
