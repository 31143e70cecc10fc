"""The backtest contract (DESIGN.md section 4) and the Coincheck drain over synthetic traffic."""

from __future__ import annotations

import gc
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

from detectors import BacktestFileError, BacktestInputError, run_backtest
from detectors.backtest import _read_approval, _read_approval_checked, time_ordered_ledger
from drainwatch.config import Config, load, loads
from tests.detectors.traffic import INCIDENT_PATH, CoincheckScenario, coincheck_scenario

CONTRACT_FIELDS = {
    "ts",
    "chain",
    "wallet",
    "severity",
    "detector",
    "freeze",
    "tx_hashes",
    "summary",
}


@dataclass(frozen=True)
class Run:
    scenario: CoincheckScenario
    alerts: list[dict[str, Any]]


def _run(scenario: CoincheckScenario, ledger: bool, out: Path) -> Run:
    summary = run_backtest(
        load(scenario.config_path),
        scenario.transfers_path,
        scenario.ledger_path if ledger else None,
        out,
    )
    alerts = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert summary.alerts == len(alerts)
    assert summary.watched_transfers == summary.transfers_read  # every line touches a wallet
    return Run(scenario, alerts)


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> CoincheckScenario:
    assert INCIDENT_PATH.is_file(), f"missing shared incident file {INCIDENT_PATH}"
    return coincheck_scenario(tmp_path_factory.mktemp("coincheck"))


@pytest.fixture(scope="module")
def plain(scenario: CoincheckScenario, tmp_path_factory: pytest.TempPathFactory) -> Run:
    return _run(scenario, False, tmp_path_factory.mktemp("plain") / "alerts.jsonl")


@pytest.fixture(scope="module")
def with_ledger(scenario: CoincheckScenario, tmp_path_factory: pytest.TempPathFactory) -> Run:
    return _run(scenario, True, tmp_path_factory.mktemp("ledger") / "alerts.jsonl")


