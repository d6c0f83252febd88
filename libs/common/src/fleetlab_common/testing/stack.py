"""`fleetlab up` as a subprocess for end-to-end and browser tests: start it on a temporary home
and a free port, wait for health, stop it with SIGTERM. One place for what every end-to-end
module needs, so that they differ only in the environment they give the stack."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

FLEETLAB = str(Path(sys.executable).parent / "fleetlab")
TERMINAL = frozenset({"succeeded", "failed", "stopped", "lost"})

# Faster beats and a short lease, so that loss is seen in a test-sized time.
TEST_ENV = {
    "FLEETLAB_AGENT__HEARTBEAT_S": "0.5",
    "FLEETLAB_LEASE_S": "3",
    "FLEETLAB_AGENT__NAME": "e2e-agent",
    "FLEETLAB_AGENT__SLOTS": "2",
}


def wait_until(check: Callable[[], Any], timeout: float, what: str, every: float = 0.05) -> Any:
    """Poll ``check`` until it returns something true; its value. AssertionError on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@dataclass
class Stack:
    """A running `fleetlab up`."""

    home: Path
    port: int
    proc: subprocess.Popen[bytes]
    output: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def info(self) -> dict[str, Any]:
        """``$FLEETLAB_HOME/stack.json``: URLs, the DSN, the PIDs."""
        return json.loads((self.home / "stack.json").read_text())  # type: ignore[no-any-return]

    def healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"fleetlab up exited: {self.output.read_text()[-3000:]}")
        try:
            return httpx.get(f"{self.url}/api/v1/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def env(self) -> dict[str, str]:
        """An environment in which the ``fleetlab`` command talks to this stack."""
        env = {**os.environ, "FLEETLAB_HOME": str(self.home), "COLUMNS": "200"}
        env.pop("FLEETLAB_API_URL", None)
        env.pop("FLEETLAB_TOKEN", None)
        return env


def start_stack(home: Path, port: int, **env: str) -> Stack:
    """`fleetlab up` on ``home`` and ``port`` with :data:`TEST_ENV` and ``env`` on top; returns
    once ``/api/v1/health`` answers 200 (every service and an agent up)."""
    full = {
        **os.environ,
        "FLEETLAB_HOME": str(home),
        "FLEETLAB_PORT": str(port),
        **TEST_ENV,
        **env,
    }
    for key in ("FLEETLAB_NATS__URL", "FLEETLAB_POSTGRES__DSN", "FLEETLAB_API_URL"):
        if key not in env:
            full.pop(key, None)
    home.parent.mkdir(parents=True, exist_ok=True)
    output = home.parent / f"up-{port}.out"
    with output.open("ab") as out:
        proc = subprocess.Popen([FLEETLAB, "up"], env=full, stdout=out, stderr=subprocess.STDOUT)
    stack = Stack(home, port, proc, output)
    try:
        wait_until(stack.healthy, 90, "GET /api/v1/health to answer 200")
    except BaseException:
        stop_stack(stack)
        raise
    return stack


def stop_stack(stack: Stack) -> float:
    """SIGTERM, wait; the seconds it took."""
    started = time.monotonic()
    if stack.proc.poll() is None:
        stack.proc.send_signal(signal.SIGTERM)
        try:
            stack.proc.wait(30)
        except subprocess.TimeoutExpired:
            stack.proc.kill()
            stack.proc.wait(10)
    return time.monotonic() - started
