"""files.write_files: several files all or nothing. A failure at any point, the renames included,
leaves every old file as it was, no new file, no temp or backup file and no folder it created."""

from __future__ import annotations

import errno
import os

import pytest

from edgemerge.contracts import files
from edgemerge.contracts.files import write_files


def _tree(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else b"<dir>") for p in sorted(root.rglob("*"))}


def _fail_nth_replace(monkeypatch, n: int, exc: BaseException):
    """os.replace raises `exc` on its n-th call (1-based) only; every other call is the real one."""
    real, calls = os.replace, []

    def replace(src, dst, *args, **kwargs):
        calls.append((str(src), str(dst)))
        if len(calls) == n:
            raise exc
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(files.os, "replace", replace)
    return calls


@pytest.mark.parametrize("exc", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()],
                         ids=["enospc", "ctrl-c"])
@pytest.mark.parametrize("fail_at", [2, 3])
def test_a_failed_rename_touches_no_old_file(tmp_path, monkeypatch, exc, fail_at):
    (tmp_path / "a.json").write_bytes(b"old a")
    (tmp_path / "b.png").write_bytes(b"old b")
    (tmp_path / "a.json").chmod(0o600)
    before = _tree(tmp_path)
    calls = _fail_nth_replace(monkeypatch, fail_at, exc)
    with pytest.raises(type(exc)):
        write_files([(tmp_path / "a.json", b"new a"), (tmp_path / "b.png", b"new b"),
                     (tmp_path / "c.txt", b"new c")])
    assert len(calls) >= fail_at  # the failure did come from a rename
    assert _tree(tmp_path) == before  # old contents back, no c.txt, no temp or backup file
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("fail_at", [2, 3])
def test_a_failed_rename_removes_new_files_and_new_folders(tmp_path, monkeypatch, fail_at):
    (tmp_path / "keep").write_bytes(b"old")
    before = _tree(tmp_path)
    _fail_nth_replace(monkeypatch, fail_at, OSError(errno.EIO, "Input/output error"))
    with pytest.raises(OSError):
        write_files([(tmp_path / "new" / "deep" / "x", b"x"), (tmp_path / "keep", b"new"),
                     (tmp_path / "y", b"y")])
    assert _tree(tmp_path) == before


def test_success_replaces_all_and_leaves_no_backup(tmp_path):
    (tmp_path / "a").write_bytes(b"old a")
    out = write_files([(tmp_path / "a", b"new a"), (tmp_path / "sub" / "b", b"new b")])
    assert out == [tmp_path / "a", tmp_path / "sub" / "b"]
    assert _tree(tmp_path) == {"a": b"new a", "sub": b"<dir>", "sub/b": b"new b"}
    assert (tmp_path / "a").stat().st_mode & 0o777 == 0o644


def test_a_failed_write_touches_nothing(tmp_path, monkeypatch):
    """The failure before any rename (as before): temp files gone, old files untouched."""
    (tmp_path / "a").write_bytes(b"old a")
    before = _tree(tmp_path)
    real, n = files.write_beside, []

    def write_beside(path, data, mode, temps):
        n.append(path)
        if len(n) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data, mode, temps)

    monkeypatch.setattr(files, "write_beside", write_beside)
    with pytest.raises(OSError, match="No space left"):
        write_files([(tmp_path / "a", b"new a"), (tmp_path / "b", b"new b")])
    assert _tree(tmp_path) == before


def test_a_new_file_renamed_before_the_failure_is_removed(tmp_path, monkeypatch):
    """A file that did not exist before goes again (its folder existed: no rmtree removes it)."""
    (tmp_path / "a").write_bytes(b"old a")
    before = _tree(tmp_path)
    _fail_nth_replace(monkeypatch, 2, OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(OSError):
        write_files([(tmp_path / "new.txt", b"new"), (tmp_path / "a", b"new a")])
    assert _tree(tmp_path) == before
