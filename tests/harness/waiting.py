"""Polling until something is true, for the end-to-end tests."""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["wait_for"]


def wait_for(
    predicate: Callable[[], bool],
    timeout_s: float,
    what: str,
    *,
    every_s: float = 0.1,
    context: Callable[[], str] | None = None,
) -> None:
    """Poll ``predicate`` until it is true; fail the test naming ``what`` after ``timeout_s``.

    ``context`` adds something to read to the failure (the processes' logs, say).

    >>> wait_for(lambda: True, 1, "nothing")
    >>> wait_for(lambda: False, 0.05, "the impossible", every_s=0.01, context=lambda: "log")
    Traceback (most recent call last):
    ...
    AssertionError: timed out after 0.05s waiting for the impossible
    log
    """
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            extra = f"\n{context()}" if context is not None else ""
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}{extra}")
        time.sleep(every_s)
