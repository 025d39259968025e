"""`edgemerge plan`: the static token counts of a merge variant, and its GFLOPs."""

from __future__ import annotations

import json

import click

from edgemerge.cli import console as make_console, main
from edgemerge.cli.options import json_option, resolution_option


@main.command()
@click.option("--model", "-m", required=True, help="Zoo model name (see `edgemerge models`).")
@click.option("--variant", "-v", required=True, help="Merge variant, e.g. hq, fast, n2d, tome, algm, none.")
@resolution_option("Input HxW, default: the model's.")
@click.option("--calibration", type=click.Path(), default=None, help="ALGM counts from `edgemerge calibrate`.")
@json_option
def plan(model: str, variant: str, resolution: tuple[int, int] | None, calibration: str | None, as_json: bool) -> None:
    """Tokens in and kept per stage / merge site, and GFLOPs merged vs unmerged."""
    from edgemerge.merge.plan import get_plan
    from edgemerge.merge.counts import resolve
    from edgemerge.merge.flops import gflops
    from edgemerge.merge.plan import load_calibration, plan_dict
    from edgemerge.models.registry import get_config

    cal = load_calibration(calibration)
    res = resolution or get_config(model).resolution
    p = get_plan(model, variant, calibration=cal)
    out = {"model": model, "variant": variant, "resolution": list(res), "plan": plan_dict(p),
           **resolve(model, p, res), "gflops": gflops(model, variant, res, calibration=cal)}
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return
    from rich.table import Table

    if "stages" in out:
        from edgemerge.merge.families.segformer import STAGE_COUNTS

        table = Table("stage", "grid", "blocks", *(k.replace("_", " ") for k in STAGE_COUNTS),
                      title=f"{model} {variant} at {res[0]}x{res[1]}")
        for s in out["stages"]:
            table.add_row(str(s["stage"]), "x".join(map(str, s["grid"])), str(s["blocks"]),
                          *(str(s[k]) for k in STAGE_COUNTS))
    else:
        table = Table("block", "tokens in", "tokens kept", title=f"{model} {variant} at {res[0]}x{res[1]}")
        for s in out["sites"]:
            table.add_row(str(s["block"]), str(s["tokens_in"]), str(s["tokens_kept"]))
    console = make_console()
    console.print(table)
    g = out["gflops"]
    console.print(f"GFLOPs: merged {g['merged']:.1f}, unmerged {g['unmerged']:.1f} (ratio {g['ratio']:.2f}x)")
