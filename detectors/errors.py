"""The detector stage's exceptions, under one root.

::

    DrainwatchError
    └── DetectorError                 a detector was given something it cannot judge
        ├── BacktestInputError        a malformed line in a backtest input file (path, line)
        └── BacktestFileError         a backtest file that cannot be read or written (path)
"""

from __future__ import annotations

from drainwatch.errors import DrainwatchError

__all__ = ["BacktestFileError", "BacktestInputError", "DetectorError"]


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


class BacktestFileError(DetectorError):
    """A backtest input that cannot be read, or an alerts file that cannot be written.

    >>> str(BacktestFileError("t.jsonl", "cannot read", "No such file or directory"))
    't.jsonl: cannot read: No such file or directory'
    """

    def __init__(self, path: str, action: str, reason: str) -> None:
        super().__init__(f"{path}: {action}: {reason}")
        self.path = path
        self.action = action
        self.reason = reason

    def __reduce__(self) -> tuple[type[BacktestFileError], tuple[str, str, str]]:
        return type(self), (self.path, self.action, self.reason)
