"""Session-wide fixtures that start the real services (Kafka, anvil, btcd).

Only harness fixtures live here. A fixture whose service cannot start fails the test (it never
skips): the services are part of the test environment, installed by
``scripts/install-services.sh`` (run automatically on first use if the cache is empty).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.harness.services import AnvilFactory, AnvilService, BtcdService, KafkaService


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "services: needs real services (Kafka, anvil, btcd) started by tests/harness"
    )


@pytest.fixture(scope="session")
def kafka() -> Iterator[KafkaService]:
    """One single-node KRaft broker for the whole session (use ``kafka_topic_prefix``)."""
    with KafkaService() as svc:
        yield svc


@pytest.fixture
def kafka_topic_prefix() -> str:
    """A unique topic-name prefix per test, so tests sharing the broker never collide."""
    return f"t-{uuid.uuid4().hex[:12]}-"


@pytest.fixture
def anvil_factory() -> Iterator[AnvilFactory]:
    """Start extra anvil nodes: ``anvil_factory("--no-mining", chain_id=1)``.

    Positional arguments are passed to anvil; keyword arguments go to :class:`AnvilService`.
    Every node started through the factory is stopped and removed at the end of the test.
    """
    started: list[AnvilService] = []

    def make(*args: str, **kwargs: Any) -> AnvilService:
        svc = AnvilService(*args, **kwargs)
        started.append(svc)
        return svc.start()

    yield make
    for svc in reversed(started):
        svc.cleanup()


@pytest.fixture
def anvil(anvil_factory: AnvilFactory) -> AnvilService:
    """A fresh anvil node (chain id 31337, instant mining) for one test."""
    return anvil_factory()


@pytest.fixture(scope="session")
def btcd() -> Iterator[BtcdService]:
    """One btcd regtest node for the whole session; coinbase goes to ``btcd.mining_address``."""
    with BtcdService() as svc:
        yield svc
