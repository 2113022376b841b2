"""Capture, on a master, the sync datagrams its own kernel sends (design.md section 3.8).

As master, the kernel sends every template and connection change to the sync group. Reading
them as they leave keeps a table fed without reading /proc/net/ip_vs_conn, which is quadratic
(section 2.4). A UDP socket cannot do it: a datagram sent from this host is delivered to a
socket of this host only as a looped copy, and the kernel's master socket turns the loop off.
An AF_PACKET socket sees the packet itself as the device sends it.

How (include/uapi/linux/if_packet.h, net/packet/af_packet.c, net/core/dev.c):

- SOCK_DGRAM: the kernel strips the link-layer header, so the bytes start at the IP header, for
  outgoing packets too (packet_rcv pulls them to the network header), on any device type.
- Protocol ETH_P_ALL: only the taps registered for all protocols are handed what the host sends
  (dev_queue_xmit_nit walks ptype_all); a socket bound to ETH_P_IP would see incoming only.
- A classic BPF filter (SO_ATTACH_FILTER) keeps only packets of type PACKET_OUTGOING (the
  ancillary load SKF_AD_PKTTYPE) that are UDP to the sync port(s), IPv4 or IPv6 without
  extension headers. It runs in the kernel before anything is queued, so the host's incoming
  traffic costs no queue space and no wake-up here.
- The filter is attached before the socket is bound: a socket made with protocol 0 receives
  nothing, and bind() to (interface, ETH_P_ALL) starts the capture with the filter in place,
  so nothing unfiltered is ever queued.

What is and is not captured, besides the kernel's master daemon:

- lvs-hooks' own datagrams to the group that leave by the interface (a push to the peers,
  section 5.7, TTL 1) are captured too; the caller tells them apart by source port.
- Looped copies (anything sent with IP_MULTICAST_LOOP on) are never delivered: af_packet drops
  every packet of type PACKET_LOOPBACK before any filter (packet_rcv), as a duplicate of the
  outgoing one. lvs-hooks' injections into this kernel (TTL 0, loop on, section 3.4) never
  reach the device at all (ip_mc_output frees them after the looped copy): not captured.
- Datagrams from the peers (their masters, their pushes) arrive as PACKET_MULTICAST: dropped
  by the filter.
- Fragments. The master's sockets allow fragmentation (IP_PMTUDISC_DONT, "if MTU changes")
  and fill datagrams up to its maxlen, 1500 minus the IP and UDP headers whatever the MTU, or
  up to 65535 minus headers when set (ip_vs_sync.c, start_sync_thread, make_send_sock). On a
  sync interface with an MTU of 1500 or more and maxlen left alone, nothing is fragmented.
  With a smaller MTU (an overlay) or a larger maxlen, full datagrams are, and this capture
  loses them: the filter drops IPv4 fragments after the first (they have no UDP header to
  test) and every IPv6 fragment (an extension header); a first IPv4 fragment passes the
  filter and is counted as `fragmented` and skipped. A `fragmented` count above 0 means the
  sync interface's MTU is below the master's maxlen plus headers.

Counters: PACKET_STATISTICS gives the packets that passed the filter since the last read (both
queued and dropped: tp_packets includes tp_drops) and those dropped because the receive buffer
was full, and resets both on each read; this class adds them up. Once the queue is drained,
captured + fragmented + malformed + other == kernel_packets - kernel_drops.

A packet the kernel could not clone for the tap (an allocation failure in dev_queue_xmit_nit)
is lost without being counted anywhere.
"""

import contextlib
import ctypes
import dataclasses
import errno
import select
import socket
import struct
import time
from dataclasses import dataclass
from typing import List, NamedTuple, Optional, Tuple

from lvs_hooks.errors import KernelError

# ---------------------------------------------------------------------------- kernel values

# include/uapi/linux/if_ether.h
ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
# include/linux/socket.h, include/uapi/linux/if_packet.h
SOL_PACKET = 263
PACKET_STATISTICS = 6
PACKET_OUTGOING = 4  # sll_pkttype and skb->pkt_type of a packet this host sends
# include/uapi/asm-generic/socket.h
SO_ATTACH_FILTER = 26
SO_RCVBUFFORCE = 33
IPPROTO_UDP = 17

