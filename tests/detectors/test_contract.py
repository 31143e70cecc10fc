"""One contract over every detector: score_one is pure, findings are well formed, all picklable."""

from __future__ import annotations

import copy
import pickle
from collections.abc import Callable
from decimal import Decimal

import pytest

from detectors import Detector, LedgerReconciliation, VelocityDetector, WalletState
from detectors.base import Finding
from drainwatch.events import Direction, Transfer
from tests.detectors.factories import approval, transfer, wallet

DETECTORS: dict[str, Callable[[], Detector]] = {
    "velocity": VelocityDetector,
    "ledger": lambda: LedgerReconciliation(active=True),
}


def history(detector: Detector) -> WalletState:
    """A wallet with some past: deposits, payouts, an approval waiting."""
    state = WalletState(wallet(balance="1000"), "XEM", internal=frozenset({"HOT", "COLD"}))
    if isinstance(detector, LedgerReconciliation):
        detector.learn_approval(approval("C1", "3", minutes=-2))
        detector.learn_approval(approval("C2", "4", minutes=-1))
    past = [
        transfer("SRC", 200, minutes=-50, direction=Direction.IN),
        transfer("C0", 5, minutes=-40),
        transfer("THIEF", 1, minutes=-30),
        transfer("COLD", 100, minutes=-20),
        transfer("C1", 3, minutes=-1),
    ]
    for t in past:
        state.prepare(t)
        finding = detector.score_one(t, state)
        state.apply(t, learn=not (finding and finding.freeze))
        if not (finding and finding.freeze):
            detector.learn_one(t)
    return state


PROBES: list[Transfer] = [
    transfer("C9", 3),  # ordinary
    transfer("C2", 4),  # approved
    transfer("SRC", 50, direction=Direction.IN),  # inflow
    transfer("COLD", 500),  # internal
    transfer("THIEF", 200),  # test then drain
    transfer("NEWBIE", 60),  # large, new
    transfer("Y", 1, wallet="COLD"),  # cold outflow (state of the hot wallet: still pure)
]


@pytest.fixture(params=sorted(DETECTORS))
def detector(request: pytest.FixtureRequest) -> Detector:
    made: Detector = DETECTORS[request.param]()
    return made


def test_is_a_detector_with_a_name(detector: Detector) -> None:
    assert isinstance(detector, Detector)
    assert isinstance(detector.name, str)
    assert detector.name


@pytest.mark.parametrize("probe", PROBES, ids=lambda t: t.counterparty)
def test_score_one_changes_nothing(detector: Detector, probe: Transfer) -> None:
    state = history(detector)
    state.prepare(probe)
    before = pickle.dumps((detector, state))
    detector.score_one(probe, state)
    detector.score_one(probe, state)
    assert pickle.dumps((detector, state)) == before


def test_findings_are_well_formed(detector: Detector) -> None:
    findings: list[Finding] = []
    for probe in PROBES:
        state = history(detector)
        state.prepare(probe)
        finding = detector.score_one(probe, state)
        if finding is not None:
            findings.append(finding)
    assert findings, "the probes include transfers every detector must flag"
    for finding in findings:
        assert finding.detector == detector.name
        assert finding.score >= 0
        assert not finding.freeze or finding.severity.value == "critical"
        assert finding.summary.strip()
        assert "\n" not in finding.summary
        assert finding.transfer_ids
        assert finding.tx_hashes
        for key, value in finding.metrics.items():
            assert Decimal(value).is_finite(), key


def test_detector_and_state_clone_and_pickle(detector: Detector) -> None:
    state = history(detector)
    for clone in (copy.deepcopy((detector, state)), pickle.loads(pickle.dumps((detector, state)))):
        probe = PROBES[4]
        clone[1].prepare(probe)
        state.prepare(probe)
        assert clone[0].score_one(probe, clone[1]) == detector.score_one(probe, state)
