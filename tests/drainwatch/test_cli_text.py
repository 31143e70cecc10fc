"""What the ``drainwatch`` command prints: help texts whole, errors on one line."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from drainwatch.cli import app
from drainwatch.cli_errors import fail

_TABLE = re.compile(r"\[[a-z_.]+\]")
"""A TOML table named in a help text the way the config writes it: ``[bus]``, ``[alerts]``."""


# typer builds its commands with a click of its own (typer._click): read them by their attributes
def _commands(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, (*path, name))


def _helps(command: Any) -> Iterator[str]:
    yield command.help or ""
    yield from (sub.help or "" for sub in getattr(command, "commands", {}).values())
    yield from (getattr(p, "help", None) or "" for p in command.params)


COMMANDS = list(_commands(typer.main.get_command(app)))


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_every_toml_table_a_help_text_names_is_printed(path: tuple[str, ...], command: Any) -> None:
    # rich reads "[bus]" as a style tag and drops it unless the text escapes it ("\\[bus]")
    named = {m.replace("\\", "") for h in _helps(command) for m in _TABLE.findall(h)}
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert {t for t in named if t not in result.output} == set()


def test_the_help_texts_are_all_read() -> None:
    helps = [h for _, c in COMMANDS for h in _helps(c)]
    assert "Override the config's bus.kind." in helps
    assert len(COMMANDS) > 15


def test_an_error_is_one_line_with_its_brackets(capsys: pytest.CaptureFixture[str]) -> None:
    path = "/a/long/" + "deep/" * 20 + "[x].jsonl"
    exit_ = fail(f"{path}: cannot read: No such file or directory", 3)
    assert exit_.exit_code == 3
    assert capsys.readouterr().err == f"error: {path}: cannot read: No such file or directory\n"


LIVE = """\
[chains.ethereum]
kind = "evm"
rpc = ["http://127.0.0.1:1"]

[[wallets]]
chain = "ethereum"
address = "0x00000000000000000000000000000000000000aa"
label = "eth-hot"

[[wallets]]
chain = "bitcoin"
address = "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq"
label = "btc-hot"

[[wallets]]
chain = "nem"
address = "NHOT"
label = "nem-hot"
"""


@pytest.mark.parametrize("stage", ["all", "ingest"])
def test_a_live_run_refuses_a_wallet_no_chain_table_watches(tmp_path: Path, stage: str) -> None:
    config = tmp_path / "live.toml"
    config.write_text(LIVE)
    result = CliRunner().invoke(app, ["run", stage, "--config", str(config)])
    assert result.exit_code == 2
    assert result.output == (
        f"error: {config}:11: wallets[1].chain: no [chains.bitcoin] table, so nothing would "
        "watch btc-hot (and 1 more wallet): a live run needs one per chain it watches (a "
        "backtest needs none)\n"
    )


def test_check_config_names_the_wallets_a_live_run_would_not_watch(tmp_path: Path) -> None:
    config = tmp_path / "live.toml"
    config.write_text(LIVE)
    result = CliRunner().invoke(app, ["check-config", "--config", str(config)])
    assert result.exit_code == 0
    assert result.output.splitlines()[1] == (
        "not watched live (no [chains.*] table for bitcoin, nem; fine for a backtest): "
        "btc-hot, nem-hot"
    )


@pytest.mark.parametrize(
    ("moment", "starts", "ends"),
    [
        (
            "2020-01-01T00:00:00Z",
            "transfers before 2020-01-01T00:00:00Z are learned from, not judged",
            "([detection] learn_until)",
        ),
        (
            "2999-01-01T09:00:00+09:00",  # said in UTC
            "[detection] learn_until is 2999-01-01T00:00:00Z, ",
            " h from now: until then no transfer raises an alert or freezes a wallet",
        ),
    ],
)
def test_check_config_says_until_when_history_is_only_learned(
    tmp_path: Path, moment: str, starts: str, ends: str
) -> None:
    # A go-live moment still to come is right during a backfill, and fails open as a typo.
    config = tmp_path / "live.toml"
    config.write_text(f"{LIVE}\n[detection]\nlearn_until = {moment}\n")
    result = CliRunner().invoke(app, ["check-config", "--config", str(config)])
    assert result.exit_code == 0
    line = result.output.splitlines()[1]
    assert line.startswith(starts)
    assert line.endswith(ends)
