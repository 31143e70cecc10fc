"""The detector stage: per-wallet state, detectors, the engine that turns transfers into alerts,
and the backtest that replays files through the same engine.

Start with :class:`DetectionEngine` (``process(transfer)`` or ``handle(topic, event)`` for the
stage loop) and :func:`run_backtest`. Detectors follow :class:`Detector`: ``score_one`` (pure)
then ``learn_one``.
"""

from detectors.backtest import BacktestSummary, run_backtest
from detectors.base import Detector, Finding, LedgerAware, StateLearner, WalletState
from detectors.baseline import BaselineDetector
from detectors.correlation import IncidentCorrelator
from detectors.engine import DetectionEngine, default_detectors
from detectors.errors import BacktestFileError, BacktestInputError, DetectorError
from detectors.ledger import LedgerReconciliation
from detectors.snapshots import (
    Snapshot,
    SnapshotFile,
    SnapshotStore,
    fingerprint,
    message_digest,
)
from detectors.velocity import VelocityDetector

__all__ = [
    "BacktestFileError",
    "BacktestInputError",
    "BacktestSummary",
    "BaselineDetector",
    "DetectionEngine",
    "Detector",
    "DetectorError",
    "Finding",
    "IncidentCorrelator",
    "LedgerAware",
    "LedgerReconciliation",
    "Snapshot",
    "SnapshotFile",
    "SnapshotStore",
    "StateLearner",
    "VelocityDetector",
    "WalletState",
    "default_detectors",
    "fingerprint",
    "message_digest",
    "run_backtest",
]