def _ts(alert: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(alert["ts"])


def _first_freeze(run: Run) -> datetime:
    """The first freeze of the drained wallet once the drain started (DESIGN.md section 5)."""
    freezes = [
        _ts(a)
        for a in run.alerts
        if a["freeze"]
        and a["wallet"] == run.scenario.hot_wallet
        and _ts(a) >= run.scenario.incident_start
    ]
    assert freezes, "the Coincheck wallet was never frozen"
    return min(freezes)


def _normal(run: Run) -> list[dict[str, Any]]:
    """Alerts on normal traffic: after the first week, before the drain."""
    start = run.scenario.history_start + timedelta(days=7)
    return [a for a in run.alerts if start <= _ts(a) < run.scenario.incident_start]


def test_coincheck_is_frozen_at_the_first_big_transfer_at_the_latest(plain: Run) -> None:
    first = _first_freeze(plain)
    assert plain.scenario.incident_start <= first <= plain.scenario.first_big_transfer
    freeze = next(a for a in plain.alerts if a["freeze"] and _ts(a) == first)
    assert freeze["detector"] == "velocity"
    # The share depends on where the synthetic traffic left the balance; the shape does not.
    assert (
        "% of nem-hot drained in 2 min to 1 new address (after a 10 XEM test)"
        in (freeze["summary"])
    )


def test_with_a_ledger_the_test_transfer_already_freezes(with_ledger: Run) -> None:
    assert _first_freeze(with_ledger) == with_ledger.scenario.incident_start


@pytest.mark.parametrize("run_name", ["plain", "with_ledger"])
def test_no_false_freeze_and_little_noise_on_normal_traffic(
    run_name: str, request: pytest.FixtureRequest
) -> None:
    run: Run = request.getfixturevalue(run_name)
    normal = _normal(run)
    assert [a for a in normal if a["freeze"]] == []
    days = (run.scenario.incident_start - run.scenario.history_start).days - 7
    noisy = Counter(a["wallet"] for a in normal if a["severity"] in ("warning", "critical"))
    assert all(count / days <= 0.5 for count in noisy.values()), noisy


def test_alert_lines_carry_the_contract_fields(plain: Run) -> None:
    assert plain.alerts
    for alert in plain.alerts:
        assert alert.keys() >= CONTRACT_FIELDS
        assert alert["ts"].endswith("Z")
        assert alert["severity"] in ("info", "warning", "critical")
        assert isinstance(alert["freeze"], bool)
        assert isinstance(alert["tx_hashes"], list)
        assert all(isinstance(v, str) for v in alert["metrics"].values())
    # No tx hash was published for the drain: the backtest derives stable pseudo-hashes.
    drain = [a for a in plain.alerts if a["wallet"] == plain.scenario.hot_wallet and a["freeze"]]
    assert all(h.startswith("pseudo:") for h in drain[0]["tx_hashes"])


def test_backtest_output_is_deterministic(
    scenario: CoincheckScenario, plain: Run, tmp_path: Path
) -> None:
    again = _run(scenario, False, tmp_path / "again.jsonl")
    assert again.alerts == plain.alerts


# -- small files -----------------------------------------------------------------------------

CONFIG = """
[[wallets]]
chain = "nem"
address = "HOT"
label = "nem-hot"
opening_balance = "1000"

[[wallets]]
chain = "ethereum"
address = "0xAAaa000000000000000000000000000000000001"
asset = "ETH"
label = "eth-hot"
opening_balance = "2000000000000.000000000000000002"
"""
ETH_HOT = "0xaaaa000000000000000000000000000000000001"


def line(**fields: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "ts": "2018-01-25T15:02:00Z",
        "chain": "nem",
        "asset": "XEM",
        "tx_hash": "h",
        "from": "HOT",
        "to": "C1",
        "amount": "1",
    }
    row.update(fields)
    return {k: v for k, v in row.items() if v is not ...}


def write(path: Path, rows: Sequence[dict[str, Any] | bytes]) -> Path:
    path.write_bytes(
        b"".join((r if isinstance(r, bytes) else orjson.dumps(r)) + b"\n" for r in rows)
    )
    return path


def backtest(
    tmp_path: Path, rows: Sequence[dict[str, Any] | bytes], **kw: Any
) -> list[dict[str, Any]]:
    out = tmp_path / "alerts.jsonl"
    run_backtest(loads(CONFIG), write(tmp_path / "t.jsonl", rows), kw.get("ledger"), out)
    return [orjson.loads(x) for x in out.read_bytes().splitlines()]


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (b'{"ts": "2018-01-25T15:02:00Z", "chain": ', "invalid JSON"),
        (b"[1, 2]", "not a JSON object"),
        (line(amount=...), "missing field 'amount'"),
        (line(to=...), "missing field 'to'"),
        (line(amount="ten"), "not a decimal number"),
        (line(amount="-5"), "negative"),
        (line(amount="NaN"), "not finite"),
        (line(amount=True), "not a number"),
        (line(ts="2018-01-25T15:02:00"), "no UTC offset"),
        (line(ts="yesterday"), "not an ISO 8601 time"),
        (line(usd_value="cheap"), "usd_value"),
    ],
)
def test_malformed_line_names_file_and_line(
    tmp_path: Path, bad: dict[str, Any] | bytes, reason: str
) -> None:
    with pytest.raises(BacktestInputError) as caught:
        backtest(tmp_path, [line(), b"", line(tx_hash="h2"), bad])
    assert caught.value.line_number == 4
    assert caught.value.path == str(tmp_path / "t.jsonl")
    assert reason in caught.value.reason


@pytest.mark.parametrize("which", ["transfers", "ledger", "alerts", "alerts-dir"])
def test_a_file_that_cannot_be_read_or_written_is_named_before_any_work(
    tmp_path: Path, which: str
) -> None:
    transfers = write(tmp_path / "t.jsonl", [line()])
    ledger = write(tmp_path / "l.jsonl", [])
    out = tmp_path / "alerts.jsonl"
    out.write_bytes(b"kept\n")
    missing = tmp_path / "missing" / "x.jsonl"
    paths = {"transfers": transfers, "ledger": ledger, "alerts": out}
    if which == "alerts-dir":
        paths["alerts"] = tmp_path
    else:
        paths[which] = missing
    with pytest.raises(BacktestFileError) as caught:
        run_backtest(loads(CONFIG), paths["transfers"], paths["ledger"], paths["alerts"])
    action = "cannot write" if which.startswith("alerts") else "cannot read"
    assert str(caught.value) == (
        f"{paths[which[:6] if which.startswith('alerts') else which]}: {action}: "
        + ("Is a directory" if which == "alerts-dir" else "No such file or directory")
    )
    assert out.read_bytes() == b"kept\n"  # nothing was judged, nothing overwritten


