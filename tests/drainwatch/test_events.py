"""The event contract: exact amounts, aware UTC times, deterministic ids, tolerant readers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest
from pydantic import ValidationError

from drainwatch.events import (
    ALERTS,
    TRANSFERS,
    Alert,
    DecodeError,
    Direction,
    Severity,
    Transfer,
    TransferStatus,
    decode,
    is_normal_address,
    normalize_address,
)

T0 = datetime(2018, 1, 25, 15, 2, tzinfo=UTC)


def make_transfer(**overrides: object) -> Transfer:
    fields: dict[str, object] = {
        "chain": "ethereum",
        "wallet": "0xAAAA000000000000000000000000000000000001",
        "direction": Direction.OUT,
        "counterparty": "0xBBBB000000000000000000000000000000000002",
        "asset": "ETH",
        "amount": 10**18,
        "decimals": 18,
        "tx_hash": "0x01",
        "position": 0,
        "time": T0,
    }
    fields.update(overrides)
    return Transfer.create(**fields)


def test_amount_beyond_float_range_round_trips_exactly() -> None:
    amount = 10**40 + 1
    t = make_transfer(amount=amount)
    wire = t.to_json()
    assert orjson.loads(wire)["amount"] == str(amount)
    back = decode(TRANSFERS, wire, Transfer)
    assert back.amount == amount
    assert str(back.value) == "10000000000000000000000.000000000000000001"


def test_ids_are_deterministic_and_distinguish_direction_and_position() -> None:
    a = make_transfer()
    assert a.id == make_transfer().id
    assert a.id != make_transfer(direction=Direction.IN).id
    assert a.id != make_transfer(position=1).id
    # the same address written in another case is the same wallet
    assert a.id == make_transfer(wallet=a.wallet.upper().replace("0X", "0x")).id


def test_times_are_normalised_to_utc_and_naive_times_refused() -> None:
    jst = timezone(timedelta(hours=9))
    t = make_transfer(time=datetime(2018, 1, 26, 0, 2, tzinfo=jst))
    assert t.time == T0
    assert t.time.utcoffset() == timedelta(0)
    with pytest.raises(ValidationError):
        make_transfer(time=datetime(2018, 1, 25, 15, 2))


def test_writers_are_strict_readers_tolerant() -> None:
    with pytest.raises(ValidationError):
        Transfer.create(**make_transfer().model_dump(), colour="red")
    data = orjson.loads(make_transfer().to_json())
    data["added_in_v2"] = {"anything": 1}
    assert decode(TRANSFERS, orjson.dumps(data)) == make_transfer()


def test_events_are_frozen() -> None:
    t = make_transfer()
    with pytest.raises(ValidationError):
        t.amount = 5  # type: ignore[misc]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{", "invalid JSON"),
        (b"[1]", "not a JSON object"),
        (b'{"chain": "x"}', "id: Field required"),
        (orjson.dumps({**orjson.loads(make_transfer().to_json()), "amount": "-1"}), "amount"),
        (orjson.dumps({**orjson.loads(make_transfer().to_json()), "amount": 1.5}), "amount"),
    ],
)
def test_decode_rejects_malformed_messages(payload: bytes, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        decode(TRANSFERS, payload)


def test_alert_round_trip_and_severity_order() -> None:
    alert = Alert(
        id="a1",
        time=T0,
        detected_at=T0 + timedelta(seconds=1),
        chain="nem",
        wallet="NC3BI3DNMR2PGEOOMP2NKXQGSAKMS7GYRKVA5CSZ",
        severity=Severity.CRITICAL,
        detector="velocity",
        freeze=True,
        summary="19% drained",
        metrics={"share": "0.1912"},
        tx_hashes=("h1",),
    )
    assert decode(ALERTS, alert.to_json()) == alert
    assert alert.key == "nem:NC3BI3DNMR2PGEOOMP2NKXQGSAKMS7GYRKVA5CSZ"
    ranks = sorted(Severity, key=lambda s: s.rank)
    assert ranks == [Severity.INFO, Severity.WARNING, Severity.CRITICAL]


def test_status_defaults_to_confirmed() -> None:
    assert make_transfer().status is TransferStatus.CONFIRMED


_ADDRESSES = [
    "0xabcdef0000000000000000000000000000000001",
    "0xABCDEF0000000000000000000000000000000001",
    "0XABCDEF0000000000000000000000000000000001",
    "0Xabcdef0000000000000000000000000000000001",
    "0x0000000000000000000000000000000000000000",
    " 0xabcdef0000000000000000000000000000000001",
    "0xabcdef0000000000000000000000000000000001\t",
    "1BoatSLRHtKNngkdXEeobR76b53LETtpyT",
    " 1BoatSLRHtKNngkdXEeobR76b53LETtpyT ",
    "NB3B39D350413930B15B72A370A065B823BC6F0D6",
    "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq",
    "TXYZopYRdj2D9XRtbG411XZZ3kM5VkAeBf",
    "0x",
    "",
    "0xÄbc",
]


@pytest.mark.parametrize("address", _ADDRESSES)
def test_an_address_said_to_be_normal_is_left_as_it_is(address: str) -> None:
    # Routing trusts is_normal_address to skip normalising; it must never say so wrongly.
    normal = normalize_address(address)
    assert normalize_address(normal) == normal  # idempotent
    if is_normal_address(address):
        assert normal == address
    if normal.isalnum():  # and a normalised address is known as normal: no second normalising
        assert is_normal_address(normal)


def test_evm_addresses_in_any_case_are_one_address() -> None:
    lower = "0xabcdef0000000000000000000000000000000001"
    for spelled in (lower, lower.upper().replace("0X", "0x"), "0X" + lower[2:], f" {lower} "):
        assert normalize_address(spelled) == lower
    assert normalize_address("NB3B39D35") == "NB3B39D35"  # other chains keep their case
