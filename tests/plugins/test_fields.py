"""The C++ creators' field lists match the attributes of docs/ops.md, op by op.

The single source of the field names is the `fieldList()` function in each
plugins/src/token*Plugin.cpp; this test parses it (and the plugin name) from the C++.
"""

from __future__ import annotations

import re

from edgemerge.opspec import cpp_plugin_fields

from .conftest import PLUGINS, REPO

OPS = ["TokenMatchBipartite", "TokenMatchWindow", "TokenMerge", "TokenUnmerge"]


def cpp_fields() -> dict[str, list[str]]:
    """{plugin name: field names in order} parsed from plugins/src/*Plugin.cpp / .h."""
    fields = cpp_plugin_fields(PLUGINS)
    assert set(fields) == set(OPS), f"plugins found: {sorted(fields)}"
    return fields


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


def test_field_lists_match_spec():
    cpp, spec = cpp_fields(), spec_attributes()
    assert set(cpp) == set(OPS)
    for op in OPS:
        expected = [a for a in spec[op] if a != "plugin_namespace"]
        assert cpp[op] == expected, op


def test_every_plugin_is_registered():
    lib = (PLUGINS / "src" / "pluginLibrary.cpp").read_text()
    for op in OPS:
        assert f"PluginCreator<{op}Plugin>" in lib


def test_int_fields_are_int32():
    for cpp in (PLUGINS / "src").glob("token*Plugin.cpp"):
        for line in re.findall(r'PluginField\("\w+".*', cpp.read_text()):
            assert "PluginFieldType::kINT32" in line, line
