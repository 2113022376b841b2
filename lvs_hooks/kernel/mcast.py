"""Multicast UDP sockets bound to one interface: every socket lvs-hooks opens on the sync group
(the reseed's and the push's senders, the push listener, the control channel) is set up here.

Receiving: SO_REUSEADDR (the kernel's backup daemon has its socket on the same group and port,
with the same option), bound to the group and port, joined on the interface, and delivery of
groups joined by other sockets turned off. Sending: out of the interface (a message from this
host reaches its own backup daemon only that way, with loop on), with a TTL.

Failures are OSError whose strerror names the step ("bind: Address already in use"), for the
caller to wrap in its own error type.
"""

import contextlib
import socket
import struct
from typing import Iterator

# Linux values, missing from the socket module of some Python versions.
IP_MULTICAST_ALL = getattr(socket, "IP_MULTICAST_ALL", 49)
IPV6_MULTICAST_ALL = getattr(socket, "IPV6_MULTICAST_ALL", 29)


@contextlib.contextmanager
def _step(name: str) -> Iterator[None]:
    try:
        yield
    except OSError as e:
        raise OSError(e.errno, f"{name}: {e.strerror or e}") from e


def _mreqn(group: str, ifindex: int) -> bytes:
    # struct ip_mreqn {imr_multiaddr, imr_address, imr_ifindex}: picks the interface by index
    return struct.pack("=4s4si", socket.inet_aton(group), bytes(4), ifindex)


def set_sending(sock: socket.socket, ipv6: bool, group: str, ifindex: int, ttl: int, loop: bool):
    """Datagrams to the group leave by `ifindex`, with TTL `ttl`, looped back to this host's
    own sockets if `loop`."""
    if ipv6:
        with _step("IPV6_MULTICAST_IF"):
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, ifindex)
        with _step("IPV6_MULTICAST_HOPS"):
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, ttl)
        with _step("IPV6_MULTICAST_LOOP"):
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, int(loop))
    else:
        with _step("IP_MULTICAST_IF"):
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, _mreqn(group, ifindex))
        with _step("IP_MULTICAST_TTL"):
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, ttl)
        with _step("IP_MULTICAST_LOOP"):
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, int(loop))


def join(sock: socket.socket, ipv6: bool, group: str, port: int, ifindex: int) -> None:
    """Receive the group's datagrams to `port` that arrive by `ifindex`, beside other sockets
    on the same group and port."""
    with _step("SO_REUSEADDR"):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if ipv6:
        with _step("bind"):
            # the scope id is needed for a link-scope group (ff02::/16), ignored otherwise
            sock.bind((group, port, 0, ifindex))
        with _step("IPV6_JOIN_GROUP"):
            mreq = socket.inet_pton(socket.AF_INET6, group) + struct.pack("=I", ifindex)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)
        level, option = socket.IPPROTO_IPV6, IPV6_MULTICAST_ALL
    else:
        with _step("bind"):
            sock.bind((group, port))
        with _step("IP_ADD_MEMBERSHIP"):
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, _mreqn(group, ifindex))
        level, option = socket.IPPROTO_IP, IP_MULTICAST_ALL
    # Best effort (IPV6_MULTICAST_ALL needs Linux 4.20): the bind to the group already keeps
    # out everything but the group and port.
    with contextlib.suppress(OSError):
        sock.setsockopt(level, option, 0)


def udp_socket(ipv6: bool) -> socket.socket:
    with _step("socket"):
        return socket.socket(
            socket.AF_INET6 if ipv6 else socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP
        )
