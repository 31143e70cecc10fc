"""Upload the dashboards to Grafana and mark alerts and freezes on them, through grafana-client.

``push_dashboards`` posts each dashboard to ``/api/dashboards/db`` with ``overwrite: true``, so
pushing again updates it in place (the uid identifies it). ``annotate`` adds one annotation per
alert and per accepted freeze read from the alerts stage's timeline, tagged ``drainwatch`` plus
``id:<event id>``; it first asks Grafana which ids it already has, so a second push adds nothing.

The timeline is read with plain SQL, read-only, so this module needs no stage code.

Example (needs a Grafana, so not run as a doctest)::

    from grafana_client import GrafanaApi
    client = GrafanaApi.from_url("http://127.0.0.1:3000", credential=os.environ["GRAFANA_TOKEN"])
    push_dashboards(client, build_dashboards().values(), folder_uid="drainwatch")
    annotate(client, annotations_from_timeline(".drainwatch/timeline.sqlite3"))
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from drainwatch.errors import DrainwatchError
from drainwatch.events import ALERTS, FREEZES, Alert, FreezeOrder, decode
from drainwatch.ops.dashboards import ANNOTATION_TAG

__all__ = [
    "Annotation",
    "GrafanaPushError",
    "annotate",
    "annotations_from_timeline",
    "ensure_folder",
    "push_dashboards",
]


class GrafanaPushError(DrainwatchError):
    """Grafana refused or could not be reached; the message says which request."""


@dataclass(frozen=True, slots=True)
class Annotation:
    """One Grafana annotation: an instant, tags and a line of text."""

    id: str
    """The alert id, or the freeze order's id: becomes the ``id:…`` tag that de-duplicates."""
    time: datetime
    text: str
    tags: tuple[str, ...] = field(default=())

    @property
    def time_ms(self) -> int:
        """Epoch milliseconds, what Grafana's annotation API takes."""
        return int(self.time.timestamp() * 1000)

    @property
    def all_tags(self) -> list[str]:
        """The tags sent: ``drainwatch``, ``id:<id>`` and the annotation's own."""
        return [ANNOTATION_TAG, f"id:{self.id}", *self.tags]


def alert_annotation(alert: Alert) -> Annotation:
    """The annotation of an alert, at the time of the transfer that triggered it.

    >>> from datetime import UTC
    >>> from drainwatch.events import Severity
    >>> t = datetime(2018, 1, 26, 2, 57, tzinfo=UTC)
    >>> a = Alert(id="a1", time=t, detected_at=t, chain="nem", wallet="NC3",
    ...           severity=Severity.CRITICAL, detector="velocity", freeze=True,
    ...           summary="31% drained in 4 min", wallet_label="nem-hot")
    >>> alert_annotation(a).all_tags
    ['drainwatch', 'id:a1', 'alert', 'critical', 'velocity', 'nem', 'nem-hot', 'freeze-requested']
    """
    tags = ["alert", alert.severity.value, alert.detector, alert.chain]
    if alert.wallet_label:
        tags.append(alert.wallet_label)
    if alert.freeze:
        tags.append("freeze-requested")
    text = f"{alert.severity.value.upper()} {alert.detector}: {alert.summary}"
    return Annotation(alert.id, alert.time, text, tuple(tags))


def freeze_annotation(order: FreezeOrder) -> Annotation:
    """The annotation of a freeze (or unfreeze) order the kill switch accepted."""
    who = f"{order.chain}:{order.wallet}"
    text = f"{order.action.value} {who} by {order.requested_by}: {order.reason}"
    return Annotation(order.id, order.time, text, (order.action.value, order.chain))


