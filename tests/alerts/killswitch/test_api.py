"""The kill switch's HTTP API on real uvicorn servers, on SQLite and on PostgreSQL."""

from __future__ import annotations

import time
from decimal import Decimal

import httpx

from alerts.killswitch import AutoFreezePolicy, VelocityBudget, signed_headers
from drainwatch.config import WalletConfig
from tests.alerts.killswitch.conftest import (
    ETH_HOT,
    ETH_HOT2,
    KEYS,
    NEM_HOT,
    HmacAuth,
    ServerFactory,
    make_settings,
)

FREEZE = {
    "chain": "ethereum",
    "wallet": ETH_HOT,
    "reason": "31% drained in 4 min",
    "alert_id": "alert-1",
    "requested_by": "drainwatch-alerts",
    "severity": "critical",
}


def _actions(server_store: object) -> list[str]:
    return [e.action for e in server_store.audit_entries()]  # type: ignore[attr-defined]


def test_bad_credentials_are_401_and_audited(servers: ServerFactory) -> None:
    ks = servers.start()
    body = httpx.Request("POST", "/", json=FREEZE).content
    with ks.client() as http:
        unsigned = http.post("/v1/freezes", json=FREEZE)
        unknown_route = http.get("/v1/no-such-route")
        docs = http.get("/openapi.json")
        expired = http.post(
            "/v1/freezes", content=body, auth=HmacAuth("ops-1", now=time.time() - 301)
        )
        future = http.post(
            "/v1/freezes", content=body, auth=HmacAuth("ops-1", now=time.time() + 301)
        )
        wrong = http.post("/v1/freezes", content=body, auth=HmacAuth("ops-1", "not-the-secret"))
        unknown_key = http.post("/v1/freezes", content=body, auth=HmacAuth("mallory", "x" * 16))
        headers = signed_headers("ops-1", KEYS["ops-1"][0].encode(), "POST", "/v1/freezes", body)
        headers["Content-Type"] = "application/json"
        tampered = http.post("/v1/freezes", content=body.replace(b"31%", b"99%"), headers=headers)
        first = http.post("/v1/freezes", content=body, headers=headers)
        replayed = http.post("/v1/freezes", content=body, headers=headers)
        other_path = http.post("/v1/freeze-all", content=body, headers=headers)
        bearer_not_allowed = http.get(
            "/v1/freezes", headers={"Authorization": f"Bearer {KEYS['ops-1'][0]}"}
        )
        health = http.get("/healthz")
    refused = [unsigned, unknown_route, docs, expired, future, wrong, unknown_key, tampered]
    refused += [replayed, other_path, bearer_not_allowed]
    assert [r.status_code for r in refused] == [401] * len(refused)
    assert first.status_code == 201
    assert "replayed nonce" in replayed.json()["detail"]
    assert "window" in expired.json()["detail"]
    assert health.json() == {"status": "ok"}
    failures = [e for e in ks.store.audit_entries() if e.action == "auth_failed"]
    assert len(failures) == len(refused)
    assert {e.detail["reason"] for e in failures} >= {
        "missing credentials",
        "unknown key",
        "bad signature",
        "replayed nonce",
        "timestamp outside the 300 s window",
        "bad bearer token",
    }
    # Secrets never reach the audit log.
    dumped = " ".join(e.model_dump_json() for e in ks.store.audit_entries())
    assert all(secret not in dumped for secret, _, _ in KEYS.values())
    assert ks.store.is_frozen("ethereum", ETH_HOT)


def test_a_role_without_the_right_gets_403_and_an_audit_entry(servers: ServerFactory) -> None:
    ks = servers.start()
    with ks.client() as http:
        signer_freezes = http.post("/v1/freezes", json=FREEZE, auth=HmacAuth("signer-1"))
        detector_freezes_all = http.post(
            "/v1/freeze-all", json={"reason": "x"}, auth=HmacAuth("alerts")
        )
        reader_authorizes = http.post(
            "/v1/authorize",
            json={"chain": "nem", "wallet": NEM_HOT, "asset": "XEM", "amount": "1", "to": "N"},
            headers={"Authorization": f"Bearer {KEYS['reader'][0]}"},
        )
        reader_reads = http.get(
            "/v1/freezes", headers={"Authorization": f"Bearer {KEYS['reader'][0]}"}
        )
    assert [signer_freezes.status_code, detector_freezes_all.status_code] == [403, 403]
    assert reader_authorizes.status_code == 403
    assert reader_reads.status_code == 200
    assert ks.store.frozen() == []
    forbidden = [e for e in ks.store.audit_entries() if e.action == "forbidden"]
    assert [e.actor for e in forbidden] == ["signer-1", "alerts", "reader"]