def test_the_cli_names_a_missing_file_without_a_traceback(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(CONFIG)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "drainwatch",
            "backtest",
            "--config",
            str(config),
            "--transfers",
            str(tmp_path / "nope.jsonl"),
            "--alerts-out",
            str(tmp_path / "a"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"{tmp_path / 'nope.jsonl'}: cannot read: No such file or directory" in result.stderr


def test_a_time_with_another_offset_is_the_same_instant(tmp_path: Path) -> None:
    eth = {"chain": "ethereum", "asset": "ETH", "from": ETH_HOT, "to": "0xthief"}
    big = "1000000000000"

    def alerts_of(first: str, second: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any] | bytes] = [
            line(**eth, ts=first, amount=big, tx_hash="a"),
            line(**eth, ts=second, amount=big, tx_hash="b"),
        ]
        return backtest(tmp_path, rows)

    utc = alerts_of("2018-01-25T15:02:00Z", "2018-01-25T15:03:00.5Z")
    # Tokyo's clock, and RFC 3339's lower-case z: the same instants, the same alerts.
    tokyo = alerts_of("2018-01-26T00:02:00+09:00", "2018-01-25t15:03:00.5z")
    assert [a["ts"] for a in utc] == ["2018-01-25T15:02:00Z", "2018-01-25T15:03:00.500000Z"]
    assert tokyo == utc


CHECKSUMMED = "0xAbCd000000000000000000000000000000000001"


@pytest.mark.parametrize("workers", [1, 2])
def test_alerts_name_the_wallet_as_the_config_writes_it(tmp_path: Path, workers: int) -> None:
    config = loads(
        f'[[wallets]]\nchain = "Ethereum"\naddress = "{CHECKSUMMED}"\n'
        'opening_balance = "100"\n'
        '[[wallets]]\nchain = "NEM"\naddress = "NHOT"\nopening_balance = "100"\n'
    )
    eth = {"chain": "ethereum", "asset": "ETH"}
    rows: list[dict[str, Any] | bytes] = [
        # The transfers spell the address in lower case, then as the config does.
        line(**eth, ts="2018-01-25T15:02:00Z", tx_hash="a", amount="40", to="0x1",
             **{"from": CHECKSUMMED.lower()}),
        line(**eth, ts="2018-01-25T16:02:00Z", tx_hash="b", amount="40", to="0x2",
             **{"from": CHECKSUMMED}),
        line(ts="2018-01-25T17:02:00Z", chain="nem", tx_hash="c", amount="40", to="NX",
             **{"from": "NHOT"}),
    ]  # fmt: skip
    out = tmp_path / "alerts.jsonl"
    run_backtest(config, write(tmp_path / "t.jsonl", rows), None, out, workers=workers)
    alerts = [orjson.loads(x) for x in out.read_bytes().splitlines()]
    named = {a["tx_hashes"][-1]: (a["chain"], a["wallet"]) for a in alerts}
    assert named == {
        "a": ("Ethereum", CHECKSUMMED),
        "b": ("Ethereum", CHECKSUMMED),
        "c": ("NEM", "NHOT"),
    }
    assert alerts[0]["freeze"]


@pytest.mark.parametrize("workers", [1, 2])
def test_a_wallet_whose_chain_the_file_spells_otherwise_is_named(
    tmp_path: Path, workers: int
) -> None:
    config = loads(
        f'[[wallets]]\nchain = "eth"\naddress = "{CHECKSUMMED}"\nlabel = "eth-hot"\n'
        '[[wallets]]\nchain = "NEM"\naddress = "NHOT"\n'
    )
    rows: list[dict[str, Any] | bytes] = [
        line(chain="ethereum", asset="ETH", tx_hash="a", to="0x1", **{"from": CHECKSUMMED}),
        line(chain="nem", tx_hash="c", **{"from": "NHOT"}),
    ]
    out = tmp_path / "alerts.jsonl"
    summary = run_backtest(config, write(tmp_path / "t.jsonl", rows), None, out, workers=workers)
    assert summary.unseen_wallets == (("eth-hot", ("ethereum",)),)
    assert summary.watched_transfers == 1


def test_malformed_ledger_line(tmp_path: Path) -> None:
    ledger = write(tmp_path / "l.jsonl", [line(), line(ts="2018-01-25T15:02:00")])
    with pytest.raises(BacktestInputError) as caught:
        backtest(tmp_path, [line()], ledger=ledger)
    assert (caught.value.path, caught.value.line_number) == (str(ledger), 2)


_APPROVAL = (
    b'{"ts":"2018-01-25T15:01:00Z","chain":"ethereum","asset":"ETH","to":"0xabc1",'
    b'"amount":"2.50","withdrawal_id":"w1","tx_hash":"t1"}'
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (_APPROVAL, (1516892460.0, "ethereum", "ETH", "0xabc1", Decimal("2.50"), "t1")),
        # Read by the checked path; each gives the same approval as the usual spelling would.
        (
            _APPROVAL.replace(b"25T15:01:00Z", b"26T00:01:00+09:00"),
            (1516892460.0, "ethereum", "ETH", "0xabc1", Decimal("2.50"), "t1"),
        ),
        (
            _APPROVAL.replace(b"Z", b"z"),
            (1516892460.0, "ethereum", "ETH", "0xabc1", Decimal("2.50"), "t1"),
        ),
        (
            _APPROVAL.replace(b'"0xabc1"', b'" 0XABC1 "'),
            (1516892460.0, "ethereum", "ETH", "0xabc1", Decimal("2.50"), "t1"),
        ),
        (
            _APPROVAL.replace(b'"2.50"', b"2.5"),
            (1516892460.0, "ethereum", "ETH", "0xabc1", Decimal("2.5"), "t1"),
        ),
        (
            _APPROVAL.replace(b'"2.50"', b'"25E-1"'),
            (1516892460.0, "ethereum", "ETH", "0xabc1", Decimal("2.5"), "t1"),
        ),
        (
            _APPROVAL.replace(b'"2.50"', b"7"),
            (1516892460.0, "ethereum", "ETH", "0xabc1", Decimal(7), "t1"),
        ),
        (
            _APPROVAL.replace(b'"t1"', b'""'),
            (1516892460.0, "ethereum", "ETH", "0xabc1", Decimal("2.50"), None),
        ),
        (
            _APPROVAL.replace(b'"w1"', b"[1, 2]"),
            (1516892460.0, "ethereum", "ETH", "0xabc1", Decimal("2.50"), "t1"),
        ),
    ],
)
def test_ledger_lines_read_fast_or_checked_give_one_approval(
    raw: bytes, expected: tuple[object, ...]
) -> None:
    fast, checked = _read_approval(raw), _read_approval_checked(raw)
    fields = ("epoch", "chain", "asset", "to", "amount", "tx_hash")
    assert tuple(getattr(fast, f) for f in fields) == expected
    assert tuple(getattr(checked, f) for f in fields) == expected


