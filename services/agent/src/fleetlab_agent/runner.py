"""One experiment's process: fresh working directory, argv without a shell, live output.

The process runs in its own process group (so a stop reaches everything it started) and is
told by the kernel to die when the agent dies (``PR_SET_PDEATHSIG``), so an experiment the
scheduler re-queues after losing the agent never runs twice at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import os
import shutil
import signal
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from fleetlab_common.events import ExperimentOutcome, OutputFile, utcnow
from fleetlab_common.log import get_logger
from fleetlab_common.runspec import OptionValue, RunSpec, build_argv

log = get_logger(__name__)

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _die_with_agent() -> None:
    # Runs in the child between fork and exec: only async-signal-safe work here.
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


# util-linux's setpriv sets the parent-death signal and then runs the command: the process
# starts through vfork/posix_spawn, a fraction of a millisecond, where a Python preexec_fn
# makes it a full fork of the agent (about 4 ms for an agent of 80 MB, on the start path of
# every run). Without setpriv the agent sets the signal itself in the child.
_SETPRIV = shutil.which("setpriv")


def _program(command: str, cwd: Path, env: dict[str, str]) -> str:
    """The program ``command`` names, as exec would find it (PATH of the run's environment
    for a bare name): checked before starting, so that a command that is missing or not
    executable says so however it is started (FileNotFoundError, PermissionError)."""
    if os.sep in command:
        path = Path(command) if Path(command).is_absolute() else cwd / command
        if not path.exists():
            raise FileNotFoundError(command)
    else:
        found = shutil.which(command, mode=os.F_OK, path=env.get("PATH", os.defpath))
        if found is None:
            raise FileNotFoundError(command)
        path = Path(found)
    if path.is_dir() or not os.access(path, os.X_OK):
        raise PermissionError(command)
    return str(path)


# The run's metrics file (FLEETLAB_METRICS_FILE), in its working directory.
METRICS_FILE = "metrics.jsonl"
# Holds fleetlab.py, the standard-library-only helper programs import (see fleetlab_agent.sdk).
SDK_DIR = Path(__file__).resolve().parent / "sdk"

# Variables of the agent's own that an experiment must not see (its NATS credential).
_PRIVATE_PREFIX = "FLEETLAB_"


@dataclass
class RunResult:
    """How a run ended."""

    status: ExperimentOutcome
    exit_code: int | None = None
    signal: int | None = None
    reason: str | None = None
    started: bool = True
    log_lines: int = 0
    started_at: datetime | None = None
    outputs: list[OutputFile] = field(default_factory=list)
    outputs_skipped: dict[str, str] = field(default_factory=dict)


# A line as it goes on the wire, the JSON object of ``LogLine``: {"seq", "stream", "ts",
# "line"} and "rank" for a worker of a multi-worker run. Plain dicts, not models: a run can
# print a million lines a minute, and a model per line was most of the agent's time.
WireLine = dict[str, Any]
PublishLines = Callable[[list[WireLine]], Awaitable[None]]


def wire_now() -> str:
    """Now as a line's ``ts`` (ISO 8601, UTC): taken once per read, shared by its lines."""
    return utcnow().isoformat().replace("+00:00", "Z")


def _size(text: str) -> int:
    # What a line costs in the batch's JSON: its UTF-8 (escapes make it up to 6x) plus fields.
    return len(text.encode()) * 2 + 96


# A run over its line rate may print this many seconds' worth of lines at once.
RATE_BURST_S = 0.1


