"""Progress of long loops as a few messages: the library reports, the CLI decides how to show them."""

from __future__ import annotations

from typing import Callable


def counter(report: Callable[[str], None], what: str, parts: int = 10) -> Callable[[int, int], None]:
    """progress(i, n) -> `what i/n` messages: the first, the last, and about one per tenth between."""
    def step(i: int, n: int) -> None:
        if i in (1, n) or i % max(1, n // parts) == 0:
            report(f"{what} {i}/{n}")

    return step


def quiet_polygraphy() -> None:
    """edgemerge reports, polygraphy does not: no [I]/[W]/[E] lines, no [!] lines before its
    exceptions (which edgemerge turns into its own one line), no print about the 'colored' module."""
    from polygraphy.logger import G_LOGGER

    G_LOGGER.module_severity = G_LOGGER.CRITICAL + 1
    G_LOGGER.colors = False
