"""`edgemerge tune`: the plan that meets a target on your images and device, measured there."""

from __future__ import annotations

import sys

import click

from edgemerge.cli import main, progress_reporter
from edgemerge.cli.options import resolution_option
from edgemerge.tune.api import MAX_TIMED


@main.command()
@click.option("--model", "-m", required=True, help="Zoo model name (see `edgemerge models`).")
@click.option("--images", "-i", required=True, type=click.Path(), help="Folder of your images (png, jpg, ...).")
@click.option("--labels", type=click.Path(), default=None,
              help="Label maps matched by file stem: the drop is then mIoU points lost, else % of pixels changed.")
@click.option("--checkpoint", "-c", type=click.Path(), default=None, help="Weights; default: random weights.")
@resolution_option("Input HxW (static), default: the model's.")
@click.option("--max-drop", type=float, default=None, help="Target: the fastest plan costing at most this drop.")
@click.option("--min-speedup", type=float, default=None,
              help="Target: the most faithful plan at least this much faster than the unmerged model.")
@click.option("--backend", type=click.Choice(["onnxruntime", "tensorrt"]), default="onnxruntime", show_default=True)
@click.option("--threads", type=int, default=1, show_default=True, help="CPU threads for ONNX Runtime timing.")
@click.option("--budget", type=float, default=25.0, show_default=True,
              help="Minutes for the whole tune (search about 60%, timing the rest).")
@click.option("--trials", type=int, default=60, show_default=True, help="Plans to judge in the search (at most).")
@click.option("--timed", type=int, default=MAX_TIMED, show_default=True,
              help="Plans exported and timed: the feasible shipped variants, then the front.")
@click.option("--iters", type=int, default=20, show_default=True, help="Timed iterations per round of timing.")
@click.option("--storage", default=None,
              help="Study storage URL (postgresql://user@host/db to share one study between machines); "
                   "default: OUT/tune.db (SQLite, resumable).")
@click.option("--search-only", is_flag=True,
              help="Judge plans into the (shared) study only: a worker on a machine without the target device.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0))
@click.option("--out", "-o", type=click.Path(), default="tune", show_default=True,
              help="Folder for plan.toml, tune.json, front.png, the study and the timed bundles.")
def tune(model, images, labels, checkpoint, resolution, max_drop, min_speedup, backend, threads, budget, trials,
         timed, iters, storage, search_only, seed, out) -> None:
    """Search merge plans for your target: fidelity in PyTorch first, then the front timed on the device."""
    from edgemerge.tune.api import TuneOptions, run_tune

    opts = TuneOptions(model=model, images=images, labels=labels, checkpoint=checkpoint, resolution=resolution,
                       max_drop=max_drop, min_speedup=min_speedup, backend=backend, threads=threads, budget=budget,
                       trials=trials, timed=timed, iters=iters, out=out, storage=storage, search_only=search_only,
                       seed=seed)
    note = lambda msg: click.echo(f"edgemerge: note: {msg}", err=True)  # noqa: E731
    with progress_reporter("tuning") as report:
        record = run_tune(opts, progress=report, note=note)
    if search_only:
        click.echo(f"study {record['study']}: {len(record['trials'])} plans judged")
        return
    chosen = record["chosen"]
    for r in sorted((r for r in record["trials"] if r.get("speedup") is not None), key=lambda r: -r["speedup"]):
        mark = "*" if r.get("chosen") else " "
        click.echo(f"{mark} {r['name']:<14} speed-up {r['speedup']:.3f} ({r['speedup_lo']:.3f}..{r['speedup_hi']:.3f})"
                   f"  drop {r['drop']:.2f} ({r['drop_lo']:.2f}..{r['drop_hi']:.2f})  {r['gflops']:.2f} GFLOPs")
    retimed = chosen.get("retimed_speedup")
    click.echo(f"chosen: {chosen['name']}: {record['verdict']}"
               + (f"; re-timed in a fresh process: {retimed:.3f}" if retimed else ""))
    click.echo(f"wrote {out}/plan.toml, {out}/tune.json, {out}/front.png")
    if not record["met"]:
        click.echo(f"edgemerge: error: target not met: {record['verdict']}", err=True)
        sys.exit(1)
