"""`edgemerge bench`: merged artifact vs baseline, interleaved timing -> bench.json + plot."""

from __future__ import annotations

import click

from edgemerge.cli import check_output_file, main, progress_reporter
from edgemerge.cli.options import json_option, plugins_option


@main.command()
@click.argument("artifact", type=click.Path())
@click.option("--baseline", type=click.Path(), default=None, help="Baseline artifact (bundle dir, .onnx or .plan).")
@click.option("--unmerged", is_flag=True, help="Baseline: the same model with variant 'none' at the same settings.")
@click.option("--backend", type=click.Choice(["trt", "onnxruntime", "torch"]), default=None,
              help="Default: trt for .plan, onnxruntime for .onnx / bundle dir.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None,
              help="Default: cuda for trt, cpu otherwise.")
@click.option("--iters", "--iterations", "iters", default=50, show_default=True, type=int,
              help="Timed iterations per model (--iterations as in trtexec/polygraphy).")
@click.option("--warmup", default=5, show_default=True, type=int,
              help="Untimed iterations per model first (a count of iterations, not trtexec's milliseconds).")
@click.option("--baseline-dir", type=click.Path(file_okay=False), default=None,
              help="Keep the --unmerged baseline bundle here (reused when its settings match); default: a temp dir.")
@click.option("--threads", default=None, type=click.IntRange(min=1), help="CPU threads (default: all cores).")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0), help="Seed of the synthetic input.")
@plugins_option
@click.option("--report", "report_path", type=click.Path(), default=None,
              help="Report JSON file (default: bench.json next to ARTIFACT, in its bundle directory).")
@click.option("--plot", type=click.Path(), default=None,
              help="Latency plot PNG (default: the report path with .png, so bench.png in the bundle).")
@click.option("--power", is_flag=True, help="Jetson: board power from tegrastats, energy per frame.")
@click.option("--profile", is_flag=True,
              help="After the timing: time per op type for both models from the backend's own profiler, the merge "
                   "ops' share and a time bound; table on stdout, `profile` in the report, a stacked-bar PNG "
                   "(the plot path with -profile.png).")
@click.option("--profile-iters", default=10, show_default=True, type=click.IntRange(min=1),
              help="Profiled runs per model (interleaved, after --warmup runs).")
@json_option
def bench(artifact, baseline, unmerged, baseline_dir, backend, device, iters, warmup, threads, seed, plugins,
          report_path, plot, power, profile, profile_iters, as_json) -> None:
    """Time ARTIFACT (and its baseline, interleaved): latency percentiles, throughput, memory, speed-up.

    ARTIFACT is a bundle directory, its model.onnx or its model.plan; bench.json and bench.png go
    into that bundle directory unless --report / --plot say otherwise. With --json, stdout is the
    report JSON alone (the files are still written).
    """
    import os
    from pathlib import Path

    from edgemerge.bench.core import BenchOptions, json_bytes, plot_bytes, run_bench, summary_lines
    from edgemerge.contracts.files import write_files

    if report_path is None:  # beside the artifact, not wherever the command happens to run
        where = Path(artifact) if Path(artifact).is_dir() else Path(artifact).parent
        report_path = where / "bench.json"
    runs_on = backend or ("trt" if Path(artifact).suffix == ".plan" else "onnxruntime")  # bench's default
    if plugins and runs_on != "trt":  # they would be silently ignored
        from edgemerge.contracts.errors import EdgemergeError

        raise EdgemergeError(f"--plugins loads TensorRT plugin libraries, which only an engine uses; {artifact} "
                             f"runs on {runs_on}: bench the bundle's model.plan (or --backend trt), or drop --plugins")
    cores = os.cpu_count() or 1
    if threads is not None and threads > cores:  # oversubscribed: each thread waits for a core
        click.echo(f"edgemerge: warning: --threads {threads} is more than the {cores} CPU cores here: the "
                   f"timing will be far slower than with --threads {cores} or fewer", err=True)
    jpath = check_output_file(report_path, "bench report")  # before the timing, not after it
    ppath = check_output_file(plot or Path(report_path).with_suffix(".png"), "latency plot")
    prof_path = check_output_file(ppath.with_name(ppath.stem + "-profile.png"), "profile plot") if profile else None
    opts = BenchOptions(artifact=artifact, baseline=baseline, unmerged=unmerged, backend=backend, device=device,
                        iters=iters, warmup=warmup, power=power, seed=seed, threads=threads,
                        plugins=list(plugins) or None, workdir=baseline_dir, profile=profile,
                        profile_iters=profile_iters,
                        load_engine=_load_engine, exporter=_export)
    with progress_reporter("benchmarking") as report_progress:
        report = run_bench(opts, progress=report_progress,
                           warn=lambda msg: click.echo(f"edgemerge: warning: {msg}", err=True))
    files = [(jpath, json_bytes(report)), (ppath, plot_bytes(report))]
    if prof_path is not None and report.get("profile"):
        from edgemerge.bench.profile import plot_bytes as profile_plot_bytes

        files.append((prof_path, profile_plot_bytes(report["profile"], title=_profile_title(report))))
    write_files(files)  # all or none
    if as_json:  # stdout is the report alone, so that it pipes; where the files went goes to stderr
        click.echo(json_bytes(report).decode(), nl=False)
    else:
        for line in summary_lines(report):
            click.echo(line)
    click.echo(f"report: {jpath.resolve()}", err=as_json)  # say where, absolute, whichever default applied
    click.echo(f"plot:   {ppath.resolve()}", err=as_json)
    if prof_path is not None and report.get("profile"):
        click.echo(f"profile plot: {prof_path.resolve()}", err=as_json)


def _profile_title(report) -> str:
    m, b = report["models"]["merged"], report["models"]["baseline"]
    return f"{m['label']} vs {b['variant']}: {report['backend']} / {report['device']}"


def _load_engine(path, plugins=None):
    """edgemerge.trt's loader, looked up when called (bench does not import the TensorRT side)."""
    from edgemerge.trt import builder

    return builder.load_engine(path, plugins=plugins)


def _export(opts, progress=lambda s: None):
    """An export that can also build the engine (the trt backend's unmerged baseline)."""
    from edgemerge.export.bundle import export_bundle
    from edgemerge.trt import builder

    return export_bundle(opts, progress=progress, build_engine=builder.build_engine)
