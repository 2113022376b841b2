"""The capture's BPF program and header checks, without a kernel.

The program is compared with one written out by hand, then run by a small interpreter of the
classic BPF subset it uses (the kernel's semantics: a load past the packet ends the program
with 0) over IPv4 and IPv6 packets built here byte by byte. The netns tier runs it in a kernel.
"""

import socket
import struct

import pytest

from lvs_hooks.kernel import synccapture as sc

PORT = 8848
HOST, MULTICAST, LOOPBACK, OUTGOING = 0, 2, 5, 4  # include/uapi/linux/if_packet.h

# ---------------------------------------------------------------- a classic BPF interpreter


def run_bpf(prog, packet: bytes, pkttype: int, protocol: int) -> int:
    """What the kernel's filter returns for `packet` (starting at the IP header) with these
    skb->pkt_type and ethertype; raises on an instruction outside the subset."""
    a = x = 0
    pc = 0
    for _ in range(len(prog) + 1):  # forward jumps only: never more steps than instructions
        code, jt, jf, k = prog[pc]
        cls = code & 0x07
        if cls in (sc.BPF_LD, sc.BPF_LDX):
            size, mode = code & 0x18, code & 0xE0
            width = {sc.BPF_W: 4, sc.BPF_H: 2, sc.BPF_B: 1}[size]
            if cls == sc.BPF_LDX and mode == sc.BPF_MSH and size == sc.BPF_B:
                if k >= len(packet):
                    return 0
                x = 4 * (packet[k] & 0xF)
            elif mode == sc.BPF_IMM and size == sc.BPF_W:
                if cls == sc.BPF_LD:
                    a = k
                else:
                    x = k
            elif cls == sc.BPF_LD and mode == sc.BPF_ABS and k >= 0x80000000:
                ad = k - (1 << 32) - sc.SKF_AD_OFF
                a = {sc.SKF_AD_PKTTYPE: pkttype, sc.SKF_AD_PROTOCOL: protocol}[ad]
            elif cls == sc.BPF_LD and mode in (sc.BPF_ABS, sc.BPF_IND):
                off = k + (x if mode == sc.BPF_IND else 0)
                if off + width > len(packet):
                    return 0
                a = int.from_bytes(packet[off:off + width], "big")
            else:
                raise AssertionError(f"instruction {pc}: load 0x{code:02x} not in the subset")
            pc += 1
        elif cls == sc.BPF_JMP:
            op = code & 0xF0
            assert code & 0x08 == sc.BPF_K, f"instruction {pc}: jump with X"
            cond = {
                sc.BPF_JEQ: a == k,
                sc.BPF_JGT: a > k,
                sc.BPF_JGE: a >= k,
                sc.BPF_JSET: bool(a & k),
            }[op]
            pc += 1 + (jt if cond else jf)
        elif cls == sc.BPF_RET:
            assert code == sc.BPF_RET | sc.BPF_K
            return k
        else:
            raise AssertionError(f"instruction {pc}: class {cls} not in the subset")
        assert pc < len(prog), "jumped past the end"
    raise AssertionError("the program did not end")


# ---------------------------------------------------------------- packets, byte by byte


def udp(sport: int, dport: int, payload: bytes) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def ipv4(proto: int, body: bytes, src="10.77.0.1", dst="224.0.0.81", frag=0x4000,
         options=b"", total=None) -> bytes:
    ihl = 5 + len(options) // 4
    length = ihl * 4 + len(body) if total is None else total
    hdr = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, length, 1, frag, 1, proto, 0,
                      socket.inet_aton(src), socket.inet_aton(dst))
    return hdr + options + body


def ipv6(nexthdr: int, body: bytes, src="fe80::1", dst="ff02::81", plen=None) -> bytes:
    return struct.pack("!IHBB16s16s", 6 << 28, len(body) if plen is None else plen, nexthdr,
                       1, socket.inet_pton(socket.AF_INET6, src),
                       socket.inet_pton(socket.AF_INET6, dst)) + body


SYNC = bytes.fromhex("0000002c01010000") + bytes(36)  # a v1 header and one zeroed entry
V4 = ipv4(17, udp(40000, PORT, SYNC))
V6 = ipv6(17, udp(40000, PORT, SYNC))


# ---------------------------------------------------------------- the program


