"""Tests of the real-service harness itself: each service starts, works, and keeps its data."""

from __future__ import annotations

import time
import uuid

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.errors import KafkaTimeoutError

from tests.harness.services import (
    DEFAULT_BTC_MINING_ADDRESS,
    AnvilFactory,
    AnvilService,
    BtcdService,
    KafkaService,
    RpcError,
    ServiceStartError,
    json_rpc,
)

pytestmark = pytest.mark.services


def _produce(bootstrap: str, topic: str, value: bytes) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        producer.send(topic, key=b"k", value=value).get(timeout=30)
        producer.flush()
    finally:
        producer.close()


def _consume_all(bootstrap: str, topic: str, expected: int) -> list[bytes]:
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"g-{uuid.uuid4().hex}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    values: list[bytes] = []
    try:
        deadline = time.monotonic() + 30
        while len(values) < expected and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                values.extend(r.value for r in records)
    finally:
        consumer.close()
    return values


# -- Kafka ------------------------------------------------------------------------------------


def test_kafka_produce_and_consume(kafka: KafkaService, kafka_topic_prefix: str) -> None:
    topic = f"{kafka_topic_prefix}roundtrip"
    kafka.create_topics([topic])

    _produce(kafka.bootstrap_servers, topic, b"hello")

    assert _consume_all(kafka.bootstrap_servers, topic, 1) == [b"hello"]


def test_kafka_does_not_auto_create_topics(kafka: KafkaService, kafka_topic_prefix: str) -> None:
    topic = f"{kafka_topic_prefix}never-created"
    # A producer's metadata request asks the broker to auto-create; the broker must refuse.
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap_servers, max_block_ms=2000)
    try:
        with pytest.raises(KafkaTimeoutError):
            producer.send(topic, b"x").get(timeout=5)
    finally:
        producer.close()
    admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    try:
        assert topic not in admin.list_topics()
    finally:
        admin.close()


def test_kafka_message_survives_kill_and_restart() -> None:
    with KafkaService() as svc:
        topic = "crash-test"
        svc.create_topics([topic])
        _produce(svc.bootstrap_servers, topic, b"durable")
        bootstrap = svc.bootstrap_servers

        svc.kill()
        assert not svc.running
        svc.start()

        assert svc.bootstrap_servers == bootstrap  # same ports after a restart
        assert _consume_all(svc.bootstrap_servers, topic, 1) == [b"durable"]


# -- anvil ------------------------------------------------------------------------------------


def test_anvil_transaction_is_mined_into_a_block(anvil: AnvilService) -> None:
    sender, receiver = anvil.rpc("eth_accounts")[:2]
    before = int(anvil.rpc("eth_getBalance", [receiver, "latest"]), 16)

    tx_hash = anvil.rpc(
        "eth_sendTransaction", [{"from": sender, "to": receiver, "value": hex(12345)}]
    )
    receipt = anvil.wait_for_receipt(tx_hash)
    block = anvil.rpc("eth_getBlockByNumber", [receipt["blockNumber"], False])

    assert int(receipt["status"], 16) == 1
    assert tx_hash in block["transactions"]
    assert int(anvil.rpc("eth_getBalance", [receiver, "latest"]), 16) == before + 12345
    assert anvil.block_number() == int(receipt["blockNumber"], 16) == 1


def test_anvil_extra_args_are_passed(anvil_factory: AnvilFactory) -> None:
    node = anvil_factory("--no-mining", chain_id=1337)
    sender, receiver = node.rpc("eth_accounts")[:2]

    node.rpc("eth_sendTransaction", [{"from": sender, "to": receiver, "value": "0x1"}])

    assert int(node.rpc("eth_chainId"), 16) == 1337
    assert node.block_number() == 0  # --no-mining: the tx waits in the pool
    node.rpc("evm_mine")
    assert node.block_number() == 1


def test_anvil_rpc_errors_raise(anvil: AnvilService) -> None:
    with pytest.raises(RpcError) as info:
        anvil.rpc("eth_noSuchMethod")
    assert info.value.method == "eth_noSuchMethod"


def test_json_rpc_urllib_fallback_matches_httpx(anvil: AnvilService) -> None:
    via_urllib = json_rpc(anvil.url, "eth_chainId", use_httpx=False)
    via_httpx = json_rpc(anvil.url, "eth_chainId", use_httpx=True)
    assert via_urllib == via_httpx == hex(31337)


def test_anvil_chain_survives_graceful_restart(anvil: AnvilService) -> None:
    anvil.rpc("anvil_mine", [7])
    port = anvil.port

    anvil.restart()

    assert anvil.port == port
    assert anvil.block_number() == 7


def test_anvil_chain_survives_kill_after_periodic_dump(anvil: AnvilService) -> None:
    sender, receiver = anvil.rpc("eth_accounts")[:2]
    tx_hash = anvil.rpc("eth_sendTransaction", [{"from": sender, "to": receiver, "value": "0x2a"}])
    anvil.wait_for_receipt(tx_hash)
    anvil.rpc("anvil_mine", [4])
    balance = anvil.rpc("eth_getBalance", [receiver, "latest"])
    # --state-interval 1 dumps every second; wait for a dump that includes block 5.
    _wait_for_state_dump(anvil, after=time.time())

    anvil.restart(kill=True)

    assert anvil.block_number() == 5
    assert anvil.rpc("eth_getBalance", [receiver, "latest"]) == balance


def _wait_for_state_dump(anvil: AnvilService, *, after: float) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if anvil.state_path.exists() and anvil.state_path.stat().st_mtime > after + 0.1:
            time.sleep(0.2)  # let the write finish
            return
        time.sleep(0.1)
    raise AssertionError(f"anvil never dumped its state to {anvil.state_path}")


def test_start_failure_reports_log_tail() -> None:
    svc = AnvilService("--no-such-flag", startup_timeout=10)
    try:
        with pytest.raises(ServiceStartError, match="no-such-flag"):
            svc.start()
        assert not svc.running
    finally:
        svc.cleanup()


# -- btcd -------------------------------------------------------------------------------------


def test_btcd_session_node_answers(btcd: BtcdService) -> None:
    info = btcd.rpc("getblockchaininfo")
    assert info["chain"] == "regtest"
    assert btcd.mining_address == DEFAULT_BTC_MINING_ADDRESS


def test_btcd_mines_blocks_and_keeps_them_after_restart() -> None:
    with BtcdService() as node:
        hashes = node.generate(101)

        assert len(hashes) == 101
        assert node.block_count() == 101
        block1 = node.rpc("getblock", [hashes[0], 2])
        # btcd puts verbosity-2 transactions under "rawtx" (bitcoind uses "tx").
        coinbase_out = block1["rawtx"][0]["vout"][0]["scriptPubKey"]
        assert DEFAULT_BTC_MINING_ADDRESS in coinbase_out.get("addresses", [])

        node.restart()

        assert node.block_count() == 101
        assert node.rpc("getbestblockhash") == hashes[-1]
        assert node.btcctl("getblockcount").strip() == "101"


def test_btcd_chain_survives_kill() -> None:
    with BtcdService() as node:
        hashes = node.generate(5)

        node.kill()
        assert not node.running
        node.start()

        assert node.block_count() == 5
        assert node.rpc("getblockhash", [5]) == hashes[-1]
        assert len(node.generate(1)) == 1
        assert node.block_count() == 6


def test_btcd_without_preserve_chain_starts_fresh() -> None:
    # Documents btcd's own behaviour, which preserve_chain works around.
    with BtcdService(preserve_chain=False) as node:
        node.generate(3)

        node.restart()

        assert node.block_count() == 0
