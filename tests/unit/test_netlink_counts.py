"""Per-real-server counters from IPVS netlink (ACTIVE_CONNS, INACT_CONNS, PERSIST_CONNS), without
a kernel: messages built with pyroute2's own classes and, byte by byte, as ip_vs_genl_fill_dest
lays them out; IPVS.dest_counts() over a fake socket that records the requests."""

import socket
import struct

import pytest

from lvs_hooks.kernel import netlink as n
from lvs_hooks.kernel.model import Destination

SVC_KEY = ("TCP", "10.0.0.1", 80)
NLA_F_NESTED = 0x8000


def dest_msg(addr="10.1.0.1", port=8080, active=3, inactive=5, persistent=7, counters=True):
    """A GET_DEST reply built with pyroute2's classes (the counters are its dest nla's own)."""
    af = socket.AF_INET6 if ":" in addr else socket.AF_INET
    attrs = [
        ("IPVS_DEST_ATTR_ADDR_FAMILY", af),
        ("IPVS_DEST_ATTR_ADDR", addr),
        ("IPVS_DEST_ATTR_PORT", port),
        ("IPVS_DEST_ATTR_FWD_METHOD", 0),
        ("IPVS_DEST_ATTR_WEIGHT", 1),
    ]
    if counters:
        attrs += [
            ("IPVS_DEST_ATTR_ACTIVE_CONNS", active),
            ("IPVS_DEST_ATTR_INACT_CONNS", inactive),
            ("IPVS_DEST_ATTR_PERSIST_CONNS", persistent),
        ]
    return n._msg(n.IPVS_CMD_GET_DEST, [("IPVS_CMD_ATTR_DEST", {"attrs": attrs})])


def svc_msg(addr="10.0.0.1", port=80, fwmark=0, af=socket.AF_INET):
    attrs = [("IPVS_SVC_ATTR_AF", af), ("IPVS_SVC_ATTR_SCHED_NAME", "wlc"),
             ("IPVS_SVC_ATTR_FLAGS", {"flags": 1, "mask": 0xFFFFFFFF}),
             ("IPVS_SVC_ATTR_TIMEOUT", 300)]
    if fwmark:
        attrs.append(("IPVS_SVC_ATTR_FWMARK", fwmark))
    else:
        attrs += [("IPVS_SVC_ATTR_PROTOCOL", 6), ("IPVS_SVC_ATTR_ADDR", addr),
                  ("IPVS_SVC_ATTR_PORT", port)]
    return n._msg(n.IPVS_CMD_GET_SERVICE, [("IPVS_CMD_ATTR_SERVICE", {"attrs": attrs})])


def wire(msg) -> bytes:
    msg["header"]["type"] = 0x20  # any family id
    msg.encode()
    return msg.data


def decoded(data: bytes):
    back = n.ipvs_cmd_msg(data)
    back.decode()
    return back


def nested(data: bytes, nested_type: int) -> dict:
    """Raw payloads of the attributes inside one nest of a genl message (20 bytes of headers)."""
    out, off = {}, 20
    while off < len(data):
        ln, typ = struct.unpack_from("=HH", data, off)
        if typ & 0x3FFF == nested_type:
            inner = off + 4
            while inner < off + ln:
                iln, ityp = struct.unpack_from("=HH", data, inner)
                out[ityp & 0x3FFF] = data[inner + 4:inner + iln]
                inner += (iln + 3) & ~3
        off += (ln + 3) & ~3
    return out


def kernel_dest(addr: str, port: int, active: int, inactive: int, persistent: int) -> bytes:
    """A GET_DEST reply as ip_vs_genl_fill_dest writes it (net/netfilter/ipvs/ip_vs_ctl.c):
    a nest flagged NLA_F_NESTED, the address as a 16-byte union nf_inet_addr, the port with
    nla_put_be16, the counters with nla_put_u32, the family with nla_put_u16."""
    af = socket.AF_INET6 if ":" in addr else socket.AF_INET

    def attr(t: int, payload: bytes) -> bytes:
        ln = 4 + len(payload)
        return struct.pack("=HH", ln, t) + payload + bytes(-ln & 3)

    def u32(v: int) -> bytes:
        return struct.pack("=I", v)

    inner = b"".join([
        attr(1, socket.inet_pton(af, addr).ljust(16, b"\0")),  # ADDR
        attr(2, struct.pack("!H", port)),  # PORT
        attr(3, u32(3)),  # FWD_METHOD: droute
        attr(4, u32(100)),  # WEIGHT
        attr(5, u32(0)),  # U_THRESH
        attr(6, u32(0)),  # L_THRESH
        attr(7, u32(active)),  # ACTIVE_CONNS
        attr(8, u32(inactive)),  # INACT_CONNS
        attr(9, u32(persistent)),  # PERSIST_CONNS
        attr(11, struct.pack("=H", af)),  # ADDR_FAMILY
    ])
    body = struct.pack("=BBH", 5, 1, 0)  # genlmsghdr: IPVS_CMD_NEW_DEST, version 1
    body += attr(2 | NLA_F_NESTED, inner)  # IPVS_CMD_ATTR_DEST
    return struct.pack("=IHHII", 16 + len(body), 0x20, 2, 1, 0) + body


