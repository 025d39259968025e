"""File helpers every side shares: content hashes, output paths checked before any work, and
writes that never leave half a file (or, for several files, only some of them).

The one atomic writer of the package, `torch.save` included; standard library only, because the
device tool (edgemerge.device, run on a bare JetPack python3) writes through it too."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Sequence

from edgemerge.contracts.errors import EdgemergeError


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_beside(path: Path, data: bytes | Callable[[BinaryIO], object], mode: int | None, temps: list[str]) -> str:
    """`data` (bytes, or a function that writes to the open file: `torch.save`'s shape) in a temp
    file beside `path` (fsynced, `mode` set), noted in `temps` as soon as it exists so that the
    caller can remove it on failure; renaming it into place is the caller's."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    temps.append(tmp)
    with os.fdopen(fd, "wb") as f:
        if callable(data):
            data(f)
        else:
            f.write(data)
        f.flush()
        os.fsync(f.fileno())
    if mode is not None:
        os.chmod(tmp, mode)
    return tmp


def atomic_write_bytes(path: str | os.PathLike, data: bytes | Callable[[BinaryIO], object],
                       mode: int | None = 0o644) -> Path:
    """Write to a temp file in the same directory, fsync, rename: readers never see half a file,
    and a failure leaves neither a temp file nor a folder this call created. `data` may be a
    writer, e.g. `lambda f: torch.save(state, f)`. Mode 0644 unless told (mkstemp's is 0600)."""
    return write_files([(path, data)], mode=mode)[0]


def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _probe_writable(folder: Path, what: str, shown: Path) -> None:
    """Create and remove a temp file in `folder`: the only test that also holds for root and read-only mounts."""
    if not folder.is_dir():
        raise EdgemergeError(f"cannot write {what} {shown}: {folder} is not a directory")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise EdgemergeError(f"cannot write {what} {shown}: {folder} is not writable ({e.strerror})") from None


def check_output_file(path: str | os.PathLike, what: str = "output file") -> Path:
    """Refuse, before any work, a file that could not be written: a folder in its place, a parent
    that is a file, a folder without write access. Creates nothing."""
    path = Path(path)
    if path.is_dir():
        raise EdgemergeError(f"cannot write {what} {path}: it is a directory")
    _probe_writable(_nearest_existing(path.parent), what, path)
    return path


def check_output_dir(path: str | os.PathLike, what: str = "output directory") -> Path:
    """Refuse, before any work, a folder that could not be written into: an existing file in its
    place, a parent that is a file, no write access. Creates nothing."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise EdgemergeError(f"cannot write {what} {path}: it exists and is not a directory")
    _probe_writable(_nearest_existing(path), what, path)
    return path


def write_files(files: Sequence[tuple[str | os.PathLike, bytes | Callable[[BinaryIO], object]]], mode: int | None = 0o644) -> list[Path]:
    """Write several files all or nothing: each to a temp file beside it (fsynced), then all renamed.

    A failure at any point (a full disk, a lost permission, Ctrl-C), the renames included, removes
    the temp files and every folder this call created, and puts back every file it had replaced
    already (from a hard link, or else a copy, made beside it before the renames), so nothing is
    left behind and no old file is touched. (A crash of the machine itself mid-way can still leave
    some files renamed, and a `.NAME.*.bak` beside them.)
    """
    paths = [Path(p) for p, _ in files]
    created = [top for top in {_first_missing(p.parent) for p in paths} if top is not None]
    temps: list[str] = []
    backups: dict[Path, str | None] = {}  # target -> its old file's backup (None: there was none)
    done: list[Path] = []  # targets renamed into place
    path = paths[0] if paths else Path()
    try:
        for path, (_, data) in zip(paths, files):
            write_beside(path, data, mode, temps)
        for path in paths:
            backups[path] = None
            backups[path] = _backup(path)
        for tmp, path in zip(temps, paths):
            done.append(path)  # before the rename: undoing one that did not happen is harmless
            os.replace(tmp, path)
    except BaseException as e:
        for target in reversed(done):  # the old file back, or no file where there was none
            try:
                if backups.get(target) is not None:  # (a no-op when target is still the old file:
                    os.replace(backups[target], target)  # then the backup is removed below)
                else:
                    target.unlink(missing_ok=True)
            except OSError:
                pass
        for leftover in [*temps, *(b for b in backups.values() if b is not None)]:
            Path(leftover).unlink(missing_ok=True)
        for top in created:
            shutil.rmtree(top, ignore_errors=True)
        if isinstance(e, OSError) and e.filename is None:  # a failed write names no file: name ours
            raise OSError(e.errno, e.strerror or str(e), str(path)) from None
        raise
    for backup in backups.values():
        if backup is not None:
            Path(backup).unlink(missing_ok=True)
    return paths


def _backup(path: Path) -> str | None:
    """A second name for the file at `path` (a hard link, else a copy) beside it, so that it can be
    put back after `path` is replaced; None when there is no file there."""
    if not path.is_file():
        return None
    fd, backup = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".bak", dir=path.parent)
    os.close(fd)
    try:
        os.unlink(backup)
        try:
            os.link(path, backup)
        except OSError:  # no hard links here (some mounts): a copy, mode and times included
            shutil.copy2(path, backup)
    except BaseException:
        Path(backup).unlink(missing_ok=True)
        raise
    return backup


def _first_missing(folder: Path) -> Path | None:
    """The outermost folder on the way to `folder` that does not exist yet (None when it exists)."""
    top = None
    p = folder
    while not p.exists() and p != p.parent:
        top = p
        p = p.parent
    return top


# ---- one writer per output, and what a killed one left ---------------------------------------

def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (a signal 0 probe; another user's process counts)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock_path(out: Path) -> Path:
    return out.with_name(f".{out.name}.lock")


@contextmanager
def output_lock(out: str | os.PathLike, what: str = "bundle") -> Iterator[None]:
    """Hold an exclusive lock on `out` (an fcntl lock on `.NAME.lock` beside it) while writing it.

    A second writer of the same output is refused at once, with one line naming the holder's pid,
    rather than made to wait behind work of unknown length. The lock file holds the holder's pid
    and is removed when the lock is let go; one left by a killed process (the lock itself dies
    with it) is simply taken over."""
    import fcntl

    path = lock_path(Path(out))
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise EdgemergeError(f"cannot lock {what} {out}: {path}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise EdgemergeError(f"another edgemerge (pid {holder}) is writing {what} {out} now: wait for it to "
                                 f"finish, or write to another folder") from None
        except BaseException:
            os.close(fd)
            raise
        try:  # the file may have been removed (and made anew) by the holder just before we locked it
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        Path(path).unlink(missing_ok=True)  # before letting go: no one locks a file that is going away
        os.close(fd)


def stale_leftovers(out: Path, kinds: Sequence[str] = ("tmp", "old")) -> list[Path]:
    """The temp folders of writers of `out` that died (`.NAME.tmp-PID-XXXX`, `.NAME.old-PID`, see
    edgemerge.export.bundle), told by the pid in their name: a live process's are not listed."""
    import re

    pattern = re.compile(rf"^\.{re.escape(out.name)}\.({'|'.join(kinds)})-(\d+)(-[A-Za-z0-9_]+)?$")
    found = []
    try:
        entries = list(out.parent.iterdir())
    except OSError:
        return []
    for p in entries:
        m = pattern.match(p.name)
        if m and (m.group(1) == "tmp") == (m.group(3) is not None) and not pid_alive(int(m.group(2))):
            found.append(p)
    return sorted(found)


def remove_stale_leftovers(out: Path) -> list[Path]:
    """Remove what `stale_leftovers` lists; returns it."""
    found = stale_leftovers(out)
    for p in found:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return found
