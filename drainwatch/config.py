"""The TOML config (``drainwatch.toml``): models, loading, and errors that name file, line and key.

Only ``[[wallets]]`` is required; everything else has a default, so a file with nothing but the
wallet list is enough for a backtest. Secrets are written as ``${ENV_VAR}`` references and resolved
at load time; a missing variable is an error that names the key.

>>> cfg = loads('''
... [[wallets]]
... chain = "nem"
... address = "NC3BI3DNMR2PGEOOMP2NKXQGSAKMS7GYRKVA5CSZ"
... label = "nem-hot"
... opening_balance = "523000010"
... ''')
>>> cfg.wallets[0].role, cfg.wallets[0].opening_balance
('hot', Decimal('523000010'))
>>> loads('[[wallets]]\\nchain = "nem"\\naddress = "A"\\nrole = "warm"\\n', path="x.toml")
Traceback (most recent call last):
...
drainwatch.config.ConfigError: x.toml:4: wallets[0].role: Input should be 'hot' or 'cold'
"""

from __future__ import annotations

import hashlib
import os
import re
import tomllib
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from drainwatch.errors import DrainwatchError
from drainwatch.events import Severity, normalize_address, wallet_key

__all__ = [
    "AlertsConfig",
    "BusConfig",
    "ChainConfig",
    "ChannelConfig",
    "Config",
    "ConfigError",
    "DetectionConfig",
    "EmailChannelConfig",
    "MetricsConfig",
    "PagerDutyChannelConfig",
    "RouteConfig",
    "SlackChannelConfig",
    "WalletConfig",
    "WebhookChannelConfig",
    "dotted_key",
    "entry_for",
    "entry_or_first",
    "key_lines",
    "line_of",
    "load",
    "loads",
    "resolve_env",
    "wallets_by_key",
]


class ConfigError(DrainwatchError):
    """A config file that cannot be used; the message names the file, the line and the key."""

    def __init__(self, path: str, line: int | None, key: str, reason: str) -> None:
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {key}: {reason}" if key else f"{where}: {reason}")
        self.path = path
        self.line = line
        self.key = key
        self.reason = reason


_EVM_ADDRESS = re.compile(r"^0x[0-9a-f]{40}$")


# Bitcoin: (P2PKH version, P2SH version, Bech32 prefix, extended public key versions). Regtest
# keys are tpub/vpub in Bitcoin Core but xpub/zpub in bitcoinlib: both are accepted there.
_MAIN_EXT = ("0488b21e", "049d7cb2", "04b24746")  # xpub ypub zpub
_TEST_EXT = ("043587cf", "044a5262", "045f1cf6")  # tpub upub vpub
_BTC_NETWORKS: dict[str, tuple[int, int, str, tuple[str, ...]]] = {
    "bitcoin": (0x00, 0x05, "bc", _MAIN_EXT),
    "testnet": (0x6F, 0xC4, "tb", _TEST_EXT),
    "regtest": (0x6F, 0xC4, "bcrt", _TEST_EXT + _MAIN_EXT),
}
_BASE58 = frozenset("123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz")
_BTC_DESCRIPTOR = re.compile(
    r"^(?:wpkh|pkh|sh\(wpkh)\((?:\[[0-9a-fA-F]{8}(?:/[0-9]+['hH]?)*\])?"
    r"([1-9A-HJ-NP-Za-km-z]{100,120})(?:/[0-9]+)*/(?:<[0-9]+;[0-9]+>/)?\*\)\)?(?:#[a-z0-9]{8})?$"
)


def _base58check(text: str) -> bytes | None:
    """The payload of a Base58Check string, or None (bitcoinlib does the base conversion)."""
    from bitcoinlib.encoding import change_base  # type: ignore[import-untyped,unused-ignore]

    if not text or any(c not in _BASE58 for c in text):
        return None
    zeros = len(text) - len(text.lstrip("1"))
    raw = b"\0" * zeros + bytes(change_base(text, 58, 256)).lstrip(b"\0")
    payload, check = raw[:-4], raw[-4:]
    digest = hashlib.sha256(hashlib.sha256(payload).digest()).digest()
    return payload if len(raw) > 4 and digest[:4] == check else None


