"""``serve`` (what ``drainwatch killswitch serve`` runs) as a real process, from a config file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from alerts.killswitch import audit_verify
from tests.alerts.conftest import free_port
from tests.alerts.killswitch.conftest import HmacAuth

CONFIG = """\
[[wallets]]
chain = "nem"
address = "NC3BI3DNMR2PGEOOMP2NKXQGSAKMS7GYRKVA5CSZ"

[killswitch]
store = "{store}"
port = {port}

[[killswitch.keys]]
id = "ops-1"
secret = "${{KS_CMD_OPS}}"
roles = ["operator"]
"""


def test_serve_runs_from_the_config_and_keeps_secrets_out_of_its_log(tmp_path: Path) -> None:
    port = free_port()
    store = tmp_path / "ks.sqlite3"
    config = tmp_path / "drainwatch.toml"
    config.write_text(CONFIG.format(store=store, port=port))
    log = tmp_path / "serve.log"
    env = {**os.environ, "KS_CMD_OPS": "ops-secret-0001"}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", f"from alerts.killswitch import serve; serve({str(config)!r})"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=Path(__file__).resolve().parents[3],
        )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        with httpx.Client(base_url=url, auth=HmacAuth("ops-1")) as http:
            frozen = http.post(
                "/v1/freezes",
                json={
                    "chain": "nem",
                    "wallet": "NC3BI3DNMR2PGEOOMP2NKXQGSAKMS7GYRKVA5CSZ",
                    "reason": "manual",
                    "requested_by": "ops",
                },
            )
        unsigned = httpx.get(f"{url}/v1/freezes")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(20)
    assert frozen.status_code == 201
    assert unsigned.status_code == 401
    assert "ops-secret-0001" not in log.read_text()
    with (tmp_path / "verify.txt").open("w") as out:
        assert audit_verify(str(store), out=out) == 0
