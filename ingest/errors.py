"""The exceptions of the chain watchers, rooted at :class:`WatcherError`.

::

    drainwatch.errors.DrainwatchError
    └── WatcherError                       a chain watcher cannot go on (carries chain and block)
        ├── RpcError                       a node call failed for good, after retries
        │   ├── RpcCallError               the node answered with a JSON-RPC error object
        │   └── EndpointsUnreachableError  no configured endpoint answered
        └── ReorgTooDeepError              the fork point lies beyond the kept block-hash history

>>> err = ReorgTooDeepError("replaced beyond history", chain="ethereum", block=1200)
>>> isinstance(err, WatcherError), err.chain, err.block
(True, 'ethereum', 1200)
>>> str(err)
'ethereum@1200: replaced beyond history'
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from drainwatch.errors import DrainwatchError

__all__ = [
    "EndpointsUnreachableError",
    "ReorgTooDeepError",
    "RpcCallError",
    "RpcError",
    "WatcherError",
]


class WatcherError(DrainwatchError):
    """A chain watcher cannot go on; ``chain`` and ``block`` say where (either may be unknown)."""

    def __init__(self, message: str, *, chain: str | None = None, block: int | None = None) -> None:
        where = chain or ""
        if block is not None:
            where += f"@{block}"
        super().__init__(f"{where}: {message}" if where else message)
        self.chain = chain
        self.block = block
        self.reason = message


class RpcError(WatcherError):
    """A node call kept failing after every retry (the cursor was not advanced past it)."""


class EndpointsUnreachableError(RpcError):
    """None of the endpoints answered; ``errors`` maps each endpoint to why."""

    def __init__(self, errors: Sequence[tuple[str, str]], *, chain: str | None = None) -> None:
        detail = "; ".join(f"{url}: {why}" for url, why in errors) or "no endpoint configured"
        super().__init__(f"no RPC endpoint answered ({detail})", chain=chain)
        self.errors = tuple(errors)


class ReorgTooDeepError(WatcherError):
    """A reorganisation reaches below the oldest block hash the cursor store keeps.

    The watcher cannot tell what it published from the replaced blocks; an operator has to choose
    where to resume (reset the cursor or raise the history depth).
    """


class RpcCallError(RpcError):
    """The node answered a call with a JSON-RPC error object (``code``, ``data``)."""

    def __init__(self, method: str, error: Any, *, chain: str | None = None) -> None:
        error = error if isinstance(error, dict) else {"message": str(error)}
        self.code: int | None = error.get("code")
        self.data = error.get("data")
        super().__init__(f"{method}: {error.get('message')} (code {self.code})", chain=chain)

    @property
    def unsupported(self) -> bool:
        """Whether the node does not offer the method (rather than refusing these params)."""
        text = self.reason.lower()
        return self.code in (-32601, -32004) or "not supported" in text or "not found" in text