def _bitcoin_address_problem(address: str, network: str) -> str | None:
    """Why ``address`` is not an address, extended public key or descriptor of ``network``.

    >>> _bitcoin_address_problem("bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080", "regtest")
    >>> _bitcoin_address_problem("bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080", "bitcoin")
    "'bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080' is not a bitcoin address, ..."
    """
    from bitcoinlib.encoding import addr_bech32_to_pubkeyhash  # type: ignore[import-untyped,unused-ignore]

    p2pkh, p2sh, hrp, ext = _BTC_NETWORKS[network]
    match = _BTC_DESCRIPTOR.match(address)
    payload = _base58check(match.group(1) if match else address)
    if payload is not None:
        if len(payload) == 21 and payload[0] in (p2pkh, p2sh) and not match:
            return None
        if len(payload) == 78 and payload[:4].hex() in ext and payload[45] in (2, 3):
            return None
    elif address[: address.rfind("1")].lower() == hrp:
        try:
            addr_bech32_to_pubkeyhash(address, prefix=hrp)
            return None
        except Exception as exc:  # bitcoinlib raises several kinds on a bad string
            return f"{address!r} is not a valid {network} address: {exc}"
    return f"{address!r} is not a {network} address, extended public key or descriptor"


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class _KeyError(ValueError):
    """A validator's error about a key below the model it validates; ``loads`` reports that key."""

    def __init__(self, loc: tuple[str | int, ...], reason: str) -> None:
        super().__init__(reason)
        self.loc = loc
        self.reason = reason


class WalletConfig(_Model):
    """One watched wallet; the list is shared by every stage."""

    chain: str = Field(min_length=1)
    address: str = Field(min_length=1)
    asset: str | None = None
    label: str | None = None
    role: Literal["hot", "cold"] = "hot"
    opening_balance: Decimal | None = Field(default=None, ge=0)
    known_counterparties: tuple[str, ...] = ()
    """Addresses this wallet normally pays (a market maker, the exchange's own cold wallet)."""

    _spelling: str = PrivateAttr(default="")

    @field_validator("address")
    @classmethod
    def _normalise(cls, value: str) -> str:
        return normalize_address(value)

    @model_validator(mode="wrap")
    @classmethod
    def _keep_spelling(
        cls, data: Any, handler: ModelWrapValidatorHandler[WalletConfig]
    ) -> WalletConfig:
        wallet = handler(data)
        given = data.get("address") if isinstance(data, dict) else None
        if isinstance(given, str):
            wallet._spelling = given.strip()
        return wallet

    @property
    def spelled_address(self) -> str:
        """The address as the config writes it; :attr:`address` is normalised (EVM hex in
        lower case), the one form every stage matches on.

        >>> w = WalletConfig(chain="ethereum", address="0xAbC0000000000000000000000000000000000001")
        >>> w.address[:6], w.spelled_address[:6]
        ('0xabc0', '0xAbC0')
        """
        return self._spelling or self.address

    @property
    def key(self) -> str:
        """The bus key of this wallet."""
        return wallet_key(self.chain, self.address)

    @property
    def name(self) -> str:
        """The label, or the key when there is none."""
        return self.label or self.key


class ChainConfig(_Model):
    """A chain to watch live: its kind, RPC endpoints (tried in order) and finality."""

    kind: Literal["evm", "bitcoin"]
    rpc: tuple[str, ...] = Field(min_length=1)
    confirmations: int = Field(default=12, ge=0)
    chain_id: int | None = None
    native_symbol: str = "ETH"
    native_decimals: int = Field(default=18, ge=0)
    poll_interval_s: float = Field(default=2.0, gt=0)
    start_block: int | None = Field(default=None, ge=0)
    """Where a watcher with no cursor yet starts (default: the newest safe block)."""
    explorer_tx_url: str | None = None
    """A block-explorer link with ``{tx_hash}`` in it, used by the timeline."""
    ws: tuple[str, ...] = ()
    """WebSocket endpoints (EVM) for ``newHeads``/``newPendingTransactions``: they wake the
    watcher early; HTTP polling of ``rpc`` stays the fallback."""
    traces: Literal["auto", "debug", "trace", "off"] = "auto"
    """Internal transfers (EVM) from ``debug_traceBlockByNumber`` or ``trace_block``."""
    pending: Literal["auto", "ws", "txpool", "off"] = "auto"
    """Early sight of unmined transactions (EVM): ``txpool_content`` polling or the subscription."""
    batch_blocks: int = Field(default=100, ge=1)
    """Blocks read per batched fetch (backfill speed)."""
    rpc_timeout_s: float = Field(default=10.0, gt=0)
    network: Literal["bitcoin", "testnet", "regtest"] = "bitcoin"
    """Which Bitcoin network (kind ``bitcoin``): address prefixes and extended-key versions."""


