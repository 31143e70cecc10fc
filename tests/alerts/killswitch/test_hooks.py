"""Outbound hooks: retried until acknowledged, escalated, kept across a restart."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable

import pytest

from alerts.killswitch import HookRecord, RetrySettings
from tests.alerts.killswitch.conftest import (
    ETH_HOT,
    NEM_HOT,
    HookReceiver,
    ServerFactory,
    bitgo,
    make_settings,
    webhook,
)

FREEZE = {
    "chain": "ethereum",
    "wallet": ETH_HOT,
    "reason": "drain",
    "alert_id": "alert-1",
    "requested_by": "drainwatch-alerts",
}


def _wait(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("condition not met in time")
        time.sleep(0.02)


def test_a_hook_that_is_down_is_retried_until_it_acknowledges(
    sqlite_servers: ServerFactory, hook_receivers: Callable[..., HookReceiver]
) -> None:
    receiver = hook_receivers(failures=2)
    results: list[HookRecord] = []
    ks = sqlite_servers.start(
        make_settings(hooks=(webhook(receiver.url),)), on_hook_result=results.append
    )
    with ks.client("alerts") as http:
        order = http.post("/v1/freezes", json=FREEZE).json()
    _wait(lambda: bool(ks.store.hooks()) and ks.store.hooks()[0].status == "delivered")
    (hook,) = ks.store.hooks()
    assert receiver.answers == [503, 503, 200]
    assert hook.attempts == 3
    assert not hook.escalated
    assert [r.status for r in results] == ["pending", "pending", "delivered"]
    # The webhook is signed over its body, and carries the order.
    _, headers, body = receiver.received[-1]
    timestamp, mac = headers["x-drainwatch-signature"].removeprefix("t=").split(",v1=")
    expected = hmac.new(b"hook-secret-0001", f"{timestamp}.".encode() + body, hashlib.sha256)
    assert hmac.compare_digest(mac, expected.hexdigest())
    assert json.loads(body)["order"]["id"] == order["id"]
    assert headers["x-drainwatch-delivery"] == hook.id
    actions = [e.action for e in ks.store.audit_entries()]
    assert actions == ["freeze", "hook_failed", "hook_failed", "hook_delivered"]


def test_a_failing_hook_is_escalated_and_still_retried(
    sqlite_servers: ServerFactory, hook_receivers: Callable[..., HookReceiver]
) -> None:
    receiver = hook_receivers(failures=5)
    settings = make_settings(
        hooks=(webhook(receiver.url),),
        retry=RetrySettings(backoff_s=0.02, backoff_max_s=0.05, escalate_after_attempts=3),
    )
    ks = sqlite_servers.start(settings)
    with ks.client("ops-1") as http:
        http.post("/v1/freezes", json=FREEZE).raise_for_status()
    _wait(lambda: len(receiver.answers) >= 3)
    with ks.client("reader") as http:
        _wait(lambda: http.get("/v1/hooks").json()["hooks"][0]["status"] != "pending")
        escalated = http.get("/v1/hooks").json()["hooks"][0]
        metrics = http.get("/metrics").text
    assert escalated["status"] in ("escalated", "delivered")
    assert escalated["escalated"] is True
    assert 'drainwatch_hook_escalations_total{target="wallet-infra"} 1.0' in metrics
    _wait(lambda: ks.store.hooks()[0].status == "delivered")
    assert receiver.answers == [503] * 5 + [200]
    actions = [e.action for e in ks.store.audit_entries()]
    assert actions.count("hook_escalated") == 1
    assert ks.store.hooks()[0].escalated


def test_the_custody_freeze_call_has_the_bitgo_shape(
    sqlite_servers: ServerFactory, hook_receivers: Callable[..., HookReceiver]
) -> None:
    receiver = hook_receivers(failures=0)
    ks = sqlite_servers.start(make_settings(hooks=(bitgo(receiver.url),)))
    with ks.client("ops-1") as http:
        http.post("/v1/freezes", json=FREEZE).raise_for_status()
        # No custody wallet id for this one: no call.
        http.post("/v1/freezes", json={**FREEZE, "chain": "nem", "wallet": NEM_HOT})
    assert receiver.arrived.wait(10)
    _wait(lambda: ks.store.hooks()[0].status == "delivered")
    path, headers, body = receiver.received[0]
    assert path == "/api/v2/eth/wallet/62f0c1a5e4b0/freeze"
    assert json.loads(body) == {"duration": 600}
    assert headers["authorization"] == "Bearer bitgo-token-0001"
    assert len(ks.store.hooks()) == 1


def test_a_restart_keeps_pending_hooks(
    servers: ServerFactory, hook_receivers: Callable[..., HookReceiver]
) -> None:
    receiver = hook_receivers(failures=0, start=False)
    from tests.alerts.conftest import free_port

    receiver.port = free_port()
    settings = make_settings(hooks=(webhook(receiver.url),))
    first = servers.start(settings)
    with first.client("ops-1") as http:
        order = http.post("/v1/freezes", json=FREEZE).json()
    _wait(lambda: first.store.hooks()[0].attempts >= 1)
    port = first.port
    first.stop()

    receiver.start()
    second = servers.start(settings, port=port)
    assert receiver.arrived.wait(20)
    _wait(lambda: second.store.hooks()[0].status == "delivered")
    (hook,) = second.store.hooks()
    assert hook.order_id == order["id"]
    assert hook.attempts >= 2
    assert len(receiver.received) == 1
    assert second.store.is_frozen("ethereum", ETH_HOT)


def test_the_worker_keeps_going_when_the_callback_fails(
    sqlite_servers: ServerFactory, hook_receivers: Callable[..., HookReceiver]
) -> None:
    receiver = hook_receivers(failures=0)
    called = threading.Event()

    def broken(_: HookRecord) -> None:
        called.set()
        raise RuntimeError("timeline down")

    ks = sqlite_servers.start(make_settings(hooks=(webhook(receiver.url),)), on_hook_result=broken)
    with ks.client("ops-1") as http:
        http.post("/v1/freezes", json=FREEZE).raise_for_status()
        http.post("/v1/freezes", json={**FREEZE, "wallet": NEM_HOT, "chain": "nem"})
    _wait(
        lambda: (
            len(ks.store.hooks()) == 2 and all(h.status == "delivered" for h in ks.store.hooks())
        )
    )
    assert called.is_set()
