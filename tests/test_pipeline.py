"""End to end: a drain on a real anvil node becomes an alert and a freeze at the kill switch.

Once with every stage in one process on the embedded bus, once with each stage its own process
(`drainwatch run ingest|detect|alert --bus kafka`) on a real Kafka broker.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from alerts import FreezeStore, Timeline, create_app, serve_in_thread, server_port, stop_server
from drainwatch.app import run_pipeline
from drainwatch.bus import TopicPartition
from drainwatch.bus.kafka import KafkaBus
from drainwatch.config import Config, load
from drainwatch.events import FREEZES, FreezeOrder, TransferStatus, decode
from tests.harness.configs import anvil_wallets_toml
from tests.harness.services import AnvilFactory, AnvilService, KafkaService
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.services

ETH = 10**18
CHAIN = "anvil"


class KillSwitch:
    """A real kill-switch service on loopback for one test."""

    def __init__(self, path: Path) -> None:
        self.token = secrets.token_hex(8)
        self.store = FreezeStore(str(path))
        self.server, self.thread = serve_in_thread(create_app(self.store, token=self.token))
        self.url = f"http://127.0.0.1:{server_port(self.server)}"

    def close(self) -> None:
        stop_server(self.server, self.thread)


@pytest.fixture
def killswitch(tmp_path: Path) -> Iterator[KillSwitch]:
    ks = KillSwitch(tmp_path / "killswitch.sqlite3")
    yield ks
    ks.close()


def write_config(
    path: Path, anvil: AnvilService, ks: KillSwitch, hot: str, cold: str, bus: str = ""
) -> Config:
    path.write_text(
        anvil_wallets_toml(path.parent, anvil, hot, cold, chain=CHAIN)
        + f"""
[alerts]
timeline_path = "{path.parent / "timeline.sqlite3"}"
killswitch_url = "{ks.url}"
killswitch_token = "{ks.token}"
console = true
{bus}
"""
    )
    return load(path)


def send(anvil: AnvilService, sender: str, to: str, wei: int) -> str:
    tx: str = anvil.rpc("eth_sendTransaction", [{"from": sender, "to": to, "value": hex(wei)}])
    anvil.wait_for_receipt(tx)
    return tx


def fresh_address(i: int) -> str:
    return "0x" + f"{0xC0FFEE0000 + i:040x}"


def drain(anvil: AnvilService, hot: str) -> tuple[list[str], str]:
    """Ordinary withdrawals, then a 1-wei test and large transfers to one new address."""
    ordinary = [send(anvil, hot, fresh_address(i), 5 * ETH) for i in range(6)]
    attacker = fresh_address(999)
    send(anvil, hot, attacker, 1)
    big = send(anvil, hot, attacker, 2_000 * ETH)
    return ordinary, big


def accounts(anvil: AnvilService) -> tuple[str, str]:
    accts: list[str] = anvil.rpc("eth_accounts", [])
    return accts[1].lower(), accts[0].lower()


def assert_one_freeze(ks: KillSwitch, hot: str, big_tx: str, timeline_path: Path) -> None:
    assert ks.store.is_frozen(CHAIN, hot)
    assert len(ks.store.frozen()) == 1
    timeline = Timeline(str(timeline_path))
    alerts = [r.alert for r in timeline.alerts()]
    freezing = [a for a in alerts if a.freeze]
    assert len(freezing) == 1, alerts
    assert freezing[0].wallet == hot
    assert big_tx in freezing[0].tx_hashes
    assert "eth-hot-1" in freezing[0].summary
    # ordinary withdrawals raised nothing above info
    assert all(a.severity.rank < 1 for a in alerts if big_tx not in a.tx_hashes)
    timeline.close()


@contextmanager
def pipeline_running(cfg: Config) -> Iterator[None]:
    """Every stage in one process on the embedded bus, in a thread, for the ``with`` body;
    stopped at its end, and any error it raised is raised."""
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
        yield
    finally:
        stop.set()
        thread.join(30)
    assert not errors, errors


def test_a_wallets_first_transfer_seen_pending_is_judged_against_its_balance(
    anvil_factory: AnvilFactory, killswitch: KillSwitch, tmp_path: Path
) -> None:
    # The mempool can show a wallet's first transfer before any block has carried the wallet's
    # balance (under load, even with instant mining). Judged against no balance, an ordinary
    # 5 ETH withdrawal was "100% of eth-hot-1 drained at once" and froze the wallet (a flaky
    # freeze seen once in CI); the pending transfer now carries the wallet's balance.
    node = anvil_factory("--no-mining")
    hot, cold = accounts(node)
    cfg = write_config(tmp_path / "drainwatch.toml", node, killswitch, hot, cold)
    with pipeline_running(cfg):
        tx = node.rpc(
            "eth_sendTransaction", [{"from": hot, "to": fresh_address(1), "value": hex(5 * ETH)}]
        )
        timeline = Timeline(str(cfg.alerts.timeline_path))
        wait_for(
            lambda: tx in {t.transfer.tx_hash for t in timeline.transfers()}, 30, "the pending tx"
        )
        node.rpc("evm_mine")
        wait_for(lambda: len(timeline.transfers()) >= 2, 30, "its confirmation")
    assert not killswitch.store.frozen()
    assert not [r.alert for r in Timeline(str(cfg.alerts.timeline_path)).alerts()]


def test_drain_on_anvil_is_frozen_through_the_embedded_bus(
    anvil: AnvilService, killswitch: KillSwitch, tmp_path: Path
) -> None:
    hot, cold = accounts(anvil)
    cfg = write_config(tmp_path / "drainwatch.toml", anvil, killswitch, hot, cold)
    with pipeline_running(cfg):
        ordinary, big = drain(anvil, hot)
        wait_for(lambda: killswitch.store.is_frozen(CHAIN, hot), 30, "the freeze")
        timeline = Timeline(str(cfg.alerts.timeline_path))
        wait_for(lambda: len(timeline.transfers()) >= len(ordinary) + 2, 10, "the timeline")
    assert_one_freeze(killswitch, hot, big, Path(cfg.alerts.timeline_path))
    recorded = {t.transfer.tx_hash for t in Timeline(cfg.alerts.timeline_path).transfers()}
    assert {*ordinary, big} <= recorded


def test_history_before_go_live_is_learned_and_only_a_live_drain_frozen(
    anvil_factory: AnvilFactory, killswitch: KillSwitch, tmp_path: Path
) -> None:
    # Going live (docs/operations.md): the watcher starts at a block before the wallet's
    # history, and [detection] learn_until is the moment drainwatch goes live. The history holds
    # a drain (a test, then most of the wallet to one new address): it is read, learned from and
    # kept in the timeline, but alerts nothing and freezes nothing. The same drain after the
    # moment is frozen.
    node = anvil_factory()
    hot, cold = accounts(node)
    wallets = anvil_wallets_toml(tmp_path, node, hot, cold, chain=CHAIN)  # from the next block
    history_ordinary, history_big = drain(node, hot)
    last = node.rpc("eth_getBlockByNumber", ["latest", False])
    go_live = datetime.fromtimestamp(int(last["timestamp"], 16) + 1, UTC)
    node.rpc("evm_increaseTime", [60])  # the live blocks come a minute after the moment
    path = tmp_path / "drainwatch.toml"
    path.write_text(
        wallets
        + f"""
