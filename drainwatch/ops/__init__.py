"""Operations: Grafana dashboards as code, and pushing them (with annotations) to a Grafana server.

The dashboards are built in :mod:`drainwatch.ops.dashboards` and checked in as JSON under
``deploy/grafana/dashboards`` (a test keeps the two equal); :mod:`drainwatch.ops.grafana` uploads
them and turns the timeline's alerts and freezes into Grafana annotations.
"""

from drainwatch.ops.dashboards import (
    DASHBOARDS,
    build_dashboards,
    dashboard_expressions,
    render_expression,
    write_dashboards,
)
from drainwatch.ops.grafana import (
    Annotation,
    GrafanaPushError,
    annotate,
    annotations_from_timeline,
    push_dashboards,
)

__all__ = [
    "DASHBOARDS",
    "Annotation",
    "GrafanaPushError",
    "annotate",
    "annotations_from_timeline",
    "build_dashboards",
    "dashboard_expressions",
    "push_dashboards",
    "render_expression",
    "write_dashboards",
]
