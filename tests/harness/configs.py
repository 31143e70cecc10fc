"""Config text the end-to-end tests share: one hot and one cold wallet watched on anvil."""

from __future__ import annotations

from pathlib import Path

from tests.harness.services import AnvilService

__all__ = ["anvil_wallets_toml"]


def anvil_wallets_toml(
    directory: Path, anvil: AnvilService, hot: str, cold: str, *, chain: str, pending: bool = True
) -> str:
    """``state_dir``, ``eth-hot-1`` and ``eth-cold-1`` on ``chain``, watched from the next block.

    The caller appends its own ``[alerts]`` section (and a bus, when it has one).
    """
    start = int(anvil.rpc("eth_blockNumber", []), 16) + 1
    return f"""
state_dir = "{directory / "state"}"

[[wallets]]
chain = "{chain}"
address = "{hot}"
label = "eth-hot-1"

[[wallets]]
chain = "{chain}"
address = "{cold}"
label = "eth-cold-1"
role = "cold"

[chains.{chain}]
kind = "evm"
rpc = ["{anvil.url}"]
confirmations = 0
poll_interval_s = 0.2
start_block = {start}
{"" if pending else 'pending = "off"'}
"""