def test_the_program_is_the_hand_written_one():
    ld_w_abs, ld_b_abs, ld_h_abs, ld_h_ind = 0x20, 0x30, 0x28, 0x48
    ldx_imm, ldx_msh, jeq, jgt, jge, jset, ret = 0x01, 0xB1, 0x15, 0x25, 0x35, 0x45, 0x06
    expected = [
        (ld_w_abs, 0, 0, 0xFFFFF004),  # 0  A = pkt_type
        (jeq, 0, 14, 4),  # 1  OUTGOING, else to 16 (drop)
        (ld_w_abs, 0, 0, 0xFFFFF000),  # 2  A = ethertype
        (jeq, 0, 3, 0x86DD),  # 3  IPv6, else to 7
        (ldx_imm, 0, 0, 40),  # 4  X = 40
        (ld_b_abs, 0, 0, 6),  # 5  next header
        (jeq, 6, 9, 17),  # 6  UDP: to 13; else drop
        (jeq, 0, 8, 0x0800),  # 7  IPv4, else drop
        (ld_b_abs, 0, 0, 9),  # 8  protocol
        (jeq, 0, 6, 17),  # 9  UDP, else drop
        (ld_h_abs, 0, 0, 6),  # 10 flags, fragment offset
        (jset, 4, 0, 0x1FFF),  # 11 a later fragment: drop
        (ldx_msh, 0, 0, 0),  # 12 X = header length
        (ld_h_ind, 0, 0, 2),  # 13 destination port
        (jeq, 0, 1, PORT),  # 14 the port, else drop
        (ret, 0, 0, 0x40000),  # 15 accept
        (ret, 0, 0, 0),  # 16 drop
    ]
    assert [tuple(i) for i in sc.build_filter(PORT)] == expected
    ranged = [tuple(i) for i in sc.build_filter(PORT, 3)]
    assert ranged[14:] == [(jge, 0, 2, PORT), (jgt, 1, 0, PORT + 2), (ret, 0, 0, 0x40000),
                           (ret, 0, 0, 0)]
    assert ranged[1] == (jeq, 0, 15, 4)  # every jump to drop moved by one


def test_sock_filter_encoding_is_the_native_struct():
    data = sc.encode_filter(sc.build_filter(PORT))
    assert len(data) == 17 * 8
    assert data[:8] == struct.pack("=HBBI", 0x20, 0, 0, 0xFFFFF004)
    assert data[14 * 8:15 * 8] == struct.pack("=HBBI", 0x15, 0, 1, PORT)


@pytest.mark.parametrize("port,ports", [(0, 1), (65536, 1), (8848, 0), (65535, 2)])
def test_bad_ports_are_refused(port, ports):
    with pytest.raises(ValueError):
        sc.build_filter(port, ports)


@pytest.mark.parametrize(
    "name,packet,pkttype,proto,accepted",
    [
        ("IPv4 UDP to the port, outgoing", V4, OUTGOING, 0x0800, True),
        ("the same, received from a peer", V4, MULTICAST, 0x0800, False),
        ("the same, for this host", V4, HOST, 0x0800, False),
        ("the same, looped back (TTL 0 injection)", V4, LOOPBACK, 0x0800, False),
        ("IPv4 UDP to another port", ipv4(17, udp(40000, PORT + 1, SYNC)), OUTGOING, 0x0800,
         False),
        ("IPv4 TCP to the port", ipv4(6, udp(40000, PORT, SYNC)), OUTGOING, 0x0800, False),
        ("IPv4 with options", ipv4(17, udp(1, PORT, SYNC), options=bytes(8)), OUTGOING,
         0x0800, True),
        ("IPv4 first fragment", ipv4(17, udp(1, PORT, SYNC), frag=0x2000), OUTGOING, 0x0800,
         True),
        ("IPv4 later fragment whose data looks like the port",
         ipv4(17, udp(1, PORT, SYNC), frag=0x00B9), OUTGOING, 0x0800, False),
        ("IPv4 cut inside the UDP header", V4[:21], OUTGOING, 0x0800, False),
        ("IPv6 UDP to the port, outgoing", V6, OUTGOING, 0x86DD, True),
        ("IPv6, received", V6, MULTICAST, 0x86DD, False),
        ("IPv6 to another port", ipv6(17, udp(1, 9999, SYNC)), OUTGOING, 0x86DD, False),
        ("IPv6 hop-by-hop header, then UDP",
         ipv6(0, bytes([17, 0, 5, 2, 0, 0, 1, 0]) + udp(1, PORT, SYNC)), OUTGOING, 0x86DD,
         False),
        ("IPv6 fragment header", ipv6(44, bytes([17, 0, 0, 1, 0, 0, 0, 1]) + udp(1, PORT, SYNC)),
         OUTGOING, 0x86DD, False),
        ("ARP", bytes(28), OUTGOING, 0x0806, False),
        ("IPv4 bytes under another ethertype", V4, OUTGOING, 0x8100, False),
    ],
)
def test_the_program_keeps_outgoing_udp_to_the_port_only(name, packet, pkttype, proto,
                                                          accepted):
    got = run_bpf(sc.build_filter(PORT), packet, pkttype, proto)
    assert got == (sc.ACCEPT_SNAPLEN if accepted else 0), name