@pytest.mark.parametrize(
    ("replace", "reason"),
    [
        ((b'"2.50"', b'"-2.5"'), "amount is negative"),
        ((b'"2.50"', b"-3"), "amount is negative"),
        ((b'"ETH"', b'" "'), "field 'asset' is not a non-empty string"),
        ((b'"0xabc1"', b'""'), "field 'to' is not a non-empty string"),
        ((b'"ethereum"', b"null"), "missing field 'chain'"),
        ((b"15:01:00Z", b"15:01:00"), "ts has no UTC offset"),
        ((b'"t1"', b"5"), "field 'tx_hash' is not a string"),
    ],
)
def test_a_malformed_ledger_line_says_what_is_wrong(
    tmp_path: Path, replace: tuple[bytes, bytes], reason: str
) -> None:
    ledger = tmp_path / "l.jsonl"
    ledger.write_bytes(_APPROVAL + b"\n" + _APPROVAL.replace(*replace) + b"\n")
    with pytest.raises(BacktestInputError, match=reason) as caught:
        backtest(tmp_path, [line()], ledger=ledger)
    assert caught.value.line_number == 2


@pytest.mark.parametrize("workers", [1, 2])
def test_approvals_no_listed_wallet_pays_are_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, workers: int
) -> None:
    # The nem wallet pays any asset; the Ethereum one only ETH. "eth" is not "ethereum".
    approvals = [
        {"ts": "2018-01-25T15:01:00Z", "chain": chain, "asset": asset, "to": "C", "amount": "1"}
        for chain, asset in [
            ("NEM", "XEM"),
            ("ethereum", "eth"),
            ("eth", "ETH"),
            ("ethereum", "DAI"),
        ]
    ]
    ledger = write(tmp_path / "l.jsonl", approvals)
    rows = [line(), line(chain="ethereum", asset="ETH", tx_hash="e", **{"from": ETH_HOT})]
    summary = run_backtest(
        loads(CONFIG),
        write(tmp_path / "t.jsonl", rows),
        ledger,
        tmp_path / "a.jsonl",
        workers=workers,
    )
    assert summary.unpayable_approvals == (("eth", "ETH"), ("ethereum", "DAI"))
    said = [r.getMessage() for r in caplog.records if "no listed wallet pays" in r.getMessage()]
    assert len(said) == 2
    assert "chain 'eth' and asset 'ETH'" in said[0]


