"""Every PromQL expression of the dashboards returns data from a Prometheus scraping a pipeline.

A real anvil node, the whole pipeline in one process with ``[metrics]`` on, a drain that raises
alerts and a freeze at a real kill switch (whose webhook hook acknowledges it); Debian's
Prometheus scrapes the pipeline and, with a read-only bearer key, the kill switch every second,
and each dashboard expression is evaluated through ``/api/v1/query``.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from alerts import FreezeStore, create_app, serve_in_thread, server_port, stop_server
from alerts.killswitch import KeySettings, KillSwitchSettings, Role
from drainwatch.app import run_pipeline
from drainwatch.config import Config, load
from drainwatch.ops import build_dashboards, dashboard_expressions, render_expression
from tests.alerts.killswitch.conftest import HookReceiver, webhook
from tests.harness.configs import anvil_wallets_toml
from tests.harness.prometheus import PrometheusService
from tests.harness.services import AnvilService, free_port
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.services

ETH = 10**18
CHAIN = "anvil"
# What Grafana would put in for the dashboards' variables.
VARIABLES = {"wallet_label": ".*", "__rate_interval": "30s", "__range": "10m"}
KS_JOB = "drainwatch-killswitch"


class KillSwitch:
    """A real kill-switch service on loopback for one test, with a webhook hook that acknowledges.

    ``token`` has every role (the alerts stage and the test use it); Prometheus scrapes with
    ``scrape_token``, a read-only bearer key.
    """

    def __init__(self, path: Path) -> None:
        self.token = secrets.token_hex(8)
        self.scrape_token = secrets.token_hex(8)
        self.hook = HookReceiver(failures=0).start()
        settings = KillSwitchSettings(
            keys=(
                KeySettings(
                    id="prometheus",
                    secret=SecretStr(self.scrape_token),
                    roles=(Role.READ_ONLY,),
                    bearer=True,
                ),
            ),
            hooks=(webhook(self.hook.url),),
            # As with a token alone: the pipeline's wallets are not listed in these settings.
            allow_unknown_wallets=True,
        )
        self.store = FreezeStore(str(path))
        self.server, self.thread = serve_in_thread(
            create_app(self.store, token=self.token, settings=settings)
        )
        self.address = f"127.0.0.1:{server_port(self.server)}"
        self.url = f"http://{self.address}"

    def authorize(self, wallet: str, to: str) -> bool:
        """Ask ``POST /v1/authorize`` whether ``wallet`` may send 1 ETH to ``to``."""
        reply = httpx.post(
            f"{self.url}/v1/authorize",
            json={"chain": CHAIN, "wallet": wallet, "asset": "ETH", "amount": "1", "to": to},
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=10,
        )
        reply.raise_for_status()
        allowed: bool = reply.json()["allowed"]
        return allowed

    def hook_delivered(self) -> bool:
        """Whether every hook delivery has been acknowledged (and there is one)."""
        hooks = self.store.hooks()
        return bool(hooks) and all(h.status == "delivered" for h in hooks)

    def close(self) -> None:
        stop_server(self.server, self.thread)
        self.hook.stop()


def write_config(
    path: Path,
    anvil: AnvilService,
    ks: KillSwitch,
    siem: HookReceiver,
    hot: str,
    cold: str,
    metrics_port: int,
) -> Config:
    path.write_text(
        anvil_wallets_toml(path.parent, anvil, hot, cold, chain=CHAIN)
        + f"""
[alerts]
timeline_path = "{path.parent / "timeline.sqlite3"}"
killswitch_url = "{ks.url}"
killswitch_token = "{ks.token}"
console = false
retry_backoff_s = 0.2
outbox_path = "{path.parent / "outbox.sqlite3"}"

[alerts.channels.siem]
kind = "webhook"
url = "{siem.url}/drainwatch"
secret = "{"s" * 16}"

[[alerts.routes]]
channels = ["siem"]

