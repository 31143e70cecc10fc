"""Incident correlation: several wallets losing value abnormally at once are one incident.

The engine shows the correlator every finding of every wallet (any chain). When at least
``min_wallets`` distinct wallets have had a warning or critical finding within ``window_s`` of each
other, and a detector froze on at least one of them, they form one incident: every alert of its
members carries the same ``incident_id`` (derived from the first member's key and the time of its
first finding, so a replay gives the same id), and the bar for freezing drops for every wallet of
the exchange while it lasts:

once ``min_frozen`` wallets have been frozen on within ``window_s``, other than by a crowd's
evidence (below), and not in a market-wide withdrawal surge (below):

* a member's warning becomes a freeze (``rule_correlated`` in its metrics), unless it is a
  crowd's;
* a wallet that had only warned, and not only of a crowd, is frozen at once, by an alert of its
  own (the scoring, like the kill switch, counts freezes per wallet);
* an outflow to a new address of at least ``watch_share`` of a wallet's balance, which alone would
  raise nothing, freezes that wallet too (more on a wallet whose customers pay that much so often
  that one would come by chance: see ``watch_chance``);
* once ``fleet_frozen`` wallets have been so frozen on, or ``fleet_heavy`` that each lost at
  least ``heavy_share`` of its balance, every other hot wallet of the exchange is frozen at once,
  one alert each (the Phemex and KuCoin pattern: dozens of hot wallets across chains emptied
  within minutes); in a market-wide withdrawal surge (``surge_wallets`` wallets not frozen on
  with a crowd's findings within ``window_s``) only the second, and the bar does not drop: on a
  panic day customers' single large payments froze three wallets within twenty minutes, and the
  fleet with them, when customers most want their money (the alert that would have frozen it
  says so, once: :meth:`IncidentCorrelator.fleet_withheld`).

The engine tells it what a finding counts as (``level``): 1 a warning, 2 a freeze on a crowd's
evidence, 3 any other freeze, 4 one of a wallet that lost ``heavy_share`` of its balance. A
crowd's evidence is mid-size payments to several new addresses, as a withdrawal surge's
customers make them: on a panic day two or three wallets freeze so by chance within the half
hour, so such freezes open an incident (one page) but lower no bar. A warning on a crowd's
evidence (``crowd``; the baseline's rates are one too) makes its wallet a member, but neither
it nor its wallet is frozen when the bar drops: on a panic day every wallet warns so, and when
two froze on their own evidence within the half hour (blind replay, seed 0: one its customers
had run down, one on a customer's test and payment), five wallets were frozen with them. The
lowered bar's own freezes count as warnings (one of them is no wallet frozen on its own
evidence), and a ledger-approved outflow's findings not at all. A wallet counts as frozen on
while its last such freeze is within ``window_s``: a panic's warnings keep a wallet's spell
open for hours, and a whale frozen on at its start is not drained with the others.

Times are event times and need not come in order: "within ``window_s``" holds both ways, so a
detector that reads one partition hours ahead of another, or another replica's alert late, does
not join findings hours apart into an incident.

>>> c = IncidentCorrelator(window_s=1800)
>>> c.observe("tron:C", 0.0, level=1)
(None, [])
>>> c.observe("btc:B", 300.0, level=1)  # two warnings: a surge, maybe; not an incident
(None, [])
>>> incident, others = c.observe("eth:A", 600.0, level=3)
>>> incident == c.incident_of("btc:B", 700.0), others, c.lowered(700.0)
(True, [], False)
>>> c.observe("sol:E", 640.0, level=2)[1]  # a crowd's freeze: the bar stays
[]
>>> c.observe("ltc:F", 645.0, level=1, crowd=True)[1]  # a crowd's warning
[]
>>> c.observe("eth:D", 650.0, level=3)[1]  # a second wallet frozen on: the bar drops
['btc:B', 'tron:C']
>>> c.incident_of("ltc:F", 700.0) == incident  # a member all the same
True
>>> c.lowered(900.0), c.lowered(650.0 + 1800.0 + 1)
(True, False)
"""

from __future__ import annotations

from collections.abc import Container, Iterable
from dataclasses import dataclass, field
from decimal import Decimal

