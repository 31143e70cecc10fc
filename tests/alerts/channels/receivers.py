"""Local stand-ins for Slack, PagerDuty, a webhook receiver and a mail server, for tests.

Each HTTP receiver is a real ``http.server`` on 127.0.0.1 in a thread. It validates every body
against the documented format (field names, types, allowed values, limits), answers as the real
service does (Slack ``200 ok``, PagerDuty ``202 {"status": "success", ...}``, 400 for a bad
payload), and can be told to fail the next N requests. The mail server is a real aiosmtpd.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from alerts.channels import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify_signature


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Received:
    """One request as the receiver saw it."""

    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Reply:
    status: int
    body: bytes
    content_type: str = "application/json"


Validator = Callable[[Received], list[str]]


@dataclass
class _Failures:
    remaining: int = 0
    status: int = 503
    body: bytes = b"unavailable"


class Receiver:
    """A real HTTP server that validates and records what it is sent."""

    def __init__(self, validate: Validator, accept: Callable[[Received], Reply]) -> None:
        self.validate = validate
        self.accept = accept
        self.accepted: list[Received] = []
        self.attempts = 0
        self.problems: list[str] = []
        self._failures = _Failures()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def fail_next(self, n: int, status: int = 503, body: bytes = b"unavailable") -> None:
        """Answer the next ``n`` requests with ``status`` (after recording them as attempts)."""
        with self._lock:
            self._failures = _Failures(n, status, body)

    def _handle(self, received: Received) -> Reply:
        with self._lock:
            self.attempts += 1
            if self._failures.remaining > 0:
                self._failures.remaining -= 1
                return Reply(self._failures.status, self._failures.body, "text/plain")
            problems = self.validate(received)
            if problems:
                self.problems.extend(problems)
                return Reply(400, json.dumps({"errors": problems}).encode())
            self.accepted.append(received)
            return self.accept(received)

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                received = Received(
                    self.path,
                    {k.lower(): v for k, v in self.headers.items()},
                    self.rfile.read(length),
                )
                reply = receiver._handle(received)
                self.send_response(reply.status)
                self.send_header("Content-Type", reply.content_type)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


# --- validation helpers ----------------------------------------------------------------------


def _keys(obj: dict[str, Any], where: str, required: set[str], allowed: set[str]) -> list[str]:
    problems = [f"{where}: missing {k!r}" for k in sorted(required - obj.keys())]
    problems += [f"{where}: unknown field {k!r}" for k in sorted(obj.keys() - allowed)]
    return problems


def _string(value: Any, where: str, *, max_len: int | None = None) -> list[str]:
    if not isinstance(value, str) or not value:
        return [f"{where}: expected a non-empty string, got {value!r}"]
    if max_len is not None and len(value) > max_len:
        return [f"{where}: {len(value)} characters, more than {max_len}"]
    return []


def _json_object(received: Received) -> tuple[dict[str, Any] | None, list[str]]:
    if not received.headers.get("content-type", "").startswith("application/json"):
        return None, [f"content-type {received.headers.get('content-type')!r}"]
    try:
        body = received.json
    except ValueError as exc:
        return None, [f"invalid JSON: {exc}"]
    if not isinstance(body, dict):
        return None, ["body is not a JSON object"]
    return body, []


# --- Slack -----------------------------------------------------------------------------------

_TEXT_TYPES = {"plain_text", "mrkdwn"}


def _text_object(obj: Any, where: str, max_len: int, types: set[str] = _TEXT_TYPES) -> list[str]:
    if not isinstance(obj, dict):
        return [f"{where}: not a text object"]
    problems = _keys(obj, where, {"type", "text"}, {"type", "text", "emoji", "verbatim"})
    if obj.get("type") not in types:
        problems.append(f"{where}.type: {obj.get('type')!r} not in {sorted(types)}")
    if "emoji" in obj and (obj.get("type") != "plain_text" or not isinstance(obj["emoji"], bool)):
        problems.append(f"{where}.emoji: only a bool on plain_text")
    if "verbatim" in obj and (obj.get("type") != "mrkdwn" or not isinstance(obj["verbatim"], bool)):
        problems.append(f"{where}.verbatim: only a bool on mrkdwn")
    return problems + _string(obj.get("text"), f"{where}.text", max_len=max_len)


def _slack_block(block: Any, where: str) -> list[str]:
    if not isinstance(block, dict):
        return [f"{where}: not an object"]
    kind = block.get("type")
    if kind == "header":
        return _keys(block, where, {"type", "text"}, {"type", "text", "block_id"}) + _text_object(
            block.get("text"), f"{where}.text", 150, {"plain_text"}
        )
    if kind == "section":
        problems = _keys(block, where, {"type"}, {"type", "text", "fields", "block_id"})
        if "text" not in block and "fields" not in block:
            problems.append(f"{where}: a section needs text or fields")
        if "text" in block:
            problems += _text_object(block["text"], f"{where}.text", 3000)
        if "fields" in block:
            fields = block["fields"]
            if not isinstance(fields, list) or not 1 <= len(fields) <= 10:
                problems.append(f"{where}.fields: 1 to 10 text objects")
            else:
                for i, f in enumerate(fields):
                    problems += _text_object(f, f"{where}.fields[{i}]", 2000)
        return problems
    if kind == "context":
        problems = _keys(block, where, {"type", "elements"}, {"type", "elements", "block_id"})
        elements = block.get("elements")
        if not isinstance(elements, list) or not 1 <= len(elements) <= 10:
            return [*problems, f"{where}.elements: 1 to 10 elements"]
        for i, e in enumerate(elements):
            problems += _text_object(e, f"{where}.elements[{i}]", 3000)
        return problems
    if kind == "divider":
        return _keys(block, where, {"type"}, {"type", "block_id"})
    return [f"{where}.type: unexpected block type {kind!r}"]


def validate_slack(received: Received) -> list[str]:
    """An incoming-webhook message with ``text`` (the fallback) and Block Kit ``blocks``."""
    body, problems = _json_object(received)
    if body is None:
        return problems
    problems += _keys(body, "message", {"text", "blocks"}, {"text", "blocks"})
    problems += _string(body.get("text"), "text")
    blocks = body.get("blocks")
    if not isinstance(blocks, list) or not 1 <= len(blocks) <= 50:
        return [*problems, "blocks: 1 to 50 blocks"]
    for i, block in enumerate(blocks):
        problems += _slack_block(block, f"blocks[{i}]")
    return problems


def slack_receiver() -> Receiver:
    return Receiver(validate_slack, lambda _: Reply(200, b"ok", "text/plain")).start()


# --- PagerDuty -------------------------------------------------------------------------------

_PD_PAYLOAD = {
    "summary",
    "source",
    "severity",
    "timestamp",
    "component",
    "group",
    "class",
    "custom_details",
}


def validate_pagerduty(received: Received, routing_key: str) -> list[str]:
    """An Events API v2 alert event (trigger with a payload; acknowledge/resolve without)."""
    body, problems = _json_object(received)
    if body is None:
        return problems
    action = body.get("event_action")
    if action not in {"trigger", "acknowledge", "resolve"}:
        return [*problems, f"event_action: {action!r}"]
    if body.get("routing_key") != routing_key:
        problems.append(f"routing_key: {body.get('routing_key')!r}")
    problems += _string(body.get("dedup_key"), "dedup_key", max_len=255)
    if action != "trigger":
        return problems + _keys(
            body,
            action,
            {"routing_key", "event_action", "dedup_key"},
            {"routing_key", "event_action", "dedup_key"},
        )
    problems += _keys(
        body,
        "trigger",
        {"routing_key", "event_action", "payload"},
        {
            "routing_key",
            "event_action",
            "dedup_key",
            "payload",
            "links",
            "images",
            "client",
            "client_url",
        },
    )
    payload = body.get("payload")
    if not isinstance(payload, dict):
        return [*problems, "payload: not an object"]
    problems += _keys(payload, "payload", {"summary", "source", "severity"}, _PD_PAYLOAD)
    problems += _string(payload.get("summary"), "payload.summary", max_len=1024)
    problems += _string(payload.get("source"), "payload.source")
    if payload.get("severity") not in {"critical", "error", "warning", "info"}:
        problems.append(f"payload.severity: {payload.get('severity')!r}")
    if "timestamp" in payload:
        try:
            stamp = datetime.fromisoformat(payload["timestamp"])
            if stamp.tzinfo is None:
                problems.append("payload.timestamp: no time zone")
        except (TypeError, ValueError):
            problems.append(f"payload.timestamp: not ISO 8601: {payload['timestamp']!r}")
    for name in ("component", "group", "class"):
        if name in payload:
            problems += _string(payload[name], f"payload.{name}")
    if "custom_details" in payload and not isinstance(payload["custom_details"], dict):
        problems.append("payload.custom_details: not an object")
    links = body.get("links", [])
    if not isinstance(links, list):
        problems.append("links: not a list")
    else:
        for i, link in enumerate(links):
            if not isinstance(link, dict):
                problems.append(f"links[{i}]: not an object")
                continue
            problems += _keys(link, f"links[{i}]", {"href"}, {"href", "text"})
            problems += _string(link.get("href"), f"links[{i}].href")
    return problems


@dataclass
class PagerDutyAlert:
    """The alert PagerDuty keeps for one dedup key."""

    dedup_key: str
    status: str = "triggered"
    summaries: list[str] = field(default_factory=list)


class PagerDutyReceiver(Receiver):
    """Validates events and keeps PagerDuty's state: one alert per open dedup key."""

    def __init__(self, routing_key: str) -> None:
        self.routing_key = routing_key
        self.alerts: list[PagerDutyAlert] = []
        super().__init__(lambda r: validate_pagerduty(r, routing_key), self._apply)

    def open_alert(self, dedup_key: str) -> PagerDutyAlert | None:
        for alert in reversed(self.alerts):
            if alert.dedup_key == dedup_key and alert.status != "resolved":
                return alert
        return None

    def _apply(self, received: Received) -> Reply:
        body = received.json
        key = body["dedup_key"]
        current = self.open_alert(key)
        if body["event_action"] == "trigger":
            if current is None:
                current = PagerDutyAlert(key)
                self.alerts.append(current)
            current.summaries.append(body["payload"]["summary"])
        elif current is not None:
            current.status = "acknowledged" if body["event_action"] == "acknowledge" else "resolved"
        answer = {"status": "success", "message": "Event processed", "dedup_key": key}
        return Reply(202, json.dumps(answer).encode())

    @property
    def actions(self) -> list[str]:
        return [r.json["event_action"] for r in self.accepted]


