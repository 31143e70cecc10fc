"""Fixtures of the alerts tests: a real kill-switch server (uvicorn) on 127.0.0.1."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
import uvicorn

from alerts import FreezeStore, create_app, serve_in_thread, stop_server
from drainwatch.events import Alert, Severity, Transfer


def free_port() -> int:
    """A port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class KillSwitchService:
    """A running kill switch: its store, its URL, and how to stop it."""

    store: FreezeStore
    port: int
    server: uvicorn.Server
    thread: threading.Thread
    stopped: bool = field(default=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if not self.stopped:
            stop_server(self.server, self.thread)
            self.store.close()
            self.stopped = True


class KillSwitchFactory:
    """Starts kill switches; stops every one of them at teardown."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[KillSwitchService] = []

    def start(
        self, port: int | None = None, token: str | None = None, db: str = "freezes.sqlite3"
    ) -> KillSwitchService:
        store = FreezeStore(str(self.tmp_path / db))
        port = port or free_port()
        server, thread = serve_in_thread(create_app(store, token), "127.0.0.1", port)
        service = KillSwitchService(store, port, server, thread)
        self.started.append(service)
        return service

    def stop_all(self) -> None:
        for service in self.started:
            service.stop()


@pytest.fixture
def killswitch_factory(tmp_path: Path) -> Iterator[KillSwitchFactory]:
    factory = KillSwitchFactory(tmp_path)
    yield factory
    factory.stop_all()


@pytest.fixture
def killswitch(killswitch_factory: KillSwitchFactory) -> KillSwitchService:
    return killswitch_factory.start()


T0 = datetime(2018, 1, 26, 2, 57, tzinfo=UTC)


def make_alert(**fields: object) -> Alert:
    """An alert with sensible defaults; any field can be overridden."""
    values: dict[str, object] = {
        "id": "alert-1",
        "time": T0,
        "detected_at": T0,
        "chain": "nem",
        "wallet": "NC3BI3DNMR2PGEOOMP2NKXQGSAKMS7GYRKVA5CSZ",
        "wallet_label": "nem-hot",
        "severity": Severity.CRITICAL,
        "detector": "velocity",
        "freeze": True,
        "summary": "31% of hot wallet drained in 4 min to 1 new address",
    }
    values.update(fields)
    return Alert.model_validate(values)


def make_transfer(**fields: object) -> Transfer:
    """An outgoing transfer with sensible defaults; any field can be overridden."""
    values: dict[str, object] = {
        "chain": "nem",
        "wallet": "NC3BI3DNMR2PGEOOMP2NKXQGSAKMS7GYRKVA5CSZ",
        "direction": "out",
        "counterparty": "NC4C6PSUW5CLTDT5SXAGZJQJ2JZ6BFSP3YJ6J2CX",
        "asset": "XEM",
        "amount": 100_000_000_000,
        "decimals": 6,
        "tx_hash": "0x01",
        "position": 0,
        "time": T0,
    }
    values.update(fields)
    return Transfer.create(**values)