from drainwatch.events import event_id

__all__ = ["IncidentCorrelator"]


@dataclass(slots=True)
class _Incident:
    id: str
    first: float
    """The earliest finding of its members (event time)."""
    members: set[str] = field(default_factory=set)
    last: float = float("-inf")


def _extend(spells: dict[str, tuple[float, float]], wallet_key: str, now: float) -> None:
    """Stretch ``wallet_key``'s spell (first, last time) in ``spells`` to take in ``now``."""
    first, last = spells.get(wallet_key, (now, now))
    spells[wallet_key] = (min(first, now), max(last, now))


class IncidentCorrelator:
    """Groups abnormal wallets into incidents and lowers the freeze bar while one is open.

    Args:
        window_s: Findings on different wallets this close in time belong together.
        min_wallets: Distinct wallets that make an incident.
        min_frozen: Wallets a detector froze on (level 3), within ``window_s``, before the bar
            drops for the others (one false freeze on a market-wide surge day must not
            cascade).
        fleet_frozen: Wallets frozen on (level 3) within ``window_s`` that freeze every hot
            wallet of the exchange at once, once per incident (dozens of wallets emptied within
            minutes).
        watch_share: While an incident is open, an outflow to a new address of this share of the
            balance freezes.
        watch_chance: ... unless the wallet's own payments of that size to ordinary addresses
            come within ``window_s`` more often than this (a chance per incident): then the bar
            is above all but that many of them (0: always ``watch_share``).
        fleet_heavy: Wallets frozen on within ``window_s`` as each lost at least
            ``heavy_share`` of its balance (level 4) that freeze the fleet too, before a third
            is frozen (0: off).
        heavy_share: See ``fleet_heavy``; the engine tells which freezes are so (level 4).
        surge_wallets: Wallets not frozen on with a crowd's findings (a crowd's freeze or
            warning) within ``window_s`` that make a market-wide withdrawal surge: then the bar
            does not drop and only ``fleet_heavy`` freezes the fleet (0: off).
    """

    def __init__(
        self,
        *,
        window_s: int = 1800,
        min_wallets: int = 2,
        min_frozen: int = 2,
        fleet_frozen: int = 3,
        watch_share: Decimal = Decimal("0.01"),
        watch_chance: float = 0.01,
        fleet_heavy: int = 2,
        heavy_share: Decimal = Decimal("0.5"),
        surge_wallets: int = 3,
    ) -> None:
        self.window_s = window_s
        self.min_wallets = min_wallets
        self.min_frozen = min_frozen
        self.fleet_frozen = fleet_frozen
        self._fleet_done: str | None = None
        self._withheld: str | None = None
        """The incident whose fleet freeze a surge kept back, once said (:meth:`fleet_withheld`)."""
        self.watch_share = watch_share
        self.watch_chance = watch_chance
        self.fleet_heavy = fleet_heavy
        self.heavy_share = heavy_share
        self.surge_wallets = surge_wallets
        self._crowded: dict[str, tuple[float, float]] = {}
        """wallet key -> (first, last) time of its crowd's findings in this spell."""
        self._recent: dict[str, tuple[float, float, int]] = {}
        """wallet key -> (first abnormal time in this spell, last time, highest level)."""
        self._struck: dict[int, dict[str, tuple[float, float]]] = {1: {}, 3: {}, 4: {}}
        """level -> wallet key -> (first, last) time of its findings of at least that level in
        this spell (1: any finding on the wallet's own evidence, not a crowd's)."""
        self._incident: _Incident | None = None
        self._frozen: dict[str, float] = {}
        """wallet key -> when a freeze was last requested for it."""

    def _near(self, first: float, last: float, now: float) -> bool:
        """Whether a spell from ``first`` to ``last`` is within ``window_s`` of ``now``.

        Event times are not in order across wallets when a detector catches up: it may read one
        partition hours ahead of another, or another replica's alert late. A finding hours
        before a spell is no more with it than one hours after (in order, ``first <= now``).
        """
        return first - self.window_s <= now <= last + self.window_s

    def _open(self, now: float) -> _Incident | None:
        incident = self._incident
        if incident is None or not self._near(incident.first, incident.last, now):
            return None
        return incident

    def _struck_near(self, now: float, level: int = 3) -> int:
        """Wallets frozen on, other than by a crowd's evidence (level 3; 4: as they lost
        ``heavy_share``), within ``window_s`` of ``now``."""
        spells = self._struck[level]
        return sum(1 for first, last in spells.values() if self._near(first, last, now))

    def lowered(self, now: float) -> bool:
        """Whether the bar is lowered at ``now``: an open incident with ``min_frozen`` frozen,
        outside a market-wide surge."""
        if self._incident is None or self._open(now) is None:  # the first test is the hot path
            return False
        return self._struck_near(now) >= self.min_frozen and not self._surging(now)

    def lowered_for(self, wallet_key: str, now: float) -> bool:
        """Whether the lowered bar applies to ``wallet_key`` at ``now``: it is lowered (see
        :meth:`lowered`) and the wallet is not frozen already (see :meth:`is_frozen`)."""
        return self.lowered(now) and not self.is_frozen(wallet_key, now)

    def fleet_freeze_due(self, now: float) -> bool:
        """True once per incident, when ``fleet_frozen`` wallets have been frozen on other than
        by a crowd's evidence."""
        incident = self._open(now)
        if incident is None:
            return False
        if self._fleet_done == incident.id:
            return False
        heavy = self.fleet_heavy and self._struck_near(now, level=4) >= self.fleet_heavy
        if not heavy and (self._struck_near(now) < self.fleet_frozen or self._surging(now)):
            return False
        self._fleet_done = incident.id
        return True

    def _surging(self, now: float) -> int:
        """How many wallets not frozen on had a crowd's findings within ``window_s`` of ``now``,
        when they are ``surge_wallets`` or more (a market-wide withdrawal surge), else 0. A
        wallet being drained makes a crowd's findings too (a thief's payments are many, and
        mid-size); its own freeze tells what they were."""
        if not self.surge_wallets:
            return 0
        near, struck = self._near, self._struck[3]
        crowding = sum(
            1
            for key, (first, last) in self._crowded.items()
            if near(first, last, now) and not (key in struck and near(*struck[key], now))
        )
        return crowding if crowding >= self.surge_wallets else 0

    def fleet_withheld(self, now: float) -> int:
        """Once per incident: when ``fleet_frozen`` wallets have been frozen on but a market-wide
        surge keeps the fleet freeze back, how many wallets are crowding (else 0), for the
        alert that would have frozen the fleet to say so: on call may still freeze it."""
        incident = self._open(now)
        if incident is None or incident.id in (self._fleet_done, self._withheld):
            return 0
        if self._struck_near(now) < self.fleet_frozen:
            return 0
        crowding = self._surging(now)
        if crowding:
            self._withheld = incident.id
        return crowding

    def is_frozen(self, wallet_key: str, now: float) -> bool:
        """Whether a freeze was requested for this wallet within ``window_s`` of ``now``, or
        since the incident open at ``now`` began: the kill switch holds it frozen (unfreezing
        takes two approvers, and approvers who unfreeze a wallet in the middle of an incident
        have judged it), so neither the lowered bar nor the fleet freeze asks again."""
        at = self._frozen.get(wallet_key)
        if at is None:
            return False
        if now - at <= self.window_s:
            return True
        incident = self._open(now)
        return incident is not None and at >= incident.first

    def incident_of(self, wallet_key: str, now: float) -> str | None:
        """The open incident ``wallet_key`` belongs to, if any."""
        incident = self._open(now)
        if incident is None:
            return None
        return incident.id if wallet_key in incident.members else None

    def members(self, now: float) -> list[str]:
        """The wallets of the incident open at ``now``, the first to turn abnormal first
        (empty when none is open)."""
        incident = self._open(now)
        if incident is None:
            return []
        recent, never = self._recent, (float("inf"), 0.0, 0)
        return sorted(incident.members, key=lambda k: (recent.get(k, never)[0], k))

    def owed(
        self, keys: Iterable[str], hot: Container[str], now: float
    ) -> tuple[str | None, list[str]]:
        """What the incident open at ``now`` owes the wallets of ``keys``: those not frozen that
        it would have frozen had they been judged here when it acted (wallets just taken over
        from a replica that died, or whose rebuild decided nothing).

        Returns the incident's id and the wallets to freeze: every hot one (of ``hot``) once the
        fleet freeze is made or due (this marks it made), every member that only warned once
        the bar was lowered.
        """
        incident = self._open(now)
        if incident is None:
            return None, []
        fleet = self._fleet_done == incident.id or self.fleet_freeze_due(now)
        lowered = self.lowered(now)
        owed = [
            key
            for key in keys
            if not self.is_frozen(key, now)
            and (
                (fleet and key in hot)
                or (lowered and key in incident.members and self._only_warned(key, now))
            )
        ]
        return incident.id, owed

    def _only_warned(self, wallet_key: str, now: float) -> bool:
        """Whether the wallet warned within ``window_s`` of ``now``, not only of a crowd, and
        was not frozen on: what the lowered bar freezes."""
        recent = self._recent.get(wallet_key)
        own = self._struck[1].get(wallet_key)
        return recent is not None and recent[2] < 2 and own is not None and self._near(*own, now)

    def adopt_frozen(self, other: IncidentCorrelator) -> None:
        """Also remember the freezes ``other`` was told of (its wallets, none of them ours)."""
        self._frozen.update(other._frozen)

    def mark_frozen(self, wallet_key: str, now: float) -> None:
        """Remember that a freeze was requested for this wallet (no second one from here)."""
        self._frozen[wallet_key] = max(now, self._frozen.get(wallet_key, now))

    def observe(
        self,
        wallet_key: str,
        now: float,
        level: int,
        incident_id: str | None = None,
        *,
        crowd: bool = False,
    ) -> tuple[str | None, list[str]]:
        """Record an abnormal finding (``level`` 1 warning, 2 a crowd's freeze, 3 a freeze, 4 a
        freeze of a wallet that lost at least ``heavy_share``) on ``wallet_key``; ``crowd``: a
        warning on a crowd's evidence.

        Returns the incident id the wallet now belongs to (None when it is alone), and the other
        wallets that joined an incident just now with only warnings, which should be frozen now.

        A finding another detector replica made (read from the alerts topic) may come a little
        out of time order; it passes the ``incident_id`` that replica gave it, which names the
        incident here too when none is open yet, so the replicas' alerts share one id.
        """
        recent, struck, crowded = self._recent, self._struck, self._crowded
        for key in [k for k, (_, last, _) in recent.items() if now - last > self.window_s]:
            del recent[key]
            crowded.pop(key, None)
            for spells in struck.values():
                spells.pop(key, None)
        first, last, highest = recent.get(wallet_key, (now, now, 0))
        recent[wallet_key] = (min(first, now), max(last, now), max(highest, level))
        own = level >= 3 or (level == 1 and not crowd)
        if level == 2 or (level == 1 and crowd):
            _extend(crowded, wallet_key, now)
        for at_least, spells in struck.items():
            if level >= at_least and (at_least > 1 or own):
                _extend(spells, wallet_key, now)
        incident = self._incident
        if incident is not None and now - incident.last > self.window_s:
            incident = self._incident = None
        if incident is not None and now < incident.first - self.window_s:
            return None, []  # hours before the open incident: not part of it
        near = {k: v for k, v in recent.items() if self._near(v[0], v[1], now)}
        if incident is None and incident_id is not None:
            incident = self._incident = _Incident(incident_id, now)
        if incident is None:
            # Warnings alone never make an incident: a market-wide withdrawal surge makes every
            # wallet warn at once. It takes one wallet that a detector froze on.
            if len(near) < self.min_wallets or max(v[2] for v in near.values()) < 2:
                return None, []
            leader, (since, _, _) = min(near.items(), key=lambda item: (item[1][0], item[0]))
            incident = self._incident = _Incident(event_id("incident", leader, since), since)
        incident.first = min(incident.first, now)
        incident.last = max(incident.last, now)
        incident.members.update(near)
        if not self.lowered(now):
            return incident.id, []
        to_freeze = sorted(
            k
            for k in incident.members
            if k in near
            and k != wallet_key
            and not self.is_frozen(k, now)
            and self._only_warned(k, now)
        )
        return incident.id, to_freeze