class DetectionConfig(_Model):
    """Thresholds of the velocity detector (the defaults are tuned; see detectors/velocity.py)."""

    window_s: tuple[int, ...] = (60, 300, 1200, 3600, 86400)
    freeze_share: Decimal = Decimal("0.10")
    """Freeze when a hot wallet loses this share of its balance within a window to new addresses."""
    warn_share: Decimal = Decimal("0.05")
    large_fresh: bool = True
    """Freeze at one payment to a first-seen address larger than this wallet's customers and
    whales pay (learned per wallet over 28 days; silent for its first 14). Off: such a payment
    is left to the rules that need several."""
    ledger_match_window_s: int = Field(default=10800, gt=0)
    """How long before its on-chain transfer an approved withdrawal may have been approved (the
    exchange's payout queue): an outflow matched by no approval this recent freezes."""
    ledger_repeat_trust: int = Field(default=3, ge=0)
    """With a ledger: a destination whose unapproved payments froze the wallet this many times
    more than a day ago (an unlisted cold wallet's sweeps) is not flagged again for up to twice
    the largest of them (0: always flagged). List the exchange's own wallets instead where you
    can."""
    shadow: tuple[str, ...] = ()
    """Detectors that evaluate and alert but never request a freeze."""
    fleet_freeze: Literal["always", "without-ledger", "never"] = "always"
    """When an incident freezes every hot wallet of the exchange at once, before the others lose
    anything (three wallets frozen on within 30 minutes, or two half emptied: the Phemex and
    KuCoin pattern). ``always`` (default), with a ledger feed too: the ledger freezes each
    wallet only at its first unapproved outflow, which in such a drain can be a third of the
    wallet. ``without-ledger``: not while a ledger feed is on, so that no wallet the thief never
    touches is frozen (operators can still ``POST /v1/freeze-all``). ``never``: the incident
    pages once and lowers the bar, but freezes only the wallets with evidence of their own."""
    surge_wallets: int = Field(default=3, ge=0)
    """Wallets not frozen on whose customers crowd (a crowd's warning or freeze within 30
    minutes) that make a market-wide withdrawal surge: then wallets frozen on their own
    evidence neither lower the bar for the others nor freeze the fleet (two half emptied still
    do), and the alert that would have frozen it says so. A panic's customers freeze wallets on
    single large payments; freezing the whole exchange then is the costliest false freeze. 0:
    off (three wallets frozen on freeze the fleet in a panic too)."""
    learn_until: AwareDatetime | None = None
    """Transfers from before this instant are learned from (balances, windows, destinations,
    baselines, large payments, incidents) but raise no alert and freeze nothing: a new
    deployment whose watchers start at a ``start_block`` weeks back judges from its first live
    transfer on with each wallet's history learned, instead of alerting on the history (and
    freezing with no history: a wallet's first week). A transfer a detector would have frozen
    on is not learned as normal, and since nothing was said, no cooldown holds a live alert
    back. Unset: every transfer is judged. A TOML datetime with an offset
    (``2026-12-07T00:00:00Z``)."""
    snapshot_interval_s: int = Field(default=300, ge=0)
    """How often a detector saves what it knows of each transfers partition it holds, with the
    offset it committed there, in ``<state_dir>/snapshots`` (0: never): the next holder of the
    partition takes it back and replays only what came after (``detectors/snapshots.py``)."""
    rebuild_s: int = Field(default=30 * 86400, gt=0)
    """How much of the transfers topic a detector replays for a partition it takes over without
    a snapshot it can use: 30 days, so that it rebuilds the large-fresh rule's 28 days of history
    too (the transfers topic keeps 35)."""


