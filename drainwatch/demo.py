"""``drainwatch demo``: the whole pipeline on an in-process chain, drained the Coincheck way.

An in-process EVM (web3's EthereumTesterProvider) stands in for the node; the real watcher,
detector, alerter, timeline and kill-switch HTTP service run on the embedded bus. A hot wallet
pays ordinary customer withdrawals for an hour of chain time, then an attacker sends a tiny test
transfer to a new address and large transfers to the same address. The attacker's "signer" asks
the kill switch before each transfer, as production signers do, and stops once the wallet is
frozen.
"""

from __future__ import annotations

import random
import secrets
import tempfile
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, TextIO, cast

from eth_account import Account
from rich.console import Console
from web3 import EthereumTesterProvider, Web3
from web3.types import Wei

from alerts import (
    Alerter,
    ConsoleNotifier,
    FreezeStore,
    KillSwitchClient,
    Timeline,
    create_app,
    serve_in_thread,
    server_port,
    stop_server,
)
from detectors import DetectionEngine
from drainwatch.app import publisher
from drainwatch.bus import EmbeddedBus
from drainwatch.config import AlertsConfig, Config, WalletConfig
from drainwatch.events import ALERTS, LEDGER, TRANSFERS
from drainwatch.stage import StageLoop, default_topics
from ingest import CursorStore, EvmSource, Watcher

__all__ = ["DemoResult", "run_demo"]

WEI = 10**18
HOT_FUNDING_ETH = 1_000
DRAIN_TRANSFERS_ETH = (150, 150, 150, 150, 150, 100)


@dataclass
class DemoResult:
    """What happened: whether and when the drain was frozen, and how much it saved."""

    frozen: bool = False
    detection_s: float | None = None
    """Wall-clock seconds from the freezing transfer being mined to the kill switch's answer."""
    drained_eth: Decimal = Decimal(0)
    saved_eth: Decimal = Decimal(0)
    ordinary_alerts: int = 0
    timeline_path: Path = Path()
    events: list[str] = field(default_factory=list)


class _Demo:
    def __init__(self, workdir: Path, console: Console) -> None:
        self.console = console
        self.w3 = Web3(EthereumTesterProvider())
        self.tester: Any = self.w3.provider.ethereum_tester  # type: ignore[attr-defined]
        self.treasury = self.w3.eth.accounts[0]
        self.depositor = list(self.w3.eth.accounts)[3]
        hot = Account.create()
        self.tester.add_account(hot.key.hex())
        self.hot = hot.address
        self.now = int(self.w3.eth.get_block("latest")["timestamp"])
        self._send(self.treasury, self.hot, HOT_FUNDING_ETH * WEI)
        opening = Decimal(self.w3.eth.get_balance(self.hot)).scaleb(-18)
        self.config = Config(
            wallets=(
                WalletConfig(
                    chain="demo-evm", address=self.hot, label="eth-hot-1", opening_balance=opening
                ),
                WalletConfig(
                    chain="demo-evm", address=self.treasury, label="eth-cold-1", role="cold"
                ),
            ),
            alerts=AlertsConfig(timeline_path=str(workdir / "timeline.sqlite3")),
            state_dir=str(workdir),
        )
        self.store = FreezeStore(str(workdir / "killswitch.sqlite3"))
        token = secrets.token_hex(16)
        self.server, self.thread = serve_in_thread(create_app(self.store, token=token))
        self.killswitch = KillSwitchClient(
            f"http://127.0.0.1:{server_port(self.server)}", token=token
        )
        bus = EmbeddedBus(str(workdir / "bus.sqlite3"))
        bus.ensure_topics(default_topics(partitions=1))
        self.timeline = Timeline(self.config.alerts.timeline_path)
        alerter = Alerter(
            self.timeline, self.killswitch, ConsoleNotifier(cast(TextIO, console.file))
        )
        # eth-tester cannot read a balance at a block hash (EIP-1898): track it from the stream;
        # nor trace calls (the demo's wallet pays from an account, not a contract)
        source = EvmSource(
            self.w3, "demo-evm", self.config.wallets, read_balances=False, traces="off"
        )
        producer = bus.producer()

        head = self.w3.eth.block_number
        self.watcher = Watcher(
            source,
            publisher(producer),
            CursorStore(workdir / "cursors.sqlite3"),
            "demo-evm",
            confirmations=0,
            start_block=head + 1,
        )
        engine = DetectionEngine(self.config)
        self.detect = StageLoop(bus, [TRANSFERS, LEDGER], "detect", engine.handle, stage="detect")
        self.alert = StageLoop(bus, [TRANSFERS, ALERTS], "alert", alerter.handle, stage="alert")

    def _send(self, sender: str, to: str, wei: int, at: int | None = None) -> None:
        if at is not None and at > self.now:
            self.tester.time_travel(at)
            self.now = at
        self.w3.eth.send_transaction({"from": sender, "to": to, "value": Wei(wei)})

    def pump(self) -> None:
        """Let every stage catch up, in order (the demo steps the real loops by hand)."""
        self.watcher.poll_once()
        while self.detect.run_once(timeout_s=0) or self.alert.run_once(timeout_s=0):
            pass

    def frozen(self) -> bool:
        return bool(self.killswitch.wallet_status("demo-evm", self.hot).get("frozen"))

    def close(self) -> None:
        self.detect.close()
        self.alert.close()
        self.killswitch.close()
        stop_server(self.server, self.thread)


