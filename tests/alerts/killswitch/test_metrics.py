"""The kill switch's metrics at /metrics: new orders, authorize decisions, hook delivery time."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.alerts.killswitch.conftest import (
    ETH_HOT,
    HookReceiver,
    ServerFactory,
    make_settings,
    webhook,
)

FREEZE = {"chain": "ethereum", "wallet": ETH_HOT, "reason": "drain", "requested_by": "ops"}


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_orders_decisions_and_delivery_time_are_measured(
    sqlite_servers: ServerFactory, hook_receivers: Callable[..., HookReceiver]
) -> None:
    receiver = hook_receivers(failures=1)  # the delivery waits for one back-off (0.05 s)
    ks = sqlite_servers.start(make_settings(hooks=(webhook(receiver.url),)))
    with ks.client("reader") as http:
        before = _samples(http.get("/metrics").text)
    with ks.client("ops-1") as http:
        for _ in range(2):  # the repeat finds the freeze in force: no new order
            http.post("/v1/freezes", json=FREEZE).raise_for_status()
    deadline = time.monotonic() + 20
    while ks.store.hooks()[0].status != "delivered":
        if time.monotonic() > deadline:
            pytest.fail("the hook was not delivered")
        time.sleep(0.02)
    with ks.client("signer-1") as http:
        body = {"chain": "ethereum", "wallet": ETH_HOT, "asset": "ETH", "amount": "1", "to": "0xb"}
        assert http.post("/v1/authorize", json=body).json()["allowed"] is False
    with ks.client("reader") as http:
        after = _samples(http.get("/metrics").text)

    target = (("target", "wallet-infra"),)
    # Every series exists from the start, at 0.
    assert before[("drainwatch_killswitch_orders_total", (("action", "freeze"),))] == 0
    assert before[("drainwatch_killswitch_authorize_total", (("allowed", "false"),))] == 0
    assert before[("drainwatch_hook_escalations_total", target)] == 0
    assert before[("drainwatch_hook_delivery_seconds_count", target)] == 0

    assert after[("drainwatch_killswitch_orders_total", (("action", "freeze"),))] == 1
    assert after[("drainwatch_killswitch_orders_total", (("action", "unfreeze"),))] == 0
    assert after[("drainwatch_killswitch_authorize_total", (("allowed", "false"),))] == 1
    assert after[("drainwatch_killswitch_authorize_total", (("allowed", "true"),))] == 0
    assert after[("drainwatch_killswitch_authorize_seconds_count", ())] == 1
    assert after[("drainwatch_hook_delivery_seconds_count", target)] == 1
    # From enqueueing to the acknowledgement: the failed attempt and the back-off included.
    assert after[("drainwatch_hook_delivery_seconds_sum", target)] >= 0.05
    assert after[("drainwatch_hook_escalations_total", target)] == 0