def test_malformed_bodies_are_422_naming_the_field(servers: ServerFactory) -> None:
    ks = servers.start()
    with ks.client("signer-1") as http:
        negative = http.post(
            "/v1/authorize",
            json={"chain": "nem", "wallet": NEM_HOT, "asset": "XEM", "amount": "-5", "to": "N"},
        )
        missing = http.post(
            "/v1/authorize", json={"chain": "nem", "wallet": NEM_HOT, "asset": "XEM", "to": "N"}
        )
    with ks.client("ops-1") as http:
        empty_reason = http.post("/v1/freezes", json={**FREEZE, "reason": ""})
    assert [r.status_code for r in (negative, missing, empty_reason)] == [422] * 3
    assert negative.json()["detail"][0]["loc"] == ["body", "amount"]
    assert missing.json()["detail"][0]["loc"] == ["body", "amount"]
    assert empty_reason.json()["detail"][0]["loc"] == ["body", "reason"]
    assert ks.store.orders() == []


def test_manual_freeze_is_idempotent_and_published_once(servers: ServerFactory) -> None:
    ks = servers.start()
    with ks.client("ops-1") as http:
        first = http.post("/v1/freezes", json=FREEZE)
        second = http.post("/v1/freezes", json={**FREEZE, "alert_id": "alert-2"})
        status = http.get(f"/v1/wallets/ethereum/{ETH_HOT.upper().replace('0X', '0x')}")
    assert (first.status_code, second.status_code) == (201, 200)
    assert first.json() == second.json() == status.json()["order"]
    assert [o.id for o in ks.published] == [first.json()["id"]]
    freezes = [e for e in ks.store.audit_entries() if e.action == "freeze"]
    assert [(e.actor, e.detail["created"]) for e in freezes] == [("ops-1", True), ("ops-1", False)]


def test_automatic_freezes_follow_the_policy(servers: ServerFactory) -> None:
    ks = servers.start(make_settings(policy=AutoFreezePolicy(labels=("eth-hot",))))
    with ks.client("alerts") as http:
        warning = http.post("/v1/freezes", json={**FREEZE, "severity": "warning"})
        outside = http.post("/v1/freezes", json={**FREEZE, "chain": "nem", "wallet": NEM_HOT})
        critical = http.post("/v1/freezes", json=FREEZE)
    assert (warning.status_code, outside.status_code, critical.status_code) == (202, 202, 201)
    assert warning.json() == {
        "applied": False,
        "dry_run": False,
        "reason": "severity warning is below the policy minimum critical",
    }
    assert ks.store.is_frozen("ethereum", ETH_HOT)
    assert not ks.store.is_frozen("nem", NEM_HOT)
    # An operator's manual freeze is not subject to the policy.
    with ks.client("ops-1") as http:
        manual = http.post(
            "/v1/freezes", json={**FREEZE, "chain": "nem", "wallet": NEM_HOT, "severity": "info"}
        )
    assert manual.status_code == 201
    assert _actions(ks.store).count("freeze_declined") == 2


def test_dry_run_decides_and_audits_but_freezes_nothing(servers: ServerFactory) -> None:
    ks = servers.start(make_settings(policy=AutoFreezePolicy(dry_run=True)))
    with ks.client("alerts") as http:
        answer = http.post("/v1/freezes", json=FREEZE)
    assert answer.status_code == 202
    assert answer.json()["dry_run"] is True
    assert ks.store.orders() == []
    assert ks.published == []
    assert _actions(ks.store) == ["freeze_dry_run"]


def test_freeze_all_freezes_every_known_wallet_at_once(servers: ServerFactory) -> None:
    ks = servers.start()
    with ks.client("ops-1") as http:
        first = http.post("/v1/freezes", json=FREEZE)
        everything = http.post("/v1/freeze-all", json={"reason": "exchange-wide emergency"})
        again = http.post("/v1/freeze-all", json={"reason": "again"})
    assert first.status_code == 201
    assert everything.status_code == 200
    assert everything.json()["created"] == 2
    assert {o["wallet"] for o in everything.json()["freezes"]} == {ETH_HOT, ETH_HOT2, NEM_HOT}
    assert again.json()["created"] == 0
    assert len(ks.store.frozen()) == 3
    assert len(ks.published) == 3