[detection]
learn_until = {go_live.isoformat()}

[alerts]
timeline_path = "{tmp_path / "timeline.sqlite3"}"
killswitch_url = "{killswitch.url}"
killswitch_token = "{killswitch.token}"
"""
    )
    cfg = load(path)
    timeline = Timeline(str(cfg.alerts.timeline_path))

    def recorded() -> set[str]:
        return {t.transfer.tx_hash for t in timeline.transfers()}

    with pipeline_running(cfg):
        wait_for(lambda: {*history_ordinary, history_big} <= recorded(), 30, "the history")
        assert not killswitch.store.frozen()
        assert not [r.alert for r in timeline.alerts()]
        attacker = fresh_address(1999)
        send(node, hot, attacker, 1)
        live_big = send(node, hot, attacker, 1_000 * ETH)
        wait_for(lambda: killswitch.store.is_frozen(CHAIN, hot), 30, "the live drain's freeze")
    freezing = [r.alert for r in timeline.alerts() if r.alert.freeze]
    assert len(freezing) == 1
    assert freezing[0].tx_hashes[-1] == live_big  # the live test and the live drain
    # Every alert is of a live transfer; the history is only evidence in their windows.
    assert all(r.alert.time >= go_live for r in timeline.alerts())
    timeline.close()


def start_stage(stage: str, config: Path, logs: Path) -> subprocess.Popen[bytes]:
    log = (logs / f"{stage}.log").open("wb")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "drainwatch",
            "run",
            stage,
            "--config",
            str(config),
            "--bus",
            "kafka",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )


def stage_logs(procs: dict[str, subprocess.Popen[bytes]], logdir: Path) -> Callable[[], str]:
    """The end of each stage's log, for a failure's message."""
    return lambda: "\n".join(
        f"--- {s}\n" + (logdir / f"{s}.log").read_text()[-3000:] for s in procs
    )


def stop_stages(procs: dict[str, subprocess.Popen[bytes]]) -> None:
    for proc in procs.values():
        proc.terminate()
    for proc in procs.values():
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


def kafka_bus_toml(kafka: KafkaService, prefix: str) -> str:
    return f"""
