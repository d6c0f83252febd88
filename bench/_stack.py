"""Helpers the benchmarks share: start `fleetlab up` on a temporary home, describe the machine,
write results and their table in docs/benchmarks.md (each benchmark owns one marked section)."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from fleetlab_common.embedded import free_port

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "benchmarks.md"
FLEETLAB = str(Path(sys.executable).parent / "fleetlab")


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = platform.processor()
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:  # noqa: PTH123
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError), open("/proc/meminfo", encoding="utf-8") as f:  # noqa: PTH123
        mem_kb = int(f.readline().split()[1])
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
    }


@contextlib.contextmanager
def stack(extra_env: dict[str, str] | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """A running `fleetlab up` (embedded servers) on a temporary home; yields (url, stack.json)."""
    home = Path(tempfile.mkdtemp(prefix="fleetlab-bench-")) / "home"
    port = free_port()
    env = {**os.environ, "FLEETLAB_HOME": str(home), "FLEETLAB_PORT": str(port)}
    for key in ("FLEETLAB_NATS__URL", "FLEETLAB_POSTGRES__DSN"):
        env.pop(key, None)
    env.update(extra_env or {})
    proc = subprocess.Popen(
        [FLEETLAB, "up"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"fleetlab up exited; see {home}/logs")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/api/v1/health", timeout=2).status_code == 200:
                    break
            time.sleep(0.1)
        else:
            raise RuntimeError("the stack never became healthy")
        yield url, json.loads((home / "stack.json").read_text())
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def record(name: str, results: dict[str, Any], table: str) -> None:
    """Write bench/results/<name>.json and replace this benchmark's section of the doc."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": name,
        "machine": machine(),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **results,
    }
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    begin, end = f"<!-- bench:{name}:begin -->", f"<!-- bench:{name}:end -->"
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    m = payload["machine"]
    section = (
        f"{begin}\n{table.strip()}\n\n_Measured {payload['measured_at']} on {m['cpus']} cores "
        f"({m['cpu_model']}), {m['memory_gib']} GiB, Python {m['python']}; raw figures in "
        f"`bench/results/{name}.json`._\n{end}"
    )
    if begin in text and end in text:
        text = text[: text.index(begin)] + section + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    DOC.write_text(text)
