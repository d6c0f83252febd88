"""How the agent learns that a run's process exited.

Python 3.11's default child watcher starts a thread per process, blocked in ``waitpid``; a
pidfd watched by the event loop costs nothing of the sort (Python 3.12 chooses it itself).
The agent's command installs one before its server starts and attaches it to the server's
loop once that runs; where the agent runs inside another program (the tests), nothing is
changed.
"""

from __future__ import annotations

import asyncio
import os
import sys
import warnings

# The watcher this process installed (none where the agent runs inside another program).
_INSTALLED: list[asyncio.AbstractChildWatcher] = []


def install_pidfd_watcher() -> None:
    """Use a pidfd watcher for this process, where Python and the kernel allow it."""
    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        return
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:  # a kernel without pidfds (before Linux 5.3)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        watcher = asyncio.PidfdChildWatcher()
        asyncio.set_child_watcher(watcher)
    _INSTALLED[:] = [watcher]


def attach_to_running_loop() -> None:
    """Attach the installed watcher (if any) to the loop now running."""
    for watcher in _INSTALLED:
        watcher.attach_loop(asyncio.get_running_loop())
