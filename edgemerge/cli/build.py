"""`edgemerge build MODEL.onnx`: a TensorRT engine + build record from an export bundle."""

from __future__ import annotations

from pathlib import Path

import click

from edgemerge.cli import main


@main.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Engine path (default: model.plan beside the ONNX); the record is <out>.json.")
@click.option("--plugins", "plugins", multiple=True, type=click.Path(dir_okay=False),
              help="C++ plugin library (libedgemerge_plugins.so); default: Python plugins on TensorRT >= 10.6.")
@click.option("--workspace", "workspace_mib", type=click.IntRange(min=1), default=None,
              help="Builder workspace limit in MiB.")
@click.option("--timing-cache", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Timing cache file, read if present and written after the build.")
@click.option("--allow-body-only", is_flag=True,
              help="Accept an engine without the edgemerge plugins (the merge ops' standard-op bodies, inlined).")
def build(model: Path, out: Path | None, plugins: tuple[str, ...], workspace_mib: int | None,
          timing_cache: Path | None, allow_body_only: bool) -> None:
    """Build MODEL.onnx (from an `edgemerge export` bundle) into a TensorRT engine on this GPU."""
    from edgemerge.trt.builder import build_engine

    engine = out or model.with_suffix(".plan")
    record = build_engine(model, engine, plugins=list(plugins) or None, workspace_mib=workspace_mib,
                          timing_cache=timing_cache, allow_body_only=allow_body_only)
    typing = "strongly typed" if record.strongly_typed else ("FP16 flag" if record.fp16_flag else "fp32")
    click.echo(f"{engine}: TensorRT {record.tensorrt_version}, {record.gpu_name} "
               f"(sm {record.compute_capability}), {record.precision} ({typing}), plugins: {record.plugins}, "
               f"{record.engine_size / 2**20:.1f} MiB in {record.build_seconds} s")
    click.echo(f"graph {record.graph}; plugin layers / merge sites: {record.plugin_summary()}")