def _eth(wei: int) -> Decimal:
    return Decimal(f"{wei}E-18").normalize()


def run_demo(workdir: Path | None = None, console: Console | None = None) -> DemoResult:
    """Run the demo; return what happened (also printed to ``console``)."""
    console = console or Console()
    workdir = workdir or Path(tempfile.mkdtemp(prefix="drainwatch-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(2018)  # noqa: S311 - demo traffic, not cryptography
    demo = _Demo(workdir, console)
    result = DemoResult(timeline_path=workdir / "timeline.sqlite3")
    say = console.print
    try:
        say(f"[bold]drainwatch demo[/] — hot wallet {demo.hot} holds {HOT_FUNDING_ETH:,} ETH")
        say("[dim]1. an hour of ordinary customer withdrawals and deposits[/]")
        t = demo.now
        for _ in range(20):
            t += rng.randint(60, 300)
            amount = rng.randint(5, 400) * WEI // 100  # 0.05 .. 4 ETH to a new customer
            demo._send(demo.hot, Account.create().address, amount, at=t)
            if rng.random() < 0.3:
                demo._send(demo.depositor, demo.hot, rng.randint(1, 20) * WEI, at=t + 5)
            demo.pump()
        result.ordinary_alerts = len(demo.timeline.alerts())
        say(f"   20 withdrawals paid, {result.ordinary_alerts} alerts, wallet not frozen")
        say("[dim]2. the drain: a tiny test transfer, then large ones to the same new address[/]")
        attacker = Account.create().address
        drain = [WEI // 100, *(eth * WEI for eth in DRAIN_TRANSFERS_ETH)]
        t += 3600
        for amount in drain:
            t += 75
            if demo.frozen():
                result.saved_eth += _eth(amount)
                say(
                    f"   signer asks the kill switch before sending {_eth(amount):f} ETH: "
                    "[bold green]refused, wallet frozen[/]"
                )
                continue
            demo._send(demo.hot, attacker, amount, at=t)
            mined = time.perf_counter()
            result.drained_eth += _eth(amount)
            say(f"   attacker sent {_eth(amount):f} ETH to {attacker[:10]}…")
            demo.pump()
            if not result.frozen and demo.frozen():
                result.frozen = True
                result.detection_s = time.perf_counter() - mined
                say(
                    f"   [bold red]FROZEN[/] {result.detection_s * 1000:.0f} ms after that "
                    "transfer was mined"
                )
        say(
            f"[bold]3. result[/]: {result.drained_eth:f} ETH lost, {result.saved_eth:f} ETH saved "
            f"({result.saved_eth / (result.saved_eth + result.drained_eth):.0%} of the drain)"
        )

        say(
            f"   timeline: {result.timeline_path} (sqlite3), kill switch state: "
            f"{workdir / 'killswitch.sqlite3'}"
        )
    finally:
        demo.close()
    return result
