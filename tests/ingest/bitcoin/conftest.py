"""Fixtures for the Bitcoin watcher tests: one btcd regtest node mining to a bitcoinlib key."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.harness.services import BtcdService
from tests.ingest.bitcoin.rig import FlakyProxy, Node, addr, new_key


@pytest.fixture(scope="session")
def miner() -> Any:
    return new_key()


@pytest.fixture(scope="session")
def node(miner: Any) -> Iterator[Node]:
    """A btcd regtest node of our own: coinbase to a bitcoinlib key, 120 blocks mined."""
    with BtcdService(mining_address=addr(miner)) as svc:
        n = Node(svc, miner)
        n.mine(120)
        yield n


@pytest.fixture
def flaky(node: Node) -> Iterator[FlakyProxy]:
    proxy = FlakyProxy(node.url)
    yield proxy
    proxy.close()
