"""deploy/ is valid: compose against the Compose Specification schema, Kubernetes manifests against
the API schemas (kubernetes-validate, offline), Prometheus config and rules with promtool, and the
pieces agree with each other and with the CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from typer.testing import CliRunner

from drainwatch.cli import app
from drainwatch.config import loads

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
K8S = DEPLOY / "kubernetes"
MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
ENV = {
    "DRAINWATCH_KILLSWITCH_TOKEN": "x" * 24,
    "DRAINWATCH_KILLSWITCH_METRICS_TOKEN": "y" * 24,
    "DRAINWATCH_ETH_RPC": "http://127.0.0.1:8545",
}


def tool(name: str) -> str:
    """A console script installed next to this interpreter (the dev extras put them there)."""
    path = Path(sys.executable).parent / name
    assert path.exists(), f"{name} is missing: pip install -e '.[dev]'"
    return str(path)


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_compose_file_matches_the_compose_specification() -> None:
    proc = subprocess.run(
        [
            tool("check-jsonschema"),
            "--builtin-schema",
            "vendor.compose-spec",
            str(DEPLOY / "compose.yaml"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_schema_check_rejects_a_broken_compose_file(tmp_path: Path) -> None:
    broken = tmp_path / "compose.yaml"
    broken.write_text("services:\n  x:\n    image: busybox\n    replicaz: 2\n")
    proc = subprocess.run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(broken)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode != 0


def test_compose_runs_every_stage_and_two_detectors_with_commands_the_cli_knows() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {
        "kafka",
        "kafka-topics",
        "ingest",
        "detect",
        "alert",
        "killswitch",
        "prometheus",
        "grafana",
    } <= set(services)
    assert services["detect"]["deploy"]["replicas"] == 2
    for name in ("ingest", "detect", "alert", "killswitch"):
        command = services[name]["command"]
        result = CliRunner().invoke(app, [*command, "--help"], env=ENV)
        assert result.exit_code == 0, (name, result.output)
    for name in ("ingest", "detect", "alert"):
        assert services[name]["command"][:2] == ["run", name]
        assert services[name]["command"][-2:] == ["--bus", "kafka"]
    # The Prometheus config scrapes services that exist, on the port the config serves.
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = set()
    for job in prom["scrape_configs"]:
        for static in job.get("static_configs", []):
            targets.update(static["targets"])
        for dns in job.get("dns_sd_configs", []):
            targets.update(f"{n}:{dns['port']}" for n in dns["names"])
    assert targets == {"ingest:9400", "detect:9400", "alert:9400", "killswitch:8700"}


def test_the_deployed_config_loads_and_the_configmap_carries_it_verbatim() -> None:
    text = (DEPLOY / "config" / "drainwatch.compose.toml").read_text()
    env = dict(os.environ)
    os.environ.update(ENV)
    try:
        cfg = loads(text, "drainwatch.compose.toml")
    finally:
        os.environ.clear()
        os.environ.update(env)
    assert cfg.bus.kind == "kafka"
    assert cfg.metrics.port_for("detect") == 9400
    assert cfg.metrics.host == "0.0.0.0"
    from alerts.killswitch.settings import loads_killswitch_settings

    os.environ.update(ENV)
    try:
        killswitch = loads_killswitch_settings(text, "drainwatch.compose.toml")
    finally:
        os.environ.clear()
        os.environ.update(env)
    assert (killswitch.host, killswitch.port) == ("0.0.0.0", 8700)
    assert cfg.alerts.killswitch_url == f"http://killswitch:{killswitch.port}"
    [configmap] = documents(K8S / "configmap.yaml")
    assert configmap["data"]["drainwatch.toml"] == text


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda p: p.name)
def test_kubernetes_manifest_is_valid(manifest: Path) -> None:
    proc = subprocess.run(
        [tool("kubernetes-validate"), "--strict", "--quiet", str(manifest)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_kubernetes_validator_rejects_an_unknown_field(tmp_path: Path) -> None:
    manifest = (K8S / "detect.yaml").read_text().replace("replicas: 2", "replicaz: 2")
    (tmp_path / "detect.yaml").write_text(manifest)
    proc = subprocess.run(
        [tool("kubernetes-validate"), "--strict", "--quiet", str(tmp_path / "detect.yaml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode != 0
    assert "replicaz" in proc.stdout + proc.stderr


def workloads() -> dict[str, dict[str, Any]]:
    """The Deployments and StatefulSets, by name."""
    return {
        d["metadata"]["name"]: d
        for p in MANIFESTS
        for d in documents(p)
        if d["kind"] in {"Deployment", "StatefulSet"}
    }


def test_kubernetes_has_one_workload_per_stage_and_scales_detectors_in_one_group() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(p.name for p in MANIFESTS)
    found = workloads()
    assert set(found) == {f"drainwatch-{s}" for s in ("ingest", "detect", "alert", "killswitch")}
    assert found["drainwatch-detect"]["spec"]["replicas"] == 2
    for stage in ("ingest", "detect", "alert"):
        pod = found[f"drainwatch-{stage}"]["spec"]["template"]["spec"]
        [container] = pod["containers"]
        # Same config (so the same consumer-group prefix) in every replica, secrets by reference.
        assert container["args"][:6] == [
            "run",
            stage,
            "--config",
            "/etc/drainwatch/drainwatch.toml",
            "--bus",
            "kafka",
        ]
        assert container["envFrom"] == [{"secretRef": {"name": "drainwatch-secrets"}}]
        assert {"name": "config", "configMap": {"name": "drainwatch-config"}} in pod["volumes"]
        assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
        # The CLI takes every argument the manifest gives (parsed, not run).
        command = typer.main.get_command(app)
        assert isinstance(command, typer.core.TyperGroup)
        parent = command.make_context("drainwatch", list(container["args"]))
        run = command.get_command(parent, "run")
        assert run is not None
        params = run.make_context("run", list(container["args"][1:]), parent=parent).params
        assert params["stage"] == stage
    kinds = {(d["kind"], d["metadata"]["name"]) for p in MANIFESTS for d in documents(p)}
    assert ("Service", "killswitch") in kinds
    assert ("Job", "drainwatch-kafka-topics") in kinds
    assert not any(kind == "Secret" for kind, _ in kinds)  # created out of band, never committed


def test_each_detector_pod_keeps_its_snapshots_and_its_group_membership(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A StatefulSet: each pod its own state volume, kept when the pod is replaced, and a static
    # consumer-group member under its pod's name, so a replaced pod gets its partitions back
    # and takes their state back from its own snapshots.
    detect = workloads()["drainwatch-detect"]
    assert detect["kind"] == "StatefulSet"
    spec = detect["spec"]
    pod = spec["template"]["spec"]
    [container] = pod["containers"]
    [claim] = spec["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "state"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert "state" not in {v["name"] for v in pod["volumes"]}  # the claim, not an emptyDir
    assert {"name": "state", "mountPath": "/var/lib/drainwatch"} in container["volumeMounts"]
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    cfg = loads((DEPLOY / "config" / "drainwatch.compose.toml").read_text(), "compose.toml")
    assert cfg.state_dir is not None
    assert Path(cfg.state_dir).is_relative_to("/var/lib/drainwatch")  # on the claim
    args = container["args"]
    assert args[args.index("--instance-id") + 1] == "$(POD_NAME)"
    assert {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in (
        container["env"]
    )
    service = next(
        d
        for d in documents(K8S / "detect.yaml")
        if d["kind"] == "Service" and d["metadata"]["name"] == spec["serviceName"]
    )
    assert service["spec"]["clusterIP"] == "None"  # headless, as a StatefulSet's must be
    assert service["spec"]["selector"] == spec["selector"]["matchLabels"]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomize_renders_every_resource_into_the_namespace() -> None:
    proc = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    rendered = [d for d in yaml.safe_load_all(proc.stdout) if d]
    assert len(rendered) == sum(len(documents(p)) for p in MANIFESTS)
    assert all(
        d["metadata"].get("namespace") == "drainwatch" for d in rendered if d["kind"] != "Namespace"
    )


def test_prometheus_config_and_rules_pass_promtool() -> None:
    from tests.harness.prometheus import prometheus_binary

    promtool = str(Path(prometheus_binary()).with_name("promtool"))
    config = subprocess.run(
        [
            promtool,
            "check",
            "config",
            "--syntax-only",
            str(DEPLOY / "prometheus" / "prometheus.yml"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert config.returncode == 0, config.stdout + config.stderr
    rules = subprocess.run(
        [promtool, "check", "rules", *map(str, (DEPLOY / "prometheus" / "rules").glob("*.yml"))],
        capture_output=True,
        text=True,
        check=False,
    )
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert "SUCCESS: 8 rules found" in rules.stdout


_LEDGER_QUIET_TEST = """
rule_files: [{rules}]
evaluation_interval: 1m
tests:
  # The latest approval read was made at 0 s; the hot wallet pays every minute: after 30
  # minutes of it, and 5 more, the alert fires.
  - interval: 1m
    input_series:
      - series: 'drainwatch_ledger_latest_approval_timestamp_seconds{{job="drainwatch-detect"}}'
        values: '0x60'
      - series: 'drainwatch_wallet_transfers_total{{job="drainwatch-ingest",direction="out"}}'
        values: '0+1x60'
    alert_rule_test:
      - eval_time: 34m
        alertname: DrainwatchLedgerQuiet
        exp_alerts: []
      - eval_time: 40m
        alertname: DrainwatchLedgerQuiet
        exp_alerts:
          - exp_labels: {{severity: critical}}
            exp_annotations:
              summary: >-
                no approved withdrawal read for 40m 0s while hot wallets pay out: is the ledger
                feed down? (each unexplained payment freezes its wallet)
  # Approvals keep coming (each minute's latest is that minute), or nothing is paid: quiet.
  - interval: 1m
    input_series:
      - series: 'drainwatch_ledger_latest_approval_timestamp_seconds{{job="drainwatch-detect"}}'
        values: '0+60x60'
      - series: 'drainwatch_wallet_transfers_total{{job="drainwatch-ingest",direction="out"}}'
        values: '0+1x60'
    alert_rule_test:
      - eval_time: 50m
        alertname: DrainwatchLedgerQuiet
        exp_alerts: []
  - interval: 1m
    input_series:
      - series: 'drainwatch_ledger_latest_approval_timestamp_seconds{{job="drainwatch-detect"}}'
        values: '0x60'
      - series: 'drainwatch_wallet_transfers_total{{job="drainwatch-ingest",direction="out"}}'
        values: '5x60'
    alert_rule_test:
      - eval_time: 50m
        alertname: DrainwatchLedgerQuiet
        exp_alerts: []
