"""Property-based fuzzing of the kill switch from its own OpenAPI document (schemathesis).

Requests are signed with a key holding every role, so they reach the handlers; the checks are
schemathesis's defaults: no 5xx, and every status, header and body conforms to the document.
The number of examples is bounded so the whole run stays well under a minute.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings

from alerts.killswitch import FreezeStore, create_app, serve_in_thread, server_port, stop_server
from alerts.killswitch.auth import signed_headers
from tests.alerts.killswitch.conftest import KEYS, make_settings

schema = schemathesis.openapi.from_dict(
    create_app(FreezeStore(":memory:"), settings=make_settings()).openapi()
)


class _Signed(requests.auth.AuthBase):
    """Signs the request exactly as it goes on the wire (path with query, body bytes)."""

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        raw = r.body or b""
        body = raw.encode() if isinstance(raw, str) else raw
        assert isinstance(body, bytes)
        assert r.method is not None
        r.headers.update(
            signed_headers("fuzzer", KEYS["fuzzer"][0].encode(), r.method, r.path_url, body)
        )
        return r


@pytest.fixture(scope="module")
def fuzz_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, FreezeStore]]:
    path: Path = tmp_path_factory.mktemp("fuzz") / "killswitch.sqlite3"
    store = FreezeStore(str(path))
    server, thread = serve_in_thread(create_app(store, settings=make_settings()))
    yield f"http://127.0.0.1:{server_port(server)}", store
    stop_server(server, thread)
    store.close()


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        s.auth = _Signed()
        yield s


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_the_api_conforms_to_its_openapi_document(
    case: schemathesis.Case[Any],
    fuzz_target: tuple[str, FreezeStore],
    session: requests.Session,
) -> None:
    base_url, _ = fuzz_target
    case.call_and_validate(base_url=base_url, session=session)
