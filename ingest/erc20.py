"""ERC-20 on the wire: the Transfer log, ``transfer``/``transferFrom`` calldata, and the
``symbol()``/``decimals()`` answers (pure decoding; the EVM source does the calls).

>>> log = {"address": "0xToken", "topics": [TRANSFER_TOPIC, pad("0x" + "aa" * 20),
...        pad("0x" + "bb" * 20)], "data": "0x" + f"{10**18:064x}"}
>>> token, sender, recipient, amount = decode_transfer_log(log)
>>> token, sender[:6], recipient[:6], amount
('0xtoken', '0xaaaa', '0xbbbb', 1000000000000000000)
"""

from __future__ import annotations

import re
from typing import Any, Final

from eth_abi.abi import decode as abi_decode

from drainwatch.events import normalize_address

__all__ = [
    "DECIMALS_CALL",
    "SYMBOL_CALL",
    "TRANSFER_FROM_SELECTOR",
    "TRANSFER_SELECTOR",
    "TRANSFER_TOPIC",
    "decode_decimals",
    "decode_symbol",
    "decode_transfer_call",
    "decode_transfer_log",
    "pad",
]

TRANSFER_TOPIC: Final = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"
"""keccak256("Transfer(address,address,uint256)")."""
TRANSFER_SELECTOR: Final = "0xa9059cbb"
"""transfer(address,uint256)."""
TRANSFER_FROM_SELECTOR: Final = "0x23b872dd"
"""transferFrom(address,address,uint256)."""
SYMBOL_CALL: Final = "0x95d89b41"
DECIMALS_CALL: Final = "0x313ce567"

_SYMBOL_OK = re.compile(r"^[\x21-\x7e]{1,32}$")


def pad(address: str) -> str:
    """An address as a 32-byte log topic.

    >>> pad("0xAB")[-4:], len(pad("0xab"))
    ('00ab', 66)
    """
    return "0x" + normalize_address(address)[2:].rjust(64, "0")


def _bytes(value: Any) -> bytes:
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    text = str(value)
    return bytes.fromhex(text[2:] if text[:2] in ("0x", "0X") else text)


def _address(word: bytes) -> str:
    return "0x" + word[-20:].hex()


def decode_transfer_log(entry: Any) -> tuple[str, str, str, int] | None:
    """(token, from, to, amount) of an ERC-20 Transfer log, None for anything else.

    ERC-721 uses the same event signature with the token id as a third indexed topic; such logs
    (four topics, no data) are not fungible transfers and are left out.

    >>> decode_transfer_log({"address": "0x1", "topics": [TRANSFER_TOPIC, pad("0x2"),
    ...                      pad("0x3"), pad("0x4")], "data": "0x"}) is None
    True
    """
    topics = [_bytes(t) for t in entry["topics"]]
    data = _bytes(entry["data"])
    if len(topics) != 3 or "0x" + topics[0].hex() != TRANSFER_TOPIC or len(data) != 32:
        return None
    return (
        normalize_address(str(entry["address"])),
        _address(topics[1]),
        _address(topics[2]),
        int.from_bytes(data, "big"),
    )


def decode_transfer_call(sender: str, data: Any) -> tuple[str, str, int] | None:
    """(from, to, amount) that calldata to a token would move, None if it is not a plain
    ``transfer`` or ``transferFrom``.

    >>> to = "0x" + "cc" * 20
    >>> data = TRANSFER_SELECTOR + pad(to)[2:] + f"{5:064x}"
    >>> decode_transfer_call("0xAA", data) == ("0xaa", to, 5)
    True
    """
    raw = _bytes(data)
    selector = "0x" + raw[:4].hex()
    if selector == TRANSFER_SELECTOR and len(raw) >= 68:
        return normalize_address(sender), _address(raw[4:36]), int.from_bytes(raw[36:68], "big")
    if selector == TRANSFER_FROM_SELECTOR and len(raw) >= 100:
        return _address(raw[4:36]), _address(raw[36:68]), int.from_bytes(raw[68:100], "big")
    return None


def decode_symbol(result: Any) -> str | None:
    """A token's ``symbol()`` answer (an ABI string, or bytes32 as old tokens return), None if
    empty or not a plain printable symbol (a symbol is shown to people: no spoofing room).

    >>> decode_symbol("0x" + "20".rjust(64, "0") + "3".rjust(64, "0") + b"DAI".hex().ljust(64, "0"))
    'DAI'
    >>> decode_symbol("0x" + b"MKR".hex().ljust(64, "0"))
    'MKR'
    """
    raw = _bytes(result)
    text: str | None = None
    if len(raw) >= 64:
        try:
            (text,) = abi_decode(["string"], raw)
        except Exception:  # not an ABI string: maybe bytes32
            text = None
    if text is None and len(raw) == 32:
        text = raw.rstrip(b"\0").decode("utf-8", "replace")
    if text is None:
        return None
    text = text.strip()
    return text if _SYMBOL_OK.match(text) else None


def decode_decimals(result: Any) -> int | None:
    """A token's ``decimals()`` answer, None if missing or beyond 255.

    >>> decode_decimals("0x" + "6".rjust(64, "0")), decode_decimals("0x")
    (6, None)
    """
    raw = _bytes(result)
    if len(raw) < 32:
        return None
    value = int.from_bytes(raw[:32], "big")
    return value if value <= 255 else None
