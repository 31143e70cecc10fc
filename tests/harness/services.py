"""Launchers for the real services drainwatch's integration tests run against.

Each service (Kafka in KRaft mode, anvil, btcd in regtest) runs as a child process bound to free
loopback ports, with its data and log in a private temporary directory. Binaries come from the
cache filled by ``scripts/install-services.sh`` (``$DRAINWATCH_CACHE``, default
``~/.cache/drainwatch``); if they are missing the script is run once, automatically.

Every service offers ``start()``, ``stop()`` (graceful, SIGKILL fallback), ``kill()`` (SIGKILL,
for crash tests), ``restart()`` (keeps the data directory and the ports), ``cleanup()`` and the
context-manager protocol.
"""

from __future__ import annotations

import abc
import atexit
import base64
import contextlib
import fcntl
import functools
import json
import os
import shutil
import signal
import socket
import string
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
import weakref
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Self

REPO_ROOT = Path(__file__).resolve().parents[2]
INSTALL_SCRIPT = REPO_ROOT / "scripts" / "install-services.sh"
KAFKA_DEPLOY_DIR = REPO_ROOT / "deploy" / "kafka"

#: Regtest P2WPKH address of private key 1 (BIP-173 test vector); WIF (regtest):
#: cMahea7zqjxrtgAbB7LSGbcQUr1uX1ojuat9jZodMN87JcbXMTcA. Coinbase rewards go here by default.
DEFAULT_BTC_MINING_ADDRESS = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"

_LOG_TAIL_LINES = 40


class ServiceError(RuntimeError):
    """A service could not be installed, started or stopped."""


class ServiceStartError(ServiceError):
    """A service did not become ready in time (or exited while starting)."""


class RpcError(RuntimeError):
    """A JSON-RPC call returned an error object."""

    def __init__(self, method: str, error: Any) -> None:
        super().__init__(f"{method}: {error!r}")
        self.method = method
        self.error = error


