"""docs/ops.md points to every implementation of every op in one hop: each path and name it gives exists."""

import re
from pathlib import Path

import pytest

from edgemerge.contracts import opspec

REPO = Path(__file__).resolve().parents[1]
TABLE = [line for line in (REPO / "docs/ops.md").read_text().splitlines() if line.startswith("| Token")]


def test_one_row_per_op():
    assert sorted(line.split("|")[1].strip() for line in TABLE) == sorted(opspec.OPS)


@pytest.mark.parametrize("ref", sorted({m for line in TABLE for m in re.findall(r"`([^`]+)`", line)}))
def test_every_reference_exists(ref):
    path, _, name = ref.partition("::")
    assert (REPO / path).is_file(), path
    if name:
        assert re.search(rf"^\s*def {re.escape(name)}\b", (REPO / path).read_text(), re.M), ref