def annotations_from_timeline(path: str | Path, since: datetime | None = None) -> list[Annotation]:
    """Alerts and accepted freeze orders recorded in a timeline file, oldest first.

    Opens the SQLite file read-only; rows are decoded with the event contract.
    """
    uri = f"{Path(path).resolve().as_uri()}?mode=ro"
    try:
        db = sqlite3.connect(uri, uri=True)
    except sqlite3.Error as exc:
        raise GrafanaPushError(f"cannot open the timeline {path}: {exc}") from exc
    try:
        alerts = [row[0] for row in db.execute("SELECT payload FROM alerts ORDER BY time, seq")]
        orders = [
            row[0]
            for row in db.execute(
                "SELECT freeze_order FROM actions WHERE kind = 'freeze_accepted' "
                "AND freeze_order IS NOT NULL ORDER BY time, seq"
            )
        ]
    except sqlite3.Error as exc:
        raise GrafanaPushError(f"{path} is not a drainwatch timeline: {exc}") from exc
    finally:
        db.close()
    out = [alert_annotation(decode(ALERTS, bytes(p), Alert)) for p in alerts]
    seen: set[str] = set()
    for payload in orders:
        order = decode(FREEZES, bytes(payload), FreezeOrder)
        if order.id not in seen:  # a freeze of a frozen wallet returns the existing order
            seen.add(order.id)
            out.append(freeze_annotation(order))
    if since is not None:
        out = [a for a in out if a.time >= since]
    return sorted(out, key=lambda a: a.time)


def _call(what: str, request: Any, *args: Any, **kwargs: Any) -> Any:
    from grafana_client.client import GrafanaException  # type: ignore[import-untyped]

    try:
        return request(*args, **kwargs)
    except GrafanaException as exc:
        raise GrafanaPushError(f"{what}: {exc}") from exc
    except OSError as exc:  # connection refused, DNS: niquests' errors derive from OSError
        raise GrafanaPushError(f"{what}: {exc}") from exc


def ensure_folder(client: Any, uid: str, title: str = "drainwatch") -> str:
    """Create the folder ``uid`` unless it exists; return its uid."""
    from grafana_client.client import GrafanaClientError

    try:
        client.folder.get_folder(uid)
    except GrafanaClientError as exc:
        if exc.status_code != 404:
            raise GrafanaPushError(f"looking up folder {uid}: {exc}") from exc
        _call(f"creating folder {uid}", client.folder.create_folder, title, uid=uid)
    return uid


def push_dashboards(
    client: Any,
    dashboards: Iterable[Mapping[str, Any]],
    *,
    folder_uid: str | None = None,
    message: str = "drainwatch grafana push",
) -> list[dict[str, Any]]:
    """Create or update each dashboard (by uid) in ``folder_uid`` (None: the General folder).

    Args:
        client: A ``grafana_client.GrafanaApi``.
        dashboards: Dashboards in Grafana's JSON model (see :mod:`drainwatch.ops.dashboards`).
        folder_uid: Where to put them.
        message: The version note Grafana keeps.

    Returns:
        Grafana's reply per dashboard (``uid``, ``url``, ``version``, ``status``).
    """
    replies = []
    for board in dashboards:
        body: dict[str, Any] = {
            "dashboard": {k: v for k, v in board.items() if k != "id"},
            "overwrite": True,
            "message": message,
        }
        if folder_uid is not None:
            body["folderUid"] = folder_uid
        reply = _call(
            f"uploading dashboard {board.get('uid')}", client.dashboard.update_dashboard, body
        )
        replies.append(dict(reply))
    return replies


def _existing_ids(client: Any, annotations: Sequence[Annotation]) -> set[str]:
    start = min(a.time_ms for a in annotations)
    end = max(a.time_ms for a in annotations)
    found = _call(
        "listing annotations",
        client.annotations.get_annotation,
        time_from=start,
        time_to=end,
        tags=[ANNOTATION_TAG],
        limit=10000,
    )
    ids = set()
    for item in found or []:
        for tag in item.get("tags") or []:
            if isinstance(tag, str) and tag.startswith("id:"):
                ids.add(tag[3:])
    return ids


def annotate(client: Any, annotations: Iterable[Annotation]) -> int:
    """Add the annotations Grafana does not have yet (by ``id:`` tag); return how many were added.

    Organisation-wide annotations (no dashboard id), so every dashboard that shows the
    ``drainwatch`` tag shows them.
    """
    todo = list(annotations)
    if not todo:
        return 0
    have = _existing_ids(client, todo)
    added = 0
    for a in todo:
        if a.id in have:
            continue
        _call(
            f"adding annotation {a.id}",
            client.annotations.add_annotation,
            time_from=a.time_ms,
            tags=a.all_tags,
            text=a.text,
        )
        have.add(a.id)
        added += 1
    return added
