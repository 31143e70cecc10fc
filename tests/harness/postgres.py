"""A throwaway PostgreSQL server for tests, from Debian's packages (scripts/install-postgres.sh).

:class:`PostgresService` runs ``initdb`` into a private temporary directory and ``postgres`` on a
free loopback port, as the unprivileged ``postgres`` OS user (the server refuses to run as root;
when the tests are not root they run it as themselves). Trust authentication on 127.0.0.1 only:
it is a test server. Same lifecycle as :mod:`tests.harness.services` (``start``, ``stop``,
``kill``, ``restart``, ``cleanup``, context manager); :meth:`PostgresService.create_database`
gives each test its own database.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import uuid
from pathlib import Path
from typing import Any

from tests.harness.services import REPO_ROOT, Service, ServiceError, free_port

INSTALL_SCRIPT = REPO_ROOT / "scripts" / "install-postgres.sh"
OS_USER = "postgres"


def postgres_bin_dir() -> Path:
    """``/usr/lib/postgresql/<newest version>/bin``, installing PostgreSQL first if needed."""

    def found() -> list[str]:
        return sorted(
            glob.glob("/usr/lib/postgresql/*/bin/postgres"),
            key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
        )

    candidates = found()
    if not candidates:
        proc = subprocess.run(
            ["bash", str(INSTALL_SCRIPT)],
            capture_output=True,
            text=True,
            check=False,
        )
        candidates = found()
        if proc.returncode != 0 or not candidates:
            raise ServiceError(
                f"PostgreSQL is not installed and `bash {INSTALL_SCRIPT}` failed "
                f"(exit {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
            )
    return Path(candidates[-1]).parent


class PostgresService(Service):
    """A PostgreSQL server on 127.0.0.1 with its cluster in ``workdir/data``."""

    name = "postgres"
    # SIGTERM is a "smart" shutdown that waits for every client to leave; SIGINT is "fast".
    stop_signal = signal.SIGINT

    def __init__(self, *, startup_timeout: float = 30.0, **kwargs: Any) -> None:
        super().__init__(startup_timeout=startup_timeout, **kwargs)
        self.port = 0
        self.bin_dir = postgres_bin_dir()
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            entry = pwd.getpwnam(OS_USER)
            self._uid, self._gid = entry.pw_uid, entry.pw_gid
            self._as_user = [
                "setpriv",
                f"--reuid={self._uid}",
                f"--regid={self._gid}",
                "--clear-groups",
                "--",
            ]

    @property
    def host_dsn(self) -> str:
        """A DSN for the server's default database."""
        return self.dsn("postgres")

    def dsn(self, database: str) -> str:
        """A ``postgresql://`` URL for ``database`` on this server."""
        return f"postgresql://{OS_USER}@127.0.0.1:{self.port}/{database}"

    def _choose_ports(self) -> None:
        self.port = free_port()

    def _own(self, path: Path) -> None:
        if self._as_user:
            os.chown(path, self._uid, self._gid)

    def _prepare(self) -> None:
        self._own(self.workdir)
        self.data_dir.chmod(0o700)
        self._own(self.data_dir)
        if (self.data_dir / "PG_VERSION").exists():
            return
        proc = subprocess.run(
            [
                *self._as_user,
                str(self.bin_dir / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                OS_USER,
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
            ],
            capture_output=True,
            text=True,
            check=False,
            cwd=self.workdir,
        )
        if proc.returncode != 0:
            raise ServiceError(
                f"initdb failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}"
            )

    def _command(self) -> list[str]:
        return [
            *self._as_user,
            str(self.bin_dir / "postgres"),
            "-D",
            str(self.data_dir),
            "-p",
            str(self.port),
            "-k",
            str(self.workdir),
            "-c",
            "listen_addresses=127.0.0.1",
            # A test server: speed over crash safety of the machine (process crashes are fine).
            "-c",
            "fsync=off",
            "-c",
            "full_page_writes=off",
            "-c",
            "max_connections=200",
        ]

    def _probe(self) -> None:
        import psycopg

        with psycopg.connect(self.host_dsn, connect_timeout=2) as conn:
            conn.execute("SELECT 1")

    def create_database(self, prefix: str = "t") -> str:
        """Create a new empty database; return its DSN."""
        import psycopg

        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.host_dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def cleanup(self) -> None:
        """Stop the server and remove its directory (unless asked to keep it)."""
        self.stop()
        if self._owns_workdir and not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
