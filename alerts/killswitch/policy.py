"""The kill switch's pure decisions: automatic-freeze policy and pre-sign authorization.

No I/O here: the store gathers the facts inside its transaction and calls these.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, localcontext

from alerts.killswitch.settings import AutoFreezePolicy, VelocityBudget
from drainwatch.events import Severity

__all__ = [
    "AuthorizeVerdict",
    "AutoFreezeVerdict",
    "BudgetUse",
    "authorize_verdict",
    "auto_freeze_verdict",
    "budgets_for",
]


@dataclass(frozen=True, slots=True)
class AutoFreezeVerdict:
    """Whether an automatic freeze is carried out."""

    freeze: bool
    dry_run: bool
    reason: str


def auto_freeze_verdict(
    policy: AutoFreezePolicy, severity: Severity | None, key: str, label: str | None
) -> AutoFreezeVerdict:
    """Apply the automatic-freeze policy to a detector's freeze request.

    A request without a severity is the detector's own freeze decision taken at face value
    (critical): the alerts stage forwards only alerts whose detector asked for a freeze.

    >>> p = AutoFreezePolicy(labels=("eth-hot",))
    >>> auto_freeze_verdict(p, Severity.CRITICAL, "ethereum:0xa", "eth-hot").freeze
    True
    >>> auto_freeze_verdict(p, Severity.WARNING, "ethereum:0xa", "eth-hot").reason
    'severity warning is below the policy minimum critical'
    >>> auto_freeze_verdict(p, None, "ethereum:0xb", None).reason
    'ethereum:0xb is not covered by the automatic-freeze policy'
    >>> v = auto_freeze_verdict(p.model_copy(update={"dry_run": True}), None, "e:0xa", "eth-hot")
    >>> v.freeze, v.dry_run
    (False, True)
    """
    level = severity or Severity.CRITICAL
    if level.rank < policy.min_severity.rank:
        return AutoFreezeVerdict(
            False,
            policy.dry_run,
            f"severity {level.value} is below the policy minimum {policy.min_severity.value}",
        )
    scoped = bool(policy.wallets or policy.labels)
    if scoped and key not in policy.wallets and (label is None or label not in policy.labels):
        return AutoFreezeVerdict(
            False, policy.dry_run, f"{key} is not covered by the automatic-freeze policy"
        )
    if policy.dry_run:
        return AutoFreezeVerdict(False, True, "dry run: the policy would freeze")
    return AutoFreezeVerdict(True, False, "policy: freeze")


def budgets_for(
    budgets: tuple[VelocityBudget, ...], key: str, label: str | None, asset: str
) -> list[VelocityBudget]:
    """The budgets that apply to one wallet and asset (asset names compare case-insensitively).

    >>> b = VelocityBudget(label="hot", asset="ETH", max_amount=Decimal(5), window_s=60)
    >>> [x.scope for x in budgets_for((b,), "ethereum:0xa", "hot", "eth")]
    ['label:hot']
    >>> budgets_for((b,), "ethereum:0xa", "hot", "USDC")
    []
    """
    return [
        b
        for b in budgets
        if b.asset.upper() == asset.upper()
        and (
            (b.wallet is not None and b.wallet == key) or (b.label is not None and b.label == label)
        )
    ]


@dataclass(frozen=True, slots=True)
class BudgetUse:
    """A budget and what was authorized under it within its window."""

    budget: VelocityBudget
    spent: Decimal


@dataclass(frozen=True, slots=True)
class AuthorizeVerdict:
    """The answer to a signer."""

    allowed: bool
    reason: str


def authorize_verdict(
    *,
    frozen: bool,
    known: bool,
    allow_unknown: bool,
    amount: Decimal,
    uses: list[BudgetUse],
    key: str,
) -> AuthorizeVerdict:
    """May this wallet send ``amount`` now?

    Denied, in this order: frozen wallet; unknown wallet (unless allowed: a wallet drainwatch does
    not watch cannot be protected, so by default a signer may not use it); any budget that the
    amount would exceed.

    >>> b = VelocityBudget(wallet="nem:N", asset="XEM", max_amount=Decimal(100), window_s=60)
    >>> authorize_verdict(frozen=False, known=True, allow_unknown=False, amount=Decimal(30),
    ...                   uses=[BudgetUse(b, Decimal(70))], key="nem:N")
    AuthorizeVerdict(allowed=True, reason='ok')
    >>> authorize_verdict(frozen=False, known=True, allow_unknown=False, amount=Decimal(31),
    ...                   uses=[BudgetUse(b, Decimal(70))], key="nem:N").reason
    'velocity budget wallet:nem:N exceeded: 70 + 31 > 100 XEM per 60 s'
    >>> authorize_verdict(frozen=True, known=True, allow_unknown=False, amount=Decimal(1),
    ...                   uses=[], key="nem:N").reason
    'wallet nem:N is frozen'
    """
    if frozen:
        return AuthorizeVerdict(False, f"wallet {key} is frozen")
    if not known and not allow_unknown:
        return AuthorizeVerdict(False, f"wallet {key} is not a known wallet")
    for use in uses:
        b = use.budget
        # Exact: wei-scale amounts have more digits than the default 28-digit context keeps.
        with localcontext(prec=200):
            over = use.spent + amount > b.max_amount
        if over:
            return AuthorizeVerdict(
                False,
                f"velocity budget {b.scope} exceeded: {use.spent} + {amount} > {b.max_amount}"
                f" {b.asset} per {b.window_s} s",
            )
    return AuthorizeVerdict(True, "ok")