[bus]
kind = "kafka"
bootstrap_servers = ["{kafka.bootstrap_servers}"]
topic_prefix = "{prefix}"
partitions = 3
group_prefix = "{prefix}dw"
"""


def test_a_drain_while_the_broker_is_down_is_frozen_once_it_is_back(
    anvil: AnvilService,
    kafka: KafkaService,
    kafka_topic_prefix: str,
    killswitch: KillSwitch,
    tmp_path: Path,
) -> None:
    # The chain goes on while Kafka is down (SIGKILL): the watcher cannot publish the drain's
    # transactions, so it keeps them (its cursor waits for the broker), and every stage rides
    # the outage out. Once the broker is back the drain is judged and frozen, once.
    hot, cold = accounts(anvil)
    path = tmp_path / "drainwatch.toml"
    cfg = write_config(
        path, anvil, killswitch, hot, cold, kafka_bus_toml(kafka, kafka_topic_prefix)
    )
    procs = {s: start_stage(s, path, tmp_path) for s in ("ingest", "detect", "alert")}
    timeline_path = Path(cfg.alerts.timeline_path)
    logs = stage_logs(procs, tmp_path)

    def recorded(status: TransferStatus | None = None) -> list[tuple[str, str]]:
        """(tx hash, status) of each recorded transfer, of one status or all."""
        if not timeline_path.exists():
            return []
        timeline = Timeline(str(timeline_path))
        try:
            rows = [
                (r.transfer.tx_hash.lower(), r.transfer.status.value) for r in timeline.transfers()
            ]
        finally:
            timeline.close()
        return [r for r in rows if status is None or r[1] == status.value]

    def confirmed() -> int:
        return len(recorded(TransferStatus.CONFIRMED))

    try:
        sent = [send(anvil, hot, fresh_address(i), 5 * ETH).lower() for i in range(6)]
        wait_for(lambda: confirmed() >= 6, 90, "the ordinary withdrawals recorded", context=logs)
        kafka.kill()
        attacker = fresh_address(999)
        sent.append(send(anvil, hot, attacker, 1).lower())
        big = send(anvil, hot, attacker, 2_000 * ETH)
        sent.append(big)
        time.sleep(5.0)
        assert not killswitch.store.is_frozen(CHAIN, hot)
        kafka.start()
        wait_for(
            lambda: killswitch.store.is_frozen(CHAIN, hot),
            180,
            "the freeze after the broker came back",
            context=logs,
        )
        time.sleep(3.0)  # anything more said
        assert all(p.poll() is None for p in procs.values()), logs()
    finally:
        stop_stages(procs)
        if not kafka.running:
            kafka.start()
    assert_one_freeze(killswitch, hot, big, timeline_path)
    # The watched wallet's transactions, each confirmed once. The watcher may also have caught
    # one in the pool in the instant before anvil mined it: that sighting is its own record (a
    # transfer's key is its id and status), never a retraction.
    rows = recorded()
    assert sorted(tx for tx, _ in recorded(TransferStatus.CONFIRMED)) == sorted(sent), rows
    assert {tx for tx, status in rows if status == TransferStatus.PENDING} <= set(sent), rows
    assert all(status != TransferStatus.RETRACTED for _, status in rows), rows


def test_drain_on_anvil_is_frozen_through_kafka_with_one_process_per_stage(
    anvil: AnvilService,
    kafka: KafkaService,
    kafka_topic_prefix: str,
    killswitch: KillSwitch,
    tmp_path: Path,
) -> None:
    hot, cold = accounts(anvil)
    path = tmp_path / "drainwatch.toml"
    cfg = write_config(
        path, anvil, killswitch, hot, cold, kafka_bus_toml(kafka, kafka_topic_prefix)
    )
    procs = {s: start_stage(s, path, tmp_path) for s in ("ingest", "detect", "alert")}
    logs = stage_logs(procs, tmp_path)

    try:
        _, big = drain(anvil, hot)
        try:
            wait_for(lambda: killswitch.store.is_frozen(CHAIN, hot), 90, "the freeze")
        except AssertionError:
            raise AssertionError(logs()) from None
        assert all(p.poll() is None for p in procs.values()), logs()
        # the freeze order is on the compacted freezes topic
        kbus = KafkaBus(kafka.bootstrap_servers)
        orders: list[Any] = []

        def read_orders() -> bool:
            orders.clear()
            for p in range(3):
                tp = TopicPartition(f"{kafka_topic_prefix}{FREEZES}", p)
                for m in kbus.read_range(tp, 0, kbus.end_offset(tp)):
                    orders.append(decode(FREEZES, m.value, FreezeOrder))
            return bool(orders)

        wait_for(read_orders, 20, "the freeze order on the freezes topic")
        kbus.close()
        assert {(o.chain, o.wallet, o.action.value) for o in orders} == {(CHAIN, hot, "freeze")}
    finally:
        stop_stages(procs)
    assert_one_freeze(killswitch, hot, big, Path(cfg.alerts.timeline_path))
