#!/usr/bin/env python3
"""Record the sync datagrams seen on a sync link (lab only): one JSON line per datagram.

Joins the sync group on IFACE (the kernel's backup socket is bound the same way, and both may
share the port) and writes {"src": ADDR, "hex": DATAGRAM} lines to OUT until COUNT datagrams or
SECONDS have passed.

Usage: sync_sniff.py --iface sync0 --out FILE [--count N] [--seconds S]
"""

import argparse
import json
import socket
import struct
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iface", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--group", default="224.0.0.81")
    ap.add_argument("--port", type=int, default=8848)
    ap.add_argument("--count", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=60)
    a = ap.parse_args()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, a.iface.encode())
    s.bind((a.group, a.port))
    mreqn = struct.pack("4s4si", socket.inet_aton(a.group), socket.inet_aton("0.0.0.0"),
                        socket.if_nametoindex(a.iface))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn)
    end = time.monotonic() + a.seconds
    n = 0
    with open(a.out, "a") as out:
        print("ready", flush=True)
        while n < a.count and time.monotonic() < end:
            s.settimeout(max(0.05, end - time.monotonic()))
            try:
                data, src = s.recvfrom(65535)
            except socket.timeout:
                break
            out.write(json.dumps({"src": src[0], "hex": data.hex()}) + "\n")
            out.flush()
            n += 1
    print(f"captured {n} datagrams", flush=True)


if __name__ == "__main__":
    main()
