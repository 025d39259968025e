"""What a tune leaves: plan.toml (the chosen plan, `edgemerge export --plan` takes it, with a [tune]
record), tune.json (every plan judged: figures, front, timing, the choice) and front.png."""

from __future__ import annotations

import io
import json
from typing import Any


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if v is None:
        return '"none"'
    raise TypeError(f"no TOML for {v!r}")


def plan_toml(model: str, name: str, table: dict[str, Any], record: dict[str, Any] | None) -> str:
    """One variant in export_configs' schema, plus the [tune] record (flat keys, nested as inline tables)."""
    lines = ["# written by edgemerge tune: `edgemerge export --plan plan.toml`", f"model = {json.dumps(model)}",
             "", f"[variants.{name}]"]
    lines += [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    if record:
        lines += ["", "[tune]"] + [f"{k} = {_toml_value(v)}" for k, v in record.items() if v is not None]
    return "\n".join(lines) + "\n"


def front_png(rows: list[dict[str, Any]], limit: dict[str, float | None], drop_kind: str) -> bytes:
    """GFLOPs (or measured speed-up) against drop: every plan grey, timed ones with their spread,
    shipped variants named, the chosen one marked, the user's limit drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    ax1.scatter([r["gflops"] for r in rows], [r["drop"] for r in rows], s=12, c="0.7", label="plans judged")
    for r in rows:
        if r.get("shipped"):
            ax1.annotate(r["shipped"], (r["gflops"], r["drop"]), fontsize=7)
    ax1.set_xlabel("GFLOPs (merged)")
    ax1.set_ylabel(f"drop ({drop_kind})")
    ax1.set_title("search (PyTorch fidelity)")
    timed = [r for r in rows if r.get("speedup") is not None]
    for r in timed:
        err = [[r["speedup"] - r["speedup_lo"]], [r["speedup_hi"] - r["speedup"]]]
        yerr = [[r["drop"] - r["drop_lo"]], [r["drop_hi"] - r["drop"]]]
        ax2.errorbar([r["speedup"]], [r["drop"]], xerr=err, yerr=yerr, fmt="o", ms=4,
                     color="C3" if r.get("chosen") else "C0")
        ax2.annotate(r.get("shipped") or r.get("name", ""), (r["speedup"], r["drop"]), fontsize=7)
    if limit.get("max_drop") is not None:
        for ax in (ax1, ax2):
            ax.axhline(limit["max_drop"], color="C2", ls="--", lw=1, label=f"max drop {limit['max_drop']}")
    if limit.get("min_speedup") is not None:
        ax2.axvline(limit["min_speedup"], color="C2", ls="--", lw=1, label=f"min speed-up {limit['min_speedup']}")
    ax2.set_xlabel("measured speed-up over unmerged (median, spread of rounds)")
    ax2.set_ylabel(f"drop ({drop_kind})")
    ax2.set_title("front, timed (chosen in red)")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()
