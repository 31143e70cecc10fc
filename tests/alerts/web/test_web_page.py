"""The incident pages in a real headless chromium, served by a real uvicorn on loopback.

Needs Debian's chromium and Playwright for Python (``scripts/install-browser.sh``); Playwright
drives the system browser, it downloads none.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn
from playwright.sync_api import Browser, Page, sync_playwright

from alerts.timeline import Timeline
from alerts.web import create_web_app
from tests.alerts.incident_data import EXPLORERS, THIEF, Drain, at, record_drain

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
HOSTILE_NOTE = "<script>window.pwned = 1</script> attacker's memo <b>bold</b>"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Site:
    url: str
    drain: Drain
    nem_incident: str
    eth_incident: str


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    timeline = Timeline(str(tmp_path / "timeline.sqlite3"), clock=lambda: at(30))
    drain = record_drain(timeline)
    from alerts.incidents import incidents_from

    nem, eth = (i.id for i in incidents_from(timeline))
    timeline.add_note(
        nem,
        "Custody provider confirms the hot wallet signer is halted; keys being rotated.",
        author="kenji.sato",
        time=at(9),
    )
    timeline.add_note(nem, "Reported to the FSA duty desk.", author="aiko.tanaka", time=at(24))
    timeline.add_note(nem, HOSTILE_NOTE, author="mallory", time=at(25))

    port = _free_port()
    app = create_web_app(timeline, EXPLORERS, clock=lambda: at(40))
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert thread.is_alive(), "uvicorn did not start"
        assert time.monotonic() < deadline, "uvicorn did not start in 15 s"
        time.sleep(0.02)
    try:
        yield Site(f"http://127.0.0.1:{port}", drain, nem, eth)
    finally:
        server.should_exit = True
        thread.join(10)
        timeline.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert Path(CHROMIUM).exists(), "run scripts/install-browser.sh (Debian's chromium)"
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser, site: Site) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    requests: list[str] = []
    page = context.new_page()
    page.on("request", lambda request: requests.append(request.url))
    yield page
    context.close()
    # Everything the pages load comes from the service itself: no CDN, no outside font.
    assert requests
    assert all(url.startswith(site.url) for url in requests), requests


def test_the_list_shows_both_incidents_newest_first(page: Page, site: Site, tmp_path: Path) -> None:
    response = page.goto(f"{site.url}/incidents")
    assert response is not None
    # No script may run on these pages, whatever a chain or a responder wrote.
    assert response.headers["content-security-policy"].startswith("default-src 'none'")

    rows = page.locator("tr.incident-row")
    assert rows.count() == 2
    assert rows.nth(0).get_attribute("data-incident") == site.eth_incident
    nem_row = page.locator(f'tr[data-incident="{site.nem_incident}"]')
    assert nem_row.locator(".pill").inner_text().lower() == "frozen"
    assert nem_row.locator(".sev").inner_text().lower() == "critical"
    assert "130,003,310" in nem_row.inner_text()
    assert "2 min 6 s" in nem_row.inner_text()  # first alert to freeze
    eth_row = page.locator(f'tr[data-incident="{site.eth_incident}"]')
    # No alert of that incident asked for a freeze: open, not "not frozen".
    assert eth_row.locator(".pill").inner_text().lower() == "open"
    # The stylesheet is served locally and applied (dark background).
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(11, 15, 20)"
    page.screenshot(path=str(tmp_path / "incidents.png"), full_page=True)


def test_the_incident_page_shows_timeline_chart_and_notes(
    page: Page, site: Site, tmp_path: Path
) -> None:
    page.goto(f"{site.url}/incidents")
    page.locator(f'tr[data-incident="{site.nem_incident}"] .title-cell a').click()
    page.wait_for_url(f"**/incidents/{site.nem_incident}")

    assert page.locator(".status-box .status-label").inner_text().lower() == "wallet frozen"
    timeline = page.locator("ol.timeline")
    # Transfers, with explorer links built from the config's template.
    transfers = timeline.locator('li[data-kind="transfer"]')
    assert transfers.count() == 8
    big = timeline.locator("li", has_text="100,000,000 XEM")
    assert big.count() == 1
    assert big.locator("a.tl-link").get_attribute("href") == EXPLORERS["nem"].replace(
        "{tx_hash}", site.drain.big.tx_hash
    )
    assert THIEF[:6] in big.inner_text()
    assert timeline.locator('li[data-category="retracted"]').count() == 1
    # The alerts, with their numbers.
    alerts = timeline.locator('li[data-kind="alert"]')
    assert alerts.count() == 3
    assert "A2" in alerts.nth(1).inner_text()
    assert "19% of hot wallet drained in 2 min" in alerts.nth(1).inner_text()
    critical_card = page.locator(f'details[data-alert="{site.drain.critical.id}"]')
    assert "projected_empty_s" in critical_card.inner_text()
    assert "540" in critical_card.inner_text()
    # The freeze and the other actions.
    assert timeline.locator('li[data-category="freeze_request"]').count() == 1
    freezes = timeline.locator('li[data-category="freeze"]')
    assert freezes.count() == 2  # accepted, and accepted again (already frozen)
    assert "wallet frozen" in freezes.nth(0).inner_text().lower()
    assert "already frozen" in freezes.nth(1).inner_text().lower()
    assert timeline.locator('li[data-category="notification"]').count() == 2
    # The notes, in the timeline and in their panel; a hostile note is shown, never run.
    notes = page.locator("ul.notes li.note")
    assert notes.count() == 3
    assert "keys being rotated" in notes.nth(0).inner_text()
    assert "aiko.tanaka" in notes.nth(1).inner_text()
    assert HOSTILE_NOTE in notes.nth(2).inner_text()
    assert timeline.locator('li[data-kind="note"]').count() == 3
    assert page.evaluate("typeof window.pwned") == "undefined"

    # The chart: both lines drawn, every alert and the freeze marked.
    chart = page.locator('svg.chart[data-asset="XEM"]')
    assert chart.count() == 1
    for series in ("outflow", "balance"):
        path = chart.locator(f'path[data-series="{series}"]')
        assert path.count() == 1
        assert (path.get_attribute("d") or "").count("V") >= 3
    alert_markers = chart.locator('g.marker[data-kind="alert"]')
    assert alert_markers.count() == 3
    assert alert_markers.nth(1).locator("text").text_content() == "A2 critical"
    freeze_markers = chart.locator('g.marker[data-kind="freeze"]')
    assert freeze_markers.count() == 1  # one order, however many alerts got it back
    assert freeze_markers.locator("text").text_content() == "frozen"
    # The freeze is drawn after the critical alert, left to right.
    x_alert = float(alert_markers.nth(1).locator("line").get_attribute("x1") or "nan")
    x_freeze = float(freeze_markers.locator("line").get_attribute("x1") or "nan")
    assert x_alert < x_freeze
    # The chart sits beside the timeline, not below it.
    timeline_box = page.locator(".timeline-panel").bounding_box()
    chart_box = page.locator(".chart-panel").bounding_box()
    assert timeline_box is not None
    assert chart_box is not None
    assert chart_box["x"] > timeline_box["x"] + timeline_box["width"] - 1

    shot = tmp_path / "incident.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 20_000


def test_exports_and_an_unknown_incident(page: Page, site: Site) -> None:
    page.goto(f"{site.url}/incidents/{site.nem_incident}")
    with page.expect_response(lambda r: r.url.endswith("/report.md")) as answer:
        page.locator("a.button", has_text="Markdown report").click()
    markdown = answer.value.text()
    assert markdown.startswith(f"# Incident report: {site.nem_incident}")
    assert "Time (JST)" in markdown

    response = page.goto(f"{site.url}/incidents/does-not-exist")
    assert response is not None
    assert response.status == 404
    assert "Incident not found" in page.locator("h1").inner_text()
