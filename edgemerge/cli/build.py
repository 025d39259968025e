"""`edgemerge build BUNDLE`: a TensorRT engine + build record from an export bundle."""

from __future__ import annotations

from pathlib import Path

import click

from edgemerge.cli import main
from edgemerge.cli.options import plugins_option
from edgemerge.contracts.manifest import MANIFEST

# What a user without TensorRT needs to hear: it needs an NVIDIA GPU, and how to get it from a
# source checkout (the README installs with `pip install -e .`) or on a Jetson.
TRT_HINT = ("TensorRT is not installed here, and `edgemerge build` needs it and an NVIDIA GPU (CUDA driver): "
            "in a source checkout run pip install -e '.[trt]' on the GPU machine; on Jetson TensorRT comes "
            "with JetPack (use a venv with --system-site-packages); without a GPU, copy the bundle to the "
            "target and run its build_on_device.sh there")


def resolve_onnx(artifact: Path) -> Path:
    """The bundle's model.onnx: ARTIFACT is a bundle directory (as for validate and bench) or the
    model.onnx in one."""
    if artifact.is_dir():
        onnx_path = artifact / "model.onnx"
        if not (artifact / MANIFEST).is_file():
            raise click.UsageError(f"{artifact}: no {MANIFEST} in this directory; "
                                   "build an `edgemerge export` bundle (its directory or its model.onnx)")
        if not onnx_path.is_file():
            raise click.UsageError(f"{artifact}: bundle has no model.onnx")
        return onnx_path
    if not artifact.exists():
        raise click.UsageError(f"{artifact}: no such bundle directory or ONNX file")
    if artifact.suffix.lower() in (".plan", ".engine"):
        raise click.UsageError(f"{artifact}: already an engine; build takes the bundle directory or its model.onnx")
    return artifact


def tensorrt_importable() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorrt") is not None


@main.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--out", "--save-engine", "out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Engine path (default: model.plan in the bundle; --save-engine as in trtexec); "
                   "the record is <out>.json.")
@plugins_option
@click.option("--workspace", "workspace_mib", type=click.IntRange(min=1), default=None,
              help="Builder workspace limit in MiB.")
@click.option("--timing-cache", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Timing cache file, read if present and written after the build.")
@click.option("--allow-body-only", is_flag=True,
              help="Accept an engine without the edgemerge plugins (the merge ops' standard-op bodies, inlined).")
def build(artifact: Path, out: Path | None, plugins: tuple[str, ...], workspace_mib: int | None,
          timing_cache: Path | None, allow_body_only: bool) -> None:
    """Build ARTIFACT (an `edgemerge export` bundle directory, or its model.onnx) into a TensorRT
    engine on this machine's NVIDIA GPU.

    Needs TensorRT >= 10.3 and a GPU: in a source checkout, pip install -e '.[trt]'; on Jetson,
    TensorRT comes with JetPack. Engines are not portable: build on the device that runs them.
    """
    from edgemerge.cli import check_output_file
    from edgemerge.contracts.errors import EdgemergeError
    from edgemerge.trt import builder

    model = resolve_onnx(artifact)
    builder.check_bundle_onnx(model)  # a file outside a bundle is refused before the TensorRT check
    engine = check_output_file(out or model.with_suffix(".plan"), "engine")
    if not tensorrt_importable():
        raise EdgemergeError(TRT_HINT)
    build_engine = builder.build_engine
    record = build_engine(model, engine, plugins=list(plugins) or None, workspace_mib=workspace_mib,
                          timing_cache=timing_cache, allow_body_only=allow_body_only)
    typing = "strongly typed" if record.strongly_typed else ("FP16 flag" if record.fp16_flag else "fp32")
    click.echo(f"{engine}: TensorRT {record.tensorrt_version}, {record.gpu_name} "
               f"(sm {record.compute_capability}), {record.precision} ({typing}), plugins: {record.plugins}, "
               f"{record.engine_size / 2**20:.1f} MiB in {record.build_seconds} s")
    click.echo(f"graph {record.graph}; plugin layers / merge sites: {record.plugin_summary()}")
