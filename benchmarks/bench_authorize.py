"""Measure the kill switch over real HTTP on loopback: pre-sign authorization latency (p50/p99)
and the time from a critical alert's freeze request to the hook's acknowledgement.

Usage: ``.venv/bin/python benchmarks/bench_authorize.py [-n 2000] [--freezes 50] [--store DSN]``

The kill switch runs in this process (uvicorn thread) over a SQLite file in a temporary directory
(or ``--store``), as it would in production: HMAC-signed requests, nonces spent in the store,
``synchronous=FULL``. Signers use :class:`alerts.killswitch.SignerClient` (kept-alive connection);
the freeze comes from the alerts stage's :class:`alerts.killswitch.KillSwitchClient` with a
detector key; the hook is a local webhook receiver answering 200.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import tempfile
import threading
import time
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pydantic import SecretStr

from alerts.killswitch import (
    HmacCredentials,
    HookRecord,
    HookSettings,
    KeySettings,
    KillSwitchClient,
    KillSwitchSettings,
    Role,
    SignerClient,
    VelocityBudget,
    create_app,
    open_store,
    serve_in_thread,
    server_port,
    stop_server,
)
from drainwatch.config import WalletConfig

SIGNER_SECRET = "bench-signer-secret"  # noqa: S105 - a local benchmark key
DETECTOR_SECRET = "bench-detector-secret"  # noqa: S105


class _Receiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: object) -> None:
        return


def _signer_load(
    url: str, wallet: str, n: int, results: multiprocessing.Queue[tuple[list[float], int]]
) -> None:
    """In a child process: ``n`` timed authorizations (after a warm-up), sent back."""
    signer = SignerClient(url, "signer", SIGNER_SECRET, timeout_s=2)
    for _ in range(50):
        signer.authorize("ethereum", wallet, "ETH", "0.01", to="0xbeef")
    latencies: list[float] = []
    denied = 0
    for i in range(n):
        begin = time.perf_counter()
        verdict = signer.authorize("ethereum", wallet, "ETH", "0.01", to=f"0x{i:040x}")
        latencies.append((time.perf_counter() - begin) * 1000)
        denied += not verdict.allowed
    signer.close()
    results.put((latencies, denied))


def percentile(values: list[float], q: float) -> float:
    """The ``q``-quantile (0..1) by nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def main() -> None:  # noqa: PLR0915 - a linear script
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=2000, help="authorize requests (max 20000)")
    parser.add_argument("--freezes", type=int, default=50, help="freezes timed to hook ack")
    parser.add_argument("--store", default=None, help="a postgresql:// DSN (default: SQLite)")
    args = parser.parse_args()
    n = min(args.n, 20_000)
    freezes = min(args.freezes, 1000)

    receiver = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    hook_url = f"http://127.0.0.1:{receiver.server_address[1]}/hook"

    wallets = tuple(
        WalletConfig(chain="ethereum", address=f"0x{i:040x}", label="eth-hot")
        for i in range(freezes + 1)
    )
    settings = KillSwitchSettings(
        keys=(
            KeySettings(id="signer", secret=SecretStr(SIGNER_SECRET), roles=(Role.SIGNER,)),
            KeySettings(id="alerts", secret=SecretStr(DETECTOR_SECRET), roles=(Role.DETECTOR,)),
        ),
        wallets=wallets,
        budgets=(
            VelocityBudget(
                label="eth-hot", asset="ETH", max_amount=Decimal(1_000_000_000), window_s=3600
            ),
        ),
        hooks=(
            HookSettings(
                name="wallet-infra", kind="webhook", url=hook_url, secret=SecretStr("hook-key")
            ),
        ),
    )
    acked: dict[str, float] = {}
    ack_event = threading.Event()

    def on_hook_result(record: HookRecord) -> None:
        if record.status == "delivered":
            acked[record.order_id] = time.perf_counter()
            ack_event.set()

    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(args.store or str(Path(tmp) / "killswitch.sqlite3"))
        app = create_app(store, settings=settings, on_hook_result=on_hook_result)
        server, thread = serve_in_thread(app)
        url = f"http://127.0.0.1:{server_port(server)}"
        try:
            # The signer runs in its own process, as a real one would: no shared GIL.
            ctx = multiprocessing.get_context("spawn")
            results: multiprocessing.Queue[tuple[list[float], int]] = ctx.Queue()
            child = ctx.Process(
                target=_signer_load, args=(url, wallets[0].address, n, results), daemon=True
            )
            child.start()
            latencies, denied = results.get(timeout=600)
            child.join(30)

            client = KillSwitchClient(url, credentials=HmacCredentials("alerts", DETECTOR_SECRET))
            to_ack: list[float] = []
            for w in wallets[1:]:
                ack_event.clear()
                begin = time.perf_counter()
                order = client.freeze(
                    "ethereum", w.address, reason="bench", alert_id=w.address, severity="critical"
                )
                deadline = time.monotonic() + 10
                while order["id"] not in acked and time.monotonic() < deadline:
                    ack_event.wait(0.5)
                if order["id"] in acked:
                    to_ack.append((acked[order["id"]] - begin) * 1000)
            client.close()
        finally:
            stop_server(server, thread)
            store.close()
            receiver.shutdown()

    backend = "PostgreSQL" if args.store else "SQLite"
    print(f"kill switch on loopback, {backend} store, HMAC-signed requests")
    print(
        f"authorize: {n} requests ({denied} denied): p50 {statistics.median(latencies):.2f} ms,"
        f" p99 {percentile(latencies, 0.99):.2f} ms, max {max(latencies):.2f} ms"
    )
    if to_ack:
        print(
            f"critical alert -> hook ack: {len(to_ack)}/{freezes} freezes:"
            f" p50 {statistics.median(to_ack):.2f} ms, p99 {percentile(to_ack, 0.99):.2f} ms,"
            f" max {max(to_ack):.2f} ms"
        )
    else:
        print("critical alert -> hook ack: no acknowledgement within 10 s")


if __name__ == "__main__":
    main()
