"""The whole incident on real parts: a drain on anvil becomes one grouped page, a freeze that
reaches the wallet infrastructure's hook, a timeline with every step, and an audit log that
verifies.

anvil → EVM watcher → embedded bus → detectors → alerts stage → PagerDuty (a local receiver that
checks the Events API v2 format) and the kill switch (signed requests, detector role) → its
webhook hook (down for its first attempt) → the timeline.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from alerts import ActionKind, Timeline, create_app, serve_in_thread, server_port, stop_server
from alerts.killswitch import (
    AutoFreezePolicy,
    HookSettings,
    KeySettings,
    KillSwitchSettings,
    RetrySettings,
    Role,
    open_store,
    verify_audit,
)
from drainwatch.app import hook_result_recorder, run_pipeline
from drainwatch.config import WalletConfig, load
from tests.alerts.channels.receivers import PagerDutyReceiver, pagerduty_receiver
from tests.alerts.killswitch.conftest import HookReceiver
from tests.harness.configs import anvil_wallets_toml
from tests.harness.services import AnvilService
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.services

CHAIN = "anvil"
ETH = 10**18
DETECTOR_SECRET = "detector-secret-0001"


@pytest.fixture
def pagerduty() -> Iterator[PagerDutyReceiver]:
    receiver = pagerduty_receiver()  # already listening
    yield receiver
    receiver.stop()


@pytest.fixture
def hook() -> Iterator[HookReceiver]:
    receiver = HookReceiver(failures=1).start()  # down for the first attempt
    yield receiver
    receiver.stop()


def test_a_drain_gives_one_page_a_hooked_freeze_a_full_timeline_and_a_sound_audit_log(
    anvil: AnvilService, pagerduty: PagerDutyReceiver, hook: HookReceiver, tmp_path: Path
) -> None:
    accounts: list[str] = anvil.rpc("eth_accounts", [])
    hot, cold = accounts[1].lower(), accounts[0].lower()
    timeline_path = tmp_path / "timeline.sqlite3"
    store = open_store(str(tmp_path / "killswitch.sqlite3"))
    settings = KillSwitchSettings(
        keys=(KeySettings(id="alerts", secret=SecretStr(DETECTOR_SECRET), roles=(Role.DETECTOR,)),),
        wallets=(
            WalletConfig(chain=CHAIN, address=hot, label="eth-hot-1"),
            WalletConfig(chain=CHAIN, address=cold, label="eth-cold-1", role="cold"),
        ),
        policy=AutoFreezePolicy(),
        hooks=(
            HookSettings(
                name="wallet-infra", kind="webhook", url=hook.url, secret=SecretStr("h" * 16)
            ),
        ),
        retry=RetrySettings(backoff_s=0.05, backoff_max_s=0.2, timeout_s=2),
    )
    ks_timeline = Timeline(str(timeline_path))
    server, thread = serve_in_thread(
        create_app(store, settings=settings, on_hook_result=hook_result_recorder(ks_timeline))
    )
    path = tmp_path / "drainwatch.toml"
    path.write_text(
        anvil_wallets_toml(tmp_path, anvil, hot, cold, chain=CHAIN, pending=False)
        + f"""
[alerts]
timeline_path = "{timeline_path}"
killswitch_url = "http://127.0.0.1:{server_port(server)}"
killswitch_key_id = "alerts"
killswitch_secret = "{DETECTOR_SECRET}"
console = false
outbox_path = "{tmp_path / "outbox.sqlite3"}"

[alerts.channels.oncall]
kind = "pagerduty"
routing_key = "R0UT1NGKEY"
url = "{pagerduty.url}"

[[alerts.routes]]
min_severity = "critical"
channels = ["oncall"]
"""
    )
    config = load(path)
    stop = threading.Event()
    pipeline = threading.Thread(target=run_pipeline, args=(config, "all", None, stop))
    pipeline.start()
    try:
        for i in range(4):  # ordinary withdrawals
            tx = anvil.rpc(
                "eth_sendTransaction",
                [{"from": hot, "to": "0x" + f"{0xC0FFEE + i:040x}", "value": hex(5 * ETH)}],
            )
            anvil.wait_for_receipt(tx)
        attacker = "0x" + f"{0xBAD:040x}"
        for wei in (1, 2_000 * ETH, 2_000 * ETH):  # test transfer, then the drain
            tx = anvil.rpc(
                "eth_sendTransaction", [{"from": hot, "to": attacker, "value": hex(wei)}]
            )
            anvil.wait_for_receipt(tx)
        wait_for(lambda: store.is_frozen(CHAIN, hot), 30, "the freeze")
        wait_for(hook.arrived.is_set, 30, "the hook to acknowledge")
        wait_for(lambda: bool(pagerduty.accepted), 30, "the page")
        wait_for(
            lambda: any(
                a.action is ActionKind.HOOK_DELIVERED for a in ks_timeline.actions(wallet=hot)
            ),
            30,
            "the hook result in the timeline",
        )
    finally:
        stop.set()
        pipeline.join(30)
        stop_server(server, thread)

    # one page, for one incident (later alerts of the incident update it)
    assert {r.json["dedup_key"] for r in pagerduty.accepted} == {
        pagerduty.accepted[0].json["dedup_key"]
    }
    assert pagerduty.actions[0] == "trigger"
    assert "eth-hot-1" in pagerduty.accepted[0].json["payload"]["summary"]
    # the hook was retried until it acknowledged the freeze order
    assert hook.answers[0] == 503
    assert hook.answers[-1] == 200
    assert hot in hook.received[-1][2].decode()
    # the timeline holds every step, in order
    timeline = Timeline(str(timeline_path))
    entries = timeline.wallet_timeline(CHAIN, hot)
    kinds = [getattr(e, "action", e.kind) for e in entries]
    for step in (
        "transfer",
        "alert",
        ActionKind.NOTIFICATION_QUEUED,
        ActionKind.FREEZE_REQUESTED,
        ActionKind.FREEZE_ACCEPTED,
        ActionKind.HOOK_DELIVERED,
    ):
        assert step in kinds, (step, kinds)
    assert kinds.index(ActionKind.FREEZE_REQUESTED) < kinds.index(ActionKind.FREEZE_ACCEPTED)
    assert len(timeline.transfers(wallet=hot)) >= 6
    # the audit log is intact and saw the freeze
    result = verify_audit(store)
    assert result.ok, result.problems
    assert any(e.action == "freeze" for e in store.audit_entries())
    store.close()
