"""`fleetlab up` on servers that already exist: NATS, PostgreSQL and S3 named by the
environment instead of the embedded ones."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from fleetlab_common.embedded import free_port

pytestmark = pytest.mark.e2e

FLEETLAB = str(Path(sys.executable).parent / "fleetlab")


def test_up_uses_external_nats_postgres_and_s3(
    tmp_path: Path, nats_url: str, fresh_dsn: str, s3_endpoint: str
) -> None:
    home, port = tmp_path / "home", free_port()
    env = {
        **os.environ,
        "FLEETLAB_HOME": str(home),
        "FLEETLAB_PORT": str(port),
        "FLEETLAB_NATS__URL": nats_url,
        "FLEETLAB_POSTGRES__DSN": fresh_dsn,
        "FLEETLAB_ARTIFACTS__S3__ENDPOINT": s3_endpoint,
        "FLEETLAB_ARTIFACTS__S3__ACCESS_KEY": "test",
        "FLEETLAB_ARTIFACTS__S3__SECRET_KEY": "test-secret",
        "FLEETLAB_ARTIFACTS__S3__BUCKET": f"fleetlab-{port}",
        "FLEETLAB_AGENT__NAME": f"external-{port}",
    }
    out = tmp_path / "up.out"
    with out.open("wb") as f:
        proc = subprocess.Popen([FLEETLAB, "up"], env=env, stdout=f, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        health: dict[str, Any] = {}
        while time.monotonic() < deadline:
            assert proc.poll() is None, out.read_text()[-3000:]
            try:
                r = httpx.get(f"{url}/api/v1/health", timeout=2)
                health = r.json()
                if r.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        else:
            raise AssertionError(f"never healthy: {health}\n{out.read_text()[-3000:]}")
        assert health["components"]["artifacts"] == "ok"

        stack = json.loads((home / "stack.json").read_text())
        assert stack["nats_url"] == nats_url
        assert stack["postgres_dsn"] == fresh_dsn
        assert stack["artifacts"]["backend"] == "s3"
        assert "nats" not in stack["pids"] and "postgres" not in stack["pids"]
        assert not (home / "postgres").exists() and not (home / "nats").exists()

        with httpx.Client(base_url=url, timeout=10) as c:
            r = c.post("/api/v1/projects", json={"name": "ext", "command": ["true"]})
            assert r.status_code == 201, r.text
            eid = c.post("/api/v1/experiments", json={"project": "ext"}).json()["id"]
            deadline = time.monotonic() + 30
            while c.get(f"/api/v1/experiments/{eid}").json()["status"] != "succeeded":
                assert time.monotonic() < deadline, c.get(f"/api/v1/experiments/{eid}").json()
                time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert proc.returncode == 0
