"""A Prometheus server for the metrics tests, in the style of tests/harness/services.py.

Prometheus comes from Debian's package (``scripts/install-prometheus.sh``, run automatically once
if ``prometheus`` is not on PATH). The packaged service is never used: each test starts its own
server on a free loopback port with a throwaway TSDB and a scrape config naming its targets.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any

from tests.harness.services import REPO_ROOT, Service, ServiceError, free_port

INSTALL_SCRIPT = REPO_ROOT / "scripts" / "install-prometheus.sh"


def prometheus_binary() -> str:
    """Path of ``prometheus``, installing Debian's package first if it is missing."""
    found = shutil.which("prometheus")
    if found:
        return found
    proc = subprocess.run(
        ["bash", str(INSTALL_SCRIPT)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=False,
    )
    found = shutil.which("prometheus")
    if proc.returncode != 0 or not found:
        raise ServiceError(
            f"installing prometheus failed (exit {proc.returncode}); run "
            f"`bash {INSTALL_SCRIPT.relative_to(REPO_ROOT)}`.\n{proc.stdout[-3000:]}"
        )
    return found


class PrometheusService(Service):
    """Prometheus scraping ``targets`` (``host:port`` of ``/metrics``) every ``scrape_interval_s``.

    Args:
        targets: ``{job: ["127.0.0.1:9400", ...]}``.
        bearer_tokens: ``{job: token}`` for jobs whose ``/metrics`` wants
            ``Authorization: Bearer <token>`` (the kill switch's does).
        scrape_interval_s: Also the evaluation interval.
    """

    name = "prometheus"

    def __init__(
        self,
        targets: dict[str, Sequence[str]],
        *,
        bearer_tokens: Mapping[str, str] | None = None,
        scrape_interval_s: float = 1.0,
        startup_timeout: float = 30.0,
        **kwargs: Any,
    ) -> None:
        if unknown := set(bearer_tokens or {}) - set(targets):
            raise ValueError(f"bearer tokens for jobs without targets: {sorted(unknown)}")
        super().__init__(startup_timeout=startup_timeout, **kwargs)
        self.targets = {job: list(t) for job, t in targets.items()}
        self.bearer_tokens = dict(bearer_tokens or {})
        self.scrape_interval_s = scrape_interval_s
        self.port = 0
        self.config_path = self.workdir / "prometheus.yml"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _choose_ports(self) -> None:
        self.port = free_port()

    def _prepare(self) -> None:
        interval = f"{int(self.scrape_interval_s * 1000)}ms"
        config = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "scrape_configs": [self._scrape_config(job, t) for job, t in self.targets.items()],
        }
        # JSON is YAML: no YAML writer needed.
        self.config_path.write_text(json.dumps(config, indent=2))

    def _scrape_config(self, job: str, targets: list[str]) -> dict[str, Any]:
        config: dict[str, Any] = {"job_name": job, "static_configs": [{"targets": targets}]}
        token = self.bearer_tokens.get(job)
        if token is not None:
            config["authorization"] = {"type": "Bearer", "credentials": token}
        return config

    def _command(self) -> list[str]:
        return [
            prometheus_binary(),
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.data_dir}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]

    def _probe(self) -> None:
        with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2.0) as reply:
            if reply.status != 200:
                raise ServiceError(f"prometheus not ready: HTTP {reply.status}")

    def api(self, path: str, **params: str) -> Any:
        """GET ``/api/v1/<path>`` and return its ``data`` (raises on an error status)."""
        query = urllib.parse.urlencode(params)
        url = f"{self.url}/api/v1/{path}" + (f"?{query}" if query else "")
        try:
            with urllib.request.urlopen(url, timeout=10.0) as reply:
                body = json.loads(reply.read())
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read())
        if body.get("status") != "success":
            raise ServiceError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector (or scalar as one sample) of a PromQL expression, evaluated now."""
        data = self.api("query", query=expr)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def wait_for_targets_up(self, timeout_s: float = 30.0) -> None:
        """Block until every configured target has been scraped successfully."""
        deadline = time.monotonic() + timeout_s
        while True:
            active = self.api("targets")["activeTargets"]
            if active and all(t["health"] == "up" for t in active):
                return
            if time.monotonic() > deadline:
                states = [(t["scrapeUrl"], t["health"], t.get("lastError")) for t in active]
                raise ServiceError(f"targets not up after {timeout_s}s: {states}")
            time.sleep(0.2)