"""


def _promtool_test_rules(test: Path, text: str) -> None:
    """Run ``text`` (a rules unit test naming ``{rules}``) through ``promtool test rules``."""
    from tests.harness.prometheus import prometheus_binary

    promtool = str(Path(prometheus_binary()).with_name("promtool"))
    rules = DEPLOY / "prometheus" / "rules" / "drainwatch.yml"
    test.write_text(text.format(rules=json.dumps(str(rules))))
    result = subprocess.run(
        [promtool, "test", "rules", str(test)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_ledger_quiet_rule_fires_only_while_the_wallets_pay_without_approvals(
    tmp_path: Path,
) -> None:
    _promtool_test_rules(tmp_path / "ledger-quiet.test.yml", _LEDGER_QUIET_TEST)


_NOT_JUDGING_TEST = """
rule_files: [{rules}]
evaluation_interval: 1m
tests:
  # learn_until is 30 minutes after the start: for 10 minutes, then until it passes, the rule
  # fires, saying how long is left; after the moment it is quiet.
  - interval: 1m
    input_series:
      - series: 'drainwatch_detect_learn_until_timestamp_seconds{{job="drainwatch-detect"}}'
        values: '1800x60'
    alert_rule_test:
      - eval_time: 5m
        alertname: DrainwatchNotJudging
        exp_alerts: []
      - eval_time: 15m
        alertname: DrainwatchNotJudging
        exp_alerts:
          - exp_labels: {{severity: warning}}
            exp_annotations:
              summary: >-
                the detectors judge nothing for 15m 0s more ([detection] learn_until): no
                alert, no freeze until then
      - eval_time: 31m
        alertname: DrainwatchNotJudging
        exp_alerts: []
"""


def test_the_not_judging_rule_fires_while_learn_until_is_ahead_of_the_clock(
    tmp_path: Path,
) -> None:
    _promtool_test_rules(tmp_path / "not-judging.test.yml", _NOT_JUDGING_TEST)


def test_dockerfile_installs_the_package_and_runs_as_a_non_root_user() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert text.count("FROM python:3.11-slim") == 2
    assert "USER 10001:10001" in text
    assert 'ENTRYPOINT ["drainwatch"]' in text
    copied = {line.split()[1].rstrip("/") for line in text.splitlines() if line.startswith("COPY ")}
    assert {
        "drainwatch",
        "ingest",
        "detectors",
        "alerts",
    } <= copied  # every package setuptools finds
