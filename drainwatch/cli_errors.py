"""How every ``drainwatch`` command reports a failure: one red line on stderr and an exit code."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape

__all__ = ["fail"]


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``error: message`` on stderr and return the exit to raise.

    The line is never wrapped, however long the path in it (logs and grep see it whole), and
    square brackets in it are printed as they are (a TOML table name, a value from a file).

    >>> exit_ = fail("t.jsonl: cannot read: No such file or directory")
    >>> exit_.exit_code
    2
    """
    Console(stderr=True).print(
        f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True
    )
    return typer.Exit(code)