# --------------------------------------------------------------------------------------------
# Installation / binaries
# --------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """The directory ``scripts/install-services.sh`` installs into."""
    env = os.environ.get("DRAINWATCH_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "drainwatch"


_install_attempted: set[str] = set()


def ensure_installed(component: str, probe: Callable[[], bool]) -> None:
    """Run the install script for ``component`` once if ``probe()`` says it is missing.

    A file lock in the cache serialises concurrent installs (e.g. pytest-xdist workers).
    """
    if probe():
        return
    if component in _install_attempted:
        raise ServiceError(
            f"{component} is not installed in {cache_dir()} and a previous automatic install "
            f"failed; run `bash {INSTALL_SCRIPT.relative_to(REPO_ROOT)}` and check its output"
        )
    _install_attempted.add(component)
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if probe():
            return
        proc = subprocess.run(
            ["bash", str(INSTALL_SCRIPT), component],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            check=False,
        )
    if proc.returncode != 0 or not probe():
        tail = "\n".join(proc.stdout.splitlines()[-_LOG_TAIL_LINES:])
        raise ServiceError(
            f"automatic install of {component} failed (exit {proc.returncode}); run "
            f"`bash {INSTALL_SCRIPT.relative_to(REPO_ROOT)} {component}` by hand.\n"
            f"--- install output (tail) ---\n{tail}"
        )


def kafka_home() -> Path:
    """Directory holding ``lib/*.jar`` of the installed Kafka.

    ``$DRAINWATCH_KAFKA_VERSION`` picks a version (as it does for the install script); otherwise
    the one the script installed last.
    """
    version = os.environ.get("DRAINWATCH_KAFKA_VERSION")
    if version:
        return cache_dir() / f"kafka-{version}"
    link = cache_dir() / "kafka"
    if link.is_dir():
        return link.resolve()
    candidates = sorted(cache_dir().glob("kafka-*/lib"))
    return candidates[-1].parent if candidates else link


def _kafka_installed() -> bool:
    return any((kafka_home() / "lib").glob("kafka_2.13-*.jar"))


def _bin_installed(*names: str) -> Callable[[], bool]:
    def probe() -> bool:
        return all(os.access(cache_dir() / "bin" / n, os.X_OK) for n in names)

    return probe


def binary(name: str) -> Path:
    """Path of an installed binary (``anvil``, ``btcd``, ``btcctl``), installing if needed."""
    component = "anvil" if name == "anvil" else "btcd"
    ensure_installed(component, _bin_installed(name))
    return cache_dir() / "bin" / name


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports (all sockets held open while choosing).

    >>> a, b = free_ports(2)
    >>> a != b and all(0 < p < 65536 for p in (a, b))
    True
    """
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def json_rpc(
    url: str,
    method: str,
    params: Sequence[Any] | None = None,
    *,
    auth: tuple[str, str] | None = None,
    timeout: float = 10.0,
    jsonrpc: str = "2.0",
    use_httpx: bool | None = None,
) -> Any:
    """POST one JSON-RPC request and return its ``result`` (raises :class:`RpcError`).

    Uses httpx when it is importable (and ``use_httpx`` is not False), else urllib.
    """
    payload = {"jsonrpc": jsonrpc, "id": 1, "method": method, "params": list(params or [])}
    if use_httpx is None:
        use_httpx = _httpx_available()
    reply = (_post_httpx if use_httpx else _post_urllib)(url, method, payload, auth, timeout)
    if not isinstance(reply, dict):
        raise RpcError(method, f"unexpected reply {reply!r}")
    if reply.get("error"):
        raise RpcError(method, reply["error"])
    return reply.get("result")


def _httpx_available() -> bool:
    try:
        import httpx  # noqa: F401
    except ImportError:
        return False
    return True


def _decode_reply(method: str, status: int, raw: bytes) -> Any:
    # btcd answers RPC errors with HTTP 500 and a JSON body, so parse whatever came back.
    try:
        return json.loads(raw)
    except ValueError:
        raise RpcError(method, f"HTTP {status}: {raw[:500]!r}") from None


@functools.cache
def _httpx_client() -> Any:
    # One shared client: building an httpx.Client loads an SSL context (~50 ms), which would
    # dominate every call; the shared one also keeps connections alive.
    import httpx

    return httpx.Client(trust_env=False)


def _post_httpx(
    url: str, method: str, payload: dict[str, Any], auth: tuple[str, str] | None, timeout: float
) -> Any:
    resp = _httpx_client().post(url, json=payload, auth=auth, timeout=timeout)
    return _decode_reply(method, resp.status_code, resp.content)


def _post_urllib(
    url: str, method: str, payload: dict[str, Any], auth: tuple[str, str] | None, timeout: float
) -> Any:
    headers = {"Content-Type": "application/json"}
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    req = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return _decode_reply(method, resp.status, resp.read())
    except urllib.error.HTTPError as exc:
        return _decode_reply(method, exc.code, exc.read())


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "<no log>"
    return "\n".join(text.splitlines()[-lines:]) or "<empty log>"


# --------------------------------------------------------------------------------------------
# Base class
# --------------------------------------------------------------------------------------------

_live: weakref.WeakSet[Service] = weakref.WeakSet()


@atexit.register
def _kill_leftovers() -> None:
    for svc in list(_live):
        with contextlib.suppress(Exception):
            svc.kill()


class Service(abc.ABC):
    """A child process with a private work directory, free ports and a readiness probe."""

    name: ClassVar[str] = "service"
    #: Signal asking the process to shut down cleanly.
    stop_signal: ClassVar[signal.Signals] = signal.SIGTERM

    def __init__(
        self,
        *,
        workdir: Path | str | None = None,
        startup_timeout: float = 30.0,
        stop_timeout: float = 30.0,
        keep_workdir: bool | None = None,
    ) -> None:
        if workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix=f"drainwatch-{self.name}-"))
            self._owns_workdir = True
        else:
            self.workdir = Path(workdir)
            self.workdir.mkdir(parents=True, exist_ok=True)
            self._owns_workdir = False
        if keep_workdir is None:
            keep_workdir = os.environ.get("DRAINWATCH_KEEP_SERVICE_DIRS", "") not in ("", "0")
        self.keep_workdir = keep_workdir
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.data_dir = self.workdir / "data"
        self.log_path = self.workdir / f"{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        #: Seconds the last ``start()`` took until the service was ready.
        self.last_start_seconds: float | None = None
        #: True between a successful ``start()`` and the next ``stop()``/``kill()``.
        self.ready = False
        self._ports_chosen = False

    # -- to implement -------------------------------------------------------------------------

    @abc.abstractmethod
    def _choose_ports(self) -> None:
        """Pick free ports (called once; restarts keep them)."""

    @abc.abstractmethod
    def _command(self) -> list[str]:
        """The command line that runs the service in the foreground."""

    @abc.abstractmethod
    def _probe(self) -> None:
        """Return if the service answers, raise otherwise."""

    def _prepare(self) -> None:
        """Hook run before every start (e.g. write config, format storage)."""
        return None

    def _env(self) -> dict[str, str] | None:
        return None

    def _after_ready(self) -> None:
        """Hook run once the service answers (e.g. restore state)."""
        return None

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        return _tail(self.log_path, lines)

    def start(self) -> Self:
        if self.running:
            raise ServiceError(f"{self.name} is already running (pid {self.pid})")
        begin = time.monotonic()
        if not self._ports_chosen:
            self._choose_ports()
            self._ports_chosen = True
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._prepare()
        cmd = self._command()
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== {time.strftime('%H:%M:%S')} starting: {' '.join(cmd)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=self._env(),
                start_new_session=True,
            )
        _live.add(self)
        try:
            self._wait_ready()
            self._after_ready()
        except BaseException:
            self.kill()
            raise
        self.last_start_seconds = time.monotonic() - begin
        self.ready = True
        return self

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.startup_timeout
        last_error: BaseException | None = None
        delay = 0.05
        while True:
            code = self.proc.poll()
            if code is not None:
                raise ServiceStartError(
                    f"{self.name} exited with code {code} while starting.\n"
                    f"--- {self.log_path} (tail) ---\n{self.log_tail()}"
                )
            try:
                self._probe()
                return
            except Exception as exc:  # any failure means "not ready yet"
                last_error = exc
            if time.monotonic() >= deadline:
                raise ServiceStartError(
                    f"{self.name} not ready after {self.startup_timeout:.0f}s "
                    f"(last probe error: {last_error!r}).\n"
                    f"--- {self.log_path} (tail) ---\n{self.log_tail()}"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    def stop(self, timeout: float | None = None) -> None:
        """Ask the service to stop; SIGKILL it if it has not exited within ``timeout``."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(self.stop_signal)
            try:
                proc.wait(self.stop_timeout if timeout is None else timeout)
            except subprocess.TimeoutExpired:
                with open(self.log_path, "ab") as log:
                    log.write(f"=== {self.name} did not stop in time; SIGKILL\n".encode())
                self._sigkill(proc)
        self.proc = None
        self.ready = False
        _live.discard(self)

    def kill(self) -> None:
        """SIGKILL the service (simulates a crash); the data directory is kept."""
        proc = self.proc
        if proc is None:
            return
        self._sigkill(proc)
        self.proc = None
        self.ready = False
        _live.discard(self)

    @staticmethod
    def _sigkill(proc: subprocess.Popen[bytes]) -> None:
        # The child leads its own session (start_new_session), so its group is ours alone;
        # signal it while the child is still unreaped, so the id cannot have been reused.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(10)

    def restart(self, *, kill: bool = False) -> Self:
        """Stop (or SIGKILL, with ``kill=True``) and start again on the same data and ports."""
        if kill:
            self.kill()
        else:
            self.stop()
        return self.start()

    def cleanup(self) -> None:
        """Stop the service and remove its work directory (unless asked to keep it)."""
        self.stop()
        if self._owns_workdir and not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running else "stopped"
        return f"<{type(self).__name__} {state} workdir={self.workdir}>"


# --------------------------------------------------------------------------------------------
# Kafka
# --------------------------------------------------------------------------------------------


def _kafka_cluster_id() -> str:
    """A fresh KRaft cluster id.

    >>> cid = _kafka_cluster_id()
    >>> len(cid), cid.startswith("-")
    (22, False)
    """
    # Same shape as org.apache.kafka.common.Uuid.randomUuid(): 22 url-safe base64 chars,
    # never starting with '-' (the CLI would take it for an option).
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cid.startswith("-"):
            return cid


class KafkaService(Service):
    """Single-node Apache Kafka (KRaft, combined broker+controller) on loopback."""

    name = "kafka"

    def __init__(
        self,
        *,
        heap: str = "512m",
        extra_properties: dict[str, str] | None = None,
        startup_timeout: float = 60.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(startup_timeout=startup_timeout, **kwargs)
        self.heap = heap
        self.extra_properties = dict(extra_properties or {})
        self.cluster_id = _kafka_cluster_id()
        self.broker_port = 0
        self.controller_port = 0
        self.config_path = self.workdir / "server.properties"

    @property
    def bootstrap_servers(self) -> str:
        """``host:port`` for clients (``bootstrap_servers=`` in kafka-python)."""
        return f"127.0.0.1:{self.broker_port}"

    def _choose_ports(self) -> None:
        self.broker_port, self.controller_port = free_ports(2)

    def _classpath(self) -> str:
        ensure_installed("kafka", _kafka_installed)
        return str(kafka_home() / "lib" / "*")

    def _java(self, main: str, *args: str) -> list[str]:
        return [
            "java",
            f"-Xmx{self.heap}",
            "-Xms128m",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            "-Xss1m",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={KAFKA_DEPLOY_DIR / 'log4j2.xml'}",
            f"-Dkafka.logs.dir={self.workdir / 'logs'}",
            "-cp",
            self._classpath(),
            main,
            *args,
        ]

    def _prepare(self) -> None:
        template = string.Template((KAFKA_DEPLOY_DIR / "server.properties.template").read_text())
        text = template.substitute(
            broker_port=self.broker_port,
            controller_port=self.controller_port,
            log_dirs=self.data_dir,
        )
        if self.extra_properties:
            text += "\n# extra properties\n"
            text += "".join(f"{k}={v}\n" for k, v in self.extra_properties.items())
        self.config_path.write_text(text)
        if not (self.data_dir / "meta.properties").exists():
            cmd = self._java(
                "kafka.tools.StorageTool",
                "format",
                "--config",
                str(self.config_path),
                "--cluster-id",
                self.cluster_id,
                "--ignore-formatted",
            )
            proc = subprocess.run(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False
            )
            with open(self.log_path, "a") as log:
                log.write(f"=== storage format: {' '.join(cmd)}\n{proc.stdout}")
            if proc.returncode != 0:
                raise ServiceError(
                    f"kafka storage format failed (exit {proc.returncode}):\n{proc.stdout}"
                )

    def _command(self) -> list[str]:
        return self._java("kafka.Kafka", str(self.config_path))

    def _probe(self) -> None:
        # A plain TCP connect first: kafka-python's bootstrap backs off for seconds after a
        # refused connection, which would delay noticing that the broker is up.
        with socket.create_connection(("127.0.0.1", self.broker_port), timeout=1.0):
            pass
        from kafka import KafkaAdminClient

        admin = KafkaAdminClient(
            bootstrap_servers=self.bootstrap_servers,
            client_id="drainwatch-harness-probe",
            request_timeout_ms=5000,
        )
        try:
            admin.list_topics()
        finally:
            admin.close()

    def create_topics(
        self, names: Iterable[str], *, partitions: int = 1, configs: dict[str, str] | None = None
    ) -> None:
        """Create topics (replication factor 1) and wait until every partition has a leader."""
        from kafka import KafkaAdminClient
        from kafka.admin import NewTopic

        topics = [
            NewTopic(
                n, num_partitions=partitions, replication_factor=1, topic_configs=configs or {}
            )
            for n in names
        ]
        wanted = {t.name for t in topics}
        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap_servers)
        try:
            reply = admin.create_topics(topics)
            errors = _topic_errors(reply)
            if errors:
                raise ServiceError(f"create_topics failed: {errors}")
            deadline = time.monotonic() + 15
            while True:
                ready = {
                    _get(d, "name", "topic")
                    for d in admin.describe_topics(sorted(wanted))
                    if not d.get("error_code")
                    and d.get("partitions")
                    and all(
                        _get(p, "leader_id", "leader", default=-1) >= 0 for p in d["partitions"]
                    )
                }
                if ready >= wanted:
                    return
                if time.monotonic() > deadline:
                    raise ServiceError(f"topics without leader after 15s: {wanted - ready}")
                time.sleep(0.1)
        finally:
            admin.close()


def _get(d: dict[str, Any], *keys: str, default: Any = None) -> Any:
    """First present key (kafka-python renamed some response fields between releases)."""
    for k in keys:
        if k in d:
            return d[k]
    return default


def _topic_errors(reply: Any) -> dict[str, Any]:
    """``{topic: error}`` for the failed entries of a CreateTopics reply (dict or response)."""
    if not isinstance(reply, dict):
        reply = reply.to_object() if hasattr(reply, "to_object") else {}
    errors: dict[str, Any] = {}
    for t in reply.get("topics", reply.get("topic_errors", [])):
        if isinstance(t, dict) and t.get("error_code"):
            errors[str(_get(t, "name", "topic"))] = t.get("error_message") or t["error_code"]
    return errors


# --------------------------------------------------------------------------------------------
# anvil
# --------------------------------------------------------------------------------------------


class AnvilService(Service):
    """A local Ethereum node (Foundry's anvil) whose chain survives restarts via ``--state``.

    The state file is written when anvil exits cleanly (SIGINT) and every ``state_interval``
    seconds, so after :meth:`kill` the chain is restored as of the last periodic dump.
    """

    name = "anvil"
    stop_signal = signal.SIGINT

    def __init__(
        self,
        *args: str,
        chain_id: int = 31337,
        silent: bool = True,
        state_interval: int | None = 1,
        startup_timeout: float = 20.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(startup_timeout=startup_timeout, **kwargs)
        self.extra_args = list(args)
        self.chain_id = chain_id
        self.silent = silent
        self.state_interval = state_interval
        self.port = 0
        self.state_path = self.data_dir / "state.json"

    @property
    def url(self) -> str:
        """HTTP JSON-RPC endpoint (also serves websockets at ``ws_url``)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def _choose_ports(self) -> None:
        self.port = free_port()

    def _command(self) -> list[str]:
        cmd = [
            str(binary("anvil")),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--chain-id",
            str(self.chain_id),
            "--state",
            str(self.state_path),
        ]
        if self.state_interval is not None:
            cmd += ["--state-interval", str(self.state_interval)]
        if self.silent:
            cmd.append("--silent")
        return cmd + self.extra_args

    def _probe(self) -> None:
        got = int(self.rpc("eth_chainId", timeout=2.0), 16)
        if got != self.chain_id:
            raise ServiceError(f"anvil reports chain id {got}, expected {self.chain_id}")

    def rpc(
        self, method: str, params: Sequence[Any] | None = None, *, timeout: float = 10.0
    ) -> Any:
        return json_rpc(self.url, method, params, timeout=timeout)

    def block_number(self) -> int:
        return int(self.rpc("eth_blockNumber"), 16)

    def wait_for_receipt(self, tx_hash: str, timeout: float = 10.0) -> dict[str, Any]:
        """The receipt of ``tx_hash`` once mined (anvil may answer the send before mining)."""
        deadline = time.monotonic() + timeout
        while True:
            receipt = self.rpc("eth_getTransactionReceipt", [tx_hash])
            if receipt is not None:
                return dict(receipt)
            if time.monotonic() > deadline:
                raise ServiceError(f"no receipt for {tx_hash} after {timeout:.0f}s")
            time.sleep(0.05)


#: What the ``anvil_factory`` fixture returns: ``factory(*anvil_args, **AnvilService_kwargs)``.
AnvilFactory = Callable[..., AnvilService]


# --------------------------------------------------------------------------------------------
# btcd
# --------------------------------------------------------------------------------------------


class BtcdService(Service):
    """btcd in regtest mode with JSON-RPC over plain HTTP on loopback (``--notls``).

    btcd deletes its regtest block database every time it starts (``removeRegressionDB`` in
    btcd.go; there is no flag against it). So that :meth:`restart`, and :meth:`kill` followed by
    :meth:`start`, keep the chain, the harness saves the raw blocks and mempool transactions over
    RPC just before it stops or SIGKILLs the node, and feeds them back (``submitblock``,
    ``sendrawtransaction``) once the new process answers: same blocks, same hashes. Pass
    ``preserve_chain=False`` for btcd's own behaviour (a fresh chain after every start).
    """

    name = "btcd"

    def __init__(
        self,
        *args: str,
        mining_address: str = DEFAULT_BTC_MINING_ADDRESS,
        rpc_user: str = "drainwatch",
        rpc_password: str | None = None,
        txindex: bool = True,
        preserve_chain: bool = True,
        startup_timeout: float = 30.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(startup_timeout=startup_timeout, **kwargs)
        self.extra_args = list(args)
        self.preserve_chain = preserve_chain
        self._saved_blocks: list[str] = []
        self._saved_mempool: list[str] = []
        self.mining_address = mining_address
        self.rpc_user = rpc_user
        self.rpc_password = rpc_password or uuid.uuid4().hex
        self.txindex = txindex
        self.rpc_port = 0
        self.p2p_port = 0
        self.config_path = self.workdir / "btcd.conf"

    @property
    def rpc_url(self) -> str:
        return f"http://127.0.0.1:{self.rpc_port}"

    @property
    def rpc_host(self) -> str:
        """``host:port`` of the RPC server (what btcctl's ``--rpcserver`` takes)."""
        return f"127.0.0.1:{self.rpc_port}"

    @property
    def rpc_auth(self) -> tuple[str, str]:
        return (self.rpc_user, self.rpc_password)

    def _choose_ports(self) -> None:
        self.rpc_port, self.p2p_port = free_ports(2)

    def _prepare(self) -> None:
        # An explicit (empty) config file stops btcd from creating ~/.btcd/btcd.conf.
        self.config_path.touch()

    def _command(self) -> list[str]:
        cmd = [
            str(binary("btcd")),
            f"--configfile={self.config_path}",
            "--regtest",
            f"--datadir={self.data_dir}",
            f"--logdir={self.workdir / 'logs'}",
            f"--rpcuser={self.rpc_user}",
            f"--rpcpass={self.rpc_password}",
            f"--rpclisten={self.rpc_host}",
            f"--listen=127.0.0.1:{self.p2p_port}",
            "--notls",
            f"--miningaddr={self.mining_address}",
            "--debuglevel=info",
        ]
        if self.txindex:
            cmd.append("--txindex")
        return cmd + self.extra_args

    def _probe(self) -> None:
        self.rpc("getblockcount", timeout=2.0)

    def _save_chain(self) -> None:
        if not (self.preserve_chain and self.ready and self.running):
            return
        try:
            height = self.block_count()
            blocks = [
                str(self.rpc("getblock", [self.rpc("getblockhash", [h]), 0]))
                for h in range(1, height + 1)
            ]
            mempool = [str(self.rpc("getrawtransaction", [t])) for t in self.rpc("getrawmempool")]
        except Exception as exc:  # a hung or dying node: keep the previous snapshot
            with open(self.log_path, "a") as log:
                log.write(f"=== harness: could not save the chain before stopping: {exc!r}\n")
            return
        self._saved_blocks, self._saved_mempool = blocks, mempool

    def _after_ready(self) -> None:
        if not (self.preserve_chain and self._saved_blocks):
            return
        have = self.block_count()
        for height, raw in enumerate(self._saved_blocks[have:], start=have + 1):
            outcome = self.rpc("submitblock", [raw])
            if outcome is not None:
                raise ServiceError(f"btcd rejected saved block {height} on restart: {outcome}")
        for raw in self._saved_mempool:
            with contextlib.suppress(RpcError):  # e.g. a tx that conflicts with a saved block
                self.rpc("sendrawtransaction", [raw])

    def stop(self, timeout: float | None = None) -> None:
        self._save_chain()
        super().stop(timeout)

    def kill(self) -> None:
        self._save_chain()
        super().kill()

    def rpc(
        self, method: str, params: Sequence[Any] | None = None, *, timeout: float = 30.0
    ) -> Any:
        return json_rpc(
            self.rpc_url, method, params, auth=self.rpc_auth, timeout=timeout, jsonrpc="1.0"
        )

    def generate(self, blocks: int) -> list[str]:
        """Mine ``blocks`` blocks (coinbase to ``mining_address``); returns their hashes."""
        hashes = self.rpc("generate", [blocks], timeout=max(30.0, blocks * 1.0))
        return list(hashes)

    def block_count(self) -> int:
        return int(self.rpc("getblockcount"))

    def btcctl(self, *args: str, timeout: float = 30.0) -> str:
        """Run ``btcctl`` against this node and return its stdout."""
        cmd = [
            str(binary("btcctl")),
            "--regtest",
            "--notls",
            f"--rpcserver={self.rpc_host}",
            f"--rpcuser={self.rpc_user}",
            f"--rpcpass={self.rpc_password}",
            *args,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if proc.returncode != 0:
            raise ServiceError(f"btcctl {' '.join(args)} failed: {proc.stderr or proc.stdout}")
        return proc.stdout
