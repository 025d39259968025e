"""`edgemerge models`: the zoo, with family, parameter count and default resolution."""

from __future__ import annotations

import json

import click

from edgemerge.cli import console, main
from edgemerge.cli.options import json_option


@main.command()
@json_option
def models(as_json: bool) -> None:
    """List every zoo model and its merge variants."""
    from edgemerge.merge.plan import load_variants
    from edgemerge.models.registry import get_config, list_models
    import torch

    from edgemerge.models.registry import build_model, count_params

    def count_params_of(name: str) -> int:
        with torch.device("meta"):  # shapes only: no memory, no init time
            return count_params(build_model(name))

    rows = []
    for name in list_models():
        cfg = get_config(name)
        rows.append({"name": name, "family": cfg.family, "params": count_params_of(name),
                     "resolution": list(cfg.resolution), "num_classes": cfg.num_classes,
                     "variants": list(load_variants(name))})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    table = Table("name", "family", "params", "resolution", "classes", "variants")
    for r in rows:
        table.add_row(r["name"], r["family"], f"{r['params'] / 1e6:.1f}M", "x".join(map(str, r["resolution"])),
                      str(r["num_classes"]), ", ".join(r["variants"]))
    console().print(table)
