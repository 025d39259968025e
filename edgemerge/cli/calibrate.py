"""`edgemerge calibrate`: ALGM's static counts from a folder of images (adaptive mode, quantile)."""

from __future__ import annotations

from pathlib import Path

import click

from edgemerge.cli import check_output_file, console as make_console, main, progress_reporter
from edgemerge.contracts.progress import counter
from edgemerge.cli.options import resolution_option


@main.command()
@click.option("--model", "-m", required=True, help="A segmenter-vit-* model (ALGM).")
@click.option("--images", "-i", required=True, type=click.Path(), help="Folder of images (png, jpg, ...).")
@click.option("--checkpoint", "-c", type=click.Path(), default=None, help="Weights; default: random weights.")
@resolution_option("Input HxW, default: the model's.")
@click.option("--quantile", "-q", default=0.5, show_default=True, type=float,
              help="Quantile of the per-image fractions to keep (lower = fewer merges = conservative).")
@click.option("--out", "-o", type=click.Path(), default=None, help="JSON file, default: MODEL-calibration.json.")
def calibrate(model: str, images: str, checkpoint: str | None, resolution: tuple[int, int] | None, quantile: float,
              out: str | None) -> None:
    """Run ALGM adaptively over images and write static local/global fractions for plan/export."""
    from rich.table import Table

    from edgemerge.merge.calibrate import calibrate as run, summary, write_calibration

    console = make_console(stderr=True)
    path = check_output_file(out or f"{model}-calibration.json", "calibration file")  # before the run
    with progress_reporter("calibrating") as report:
        result = run(model, images, checkpoint=checkpoint, resolution=resolution,
                     quantile=quantile, progress=counter(report, "calibrating: image"))
    path = write_calibration(result, path)
    if checkpoint is None:  # after the run, so that bad input stays a one-line error
        console.print(f"[yellow]note:[/] no --checkpoint given: calibrated {model} with RANDOM weights; "
                      "the fractions say nothing about a trained model.")
    res = "x".join(map(str, result["resolution"]))
    table = Table("site", "min", "median", "max", f"kept (q={quantile:g})",
                  title=f"{model} ALGM fractions over {result['images']} images at {res}")
    for row in summary(result):
        table.add_row(row["site"], *(f"{row[k]:.3f}" for k in ("min", "median", "max", "kept")))
    console.print(table)
    console.print(f"wrote {Path(path).resolve()}; use it with `edgemerge plan|export --model {model} --variant algm "
                  f"--calibration {path}`")