class BusConfig(_Model):
    """Which bus connects the stages."""

    kind: Literal["embedded", "kafka"] = "embedded"
    bootstrap_servers: tuple[str, ...] = ("127.0.0.1:9092",)
    topic_prefix: str = ""
    partitions: int = Field(default=6, ge=1)
    group_prefix: str = "drainwatch"
    client: Literal["kafka-python", "confluent"] = "kafka-python"
    """The Kafka client library (``kind = "kafka"``): confluent-kafka is faster and optional
    (``pip install 'drainwatch[confluent]'``)."""
    instance_id: str | None = None
    """Static consumer-group membership (``kind = "kafka"``): a name unique to this process in
    its stage, stable across its restarts (``"${POD_NAME}"`` of a StatefulSet). A process that
    comes back within the session timeout (``session_timeout_s``) keeps its partitions without
    a rebalance of the others, and a detector takes their state back from its own snapshots.
    Unset: dynamic membership (every restart rebalances the group)."""
    session_timeout_s: float | None = Field(default=None, ge=6, le=1800)
    """How long the group waits for a member that stopped heartbeating before it hands the
    member's partitions to the others (within the broker's 6 s to 30 min). Unset: 10 s for a
    dynamic member, 45 s for a static one (``instance_id``: a replaced pod has that long to
    come back). Longer keeps a restarted static member's partitions; shorter hands a dead
    member's over sooner (they are judged by nobody meanwhile)."""


class SlackChannelConfig(_Model):
    """A Slack incoming webhook (the URL is the secret)."""

    kind: Literal["slack"]
    url: SecretStr
    timeout_s: float = Field(default=10.0, gt=0)


class PagerDutyChannelConfig(_Model):
    """A PagerDuty service, through the Events API v2."""

    kind: Literal["pagerduty"]
    routing_key: SecretStr
    url: str = "https://events.pagerduty.com/v2/enqueue"
    timeout_s: float = Field(default=10.0, gt=0)


class WebhookChannelConfig(_Model):
    """Any HTTP endpoint: a JSON body signed with HMAC-SHA256 of ``secret``."""

    kind: Literal["webhook"]
    url: str = Field(min_length=1)
    secret: SecretStr
    timeout_s: float = Field(default=10.0, gt=0)


class EmailChannelConfig(_Model):
    """Mail through an SMTP server."""

    kind: Literal["email"]
    smtp_host: str = "127.0.0.1"
    smtp_port: int = Field(default=25, ge=1, le=65535)
    sender: str = Field(min_length=1)
    to: tuple[str, ...] = Field(min_length=1)
    username: str | None = None
    password: SecretStr | None = None
    starttls: bool = False
    timeout_s: float = Field(default=10.0, gt=0)


ChannelConfig = Annotated[
    SlackChannelConfig | PagerDutyChannelConfig | WebhookChannelConfig | EmailChannelConfig,
    Field(discriminator="kind"),
]


class RouteConfig(_Model):
    """Which channels get an alert: every route that matches adds its channels."""

    min_severity: Severity = Severity.INFO
    labels: tuple[str, ...] = ()
    """Globs on the wallet label (``chain:wallet`` when it has none); empty matches every wallet."""
    channels: tuple[str, ...] = Field(min_length=1)
    escalate_after_s: float | None = Field(default=None, gt=0)
    """A critical page not acknowledged this long after it was queued goes to ``escalate_to``."""
    escalate_to: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _escalation_complete(self) -> RouteConfig:
        if bool(self.escalate_to) != (self.escalate_after_s is not None):
            raise ValueError("escalate_after_s and escalate_to go together")
        return self


class AlertsConfig(_Model):
    """Where alerts and the timeline go, which kill switch to call, and how people are paged."""

    timeline_path: str = ".drainwatch/timeline.sqlite3"
    """Unset in a whole config file: ``timeline.sqlite3`` in its ``state_dir``."""
    killswitch_url: str | None = None
    killswitch_token: str | None = None
    """A bearer API key for the kill switch (one with ``bearer = true`` and the detector role)."""
    killswitch_key_id: str | None = None
    killswitch_secret: SecretStr | None = None
    """With ``killswitch_key_id``: sign every request with HMAC instead of sending a bearer key."""
    console: bool = True
    web_port: int | None = Field(default=None, ge=0, le=65535)
    """Serve the incidents web page from the alerts stage on this port (None: off)."""
    web_host: str = "127.0.0.1"
    channels: dict[str, ChannelConfig] = Field(default_factory=dict)
    routes: tuple[RouteConfig, ...] = ()
    cooldown_s: float = Field(default=600.0, ge=0)
    """Quiet time per (wallet, detector) after a notification, except for a more severe alert."""
    outbox_path: str = ".drainwatch/outbox.sqlite3"
    """Unset in a whole config file: ``outbox.sqlite3`` in its ``state_dir``."""
    retry_backoff_s: float = Field(default=5.0, gt=0)
    retry_backoff_max_s: float = Field(default=300.0, gt=0)
    undeliverable_after: int = Field(default=5, ge=1)
    """Failed attempts before a notification is reported undeliverable (it is still retried)."""

    @model_validator(mode="after")
    def _known_channels(self) -> AlertsConfig:
        for i, route in enumerate(self.routes):
            for field in ("channels", "escalate_to"):
                for name in getattr(route, field):
                    if name not in self.channels:
                        raise _KeyError(
                            ("routes", i, field),
                            f"unknown channel {name!r} (not in [alerts.channels])",
                        )
        return self


