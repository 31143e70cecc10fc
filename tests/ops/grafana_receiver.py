"""A local stand-in for Grafana's HTTP API that records every request (Grafana cannot run here).

It implements just the endpoints ``drainwatch grafana push`` uses, with Grafana's status codes,
and rejects any request without the expected ``Authorization`` header (401, as Grafana does).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


@dataclass
class GrafanaState:
    authorization: str
    requests: list[Request] = field(default_factory=list)
    folders: dict[str, dict[str, Any]] = field(default_factory=dict)
    dashboards: dict[str, dict[str, Any]] = field(default_factory=dict)
    annotations: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _handler(state: GrafanaState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _reply(self, status: int, body: Any) -> None:
            raw = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def _handle(self, method: str) -> None:
            url = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            req = Request(
                method,
                url.path,
                parse_qs(url.query),
                {k.lower(): v for k, v in self.headers.items()},
                body,
            )
            with state.lock:
                state.requests.append(req)
                if req.headers.get("authorization") != state.authorization:
                    self._reply(401, {"message": "Unauthorized"})
                    return
                self._route(req)

        def _route(self, req: Request) -> None:
            if req.method == "GET" and req.path.startswith("/api/folders/"):
                uid = req.path.rsplit("/", 1)[1]
                if uid in state.folders:
                    self._reply(200, state.folders[uid])
                else:
                    self._reply(404, {"message": "folder not found", "status": "not-found"})
            elif req.method == "POST" and req.path == "/api/folders":
                folder = {"id": len(state.folders) + 1, **req.body}
                state.folders[req.body["uid"]] = folder
                self._reply(200, folder)
            elif req.method == "POST" and req.path == "/api/dashboards/db":
                board = req.body["dashboard"]
                folder = req.body.get("folderUid")
                if folder is not None and folder not in state.folders:
                    self._reply(400, {"message": "folder not found"})
                    return
                version = state.dashboards.get(board["uid"], {}).get("version", 0) + 1
                state.dashboards[board["uid"]] = {"dashboard": board, "version": version}
                self._reply(
                    200,
                    {
                        "id": len(state.dashboards),
                        "uid": board["uid"],
                        "url": f"/d/{board['uid']}/x",
                        "status": "success",
                        "version": version,
                        "slug": "x",
                    },
                )
            elif req.method == "GET" and req.path == "/api/annotations":
                tags = set(req.query.get("tags", []))
                start = int(req.query.get("from", ["0"])[0])
                end = int(req.query.get("to", [str(2**62)])[0])
                found = [
                    a
                    for a in state.annotations
                    if tags <= set(a["tags"]) and start <= a["time"] <= end
                ]
                self._reply(200, found)
            elif req.method == "POST" and req.path == "/api/annotations":
                body = req.body
                if not isinstance(body.get("time"), int) or not body.get("text"):
                    self._reply(400, {"message": "bad annotation"})
                    return
                item = {"id": len(state.annotations) + 1, **body}
                state.annotations.append(item)
                self._reply(200, {"id": item["id"], "message": "Annotation added"})
            else:
                self._reply(404, {"message": "Not found"})

        def do_GET(self) -> None:
            self._handle("GET")

        def do_POST(self) -> None:
            self._handle("POST")

    return Handler


class GrafanaReceiver:
    """Serve the fake API on a free loopback port until ``close()``."""

    def __init__(self, authorization: str) -> None:
        self.state = GrafanaState(authorization)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self.state))
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def requests(self, method: str, path: str) -> list[Request]:
        return [r for r in self.state.requests if r.method == method and r.path == path]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