def pagerduty_receiver(routing_key: str = "R0UT1NGKEY") -> PagerDutyReceiver:
    receiver = PagerDutyReceiver(routing_key)
    receiver.start()
    return receiver


# --- generic webhook -------------------------------------------------------------------------


def validate_webhook(received: Received, secret: str) -> list[str]:
    """A signed drainwatch webhook: the signature over the raw body, then the envelope."""
    timestamp = received.headers.get(TIMESTAMP_HEADER.lower(), "")
    signature = received.headers.get(SIGNATURE_HEADER.lower(), "")
    if not verify_signature(secret, timestamp, received.body, signature, now=time.time()):
        return [f"bad signature {signature!r} at {timestamp!r}"]
    body, problems = _json_object(received)
    if body is None:
        return problems
    keys = {"version", "id", "action", "incident_id", "dedup_key", "title", "note", "alert"}
    problems += _keys(body, "webhook", keys, keys)
    if body.get("version") != 1:
        problems.append(f"version: {body.get('version')!r}")
    if body.get("action") not in {"trigger", "update", "escalate", "acknowledge", "resolve"}:
        problems.append(f"action: {body.get('action')!r}")
    alert = body.get("alert")
    if not isinstance(alert, dict) or alert.get("severity") not in {"info", "warning", "critical"}:
        problems.append("alert: not an alert")
    return problems