class MetricsConfig(_Model):
    """Where each process serves ``/metrics`` and ``/healthz`` (port 0: not served).

    ``port`` is for every process (``drainwatch run``, all stages in one process; or one stage per
    container, each on the same port); ``ports`` overrides it per stage (``ingest``, ``detect``,
    ``alert``) when several stage processes share one host.
    """

    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535)
    ports: dict[Literal["ingest", "detect", "alert"], Annotated[int, Field(ge=0, le=65535)]] = (
        Field(default_factory=dict)
    )

    def port_for(self, stage: str) -> int:
        """The port of the process that runs ``stage`` (``all``: every stage in one process).

        >>> MetricsConfig(port=9400, ports={"detect": 9402}).port_for("detect")
        9402
        >>> MetricsConfig(port=9400, ports={"detect": 9402}).port_for("all")
        9400
        """
        return next((port for name, port in self.ports.items() if name == stage), self.port)


class Config(_Model):
    """The whole file."""

    wallets: tuple[WalletConfig, ...] = Field(min_length=1)
    killswitch: dict[str, Any] | None = None
    """The kill-switch service's own table, validated by ``alerts.killswitch`` when it starts."""
    chains: dict[str, ChainConfig] = Field(default_factory=dict)
    detection: DetectionConfig = DetectionConfig()
    bus: BusConfig = BusConfig()
    alerts: AlertsConfig = AlertsConfig()
    metrics: MetricsConfig = MetricsConfig()
    state_dir: str = ".drainwatch"

    @model_validator(mode="after")
    def _alert_files_in_state_dir(self) -> Config:
        # The timeline (the incident record) and the outbox (undelivered pages) live with the
        # rest of the state unless the file names them: never in whatever directory the stage
        # happened to start in.
        unset = {"timeline_path", "outbox_path"} - self.alerts.model_fields_set
        if unset:
            names = {"timeline_path": "timeline.sqlite3", "outbox_path": "outbox.sqlite3"}
            paths = {field: str(Path(self.state_dir) / names[field]) for field in unset}
            object.__setattr__(self, "alerts", self.alerts.model_copy(update=paths))
        return self

    @model_validator(mode="after")
    def _unique_wallets(self) -> Config:
        """A wallet is listed once, or once per asset when it holds several (an EVM hot wallet
        with ETH and tokens): then every entry names its own ``asset`` (with its own opening
        balance and label) and they agree on the role."""
        seen: dict[str, list[WalletConfig]] = {}
        for i, wallet in enumerate(self.wallets):
            earlier = seen.setdefault(wallet.key, [])
            if earlier:
                assets = {w.asset.casefold() for w in earlier if w.asset is not None}
                if wallet.asset is None or len(assets) < len(earlier):
                    raise _KeyError(
                        ("wallets", i, "address"),
                        f"wallet {wallet.key} is listed twice (a wallet that holds several "
                        "assets is listed once per asset, each entry with its own `asset`)",
                    )
                if wallet.asset.casefold() in assets:
                    raise _KeyError(
                        ("wallets", i, "asset"),
                        f"wallet {wallet.key} is listed twice for asset {wallet.asset!r}",
                    )
                if wallet.role != earlier[0].role:
                    raise _KeyError(
                        ("wallets", i, "role"),
                        f"wallet {wallet.key} is listed as {earlier[0].role!r} and as "
                        f"{wallet.role!r}: one wallet has one role",
                    )
            earlier.append(wallet)
        return self

    @model_validator(mode="after")
    def _evm_addresses(self) -> Config:
        for i, wallet in enumerate(self.wallets):
            chain = self.chains.get(wallet.chain)
            if chain is not None and chain.kind == "evm" and not _EVM_ADDRESS.match(wallet.address):
                raise _KeyError(
                    ("wallets", i, "address"),
                    f"{wallet.address!r} is not an EVM address (0x and 40 hex digits)",
                )
        return self

    @model_validator(mode="after")
    def _bitcoin_addresses(self) -> Config:
        for i, wallet in enumerate(self.wallets):
            chain = self.chains.get(wallet.chain)
            if chain is not None and chain.kind == "bitcoin":
                reason = _bitcoin_address_problem(wallet.address, chain.network)
                if reason is not None:
                    raise _KeyError(("wallets", i, "address"), reason)
        return self

    def wallets_on(self, chain: str) -> tuple[WalletConfig, ...]:
        """The wallets watched on one chain."""
        return tuple(w for w in self.wallets if w.chain == chain)