def test_unfreeze_needs_two_distinct_approvers_other_than_the_requester(
    servers: ServerFactory,
) -> None:
    ks = servers.start()
    with ks.client("ops-1") as http:
        http.post("/v1/freezes", json=FREEZE).raise_for_status()
        not_frozen = http.post(
            "/v1/unfreeze-requests", json={"chain": "nem", "wallet": NEM_HOT, "reason": "x"}
        )
    with ks.client("ops-2") as http:
        created = http.post(
            "/v1/unfreeze-requests",
            json={"chain": "ethereum", "wallet": ETH_HOT, "reason": "false alarm"},
        )
        request_id = created.json()["id"]
        own = http.post(f"/v1/unfreeze-requests/{request_id}/approve")
    orders_before = len(ks.store.orders())
    with ks.client("approver-1") as http:
        one = http.post(f"/v1/unfreeze-requests/{request_id}/approve")
        twice = http.post(f"/v1/unfreeze-requests/{request_id}/approve")
        status_after_one = http.get(f"/v1/wallets/ethereum/{ETH_HOT}").json()
    assert not_frozen.status_code == 409
    assert created.status_code == 201
    assert created.json()["requested_by"] == "ops-2"
    assert own.status_code == 403
    assert (one.status_code, twice.status_code) == (200, 200)
    # The first approval alone (even repeated) changes nothing.
    assert [a["approver"] for a in twice.json()["approvals"]] == ["approver-1"]
    assert twice.json()["status"] == "pending"
    assert status_after_one["frozen"] is True
    assert len(ks.store.orders()) == orders_before
    with ks.client("approver-2") as http:
        second = http.post(f"/v1/unfreeze-requests/{request_id}/approve")
        late = http.post(f"/v1/unfreeze-requests/{request_id}/approve")
        status_after_two = http.get(f"/v1/wallets/ethereum/{ETH_HOT}").json()
    assert second.status_code == 200
    assert second.json()["status"] == "approved"
    assert status_after_two["frozen"] is False
    assert second.json()["unfreeze_order_id"] == status_after_two["order"]["id"]
    assert late.status_code == 409
    assert [o.action.value for o in ks.published] == ["freeze", "unfreeze"]
    assert "unfreeze_approval_refused" in _actions(ks.store)


def test_an_unfreeze_request_goes_stale_when_its_freeze_is_replaced(
    servers: ServerFactory,
) -> None:
    ks = servers.start()
    with ks.client("ops-1") as http:
        http.post("/v1/freezes", json=FREEZE).raise_for_status()
        old = http.post(
            "/v1/unfreeze-requests", json={"chain": "ethereum", "wallet": ETH_HOT, "reason": "a"}
        ).json()["id"]
        new = http.post(
            "/v1/unfreeze-requests", json={"chain": "ethereum", "wallet": ETH_HOT, "reason": "b"}
        ).json()["id"]
    for approver in ("approver-1", "approver-2"):
        with ks.client(approver) as http:
            http.post(f"/v1/unfreeze-requests/{new}/approve").raise_for_status()
    with ks.client("ops-1") as http:
        http.post("/v1/freezes", json={**FREEZE, "alert_id": "alert-9"}).raise_for_status()
    with ks.client("approver-1") as http:
        stale = http.post(f"/v1/unfreeze-requests/{old}/approve")
    assert stale.status_code == 409
    assert ks.store.is_frozen("ethereum", ETH_HOT)


def _ask(
    http: httpx.Client, wallet: str, amount: str, chain: str = "ethereum"
) -> dict[str, object]:
    asset = "ETH" if chain == "ethereum" else "XEM"
    response = http.post(
        "/v1/authorize",
        json={"chain": chain, "wallet": wallet, "asset": asset, "amount": amount, "to": "0xbeef"},
    )
    assert response.status_code == 200, response.text
    result: dict[str, object] = response.json()
    return result


def test_authorize_enforces_freezes_budgets_and_known_wallets(servers: ServerFactory) -> None:
    ks = servers.start()
    with ks.client("signer-1") as http:
        small = _ask(http, ETH_HOT, "60")
        # The label's budget (100 ETH an hour) is shared by both eth-hot wallets.
        over = _ask(http, ETH_HOT2, "40.000000000000000001")
        exact = _ask(http, ETH_HOT2, "40")
        nem = _ask(http, NEM_HOT, "1000000", chain="nem")
        unknown = _ask(http, "0x" + "9" * 40, "1")
    with ks.client("ops-1") as http:
        http.post("/v1/freezes", json={**FREEZE, "wallet": NEM_HOT, "chain": "nem"})
    with ks.client("signer-1") as http:
        frozen = _ask(http, NEM_HOT, "1", chain="nem")
    assert small["allowed"] is True
    assert over["allowed"] is False
    assert "velocity budget label:eth-hot exceeded" in str(over["reason"])
    assert exact["allowed"] is True
    assert nem["allowed"] is True  # no budget on XEM
    assert unknown == {
        "allowed": False,
        "reason": f"wallet ethereum:0x{'9' * 40} is not a known wallet",
        "wallet": f"ethereum:0x{'9' * 40}",
    }
    assert frozen["allowed"] is False
    assert frozen["reason"] == f"wallet nem:{NEM_HOT} is frozen"
    denials = [e for e in ks.store.audit_entries() if e.action == "authorize_denied"]
    assert len(denials) == 3
    assert denials[0].actor == "signer-1"