class LogBatcher:
    """Numbers output lines (one sequence per run, across stdout and stderr) and sends them
    in batches: at most ``max_lines`` lines or about ``max_bytes`` of text per batch (well
    under NATS's 1 MiB message limit), at most ``max_delay`` seconds late.
    """

    def __init__(
        self,
        publish: PublishLines,
        max_lines: int = 500,
        max_delay: float = 0.05,
        max_bytes: int = 256 * 1024,
        *,
        rank: int | None = None,
        world_size: int = 1,
        max_lines_per_s: int = 0,
    ) -> None:
        self._publish = publish
        # The run's line rate bound (0: none), kept by making the pipes' reader wait.
        self._rate = max_lines_per_s
        self._allowance = max_lines_per_s * RATE_BURST_S
        self._counted = 0
        self._at = time.monotonic()
        self._max_lines = max_lines
        self._max_delay = max_delay
        self._max_bytes = max_bytes
        self._buffer: list[WireLine] = []
        self._buffer_bytes = 0
        self._pending = asyncio.Event()
        self._full = asyncio.Event()
        self._closed = False
        # Lines produced so far. A rank of a multi-worker experiment numbers its k-th line
        # (from 0) k * world_size + rank + 1, so that the ranks' lines share one sequence.
        self.seq = 0
        self._rank = rank
        self._world = world_size
        # Given every stdout line starting with "#" (printed metrics, when the project has them).
        self.on_hash_line: Callable[[str], None] | None = None
        self._task = asyncio.create_task(self._flusher(), name="log-batcher")

    def add(self, stream: Literal["stdout", "stderr"], text: str, ts: str | None = None) -> None:
        """One line, read at ``ts`` (see :func:`wire_now`; now when not given)."""
        self.seq += 1
        if self.on_hash_line is not None and text[:1] == "#" and stream == "stdout":
            self.on_hash_line(text)
        if ts is None:
            ts = wire_now()
        if self._rank is None:
            line = {"seq": self.seq, "stream": stream, "ts": ts, "line": text}
        else:
            seq = (self.seq - 1) * self._world + self._rank + 1
            line = {"seq": seq, "stream": stream, "ts": ts, "line": text, "rank": self._rank}
        self._buffer.append(line)
        self._buffer_bytes += _size(text)
        self._pending.set()
        if len(self._buffer) >= self._max_lines or self._buffer_bytes >= self._max_bytes:
            self._full.set()

    async def pace(self) -> None:
        """Wait while the run is over its line rate (call after each read of a pipe). The
        pipe then fills and the program waits on its next print: nothing is dropped."""
        if not self._rate:
            return
        now = time.monotonic()
        new, self._counted = self.seq - self._counted, self.seq
        earned = (now - self._at) * self._rate
        self._allowance = min(self._rate * RATE_BURST_S, self._allowance + earned) - new
        self._at = now
        if self._allowance < 0:
            await asyncio.sleep(-self._allowance / self._rate)

    def _take(self) -> list[WireLine]:
        """The next batch: bounded by lines and by bytes, never empty while lines wait."""
        size, count = 0, 0
        for line in self._buffer[: self._max_lines]:
            cost = _size(line["line"])
            if count and size + cost > self._max_bytes:
                break
            size += cost
            count += 1
        batch = self._buffer[:count]
        del self._buffer[:count]
        # Only what was taken is subtracted: recounting the rest made a backlog quadratic.
        self._buffer_bytes = max(0, self._buffer_bytes - size) if self._buffer else 0
        return batch

    async def _flusher(self) -> None:
        while True:
            await self._pending.wait()
            if not self._closed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self._max_delay)
            batch = self._take()
            if len(self._buffer) < self._max_lines and self._buffer_bytes < self._max_bytes:
                self._full.clear()
            if not self._buffer:
                self._pending.clear()
            if batch:
                await self._publish(batch)
            if self._closed and not self._buffer:
                return

    async def close(self) -> int:
        """Send every line still buffered; return how many lines the run produced."""
        self._closed = True
        self._pending.set()
        self._full.set()
        await self._task
        return self.seq


# A line longer than this many bytes is cut, with a marker saying how long it was
# (" … [line cut: <n> bytes]"): one runaway line (a progress bar without newlines, a dumped
# array) must not make a message too big for NATS. Documented in docs/logs.md.
MAX_LINE_BYTES = 16 * 1024


def _decode(raw: bytes, total: int | None = None) -> str:
    """Text of one line: undecodable bytes replaced (never fatal), the cut marked."""
    text = raw.rstrip(b"\r").decode("utf-8", errors="replace").replace("\x00", "\ufffd")
    if total is not None and total > MAX_LINE_BYTES:
        text += f" … [line cut: {total} bytes]"
    return text


