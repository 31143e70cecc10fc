"""Alerts on a console: one readable line per alert, severity first, the freeze request marked.

>>> import io
>>> from datetime import UTC, datetime
>>> from drainwatch.events import Alert, Severity
>>> t = datetime(2018, 1, 26, 2, 57, tzinfo=UTC)
>>> out = io.StringIO()
>>> ConsoleNotifier(out).notify(Alert(
...     id="a1", time=t, detected_at=t, chain="nem", wallet="NC3B", wallet_label="nem-hot",
...     severity=Severity.CRITICAL, detector="velocity", freeze=True,
...     summary="31% drained in 4 min to 1 new address [tx 0x01]",
... ))
>>> print(out.getvalue(), end="")
2018-01-26 02:57:00Z CRITICAL nem-hot: 31% drained in 4 min to 1 new address [tx 0x01] FREEZE
"""

from __future__ import annotations

from typing import Final, TextIO

from rich.console import Console
from rich.text import Text

from drainwatch.events import Alert, Severity

__all__ = ["ConsoleNotifier", "format_alert"]

_STYLE: Final = {
    Severity.INFO: "cyan",
    Severity.WARNING: "yellow",
    Severity.CRITICAL: "bold red",
}


def _parts(alert: Alert) -> list[tuple[str, str]]:
    """The line as (text, style) pieces; the plain line is their concatenation."""
    parts = [
        (alert.time.strftime("%Y-%m-%d %H:%M:%SZ") + " ", "dim"),
        (f"{alert.severity.value.upper():<8}", _STYLE[alert.severity]),
        (" " + (alert.wallet_label or alert.key) + ": ", "bold"),
        (alert.summary, ""),
    ]
    if alert.freeze:
        # A shadow detector's freeze is never sent; say so rather than alarm anyone.
        parts.append((" FREEZE (shadow, not sent)" if alert.shadow else " FREEZE", "bold red"))
    return parts


def format_alert(alert: Alert) -> str:
    """The plain console line of an alert: time, severity, wallet label (or key), summary, marker.

    >>> from datetime import UTC, datetime
    >>> t = datetime(2024, 5, 1, 9, 30, tzinfo=UTC)
    >>> format_alert(Alert(id="a", time=t, detected_at=t, chain="ethereum", wallet="0xAB",
    ...     severity=Severity.WARNING, detector="velocity", freeze=True, shadow=True,
    ...     summary="7% out in 60 s"))
    '2024-05-01 09:30:00Z WARNING  ethereum:0xab: 7% out in 60 s FREEZE (shadow, not sent)'
    """
    return "".join(text for text, _ in _parts(alert))


class ConsoleNotifier:
    """Writes one line per alert to a stream (standard output when none is given).

    Colour is used only when the stream is a terminal; markup in summaries is never interpreted.

    Args:
        stream: Where the lines go.
        color: Force colour on (True) or off (False); None lets rich decide from the stream.
    """

    def __init__(self, stream: TextIO | None = None, color: bool | None = None) -> None:
        self.stream = stream
        self.color = color
        self._console = Console(
            file=stream,
            force_terminal=color,
            no_color=color is False,
            highlight=False,
            soft_wrap=True,
        )

    def notify(self, alert: Alert) -> None:
        """Print the alert's line."""
        line = Text()
        for text, style in _parts(alert):
            line.append(text, style=style or None)
        self._console.print(line)
