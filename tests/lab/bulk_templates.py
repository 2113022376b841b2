#!/usr/bin/env python3
"""Bulk template generator for scale tests: one UDP datagram from each of N spoofed sources.

Runs in the client netns. A raw socket (IP_HDRINCL) sends one datagram from each source address
BASE+0 .. BASE+N-1 (default 10.2.0.0 upwards, skipping .0 and .255 host parts) to VIP:PORT, so the
director schedules each one and creates N real LOCAL templates (and N connections). Answers are
not expected: the director has no route back to the spoofed range unless the scenario adds one.
The director must accept the sources: rp_filter off on its ingress (lib.sh lab_bulk_templates
does that), a route to the client side is not needed.

Usage: bulk_templates.py --vip 10.0.0.100 [--port 5000] [--base 10.2.0.0] [--rate PPS] N
"""

import argparse
import ipaddress
import socket
import struct
import sys
import time


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def packet(src: bytes, dst: bytes, sport: int, dport: int, payload: bytes, ident: int) -> bytes:
    udp_len = 8 + len(payload)
    pseudo = src + dst + struct.pack("!BBH", 0, socket.IPPROTO_UDP, udp_len)
    udp = struct.pack("!HHHH", sport, dport, udp_len, 0) + payload
    csum = checksum(pseudo + udp) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", csum) + udp[8:]
    total = 20 + udp_len
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, ident & 0xFFFF, 0, 64, socket.IPPROTO_UDP,
                     0, src, dst)
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return ip + udp


def sources(base: str, n: int):
    a = int(ipaddress.IPv4Address(base))
    while n > 0:
        if a & 0xFF not in (0, 255):
            yield ipaddress.IPv4Address(a).packed
            n -= 1
        a += 1


def raw_socket() -> socket.socket:
    """A raw IPv4 socket that sends the headers built here (IP_HDRINCL), with room to queue."""
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    return s


def send_one(s: socket.socket, pkt: bytes, vip: str) -> None:
    """Send one datagram; a full queue (EAGAIN, ENOBUFS) is waited out, not lost."""
    while True:
        try:
            s.sendto(pkt, (vip, 0))
            return
        except BlockingIOError:
            time.sleep(0.001)
        except OSError as e:
            if e.errno != 105:  # ENOBUFS
                raise
            time.sleep(0.001)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--vip", required=True)
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--base", default="10.2.0.0")
    p.add_argument("--sport", type=int, default=40000)
    p.add_argument("--rate", type=float, default=0, help="datagrams per second (0: as fast as possible)")
    p.add_argument("count", type=int)
    a = p.parse_args()
    s = raw_socket()
    dst = socket.inet_aton(a.vip)
    t0 = time.monotonic()
    sent = 0
    for i, src in enumerate(sources(a.base, a.count)):
        send_one(s, packet(src, dst, a.sport, a.port, b"bulk", i), a.vip)
        sent += 1
        if a.rate:
            ahead = sent / a.rate - (time.monotonic() - t0)
            if ahead > 0:
                time.sleep(ahead)
    dt = time.monotonic() - t0
    print(f"bulk_templates: {sent} datagrams from {a.base}+ to {a.vip}:{a.port} in {dt:.2f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
