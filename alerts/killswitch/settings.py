"""The kill switch's settings: the ``[killswitch]`` table of ``drainwatch.toml``.

Keys, budgets, policy and hooks are config (data); secrets are ``${ENV_VAR}`` references, never
literals: a secret written into the file is refused, so the file can be committed and shown.

.. code-block:: toml

    [killswitch]
    store = "drainwatch-killswitch.sqlite3"   # or "postgresql://user@host/db"
    port = 8700

    [[killswitch.keys]]
    id = "alerts"
    secret = "${DW_KEY_ALERTS}"
    roles = ["detector"]

    [[killswitch.budgets]]
    label = "eth-hot"              # or wallet = "ethereum:0xabc..."
    asset = "ETH"
    max_amount = "250"
    window_s = 3600

    [killswitch.policy]
    min_severity = "critical"
    labels = ["eth-hot"]           # empty: every wallet
    dry_run = false

    [[killswitch.hooks]]
    name = "custody"
    kind = "bitgo"
    url = "https://custody.example"
    token = "${BITGO_TOKEN}"
    coins = { ethereum = "eth" }
    wallet_ids = { "ethereum:0xabc..." = "62f0c1a5e4b0" }

>>> import os
>>> os.environ["DOCTEST_KS_SECRET"] = "s3cret"
>>> s = loads_killswitch_settings('''
... [[wallets]]
... chain = "ethereum"
... address = "0xABC"
... label = "eth-hot"
... [killswitch]
... [[killswitch.keys]]
... id = "alerts"
... secret = "${DOCTEST_KS_SECRET}"
... roles = ["detector"]
... ''')
>>> s.keys[0].secret.get_secret_value(), s.label_of("ethereum", "0xabc")
('s3cret', 'eth-hot')
>>> loads_killswitch_settings('[killswitch]\\n[[killswitch.keys]]\\nid = "a"\\nsecret = "plain"\\n'
...                           'roles = ["detector"]\\n', path="dw.toml")
Traceback (most recent call last):
...
drainwatch.config.ConfigError: dw.toml:4: killswitch.keys[0].secret: a secret must be an ...
"""

from __future__ import annotations

import re
import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from alerts.killswitch.auth import ApiKey, Role
from drainwatch.config import (
    ConfigError,
    WalletConfig,
    dotted_key,
    entry_or_first,
    key_lines,
    line_of,
    resolve_env,
)
from drainwatch.events import Severity, normalize_address, wallet_key

__all__ = [
    "AutoFreezePolicy",
    "HookSettings",
    "KeySettings",
    "KillSwitchSettings",
    "RetrySettings",
    "VelocityBudget",
    "load_killswitch_settings",
    "loads_killswitch_settings",
]

_REFERENCE = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*\}$")
_SECRET_FIELDS = {("keys", "secret"), ("hooks", "secret"), ("hooks", "token")}


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _wallet_key(value: str) -> str:
    """``chain:address`` with the address normalised the way every stage does."""
    chain, sep, address = value.partition(":")
    if not sep or not chain or not address:
        raise ValueError("must be 'chain:address'")
    return wallet_key(chain, normalize_address(address))


class KeySettings(_Model):
    """A credential: id, secret (by reference), roles, and whether it may be a bearer token."""

    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    secret: SecretStr
    roles: tuple[Role, ...] = Field(min_length=1)
    bearer: bool = False

    @field_validator("secret")
    @classmethod
    def _long_enough(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) < 4:
            raise ValueError("the secret is too short")
        return value

    def api_key(self) -> ApiKey:
        """The key as the authenticator uses it."""
        return ApiKey(
            self.id, self.secret.get_secret_value().encode(), frozenset(self.roles), self.bearer
        )


