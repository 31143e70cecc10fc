"""The incident web pages served by the alerts service: a list, and one incident's timeline
beside a chart of its outflow and remaining balance. Server-rendered HTML and SVG, no JavaScript.

Mount the router in an existing app::

    app.include_router(incidents_router(timeline, explorer_urls))

or serve :func:`create_web_app` on its own.
"""

from alerts.web.app import SECURITY_HEADERS, create_web_app, incidents_router

__all__ = ["SECURITY_HEADERS", "create_web_app", "incidents_router"]
