"""Sending sync datagrams to the kernel's backup sync daemon, paced on its receive queue.

The backup daemon's socket is bound to the sync group and port on the sync interface and
accepts multicast only. A datagram sent from this host reaches it only when it leaves through
the sync interface (IP_MULTICAST_IF) with IP_MULTICAST_LOOP on. With TTL 0 the looped copy is
the only one: nothing reaches the wire (design.md section 3.4, checked in the lab).

The kernel drops whole datagrams when that socket's receive buffer is full, silently (only
RcvbufErrors counts them), so the sender watches the socket's rx_queue in /proc/net/udp and
waits while it is above a limit instead of sleeping for fixed times.
"""

import ipaddress
import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import Iterable, List, Optional, Set

from lvs_hooks import safeio
from lvs_hooks.errors import KernelError
from lvs_hooks.kernel import mcast

# /proc/net/udp: 128 bytes a socket; this is half a million sockets.
MAX_PROC_UDP = 64 << 20

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UdpSocketState:
    """One line of /proc/net/udp(6) for a socket bound to the sync port."""

    local: str
    rx_queue: int
    drops: int
    inode: int = 0


def parse_proc_udp(data: bytes, port: int) -> List[UdpSocketState]:
    """Sockets bound to `port` in a /proc/net/udp or /proc/net/udp6 text.

    Line: `sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout
    inode ref pointer drops`; addresses are hex in host byte order, ports hex.
    """
    want = f":{port:04X}".encode()
    result = []
    for line in data.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 13 or not fields[1].endswith(want):
            continue
        try:
            rx = int(fields[4].split(b":")[1], 16)
            drops = int(fields[12])
            inode = int(fields[9])
        except (IndexError, ValueError):
            continue
        result.append(UdpSocketState(fields[1].decode(), rx, drops, inode))
    return result


def own_socket_inodes(fd_dir: str = "/proc/self/fd") -> Set[int]:
    """Inodes of the sockets this process holds (readlink gives "socket:[INODE]")."""
    inodes: Set[int] = set()
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return inodes
    for name in names:
        try:
            target = os.readlink(os.path.join(fd_dir, name))
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


class SyncQueueProbe:
    """Reads the receive queue of the sockets bound to the sync port (the backup daemon's).

    Sockets of this process on that port are not the receiver: the agent's own listener on the
    sync group (push.collector) queues what it has not read yet while the agent injects, and
    waiting for it to drain would wait for ourselves."""

    def __init__(self, proc_root: str, port: int, ipv6: bool = False):
        self.path = os.path.join(proc_root, "net", "udp6" if ipv6 else "udp")
        self.port = port

    def sockets(self) -> List[UdpSocketState]:
        try:
            found = parse_proc_udp(safeio.read_proc(self.path, MAX_PROC_UDP), self.port)
        except OSError as e:
            raise KernelError(f"cannot read {self.path}: {e.strerror}") from e
        own = own_socket_inodes()
        return [s for s in found if s.inode not in own]

    def rx_queue(self) -> int:
        """Bytes queued on the fullest socket bound to the sync port (0 if none)."""
        return max((s.rx_queue for s in self.sockets()), default=0)

    def drops(self) -> int:
        return sum(s.drops for s in self.sockets())


class SyncSender:
    """A UDP socket that sends sync datagrams to the group through one interface."""

    def __init__(self, ifname: str, group: str, port: int, ttl: int, loop: bool = True):
        self.group, self.port = group, port
        self.ipv6 = ipaddress.ip_address(group).version == 6
        try:
            ifindex = socket.if_nametoindex(ifname)
        except OSError as e:
            raise KernelError(f"sync interface {ifname!r} does not exist") from e
        self.sock = mcast.udp_socket(self.ipv6)
        try:
            mcast.set_sending(self.sock, self.ipv6, group, ifindex, ttl, loop)
        except OSError:
            self.sock.close()
            raise

    def send(self, datagram: bytes) -> None:
        self.sock.sendto(datagram, (self.group, self.port))

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "SyncSender":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class SendStats:
    datagrams: int = 0
    bytes: int = 0
    waits: int = 0  # times the sender waited for the receiver's queue to drain
    wait_ms: float = 0.0


def send_paced(
    sender: SyncSender,
    datagrams: Iterable[bytes],
    probe: Optional[SyncQueueProbe],
    queue_limit: int,
    stall_timeout: float = 5.0,
) -> SendStats:
    """Send every datagram, waiting while the receiver's queue holds more than queue_limit bytes.

    A queue that does not drain within stall_timeout means nobody is reading it (no backup
    daemon): that is an error, not something to wait out.
    """
    stats = SendStats()
    for dgram in datagrams:
        if probe is not None and probe.rx_queue() > queue_limit:
            t0 = time.monotonic()
            stats.waits += 1
            delay = 0.0002
            while probe.rx_queue() > queue_limit:
                if time.monotonic() - t0 > stall_timeout:
                    raise KernelError(
                        f"the backup sync daemon's queue did not drain in {stall_timeout:.0f} s"
                    )
                time.sleep(delay)
                delay = min(delay * 2, 0.01)
            stats.wait_ms += (time.monotonic() - t0) * 1000
        sender.send(dgram)
        stats.datagrams += 1
        stats.bytes += len(dgram)
    return stats


def wait_drained(probe: SyncQueueProbe, timeout: float) -> bool:
    """Wait until the receiver has taken everything queued (True) or the timeout passed."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        if probe.rx_queue() == 0:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