class VelocityBudget(_Model):
    """At most ``max_amount`` of ``asset`` authorized per ``window_s`` for a wallet or a label.

    A label's budget is shared by all of its wallets: a drain split over several hot wallets of one
    label still hits it.
    """

    wallet: str | None = None
    label: str | None = None
    asset: str = Field(min_length=1)
    max_amount: Decimal = Field(gt=0)
    window_s: int = Field(gt=0)

    @field_validator("wallet")
    @classmethod
    def _norm_wallet(cls, value: str | None) -> str | None:
        return None if value is None else _wallet_key(value)

    @model_validator(mode="after")
    def _one_scope(self) -> VelocityBudget:
        if (self.wallet is None) == (self.label is None):
            raise ValueError("give exactly one of wallet or label")
        return self

    @property
    def scope(self) -> str:
        """``wallet:<key>`` or ``label:<label>``: what the budget's spending is summed over."""
        return f"wallet:{self.wallet}" if self.wallet else f"label:{self.label}"


class AutoFreezePolicy(_Model):
    """Which automatic freezes (from the detector role) are carried out.

    Manual freezes by operators are never subject to it.
    """

    min_severity: Severity = Severity.CRITICAL
    wallets: tuple[str, ...] = ()
    """Wallet keys automatic freezes may touch; with ``labels`` both empty, every wallet."""
    labels: tuple[str, ...] = ()
    dry_run: bool = False
    """Decide and audit, but freeze nothing (to gain confidence in a new detector)."""

    @field_validator("wallets")
    @classmethod
    def _norm_wallets(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_wallet_key(v) for v in values)


class HookSettings(_Model):
    """An outbound hook told of every freeze (and, for a webhook, every unfreeze).

    ``webhook``: POST of the order as JSON to ``url``, signed with ``secret``
    (``X-Drainwatch-Signature: t=<unix s>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>``).

    ``bitgo``: ``POST {url}/api/v2/{coin}/wallet/{walletId}/freeze`` with
    ``{"duration": duration_s}`` and ``Authorization: Bearer <token>``; only for wallets listed in
    ``wallet_ids`` on a chain listed in ``coins`` (an unfreeze has no call: the freeze expires).
    """

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    kind: Literal["webhook", "bitgo"]
    url: str = Field(pattern=r"^https?://")
    secret: SecretStr | None = None
    token: SecretStr | None = None
    duration_s: int = Field(default=3600, gt=0)
    coins: dict[str, str] = Field(default_factory=dict)
    wallet_ids: dict[str, str] = Field(default_factory=dict)

    @field_validator("wallet_ids")
    @classmethod
    def _norm_ids(cls, values: dict[str, str]) -> dict[str, str]:
        return {_wallet_key(k): v for k, v in values.items()}

    @model_validator(mode="after")
    def _credentials(self) -> HookSettings:
        if self.kind == "webhook" and self.secret is None:
            raise ValueError("a webhook needs a secret to sign with")
        if self.kind == "bitgo" and self.token is None:
            raise ValueError("a bitgo hook needs a token")
        return self


class RetrySettings(_Model):
    """How hooks are retried, and when a failing one is escalated (it keeps being retried)."""

    backoff_s: float = Field(default=0.5, gt=0)
    backoff_max_s: float = Field(default=60.0, gt=0)
    escalate_after_attempts: int = Field(default=5, ge=1)
    escalate_after_s: float = Field(default=120.0, gt=0)
    timeout_s: float = Field(default=5.0, gt=0)