class _LineBuffer:
    """The line being read, across reads: bounded to ``MAX_LINE_BYTES`` kept bytes, and
    restarted at every carriage return, so a progress bar redrawn with ``\r`` thousands of
    times becomes one line holding its latest state. A ``\r`` right before the newline is a
    Windows line end, not a redraw; one at the end of a read may be either, so it waits.
    """

    __slots__ = ("buf", "total")

    def __init__(self) -> None:
        self.buf = b""
        self.total = 0  # bytes of the current state, including what was cut away

    def feed(self, part: bytes) -> None:
        if not part:
            return
        if self.buf.endswith(b"\r"):
            # The pending \r was not followed by the newline: it was a redraw.
            self.buf, self.total = b"", 0
        body = part[:-1] if part.endswith(b"\r") else part
        cut = body.rfind(b"\r")
        if cut >= 0:
            self.buf, self.total = b"", 0
            part = part[cut + 1 :]
        self.total += len(part)
        room = MAX_LINE_BYTES + 1 - len(self.buf)  # +1: a trailing \r is not content
        if room > 0:
            self.buf += part[:room]

    def take(self) -> str:
        total = self.total - (1 if self.buf.endswith(b"\r") else 0)
        text = _decode(self.buf[:MAX_LINE_BYTES], total)
        self.buf, self.total = b"", 0
        return text

    def __bool__(self) -> bool:
        return self.total > 0


async def _pump(
    reader: asyncio.StreamReader | None, stream: Literal["stdout", "stderr"], batcher: LogBatcher
) -> None:
    """Read one pipe to its end, one line per newline (see :class:`_LineBuffer`)."""
    if reader is None:
        return
    line = _LineBuffer()
    add = batcher.add
    while chunk := await reader.read(65536):
        ts = wire_now()  # the lines of one read arrived together
        *lines, tail = chunk.split(b"\n")
        for part in lines:
            if not line and len(part) <= MAX_LINE_BYTES and b"\r" not in part:
                # The common case, kept cheap: a whole short line in one read.
                text = part.decode("utf-8", errors="replace")
                # PostgreSQL text cannot hold NUL: it is replaced like an undecodable byte.
                add(stream, text.replace("\x00", "\ufffd") if "\x00" in text else text, ts)
                continue
            line.feed(part)
            add(stream, line.take(), ts)
        line.feed(tail)
        await batcher.pace()
    if line:
        add(stream, line.take())