# Classic BPF, include/uapi/linux/bpf_common.h and include/uapi/linux/filter.h.
# code = class | size | mode (loads), class | op | source (jumps, ALU), class | source (ret).
BPF_LD, BPF_LDX, BPF_JMP, BPF_RET = 0x00, 0x01, 0x05, 0x06
BPF_W, BPF_H, BPF_B = 0x00, 0x08, 0x10
BPF_IMM, BPF_ABS, BPF_IND, BPF_MSH = 0x00, 0x20, 0x40, 0xA0
BPF_JEQ, BPF_JGT, BPF_JGE, BPF_JSET = 0x10, 0x20, 0x30, 0x40
BPF_K = 0x00
# Ancillary loads: an absolute load at SKF_AD_OFF + n reads skb metadata, not packet bytes.
SKF_AD_OFF = -0x1000
SKF_AD_PROTOCOL = 0  # ntohs(skb->protocol): the ethertype
SKF_AD_PKTTYPE = 4  # skb->pkt_type: PACKET_HOST, ..., PACKET_OUTGOING

# What an accepting filter returns: the bytes to keep; more than any IP datagram (65535 bytes
# of IPv4, 40 + 65535 of IPv6 without jumbograms), so a datagram is never cut short.
ACCEPT_SNAPLEN = 0x40000

# Asked for; SO_RCVBUFFORCE (CAP_NET_ADMIN) may exceed net.core.rmem_max, SO_RCVBUF is capped
# by it. During a push or a burst of new clients a master may send tens of thousands of
# datagrams a second, and each queued packet costs its whole buffer (about 2-4 KiB for a
# 1.5 KB frame): 16 MiB holds several thousand, a fraction of a second of the agent not
# reading. A full buffer drops packets, counted in kernel_drops.
RCVBUF = 16 << 20

# Largest packet recv() asks for: an IPv6 header and a full 16-bit payload.
_RECV_SIZE = 40 + 0xFFFF


# The structures crossing the boundary, host byte order:
#
# struct sock_filter (include/uapi/linux/filter.h), one per instruction, 8 bytes:
# | offset | size | field | meaning                                          |
# |--------|------|-------|--------------------------------------------------|
# | 0      | 2    | code  | class, size, mode or operation, source           |
# | 2      | 1    | jt    | instructions skipped when a jump's test holds    |
# | 3      | 1    | jf    | ... when it does not                             |
# | 4      | 4    | k     | constant: offset, value, snap length             |
#
# struct sock_fprog (filter.h), the SO_ATTACH_FILTER argument, 16 bytes on 64-bit:
# | 0 | 2 | len    | number of instructions                                      |
# | 8 | 8 | filter | pointer to the sock_filter array (offset 4, size 4 on 32-bit) |
#
# struct tpacket_stats (include/uapi/linux/if_packet.h), PACKET_STATISTICS, 8 bytes:
# | 0 | 4 | tp_packets | passed the filter since the last read, drops included |
# | 4 | 4 | tp_drops   | dropped since the last read (receive buffer full)      |
#
# struct sockaddr_ll (if_packet.h), as Python's recvfrom gives it: (interface name,
# sll_protocol, sll_pkttype, sll_hatype, sll_addr); sll_pkttype is index 2.


class Insn(NamedTuple):
    """struct sock_filter (include/uapi/linux/filter.h)."""

    code: int  # u16
    jt: int  # u8: instructions to skip when the test holds
    jf: int  # u8: ... when it does not
    k: int  # u32


# struct sock_filter, native byte order (the kernel reads it as the host's own struct)
_SOCK_FILTER = struct.Struct("=HBBI")


def _ad(n: int) -> int:
    return (SKF_AD_OFF + n) & 0xFFFFFFFF


