"""Mail over SMTP: the severity, wallet and summary in the subject, the numbers in a plain body.

Every mail about one incident carries ``References: <incident-…@drainwatch>``, so mail clients
thread an incident's updates together. The server acknowledges a mail by accepting it (``250``
after DATA); a 4xx answer or no answer is retried, a 5xx is reported as refused.

>>> from datetime import UTC, datetime
>>> from drainwatch.events import Alert, Severity
>>> t = datetime(2018, 1, 26, 2, 57, tzinfo=UTC)
>>> alert = Alert(id="a1", time=t, detected_at=t, chain="nem", wallet="NC3B",
...     wallet_label="nem-hot", severity=Severity.CRITICAL, detector="velocity", freeze=False,
...     summary="31% drained\\nin 4 min", metrics={"share": "0.31"})
>>> n = Notification("n1", "soc", NotificationAction.TRIGGER, "nem:nc3b", alert)
>>> msg = email_message(n, "drainwatch@example.org", ("soc@example.org",), now=t)
>>> msg["Subject"]
'[drainwatch] CRITICAL nem-hot: 31% drained in 4 min'
>>> "share: 0.31" in msg.get_content()
True
"""

from __future__ import annotations

import hashlib
import smtplib
from collections.abc import Callable, Sequence
from datetime import datetime
from email import policy
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Final

from alerts.channels.base import (
    ChannelRejectedError,
    ChannelUnavailableError,
    Notification,
    NotificationAction,
    details,
    title,
)
from alerts.timeline import utc_now

__all__ = ["EmailChannel", "email_message"]

_SUBJECT_MAX: Final = 250
# Folding at 78 columns moves a subject with brackets onto a continuation line, which some
# clients show with a leading space; RFC 5322 allows 998.
_POLICY: Final = policy.SMTP.clone(max_line_length=998)


def _msgid(kind: str, text: str) -> str:
    return f"<{kind}-{hashlib.sha256(text.encode()).hexdigest()[:32]}@drainwatch>"


def _one_line(text: str) -> str:
    """Header values must not carry line breaks (they would inject headers)."""
    return " ".join(text.split())


def email_message(
    notification: Notification, sender: str, to: Sequence[str], *, now: datetime
) -> EmailMessage:
    """The mail for a notification."""
    msg = EmailMessage(policy=_POLICY)
    subject = _one_line(f"[drainwatch] {title(notification)}")
    msg["Subject"] = subject if len(subject) <= _SUBJECT_MAX else subject[: _SUBJECT_MAX - 1] + "…"
    msg["From"] = sender
    msg["To"] = ", ".join(to)
    msg["Date"] = format_datetime(now)
    msg["Message-ID"] = _msgid("notification", notification.id)
    root = _msgid("incident", notification.incident_id)
    msg["References"] = root
    if notification.action is not NotificationAction.TRIGGER:
        msg["In-Reply-To"] = root
    msg["X-Drainwatch-Incident"] = _one_line(notification.incident_id)
    msg["X-Drainwatch-Action"] = notification.action.value
    lines = [title(notification), "", *(f"{k}: {v}" for k, v in details(notification))]
    msg.set_content("\n".join(lines) + "\n")
    return msg


class EmailChannel:
    """Sends mail through one SMTP server, a new connection per mail.

    Args:
        name: The configured channel name.
        smtp_host: The server.
        smtp_port: Its port.
        sender: The From address.
        to: The recipients.
        username: Log in as this user (after STARTTLS when ``starttls``).
        password: The password (a secret).
        starttls: Upgrade the connection with STARTTLS first.
        timeout_s: Socket timeout.
        clock: Gives the Date header (aware UTC).
    """

    kind = "email"

    def __init__(
        self,
        name: str,
        smtp_host: str,
        smtp_port: int,
        sender: str,
        to: Sequence[str],
        *,
        username: str | None = None,
        password: str | None = None,
        starttls: bool = False,
        timeout_s: float = 10.0,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.name = name
        self.smtp_host = smtp_host
        self.smtp_port = smtp_port
        self.sender = sender
        self.to = tuple(to)
        self.username = username
        self.password = password
        self.starttls = starttls
        self.timeout_s = timeout_s
        self.clock = clock

    def _fail(self, code: int, text: str) -> ChannelRejectedError | ChannelUnavailableError:
        reason = f"SMTP {code}: {text}"
        # 4xx is "try again later" in SMTP; 5xx is a refusal.
        if 400 <= code < 500:
            return ChannelUnavailableError(self.name, reason)
        return ChannelRejectedError(self.name, reason)

    def send(self, notification: Notification) -> str:
        """Hand the mail to the server; return which recipients it accepted."""
        msg = email_message(notification, self.sender, self.to, now=self.clock())
        try:
            with smtplib.SMTP(self.smtp_host, self.smtp_port, timeout=self.timeout_s) as smtp:
                if self.starttls:
                    smtp.starttls()
                if self.username is not None:
                    smtp.login(self.username, self.password or "")
                refused = smtp.send_message(msg)
        except smtplib.SMTPRecipientsRefused as exc:
            code, text = next(iter(exc.recipients.values()))
            raise self._fail(code, f"every recipient refused: {text!r}") from exc
        except smtplib.SMTPResponseException as exc:
            raise self._fail(exc.smtp_code, repr(exc.smtp_error)) from exc
        except (smtplib.SMTPException, OSError) as exc:
            raise ChannelUnavailableError(self.name, f"{type(exc).__name__}: {exc}") from exc
        accepted = [r for r in self.to if r not in refused]
        detail = f"accepted for {', '.join(accepted)}"
        if refused:
            # Part of the recipients got it; resending would duplicate theirs. Kept in the detail.
            detail += f"; refused {sorted(refused)}"
        return detail

    def close(self) -> None:
        """Nothing to release: each mail opens its own connection."""
