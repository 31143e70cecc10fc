"""The backtest split over worker processes gives exactly the one-process result, or runs as one."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import orjson
import pytest

from detectors import BacktestInputError, DetectionEngine, partitioned, run_backtest
from detectors.approval import Approval
from detectors.evaluate import FixedRule
from detectors.partitioned import deal_wallets, run_parts
from detectors.traffic import DrainSpec, HotWalletSpec, config_toml, generate_traffic, write_jsonl
from drainwatch.config import Config, loads

START = datetime(2024, 3, 1, tzinfo=UTC)
DAY = 86400.0


def _fleet(drains: Mapping[int, tuple[DrainSpec, ...]] | None = None) -> list[HotWalletSpec]:
    return [
        HotWalletSpec(
            chain="ethereum" if i % 2 == 0 else "tron",
            asset="ETH" if i % 2 == 0 else "USDT",
            address=f"0x{0xA0 + i:040x}" if i % 2 == 0 else f"THOT{i:030d}",
            cold_address=f"0x{0xC0 + i:040x}" if i % 2 == 0 else f"TCOLD{i:029d}",
            label=f"hot-{i}",
            balance=Decimal("20000") if i % 2 == 0 else Decimal("30000000"),
            decimals=18 if i % 2 == 0 else 6,
            withdrawals_per_day=500,
            deposits_per_day=350,
            address_prefix="" if i % 2 == 0 else "T",
            drains=(drains or {}).get(i, ()),
        )
        for i in range(4)
    ]


@pytest.fixture(autouse=True)
def _small_rounds(monkeypatch: pytest.MonkeyPatch) -> None:
    # A few thousand lines per round: every test here goes through several rounds.
    monkeypatch.setattr(partitioned, "ROUND_LINES", 2000)
    monkeypatch.setattr(partitioned, "MAX_ROUND_LINES", 2000)


def _ledger_files(
    tmp_path: Path, wallets: list[HotWalletSpec], days: float
) -> tuple[Config, Path, Path]:
    traffic = generate_traffic(wallets, START, days=days, seed=5, panic_days=(2,))
    return (
        loads(config_toml(wallets)),
        write_jsonl(tmp_path / "transfers.jsonl", traffic.transfers),
        write_jsonl(tmp_path / "ledger.jsonl", traffic.ledger),
    )


def _files(tmp_path: Path, wallets: list[HotWalletSpec], days: float) -> tuple[Config, Path]:
    config, transfers, _ = _ledger_files(tmp_path, wallets, days)
    return config, transfers


def _both(
    config: Config, transfers: Path, tmp_path: Path, ledger: Path | None = None
) -> tuple[bytes, bytes]:
    one = run_backtest(config, transfers, ledger, tmp_path / "one.jsonl", workers=1)
    two = run_backtest(config, transfers, ledger, tmp_path / "two.jsonl", workers=2)
    fields = ("transfers_read", "watched_transfers", "ledger_entries", "alerts", "freezes")
    assert [getattr(one, f) for f in fields] == [getattr(two, f) for f in fields]
    return (tmp_path / "one.jsonl").read_bytes(), (tmp_path / "two.jsonl").read_bytes()


def _failing(
    config: Config, transfers: Path, ledger: Path | None, tmp_path: Path
) -> tuple[list[tuple[str, int, str]], list[bytes]]:
    """Run in one process and in two, each expected to fail: (path, line, reason) and the
    alerts written, per run."""
    errors = []
    outputs = []
    for workers in (1, 2):
        out = tmp_path / f"alerts-{workers}.jsonl"
        with pytest.raises(BacktestInputError) as caught:
            run_backtest(config, transfers, ledger, out, workers=workers)
        errors.append((caught.value.path, caught.value.line_number, caught.value.reason))
        outputs.append(out.read_bytes())
    return errors, outputs


def test_wallets_are_dealt_by_how_busy_they_are(tmp_path: Path) -> None:
    config, transfers = _files(tmp_path, _fleet(), days=1)
    groups = deal_wallets(config, transfers, 2)
    keys = [(w.chain.casefold(), w.address) for w in config.wallets]
    assert sorted(k for g in groups for k in g) == sorted(keys)  # each wallet in one group
    hot = {(w.chain.casefold(), w.address) for w in config.wallets if w.role == "hot"}
    assert [len(g & hot) for g in groups] == [2, 2]  # the busy ones are spread


def test_normal_traffic_in_two_processes_is_the_one_process_result(tmp_path: Path) -> None:
    # A single-wallet drain: alerts, but never two wallets together, so the merge stands.
    drain = DrainSpec(3.5 * DAY, "burst", 0.06, 5, 60)
    config, transfers = _files(tmp_path, _fleet({1: (drain,)}), days=5)
    split = run_parts(config, transfers, 2)
    assert split.resume_line is None, "no incident: the split result must be used"
    assert split.alerts
    one, two = _both(config, transfers, tmp_path)
    assert one == two
    freezes = [orjson.loads(line) for line in one.splitlines() if b'"freeze":true' in line]
    assert {a["wallet_label"] for a in freezes} == {"hot-1"}


def test_wallets_drained_together_are_judged_in_one_process_from_that_round_on(
    tmp_path: Path,
) -> None:
    at = 3.5 * DAY
    drains = {i: (DrainSpec(at + 90 * i, "burst", 0.06, 5, 60),) for i in range(4)}
    config, transfers = _files(tmp_path, _fleet(drains), days=5)
    lines = len(transfers.read_bytes().splitlines())
    split = run_parts(config, transfers, 2, round_lines=2000)
    assert split.resume_line is not None, "an incident across the groups: one process from it"
    # The rounds before the drain were settled in two processes, and their alerts kept.
    assert lines // 2 < split.resume_line < lines
    assert split.engine is not None
    assert split.read == split.resume_line - 1
    # Exactly the one-process alerts: the joined engine goes on as the sequential one would.
    one, two = _both(config, transfers, tmp_path)
    assert one == two
    alerts = [orjson.loads(line) for line in one.splitlines()]
    assert any(a["incident_id"] for a in alerts)  # correlation did act
    assert sum(a["detector"] == "correlation" for a in alerts) >= 1


def test_a_malformed_line_is_reported_and_the_alerts_before_it_kept(tmp_path: Path) -> None:
    drain = DrainSpec(1.5 * DAY, "burst", 0.06, 5, 60)
    config, transfers = _files(tmp_path, _fleet({2: (drain,)}), days=3)
    lines = transfers.read_bytes().splitlines()
    bad = len(lines) - 50
    lines[bad] = lines[bad].replace(b'"amount":"', b'"amount":"-')
    transfers.write_bytes(b"\n".join(lines) + b"\n")
    errors, outputs = _failing(config, transfers, None, tmp_path)
    assert errors[0] == errors[1] == (str(transfers), bad + 1, errors[0][2])
    assert "negative" in errors[0][2]
    assert outputs[0] == outputs[1]
    assert outputs[0].count(b'"freeze":true') >= 1


def test_the_hand_over_carries_cooldowns_and_the_correlators_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The round ends just before the incident forms: the wallets frozen before it, their
    # cooldowns and the correlator's recent findings must all reach the joined engine.
    at = 3.5 * DAY
    drains = {i: (DrainSpec(at + 240 * i, "burst", 0.06, 5, 60),) for i in range(4)}
    config, transfers = _files(tmp_path, _fleet(drains), days=5)
    rows = [orjson.loads(line) for line in transfers.read_bytes().splitlines()]
    line_of = {row["tx_hash"]: number for number, row in enumerate(rows, start=1)}
    run_backtest(config, transfers, None, tmp_path / "one.jsonl", workers=1)
    one = (tmp_path / "one.jsonl").read_bytes()
    alerts = [orjson.loads(line) for line in one.splitlines()]
    first = next(i for i, a in enumerate(alerts) if a["incident_id"])
    incident_line = line_of[alerts[first]["tx_hashes"][0]]
    assert any(a["freeze"] for a in alerts[:first]), "a wallet frozen before the incident"
    split = run_parts(config, transfers, 2, round_lines=incident_line - 1)
    assert split.resume_line == incident_line
    monkeypatch.setattr(partitioned, "ROUND_LINES", incident_line - 1)
    run_backtest(config, transfers, None, tmp_path / "two.jsonl", workers=2)
    assert (tmp_path / "two.jsonl").read_bytes() == one


def test_an_engine_refuses_to_adopt_what_it_cannot_join(tmp_path: Path) -> None:
    config, _ = _files(tmp_path, _fleet(), days=0.1)
    with pytest.raises(TypeError, match="fixed_rule"):
        DetectionEngine(config, detectors=[FixedRule()]).adopt(
            DetectionEngine(config, detectors=[FixedRule()])
        )
    # Engines of one split run learned the same approvals; others cannot be joined.
    learned = DetectionEngine(config, reconcile=True)
    learned.process_approval(
        Approval(START.timestamp(), "ethereum", "ETH", "0xc1", Decimal(1), None)
    )
    with pytest.raises(ValueError, match="ledger"):
        learned.adopt(DetectionEngine(config, reconcile=True))


def test_rounds_that_grow_still_give_the_one_process_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Rounds of 300 lines cost more in snapshots than 5% of their time: they double as they go.
    monkeypatch.setattr(partitioned, "ROUND_LINES", 300)
    monkeypatch.setattr(partitioned, "MAX_ROUND_LINES", 50_000)
    asked: list[int] = []
    ask = partitioned._Rounds.ask

    def recording(self: partitioned._Rounds, length: int) -> None:
        asked.append(length)
        ask(self, length)

    monkeypatch.setattr(partitioned._Rounds, "ask", recording)
    drain = DrainSpec(1.5 * DAY, "burst", 0.06, 5, 60)
    config, transfers = _files(tmp_path, _fleet({2: (drain,)}), days=3)
    one, two = _both(config, transfers, tmp_path)
    assert one == two
    assert asked[0] == 300
    assert max(asked) > 300  # grown
    assert asked == sorted(asked)  # never shrinks


def test_wallets_no_transfer_touched_are_named_with_the_chains_the_file_uses(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    at = 3.5 * DAY
    drains = {i: (DrainSpec(at + 90 * i, "burst", 0.06, 5, 60),) for i in range(4)}
    wallets = _fleet(drains)
    _, transfers = _files(tmp_path, wallets, days=5)
    # The config calls hot-1's chain "trx" where the file says "tron", and lists an idle wallet.
    text = config_toml(wallets).replace(
        f'chain = "tron"\naddress = "{wallets[1].address}"',
        f'chain = "trx"\naddress = "{wallets[1].address}"',
    )
    config = loads(text + '\n[[wallets]]\nchain = "tron"\naddress = "TIDLE"\nlabel = "idle"\n')
    assert config.wallets[2].chain == "trx"
    # What the workers saw before the hand-over reaches the one process that goes on.
    assert run_parts(config, transfers, 2, round_lines=2000).resume_line is not None
    expected = (("hot-1", ("tron",)), ("idle", ()))
    for workers in (1, 2):
        caplog.clear()
        summary = run_backtest(config, transfers, None, tmp_path / "a.jsonl", workers=workers)
        assert summary.unseen_wallets == expected
        warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert any("hot-1" in m and "'tron', not 'trx'" in m for m in warned), warned
        assert any(m.startswith("wallet idle ") for m in warned), warned


def test_lines_that_spell_a_wallet_otherwise_reach_its_worker(tmp_path: Path) -> None:
    # Routing looks addresses up as written and normalises only those that are not normal: a
    # hot wallet written checksum-style, with "0X", or padded, and a chain in capitals, must
    # still reach the worker that judges it, or its drain would go unjudged in the split run.
    drain = DrainSpec(1.5 * DAY, "burst", 0.06, 5, 60)
    wallets = _fleet({0: (drain,)})
    config, transfers = _files(tmp_path, wallets, days=3)
    plain = run_backtest(config, transfers, None, tmp_path / "plain.jsonl", workers=1)
    hot = wallets[0].address.encode()
    spellings = [
        b'"0x' + hot[2:].upper() + b'"',
        b'"0X' + hot[2:] + b'"',
        b'" ' + hot + b' "',
        b'"' + hot + b'"',
    ]
    lines = transfers.read_bytes().splitlines()
    respelled = [
        line.replace(b'"' + hot + b'"', spellings[number % len(spellings)]).replace(
            b'"chain":"ethereum"',
            b'"chain":"Ethereum"' if number % 3 == 0 else b'"chain":"ethereum"',
        )
        for number, line in enumerate(lines)
    ]
    assert respelled != lines
    other = tmp_path / "respelled.jsonl"
    other.write_bytes(b"\n".join(respelled) + b"\n")
    two = run_backtest(config, other, None, tmp_path / "two.jsonl", workers=2)
    assert (two.watched_transfers, two.alerts, two.freezes) == (
        plain.watched_transfers,
        plain.alerts,
        plain.freezes,
    )
    run_backtest(config, other, None, tmp_path / "one.jsonl", workers=1)
    two_alerts = (tmp_path / "two.jsonl").read_bytes()
    assert (tmp_path / "one.jsonl").read_bytes() == two_alerts
    freezes = [orjson.loads(x) for x in two_alerts.splitlines() if b'"freeze":true' in x]
    assert "hot-0" in {a["wallet_label"] for a in freezes}


def test_a_ledger_run_in_two_processes_is_the_one_process_result(tmp_path: Path) -> None:
    # Every worker hands every approval over; each wallet pays only its own customers, so no
    # approval is compared with two workers' outflows and the split result stands.
    drain = DrainSpec(2.5 * DAY, "burst", 0.002, 3, 60)  # small: only the ledger freezes at once
    config, transfers, ledger = _ledger_files(tmp_path, _fleet({2: (drain,)}), days=3)
    split = run_parts(config, transfers, 2, ledger=ledger)
    assert split.resume_line is None
    one, two = _both(config, transfers, tmp_path, ledger)
    assert one == two
    alerts = [orjson.loads(line) for line in one.splitlines()]
    ledger_freezes = [a for a in alerts if a["detector"] == "ledger" and a["freeze"]]
    assert [a["wallet_label"] for a in ledger_freezes][:1] == ["hot-2"]
    assert ledger_freezes[0]["metrics"]["approvals_to_address"] == "0"


def _eth_pair() -> list[HotWalletSpec]:
    return [w for w in _fleet() if w.chain == "ethereum"]


def test_two_workers_paying_one_approved_address_hand_over_to_one_process(
    tmp_path: Path,
) -> None:
    # Two hot wallets, one per worker, pay the same customer the same amount a minute apart, and
    # the ledger approved it once. In one process the first payment uses the approval up and the
    # second freezes its wallet; each worker alone would find the approval open. The split run
    # sees that both compared outflows with one approval and goes on in one process.
    config, transfers, ledger = _ledger_files(tmp_path, _eth_pair(), days=4)
    groups = deal_wallets(config, transfers, 2)
    hot = [w.address for w in config.wallets if w.role == "hot"]
    assert [sum((("ethereum", a) in g) for a in hot) for g in groups] == [1, 1]
    rows = transfers.read_bytes().splitlines()
    middle = len(rows) // 2
    ts = orjson.loads(rows[middle])["ts"]
    paid = [
        orjson.dumps(
            {
                "ts": ts,
                "chain": "ethereum",
                "asset": "ETH",
                "tx_hash": f"shared-{i}",
                "from": wallet,
                "to": "0x" + "5" * 40,
                "amount": "3.25",
            }
        )
        for i, wallet in enumerate(hot)
    ]
    transfers.write_bytes(b"\n".join([*rows[:middle], *paid, *rows[middle:]]) + b"\n")
    approvals = [orjson.loads(line) for line in ledger.read_bytes().splitlines()]
    approvals.append(
        {
            "ts": ts,
            "chain": "ethereum",
            "asset": "ETH",
            "to": "0x" + "5" * 40,
            "amount": "3.25",
            "withdrawal_id": "shared",
        }
    )
    approvals.sort(key=lambda row: row["ts"])
    write_jsonl(ledger, approvals)
    split = run_parts(config, transfers, 2, ledger=ledger)
    assert split.resume_line is not None
    assert 1 < split.resume_line <= middle + 1  # the rounds before were settled split
    assert split.approvals > 0  # the joined engine goes on with the ledger where it was
    one, two = _both(config, transfers, tmp_path, ledger)
    assert one == two
    second = [orjson.loads(line) for line in one.splitlines() if b"shared-1" in line]
    assert [(a["detector"], a["freeze"]) for a in second] == [("ledger", True)]


@pytest.mark.parametrize("where", ["middle", "tail"])
def test_a_malformed_ledger_line_stops_a_split_run_where_it_stops_one_process(
    tmp_path: Path, where: str
) -> None:
    drain = DrainSpec(1.5 * DAY, "burst", 0.06, 5, 60)
    config, transfers, ledger = _ledger_files(tmp_path, _fleet({2: (drain,)}), days=3)
    lines = ledger.read_bytes().splitlines()
    bad = len(lines) // 2 if where == "middle" else len(lines)
    if where == "middle":
        lines[bad] = lines[bad].replace(b'"amount":"', b'"amount":"-')
    else:  # after the last transfer's time: read only at the end
        lines.append(b'{"ts": "2030-01-01T00:00:00Z", "chain": "ethereum"}')
    ledger.write_bytes(b"\n".join(lines) + b"\n")
    errors, outputs = _failing(config, transfers, ledger, tmp_path)
    assert errors[0] == errors[1] == (str(ledger), bad + 1, errors[0][2])
    assert outputs[0] == outputs[1]
    assert outputs[0].count(b'"freeze":true') >= 1
