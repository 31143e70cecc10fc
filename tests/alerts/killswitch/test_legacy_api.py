"""The kill switch in single-token mode (what the alerter uses), and its client's retries."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from alerts import (
    FreezeStore,
    KillSwitchClient,
    KillSwitchRejectedError,
    KillSwitchUnavailableError,
    ServerStartError,
    create_app,
    serve_in_thread,
    server_port,
    stop_server,
)
from alerts.errors import KillSwitchStateError
from drainwatch.events import FreezeAction, FreezeOrder
from tests.alerts.conftest import KillSwitchFactory, KillSwitchService, free_port

BODY = {
    "chain": "ethereum",
    "wallet": "0xAbC0000000000000000000000000000000000001",
    "reason": "31% drained in 4 min",
    "alert_id": "alert-1",
    "requested_by": "drainwatch-alerts",
}
WALLET = "0xabc0000000000000000000000000000000000001"


def test_a_second_freeze_returns_the_existing_order(killswitch: KillSwitchService) -> None:
    with httpx.Client(base_url=killswitch.url) as http:
        first = http.post("/v1/freezes", json=BODY)
        second = http.post("/v1/freezes", json={**BODY, "alert_id": "alert-2", "reason": "again"})
    assert (first.status_code, second.status_code) == (201, 200)
    assert second.json() == first.json()
    order = FreezeOrder.model_validate(first.json())
    assert (order.action, order.wallet, order.alert_id) == (FreezeAction.FREEZE, WALLET, "alert-1")
    assert len(killswitch.store.orders()) == 1
    assert [r.created for r in killswitch.store.requests()] == [True, False]


def test_wallet_status_and_the_list_of_freezes(killswitch: KillSwitchService) -> None:
    with httpx.Client(base_url=killswitch.url) as http:
        before = http.get(f"/v1/wallets/ethereum/{WALLET}").json()
        order = http.post("/v1/freezes", json=BODY).json()
        # The address is normalised, so any hex case finds the wallet.
        after = http.get(f"/v1/wallets/ethereum/{WALLET.upper().replace('0X', '0x')}").json()
        elsewhere = http.get(f"/v1/wallets/polygon/{WALLET}").json()
        listed = http.get("/v1/freezes").json()
    assert before == {"frozen": False, "order": None}
    assert after == {"frozen": True, "order": order}
    assert elsewhere["frozen"] is False
    assert listed == {"freezes": [order]}


def test_a_token_is_required_when_configured(killswitch_factory: KillSwitchFactory) -> None:
    service = killswitch_factory.start(token="s3cret")
    with httpx.Client(base_url=service.url) as http:
        missing = http.post("/v1/freezes", json=BODY)
        wrong = http.post("/v1/freezes", json=BODY, headers={"Authorization": "Bearer nope"})
        basic = http.get("/v1/freezes", headers={"Authorization": "Basic czNjcmV0"})
        status_unauth = http.get(f"/v1/wallets/ethereum/{WALLET}")
        health = http.get("/healthz")
        right = http.post("/v1/freezes", json=BODY, headers={"Authorization": "Bearer s3cret"})
    assert [r.status_code for r in (missing, wrong, basic, status_unauth)] == [401] * 4
    assert missing.headers["www-authenticate"] == "Bearer"
    assert health.status_code == 200
    assert right.status_code == 201
    # Refused requests changed nothing and were not even logged as requests.
    assert len(service.store.requests()) == 1


@pytest.mark.parametrize(
    "body",
    [
        {k: v for k, v in BODY.items() if k != "wallet"},
        {**BODY, "chain": ""},
        {**BODY, "reason": 7},
        ["not", "an", "object"],
    ],
    ids=["missing-wallet", "empty-chain", "reason-not-a-string", "not-an-object"],
)
def test_a_malformed_body_is_422_and_freezes_nothing(
    killswitch: KillSwitchService, body: Any
) -> None:
    with httpx.Client(base_url=killswitch.url) as http:
        response = http.post("/v1/freezes", json=body)
        not_json = http.post(
            "/v1/freezes", content=b"{", headers={"Content-Type": "application/json"}
        )
    assert (response.status_code, not_json.status_code) == (422, 422)
    assert killswitch.store.orders() == []


def test_freezes_survive_a_restart(killswitch_factory: KillSwitchFactory) -> None:
    first = killswitch_factory.start(db="restart.sqlite3")
    with httpx.Client(base_url=first.url) as http:
        order = http.post("/v1/freezes", json=BODY).json()
    first.stop()

    second = killswitch_factory.start(port=first.port, db="restart.sqlite3")
    with httpx.Client(base_url=second.url) as http:
        status = http.get(f"/v1/wallets/ethereum/{WALLET}").json()
        again = http.post("/v1/freezes", json={**BODY, "alert_id": "alert-9"})
    assert status == {"frozen": True, "order": order}
    assert (again.status_code, again.json()) == (200, order)


def test_the_store_is_append_only_and_unfreeze_makes_a_new_order(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sqlite3")
    store = FreezeStore(path)
    frozen, _ = store.freeze("nem", "N1", "drain", alert_id="a1", requested_by="alerts")
    unfrozen = store.unfreeze("nem", "N1", "false alarm", requested_by="ops")
    refrozen, created = store.freeze("nem", "N1", "drain", alert_id="a1", requested_by="alerts")
    assert created
    assert not store.is_frozen("nem", "N2")
    assert len({frozen.id, unfrozen.id, refrozen.id}) == 3
    assert store.frozen() == [refrozen]
    with pytest.raises(KillSwitchStateError, match="never frozen"):
        store.unfreeze("nem", "N2", "?", requested_by="ops")
    store.close()
    db = sqlite3.connect(path)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("UPDATE orders SET action = 'unfreeze'")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("DELETE FROM requests")
    db.close()


def test_order_ids_are_deterministic_across_stores() -> None:
    a, b = FreezeStore(":memory:"), FreezeStore(":memory:")
    order_a, _ = a.freeze("nem", "N1", "x", alert_id="a1", requested_by="alerts")
    order_b, _ = b.freeze("nem", "N1", "y", alert_id="a2", requested_by="ops")
    assert order_a.id == order_b.id


def test_the_client_waits_for_a_server_that_starts_late(
    killswitch_factory: KillSwitchFactory,
) -> None:
    port = free_port()
    timer = threading.Timer(1.0, killswitch_factory.start, kwargs={"port": port})
    timer.start()
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        threading.Event().wait(seconds)

    client = KillSwitchClient(f"http://127.0.0.1:{port}", attempts=10, backoff_s=0.1, sleep=sleep)
    try:
        order = client.freeze("ethereum", WALLET, reason="drain", alert_id="alert-1")
    finally:
        client.close()
        timer.join()
    assert waits, "the first attempt cannot have reached a server that was not started yet"
    assert waits == sorted(waits), "backoff grows"
    service = killswitch_factory.started[0]
    assert service.store.is_frozen("ethereum", WALLET)
    assert order == service.store.frozen()[0].model_dump(mode="json")


def test_the_client_retries_5xx_answers() -> None:
    answers = iter([503, 500])
    seen: list[str] = []

    flaky = FastAPI()

    @flaky.post("/v1/freezes")
    def freeze(body: dict[str, Any]) -> JSONResponse:
        seen.append(body["wallet"])
        status = next(answers, 201)
        return JSONResponse({"id": "o1"} if status == 201 else {"error": "busy"}, status)

    server, thread = serve_in_thread(flaky)
    client = KillSwitchClient(f"http://127.0.0.1:{server_port(server)}", backoff_s=0.01)
    try:
        assert client.freeze("nem", "N1", reason="drain") == {"id": "o1"}
    finally:
        client.close()
        stop_server(server, thread)
    assert seen == ["N1"] * 3


def test_a_4xx_is_final(killswitch_factory: KillSwitchFactory) -> None:
    service = killswitch_factory.start(token="s3cret")
    waits: list[float] = []
    client = KillSwitchClient(service.url, token="wrong", sleep=waits.append)
    with client, pytest.raises(KillSwitchRejectedError) as caught:
        client.freeze("ethereum", WALLET, reason="drain")
    assert caught.value.status_code == 401
    assert (caught.value.chain, caught.value.wallet) == ("ethereum", WALLET)
    assert waits == []


def test_an_absent_server_is_unavailable_after_every_attempt() -> None:
    waits: list[float] = []
    client = KillSwitchClient(f"http://127.0.0.1:{free_port()}", attempts=3, sleep=waits.append)
    with client, pytest.raises(KillSwitchUnavailableError) as caught:
        client.freeze("nem", "N1", reason="drain")
    assert caught.value.attempts == 3
    assert len(waits) == 2
    assert "ConnectError" in str(caught.value)


def test_serving_on_a_taken_port_fails_loudly(killswitch: KillSwitchService) -> None:
    with pytest.raises(ServerStartError):
        serve_in_thread(create_app(FreezeStore(":memory:")), "127.0.0.1", killswitch.port)