@dataclass
class Run:
    """One attempt of one experiment on this agent."""

    experiment_id: uuid.UUID
    attempt: int
    spec: RunSpec
    options: dict[str, OptionValue]
    workdir: Path
    # GPU indices given by the scheduler: the only ones the process sees.
    gpus: list[int] = field(default_factory=list)
    # Where the process starts, when not the fresh working directory (an agent-local project
    # runs in its own folder, as FGMachine did; inputs/ and outputs/ stay in the workdir).
    cwd: Path | None = None
    # FGMachine's results folder, watched while the run goes (fleetlab_agent.results).
    results_dir: Path | None = None
    argv: list[str] = field(default_factory=list)
    process: asyncio.subprocess.Process | None = None
    started_at: datetime | None = None
    stop_reason: str | None = None
    # A worker of a multi-worker experiment (world_size > 1): its RANK, LOCAL_RANK (among the
    # ranks on this agent) and the rendezvous, MASTER_ADDR:MASTER_PORT (rank 0 listens there).
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: str | None = None
    master_port: int | None = None
    _stop_requested: asyncio.Event = field(default_factory=asyncio.Event)

    def prepare(self) -> None:
        """A fresh working directory holding ``inputs/`` and ``outputs/``."""
        if self.workdir.exists():
            shutil.rmtree(self.workdir)
        (self.workdir / "inputs").mkdir(parents=True)
        (self.workdir / "outputs").mkdir()
        self.argv = build_argv(self.spec, self.options, str(self.experiment_id))

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(_PRIVATE_PREFIX)}
        env.update(
            {
                "PYTHONUNBUFFERED": "1",  # live output from Python programs
                "FLEETLAB_EXPERIMENT_ID": str(self.experiment_id),
                "FLEETLAB_ATTEMPT": str(self.attempt),
                "FLEETLAB_WORK_DIR": str(self.workdir),
                "FLEETLAB_INPUTS_DIR": str(self.workdir / "inputs"),
                "FLEETLAB_OUTPUTS_DIR": str(self.workdir / "outputs"),
                "FLEETLAB_METRICS_FILE": str(self.workdir / METRICS_FILE),
                # Empty when no GPU was asked for: the run then sees none.
                "CUDA_VISIBLE_DEVICES": ",".join(str(g) for g in self.gpus),
            }
        )
        if self.results_dir is not None:
            env["FLEETLAB_RESULTS_DIR"] = str(self.results_dir)
        if self.world_size > 1:
            env.update(
                {
                    "RANK": str(self.rank),
                    "WORLD_SIZE": str(self.world_size),
                    "LOCAL_RANK": str(self.local_rank),
                    "MASTER_ADDR": self.master_addr or "",
                    "MASTER_PORT": str(self.master_port or ""),
                    "FLEETLAB_RANK": str(self.rank),
                }
            )
        env.update(self.spec.env)
        # `import fleetlab` (log metrics, set scores) works in every run, before the
        # project's own PYTHONPATH.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SDK_DIR), env.get("PYTHONPATH")]))
        return env

    async def start(self, *, prepared: bool = False) -> str | None:
        """Start the process; return why it could not start, or None."""
        if not prepared:
            self.prepare()
        cwd = self.cwd or self.workdir
        env = self.environment()
        argv = self.argv
        preexec: Callable[[], None] | None = _die_with_agent
        try:
            if _SETPRIV is not None:
                program = _program(self.argv[0], cwd, env)
                argv = [_SETPRIV, "--pdeathsig", "KILL", "--", program, *self.argv[1:]]
                preexec = None
            self.process = await asyncio.create_subprocess_exec(
                *argv,
                cwd=cwd,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
                preexec_fn=preexec,
            )
        except FileNotFoundError:
            return f"command not found: {self.argv[0]}"
        except PermissionError:
            return f"command not executable: {self.argv[0]}"
        except OSError as exc:
            return f"could not start {self.argv[0]}: {exc.strerror or exc}"
        self.started_at = utcnow()
        return None

    def _signal_group(self, sig: int, *, leftovers: bool = False) -> None:
        # After the leader exited, its group id stays valid while any member lives.
        if self.process is None or (self.process.returncode is not None and not leftovers):
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, sig)

    async def stop(self, reason: str, grace_s: float) -> None:
        """SIGTERM to the process group, SIGKILL after ``grace_s`` seconds."""
        if self.stop_reason is None:
            self.stop_reason = reason
        self._stop_requested.set()
        self._signal_group(signal.SIGTERM)
        if self.process is None:
            return
        try:
            await asyncio.wait_for(self.process.wait(), grace_s)
        except TimeoutError:
            self._signal_group(signal.SIGKILL)

    def kill_now(self, reason: str) -> None:
        """SIGKILL the whole group at once (the agent is going away)."""
        self.stop_reason = reason
        self._signal_group(signal.SIGKILL)

    async def wait(self, batcher: LogBatcher, grace_s: float) -> RunResult:
        """Stream the output until the process ends; enforce the run's ``timeout_s``."""
        proc = self.process
        assert proc is not None
        pumps = asyncio.gather(
            _pump(proc.stdout, "stdout", batcher), _pump(proc.stderr, "stderr", batcher)
        )
        timed_out = False
        try:
            await asyncio.wait_for(asyncio.shield(proc.wait()), self.spec.timeout_s)
        except TimeoutError:
            timed_out = True
            await self.stop(f"timed out after {self.spec.timeout_s:g} s", grace_s)
            await proc.wait()
        # The process is gone; anything it left in the group could hold the pipes open.
        self._signal_group(signal.SIGKILL, leftovers=True)
        await pumps
        lines = await batcher.close()
        code = proc.returncode
        assert code is not None
        result = RunResult(status="succeeded", log_lines=lines, started_at=self.started_at)
        if timed_out:
            result.status, result.reason = "failed", self.stop_reason
        elif self._stop_requested.is_set():
            result.status, result.reason = "stopped", self.stop_reason
        elif code != 0:
            result.status = "failed"
            if code < 0:
                result.signal = -code
                result.reason = self.stop_reason or f"killed by signal {signal.Signals(-code).name}"
            else:
                result.reason = f"exit code {code}"
        if code >= 0:
            result.exit_code = code
        elif result.signal is None:
            result.signal = -code
        return result
