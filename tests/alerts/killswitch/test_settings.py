"""Loading the [killswitch] table: values, and errors that name the line and the key."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from alerts.killswitch import Role, load_killswitch_settings
from drainwatch.config import ConfigError

GOOD = """\
[[wallets]]
chain = "ethereum"
address = "0xABC0000000000000000000000000000000000001"
label = "eth-hot"

[killswitch]
store = "ks.sqlite3"
port = 8711

[[killswitch.keys]]
id = "alerts"
secret = "${KS_TEST_ALERTS}"
roles = ["detector"]

[[killswitch.keys]]
id = "grafana"
secret = "${KS_TEST_GRAFANA}"
roles = ["read-only"]
bearer = true

[[killswitch.budgets]]
label = "eth-hot"
asset = "ETH"
max_amount = "250.5"
window_s = 3600

[killswitch.policy]
labels = ["eth-hot"]
dry_run = true

[[killswitch.hooks]]
name = "custody"
kind = "bitgo"
url = "https://custody.example"
token = "${KS_TEST_BITGO}"
coins = { ethereum = "eth" }
wallet_ids = { "ethereum:0xABC0000000000000000000000000000000000001" = "62f0" }
"""


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KS_TEST_ALERTS", "alerts-secret")
    monkeypatch.setenv("KS_TEST_GRAFANA", "grafana-secret")
    monkeypatch.setenv("KS_TEST_BITGO", "bitgo-token")


def _load(tmp_path: Path, text: str) -> object:
    path = tmp_path / "drainwatch.toml"
    path.write_text(text)
    return load_killswitch_settings(path)


def test_a_full_table_loads(tmp_path: Path) -> None:
    path = tmp_path / "drainwatch.toml"
    path.write_text(GOOD)
    s = load_killswitch_settings(path)
    assert s.port == 8711
    assert s.api_keys()["grafana"].roles == frozenset({Role.READ_ONLY})
    assert s.api_keys()["grafana"].bearer
    assert s.budgets[0].max_amount == Decimal("250.5")
    assert s.policy.dry_run
    assert s.hooks[0].wallet_ids == {"ethereum:0xabc0000000000000000000000000000000000001": "62f0"}
    assert s.label_of("ethereum", "0xAbC0000000000000000000000000000000000001") == "eth-hot"
    assert "alerts-secret" not in repr(s)


@pytest.mark.parametrize(
    ("change", "line", "key", "reason"),
    [
        (
            ("${KS_TEST_ALERTS}", "${KS_TEST_UNSET_VAR}"),
            12,
            "killswitch.keys[0].secret",
            "environment variable not set",
        ),
        (
            ('secret = "${KS_TEST_GRAFANA}"', 'secret = "grafana-secret"'),
            17,
            "killswitch.keys[1].secret",
            "a secret must be an ${ENV_VAR} reference",
        ),
        (
            ('roles = ["detector"]', 'roles = ["root"]'),
            13,
            "killswitch.keys[0].roles[0]",
            "Input should be",
        ),
        (
            ('label = "eth-hot"\nasset', 'label = "eth-hot"\nwallet = "ethereum:0x1"\nasset'),
            21,
            "killswitch.budgets[0]",
            "give exactly one of wallet or label",
        ),
        (
            ("window_s = 3600", "window_s = 0"),
            25,
            "killswitch.budgets[0].window_s",
            "greater than 0",
        ),
        (
            ('kind = "bitgo"', 'kind = "carrier-pigeon"'),
            33,
            "killswitch.hooks[0].kind",
            "Input should be",
        ),
    ],
)
def test_errors_name_the_line_and_the_key(
    tmp_path: Path, change: tuple[str, str], line: int, key: str, reason: str
) -> None:
    text = GOOD.replace(*change)
    assert text != GOOD
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, text)
    assert (caught.value.line, caught.value.key) == (line, key)
    assert reason in caught.value.reason
    assert "grafana-secret" not in str(caught.value)


def test_no_table_and_no_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no \\[killswitch\\] table"):
        _load(tmp_path, "[[wallets]]\nchain = 'nem'\naddress = 'N'\n")
    with pytest.raises(ConfigError, match="cannot read"):
        load_killswitch_settings(tmp_path / "absent.toml")
