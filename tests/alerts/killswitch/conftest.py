"""Fixtures of the kill-switch tests: PostgreSQL, stores on both backends, real servers, keys."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import SecretStr

from alerts.killswitch import (
    AutoFreezePolicy,
    HookSettings,
    KeySettings,
    KillSwitchSettings,
    KillSwitchStore,
    RetrySettings,
    Role,
    VelocityBudget,
    create_app,
    open_store,
    serve_in_thread,
    server_port,
    signed_headers,
    stop_server,
)
from drainwatch.config import WalletConfig
from drainwatch.events import FreezeOrder
from tests.alerts.conftest import free_port
from tests.harness.postgres import PostgresService

ETH_HOT = "0xabc0000000000000000000000000000000000001"
ETH_HOT2 = "0xabc0000000000000000000000000000000000002"
NEM_HOT = "NC3BI3DNMR2PGEOOMP2NKXQGSAKMS7GYRKVA5CSZ"

#: key id -> (secret, roles, bearer)
KEYS: dict[str, tuple[str, tuple[Role, ...], bool]] = {
    "alerts": ("alerts-secret-0001", (Role.DETECTOR,), False),
    "ops-1": ("ops-secret-0001", (Role.OPERATOR,), False),
    "ops-2": ("ops-secret-0002", (Role.OPERATOR, Role.APPROVER), False),
    "approver-1": ("approver-secret-0001", (Role.APPROVER,), False),
    "approver-2": ("approver-secret-0002", (Role.APPROVER,), False),
    "signer-1": ("signer-secret-0001", (Role.SIGNER,), False),
    "reader": ("reader-secret-0001", (Role.READ_ONLY,), True),
    "fuzzer": ("fuzzer-secret-0001", tuple(Role), True),
}


def make_settings(**overrides: Any) -> KillSwitchSettings:
    """Settings with every test key, three known wallets, and any field overridden."""
    values: dict[str, Any] = {
        "keys": tuple(
            KeySettings(id=k, secret=SecretStr(s), roles=roles, bearer=bearer)
            for k, (s, roles, bearer) in KEYS.items()
        ),
        "wallets": (
            WalletConfig(chain="ethereum", address=ETH_HOT, label="eth-hot"),
            WalletConfig(chain="ethereum", address=ETH_HOT2, label="eth-hot"),
            WalletConfig(chain="nem", address=NEM_HOT, label="nem-hot"),
        ),
        "budgets": (
            VelocityBudget(label="eth-hot", asset="ETH", max_amount=Decimal(100), window_s=3600),
        ),
        "policy": AutoFreezePolicy(),
        "retry": RetrySettings(
            backoff_s=0.05, backoff_max_s=0.2, escalate_after_attempts=3, timeout_s=2
        ),
    }
    values.update(overrides)
    return KillSwitchSettings.model_validate(values)


class HmacAuth(httpx.Auth):
    """Signs every request httpx sends (a fresh timestamp and nonce each time)."""

    def __init__(self, key_id: str, secret: str | None = None, *, now: float | None = None):
        self.key_id = key_id
        self.secret = (secret if secret is not None else KEYS[key_id][0]).encode()
        self.now = now

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers.update(
            signed_headers(
                self.key_id,
                self.secret,
                request.method,
                request.url.raw_path.decode(),
                request.content,
                now=self.now,
            )
        )
        yield request


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresService]:
    """One PostgreSQL server for the session; each test creates its own database."""
    with PostgresService() as svc:
        yield svc


@pytest.fixture(params=["sqlite", "postgres"])
def store_location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a test's store lives: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "killswitch.sqlite3")
    pg: PostgresService = request.getfixturevalue("postgres")
    return pg.create_database("ks")


@pytest.fixture
def open_stores(store_location: str) -> Iterator[Callable[[], KillSwitchStore]]:
    """Opens (and at teardown closes) stores on the test's location."""
    opened: list[KillSwitchStore] = []

    def make() -> KillSwitchStore:
        store = open_store(store_location)
        opened.append(store)
        return store

    yield make
    for store in opened:
        with contextlib.suppress(Exception):  # already closed by the test
            store.close()


