"""The PyTorch reference: the merged model a bundle is made from, and checked against.

Built in one place: `build_reference` for the exporter and `show`, `reference_from_manifest` for
everything that starts from a bundle (validate, bench), which also checks that the checkpoint is
the one exported from (sha256). Needs torch; imports nothing above the models and merge layers.
"""

from __future__ import annotations

from pathlib import Path

from edgemerge.contracts.errors import EdgemergeError
from edgemerge.contracts.files import sha256_file
from edgemerge.contracts.manifest import MANIFEST, Manifest


def build_reference(model_name: str, variant: str, *, checkpoint: str | None = None,
                    resolution: tuple[int, int] | None = None, seed: int = 0,
                    num_classes: int | None = None, calibration: dict | None = None, mode: str | None = None,
                    plan_table: dict | None = None):
    """The merged PyTorch model a bundle is made from (or checked against); eval mode, fp32.
    `plan_table`: the variant's table from a user's plan file (`export --plan`), instead of
    export_configs'.

    Returns (model, config, checkpoint_info or None).
    """
    import torch

    from edgemerge.merge.patch import apply_merging
    from edgemerge.merge.plan import get_plan, plan_from_table
    from edgemerge.models.registry import build_model, deployed_form, get_config
    from edgemerge.models.checkpoint import load_checkpoint

    cfg = get_config(model_name)
    plan = (get_plan(model_name, variant, calibration=calibration, mode=mode) if plan_table is None else
            plan_from_table(model_name, plan_table, calibration=calibration, mode=mode))
    info = None
    if checkpoint is not None:
        model, info = load_checkpoint(model_name, checkpoint, num_classes=num_classes, resolution=resolution)
    else:
        torch.manual_seed(seed)
        model = build_model(model_name, num_classes=num_classes, resolution=resolution)
        _randomize_norm_stats(model, seed)
    if info is not None:
        _require_learned_metric(model_name, variant, plan, info)
    apply_merging(model, plan, dtem_state=info.merge_state if info else None)
    deployed_form(model)  # what is exported is what the reference runs
    return model.eval(), cfg, info


def _require_learned_metric(model_name: str, variant: str, plan, info) -> None:
    """A learned-metric variant on a checkpoint without the metric is a mistake, not a reason to
    fall back to the keys/tokens (without a checkpoint, the metric starts as today's)."""
    from edgemerge.merge.patch import learned_metric_keys

    want = learned_metric_keys(model_name, plan)
    missing = [k for k in want if k not in info.merge_state]
    if missing:
        have = "none of them" if len(missing) == len(want) else f"{len(want) - len(missing)} of {len(want)}"
        raise EdgemergeError(f"--variant {variant} needs a learned merge metric ({missing[0].replace('.weight', '.*')} "
                             f"...), but {info.path} ({info.format} layout) has {have} (DTEM files: "
                             f"attn.qkv.metric_layer.*); train one with edgemerge train-metric, or use the "
                             f"variant without it (tome / hq / fast)")


def _randomize_norm_stats(model, seed: int) -> None:
    """Random BatchNorm statistics and norm affines, so a random-weight model is not degenerate.

    With torch's default init every LayerNorm is the identity affine and the class scores of a
    random model differ by little more than fp16 rounding; trained models have neither property.
    """
    import torch

    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            if isinstance(m, (torch.nn.LayerNorm, torch.nn.BatchNorm2d)) and m.weight is not None:
                m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))


def checked_checkpoint(manifest: dict) -> str | None:
    """The checkpoint path, refused when the file is gone or is not the one exported from."""
    ckpt = manifest.get("checkpoint")
    if not ckpt:
        return None
    path = Path(ckpt["path"])
    weights = path
    if path.is_dir():  # a Hugging Face directory: the sha256 is of its weights file
        found = [path / n for n in ("model.safetensors", "pytorch_model.bin") if (path / n).is_file()]
        weights = found[0] if found else None
    if not path.exists() or weights is None:
        raise EdgemergeError(f"checkpoint {path} named in {MANIFEST} is gone: put it back, or validate "
                             f"against the bundle's stored outputs (--reference stored)")
    got = sha256_file(weights)
    if got != ckpt.get("sha256"):
        raise EdgemergeError(f"checkpoint {weights} changed since export (sha256 {got[:16]}, manifest says "
                             f"{str(ckpt.get('sha256'))[:16]}): the PyTorch reference would not be the exported model")
    return str(path)