def test_amounts_beyond_float_precision_are_exact(tmp_path: Path) -> None:
    eth = {"chain": "ethereum", "asset": "ETH", "from": ETH_HOT}
    rows: list[dict[str, Any] | bytes] = [
        line(**eth, to="0xthief", amount="1000000000000.000000000000000001", tx_hash="a"),
        # A JSON number beyond 64 bits, and a JSON float, read exactly too.
        b'{"ts": "2018-01-25T15:03:00Z", "chain": "ethereum", "asset": "ETH", "tx_hash": "b",'
        b' "from": "' + ETH_HOT.encode() + b'", "to": "0xthief",'
        b' "amount": 100000000000000000000000000001}',
        b'{"ts": "2018-01-25T15:04:00Z", "chain": "ethereum", "asset": "ETH", "tx_hash": "c",'
        b' "from": "' + ETH_HOT.encode() + b'", "to": "0xthief", "amount": 0.1}',
    ]
    alerts = backtest(tmp_path, rows)
    assert [a["metrics"]["amount"] for a in alerts] == [
        "1000000000000.000000000000000001",
        "100000000000000000000000000001",
        "0.1",
    ]
    assert alerts[0]["metrics"]["balance_after"] == "1000000000000.000000000000000001"


def test_duplicate_lines_count_once_and_batch_outputs_count_each(tmp_path: Path) -> None:
    same = line(amount="30", to="D")
    assert [a["freeze"] for a in backtest(tmp_path, [same, same])] == [False]
    # One transaction paying two outputs of 3% to one new address: 6% -> freeze.
    batch = [line(amount="30", to="D"), line(amount="30.0", to="D")]
    assert [a["freeze"] for a in backtest(tmp_path, batch)] == [False, True]


def test_missing_tx_hash_gets_a_stable_pseudo_hash(tmp_path: Path) -> None:
    alerts = backtest(tmp_path, [line(amount="400", tx_hash=None)])
    again = backtest(tmp_path, [line(amount="400", tx_hash=None)])
    assert alerts[0]["tx_hashes"] == again[0]["tx_hashes"]
    assert alerts[0]["tx_hashes"][0].startswith("pseudo:")


