"""What the ``drainwatch killswitch serve`` and ``drainwatch audit verify`` commands run.

The CLI (drainwatch/cli.py) only parses arguments and calls these.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

import uvicorn

from alerts.killswitch.app import create_app
from alerts.killswitch.audit import verify_audit
from alerts.killswitch.settings import KillSwitchSettings, load_killswitch_settings
from alerts.killswitch.store import HookRecord, open_store
from drainwatch.events import FreezeOrder

__all__ = ["audit_verify", "serve"]

log = logging.getLogger(__name__)


def serve(
    config_path: str | Path,
    *,
    publish: Callable[[FreezeOrder], None] | None = None,
    on_hook_result: Callable[[HookRecord], None] | None = None,
    settings: KillSwitchSettings | None = None,
) -> None:
    """Run the kill switch in the foreground until SIGINT/SIGTERM (uvicorn's handlers).

    Args:
        config_path: ``drainwatch.toml``; its ``[killswitch]`` table (and ``[[wallets]]``) is read.
        publish: Puts orders on the compacted freezes topic (the caller wires the bus).
        on_hook_result: Told of every hook attempt (the caller wires the timeline).
        settings: Already-loaded settings (then ``config_path`` is only named in logs).

    Raises:
        drainwatch.config.ConfigError: The config cannot be used.
    """
    cfg = settings or load_killswitch_settings(config_path)
    store = open_store(cfg.store)
    try:
        app = create_app(store, settings=cfg, publish=publish, on_hook_result=on_hook_result)
        log.info("kill switch on %s:%d, store %s", cfg.host, cfg.port, _redact(cfg.store))
        uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="info", access_log=False)
    finally:
        store.close()


def _redact(location: str) -> str:
    """A store location fit for a log line: a DSN's password is hidden.

    >>> _redact("postgresql://ks:hunter2@db/ks"), _redact("ks.sqlite3")
    ('postgresql://ks:***@db/ks', 'ks.sqlite3')
    """
    scheme, sep, rest = location.partition("://")
    if not sep or "@" not in rest:
        return location
    userinfo, _, host = rest.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in userinfo else location


def audit_verify(
    location: str, *, expected_head: str | None = None, out: TextIO = sys.stdout
) -> int:
    """Verify a kill switch's audit log; print the result; return the exit code (0 intact, 1 not).

    Args:
        location: The store: a SQLite file or a ``postgresql://`` DSN.
        expected_head: A head hash recorded earlier elsewhere (``GET /v1/audit/head``).
        out: Where to print.
    """
    if not location.startswith(("postgresql://", "postgres://")) and not Path(location).is_file():
        print(f"no such audit store: {location}", file=out)
        return 2
    store = open_store(location)
    try:
        result = verify_audit(store, expected_head)
    finally:
        store.close()
    print(result.summary(), file=out)
    return 0 if result.ok else 1
