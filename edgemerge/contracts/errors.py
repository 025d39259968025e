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
