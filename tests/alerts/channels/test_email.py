"""Email through a real SMTP server (aiosmtpd) on loopback."""

from __future__ import annotations

import pytest

from alerts.channels import (
    ChannelRejectedError,
    ChannelUnavailableError,
    EmailChannel,
    NotificationAction,
)
from tests.alerts.channels.factories import make_notification
from tests.alerts.channels.receivers import MailServer, free_port


def channel(server: MailServer, to: tuple[str, ...] = ("soc@example.org",)) -> EmailChannel:
    return EmailChannel("soc-mail", "127.0.0.1", server.port, "drainwatch@example.org", to)


def test_a_mail_names_severity_wallet_and_summary_and_lists_the_numbers(mail: MailServer) -> None:
    receipt = channel(mail).send(make_notification())
    assert receipt == "accepted for soc@example.org"
    [message] = mail.messages
    assert message["Subject"] == (
        "[drainwatch] CRITICAL nem-hot: 31% of hot wallet drained in 4 min to 1 new address"
        " [FREEZE requested]"
    )
    assert mail.handler.envelopes == [("drainwatch@example.org", ["soc@example.org"])]
    body = message.get_content()
    for line in (
        "share_of_balance: 0.31",
        "outflow: 523000000.5",
        "window_s: 240",
        "tx: 0xabc1, 0xabc2",
        "detector: velocity",
    ):
        assert line in body.splitlines()


def test_mails_of_one_incident_thread_together(mail: MailServer) -> None:
    ch = channel(mail)
    ch.send(make_notification(id="a1"))
    ch.send(make_notification(NotificationAction.UPDATE, id="a2", summary="still draining"))
    first, second = mail.messages
    assert first["References"] == second["References"] == second["In-Reply-To"]
    assert first["Message-ID"] != second["Message-ID"]
    assert second["Subject"].startswith("[drainwatch] UPDATE CRITICAL nem-hot: still draining")


def test_temporary_and_permanent_smtp_failures(mail: MailServer) -> None:
    mail.handler.fail_data = ["451 4.3.0 try again later", "554 5.7.1 rejected as spam"]
    with pytest.raises(ChannelUnavailableError, match="SMTP 451"):
        channel(mail).send(make_notification())
    with pytest.raises(ChannelRejectedError, match="SMTP 554"):
        channel(mail).send(make_notification())
    assert mail.messages == []


def test_refused_recipients(mail: MailServer) -> None:
    mail.handler.refuse = {"gone@example.org"}
    with pytest.raises(ChannelRejectedError, match="every recipient refused"):
        channel(mail, ("gone@example.org",)).send(make_notification())
    receipt = channel(mail, ("soc@example.org", "gone@example.org")).send(make_notification())
    assert receipt == "accepted for soc@example.org; refused ['gone@example.org']"
    assert len(mail.messages) == 1


def test_no_server_is_unavailable() -> None:
    ch = EmailChannel("soc-mail", "127.0.0.1", free_port(), "d@x", ("s@x",), timeout_s=2)
    with pytest.raises(ChannelUnavailableError):
        ch.send(make_notification())
