"""`edgemerge export`: model + variant -> bundle (ONNX, manifest, reference, engine or script)."""

from __future__ import annotations

import click

from edgemerge.cli import console as make_console, main, progress_reporter
from edgemerge.cli.options import plugins_option, resolution_option


@main.command()
@click.option("--model", "-m", default=None, help="Zoo model name (see `edgemerge models`); required unless --plan names it.")
@click.option("--variant", "-v", default=None, help="Merge variant of export_configs/MODEL.toml.  [default: none]")
@click.option("--plan", "plan_file", type=click.Path(), default=None,
              help="A plan file instead of a shipped variant: export_configs' schema with `model` and one "
                   "[variants.NAME] (what `edgemerge tune` writes as plan.toml).")
@click.option("--checkpoint", "-c", type=click.Path(), default=None,
              help="Weights, detected from the content: a Hugging Face dir (model.safetensors or pytorch_model.bin), "
                   "a .safetensors file, mmseg/NVlabs SegFormer, timm ViT/DeiT or Segmenter .pth, DTEM's .pth.tar, "
                   "or a state_dict() saved with torch.save. Default: random weights.")
@resolution_option("Input HxW (static), default: the model's.")
@click.option("--batch", default=1, show_default=True, type=int)
@click.option("--precision", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True)
@click.option("--merge-ops", type=click.Choice(["plugin", "native"]), default="plugin", show_default=True,
              help="plugin: edgemerge nodes (+ standard-op function bodies); native: standard ops only.")
@click.option("--opset", default=18, show_default=True, type=int, help="ONNX opset, 17..25.")
@click.option("--num-classes", type=int, default=None, callback=lambda ctx, param, v: _two_classes_at_least(v),
              help="Class count (must match the checkpoint's; at least 2).")
@click.option("--calibration", type=click.Path(), default=None, help="ALGM counts from `edgemerge calibrate`.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0), help="Seed of random weights and check inputs.")
@click.option("--engine", is_flag=True, help="Also build the TensorRT engine (needs TensorRT and a GPU).")
@plugins_option
@click.option("--out", "-o", type=click.Path(), default=None,
              help="Bundle directory, default: MODEL-VARIANT plus what differs from the defaults "
                   "(-fp16, -HxW, -native, -bN); an existing bundle there is replaced, and said so.")
def export(model, variant, plan_file, checkpoint, resolution, batch, precision, merge_ops, opset, num_classes,
           calibration, seed, engine, plugins, out) -> None:
    """Export a merged model to a self-checked ONNX bundle for TensorRT."""
    from edgemerge.contracts.manifest import ExportOptions
    from edgemerge.export.bundle import export_bundle

    model, variant = _model_and_variant(model, variant, plan_file)
    if checkpoint is not None:  # a missing file, a FIFO or a device: refused before the export starts
        from edgemerge.models.checkpoint import check_checkpoint_path

        check_checkpoint_path(checkpoint)
    console = make_console(stderr=True)
    opts = ExportOptions(model=model, variant=variant, checkpoint=checkpoint, resolution=resolution,
                         batch=batch, precision=precision, merge_ops=merge_ops, opset=opset, out=out, seed=seed,
                         num_classes=num_classes, calibration=calibration, engine=engine, plugins=list(plugins) or None,
                         plan_file=plan_file)
    with progress_reporter("exporting") as report:
        manifest = export_bundle(opts, progress=report, build_engine=_build_engine if engine else None)
    if checkpoint is None:  # after the export, so that bad input stays a one-line error
        console.print(f"[yellow]note:[/] no --checkpoint given: exported {model} with RANDOM weights (seed {seed}); "
                      "its outputs mean nothing, the pipeline is what is exercised.")
    check = manifest["self_check"]
    plan = manifest["plan"]
    g = plan["gflops"]
    replaced = "  (replaced the bundle that was there)" if manifest["replaced"] else ""
    click.echo(f"bundle: {manifest['bundle']}/{replaced}")
    if info := manifest.get("checkpoint"):
        click.echo(f"  checkpoint  {info['format']} format, {manifest['num_classes']} classes")
    click.echo(f"  model.onnx  sha256 {manifest['onnx_sha256'][:16]}  ops: {', '.join(manifest['custom_ops']) or 'standard only'}")
    click.echo(f"  self-check  ONNX Runtime vs PyTorch: argmax agreement {check['argmax_agreement'] * 100:.2f}%, "
               f"max abs error {check['max_abs_rel_range']:.1e} of the logits' range")
    click.echo(f"  GFLOPs      merged {g['merged']:.1f} vs unmerged {g['unmerged']:.1f} ({g['ratio']:.2f}x)")
    if "model.plan" in manifest["files"]:
        click.echo("  engine      model.plan")
    else:
        click.echo("  engine      not built here (TensorRT/GPU absent or --engine not given): "
                   "run build_on_device.sh on the target")


def _model_and_variant(model: str | None, variant: str | None, plan_file: str | None) -> tuple[str, str]:
    """--model/--variant, or what the plan file names (it holds one model's one variant)."""
    if plan_file is None:
        if model is None:
            raise click.UsageError("Missing option '--model' / '-m' (or give --plan FILE).")
        return model, variant or "none"
    if variant is not None:
        raise click.UsageError("--plan FILE names its variant: drop --variant")
    from edgemerge.merge.plan import read_plan_file

    named, name, _, _ = read_plan_file(plan_file, model)
    return named, name


def _two_classes_at_least(n):
    """--num-classes: a segmentation or classification head needs two classes (one: every argmax is 0)."""
    if n is not None and n < 2:
        raise click.BadParameter(f"{n}: a segmentation or classification head needs at least 2 classes")
    return n


def _build_engine(*args, **kwargs):
    """edgemerge.trt's builder, looked up when called (export does not import the TensorRT side)."""
    from edgemerge.trt import builder

    return builder.build_engine(*args, **kwargs)
