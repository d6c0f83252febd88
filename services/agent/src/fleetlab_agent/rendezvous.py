"""Multi-worker experiments: the address other agents reach this one at, and a free port.

Rank 0's agent picks the rendezvous (``MASTER_ADDR``: its own address; ``MASTER_PORT``: a port
free there) and the scheduler hands it to the other ranks.
"""

from __future__ import annotations

import contextlib
import socket
from urllib.parse import urlsplit


def reachable_address(nats_url: str, configured: str | None = None) -> str:
    """The address to advertise: the configured one, else this machine's address on the route
    to the NATS server (the network every agent shares), else the host name's address."""
    if configured:
        return configured
    first = nats_url.split(",", maxsplit=1)[0].strip()
    host = urlsplit(first if "://" in first else f"nats://{first}").hostname or "127.0.0.1"
    with contextlib.suppress(OSError):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((host, 4222))  # UDP: nothing is sent, the route is chosen
            address = str(probe.getsockname()[0])
            if address and address not in ("0.0.0.0", "::"):
                return address
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def free_port(address: str) -> int:
    """A TCP port free on ``address`` now (the kernel's choice), for rank 0 to listen on."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((address, 0))
        except OSError:
            sock.bind(("", 0))
        return int(sock.getsockname()[1])