def webhook_receiver(secret: str = "whsec-test") -> Receiver:
    return Receiver(lambda r: validate_webhook(r, secret), lambda _: Reply(204, b"")).start()


# --- SMTP ------------------------------------------------------------------------------------


class MailHandler:
    """An aiosmtpd handler that keeps the mails and can answer 4xx/5xx on demand."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self.fail_data: list[str] = []
        self.refuse: set[str] = set()

    async def handle_RCPT(  # noqa: N802 - the hook name aiosmtpd calls
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if address in self.refuse:
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(  # noqa: N802 - the hook name aiosmtpd calls
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        if self.fail_data:
            return self.fail_data.pop(0)
        raw = envelope.original_content or b""
        message = message_from_bytes(raw, policy=policy.default)
        assert isinstance(message, EmailMessage)
        self.messages.append(message)
        self.envelopes.append((str(envelope.mail_from), list(envelope.rcpt_tos)))
        return "250 Message accepted for delivery"


class MailServer:
    """A real SMTP server on 127.0.0.1."""

    def __init__(self) -> None:
        self.handler = MailHandler()
        self.port = free_port()
        self._controller: Controller | None = None

    def start(self) -> MailServer:
        self._controller = Controller(self.handler, hostname="127.0.0.1", port=self.port)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    @property
    def messages(self) -> list[EmailMessage]:
        return self.handler.messages
