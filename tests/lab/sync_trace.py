#!/usr/bin/env python3
"""Lab diagnostics: the sync stream of one director and its kernel's templates, on one clock.

Run inside a director's network namespace (as root) until SIGTERM:

    sync_trace.py IFNAME PORT GROUP OUT

writes to OUT, one record a line, each stamped with time.monotonic():

    L <t> <src> <hex>  a sync datagram this host sent (captured as it left, as the agent does;
                       the agent skips those from the sync port: pushes of lvs-hooks)
    S <t> <src> <hex>  a sync datagram heard on the group (as the agent hears it)
    K <t> <n>          a read of /proc/net/ip_vs_conn (every second), its n template lines next:
    <proto> <caddr> <vaddr:vport> <daddr:dport> <expires>

so that the table in memory can be replayed offline (tests/lab/sync_replay.py) against what the
kernel held at each second. Whole reads every second are cheap only on a small table: this is
for scenarios of a few thousand entries (churn), never for table-scale.
"""

import os
import select
import signal
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from lvs_hooks.kernel.synccapture import OutgoingSyncCapture  # noqa: E402
from lvs_hooks.push.collector import SyncGroupListener  # noqa: E402


def templates(path: str = "/proc/net/ip_vs_conn") -> list:
    out = []
    with open(path) as f:
        next(f, None)
        for line in f:
            p = line.split()
            if len(p) >= 8 and p[2] == "0000":
                out.append(f"{p[0]} {p[1]} {p[3]}:{p[4]} {p[5]}:{p[6]} {p[-1]}")
    return out


def main() -> int:
    ifname, port, group, path = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    cap = OutgoingSyncCapture(ifname, port)
    lis = SyncGroupListener(ifname, group, port)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    with open(path, "w", buffering=1 << 20) as out:
        next_read = time.monotonic()
        while not stop:
            wait = max(0.0, next_read - time.monotonic())
            try:
                ready, _, _ = select.select([cap, lis], [], [], wait)
            except InterruptedError:
                continue
            for sock, tag in ((cap, "L"), (lis, "S")):
                got = sock.recv(0) if sock in ready else None
                while got is not None:
                    out.write(f"{tag} {time.monotonic():.3f} {got[1]} {got[0].hex()}\n")
                    got = sock.recv(0)
            if time.monotonic() >= next_read:
                t = time.monotonic()
                rows = templates()
                out.write(f"K {t:.3f} {len(rows)}\n")
                out.write("".join(r + "\n" for r in rows))
                next_read = t + 1.0
    return 0


if __name__ == "__main__":
    sys.exit(main())
