"""The `edgemerge` command: a thin layer that parses arguments and calls the library.

Each command lives in its own module and registers itself on `main`. Everything that goes wrong
ends as one line on stderr: errors from the library (`EdgemergeError`) with their exit code (2 bad
input, 1 a failed check), a usage error and an OSError (a full disk, a lost permission) with 2,
Ctrl-C with 130 (128 + SIGINT, as shells report it), SIGTERM and SIGHUP like Ctrl-C (the same
cleanup: temp folders and files removed) with 143 / 129.
"""

from __future__ import annotations

import os
import signal
import sys
import warnings
from contextlib import contextmanager
from importlib import import_module
from typing import Callable, Iterator

import click

from edgemerge import __version__
from edgemerge.contracts.errors import EdgemergeError, EdgemergeNote, is_out_of_memory

COMMAND_MODULES = ("models", "plan", "calibrate", "train_metric", "export", "build", "validate", "bench", "show",
                   "tune")


EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the program is, as Ctrl-C's KeyboardInterrupt is: every
    `except BaseException` / `finally` cleanup (the bundle's temp folder, an atomic write's temp
    file, bench's unmerged work folder) runs for it as for Ctrl-C."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


CAUGHT_SIGNALS = ("SIGTERM", "SIGHUP")


def _raise_terminated(signum, frame):
    raise Terminated(signum)


@contextmanager
def signals_as_interrupts() -> Iterator[None]:
    """SIGTERM / SIGHUP raise Terminated while a command runs (main thread only: elsewhere Python
    cannot set handlers); the previous handlers are put back after."""
    previous = {}
    try:
        for name in CAUGHT_SIGNALS:
            signum = getattr(signal, name, None)
            if signum is not None and signal.getsignal(signum) in (signal.SIG_DFL, None):
                previous[signum] = signal.signal(signum, _raise_terminated)
    except ValueError:  # not the main thread
        pass
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def fail(msg: str, code: int = EXIT_BAD_INPUT) -> None:
    click.echo(f"edgemerge: error: {' '.join(str(msg).split())}", err=True)  # one line, always
    sys.exit(code)


def os_error_message(e: OSError) -> str:
    """'cannot write /x/report.json: No space left on device' from an OSError, without its errno noise."""
    what = e.strerror or str(e)
    if e.filename is None:
        return what
    name = e.filename
    return f"cannot write {name}: {what}" if e.errno in _WRITE_ERRNOS else f"{name}: {what}"


_WRITE_ERRNOS = {28, 13, 30, 122, 27, 1}  # ENOSPC, EACCES, EROFS, EDQUOT, EFBIG, EPERM


def out_of_memory_message(e: BaseException) -> str:
    """Out of memory said as what it is, with what to do. Exit code 2, as a full disk (an OSError)
    is: the machine lacks a resource for this request; 1 stays 'a check ran and failed', which a
    script may read as 'the model is wrong'."""
    detail = " ".join(str(e).split())[:200]
    return (f"out of memory ({type(e).__name__}{': ' + detail if detail else ''}): the machine ran out of RAM (or "
            "GPU memory) for this work; try a smaller --resolution or --batch, close other programs, or use a "
            "machine with more memory")


def safe_stdio() -> None:
    """Text that the terminal's encoding cannot show (an ASCII-only locale, PYTHONIOENCODING=ascii)
    is replaced ('?'), never a UnicodeEncodeError half-way through a table."""
    for stream in (sys.stdout, sys.stderr):
        if stream is not None and getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
            try:
                stream.reconfigure(errors="replace")
            except (ValueError, OSError):  # a detached or closed stream: left as it is
                pass


def stdout_closed() -> bool:
    """True when there is no standard output to print to (`cmd >&-`): Python then sets sys.stdout to
    None and every print would vanish, the command ending 0 having told nothing."""
    if sys.stdout is None:
        return True
    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError, AttributeError):  # not a file (a test runner's buffer): open
        return False
    try:
        os.fstat(fd)
    except OSError:
        return True
    return False


# Rich's width when the output is not a terminal (a pipe, a file, a CI log): wide enough that table
# cells and paths are never cut with '…' (rich's default is 80 columns there). COLUMNS still wins.
WIDE_COLUMNS = 400


