"""Options several commands share, so each means one thing everywhere."""

from __future__ import annotations

import click

from edgemerge.contracts.manifest import parse_resolution


class Resolution(click.ParamType):
    """HxW (512x1024) -> (512, 1024); a bad value is edgemerge's one-line error, exit 2."""

    name = "HxW"

    def convert(self, value, param, ctx):
        if value is None or isinstance(value, tuple):
            return value
        return parse_resolution(value)


def resolution_option(help: str = "Input HxW, default: the model's."):
    return click.option("--resolution", "-r", type=Resolution(), default=None, help=help)


# A flag, never a path: --json means "the result as JSON on stdout" in every command, so scripts can
# pipe any of them into jq; files have their own options (bench --report, calibrate --out).
json_option = click.option("--json", "as_json", is_flag=True,
                           help="Print the result as JSON on stdout instead of the human-readable output.")

# A tuple (multiple=True) in every command, so several libraries can be loaded wherever one can.
plugins_option = click.option(
    "--plugins", "plugins", multiple=True, type=click.Path(dir_okay=False),
    help="C++ plugin library (libedgemerge_plugins.so); may be given more than once. Default: building, "
         "TensorRT's Python plugins (>= 10.6); running an engine, the library its build record names.")