def reference_from_manifest(manifest: Manifest, variant: str | None = None):
    """The merged PyTorch model exactly as exported (eval, fp32), or its `variant` at the same
    settings; the checkpoint must be the one the manifest names, by sha256."""
    checkpoint = checked_checkpoint(manifest)
    from_file = manifest.get("plan_file")  # exported with --plan: the table it recorded
    table = from_file["table"] if from_file and variant in (None, manifest["variant"]) else None
    model, _, _ = build_reference(
        manifest["model"], variant or manifest["variant"], checkpoint=checkpoint,
        resolution=tuple(manifest["resolution"]), seed=int(manifest.get("seed", 0)),
        num_classes=manifest.get("num_classes"), calibration=manifest.get("calibration"), plan_table=table)
    return model


def prefix_tokens(model) -> int:
    """The tokens a ViT keeps out of merging (CLS, and DeiT's distillation token); 1 otherwise."""
    from edgemerge.models.vit import VisionTransformer

    for m in model.modules():
        if isinstance(m, VisionTransformer):
            return int(m.num_prefix_tokens)
    return 1


def replay_reference(model, batches: list, artifact_slots: list[list], artifact_metrics: list[list] | None = None
                     ) -> tuple[list, list[dict]]:
    """PyTorch run with an artifact's merge decisions, and what each site should have decided.

    Replaying the artifact's decisions makes the logits a check of numerics alone (a flipped
    near-tie legitimately merges other tokens). At every site PyTorch's metric is taken given
    the artifact's history, so one early flip cannot compound into later sites; where the
    artifact's own metric tensors are given, the reference op also decides on them (fp32, as the
    op spec says), which judges the matching exactly, whatever the precision of what fed it.
    Returns (outputs per batch, sites) as edgemerge.contracts.compare.judge_decisions takes them, stacked
    over batches."""
    import numpy as np
    import torch

    from edgemerge.contracts.compare import decision_margins
    from edgemerge.merge import ops
    from edgemerge.merge.core import MatchEvent, observe, replay_decisions

    def decide(kind: str, metric: np.ndarray, count: int, a: dict) -> np.ndarray:
        m = torch.from_numpy(np.ascontiguousarray(metric, np.float32))
        if kind == "window":
            return ops.match_window_ref(m, a["height"], a["width"], count, a["protect"]).numpy()
        if kind == "cell":
            return ops.match_cell_ref(m, count, a["height"], a["width"], a["sy"], a["sx"]).numpy()
        return ops.match_bipartite_ref(m, count, a["src"], a["dst"], a["protect"]).numpy()

    outputs, per_batch = [], []
    for k, (b, slots) in enumerate(zip(batches, artifact_slots)):
        events: list[dict] = []

        def seen(e) -> None:
            if not isinstance(e, MatchEvent) or e.own is None:
                return
            metric = e.metric.float().numpy()
            site = {"kind": e.kind, "count": e.count, "args": e.args, "own": e.own.numpy(), "metric": metric}
            if artifact_metrics is not None:
                theirs = np.asarray(artifact_metrics[k][len(events)], np.float32).reshape(metric.shape)
                site.update(artifact_metric=theirs, on_artifact_metric=decide(e.kind, theirs, e.count, e.args))
            events.append(site)

        with torch.no_grad(), observe(seen), replay_decisions([torch.from_numpy(np.asarray(s)) for s in slots]):
            outputs.append(model(torch.from_numpy(np.ascontiguousarray(b, np.float32))).numpy())
        per_batch.append(events)
    sites = []
    for i, first in enumerate(per_batch[0] if per_batch else []):
        site = {key: (np.concatenate([ev[i][key] for ev in per_batch]) if isinstance(first[key], np.ndarray)
                      else first[key]) for key in first}
        scores_of = site.get("artifact_metric", site["metric"])
        site["margins"] = decision_margins(scores_of, site["kind"], site["count"], site["args"])
        sites.append(site)
    return outputs, sites
