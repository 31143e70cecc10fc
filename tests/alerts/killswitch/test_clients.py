"""The clients: the fail-closed signer and the signing KillSwitchClient."""

from __future__ import annotations

import threading

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from alerts.killswitch import (
    HmacCredentials,
    KillSwitchClient,
    SignerClient,
    serve_in_thread,
    server_port,
    stop_server,
)
from tests.alerts.conftest import free_port
from tests.alerts.killswitch.conftest import ETH_HOT, KEYS, NEM_HOT, ServerFactory


def _signer(url: str, key: str = "signer-1") -> SignerClient:
    return SignerClient(url, key, KEYS[key][0], timeout_s=2)


def test_the_signer_is_allowed_then_denied_when_frozen(sqlite_servers: ServerFactory) -> None:
    ks = sqlite_servers.start()
    signer = _signer(ks.url)
    try:
        allowed = signer.authorize("nem", NEM_HOT, "XEM", "5", to="NDEST")
        ks.store.freeze("nem", NEM_HOT, "drain")
        denied = signer.authorize("nem", NEM_HOT, "XEM", "5", to="NDEST")
    finally:
        signer.close()
    assert allowed.allowed is True
    assert (denied.allowed, denied.reason) == (False, f"wallet nem:{NEM_HOT} is frozen")


def test_the_signer_fails_closed(sqlite_servers: ServerFactory) -> None:
    nobody = SignerClient(f"http://127.0.0.1:{free_port()}", "signer-1", "x", timeout_s=0.5)
    unreachable = nobody.authorize("nem", NEM_HOT, "XEM", "1", to="N")
    ks = sqlite_servers.start()
    wrong_key = _signer(ks.url, "reader").authorize("nem", NEM_HOT, "XEM", "1", to="N")
    bad_secret = SignerClient(ks.url, "signer-1", "wrong").authorize(
        "nem", NEM_HOT, "XEM", "1", to="N"
    )
    assert unreachable.allowed is False
    assert "unreachable" in unreachable.reason
    assert (wrong_key.allowed, wrong_key.reason) == (
        False,
        "kill switch answered HTTP 403, failing closed",
    )
    assert bad_secret.allowed is False


def test_the_signer_denies_an_answer_that_is_not_an_explicit_allow() -> None:
    answers = iter([{"allowed": "yes"}, {"allowed": 1}, "true", {"allowed": True}])
    odd = FastAPI()

    @odd.post("/v1/authorize")
    def authorize() -> JSONResponse:
        return JSONResponse(next(answers))

    server, thread = serve_in_thread(odd)
    signer = SignerClient(f"http://127.0.0.1:{server_port(server)}", "s", "x")
    try:
        verdicts = [signer.authorize("nem", "N", "XEM", "1", to="N").allowed for _ in range(4)]
    finally:
        signer.close()
        stop_server(server, thread)
    assert verdicts == [False, False, False, True]


def test_the_signer_survives_a_kill_switch_restart(sqlite_servers: ServerFactory) -> None:
    ks = sqlite_servers.start()
    signer = _signer(ks.url)
    try:
        before = signer.authorize("nem", NEM_HOT, "XEM", "1", to="N")
        port = ks.port
        ks.stop()
        during = signer.authorize("nem", NEM_HOT, "XEM", "1", to="N")
        sqlite_servers.start(port=port)
        after = signer.authorize("nem", NEM_HOT, "XEM", "1", to="N")
    finally:
        signer.close()
    assert (before.allowed, during.allowed, after.allowed) == (True, False, True)


def test_the_client_signs_each_retry_afresh(sqlite_servers: ServerFactory) -> None:
    ks = sqlite_servers.start()
    # A proxy in front of the kill switch that fails the first attempt with a 503 after the
    # kill switch has seen it would be a replay if the client resent the same nonce.
    seen_nonces: list[str] = []
    upstream = httpx.Client(base_url=ks.url)
    proxy = FastAPI()
    lock = threading.Lock()

    @proxy.post("/v1/freezes")
    async def forward(request: Request) -> JSONResponse:
        body = await request.body()
        headers = {k: v for k, v in request.headers.items() if k.startswith("x-drainwatch")}
        headers["content-type"] = "application/json"
        with lock:
            seen_nonces.append(headers["x-drainwatch-nonce"])
            answer = upstream.post("/v1/freezes", content=body, headers=headers)
        if len(seen_nonces) == 1:
            return JSONResponse({"detail": "proxy hiccup"}, 503)
        return JSONResponse(answer.json(), answer.status_code)

    server, thread = serve_in_thread(proxy)
    client = KillSwitchClient(
        f"http://127.0.0.1:{server_port(server)}",
        credentials=HmacCredentials("alerts", KEYS["alerts"][0]),
        backoff_s=0.01,
    )
    try:
        order = client.freeze("ethereum", ETH_HOT, reason="drain", alert_id="a1")
    finally:
        client.close()
        stop_server(server, thread)
        upstream.close()
    assert len(seen_nonces) == 2
    assert seen_nonces[0] != seen_nonces[1]
    assert order["wallet"] == ETH_HOT
    assert ks.store.is_frozen("ethereum", ETH_HOT)
    assert [e.actor for e in ks.store.audit_entries() if e.action == "freeze"] == ["alerts"] * 2


def test_credentials_stay_out_of_repr() -> None:
    assert "alerts-secret" not in repr(HmacCredentials("alerts", KEYS["alerts"][0]))