def test_a_restart_keeps_freezes_approvals_budgets_and_spent_nonces(
    servers: ServerFactory,
) -> None:
    first = servers.start()
    body = httpx.Request("POST", "/", json=FREEZE).content
    headers = signed_headers("ops-1", KEYS["ops-1"][0].encode(), "POST", "/v1/freezes", body)
    headers["Content-Type"] = "application/json"
    with first.client() as http:
        order = http.post("/v1/freezes", content=body, headers=headers).json()
    with first.client("ops-2") as http:
        request_id = http.post(
            "/v1/unfreeze-requests", json={"chain": "ethereum", "wallet": ETH_HOT, "reason": "x"}
        ).json()["id"]
    with first.client("approver-1") as http:
        http.post(f"/v1/unfreeze-requests/{request_id}/approve").raise_for_status()
    with first.client("signer-1") as http:
        assert _ask(http, ETH_HOT2, "90")["allowed"] is True
    port = first.port
    first.stop()

    second = servers.start(port=port)
    with second.client() as http:
        replayed = http.post("/v1/freezes", content=body, headers=headers)
    with second.client("reader") as http:
        status = http.get(f"/v1/wallets/ethereum/{ETH_HOT}").json()
        verify = http.get("/v1/audit/verify").json()
    with second.client("signer-1") as http:
        over_budget = _ask(http, ETH_HOT2, "20")
    assert replayed.status_code == 401
    assert status == {"frozen": True, "order": order}
    assert over_budget["allowed"] is False
    with second.client("approver-2") as http:
        approved = http.post(f"/v1/unfreeze-requests/{request_id}/approve").json()
    assert approved["status"] == "approved"
    assert verify["ok"] is True
    # At startup the new server re-published every wallet's latest order.
    assert [o.id for o in second.published][:1] == [order["id"]]


def test_audit_routes(servers: ServerFactory) -> None:
    ks = servers.start()
    with ks.client("ops-1") as http:
        http.post("/v1/freezes", json=FREEZE).raise_for_status()
    with ks.client("reader") as http:
        page = http.get("/v1/audit", params={"after": 0, "limit": 10})
        head = http.get("/v1/audit/head").json()
        verify = http.get("/v1/audit/verify").json()
    entries = page.json()["entries"]
    assert page.status_code == 200
    assert [e["action"] for e in entries] == ["freeze"]
    assert head == {"seq": 1, "hash": entries[0]["hash"]}
    assert verify["ok"] is True
    assert verify["head"] == head["hash"]


def test_a_wallet_listed_per_asset_has_each_asset_s_budget_and_any_label_s_policy(
    servers: ServerFactory,
) -> None:
    ks = servers.start(
        make_settings(
            wallets=(
                WalletConfig(chain="ethereum", address=ETH_HOT, asset="ETH", label="eth-hot"),
                WalletConfig(chain="ethereum", address=ETH_HOT, asset="USDT", label="usdt-hot"),
            ),
            budgets=(
                VelocityBudget(
                    label="usdt-hot", asset="USDT", max_amount=Decimal(1000), window_s=3600
                ),
                VelocityBudget(
                    label="eth-hot", asset="ETH", max_amount=Decimal(100), window_s=3600
                ),
            ),
            policy=AutoFreezePolicy(labels=("usdt-hot",)),
        )
    )

    def ask(asset: str, amount: str) -> dict[str, object]:
        body = {"chain": "ethereum", "wallet": ETH_HOT, "asset": asset, "amount": amount}
        response = http.post("/v1/authorize", json={**body, "to": "0xbeef"})
        assert response.status_code == 200, response.text
        result: dict[str, object] = response.json()
        return result

    with ks.client("signer-1") as http:
        usdt = ask("USDT", "1000.000001")
        eth = ask("ETH", "99")
    assert usdt["allowed"] is False
    assert "velocity budget label:usdt-hot exceeded" in str(usdt["reason"])
    assert eth["allowed"] is True  # judged by eth-hot's budget, not usdt-hot's
    # A freeze stops the address: a policy naming either entry's label covers it.
    with ks.client("alerts") as http:
        assert http.post("/v1/freezes", json=FREEZE).status_code == 201
    assert ks.store.is_frozen("ethereum", ETH_HOT)
