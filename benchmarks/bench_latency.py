"""Latency from a drain transaction shown by anvil to the kill switch holding the freeze.

Usage: ``.venv/bin/python benchmarks/bench_latency.py [--iterations 20] [--mode embedded kafka]
[--poll-interval 0.1] [--since mined mempool] [--client kafka-python confluent]``

Each iteration drains a different hot wallet (anvil accounts created with ``anvil_setBalance``
and impersonated): one transfer of 30% of its balance to a new address. The clock starts when
anvil has mined the transaction (its receipt is available: the moment the node shows it), or,
with ``--since mempool``, when the transaction sits in anvil's pool with automine off (the
watcher publishes it as pending and the detector judges it before any block). It stops when the
kill switch's store reports the wallet frozen (polled every 2 ms). Embedded: the whole pipeline
in this process. Kafka: ``drainwatch run ingest|detect|alert --bus kafka`` as three processes on
a real broker. The watcher polls the node every ``--poll-interval`` seconds with
``confirmations = 0``; that interval bounds the latency from below.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alerts import FreezeStore, create_app, serve_in_thread, server_port, stop_server
from drainwatch.app import run_pipeline
from drainwatch.config import load
from tests.harness.services import AnvilService, KafkaService

ETH = 10**18
CHAIN = "anvil"
BALANCE = 10_000 * ETH


def hot_address(i: int) -> str:
    return f"0x{0xD0000 + i:040x}"


def write_config(
    path: Path,
    anvil: AnvilService,
    *,
    ks_url: str,
    token: str,
    wallets: int,
    poll_s: float,
    bus: str,
) -> Path:
    cold = anvil.rpc("eth_accounts", [])[0].lower()
    start = anvil.block_number() + 1
    lines = [f'state_dir = "{path.parent / "state"}"', ""]
    for i in range(wallets):
        lines += [
            "[[wallets]]",
            f'chain = "{CHAIN}"',
            f'address = "{hot_address(i)}"',
            f'label = "hot-{i}"',
            "",
        ]
    lines += [
        "[[wallets]]",
        f'chain = "{CHAIN}"',
        f'address = "{cold}"',
        'label = "cold"',
        'role = "cold"',
        "",
        f"[chains.{CHAIN}]",
        'kind = "evm"',
        f'rpc = ["{anvil.url}"]',
        "confirmations = 0",
        f"poll_interval_s = {poll_s}",
        f"start_block = {start}",
        "",
        "[alerts]",
        f'timeline_path = "{path.parent / "timeline.sqlite3"}"',
        f'killswitch_url = "{ks_url}"',
        f'killswitch_token = "{token}"',
        "console = false",
        "",
        # Each iteration is an independent drain of another wallet, minutes apart: incident
        # correlation would freeze the whole fleet after the third and time nothing after it.
        "[detection]",
        'shadow = ["correlation"]',
        bus,
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def fund(anvil: AnvilService, wallets: int) -> None:
    for i in range(wallets):
        anvil.rpc("anvil_setBalance", [hot_address(i), hex(BALANCE)])
        anvil.rpc("anvil_impersonateAccount", [hot_address(i)])


def drain_and_time(
    anvil: AnvilService, store: FreezeStore, i: int, timeout_s: float = 60, *, mempool: bool = False
) -> float:
    attacker = f"0x{0xBAD000 + i:040x}"
    tx = anvil.rpc(
        "eth_sendTransaction",
        [{"from": hot_address(i), "to": attacker, "value": hex(BALANCE * 3 // 10)}],
    )
    if mempool:
        # Automine is off: the transaction waits in the pool, where the node already shows it.
        assert anvil.rpc("eth_getTransactionByHash", [tx]) is not None
    else:
        anvil.wait_for_receipt(tx)
    shown = time.perf_counter()
    deadline = shown + timeout_s
    while not store.is_frozen(CHAIN, hot_address(i)):
        if time.perf_counter() > deadline:
            raise RuntimeError(f"wallet {i} was not frozen within {timeout_s}s")
        time.sleep(0.002)
    elapsed = time.perf_counter() - shown
    if mempool:
        anvil.rpc("evm_mine", [])
    return elapsed


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run_mode(
    mode: str,
    iterations: int,
    poll_s: float,
    kafka: KafkaService | None,
    mempool: bool = False,
    *,
    client: str = "kafka-python",
) -> list[float]:
    workdir = Path(tempfile.mkdtemp(prefix=f"dw-latency-{mode}-"))
    token = secrets.token_hex(12)
    store = FreezeStore(str(workdir / "killswitch.sqlite3"))
    server, thread = serve_in_thread(create_app(store, token=token))
    ks_url = f"http://127.0.0.1:{server_port(server)}"
    wallets = iterations + 1  # one warm-up
    samples: list[float] = []
    with AnvilService() as anvil:
        fund(anvil, wallets)
        bus = ""
        if kafka is not None:
            prefix = f"lat{secrets.token_hex(3)}-"
            bus = (
                f'[bus]\nkind = "kafka"\nbootstrap_servers = ["{kafka.bootstrap_servers}"]\n'
                f'topic_prefix = "{prefix}"\npartitions = 3\ngroup_prefix = "{prefix}dw"\n'
                f'client = "{client}"\n'
            )
        config = write_config(
            workdir / "drainwatch.toml",
            anvil,
            ks_url=ks_url,
            token=token,
            wallets=wallets,
            poll_s=poll_s,
            bus=bus,
        )
        stop = threading.Event()
        procs: list[subprocess.Popen[bytes]] = []
        runner: threading.Thread | None = None
        if kafka is None:
            runner = threading.Thread(
                target=run_pipeline, args=(load(config), "all"), kwargs={"stop": stop}
            )
            runner.start()
        else:
            procs = [
                subprocess.Popen(  # noqa: S603 - our own interpreter and module
                    [sys.executable, "-m", "drainwatch", "run", stage, "--config", str(config)],
                    stdout=(workdir / f"{stage}.log").open("wb"),
                    stderr=subprocess.STDOUT,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"},
                )
                for stage in ("ingest", "detect", "alert")
            ]
        try:
            time.sleep(2.0)
            if mempool:
                anvil.rpc("evm_setAutomine", [False])
            warm = drain_and_time(anvil, store, wallets - 1, timeout_s=120, mempool=mempool)
            print(f"  {mode}: warm-up {warm * 1000:.0f} ms (not counted)")
            for i in range(iterations):
                samples.append(drain_and_time(anvil, store, i, mempool=mempool))
                time.sleep(poll_s * 1.37)  # de-phase from the watcher's poll
        finally:
            stop.set()
            if runner is not None:
                runner.join(30)
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(30)
            stop_server(server, thread)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--mode", nargs="+", default=["embedded", "kafka"])
    parser.add_argument("--poll-interval", type=float, default=0.1)
    parser.add_argument(
        "--since",
        nargs="+",
        default=["mined", "mempool"],
        choices=["mined", "mempool"],
        help="start the clock when the node shows the transaction mined, or in its mempool",
    )
    parser.add_argument(
        "--client",
        nargs="+",
        default=["kafka-python"],
        choices=["kafka-python", "confluent"],
        help="the Kafka client of the kafka mode's processes ([bus] client)",
    )
    args = parser.parse_args()
    kafka = KafkaService().start() if "kafka" in args.mode else None
    try:
        for mode in args.mode:
            for client in args.client if mode == "kafka" else ["-"]:
                for since in args.since:
                    samples = run_mode(
                        mode,
                        args.iterations,
                        args.poll_interval,
                        kafka,
                        mempool=since == "mempool",
                        client=client if mode == "kafka" else "kafka-python",
                    )
                    name = f"{mode} ({client})" if mode == "kafka" else mode
                    _report(f"{name}, since {since}", samples, args.poll_interval)
    finally:
        if kafka is not None:
            kafka.cleanup()


def _report(what: str, samples: list[float], poll_s: float) -> None:
    print(
        f"{what}: n={len(samples)} p50 {percentile(samples, 0.5) * 1000:.0f} ms, "
        f"p99 {percentile(samples, 0.99) * 1000:.0f} ms, "
        f"max {max(samples) * 1000:.0f} ms, mean {statistics.mean(samples) * 1000:.0f} ms"
        f" (watcher poll {poll_s * 1000:.0f} ms)"
    )


if __name__ == "__main__":
    main()