def wallets_by_key(wallets: Iterable[WalletConfig]) -> dict[str, list[WalletConfig]]:
    """The entries of each wallet by its key: one, or one per asset (see ``Config``).

    >>> eth = WalletConfig(chain="ethereum", address="0xAA", asset="ETH")
    >>> usdt = WalletConfig(chain="ethereum", address="0xaa", asset="USDT")
    >>> [len(e) for e in wallets_by_key([eth, usdt]).values()]
    [2]
    """
    found: dict[str, list[WalletConfig]] = {}
    for wallet in wallets:
        found.setdefault(wallet.key, []).append(wallet)
    return found


def entry_for(entries: Iterable[WalletConfig], asset: str) -> WalletConfig | None:
    """The entry of one wallet that covers ``asset``: the one naming it (case-blind), else the
    one naming no asset; ``None`` when the wallet is listed only for other assets.

    >>> eth = WalletConfig(chain="ethereum", address="0xAA", asset="ETH", label="eth-hot")
    >>> usdt = WalletConfig(chain="ethereum", address="0xAA", asset="USDT", label="usdt-hot")
    >>> entry_for([eth, usdt], "usdt").label, entry_for([eth, usdt], "DAI")
    ('usdt-hot', None)
    """
    fallback = None
    folded = asset.casefold()
    for entry in entries:
        if entry.asset is None:
            fallback = entry
        elif entry.asset.casefold() == folded:
            return entry
    return fallback


def entry_or_first(entries: Sequence[WalletConfig], asset: str | None) -> WalletConfig | None:
    """The entry covering ``asset`` (:func:`entry_for`), else the wallet's first entry: what
    names the wallet when the asset is unknown or not listed; ``None`` without entries."""
    entry = entry_for(entries, asset) if asset is not None else None
    return entry or (entries[0] if entries else None)


_HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\-\"' ]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"^\s*([A-Za-z0-9_\-]+|\"[^\"]*\")\s*=")
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def key_lines(text: str) -> dict[tuple[str | int, ...], int]:
    """Map each table and key path (``("wallets", 2, "role")``) to its 1-based line.

    Other TOML readers (the kill switch's settings) use it, with :func:`line_of` and
    :func:`dotted_key`, to name file, line and key in their errors the same way.
    """
    index: dict[tuple[str | int, ...], int] = {}
    counters: dict[tuple[str, ...], int] = {}
    table: tuple[str | int, ...] = ()
    for lineno, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(line)
        if header:
            names = tuple(p.strip().strip("\"'") for p in header.group(2).split("."))
            if header.group(1) == "[[":
                n = counters.get(names, -1) + 1
                counters[names] = n
                table = (*names, n)
            else:
                table = names
            index.setdefault(table, lineno)
            continue
        key = _KEY.match(line)
        if key:
            index.setdefault((*table, key.group(1).strip('"')), lineno)
    return index


def line_of(index: dict[tuple[str | int, ...], int], loc: tuple[str | int, ...]) -> int | None:
    """The line of ``loc``, or of its nearest enclosing table or key that has one."""
    for end in range(len(loc), 0, -1):
        if loc[:end] in index:
            return index[loc[:end]]
    return None


