#!/usr/bin/env python3
"""Lab-only IPVS sync message injector (protocol v1, IPv4 entries). Not the product's codec.

Puts persistence templates (or plain connections) into a director's IPVS table through its
running *backup* sync daemon: the only way into the kernel's connection table. The message goes
out of the sync interface as multicast with IP_MULTICAST_LOOP=1, so the local backup daemon
receives it; TTL 0 keeps it off the wire (local only), --ttl 1 also reaches the peers.

Wire format (net/netfilter/ipvs/ip_vs_sync.c, big-endian):
  header struct ip_vs_sync_mesg, 8 bytes:
      u8 reserved=0, u8 syncid, be16 size (whole datagram), u8 nr_conns, s8 version=1, u16 spare=0
  entry struct ip_vs_sync_v4, 36 bytes:
      u8 type=0, u8 protocol, be16 ver_size=(0<<12)|36, be32 flags, be16 state, be16 cport,
      be16 vport, be16 dport, be32 fwmark, be32 timeout (s), be32 caddr, be32 vaddr, be32 daddr

Usage (in the director's netns):
  sync_inject.py [--iface sync0] [--syncid 51] [--timeout 300] [--proto udp] CADDR,VIP:VPORT,RIP:RPORT...
"""

import argparse
import socket
import struct
import sys

F_MASQ, F_DROUTE, F_TEMPLATE = 0x0000, 0x0003, 0x1000
STATE_ASSURED = 1  # a template must be ASSURED or the kernel drops it with its last connection
HEADER = struct.Struct("!BBHBbH")
ENTRY_V4 = struct.Struct("!BBHIHHHHII4s4s4s")
MAX_ENTRIES = 40  # what the kernel master puts in one 1500-byte datagram


def entry_v4(proto: int, caddr: str, cport: int, vaddr: str, vport: int, daddr: str, dport: int,
             timeout: int, flags: int, state: int, fwmark: int = 0) -> bytes:
    return ENTRY_V4.pack(0, proto, ENTRY_V4.size, flags, state, cport, vport, dport, fwmark,
                         timeout, socket.inet_aton(caddr), socket.inet_aton(vaddr),
                         socket.inet_aton(daddr))


def message(syncid: int, entries: list) -> bytes:
    size = HEADER.size + sum(len(e) for e in entries)
    return HEADER.pack(0, syncid, size, len(entries), 1, 0) + b"".join(entries)


def sender(iface: str, ttl: int, loop: bool = True) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    # struct ip_mreqn {multiaddr, address, ifindex}: the outgoing interface must be the sync one
    mreqn = struct.pack("4s4si", socket.inet_aton("0.0.0.0"), socket.inet_aton("0.0.0.0"),
                        socket.if_nametoindex(iface))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, mreqn)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1 if loop else 0)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, ttl)
    return s


def parse_entry(text: str):
    try:
        c, v, d = text.split(",")
        vaddr, vport = v.rsplit(":", 1)
        daddr, dport = d.rsplit(":", 1)
        return c, vaddr, int(vport), daddr, int(dport)
    except ValueError as e:
        raise argparse.ArgumentTypeError(
            f"expected CADDR,VIP:VPORT,RIP:RPORT, got {text!r}") from e


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--iface", default="sync0")
    p.add_argument("--syncid", type=int, default=51)
    p.add_argument("--group", default="224.0.0.81")
    p.add_argument("--port", type=int, default=8848)
    p.add_argument("--ttl", type=int, default=0, help="0: local backup daemon only (default)")
    p.add_argument("--proto", choices=["udp", "tcp"], default="udp")
    p.add_argument("--timeout", type=int, default=300, help="template lifetime in seconds")
    p.add_argument("--fwd", choices=["masq", "droute"], default="masq")
    p.add_argument("--conn", action="store_true", help="a plain connection, not a template")
    p.add_argument("--cport", type=int, default=0)
    p.add_argument("--state", type=int, default=STATE_ASSURED)
    p.add_argument("entries", nargs="+", type=parse_entry, metavar="CADDR,VIP:VPORT,RIP:RPORT")
    a = p.parse_args()
    proto = {"udp": socket.IPPROTO_UDP, "tcp": socket.IPPROTO_TCP}[a.proto]
    flags = (0 if a.conn else F_TEMPLATE) | (F_DROUTE if a.fwd == "droute" else F_MASQ)
    ents = [entry_v4(proto, c, a.cport, v, vp, d, dp, a.timeout, flags, a.state)
            for c, v, vp, d, dp in a.entries]
    s = sender(a.iface, a.ttl)
    sent = 0
    for i in range(0, len(ents), MAX_ENTRIES):
        sent += s.sendto(message(a.syncid, ents[i:i + MAX_ENTRIES]), (a.group, a.port))
    print(f"sync_inject: {len(ents)} entries, {sent} bytes, syncid {a.syncid}, via {a.iface} "
          f"ttl {a.ttl}, flags 0x{flags:04x}, timeout {a.timeout}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
