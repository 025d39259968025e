"""docs/ops.md's attribute bullets match the op spec (edgemerge/contracts/opspec.py), op by op.

The C++ creators are checked against the same spec through TensorRT's own interface (their
names, versions, namespaces and INT32 fields, from the built library):
tests/trt/test_trt_device_script.py::test_stock_jetpack_run_builds_the_plugin_library.
"""

from __future__ import annotations

import re

from edgemerge.contracts import opspec

from .conftest import PLUGINS, REPO

OPS = ["TokenMatchBipartite", "TokenMatchCell", "TokenMatchWindow", "TokenMerge", "TokenMergeCell", "TokenUnmerge"]


def spec_attributes() -> dict[str, list[str]]:
    """{op: attribute names in order} from the '- attributes:' bullet of each op in docs/ops.md."""
    text = (REPO / "docs" / "ops.md").read_text()
    out: dict[str, list[str]] = {}
    for section in re.split(r"^## ", text, flags=re.M)[1:]:
        op = section.split()[0]
        if op not in OPS:
            continue
        lines = section.splitlines()
        start = next(i for i, line in enumerate(lines) if line.startswith("- attributes:"))
        bullet = [lines[start]]
        for line in lines[start + 1:]:
            if not line.startswith("  ") or not line.strip():
                break
            bullet.append(line)
        flat = " ".join(bullet)[len("- attributes:"):]
        flat = re.sub(r"\([^()]*\)", "", flat)  # drop explanations such as "(even)"
        out[op] = re.findall(r"`(\w+)`", flat)
    return out


def test_spec_parsed():
    spec = spec_attributes()
    assert set(spec) == set(OPS)
    assert all("plugin_namespace" in attrs for attrs in spec.values())


def test_docs_attributes_are_the_op_specs():
    spec = spec_attributes()
    assert set(spec) == set(opspec.OPS)
    for name, op in opspec.OPS.items():
        assert spec[name] == [a.name for a in op.attributes], name


def test_every_plugin_is_registered():
    lib = (PLUGINS / "src" / "pluginLibrary.cpp").read_text()
    for op in OPS:
        assert f"PluginCreator<{op}Plugin>" in lib