def test_chain_and_asset_must_match_the_wallet(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rows: list[dict[str, Any] | bytes] = [
        line(amount="900", chain="bitcoin"),
        line(amount="900", chain="ethereum", asset="USDT", **{"from": ETH_HOT}),
        line(amount="901", chain="ethereum", asset="USDT", **{"from": ETH_HOT}),
    ]
    out = tmp_path / "alerts.jsonl"
    summary = run_backtest(loads(CONFIG), write(tmp_path / "t.jsonl", rows), None, out, workers=1)
    assert (summary.transfers_read, summary.alerts) == (3, 0)
    assert summary.watched_transfers == 2  # the ETH wallet's lines, filtered by asset
    # Said once: the wallet moves an asset its config does not cover.
    said = [r.getMessage() for r in caplog.records if "not judged" in r.getMessage()]
    assert len(said) == 1
    assert "moves USDT, which its config covers only as 'ETH'" in said[0]


def test_ledger_is_merged_in_time_order(tmp_path: Path) -> None:
    ledger = write(
        tmp_path / "l.jsonl",
        [
            {
                "ts": "2018-01-25T15:01:00Z",
                "chain": "nem",
                "asset": "XEM",
                "to": "C1",
                "amount": "1",
                "withdrawal_id": "w1",
            }
        ],
    )
    alerts = backtest(
        tmp_path, [line(), line(ts="2018-01-25T15:05:00Z", tx_hash="x")], ledger=ledger
    )
    assert [(a["ts"], a["detector"], a["freeze"]) for a in alerts] == [
        ("2018-01-25T15:05:00Z", "ledger", True)
    ]


def _approval_row(ts: str, to: str, withdrawal_id: str) -> dict[str, Any]:
    return {"ts": ts, "chain": "nem", "asset": "XEM", "to": to, "amount": "1",
            "withdrawal_id": withdrawal_id}  # fmt: skip


# Each customer is paid a minute after its approval; the ledger lists the withdrawals by id,
# so the latest approval (w10, to C9) comes first.
_BY_ID = [
    _approval_row("2018-01-25T16:00:00Z", "C9", "w10"),
    _approval_row("2018-01-25T15:01:00Z", "C1", "w2"),
    _approval_row("2018-01-25T15:31:00Z", "C2", "w3"),
]
_PAYMENTS = [
    line(ts="2018-01-25T15:02:00Z", to="C1", tx_hash="p1"),
    line(ts="2018-01-25T15:32:00Z", to="C2", tx_hash="p2"),
    line(ts="2018-01-25T16:01:00Z", to="C9", tx_hash="p9"),
]


@pytest.mark.parametrize("workers", [1, 2])
def test_a_ledger_out_of_time_order_is_read_in_time_order(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, workers: int
) -> None:
    # Read in file order, w10 (16:00) held back w2 and w3 until 15:58, and the payments to C1
    # and C2 froze the wallet as unapproved.
    ledger = write(tmp_path / "l.jsonl", _BY_ID)
    out = tmp_path / "alerts.jsonl"
    summary = run_backtest(
        loads(CONFIG), write(tmp_path / "t.jsonl", _PAYMENTS), ledger, out, workers=workers
    )
    assert out.read_bytes() == b""
    assert (summary.ledger_entries, summary.freezes) == (3, 0)
    said = [r.getMessage() for r in caplog.records if "not in time order" in r.getMessage()]
    assert said == [f"{ledger} is not in time order (line 2 is 3540 s before the line above it): "
                    "its approvals are read in time order"]  # fmt: skip
    # A payment no approval explains still freezes at once.
    thief = line(ts="2018-01-25T15:40:00Z", to="THIEF", tx_hash="t")
    alerts = backtest(tmp_path, [*_PAYMENTS[:2], thief], ledger=ledger)
    assert [(a["ts"], a["detector"], a["freeze"]) for a in alerts] == [
        ("2018-01-25T15:40:00Z", "ledger", True)
    ]


def test_a_ledger_in_time_order_is_read_as_it_is(tmp_path: Path) -> None:
    ledger = write(tmp_path / "l.jsonl", [_BY_ID[1], _BY_ID[2], _BY_ID[0]])
    with time_ordered_ledger(ledger) as read:
        assert read == ledger
    with time_ordered_ledger(write(tmp_path / "by-id.jsonl", _BY_ID)) as read:
        assert read is not None
        assert read != tmp_path / "by-id.jsonl"
        assert [orjson.loads(x)["withdrawal_id"] for x in read.read_bytes().splitlines()] == [
            "w2",
            "w3",
            "w10",
        ]
    assert not read.exists()  # the sorted copy lasts as long as the context


@pytest.mark.parametrize("workers", [1, 2])
def test_a_malformed_line_of_a_ledger_out_of_order_names_the_files_own_line(
    tmp_path: Path, workers: int
) -> None:
    bad = {**_BY_ID[2], "amount": "-1"}
    ledger = write(tmp_path / "l.jsonl", [*_BY_ID[:2], bad])
    with pytest.raises(BacktestInputError, match="amount is negative") as caught:
        run_backtest(
            loads(CONFIG),
            write(tmp_path / "t.jsonl", _PAYMENTS),
            ledger,
            tmp_path / "alerts.jsonl",
            workers=workers,
        )
    assert (caught.value.path, caught.value.line_number) == (str(ledger), 3)


@pytest.mark.parametrize("workers", [1, 2])
def test_an_approval_naming_a_flagged_payment_says_it_is_explained(
    tmp_path: Path, workers: int
) -> None:
    # The ledger names the payment's tx hash but was written eight minutes after it (beyond the
    # two minutes read ahead): the payment freezes, and the approval, when its time comes,
    # explains it in an info alert.
    approved = {**_approval_row("2018-01-25T15:10:00Z", "C1", "w1"), "tx_hash": "p1"}
    ledger = write(tmp_path / "l.jsonl", [approved])
    rows: list[dict[str, Any] | bytes] = [
        line(ts="2018-01-25T15:02:00Z", to="C1", tx_hash="p1"),
        line(ts="2018-01-25T15:20:00Z", tx_hash="x", **{"from": "ELSEWHERE"}),
    ]
    out = tmp_path / "alerts.jsonl"
    run_backtest(loads(CONFIG), write(tmp_path / "t.jsonl", rows), ledger, out, workers=workers)
    alerts = [orjson.loads(x) for x in out.read_bytes().splitlines()]
    assert [(a["ts"], a["detector"], a["severity"], a["freeze"]) for a in alerts] == [
        ("2018-01-25T15:02:00Z", "ledger", "critical", True),
        ("2018-01-25T15:02:00Z", "ledger_explained", "info", False),
    ]
    assert alerts[1]["tx_hashes"] == ["p1"]


def test_progress_bar_does_not_change_results(tmp_path: Path) -> None:
    config: Config = loads(CONFIG)
    path = write(tmp_path / "t.jsonl", [line(amount="400")])
    quiet = run_backtest(config, path, None, tmp_path / "a.jsonl")
    loud = run_backtest(config, path, None, tmp_path / "b.jsonl", progress=True)
    assert (quiet.alerts, quiet.freezes) == (loud.alerts, loud.freezes) == (1, 1)
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()


_CYCLES = """
import gc, sys
from detectors import run_backtest
from drainwatch.config import load
config, transfers, ledger, out = sys.argv[1:]
gc.collect()
gc.disable()
summary = run_backtest(load(config), transfers, ledger or None, out, workers=1)
print(summary.freezes, gc.collect())
"""


def replay_garbage(config: str, transfers: str, ledger: str, out: Path) -> tuple[int, int]:
    """Replay in a fresh interpreter with the cycle collector off: (freezes, cyclic garbage)."""
    result = subprocess.run(
        [sys.executable, "-c", _CYCLES, config, transfers, ledger, str(out)],
        check=True,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    freezes, garbage = map(int, result.stdout.split())
    return freezes, garbage


@pytest.mark.parametrize("ledger", [False, True])
def test_a_replay_leaves_no_cyclic_garbage(
    scenario: CoincheckScenario, tmp_path: Path, ledger: bool
) -> None:
    # The backtest pauses the cycle collector (detectors.backtest.collector_paused): that is only
    # sound while the replay frees everything by reference counting, alerts and freezes included.
    # In a fresh interpreter: other tests' server threads make garbage of their own meanwhile.
    ledger_arg = str(scenario.ledger_path) if ledger else ""
    freezes, garbage = replay_garbage(
        str(scenario.config_path),
        str(scenario.transfers_path),
        ledger_arg,
        tmp_path / "alerts.jsonl",
    )
    assert freezes > 0
    assert garbage == 0


def test_the_collector_is_resumed_after_a_replay_even_a_failed_one(tmp_path: Path) -> None:
    config = loads('[[wallets]]\nchain = "nem"\naddress = "HOT"\nlabel = "h"\n')
    bad = tmp_path / "t.jsonl"
    bad.write_text('{"ts": "2018-01-25T15:02:00Z"}\n')
    assert gc.isenabled()
    with pytest.raises(BacktestInputError):
        run_backtest(config, bad, None, tmp_path / "alerts.jsonl", workers=1)
    assert gc.isenabled()
    assert not gc.get_freeze_count()
