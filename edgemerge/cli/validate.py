"""`edgemerge validate`: an exported ONNX file or engine against the PyTorch model it came from."""

from __future__ import annotations

import click

from edgemerge.cli import console, main, progress_reporter
from edgemerge.cli.options import plugins_option
from edgemerge.validate.api import _fmt


MERGE_NOTE = ("merge.same_destination_worst: at the worst merge site, of the tokens that merge in the "
              "artifact's decision or in the reference op's on the same metric tensor (PyTorch replaying the "
              "artifact's earlier decisions), the fraction that merge into the same destination in both; a "
              "token within the near-tie bound of going the other way is excused and counted. "
              "merge.metric_rel_l2_worst: how far the tensor a site matched on is from PyTorch's. "
              "merge tokens same fate: the fraction of all tokens, kept ones included (informative only: "
              "unrelated matchings agree on most kept tokens).")


@main.command()
@click.argument("artifact", type=click.Path())
@click.option("--images", type=click.Path(), default=None,
              help="Folder of images (resized + normalised per the manifest). Default: seeded synthetic scenes.")
@click.option("--labels", type=click.Path(), default=None,
              help="Folder of label PNGs, matched to the images by file stem and of their size (0..K-1, 255 ignored).")
@click.option("--num", "-n", type=int, default=None, help="Number of images (default: 4 synthetic, or all).")
@click.option("--atol", type=float, default=None, help="Limit on the max abs error (logit units), >= 0.")
@click.option("--rtol", type=float, default=None,
              help="Limit on the max abs error as a fraction of the reference logits' range, >= 0 (fp32 default "
                   "1e-3); unlike polygraphy's per-element rtol.")
@click.option("--min-agreement", type=float, default=None,
              help="Minimum argmax pixel agreement, a fraction in [0, 1] (default: fp32 0.999, fp16 0.99).")
@click.option("--localize", is_flag=True, help="On failure, name the first ONNX node whose output diverges.")
@click.option("--out", "-o", type=click.Path(), default=None,
              help="Report folder (report.json, report.png). Default: validate_report/ in the bundle.")
@click.option("--rows", type=click.IntRange(min=1), default=3, show_default=True,
              help="Inputs drawn in report.png, one row each: image, ground truth (with --labels), PyTorch, "
                   "the artifact, their disagreement; a class legend below.")
@plugins_option
@click.option("--reference", type=click.Choice(["auto", "pytorch", "stored"]), default="auto", show_default=True,
              help="pytorch: rebuild the model from the manifest; stored: the bundle's reference.npz; "
                   "auto: PyTorch when torch is installed.")
def validate(artifact, images, labels, num, atol, rtol, min_agreement, localize, out, rows, plugins,
             reference) -> None:
    """Check that ARTIFACT (bundle dir, model.onnx or model.plan) matches PyTorch; exit 1 when not."""
    from rich.table import Table

    from edgemerge.contracts.errors import CheckFailed
    from edgemerge.validate.api import validate_artifact

    with progress_reporter("validating") as report_progress:
        report = validate_artifact(artifact, images=images, labels=labels, num=num, atol=atol, rtol=rtol,
                                   min_agreement=min_agreement, localize=localize, out=out,
                                   plugins=list(plugins) or None, reference=reference, rows=rows,
                                   progress=report_progress, load_engine=_load_engine, exporter=_export)
    a = report["artifact"]
    table = Table(title=f"{a['kind']} ({a['precision']}) vs {report['reference']['kind']}, "
                        f"{report['inputs']['count']} input(s)")
    for col in ("metric", "value", "limit", ""):
        table.add_column(col)
    for c in report["checks"]:
        table.add_row(f"{c['output']}.{c['metric']}", _fmt(c["value"]), f"{c['op']} {c['threshold']:g}",
                      "[green]pass[/]" if c["passed"] else "[red]FAIL[/]")
    for o, m in report["metrics"].items():
        for k in ("max_abs", "mean_abs", "max_abs_rel_range", "max_rel", "mean_rel", "cosine", "miou_vs_reference"):
            if k not in {c["metric"] for c in report["checks"]}:
                table.add_row(f"{o}.{k}", _fmt(m.get(k)), "", "")
    merge = report["merge_decisions"]
    if merge.get("available") and merge.get("sites"):
        table.add_row("merge near-ties excused", f"{merge['near_ties_excused']} (bound {merge['near_tie']:g})",
                      f"{merge['sites']} sites", "[dim]info[/]")
        table.add_row("merge tokens same fate", _fmt(merge["tokens_same_fate"]), "none: informative", "[dim]info[/]")
        table.caption, table.caption_justify = MERGE_NOTE, "left"
    elif merge.get("available"):
        table.add_row("merge decisions", "n/a", "the artifact has no merge sites", "")
    else:
        table.add_row("merge decisions", "n/a", merge.get("reason", ""), "")
    if report.get("engine_build"):
        table.add_row("plugin layers / merge sites", report["engine_build"]["summary"], "", "")
    if report.get("labels"):
        lab = report["labels"]
        table.add_row("mIoU PyTorch / artifact", f"{_fmt(lab['miou_reference'])} / {_fmt(lab['miou_artifact'])}",
                      f"diff {_fmt(lab['miou_difference'])}", "")
        if lab.get("miou_unmerged") is not None and report["model"]["variant"] != "none":
            table.add_row("mIoU unmerged PyTorch", _fmt(lab["miou_unmerged"]),
                          f"merging costs {_fmt(lab['miou_cost_of_merging'])}", "[dim]info[/]")
    console().print(table)
    loc = report.get("localize")
    if loc and loc.get("first_divergent"):
        f = loc["first_divergent"]
        click.echo(f"first diverging node: {f['op_type']} {f['name']} (output {f['output']}, error {_fmt(f['error'])})")
    elif loc and loc.get("ran") is not False and loc.get("reason"):
        click.echo(f"localize: {loc['reason']}")
    for w in report.get("warnings", []):
        click.echo(f"edgemerge: warning: {w}", err=True)
    click.echo(f"report: {report['report_files']['json']}")
    if report["report_files"].get("png"):
        click.echo(f"figure: {report['report_files']['png']}")
    if not report["passed"]:
        raise CheckFailed(report["failure"])


def _load_engine(path, plugins=None):
    """edgemerge.trt's loader, looked up when called (validate does not import the TensorRT side)."""
    from edgemerge.trt import builder

    return builder.load_engine(path, plugins=plugins)


def _export(opts):
    from edgemerge.export.bundle import export_bundle

    return export_bundle(opts)
