"""Issue 17: an IPv6 service's persistence netmask as the kernel sends it, and IPv6 addresses as
an operator reads them. GET_SERVICE replies are built byte by byte as ip_vs_genl_fill_service
(net/netfilter/ipvs/ip_vs_ctl.c) lays them out, then decoded with pyroute2's classes."""

import socket
import struct

import pytest

from lvs_hooks.director.keeper import clients_in_use
from lvs_hooks.kernel import netlink as n
from lvs_hooks.kernel.model import Destination, Service, host_port, template_client
from lvs_hooks.status import render_status, summarize

NLA_F_NESTED = 0x8000


def attr(t: int, payload: bytes) -> bytes:
    ln = 4 + len(payload)
    return struct.pack("=HH", ln, t) + payload + bytes(-ln & 3)


def kernel_service(addr: str, port: int, netmask: bytes, fwmark: int = 0) -> bytes:
    """A GET_SERVICE reply as ip_vs_genl_fill_service writes it: the family with nla_put_u16,
    the address as a 16-byte union nf_inet_addr, the port with nla_put_be16, the flags as
    struct ip_vs_flags, the timeout with nla_put_u32 and svc->netmask, a __be32, as it is."""
    af = socket.AF_INET6 if ":" in addr else socket.AF_INET
    parts = [attr(1, struct.pack("=H", af))]  # AF
    if fwmark:
        parts.append(attr(5, struct.pack("=I", fwmark)))  # FWMARK
    else:
        parts += [
            attr(2, struct.pack("=H", 17)),  # PROTOCOL: UDP
            attr(3, socket.inet_pton(af, addr).ljust(16, b"\0")),  # ADDR
            attr(4, struct.pack("!H", port)),  # PORT
        ]
    parts += [
        attr(6, b"wrr\0"),  # SCHED_NAME
        attr(7, struct.pack("=II", 1, 0xFFFFFFFF)),  # FLAGS: IP_VS_SVC_F_PERSISTENT
        attr(8, struct.pack("=I", 360)),  # TIMEOUT
        attr(9, netmask),  # NETMASK
    ]
    body = struct.pack("=BBH", 1, 1, 0)  # genlmsghdr: IPVS_CMD_NEW_SERVICE, version 1
    body += attr(1 | NLA_F_NESTED, b"".join(parts))  # IPVS_CMD_ATTR_SERVICE
    return struct.pack("=IHHII", 16 + len(body), 0x20, 2, 1, 0) + body


def decode(data: bytes) -> Service:
    msg = n.ipvs_cmd_msg(data)
    msg.decode()
    return n.decode_service(msg)


# The prefix length as ipvsadm and keepalived put it (NLA_PUT_U32: host order), which the
# kernel checks and uses as (__force __u32) svc->netmask.
def plen(v: int) -> bytes:
    return struct.pack("=I", v)


@pytest.mark.parametrize("prefix", [128, 64, 1])
def test_an_ipv6_prefix_length_is_read_in_host_order(prefix):
    svc = decode(kernel_service("fd00::29", 5000, plen(prefix)))
    assert (svc.af, svc.addr, svc.port, svc.netmask) == (6, "fd00::29", 5000, str(prefix))
    assert (svc.persistent, svc.timeout, svc.scheduler) == (True, 360, "wrr")


def test_an_ipv4_mask_is_read_in_network_order():
    svc = decode(kernel_service("10.0.0.100", 5000, socket.inet_aton("255.255.255.0")))
    assert (svc.af, svc.netmask) == (4, "255.255.255.0")


def test_an_ipv6_fwmark_service_has_its_prefix_length_too():
    svc = decode(kernel_service("::", 0, plen(120), fwmark=7))
    assert (svc.key(), svc.netmask) == (("fwmark", 6, 7), "120")


def test_the_value_of_issue_17_is_128_not_2147483648():
    # pyroute2 gives the 4 bytes as a dotted IPv4 address: 80 00 00 00 on a little-endian host
    assert n.decode_netmask(6, socket.inet_ntoa(plen(128))) == "128"
    assert n.decode_netmask(4, "255.255.255.255") == "255.255.255.255"
    assert n.decode_netmask(6, "") == ""


def test_a_prefix_length_the_kernel_refuses_is_taken_as_128(caplog):
    assert n.decode_netmask(6, socket.inet_ntoa(plen(0))) == "128"
    assert n.decode_netmask(6, socket.inet_ntoa(plen(129))) == "128"
    assert "prefix length of 129" in caplog.text


def test_the_keeper_keys_ipv6_clients_by_the_decoded_prefix():
    svc = decode(kernel_service("fd00::29", 5000, plen(128)))
    counts = {("fd00:2::21", ("UDP", "fd00::29", 5000)): 1}
    assert clients_in_use(counts, [svc]) == {("fd00:2::21", ("UDP", "fd00::29", 5000))}
    wide = decode(kernel_service("fd00::29", 5000, plen(112)))
    assert clients_in_use(counts, [wide]) == {("fd00:2::", ("UDP", "fd00::29", 5000))}


@pytest.mark.parametrize(
    "addr,netmask,want",
    [
        ("fd00:2::1:21", "128", "fd00:2::1:21"),
        ("fd00:2::1:21", "112", "fd00:2::1:0"),
        ("fd00:2::1:21", "0", "::"),
        ("10.0.7.33", "255.255.255.0", "10.0.7.0"),
        ("10.0.7.33", "255.255.255.255", "10.0.7.33"),
        # another family's netmask (a fwmark connection matched by family elsewhere): as it is
        ("10.0.7.33", "112", "10.0.7.33"),
        ("fd00:2::1:21", "255.255.255.0", "fd00:2::1:21"),
        ("fd00:2::1:21", "", "fd00:2::1:21"),
    ],
)
def test_template_client(addr, netmask, want):
    assert template_client(addr, netmask) == want


def test_addresses_with_ports_bracket_ipv6():
    assert host_port("10.1.0.12", 5000) == "10.1.0.12:5000"
    assert host_port("fd00:1::12", 5000) == "[fd00:1::12]:5000"


def test_status_brackets_ipv6_real_servers():
    svc = Service(6, "UDP", "fd00::29", 5000, persistent=True, timeout=360, netmask="128",
                  destinations=(Destination("fd00:1::12", 5000), Destination("fd00:1::11", 0)))
    text = render_status(summarize([svc], [], [], None, None))
    assert "UDP [fd00::29]:5000  persistent 360 s" in text
    assert "  -> [fd00:1::12]:5000 masq w1" in text
    assert "  -> [fd00:1::11]:0 masq w1" in text
    assert "fd00:1::12:5000" not in text
