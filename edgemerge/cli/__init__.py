"""The `edgemerge` command: a thin layer that parses arguments and calls the library.

Each command lives in its own module and registers itself on `main`; errors from the library
(`EdgemergeError`) become one line on stderr and the error's exit code.
"""

from __future__ import annotations

import sys
from importlib import import_module

import click

from edgemerge import __version__
from edgemerge.errors import EdgemergeError

COMMAND_MODULES = ("models", "plan", "calibrate", "train_metric", "export", "build", "validate", "bench", "show")


class _Group(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except EdgemergeError as e:
            msg = " ".join(str(e).split())  # one line, always
            click.echo(f"edgemerge: error: {msg}", err=True)
            sys.exit(e.exit_code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgemerge")
def main() -> None:
    """Deploy token-merged vision transformers to TensorRT FP16 engines.

    \b
    Workflow:
      edgemerge export --model segformer-b5 --variant fast   # ONNX + manifest (+ engine)
      edgemerge validate segformer-b5-fast/                  # compare with PyTorch
      edgemerge bench segformer-b5-fast/model.plan --unmerged
    """


for _name in COMMAND_MODULES:
    try:
        import_module(f"edgemerge.cli.{_name}")
    except ModuleNotFoundError as _e:  # a command whose module is not written yet
        if _e.name != f"edgemerge.cli.{_name}":
            raise
