"""A multi-worker test program: rank 0 listens on MASTER_ADDR:MASTER_PORT, the other ranks
connect and exchange their rank with it; each prints what it got. ``--fail=R`` makes rank R
exit 3 after the rendezvous while the others wait (they must be stopped)."""

import os
import socket
import sys
import time

rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
addr, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
print(f"rank {rank} of {world}, local rank {os.environ['LOCAL_RANK']}, master {addr}:{port}")
print(f"rank {rank} of {world} on {os.environ['FLEETLAB_WORK_DIR'].rsplit('-', 1)[-1]}")
fail = next((int(a.split("=")[1]) for a in sys.argv[1:] if a.startswith("--fail=")), -1)
if rank == 0:
    server = socket.create_server((addr, port))
    server.settimeout(60)
    peers = []
    for _ in range(world - 1):
        conn, _ = server.accept()
        peers.append(int(conn.recv(16)))
        conn.sendall(b"0")
        conn.close()
    print(f"rank 0 got ranks {sorted(peers)}")
else:
    deadline = time.monotonic() + 60
    while True:
        try:
            sock = socket.create_connection((addr, port), timeout=5)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    sock.sendall(str(rank).encode())
    print(f"rank {rank} got rank {int(sock.recv(16))}")
if rank == fail:
    print(f"rank {rank} fails", file=sys.stderr)
    sys.exit(3)
if fail >= 0:
    time.sleep(120)  # the others wait: they must be stopped when a rank fails
