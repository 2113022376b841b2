"""Sending sync datagrams to the kernel's backup sync daemon, paced on its receive queue.

The backup daemon's socket is bound to the sync group and port on the sync interface and
accepts multicast only. A datagram sent from this host reaches it only when it leaves through
the sync interface (IP_MULTICAST_IF) with IP_MULTICAST_LOOP on. With TTL 0 the looped copy is
the only one: nothing reaches the wire (design.md section 3.4, checked in the lab).

The kernel drops whole datagrams when that socket's receive buffer is full, silently (only
RcvbufErrors counts them), so the sender watches the socket's rx_queue in /proc/net/udp and
waits while it is above a limit instead of sleeping for fixed times.

A looped copy is not in the daemon's queue when sendto() returns: it goes through the receive
path later (netif_rx's per-CPU backlog, then the NET_RX softirq). An empty queue right after a
send can mean "not arrived yet", and a daemon stopped then loses what was on its way (lab, a
host with one core kept busy: a keeper renewal of 20 templates never reached the kernel, and the
table in memory believed it had). So the sender also listens on the group itself
(`LoopedCopies`): the kernel hands one looped datagram to every socket bound to the group and
port in the same pass (__udp4_lib_mcast_deliver, __udp6_lib_mcast_deliver), so once the
sender's own socket has every copy, the daemon's queue has had them too; `settle` then waits
for that queue to be empty: taken.
"""

import ipaddress
import logging
import os
import select
import socket
import time
from collections import Counter
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


class LoopedCopies:
    """A socket of the sender's own on the group and port, counting the looped copies of what
    the sender sent until each has come back (see the module's docstring).

    Every copy is counted, not only the last: sends from one socket may be queued on more than
    one CPU's backlog, and come back out of order. The socket is drained at every send, so its
    queue never holds more than what arrived between two sends."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.outstanding: Counter = Counter()  # datagram -> copies not back yet

    def sent(self, datagram: bytes) -> None:
        self.outstanding[datagram] += 1
        self._drain()

    def wait(self, timeout: float) -> bool:
        """True once every copy sent is back, False when `timeout` seconds pass first."""
        deadline = time.monotonic() + timeout
        self._drain()
        while self.outstanding:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            select.select([self.sock], [], [], left)
            self._drain()
        return True

    def _drain(self) -> None:
        out = self.outstanding
        while True:
            try:
                data = self.sock.recv(0xFFFF, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            n = out.get(data)
            if n is None:
                continue  # another sender's datagram on the group (a master's)
            if n > 1:
                out[data] = n - 1
            else:
                del out[data]

    def close(self) -> None:
        self.sock.close()


class SyncSender:
    """A UDP socket that sends sync datagrams to the group through one interface; with `loop`,
    it counts the copies looped back to this host (`copies`, for `settle`)."""

    def __init__(self, ifname: str, group: str, port: int, ttl: int, loop: bool = True):
        self.group, self.port = group, port
        self.ipv6 = ipaddress.ip_address(group).version == 6
        try:
            ifindex = socket.if_nametoindex(ifname)
        except OSError as e:
            raise KernelError(f"sync interface {ifname!r} does not exist") from e
        self.sock = mcast.udp_socket(self.ipv6)
        self.copies: Optional[LoopedCopies] = None
        try:
            mcast.set_sending(self.sock, self.ipv6, group, ifindex, ttl, loop)
            if loop:
                own = mcast.udp_socket(self.ipv6)
                try:
                    mcast.join(own, self.ipv6, group, port, ifindex)
                except OSError:
                    own.close()
                    raise
                self.copies = LoopedCopies(own)
        except OSError:
            self.sock.close()
            raise

    def send(self, datagram: bytes) -> None:
        self.sock.sendto(datagram, (self.group, self.port))
        if self.copies is not None:
            self.copies.sent(datagram)

    def close(self) -> None:
        self.sock.close()
        if self.copies is not None:
            self.copies.close()

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


def settle(sender: SyncSender, probe: SyncQueueProbe, timeout: float) -> bool:
    """Wait until the receiver has taken everything `sender` sent (True) or `timeout` passed:
    every looped copy delivered, then the receiver's queue empty."""
    deadline = time.monotonic() + timeout
    if sender.copies is not None and not sender.copies.wait(timeout):
        log.warning(
            "%d looped copies of the sync datagrams sent did not come back in %.1f s: the "
            "backup daemon may not have them all",
            sum(sender.copies.outstanding.values()), timeout,
        )
        return False
    return wait_drained(probe, max(0.0, deadline - time.monotonic()))


def wait_drained(probe: SyncQueueProbe, timeout: float) -> bool:
    """Wait until the receiver has taken everything queued (True) or the timeout passed. What
    is still on its way to the queue is not seen: after a send, `settle`."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        if probe.rx_queue() == 0:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