# ------------------------------------------------------------------------------ decoding


def test_the_counters_are_attributes_7_8_9_as_u32_in_host_order():
    data = wire(dest_msg(active=3, inactive=5, persistent=70000))
    attrs = nested(data, 2)  # IPVS_CMD_ATTR_DEST
    assert attrs[7] == struct.pack("=I", 3)
    assert attrs[8] == struct.pack("=I", 5)
    assert attrs[9] == struct.pack("=I", 70000)


def test_decode_a_message_built_with_pyroute2():
    msg = decoded(wire(dest_msg(active=3, inactive=5, persistent=7)))
    assert n.decode_dest_counts(msg, SVC_KEY) == n.DestCounts(SVC_KEY, "10.1.0.1", 8080, 3, 5, 7)


@pytest.mark.parametrize(
    "addr,port,counts",
    [("10.1.0.1", 8080, (0, 12, 40000)), ("2001:db8::5", 0, (1, 2, 4_000_000_000))],
)
def test_decode_the_kernels_layout(addr, port, counts):
    msg = decoded(kernel_dest(addr, port, *counts))
    assert n.decode_dest_counts(msg, SVC_KEY) == n.DestCounts(SVC_KEY, addr, port, *counts)
    # the Destination decoded from the same message knows nothing of them
    assert n.decode_dest(msg) == Destination(addr, port, "droute", 100)


def test_a_destination_without_counters_counts_zero():
    msg = decoded(wire(dest_msg(counters=False)))
    assert n.decode_dest_counts(msg, SVC_KEY) == n.DestCounts(SVC_KEY, "10.1.0.1", 8080, 0, 0, 0)


def test_counters_do_not_touch_destination_equality():
    busy = decoded(wire(dest_msg(active=900, inactive=50, persistent=1000)))
    idle = decoded(wire(dest_msg(active=0, inactive=0, persistent=0)))
    assert n.decode_dest(busy) == n.decode_dest(idle)
    assert n.decode_dest_counts(busy, SVC_KEY) != n.decode_dest_counts(idle, SVC_KEY)


# ------------------------------------------------------------------------------ the request


class FakeSock:
    """Answers GET_SERVICE with `services` and GET_DEST with the real servers of the service
    the request names; records every request."""

    prid = 0x20

    def __init__(self, services):
        self.services = services  # [(service message, [dest messages])]
        self.requests = []

    def nlm_request(self, msg, msg_type, msg_flags):
        assert msg_type == self.prid
        cmd = msg["cmd"]
        self.requests.append(cmd)
        if cmd == n.IPVS_CMD_GET_SERVICE:
            return [decoded(wire(s)) for s, _ in self.services]
        assert cmd == n.IPVS_CMD_GET_DEST
        asked = dict(decoded(wire(msg)).get_attr("IPVS_CMD_ATTR_SERVICE")["attrs"])
        for s, dests in self.services:
            have = dict(decoded(wire(s)).get_attr("IPVS_CMD_ATTR_SERVICE")["attrs"])
            if all(have.get(k) == v for k, v in asked.items()):
                return [decoded(wire(d)) for d in dests]
        return []


def fake_ipvs(services) -> n.IPVS:
    ipvs = object.__new__(n.IPVS)  # no netlink socket: the fake answers
    ipvs._sock = FakeSock(services)
    return ipvs


def test_dest_counts_of_every_service_in_one_pass():
    ipvs = fake_ipvs([
        (svc_msg("10.0.0.1", 80), [dest_msg("10.1.0.1", 8080, 1, 2, 30),
                                   dest_msg("10.1.0.2", 8080, 0, 0, 12)]),
        (svc_msg(fwmark=7), [dest_msg("10.1.0.1", 0, 4, 0, 5)]),
        (svc_msg(fwmark=8, af=socket.AF_INET6), [dest_msg("2001:db8::1", 443, 0, 1, 2)]),
        (svc_msg("10.0.0.2", 443), []),
    ])
    assert ipvs.dest_counts() == [
        n.DestCounts(("TCP", "10.0.0.1", 80), "10.1.0.1", 8080, 1, 2, 30),
        n.DestCounts(("TCP", "10.0.0.1", 80), "10.1.0.2", 8080, 0, 0, 12),
        n.DestCounts(("fwmark", 4, 7), "10.1.0.1", 0, 4, 0, 5),
        n.DestCounts(("fwmark", 6, 8), "2001:db8::1", 443, 0, 1, 2),
    ]
    # one dump of the services, one of the real servers per service: what services() asks
    counts_requests = list(ipvs._sock.requests)
    assert counts_requests == [n.IPVS_CMD_GET_SERVICE] + [n.IPVS_CMD_GET_DEST] * 4
    ipvs._sock.requests.clear()
    services = ipvs.services()
    assert ipvs._sock.requests == counts_requests
    assert [len(s.destinations) for s in services] == [2, 1, 1, 0]