[metrics]
host = "127.0.0.1"
port = {metrics_port}
"""
    )
    return load(path)


def send(anvil: AnvilService, sender: str, to: str, wei: int) -> str:
    tx: str = anvil.rpc("eth_sendTransaction", [{"from": sender, "to": to, "value": hex(wei)}])
    anvil.wait_for_receipt(tx)
    return tx


@pytest.fixture
def killswitch(tmp_path: Path) -> Iterator[KillSwitch]:
    ks = KillSwitch(tmp_path / "killswitch.sqlite3")
    yield ks
    ks.close()


@pytest.fixture
def siem() -> Iterator[HookReceiver]:
    receiver = HookReceiver(failures=1).start()  # the first notification fails, then all land
    yield receiver
    receiver.stop()


@pytest.fixture
def pipeline(
    anvil: AnvilService, killswitch: KillSwitch, siem: HookReceiver, tmp_path: Path
) -> Iterator[tuple[Config, str, str]]:
    accounts: list[str] = anvil.rpc("eth_accounts", [])
    hot, cold = accounts[1].lower(), accounts[0].lower()
    cfg = write_config(
        tmp_path / "drainwatch.toml", anvil, killswitch, siem, hot, cold, free_port()
    )
    stop = threading.Event()
    errors: list[BaseException] = []

    def target() -> None:
        try:
            run_pipeline(cfg, "all", stop=stop)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    try:
        yield cfg, hot, cold
    finally:
        stop.set()
        thread.join(30)
    assert not errors, errors


def test_every_dashboard_expression_returns_data(
    pipeline: tuple[Config, str, str],
    anvil: AnvilService,
    killswitch: KillSwitch,
    siem: HookReceiver,
) -> None:
    cfg, hot, cold = pipeline
    base = f"http://127.0.0.1:{cfg.metrics.port}"
    wait_for(lambda: _healthy(base), 15, "/healthz")

    # Ordinary withdrawals, then a drain to one new address: alerts and a freeze.
    for i in range(4):
        send(anvil, hot, "0x" + f"{0xC0FFEE0000 + i:040x}", 5 * ETH)
    attacker = "0x" + f"{0xBAD:040x}"
    send(anvil, hot, attacker, 1)
    send(anvil, hot, attacker, 2_000 * ETH)
    wait_for(lambda: killswitch.store.is_frozen(CHAIN, hot), 30, "the freeze")
    wait_for(killswitch.hook_delivered, 30, "the hook to acknowledge the freeze")
    wait_for(siem.arrived.is_set, 30, "a notification on the webhook channel")

    with PrometheusService(
        {
            "drainwatch-all": [f"127.0.0.1:{cfg.metrics.port}"],
            KS_JOB: [killswitch.address],
        },
        bearer_tokens={KS_JOB: killswitch.scrape_token},
    ) as prom:
        prom.wait_for_targets_up()  # the kill switch's /metrics answers 401 without the key
        # Signers ask while Prometheus watches: the cold wallet may send, the frozen one may not.
        assert killswitch.authorize(cold, attacker)
        assert not killswitch.authorize(hot, attacker)
        expressions = [
            render_expression(expr, VARIABLES)
            for board in build_dashboards().values()
            for expr in dashboard_expressions(board)
        ]
        assert len(expressions) >= 20
        empty = _evaluate_until_all_return(prom, expressions, timeout_s=45)
        assert not empty, "expressions with no data:\n" + "\n".join(empty)

        # The numbers behind the panels are the drain's: an alert that asked for a freeze,
        # one freeze order, an outflow of at least 2,000 ETH from the hot wallet.
        # (the counter is process-wide: earlier tests in this pytest process count too)
        freezes = prom.query('sum(drainwatch_freeze_orders_total{action="freeze"})')
        assert float(freezes[0]["value"][1]) >= 1.0
        assert len(killswitch.store.frozen()) == 1
        outflow = prom.query('drainwatch_wallet_outflow_total{wallet_label="eth-hot-1"}')
        assert float(outflow[0]["value"][1]) >= 2_000
        severities = {s["metric"]["severity"] for s in prom.query("drainwatch_alerts_total")}
        assert "critical" in severities
        # Notifications: the webhook's first answer was a 503, then it acknowledged.
        deliveries = {
            s["metric"]["outcome"]: float(s["value"][1])
            for s in prom.query('drainwatch_alert_deliveries_total{channel="siem"}')
        }
        assert deliveries["failed"] >= 1
        assert deliveries["delivered"] >= 1
        assert deliveries["undeliverable"] == 0
        labels = {s["metric"].get("wallet_label") for s in prom.query("drainwatch_wallet_balance")}
        # labels, never addresses (the registry is process-wide: other tests' wallets show too)
        assert "eth-hot-1" in labels
        assert not [label for label in labels if label and label.lower().startswith("0x")]
        assert not any(
            hot in json.dumps(s["metric"]) for s in prom.query('{__name__=~"drainwatch_.*"}')
        )

        # The kill switch's own metrics: the one freeze it created, both answers to the
        # signer, the acknowledged hook, no escalation.
        def scraped(metric: str, **labels: str) -> float:
            selector = ",".join(f'{k}="{v}"' for k, v in {**labels, "job": KS_JOB}.items())
            [sample] = prom.query(f"{metric}{{{selector}}}")
            return float(sample["value"][1])

        wait_for(
            lambda: scraped("drainwatch_killswitch_authorize_total", allowed="false") >= 1,
            15,
            "the denial to be scraped",
        )
        assert scraped("drainwatch_killswitch_authorize_total", allowed="true") >= 1
        assert scraped("drainwatch_killswitch_authorize_seconds_count") >= 2
        assert scraped("drainwatch_killswitch_orders_total", action="freeze") == 1
        assert scraped("drainwatch_hook_delivery_seconds_count", target="wallet-infra") == 1
        assert scraped("drainwatch_hook_escalations_total", target="wallet-infra") == 0


def _healthy(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/healthz", timeout=2) as reply:
            body = json.loads(reply.read())
    except OSError:
        return False
    return reply.status == 200 and set(body["checks"]) == {"ingest-anvil", "detect", "alert"}


def _evaluate_until_all_return(
    prom: PrometheusService, expressions: list[str], timeout_s: float
) -> list[str]:
    """Evaluate until each has returned a series once (rates need two scrapes); the empty ones."""
    pending = list(expressions)
    deadline = time.monotonic() + timeout_s
    while pending and time.monotonic() < deadline:
        pending = [e for e in pending if not prom.query(e)]
        if pending:
            time.sleep(1.0)
    return pending