class KillSwitchSettings(_Model):
    """The ``[killswitch]`` table (plus the labels of the top-level ``[[wallets]]``)."""

    store: str = "drainwatch-killswitch.sqlite3"
    """A SQLite file, or a ``postgresql://`` DSN (a password in it should be a ``${VAR}``)."""
    host: str = "127.0.0.1"
    port: int = Field(default=8700, ge=0, le=65535)
    signature_window_s: int = Field(default=300, gt=0, le=3600)
    allow_unknown_wallets: bool = False
    """Whether /v1/authorize may allow a wallet missing from ``[[wallets]]`` (default: deny)."""
    keys: tuple[KeySettings, ...] = Field(min_length=1)
    budgets: tuple[VelocityBudget, ...] = ()
    policy: AutoFreezePolicy = AutoFreezePolicy()
    hooks: tuple[HookSettings, ...] = ()
    retry: RetrySettings = RetrySettings()
    wallets: tuple[WalletConfig, ...] = ()
    """From the top-level ``[[wallets]]``: the known wallets and their labels."""

    @model_validator(mode="after")
    def _unique(self) -> KillSwitchSettings:
        for what, names in (
            ("key id", [k.id for k in self.keys]),
            ("hook name", [h.name for h in self.hooks]),
        ):
            duplicates = {n for n in names if names.count(n) > 1}
            if duplicates:
                raise ValueError(f"duplicate {what}: {sorted(duplicates)[0]}")
        return self

    def api_keys(self) -> dict[str, ApiKey]:
        """The credentials by key id."""
        return {k.id: k.api_key() for k in self.keys}

    def label_of(self, chain: str, wallet: str, asset: str | None = None) -> str | None:
        """The label of a known wallet (of a wallet listed once per asset, the entry for
        ``asset``, or the first); None when unknown or unlabelled."""
        entry = entry_or_first(self.entries_of(chain, wallet), asset)
        return entry.label if entry is not None else None

    def entries_of(self, chain: str, wallet: str) -> list[WalletConfig]:
        """The ``[[wallets]]`` entries of one wallet: one, or one per asset."""
        key = wallet_key(chain, normalize_address(wallet))
        return [w for w in self.wallets if w.key == key]

    def is_known(self, chain: str, wallet: str) -> bool:
        """Whether the wallet is in ``[[wallets]]``."""
        key = wallet_key(chain, normalize_address(wallet))
        return any(w.key == key for w in self.wallets)


def _literal_secrets(raw: dict[str, Any]) -> tuple[str | int, ...] | None:
    for table in ("keys", "hooks"):
        for i, item in enumerate(raw.get(table) or []):
            if not isinstance(item, dict):
                continue
            for name, value in item.items():
                if (table, name) in _SECRET_FIELDS and not (
                    isinstance(value, str) and _REFERENCE.match(value)
                ):
                    return ("killswitch", table, i, name)
    return None


def loads_killswitch_settings(text: str, path: str = "<string>") -> KillSwitchSettings:
    """Parse the ``[killswitch]`` table of config text; :class:`ConfigError` names line and key.

    Raises:
        ConfigError: Bad TOML, no ``[killswitch]`` table, a literal secret, an unset environment
            variable, or an invalid value.
    """
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"line (\d+)", str(exc))
        raise ConfigError(path, int(match.group(1)) if match else None, "", str(exc)) from exc
    index = key_lines(text)
    table = raw.get("killswitch")
    if not isinstance(table, dict):
        raise ConfigError(path, None, "killswitch", "no [killswitch] table")
    literal = _literal_secrets(table)
    if literal is not None:
        raise ConfigError(
            path,
            line_of(index, literal),
            dotted_key(literal),
            "a secret must be an ${ENV_VAR} reference",
        )
    missing: list[tuple[str | int, ...]] = []
    data = resolve_env({"killswitch": table}, (), missing)["killswitch"]
    if missing:
        loc = missing[0]
        raise ConfigError(
            path, line_of(index, loc), dotted_key(loc), "environment variable not set"
        )
    try:
        wallets = tuple(WalletConfig.model_validate(w) for w in raw.get("wallets") or [])
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(path, line_of(index, ("wallets",)), "wallets", err["msg"]) from exc
    try:
        return KillSwitchSettings.model_validate({**data, "wallets": wallets})
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ("killswitch", *err["loc"])
        raise ConfigError(path, line_of(index, loc), dotted_key(loc), err["msg"]) from exc


def load_killswitch_settings(path: str | Path) -> KillSwitchSettings:
    """Read the ``[killswitch]`` table of a config file (see :func:`loads_killswitch_settings`)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(p), None, "", f"cannot read: {exc.strerror}") from exc
    return loads_killswitch_settings(text, str(p))
