"""The root of drainwatch's exceptions.

::

    DrainwatchError
    ├── drainwatch.config.ConfigError        a config file that cannot be used (file, line, key)
    ├── drainwatch.bus.BusError              the bus cannot deliver or read
    ├── ingest.WatcherError                  a chain watcher cannot go on (chain, block)
    ├── detectors.DetectorError              a detector was given something it cannot judge
    └── alerts.AlertsError                   delivery, kill switch or timeline failures

``drainwatch.events.DecodeError`` is a ``ValueError`` on purpose: a malformed message is data,
not a failure of drainwatch, and goes to the dead-letter topic.
"""

from __future__ import annotations

__all__ = ["DrainwatchError"]


class DrainwatchError(Exception):
    """Base class of every error drainwatch raises on purpose."""