def build_filter(port: int, ports: int = 1) -> List[Insn]:
    """The classic BPF program: outgoing UDP to port .. port + ports - 1, or nothing.

    The sync daemon's thread i uses port + i (sysctl sync_ports, design.md 3.9). With
    SOCK_DGRAM, offset 0 is the IP header. A load beyond the packet ends the program with 0.

    | #  | instruction              | meaning                                               |
    |----|--------------------------|-------------------------------------------------------|
    | 0  | ld  #pkttype             | A = skb->pkt_type                                     |
    | 1  | jeq #4 (OUTGOING)        | else drop                                             |
    | 2  | ld  #proto               | A = ethertype                                         |
    | 3  | jeq #0x86dd              | IPv6: on; else to 7                                   |
    | 4  | ldx #40                  | X = fixed IPv6 header length                          |
    | 5  | ldb [6]                  | A = next header                                       |
    | 6  | jeq #17                  | UDP: to 13 (ports); an extension header: drop         |
    | 7  | jeq #0x0800              | IPv4 (A still the ethertype); else drop               |
    | 8  | ldb [9]                  | A = protocol                                          |
    | 9  | jeq #17                  | else drop                                             |
    | 10 | ldh [6]                  | A = flags and fragment offset                         |
    | 11 | jset #0x1fff             | a fragment after the first (no UDP header): drop      |
    | 12 | ldxb 4*([0]&0xf)         | X = IPv4 header length                                |
    | 13 | ldh [x+2]                | A = UDP destination port                              |
    | 14 | jeq #port                | (ports > 1: jge #port, jgt #last: two instructions)   |
    | .. | ret #ACCEPT_SNAPLEN      | keep the whole packet                                 |
    | .. | ret #0                   | drop                                                  |
    """
    if not 1 <= port <= 0xFFFF or ports < 1 or port + ports - 1 > 0xFFFF:
        raise ValueError(f"bad sync port range {port} + {ports}")
    jeq, jge, jgt, jset = (BPF_JMP | op | BPF_K for op in (BPF_JEQ, BPF_JGE, BPF_JGT, BPF_JSET))
    ports_at = 13  # ldh [x+2]
    accept = ports_at + 1 + (1 if ports == 1 else 2)
    drop = accept + 1

    def to(i: int, target: int) -> int:
        # jt and jf count the instructions to skip after instruction i
        return target - i - 1

    prog = [
        Insn(BPF_LD | BPF_W | BPF_ABS, 0, 0, _ad(SKF_AD_PKTTYPE)),
        Insn(jeq, 0, to(1, drop), PACKET_OUTGOING),
        Insn(BPF_LD | BPF_W | BPF_ABS, 0, 0, _ad(SKF_AD_PROTOCOL)),
        Insn(jeq, 0, to(3, 7), ETH_P_IPV6),
        Insn(BPF_LDX | BPF_W | BPF_IMM, 0, 0, 40),  # the fixed IPv6 header
        Insn(BPF_LD | BPF_B | BPF_ABS, 0, 0, 6),
        Insn(jeq, to(6, ports_at), to(6, drop), IPPROTO_UDP),
        Insn(jeq, 0, to(7, drop), ETH_P_IP),
        Insn(BPF_LD | BPF_B | BPF_ABS, 0, 0, 9),
        Insn(jeq, 0, to(9, drop), IPPROTO_UDP),
        Insn(BPF_LD | BPF_H | BPF_ABS, 0, 0, 6),
        Insn(jset, to(11, drop), 0, 0x1FFF),
        Insn(BPF_LDX | BPF_B | BPF_MSH, 0, 0, 0),
        Insn(BPF_LD | BPF_H | BPF_IND, 0, 0, 2),
    ]
    if ports == 1:
        prog.append(Insn(jeq, 0, to(14, drop), port))
    else:
        prog.append(Insn(jge, 0, to(14, drop), port))
        prog.append(Insn(jgt, to(15, drop), 0, port + ports - 1))
    prog.append(Insn(BPF_RET | BPF_K, 0, 0, ACCEPT_SNAPLEN))
    prog.append(Insn(BPF_RET | BPF_K, 0, 0, 0))
    return prog


def encode_filter(prog: List[Insn]) -> bytes:
    """The program as the array of struct sock_filter that SO_ATTACH_FILTER points at."""
    return b"".join(_SOCK_FILTER.pack(*i) for i in prog)


# ---------------------------------------------------------------------------- headers

