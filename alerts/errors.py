"""The exceptions of the alerts stage.

::

    AlertsError                         (a drainwatch.errors.DrainwatchError)
    ├── KillSwitchError                 a freeze was not delivered (carries chain and wallet)
    │   ├── KillSwitchUnavailableError  unreachable, or only 5xx, after every retry
    │   └── KillSwitchRejectedError     refused (4xx): carries status and body
    ├── ServerStartError                the built-in kill-switch server did not start
    └── KillSwitchStateError            the kill switch's state forbids an operation
        └── UnfreezeRequestError        an unfreeze request or approval refused (carries status)

An :class:`AlertsError` raised from :meth:`alerts.Alerter.handle` stops the stage loop before it
commits, so the alert is delivered again after a restart.
"""

from __future__ import annotations

from drainwatch.errors import DrainwatchError

__all__ = [
    "AlertsError",
    "KillSwitchError",
    "KillSwitchRejectedError",
    "KillSwitchStateError",
    "KillSwitchUnavailableError",
    "ServerStartError",
    "UnfreezeRequestError",
]


class AlertsError(DrainwatchError):
    """Root of every error the alerts stage raises on purpose."""


class KillSwitchError(AlertsError):
    """A freeze request for one wallet did not get through.

    >>> str(KillSwitchError("ethereum", "0xabc", "no route"))
    'freeze of ethereum:0xabc: no route'
    """

    def __init__(self, chain: str, wallet: str, reason: str) -> None:
        super().__init__(f"freeze of {chain}:{wallet}: {reason}")
        self.chain = chain
        self.wallet = wallet
        self.reason = reason


class KillSwitchUnavailableError(KillSwitchError):
    """The kill switch could not be reached, or kept failing (5xx), through every retry."""

    def __init__(self, chain: str, wallet: str, reason: str, attempts: int) -> None:
        super().__init__(chain, wallet, f"{reason} (after {attempts} attempts)")
        self.attempts = attempts


class KillSwitchRejectedError(KillSwitchError):
    """The kill switch answered with a 4xx: retrying the same request cannot help."""

    def __init__(self, chain: str, wallet: str, status_code: int, body: str) -> None:
        super().__init__(chain, wallet, f"HTTP {status_code}: {body[:500]}")
        self.status_code = status_code
        self.body = body


class ServerStartError(AlertsError):
    """The kill-switch HTTP server did not start (port taken, bad host)."""


class KillSwitchStateError(AlertsError):
    """The kill switch's state forbids an operation (unfreezing a wallet that was never frozen)."""


class UnfreezeRequestError(KillSwitchStateError):
    """An unfreeze request or approval was refused; ``status_code`` is the HTTP answer.

    >>> UnfreezeRequestError("the requester cannot approve their own request", 403).status_code
    403
    """

    def __init__(self, reason: str, status_code: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status_code = status_code
