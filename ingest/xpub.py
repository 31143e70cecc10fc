"""Bitcoin addresses and extended keys: which addresses a configured wallet owns.

A wallet in the config is a single address, an extended public key (xpub/ypub/zpub, or
tpub/upub/vpub on test networks) or a simple output descriptor (``wpkh(KEY/0/*)``,
``sh(wpkh(KEY/<0;1>/*))``, ``pkh(KEY/1/*)``). Keys are derived with bitcoinlib; addresses are
encoded here from the network's own prefixes, because bitcoinlib's "regtest" network uses mainnet
Base58 prefixes while Bitcoin Core and btcd use the testnet ones (``m…``/``n…``/``2…``).

bitcoinlib is untyped: every call into it stays inside this module behind typed functions.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final, Literal

from bitcoinlib.encoding import (  # type: ignore[import-untyped,unused-ignore]
    EncodingError,
    addr_bech32_to_pubkeyhash,
    change_base,
    hash160,
    pubkeyhash_to_addr_base58,
    pubkeyhash_to_addr_bech32,
)
from bitcoinlib.keys import BKeyError, HDKey  # type: ignore[import-untyped,unused-ignore]

__all__ = [
    "DEFAULT_GAP_LIMIT",
    "NETWORKS",
    "AddressError",
    "KeyWallet",
    "NetworkParams",
    "ScriptType",
    "WatchSpec",
    "address_script",
    "is_extended",
    "parse_watch_spec",
    "pubkey_address",
    "script_address",
]

log = logging.getLogger(__name__)

DEFAULT_GAP_LIMIT: Final = 20
"""Unused addresses kept watched past the last used one on each chain (BIP-44's gap limit)."""

ScriptType = Literal["p2pkh", "p2sh-p2wpkh", "p2wpkh"]


class AddressError(ValueError):
    """Not an address, extended key or descriptor of the network."""


@dataclass(frozen=True, slots=True)
class NetworkParams:
    """How one Bitcoin network encodes addresses and extended public keys."""

    name: str
    p2pkh: int
    p2sh: int
    hrp: str
    ext_versions: tuple[tuple[bytes, ScriptType], ...]
    """Extended public key version bytes this network accepts, with the script they imply."""
    bitcoinlib_networks: tuple[str, ...]
    """bitcoinlib network to import keys with, by family: mainnet-style, then testnet-style."""


_MAIN_EXT: Final = (
    (bytes.fromhex("0488b21e"), "p2pkh"),  # xpub
    (bytes.fromhex("049d7cb2"), "p2sh-p2wpkh"),  # ypub
    (bytes.fromhex("04b24746"), "p2wpkh"),  # zpub
)
_TEST_EXT: Final = (
    (bytes.fromhex("043587cf"), "p2pkh"),  # tpub
    (bytes.fromhex("044a5262"), "p2sh-p2wpkh"),  # upub
    (bytes.fromhex("045f1cf6"), "p2wpkh"),  # vpub
)

NETWORKS: Final[dict[str, NetworkParams]] = {
    "bitcoin": NetworkParams("bitcoin", 0x00, 0x05, "bc", _MAIN_EXT, ("bitcoin",)),
    "testnet": NetworkParams("testnet", 0x6F, 0xC4, "tb", _TEST_EXT, ("testnet",)),
    # Regtest keys are tpub/vpub in Bitcoin Core; bitcoinlib's regtest writes xpub/zpub: take both.
    "regtest": NetworkParams(
        "regtest", 0x6F, 0xC4, "bcrt", _TEST_EXT + _MAIN_EXT, ("testnet", "bitcoin")
    ),
}


def _params(network: str | NetworkParams) -> NetworkParams:
    if isinstance(network, NetworkParams):
        return network
    try:
        return NETWORKS[network]
    except KeyError:
        raise AddressError(f"unknown Bitcoin network {network!r}") from None


def _b58check_decode(text: str) -> bytes:
    """The payload of a Base58Check string (version byte(s) included)."""
    if not text or any(c in "0OIl" or not c.isalnum() for c in text):
        raise AddressError(f"{text!r} is not Base58")
    try:
        raw: bytes = change_base(text, 58, 256)
    except (EncodingError, ValueError, TypeError) as exc:
        raise AddressError(f"{text!r} is not Base58: {exc}") from None
    # change_base drops leading zero bytes; each leading '1' stands for one of them.
    raw = b"\0" * (len(text) - len(text.lstrip("1"))) + raw.lstrip(b"\0")
    payload, checksum = raw[:-4], raw[-4:]
    if len(raw) < 5 or hashlib.sha256(hashlib.sha256(payload).digest()).digest()[:4] != checksum:
        raise AddressError(f"{text!r}: bad Base58 checksum")
    return payload


def address_script(address: str, network: str | NetworkParams) -> bytes:
    """The output script (scriptPubKey) an address stands for; raise :class:`AddressError`.

    Base58 is case-sensitive and checked against the network's version bytes; Bech32/Bech32m
    addresses must carry the network's prefix.

    >>> address_script("bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080", "regtest").hex()
    '0014751e76e8199196d454941c45d1b3a323f1433bd6'
    >>> address_script("1BoatSLRHtKNngkdXEeobR76b53LETtpyT", "bitcoin").hex()
    '76a9147680adec8eabcabac676be9e83854ade0bd22cdb88ac'
    >>> address_script("1boatSLRHtKNngkdXEeobR76b53LETtpyT", "bitcoin")
    Traceback (most recent call last):
    ...
    ingest.xpub.AddressError: '1boatSLRHtKNngkdXEeobR76b53LETtpyT': bad Base58 checksum
    >>> address_script("1BoatSLRHtKNngkdXEeobR76b53LETtpyT", "regtest")
    Traceback (most recent call last):
    ...
    ingest.xpub.AddressError: '1BoatSLRHtKNngkdXEeobR76b53LETtpyT' is not a regtest address
    """
    params = _params(network)
    text = address.strip()
    sep = text.rfind("1")
    if sep > 0 and text[:sep].lower() in ("bc", "tb", "bcrt"):
        if text[:sep].lower() != params.hrp:
            raise AddressError(f"{text!r} is not a {params.name} address")
        try:
            program: bytes = addr_bech32_to_pubkeyhash(text, prefix=params.hrp, include_witver=True)
        except (EncodingError, ValueError, TypeError, IndexError) as exc:
            raise AddressError(f"{text!r}: {exc}") from None
        return program
    payload = _b58check_decode(text)
    if len(payload) != 21:
        raise AddressError(f"{text!r} is not an address (payload of {len(payload)} bytes)")
    if payload[0] == params.p2pkh:
        return b"\x76\xa9\x14" + payload[1:] + b"\x88\xac"
    if payload[0] == params.p2sh:
        return b"\xa9\x14" + payload[1:] + b"\x87"
    raise AddressError(f"{text!r} is not a {params.name} address")


def script_address(script: bytes, network: str | NetworkParams) -> str | None:
    """The address of a standard output script, or None (OP_RETURN, bare multisig, unknown).

    >>> script_address(bytes.fromhex("0014751e76e8199196d454941c45d1b3a323f1433bd6"), "regtest")
    'bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080'
    >>> script_address(bytes.fromhex("76a9147680adec8eabcabac676be9e83854ade0bd22cdb88ac"),
    ...                "bitcoin")
    '1BoatSLRHtKNngkdXEeobR76b53LETtpyT'
    >>> script_address(b"\\x6a\\x04test", "bitcoin") is None
    True
    """
    params = _params(network)
    n = len(script)
    if n == 25 and script[:3] == b"\x76\xa9\x14" and script[23:] == b"\x88\xac":
        return str(pubkeyhash_to_addr_base58(script[3:23], bytes([params.p2pkh])))
    if n == 23 and script[:2] == b"\xa9\x14" and script[22] == 0x87:
        return str(pubkeyhash_to_addr_base58(script[2:22], bytes([params.p2sh])))
    # Witness programs: version 0 (OP_0) or 1..16 (OP_1..OP_16), then a 2..40 byte push.
    if 4 <= n <= 42 and (script[0] == 0 or 0x51 <= script[0] <= 0x60) and script[1] == n - 2:
        version = 0 if script[0] == 0 else script[0] - 0x50
        if version == 0 and n - 2 not in (20, 32):
            return None
        return str(pubkeyhash_to_addr_bech32(script[2:], params.hrp, witver=version))
    return None


def is_extended(text: str) -> bool:
    """Whether a configured wallet is an extended key or descriptor rather than one address.

    >>> is_extended("wpkh(xpub.../0/*)"), is_extended("bc1qxyz")
    (True, False)
    """
    text = text.strip()
    return "(" in text or text[1:4] == "pub"


@dataclass(frozen=True, slots=True)
class WatchSpec:
    """A parsed extended-key wallet: the key, the script its addresses use, the chains."""

    key: str
    """The extended public key as configured."""
    script: ScriptType
    branches: tuple[tuple[int, ...], ...]
    """Derivation paths (below the key) of the chains whose children are the addresses."""
    network: NetworkParams


_DESCRIPTOR = re.compile(
    r"^(?P<outer>wpkh|pkh|sh\(wpkh)\((?:\[[0-9a-fA-F]{8}(?:/[0-9]+['hH]?)*\])?"
    r"(?P<key>[1-9A-HJ-NP-Za-km-z]{100,120})(?P<path>(?:/[0-9]+)*)"
    r"/(?:<(?P<a>[0-9]+);(?P<b>[0-9]+)>/)?\*\)\)?(?:#[a-z0-9]{8})?$"
)
_DESCRIPTOR_SCRIPT: Final[dict[str, ScriptType]] = {
    "wpkh": "p2wpkh",
    "pkh": "p2pkh",
    "sh(wpkh": "p2sh-p2wpkh",
}


def _ext_script(key: str, params: NetworkParams) -> ScriptType:
    payload = _b58check_decode(key)
    if len(payload) != 78:
        raise AddressError(f"{key[:12]}…: not an extended key ({len(payload)} bytes)")
    for version, script in params.ext_versions:
        if payload[:4] == version:
            if payload[45] not in (2, 3):
                raise AddressError(f"{key[:12]}…: not an extended public key")
            return script
    raise AddressError(f"{key[:12]}…: not an extended public key of {params.name}")


def parse_watch_spec(text: str, network: str | NetworkParams) -> WatchSpec:
    """Parse an extended public key or descriptor; raise :class:`AddressError` if it is not one.

    A bare key watches the receive (``0``) and change (``1``) chains below it, with the script
    its prefix implies (xpub/tpub: P2PKH, ypub/upub: P2SH-P2WPKH, zpub/vpub: P2WPKH).

    >>> tpub = ("tpubD6NzVbkrYhZ4XgiXtGrdW5XDAPFCL9h7we1vwNCpn8tGbBcgfVYjXyhWo4E1xkh56hjod1RhGjxb"
    ...         "aTLV3X4FyWuejifB9jusQ46QzG87VKp")
    >>> spec = parse_watch_spec(tpub, "regtest")
    >>> spec.script, spec.branches
    ('p2pkh', ((0,), (1,)))
    >>> parse_watch_spec(f"wpkh([d34db33f/84h/1h/0h]{tpub}/<0;1>/*)#abcdefgh", "testnet").script
    'p2wpkh'
    >>> parse_watch_spec(f"sh(wpkh({tpub}/7/*))", "testnet").branches
    ((7,),)
    >>> parse_watch_spec(tpub, "bitcoin")
    Traceback (most recent call last):
    ...
    ingest.xpub.AddressError: tpubD6NzVbkr…: not an extended public key of bitcoin
    """
    params = _params(network)
    text = text.strip()
    if "(" not in text:
        return WatchSpec(text, _ext_script(text, params), ((0,), (1,)), params)
    match = _DESCRIPTOR.match(text)
    closing = 2 if match is not None and match["outer"] == "sh(wpkh" else 1
    if match is None or text.split("#")[0].count(")") != closing:
        raise AddressError(
            f"{text[:24]}…: unsupported descriptor (expected wpkh(KEY/…/*), pkh(…) or sh(wpkh(…)))"
        )
    key = match["key"]
    _ext_script(key, params)  # the prefix must belong to the network; the wrapper sets the script
    base = tuple(int(p) for p in match["path"].split("/") if p)
    branches: tuple[tuple[int, ...], ...]
    if match["a"] is not None:
        branches = ((*base, int(match["a"])), (*base, int(match["b"])))
    else:
        branches = (base,)
    if any(i >= 2**31 for b in branches for i in b):
        raise AddressError(f"{text[:24]}…: hardened steps cannot be derived from a public key")
    return WatchSpec(key, _DESCRIPTOR_SCRIPT[match["outer"]], branches, params)


def _import_key(spec: WatchSpec) -> Any:
    errors: list[str] = []
    for name in spec.network.bitcoinlib_networks:
        try:
            return HDKey(import_key=spec.key, network=name)
        except (BKeyError, EncodingError, ValueError, TypeError) as exc:
            errors.append(str(exc))
    raise AddressError(f"{spec.key[:12]}…: bitcoinlib could not import it ({'; '.join(errors)})")


def pubkey_address(pubkey: bytes, script: ScriptType, params: NetworkParams) -> str:
    """The address of a public key in ``script``.

    >>> pk = bytes.fromhex("0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798")
    >>> pubkey_address(pk, "p2wpkh", NETWORKS["regtest"])
    'bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080'
    """
    h = bytes(hash160(pubkey))
    if script == "p2wpkh":
        return str(pubkeyhash_to_addr_bech32(h, params.hrp, witver=0))
    if script == "p2sh-p2wpkh":
        redeem = b"\x00\x14" + h
        return str(pubkeyhash_to_addr_base58(bytes(hash160(redeem)), bytes([params.p2sh])))
    return str(pubkeyhash_to_addr_base58(h, bytes([params.p2pkh])))


class KeyWallet:
    """The addresses of one extended-key wallet, derived ``gap_limit`` past the last used one.

    Args:
        spec: the parsed key or descriptor.
        gap_limit: unused addresses watched past the highest used index of each chain.
        used: the highest used index per branch position (from the UTXO store), if known.

    >>> tpub = ("tpubD6NzVbkrYhZ4XgiXtGrdW5XDAPFCL9h7we1vwNCpn8tGbBcgfVYjXyhWo4E1xkh56hjod1RhGjxb"
    ...         "aTLV3X4FyWuejifB9jusQ46QzG87VKp")
    >>> w = KeyWallet(parse_watch_spec(f"wpkh({tpub}/0/*)", "regtest"), gap_limit=3)
    >>> len(w.addresses)
    3
    >>> third = w.address_at(0, 2)
    >>> w.mark_used([third]) == [w.address_at(0, i) for i in (3, 4, 5)]
    True
    >>> len(w.addresses), w.used
    (6, {0: 2})
    """

    def __init__(
        self,
        spec: WatchSpec,
        gap_limit: int = DEFAULT_GAP_LIMIT,
        used: dict[int, int] | None = None,
    ) -> None:
        if gap_limit < 1:
            raise ValueError("gap_limit must be at least 1")
        self.spec = spec
        self.gap_limit = gap_limit
        self.used: dict[int, int] = dict(used or {})
        """Highest used child index per branch position."""
        root = _import_key(spec)
        self._branch_keys: list[Any] = []
        for path in spec.branches:
            key = root
            for index in path:
                key = key.child_public(index)
            self._branch_keys.append(key)
        self._by_address: dict[str, tuple[int, int]] = {}
        self._derived = [0] * len(spec.branches)
        for branch in range(len(spec.branches)):
            self._extend(branch)

    @property
    def addresses(self) -> frozenset[str]:
        """Every address derived so far."""
        return frozenset(self._by_address)

    def address_at(self, branch: int, index: int) -> str:
        """The address at ``index`` on branch position ``branch`` (derived on demand)."""
        child = self._branch_keys[branch].child_public(index)
        return pubkey_address(bytes(child.public_byte), self.spec.script, self.spec.network)

    def _extend(self, branch: int) -> list[str]:
        target = self.used.get(branch, -1) + 1 + self.gap_limit
        new: list[str] = []
        while self._derived[branch] < target:
            index = self._derived[branch]
            address = self.address_at(branch, index)
            self._by_address[address] = (branch, index)
            new.append(address)
            self._derived[branch] += 1
        return new

    def mark_used(self, addresses: Iterable[str]) -> list[str]:
        """Record that ``addresses`` received coins; return the addresses newly watched."""
        touched: set[int] = set()
        for address in addresses:
            where = self._by_address.get(address)
            if where is None:
                continue
            branch, index = where
            if index > self.used.get(branch, -1):
                self.used[branch] = index
                touched.add(branch)
        new: list[str] = []
        for branch in sorted(touched):
            new.extend(self._extend(branch))
        return new
