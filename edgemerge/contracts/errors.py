"""One exception type for every user-facing failure.

The CLI turns it into a one-line message and exit code 2 (bad input) or 1 (a check failed),
so library code raises it with a sentence a user can act on and never prints.
"""


class EdgemergeError(Exception):
    """Bad input or an impossible request; the message is shown to the user as one line."""

    exit_code = 2


class CheckFailed(EdgemergeError):
    """A self-check or validation did not meet its threshold."""

    exit_code = 1


class EdgemergeNote(UserWarning):
    """Something the user should know that does not stop the work (a manifest of a newer
    edgemerge): raised with `warnings.warn`, shown by the CLI as one `edgemerge: note: ...` line."""


# What running out of memory looks like, by library: Python's MemoryError; an OSError ENOMEM (mmap,
# fork, a C library); torch's CPU allocator and CUDA (RuntimeError / torch.OutOfMemoryError);
# onnxruntime's and TensorRT's C++ std::bad_alloc and allocator failures, surfaced as their own
# exception types with these words in the message.
_OOM_WORDS = ("can't allocate memory", "cannot allocate memory", "out of memory", "bad_alloc",
              "failed to allocate memory")


def is_out_of_memory(e: BaseException) -> bool:
    """True when `e` says the machine ran out of memory, whatever library raised it. Code that turns
    a library's failure into a finding ("does not pass onnx.checker", "ONNX Runtime cannot run it")
    lets these through: out of memory is not a finding about the input."""
    import errno

    if isinstance(e, MemoryError):
        return True
    if isinstance(e, OSError):
        return e.errno == errno.ENOMEM
    if type(e).__name__ in ("OutOfMemoryError", "OutOfMemory"):
        return True
    if isinstance(e, EdgemergeError):
        return False
    text = str(e).lower()
    return any(w in text for w in _OOM_WORDS)


def reraise_out_of_memory(e: BaseException) -> None:
    """In an `except Exception` that makes a finding of a failure: raise `e` again when it is out of memory."""
    if is_out_of_memory(e):
        raise e