@dataclass
class Server:
    """A running kill switch over a store, with what it published."""

    store: KillSwitchStore
    port: int
    server: uvicorn.Server
    thread: threading.Thread
    published: list[FreezeOrder]
    app: FastAPI
    stopped: bool = field(default=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, key_id: str | None = None, **kwargs: Any) -> httpx.Client:
        auth = HmacAuth(key_id) if key_id else None
        return httpx.Client(base_url=self.url, auth=auth, timeout=10, **kwargs)

    def stop(self) -> None:
        if not self.stopped:
            stop_server(self.server, self.thread)
            self.store.close()
            self.stopped = True


class ServerFactory:
    """Starts kill switches on a store location; stops them all at teardown."""

    def __init__(self, location: str) -> None:
        self.location = location
        self.started: list[Server] = []

    def start(
        self, settings: KillSwitchSettings | None = None, port: int | None = None, **kwargs: Any
    ) -> Server:
        store = open_store(self.location)
        published: list[FreezeOrder] = []
        app = create_app(
            store, settings=settings or make_settings(), publish=published.append, **kwargs
        )
        server, thread = serve_in_thread(app, "127.0.0.1", port or 0)
        started = Server(store, server_port(server), server, thread, published, app)
        self.started.append(started)
        return started

    def stop_all(self) -> None:
        for server in self.started:
            server.stop()


@pytest.fixture
def servers(store_location: str) -> Iterator[ServerFactory]:
    factory = ServerFactory(store_location)
    yield factory
    factory.stop_all()


@pytest.fixture
def sqlite_servers(tmp_path: Path) -> Iterator[ServerFactory]:
    """Kill switches on SQLite only (for tests about the HTTP layer, not the store)."""
    factory = ServerFactory(str(tmp_path / "killswitch.sqlite3"))
    yield factory
    factory.stop_all()


@dataclass
class HookReceiver:
    """A hook endpoint on loopback that answers 503 to its first ``failures`` requests."""

    failures: int
    received: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)
    port: int = 0
    server: uvicorn.Server | None = None
    thread: threading.Thread | None = None
    arrived: threading.Event = field(default_factory=threading.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, port: int | None = None) -> HookReceiver:
        app = FastAPI()

        @app.post("/{path:path}")
        async def receive(path: str, request: Request) -> JSONResponse:
            body = await request.body()
            self.received.append(("/" + path, dict(request.headers), body))
            code = 503 if len(self.received) <= self.failures else 200
            self.answers.append(code)
            if code == 200:
                self.arrived.set()
            return JSONResponse({"ok": code == 200}, code)

        self.server, self.thread = serve_in_thread(app, "127.0.0.1", port or self.port or 0)
        self.port = server_port(self.server)
        return self

    def stop(self) -> None:
        if self.server is not None and self.thread is not None:
            stop_server(self.server, self.thread)
            self.server = None


@pytest.fixture
def hook_receivers() -> Iterator[Callable[..., HookReceiver]]:
    made: list[HookReceiver] = []

    def make(failures: int = 0, *, start: bool = True, port: int | None = None) -> HookReceiver:
        receiver = HookReceiver(failures, port=port or 0)
        made.append(receiver)
        return receiver.start() if start else receiver

    yield make
    for receiver in made:
        receiver.stop()


def webhook(url: str, name: str = "wallet-infra") -> HookSettings:
    return HookSettings(name=name, kind="webhook", url=url, secret=SecretStr("hook-secret-0001"))


def bitgo(url: str) -> HookSettings:
    return HookSettings(
        name="custody",
        kind="bitgo",
        url=url,
        token=SecretStr("bitgo-token-0001"),
        duration_s=600,
        coins={"ethereum": "eth"},
        wallet_ids={f"ethereum:{ETH_HOT}": "62f0c1a5e4b0"},
    )


__all__ = ["free_port"]
