"""Config loading: defaults, secrets by reference, and errors naming file, line and key."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from drainwatch.config import ConfigError, load, loads

MINIMAL = """
[[wallets]]
chain = "ethereum"
address = "0xAbCd000000000000000000000000000000000001"
"""

FULL = """
state_dir = "/tmp/dw"

[[wallets]]
chain = "ethereum"
address = "0xAbCd000000000000000000000000000000000001"
label = "eth-hot-1"
role = "hot"
opening_balance = "1250.5"

[[wallets]]
chain = "ethereum"
address = "0x00000000000000000000000000000000000000c0"
label = "eth-cold"
role = "cold"

[chains.ethereum]
kind = "evm"
rpc = ["http://127.0.0.1:8545"]
confirmations = 12

[alerts]
killswitch_url = "http://127.0.0.1:8700"
killswitch_token = "${DW_TEST_TOKEN}"
"""


def test_a_file_with_only_wallets_works() -> None:
    cfg = loads(MINIMAL)
    (wallet,) = cfg.wallets
    assert wallet.address == "0xabcd000000000000000000000000000000000001"
    assert wallet.role == "hot"
    assert cfg.bus.kind == "embedded"
    assert cfg.chains == {}


def test_full_file_with_secret_reference(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DW_TEST_TOKEN", "s3cret")
    path = tmp_path / "drainwatch.toml"
    path.write_text(FULL)
    cfg = load(path)
    assert cfg.alerts.killswitch_token == "s3cret"
    assert cfg.wallets[0].opening_balance == Decimal("1250.5")
    assert cfg.chains["ethereum"].confirmations == 12
    assert [w.label for w in cfg.wallets_on("ethereum")] == ["eth-hot-1", "eth-cold"]


def test_missing_secret_names_the_key_and_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DW_TEST_TOKEN", raising=False)
    with pytest.raises(ConfigError) as info:
        loads(FULL, path="dw.toml")
    assert info.value.line == 24
    assert info.value.key == "alerts.killswitch_token"
    assert str(info.value).startswith("dw.toml:24: alerts.killswitch_token:")


@pytest.mark.parametrize(
    ("text", "line", "key"),
    [
        (MINIMAL + 'role = "warm"\n', 5, "wallets[0].role"),
        (MINIMAL + 'opening_balance = "-3"\n', 5, "wallets[0].opening_balance"),
        (MINIMAL + "colour = 1\n", 5, "wallets[0].colour"),
        (MINIMAL + "\n[chains.ethereum]\nkind = 'evm'\nrpc = []\n", 8, "chains.ethereum.rpc"),
        (
            MINIMAL + "\n[chains.ethereum]\nkind = 'cosmos'\nrpc = ['x']\n",
            7,
            "chains.ethereum.kind",
        ),
        ("[bus]\nkind = 'embedded'\n", 1, "wallets"),
    ],
)
def test_validation_errors_name_file_line_and_key(text: str, line: int, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        loads(text, path="drainwatch.toml")
    assert (info.value.path, info.value.line, info.value.key) == ("drainwatch.toml", line, key)
    assert f"drainwatch.toml:{line}: {key}:" in str(info.value)


def test_second_wallet_error_points_at_the_second_block() -> None:
    text = MINIMAL + '\n[[wallets]]\nchain = "bitcoin"\naddress = "1A"\nrole = "lukewarm"\n'
    with pytest.raises(ConfigError) as info:
        loads(text)
    assert (info.value.line, info.value.key) == (9, "wallets[1].role")


def test_toml_syntax_error_names_the_line() -> None:
    with pytest.raises(ConfigError) as info:
        loads(MINIMAL + "label = \n", path="bad.toml")
    assert info.value.line == 5
    assert "bad.toml:5" in str(info.value)


def test_unreadable_file() -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load("/nonexistent/drainwatch.toml")


def test_duplicate_wallets_are_refused() -> None:
    with pytest.raises(ConfigError, match="listed twice"):
        loads(MINIMAL + MINIMAL.replace("0xAbCd", "0xABCD"))


def test_the_timeline_and_the_outbox_live_in_the_state_dir_unless_named(tmp_path: Path) -> None:
    base = '[[wallets]]\nchain = "nem"\naddress = "HOT"\nlabel = "h"\n'
    config = loads(f'state_dir = "{tmp_path / "state"}"\n' + base)
    assert config.alerts.timeline_path == str(tmp_path / "state" / "timeline.sqlite3")
    assert config.alerts.outbox_path == str(tmp_path / "state" / "outbox.sqlite3")
    named = loads(base + '[alerts]\ntimeline_path = "/srv/tl.sqlite3"\n')
    assert named.alerts.timeline_path == "/srv/tl.sqlite3"  # as written
    assert named.alerts.outbox_path == str(Path(".drainwatch") / "outbox.sqlite3")
