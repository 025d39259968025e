"""Options several commands share, so each means one thing everywhere."""

from __future__ import annotations

import click

from edgemerge.manifest import parse_resolution


class Resolution(click.ParamType):
    """HxW (512x1024) -> (512, 1024); a bad value is edgemerge's one-line error, exit 2."""

    name = "HxW"

    def convert(self, value, param, ctx):
        if value is None or isinstance(value, tuple):
            return value
        return parse_resolution(value)


def resolution_option(help: str = "Input HxW, default: the model's."):
    return click.option("--resolution", "-r", type=Resolution(), default=None, help=help)
