"""The reaper: kills every experiment's process group when the agent dies, however it dies.

The kernel's parent-death signal reaches only an experiment's first process; what that process
started (data loaders, a shell's children) would live on. So the agent starts this small
process once, in a session of its own, and tells it over a pipe which process groups it runs
(``+<pgid>`` / ``-<pgid>``). When the pipe closes — the agent exited, crashed or was killed
with SIGKILL — the reaper kills the groups still listed and exits.

Run as ``python -m fleetlab_agent.reaper``; the agent starts it, nobody else.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys

from fleetlab_common.log import get_logger

log = get_logger(__name__)


def main() -> None:
    # Ctrl-C at a terminal must not kill the reaper before it has done its job.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    groups: set[int] = set()
    for raw in sys.stdin.buffer:
        line = raw.strip()
        if not line:
            continue
        sign, pgid = line[:1], int(line[1:])
        if sign == b"+":
            groups.add(pgid)
        elif sign == b"-":
            groups.discard(pgid)
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)


class Reaper:
    """The agent's handle on its reaper process (restarted if it ever dies)."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._groups: set[int] = set()

    def _ensure(self) -> subprocess.Popen[bytes]:
        if self._proc is None or self._proc.poll() is not None:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "fleetlab_agent.reaper"],
                stdin=subprocess.PIPE,
                start_new_session=True,
            )
            assert self._proc.stdin is not None
            for pgid in self._groups:  # a new reaper learns what the old one knew
                self._proc.stdin.write(b"+%d\n" % pgid)
            self._proc.stdin.flush()
        return self._proc

    def _send(self, line: bytes) -> None:
        for _ in range(2):
            proc = self._ensure()
            assert proc.stdin is not None
            try:
                proc.stdin.write(line)
                proc.stdin.flush()
                return
            except BrokenPipeError:
                log.warning("agent.reaper_restarted")
                self._proc = None

    def start(self) -> None:
        """Start the reaper process."""
        self._ensure()

    def watch(self, pgid: int) -> None:
        """Kill group ``pgid`` if the agent dies before :meth:`forget`."""
        self._groups.add(pgid)
        self._send(b"+%d\n" % pgid)

    def forget(self, pgid: int) -> None:
        """Group ``pgid`` is gone (its run ended and its leftovers were killed)."""
        self._groups.discard(pgid)
        self._send(b"-%d\n" % pgid)

    def close(self) -> None:
        """The agent stops: the reaper kills what is still listed and exits."""
        if self._proc is not None and self._proc.stdin is not None:
            with contextlib.suppress(BrokenPipeError):
                self._proc.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(5)
        self._proc = None


if __name__ == "__main__":
    main()