def console(stderr: bool = False, **kwargs):
    """A rich Console for a command's output: on a terminal, rich's own (the terminal's width, its
    colours as TERM and NO_COLOR allow); otherwise (a pipe, a file, a CI log, a closed terminal)
    plain text, WIDE_COLUMNS wide unless COLUMNS says: no colour codes even where FORCE_COLOR or
    TTY_COMPATIBLE ask rich for them, since what edgemerge prints there is read by programs."""
    from rich.console import Console

    if is_tty(sys.stderr if stderr else sys.stdout):
        return Console(stderr=stderr, **kwargs)
    columns = os.environ.get("COLUMNS", "")
    kwargs.setdefault("width", int(columns) if columns.isdigit() and int(columns) > 0 else WIDE_COLUMNS)
    return Console(stderr=stderr, force_terminal=False, force_jupyter=False, force_interactive=False,
                   color_system=None, **kwargs)


def is_tty(stream) -> bool:
    try:
        return stream is not None and stream.isatty()
    except (ValueError, OSError, AttributeError):  # closed or detached
        return False


@contextmanager
def notes_as_lines() -> Iterator[None]:
    """EdgemergeNote warnings of the library as one `edgemerge: note: ...` line each on stderr, each
    said once per command; other warnings as Python shows them."""
    seen: set[str] = set()
    with warnings.catch_warnings():
        warnings.simplefilter("always", EdgemergeNote)
        shown = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if not issubclass(category, EdgemergeNote):
                return shown(message, category, filename, lineno, file, line)
            text = " ".join(str(message).split())
            if text not in seen:
                seen.add(text)
                click.echo(f"edgemerge: note: {text}", err=True)

        warnings.showwarning = show
        yield


class _Group(click.Group):
    def invoke(self, ctx: click.Context):
        safe_stdio()
        if stdout_closed():
            fail("standard output is closed: nothing could be printed (run without `>&-`, or send it to "
                 "/dev/null)")
        try:
            with signals_as_interrupts(), notes_as_lines():
                return super().invoke(ctx)
        except EdgemergeError as e:
            fail(str(e), e.exit_code)
        except click.ClickException as e:  # usage errors: one line too, naming the command's help
            where = getattr(e, "ctx", None)
            fail(e.format_message() + (f" (see `{where.command_path} --help`)" if where else ""), e.exit_code)
        except OSError as e:
            fail(out_of_memory_message(e) if is_out_of_memory(e) else os_error_message(e))
        except MemoryError as e:
            fail(out_of_memory_message(e))
        except Terminated as e:
            click.echo(f"edgemerge: terminated ({signal.Signals(e.signum).name})", err=True)
            sys.exit(128 + e.signum)
        except KeyboardInterrupt:
            click.echo("edgemerge: interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except Exception as e:  # torch's and onnxruntime's out of memory come as their own types
            if not is_out_of_memory(e):
                raise
            fail(out_of_memory_message(e))


def check_output_file(path, what: str = "output file"):
    """The output-path check every command runs before its work (see edgemerge.contracts.files)."""
    from edgemerge.contracts.files import check_output_file as check

    return check(path, what)


def check_output_dir(path, what: str = "output directory"):
    from edgemerge.contracts.files import check_output_dir as check

    return check(path, what)


@contextmanager
def progress_reporter(label: str) -> Iterator[Callable[[str], None]]:
    """`report(msg)` for long steps, on stderr: rich's live status (and a log line per step) on a
    terminal, plain lines otherwise (a CI log, `2> file`), never with file:line suffixes."""
    err = console(stderr=True, log_path=False)
    if err.is_terminal:
        with err.status(label) as status:
            yield lambda msg: (status.update(msg), err.log(msg))
    else:
        yield lambda msg: click.echo(f"edgemerge: {msg}", err=True)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgemerge")
def main() -> None:
    """Deploy token-merged vision transformers to TensorRT FP16 engines.

    \b
    Workflow:
      edgemerge export --model segformer-b5 --variant fast   # ONNX + manifest (+ engine)
      edgemerge validate segformer-b5-fast/                  # compare with PyTorch
      edgemerge bench segformer-b5-fast/model.plan --unmerged
    """


for _name in COMMAND_MODULES:  # a missing or renamed command module fails loudly, here
    import_module(f"edgemerge.cli.{_name}")