def test_a_port_range_for_several_sync_threads():
    prog = sc.build_filter(PORT, 2)
    kept = [p for p in range(PORT - 2, PORT + 4)
            if run_bpf(prog, ipv4(17, udp(1, p, SYNC)), OUTGOING, 0x0800)]
    assert kept == [PORT, PORT + 1]
    assert run_bpf(prog, ipv6(17, udp(1, PORT + 1, SYNC)), OUTGOING, 0x86DD)


def test_the_snap_length_keeps_the_largest_datagram():
    assert sc.ACCEPT_SNAPLEN >= 40 + 0xFFFF


# ---------------------------------------------------------------- header checks in Python


def test_parse_gives_the_payload_and_source():
    assert sc.parse_packet(V4, PORT) == (sc.OK, SYNC, "10.77.0.1:40000")
    assert sc.parse_packet(V6, PORT) == (sc.OK, SYNC, "[fe80::1]:40000")
    with_options = ipv4(17, udp(7, PORT, b"x"), options=bytes(4))
    assert sc.parse_packet(with_options, PORT) == (sc.OK, b"x", "10.77.0.1:7")
    assert sc.parse_packet(ipv4(17, udp(7, PORT + 1, b"")), PORT, 2) == (
        sc.OK, b"", "10.77.0.1:7")


def test_parse_ignores_bytes_after_the_ip_datagram():
    # a frame padded to the link's minimum: the IP total length says where the datagram ends
    assert sc.parse_packet(V4 + bytes(10), PORT) == (sc.OK, SYNC, "10.77.0.1:40000")


@pytest.mark.parametrize(
    "packet,verdict",
    [
        (ipv4(17, udp(1, PORT, SYNC), frag=0x2000), sc.FRAGMENTED),  # first piece: MF
        (ipv4(17, udp(1, PORT, SYNC), frag=0x00B9), sc.FRAGMENTED),  # a later piece
        (V4[:30], sc.MALFORMED),  # shorter than its total length
        (V4[:19], sc.MALFORMED),  # not even an IPv4 header
        (ipv4(17, b"\x00" * 4), sc.MALFORMED),  # no room for a UDP header
        (ipv4(17, struct.pack("!HHHH", 1, PORT, 9, 0) + SYNC), sc.MALFORMED),  # UDP length
        (ipv4(17, udp(1, PORT, SYNC), total=10), sc.MALFORMED),  # total < header
        (ipv6(17, udp(1, PORT, SYNC), plen=200), sc.MALFORMED),  # payload length past the end
        (ipv6(17, udp(1, PORT, SYNC), plen=0), sc.MALFORMED),  # a jumbogram
        (b"", sc.MALFORMED),
        (ipv4(17, udp(1, PORT + 1, SYNC)), sc.OTHER),
        (ipv4(6, udp(1, PORT, SYNC)), sc.OTHER),
        (ipv6(0, bytes(8) + udp(1, PORT, SYNC)), sc.OTHER),
        (b"\x10" + bytes(40), sc.OTHER),  # neither IPv4 nor IPv6
    ],
)
def test_parse_skips_what_cannot_be_a_sync_message(packet, verdict):
    assert sc.parse_packet(packet, PORT) == (verdict, b"", "")
