"""The detector stage's exceptions, under one root.

::

    DrainwatchError
    └── DetectorError                 a detector was given something it cannot judge
        └── BacktestInputError        a malformed line in a backtest input file (path, line)
"""

from __future__ import annotations

from drainwatch.errors import DrainwatchError

__all__ = ["BacktestInputError", "DetectorError"]


class DetectorError(DrainwatchError):
    """Root of every error the detector stage raises on purpose."""


class BacktestInputError(DetectorError):
    """A line of ``transfers.jsonl`` or ``ledger.jsonl`` that breaks the backtest contract.

    >>> str(BacktestInputError("t.jsonl", 7, "missing field 'amount'"))
    "t.jsonl:7: missing field 'amount'"
    """

    def __init__(self, path: str, line_number: int, reason: str) -> None:
        super().__init__(f"{path}:{line_number}: {reason}")
        self.path = path
        self.line_number = line_number
        self.reason = reason

    def __reduce__(self) -> tuple[type[BacktestInputError], tuple[str, int, str]]:
        # Raised in a worker process and re-raised in the parent: pickle the three fields.
        return type(self), (self.path, self.line_number, self.reason)
