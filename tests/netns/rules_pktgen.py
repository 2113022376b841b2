#!/usr/bin/env python3
"""Packet generator for the rules swap test: raw Ethernet frames to a VIP, until SIGTERM.

Each frame is a UDP datagram from a new (source address, source port), so that every frame is
a NEW conntrack flow and passes the nat chains (which see only a flow's first packet). Frames
take turns among four kinds: (client MAC | peer MAC) x (port A | port B). On SIGTERM it writes
{"sent": {"client:A": n, ...}, "seconds": s} as JSON to --out and exits.

Usage: rules_pktgen.py --ifname IF --dst-mac MAC --client-mac MAC --peer-mac MAC --vip IP
                       --ports A,B --src-base 10.99.128.0 --rate PPS --out FILE
"""

import argparse
import json
import signal
import socket
import struct
import time


def mac_bytes(text: str) -> bytes:
    return bytes(int(x, 16) for x in text.split(":"))


def checksum(header: bytes) -> int:
    s = sum(struct.unpack("!10H", header))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--ifname", required=True)
    p.add_argument("--dst-mac", required=True)
    p.add_argument("--client-mac", required=True)
    p.add_argument("--peer-mac", required=True)
    p.add_argument("--vip", required=True)
    p.add_argument("--ports", required=True)
    p.add_argument("--src-base", default="10.99.128.0")
    p.add_argument("--rate", type=float, default=5000.0)
    p.add_argument("--out", required=True)
    a = p.parse_args()

    ports = [int(x) for x in a.ports.split(",")]
    kinds = [(who, port) for port in ports for who in ("client", "peer")]
    macs = {"client": mac_bytes(a.client_mac), "peer": mac_bytes(a.peer_mac)}
    dst = mac_bytes(a.dst_mac)
    vip = socket.inet_aton(a.vip)
    base = struct.unpack("!I", socket.inet_aton(a.src_base))[0]
    payload = b"ping"
    sent = {f"{who}:{port}": 0 for who, port in kinds}

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((a.ifname, 0))

    t0 = time.monotonic()
    n = 0
    burst = 50
    while not stop:
        for _ in range(burst):
            who, port = kinds[n % len(kinds)]
            flow = n // len(kinds)
            src = struct.pack("!I", base + flow // 60000)
            sport = 1024 + flow % 60000
            ip = struct.pack(
                "!BBHHHBBH4s4s", 0x45, 0, 20 + 8 + len(payload), n & 0xFFFF, 0, 64, 17, 0, src, vip
            )
            ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
            udp = struct.pack("!HHHH", sport, port, 8 + len(payload), 0)
            frame = dst + macs[who] + b"\x08\x00" + ip + udp + payload
            try:
                s.send(frame)
            except OSError:
                continue  # a full queue: this frame was not sent, and not counted
            sent[f"{who}:{port}"] += 1
            n += 1
        # pace to the rate
        ahead = n / a.rate - (time.monotonic() - t0)
        if ahead > 0:
            time.sleep(ahead)
    with open(a.out, "w") as f:
        json.dump({"sent": sent, "seconds": round(time.monotonic() - t0, 3)}, f)


if __name__ == "__main__":
    main()