# IPv4 header (RFC 791): version/IHL, TOS, total length, id, flags/fragment offset, TTL,
# protocol, checksum, source, destination. IPv6 (RFC 8200): version/class/flow, payload length,
# next header, hop limit, source, destination. UDP (RFC 768): ports, length, checksum.
_IP4 = struct.Struct("!BBHHHBBH4s4s")
_IP6 = struct.Struct("!IHBB16s16s")
_UDP = struct.Struct("!HHHH")

OK, FRAGMENTED, MALFORMED, OTHER = "ok", "fragmented", "malformed", "other"


def parse_packet(packet: bytes, port: int, ports: int = 1) -> Tuple[str, bytes, str]:
    """(verdict, UDP payload, source "addr:port") of a packet that starts at its IP header.

    verdict: OK (the payload and source are set), FRAGMENTED (part of a fragmented IPv4
    datagram), MALFORMED (lengths that do not add up: truncated, or a UDP length other than
    what the IP header leaves), OTHER (not UDP to the ports, an IPv6 extension header). The
    filter already keeps out OTHER; this check is for what the kernel hands over all the same.
    UDP checksums are not checked: an outgoing packet may carry only the pseudo-header sum,
    the rest being left to the device (checksum offload).
    """
    n = len(packet)
    if n < 1:
        return MALFORMED, b"", ""
    version = packet[0] >> 4
    if version == 4:
        if n < _IP4.size:
            return MALFORMED, b"", ""
        vihl, _tos, total, _id, frag, _ttl, proto, _sum, src, _dst = _IP4.unpack_from(packet)
        hlen = (vihl & 0xF) * 4
        if hlen < _IP4.size or total < hlen or total > n:
            return MALFORMED, b"", ""
        if frag & 0x3FFF:  # MF (0x2000) or an offset: one piece of a larger datagram
            return FRAGMENTED, b"", ""
        if proto != IPPROTO_UDP:
            return OTHER, b"", ""
        udp_at, end = hlen, total
        addr = socket.inet_ntop(socket.AF_INET, src)
    elif version == 6:
        if n < _IP6.size:
            return MALFORMED, b"", ""
        _vcf, plen, nexthdr, _hops, src, _dst = _IP6.unpack_from(packet)
        if nexthdr != IPPROTO_UDP:
            return OTHER, b"", ""
        if plen == 0 or _IP6.size + plen > n:  # 0: a jumbogram, never a sync message
            return MALFORMED, b"", ""
        udp_at, end = _IP6.size, _IP6.size + plen
        addr = socket.inet_ntop(socket.AF_INET6, src)
    else:
        return OTHER, b"", ""
    if end - udp_at < _UDP.size:
        return MALFORMED, b"", ""
    sport, dport, ulen, _csum = _UDP.unpack_from(packet, udp_at)
    if not port <= dport < port + ports:
        return OTHER, b"", ""
    if ulen != end - udp_at:
        return MALFORMED, b"", ""
    source = f"[{addr}]:{sport}" if version == 6 else f"{addr}:{sport}"
    return OK, bytes(packet[udp_at + _UDP.size : end]), source


# ---------------------------------------------------------------------------- the socket


@dataclass
class CaptureCounters:
    captured: int = 0  # datagrams recv() returned
    fragmented: int = 0  # first fragments of IPv4 datagrams to the port, skipped
    malformed: int = 0  # IP/UDP lengths that do not add up, skipped
    other: int = 0  # not outgoing, not UDP to the ports: the filter keeps these out; 0 expected
    own: int = 0  # sent from `own_port`: lvs-hooks' own pushes, not the kernel's, skipped
    kernel_packets: int = 0  # passed the filter, queued or dropped (PACKET_STATISTICS)
    kernel_drops: int = 0  # of those, dropped by the kernel: the receive buffer was full

    def summary(self) -> dict:
        return dataclasses.asdict(self)


