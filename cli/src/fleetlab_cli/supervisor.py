"""``fleetlab up``: the whole system on one machine, as supervised child processes.

NATS and PostgreSQL are embedded unless ``FLEETLAB_NATS__URL`` / ``FLEETLAB_POSTGRES__DSN`` name
existing servers; artifacts stay on the local disk unless an S3 endpoint is configured. The
services (api, scheduler, logstream, webhooks) and one local agent run as children that are
restarted with backoff when they crash. Ctrl-C or SIGTERM stops everything within 10 s.
Every child is told by the kernel to die with this process, so none outlives it.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from fleetlab_common.embedded import (
    EmbeddedPostgres,
    free_port,
    nats_command,
    port_open,
    stop_process,
    wait_for,
)
from fleetlab_common.log import get_logger

log = get_logger("fleetlab.up")

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_PR_SET_PDEATHSIG = 1

SERVICES = ("api", "scheduler", "logstream", "webhooks")
DB_SERVICES = ("api", "scheduler", "logstream", "webhooks")


def _die_with_parent_term() -> None:
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _die_with_parent_int() -> None:
    # PostgreSQL's fast shutdown is SIGINT.
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGINT)


class UpError(RuntimeError):
    """``fleetlab up`` cannot go on; the message says why."""


@dataclass
class Child:
    """A supervised process, restarted with backoff when it dies unasked."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    stop_signal: int = signal.SIGTERM
    preexec: Any = _die_with_parent_term
    popen_kwargs: dict[str, Any] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    backoff: float = 0.5
    restart_at: float | None = None
    crashes: int = 0
    _log_file: IO[bytes] | None = None

    def start(self) -> None:
        if self._log_file is None:
            self._log_file = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.argv,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=self._log_file,
            start_new_session=True,  # Ctrl-C reaches the supervisor, which stops us in order
            preexec_fn=self.preexec,  # noqa: PLW1509 - only prctl
            **self.popen_kwargs,
        )
        self.started_at = time.monotonic()
        self.restart_at = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def poll(self) -> int | None:
        return self.proc.poll() if self.proc else None

    def close(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


def _service_argv(name: str) -> list[str]:
    module = f"fleetlab_{name}"
    return [sys.executable, "-m", module]


class Stack:
    """The processes of one ``fleetlab up`` and the files describing them."""

    def __init__(self, home: Path, port: int, env: dict[str, str] | None = None) -> None:
        self.home = home.absolute()
        self.port = port
        self.base_env = dict(os.environ if env is None else env)
        self.logs = self.home / "logs"
        self.children: dict[str, Child] = {}
        self.infra: dict[str, Child] = {}
        self.nats_url = self.base_env.get("FLEETLAB_NATS__URL", "")
        self.postgres_dsn = self.base_env.get("FLEETLAB_POSTGRES__DSN", "")
        self.stopping = False
        self._lock_file: IO[str] | None = None
        self.api_url = f"http://127.0.0.1:{port}"

    # -- the home and its lock ------------------------------------------------------------

    def lock(self) -> None:
        """One ``fleetlab up`` per home: a second one stops with a clear message."""
        self.home.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        self._lock_file = (self.home / "up.lock").open("a+")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.seek(0)
            holder = self._lock_file.read().strip() or "another process"
            raise UpError(
                f"Fleetlab is already running on {self.home} (pid {holder}); "
                "stop it first, or set FLEETLAB_HOME to another directory"
            ) from None
        self._lock_file.seek(0)
        self._lock_file.truncate()
        self._lock_file.write(str(os.getpid()))
        self._lock_file.flush()

    def unlock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    # -- infrastructure -------------------------------------------------------------------

    def start_nats(self) -> None:
        if self.nats_url:
            log.info("up.nats.external", url=self.nats_url)
            return
        port = free_port()
        child = Child(
            "nats",
            nats_command(self.home / "nats", port),
            self.base_env,
            self.logs / "nats.log",
        )
        (self.home / "nats").mkdir(exist_ok=True)
        child.start()
        self.infra["nats"] = child

        def ready() -> bool:
            if child.poll() is not None:
                raise UpError(f"nats-server exited; see {child.log_path}")
            return port_open("127.0.0.1", port)

        wait_for(ready, 15, "nats-server")
        self.nats_url = f"nats://127.0.0.1:{port}"
        log.info("up.nats.started", url=self.nats_url, pid=child.pid)

    def start_postgres(self) -> None:
        if self.postgres_dsn:
            log.info("up.postgres.external")
            return
        pg = EmbeddedPostgres(self.home / "postgres" / "data")
        pg.prepare()
        pg.clear_stale_pid()
        child = Child(
            "postgres",
            pg.command(),
            self.base_env,
            self.logs / "postgres.log",
            stop_signal=signal.SIGINT,
            preexec=_die_with_parent_int,
            popen_kwargs={"user": pg.user},
        )
        child.start()
        self.infra["postgres"] = child
        assert child.proc is not None
        pg.wait_ready(child.proc)
        self.postgres_dsn = pg.dsn()
        log.info("up.postgres.started", dsn=self.postgres_dsn, pid=child.pid)

    # -- services -------------------------------------------------------------------------

    def service_env(self, name: str, port: int) -> dict[str, str]:
        env = dict(self.base_env)
        env.update(
            {
                "FLEETLAB_HOME": str(self.home),
                "FLEETLAB_NATS__URL": self.nats_url,
                "FLEETLAB_POSTGRES__DSN": self.postgres_dsn,
                "FLEETLAB_HOST": "127.0.0.1",
                "FLEETLAB_PORT": str(port),
            }
        )
        if not env.get("FLEETLAB_ARTIFACTS__S3__ENDPOINT"):
            env.setdefault("FLEETLAB_ARTIFACTS__BACKEND", "local")
        else:
            env.setdefault("FLEETLAB_ARTIFACTS__BACKEND", "s3")
        env.setdefault("FLEETLAB_SECRET_KEY", self.secret())
        if name == "webhooks":
            # Local tools are the usual receivers on one machine; link-local and metadata
            # addresses stay refused unless FLEETLAB_WEBHOOKS__ALLOW_HOSTS names them.
            env.setdefault("FLEETLAB_WEBHOOKS__ALLOW_LOOPBACK", "true")
        if name == "agent":
            # The agent holds the NATS credential only.
            for key in list(env):
                if key.startswith(("FLEETLAB_POSTGRES__", "FLEETLAB_ARTIFACTS__S3__")) or (
                    key == "FLEETLAB_SECRET_KEY"
                ):
                    del env[key]
        env.setdefault("FLEETLAB_LOG_JSON", "true")
        return env

    def secret(self) -> str:
        """This home's signing secret, made once and kept (mode 0600)."""
        path = self.home / "secret.key"
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
        return path.read_text().strip()

    def migrate(self) -> None:
        """Every service's migrations, once, before anything serves."""
        for name in DB_SERVICES:
            env = self.service_env(name, 0)
            result = subprocess.run(
                [*_service_argv(name), "migrate"],
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
            with (self.logs / f"{name}.log").open("a") as f:
                f.write(result.stdout + result.stderr)
            if result.returncode != 0:
                raise UpError(f"migrations of {name} failed:\n{result.stderr.strip()[-2000:]}")

    def start_services(self) -> None:
        for name in (*SERVICES, "agent"):
            port = self.port if name == "api" else free_port()
            child = Child(
                name, _service_argv(name), self.service_env(name, port), self.logs / f"{name}.log"
            )
            child.start()
            self.children[name] = child
            log.info("up.service.started", service=name, pid=child.pid, port=port)

    def wait_api(self, timeout: float = 60) -> None:
        api = self.children["api"]

        def ready() -> bool:
            if api.poll() is not None:
                raise UpError(f"the api exited at start; see {api.log_path}")
            try:
                return httpx.get(f"{self.api_url}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, timeout, "the api", interval=0.1)

    # -- stack.json -----------------------------------------------------------------------

    def write_stack_file(self) -> None:
        data = {
            "home": str(self.home),
            "api_url": self.api_url,
            "dashboard_url": f"{self.api_url}/",
            "nats_url": self.nats_url,
            "postgres_dsn": self.postgres_dsn,
            "artifacts": {
                "backend": self.base_env.get(
                    "FLEETLAB_ARTIFACTS__BACKEND",
                    "s3" if self.base_env.get("FLEETLAB_ARTIFACTS__S3__ENDPOINT") else "local",
                ),
                "root": str(self.home / "artifacts"),
                "s3_endpoint": self.base_env.get("FLEETLAB_ARTIFACTS__S3__ENDPOINT", ""),
            },
            "pids": {
                "supervisor": os.getpid(),
                **{name: c.pid for name, c in {**self.infra, **self.children}.items()},
            },
            "ports": {
                name: int(c.env.get("FLEETLAB_PORT", "0")) for name, c in self.children.items()
            },
        }
        path = self.home / "stack.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        tmp.replace(path)

    # -- supervision ----------------------------------------------------------------------

    def supervise_once(self) -> None:
        """Restart what died unasked, with backoff (reset after a minute of good health).

        The embedded servers too: NATS comes back on the same port with the same store, and
        PostgreSQL on the same data; the services reconnect by themselves.
        """
        now = time.monotonic()
        changed = False
        for child in [*self.infra.values(), *self.children.values()]:
            if child.restart_at is not None:
                if now >= child.restart_at:
                    child.start()
                    changed = True
                    log.info("up.service.restarted", service=child.name, pid=child.pid)
                continue
            code = child.poll()
            if code is None:
                if now - child.started_at > 60:
                    child.backoff = 0.5
                continue
            child.crashes += 1
            child.restart_at = now + child.backoff
            log.error(
                "up.service.crashed",
                service=child.name,
                exit_code=code,
                restart_in_s=child.backoff,
                log=str(child.log_path),
            )
            child.backoff = min(child.backoff * 2, 30)
        if changed:
            self.write_stack_file()

    def stop(self, deadline_s: float = 9.0) -> None:
        """Services first (they drain), then the servers; nothing survives ``deadline_s``."""
        self.stopping = True
        end = time.monotonic() + deadline_s
        for child in self.children.values():
            if child.poll() is None and child.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    child.proc.send_signal(child.stop_signal)
        for child in self.children.values():
            if child.proc is not None:
                stop_process(child.proc, max(0.1, end - 2.5 - time.monotonic()))
            child.close()
        for name in ("postgres", "nats"):
            infra = self.infra.get(name)
            if infra is not None and infra.proc is not None:
                stop_process(infra.proc, max(0.1, end - time.monotonic()), infra.stop_signal)
                infra.close()
        with contextlib.suppress(FileNotFoundError):
            (self.home / "stack.json").unlink()


def run_up(home: Path, port: int) -> int:
    """The body of ``fleetlab up``; returns the exit status."""
    stack = Stack(home, port)
    try:
        stack.lock()
    except UpError as exc:
        print(f"fleetlab up: {exc}", file=sys.stderr)
        return 1
    if port_open("127.0.0.1", port):
        print(
            f"fleetlab up: port {port} is in use; set FLEETLAB_PORT to a free port", file=sys.stderr
        )
        stack.unlock()
        return 1
    stop_requested = False

    def on_signal(signum: int, _: Any) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        stack.start_nats()
        stack.start_postgres()
        stack.migrate()
        stack.start_services()
        stack.write_stack_file()
        stack.wait_api()
        print(
            f"Fleetlab is up.\n  dashboard  {stack.api_url}/\n  API docs   {stack.api_url}/docs"
            f"\n  NATS       {stack.nats_url}\n  home       {stack.home}"
            f"\n  logs       {stack.logs}/\nPress Ctrl-C to stop.",
            flush=True,
        )
        while not stop_requested:
            stack.supervise_once()
            time.sleep(0.1)
        print("Stopping Fleetlab…", flush=True)
        return 0
    except UpError as exc:
        print(f"fleetlab up: {exc}", file=sys.stderr)
        return 1
    finally:
        stack.stop()
        stack.unlock()
