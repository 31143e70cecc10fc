"""The incident web pages as a FastAPI router, or a whole app, over a timeline.

Routes (under an optional prefix):

* ``GET /incidents``: the incident list (HTML, refreshes every 30 s);
* ``GET /incidents/{id}``: one incident, its timeline beside the outflow chart (HTML);
* ``GET /incidents/{id}/report.md`` and ``/report.json``: the exports of :mod:`alerts.report`;
* ``GET /incidents/static/incidents.css``: the page's only stylesheet, served from the package.

The pages carry no script and a Content-Security-Policy that allows none, so nothing a chain or a
responder wrote can run in a responder's browser.

>>> from alerts.timeline import Timeline
>>> app = create_web_app(Timeline(":memory:"), {"ethereum": "https://etherscan.io/tx/{tx_hash}"})
>>> sorted(app.openapi()["paths"])  # doctest: +NORMALIZE_WHITESPACE
['/incidents', '/incidents/static/incidents.css', '/incidents/{incident_id}',
 '/incidents/{incident_id}/report.json', '/incidents/{incident_id}/report.md']
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from importlib import resources

from fastapi import APIRouter, FastAPI
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response

from alerts.incidents import (
    DEFAULT_POLICY,
    Incident,
    IncidentNotFoundError,
    IncidentPolicy,
    balances_before,
    find_incident,
    flow_series,
    incidents_from,
)
from alerts.report import render_json, render_markdown
from alerts.timeline import Timeline, utc_now
from alerts.web.pages import incident_page, list_page, not_found_page
from drainwatch.config import WalletConfig, wallets_by_key

__all__ = ["SECURITY_HEADERS", "create_web_app", "incidents_router"]

SECURITY_HEADERS: dict[str, str] = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self' data:; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


def _css() -> bytes:
    return resources.files("alerts.web").joinpath("static/incidents.css").read_bytes()


def incidents_router(
    timeline: Timeline,
    explorer_urls: Mapping[str, str],
    *,
    policy: IncidentPolicy = DEFAULT_POLICY,
    wallets: Sequence[WalletConfig] = (),
    prefix: str = "",
    clock: Callable[[], datetime] = utc_now,
) -> APIRouter:
    """The incident pages as a router, to include in the alerts service's app.

    Args:
        timeline: The timeline to read (it is read again on every request).
        explorer_urls: ``chain -> URL template`` with ``{tx_hash}`` (from ``[chains.*]``).
        policy: How alerts are grouped into incidents.
        wallets: The ``[[wallets]]`` entries: their ``opening_balance`` is used only when neither
            the chain nor the alerts tell the balance.
        prefix: A path prefix for every route (``"/ui"`` serves ``/ui/incidents``), so the pages
            link to each other correctly; include the router without another prefix.
        clock: Gives the "rendered at" time and the exports' generation time.
    """
    router = APIRouter(prefix=prefix)
    urls = dict(explorer_urls)
    entries = wallets_by_key(wallets)
    any_opening = any(w.opening_balance is not None for w in wallets)

    def load() -> list[Incident]:
        return incidents_from(timeline, policy)

    def html(text: str, status_code: int = 200) -> HTMLResponse:
        return HTMLResponse(text, status_code=status_code, headers=SECURITY_HEADERS)

    def pick(ref: str) -> Incident | HTMLResponse:
        try:
            return find_incident(load(), ref)
        except IncidentNotFoundError as exc:
            return html(not_found_page(ref, str(exc), prefix, clock()), 404)

    @router.get("/incidents", response_class=HTMLResponse, summary="The incident list")
    def incident_list() -> HTMLResponse:
        return html(list_page(load(), prefix, clock()))

    @router.get("/incidents/static/incidents.css", summary="The pages' stylesheet")
    def stylesheet() -> Response:
        return Response(
            _css(),
            media_type="text/css",
            headers={"Cache-Control": "max-age=300", "X-Content-Type-Options": "nosniff"},
        )

    @router.get("/incidents/{incident_id}", response_class=HTMLResponse, summary="One incident")
    def incident_detail(incident_id: str) -> HTMLResponse:
        found = pick(incident_id)
        if isinstance(found, HTMLResponse):
            return found
        needs_opening = any_opening and any(
            t.transfer.balance_after is None for t in found.transfers
        )
        before = balances_before(timeline, found, entries) if needs_opening else None
        series = flow_series(found, before)
        return html(incident_page(found, series, urls, prefix, clock()))

    @router.get("/incidents/{incident_id}/report.md", summary="Markdown report")
    def report_markdown(incident_id: str) -> Response:
        found = pick(incident_id)
        if isinstance(found, HTMLResponse):
            return found
        return PlainTextResponse(
            render_markdown(found, urls, clock()),
            media_type="text/markdown; charset=utf-8",
            headers={
                **SECURITY_HEADERS,
                "Content-Disposition": f'inline; filename="incident-{found.id}.md"',
            },
        )

    @router.get("/incidents/{incident_id}/report.json", summary="JSON export")
    def report_json(incident_id: str) -> Response:
        found = pick(incident_id)
        if isinstance(found, HTMLResponse):
            return found
        return Response(
            render_json(found, urls, clock()),
            media_type="application/json",
            headers=SECURITY_HEADERS,
        )

    return router


def create_web_app(
    timeline: Timeline,
    explorer_urls: Mapping[str, str],
    *,
    policy: IncidentPolicy = DEFAULT_POLICY,
    wallets: Sequence[WalletConfig] = (),
    clock: Callable[[], datetime] = utc_now,
) -> FastAPI:
    """A stand-alone app serving the incident pages (``/`` redirects to ``/incidents``)."""
    app = FastAPI(title="drainwatch incidents", docs_url=None, redoc_url=None)
    app.include_router(
        incidents_router(
            timeline,
            explorer_urls,
            policy=policy,
            wallets=wallets,
            clock=clock,
        )
    )

    @app.get("/", include_in_schema=False)
    def home() -> RedirectResponse:
        return RedirectResponse("/incidents")

    return app