class OutgoingSyncCapture:
    """The sync datagrams this host sends out of `ifname` to UDP port .. port + ports - 1.

    recv() gives (UDP payload, "addr:port"), the source written as SyncGroupListener.recv
    writes it ("[addr]:port" for IPv6), or None on timeout. fileno() is for select().
    Needs CAP_NET_RAW.
    """

    def __init__(
        self, ifname: str, port: int, ports: int = 1, rcvbuf: int = RCVBUF,
        own_port: Optional[int] = None,
    ):
        """`own_port`: datagrams from this source port are skipped (counted in `own`): a push
        of lvs-hooks leaves from the sync port (push.run), the kernel's master daemon from an
        ephemeral one (design.md 3.8)."""
        self.ifname, self.port, self.ports = ifname, port, ports
        self.own_suffix = None if own_port is None else f":{own_port}"
        prog = encode_filter(build_filter(port, ports))  # ValueError on a bad port first
        try:
            self.ifindex = socket.if_nametoindex(ifname)
        except OSError as e:
            raise KernelError(f"sync interface {ifname!r} does not exist") from e
        self._counters = CaptureCounters()
        try:
            # Protocol 0: receives nothing until bind() names a protocol, after the filter.
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0)
        except PermissionError as e:
            raise KernelError(
                f"cannot capture sync datagrams on {ifname}: needs CAP_NET_RAW (run as root)"
            ) from e
        except OSError as e:
            raise KernelError(
                f"cannot capture sync datagrams on {ifname}: socket: {e.strerror}"
            ) from e
        step = "SO_ATTACH_FILTER"
        try:
            _attach_filter(self.sock, prog)
            step = "SO_RCVBUF"
            self.rcvbuf = _set_rcvbuf(self.sock, rcvbuf)
            step = "bind"
            self.sock.bind((ifname, ETH_P_ALL))
        except OSError as e:
            self.sock.close()
            if e.errno == errno.ENODEV:
                raise KernelError(f"sync interface {ifname!r} does not exist") from e
            raise KernelError(
                f"cannot capture sync datagrams on {ifname}: {step}: {e.strerror or e}"
            ) from e
        self.sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def recv(self, timeout: Optional[float]) -> Optional[Tuple[bytes, str]]:
        """The next datagram sent out of the interface to the port(s) and its source, or None
        when `timeout` seconds pass first (None: wait for ever; 0: only what is queued)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        c = self._counters
        while True:
            try:
                packet, addr = self.sock.recvfrom(_RECV_SIZE)
            except BlockingIOError:
                wait = None if deadline is None else deadline - time.monotonic()
                if wait is not None and wait <= 0:
                    return None
                select.select([self.sock], [], [], wait)
                continue
            except OSError as e:
                # e.g. ENETDOWN: the interface went down or away under the socket
                raise KernelError(
                    f"capturing sync datagrams on {self.ifname}: {e.strerror or e}"
                ) from e
            if addr[2] != PACKET_OUTGOING:
                c.other += 1
                continue
            verdict, payload, source = parse_packet(packet, self.port, self.ports)
            if verdict == OK:
                if self.own_suffix is not None and source.endswith(self.own_suffix):
                    c.own += 1
                    continue
                c.captured += 1
                return payload, source
            if verdict == FRAGMENTED:
                c.fragmented += 1
            elif verdict == MALFORMED:
                c.malformed += 1
            else:
                c.other += 1

    def counters(self) -> CaptureCounters:
        """A copy of the counters, with the kernel's read now."""
        packets, drops = struct.unpack(
            "=II", self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
        )
        self._counters.kernel_packets += packets
        self._counters.kernel_drops += drops
        return dataclasses.replace(self._counters)

    def dropped(self) -> int:
        """Packets the kernel dropped because the receive buffer was full, since the start."""
        return self.counters().kernel_drops

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "OutgoingSyncCapture":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _attach_filter(sock: socket.socket, prog: bytes) -> None:
    """SO_ATTACH_FILTER takes a struct sock_fprog {u16 len; struct sock_filter *filter}; the
    kernel copies the program during the call, so the buffer need only outlive it."""
    buf = ctypes.create_string_buffer(prog, len(prog))
    fprog = struct.pack("@HP", len(prog) // _SOCK_FILTER.size, ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def _set_rcvbuf(sock: socket.socket, size: int) -> int:
    """Set the receive buffer, past net.core.rmem_max if allowed; the size the kernel took
    (it doubles what is asked, for its bookkeeping)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
        return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)


__all__ = [
    "CaptureCounters",
    "Insn",
    "OutgoingSyncCapture",
    "build_filter",
    "encode_filter",
    "parse_packet",
]