def dotted_key(loc: tuple[str | int, ...]) -> str:
    """A key path as it reads in TOML: ``wallets[2].role``.

    >>> dotted_key(("wallets", 2, "role"))
    'wallets[2].role'
    """
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def resolve_env(data: Any, loc: tuple[str | int, ...], missing: list[tuple[str | int, ...]]) -> Any:
    """``data`` with every ``${NAME}`` replaced from the environment; unset names' paths go to
    ``missing``."""
    if isinstance(data, dict):
        return {k: resolve_env(v, (*loc, k), missing) for k, v in data.items()}
    if isinstance(data, list):
        return [resolve_env(v, (*loc, i), missing) for i, v in enumerate(data)]
    if isinstance(data, str) and "${" in data:

        def sub(match: re.Match[str]) -> str:
            value = os.environ.get(match.group(1))
            if value is None:
                missing.append(loc)
                return ""
            return value

        return _ENV.sub(sub, data)
    return data


def loads(text: str, path: str = "<string>") -> Config:
    """Parse and validate config text; raise :class:`ConfigError` naming file, line and key."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"line (\d+)", str(exc))
        raise ConfigError(path, int(match.group(1)) if match else None, "", str(exc)) from exc
    index = key_lines(text)
    missing: list[tuple[str | int, ...]] = []
    data = resolve_env(raw, (), missing)
    if missing:
        loc = missing[0]
        raise ConfigError(
            path, line_of(index, loc), dotted_key(loc), "environment variable not set"
        )
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(err["loc"])
        msg = err["msg"]
        cause = err.get("ctx", {}).get("error")
        if isinstance(cause, _KeyError):
            loc, msg = (*loc, *cause.loc), cause.reason
        raise ConfigError(path, line_of(index, loc) or 1, dotted_key(loc), msg) from exc


def learning_notice(detection: DetectionConfig, now: datetime) -> str | None:
    """What ``[detection] learn_until`` means at ``now``, for the operator (None when unset).

    A moment still to come is said loudly: until then the detectors judge nothing, which is right
    while the watchers backfill before a planned go-live and fails open if the date is a typo.

    >>> d = DetectionConfig(learn_until=datetime(2026, 12, 7, tzinfo=UTC))
    >>> learning_notice(d, datetime(2026, 12, 8, tzinfo=UTC))
    'transfers before 2026-12-07T00:00:00Z are learned from, not judged ([detection] learn_until)'
    >>> learning_notice(d, datetime(2026, 12, 6, 23, tzinfo=UTC)).split(": ")
    ['[detection] learn_until is 2026-12-07T00:00:00Z, 1.0 h from now',
     'until then no transfer raises an alert or freezes a wallet']
    """
    until = detection.learn_until
    if until is None:
        return None
    moment = until.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if until <= now:
        return f"transfers before {moment} are learned from, not judged ([detection] learn_until)"
    hours = (until - now).total_seconds() / 3600
    return (
        f"[detection] learn_until is {moment}, {hours:.1f} h from now: until then no transfer "
        "raises an alert or freezes a wallet"
    )


def unwatched_wallets(config: Config) -> list[tuple[int, WalletConfig]]:
    """The wallets (with their place in ``[[wallets]]``) whose chain has no ``[chains.*]``
    table: a live run has nothing to watch them with (a backtest needs none).

    >>> cfg = loads('[[wallets]]\\nchain = "nem"\\naddress = "HOT"\\nlabel = "nem-hot"\\n')
    >>> [(i, w.label) for i, w in unwatched_wallets(cfg)]
    [(0, 'nem-hot')]
    """
    return [(i, w) for i, w in enumerate(config.wallets) if w.chain not in config.chains]


def require_live_chains(config: Config, path: str | Path) -> None:
    """Raise :class:`ConfigError` naming the first wallet no chain table covers (file, line,
    key): a monitor that starts while one of its wallets is watched by nothing fails open."""
    unwatched = unwatched_wallets(config)
    if not unwatched:
        return
    i, wallet = unwatched[0]
    try:
        index = key_lines(Path(path).read_text(encoding="utf-8"))
    except OSError:
        index = {}
    others = len(unwatched) - 1
    more = f" (and {others} more wallet{'s' if others > 1 else ''})" if others else ""
    raise ConfigError(
        str(path),
        line_of(index, ("wallets", i, "chain")),
        f"wallets[{i}].chain",
        f"no [chains.{wallet.chain}] table, so nothing would watch {wallet.name}{more}: a live "
        "run needs one per chain it watches (a backtest needs none)",
    )


def load(path: str | Path) -> Config:
    """Read and validate a config file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(p), None, "", f"cannot read: {exc.strerror}") from exc
    return loads(text, str(p))
