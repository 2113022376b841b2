"""The control channel's socket: control messages to and from the sync group, on the sync
interface, on the control port.

One UDP socket does both. It is bound to (group, port), so it gets only datagrams sent to the
group on that port, and joined to the group on the sync interface only (IP_MULTICAST_ALL off:
not on another interface some other socket joined). It sends out of that interface with the
sync TTL and with multicast loop on, so two directors on one host (or in one network namespace)
hear each other; a director therefore also hears itself, and drops its own messages silently
(its sender name and a nonce it sent).

Everything received goes through decode (HMAC) and the replay guard. What they refuse is logged
(one WARNING line naming the source address and the reason), counted in `refused` by category,
and never returned.
"""

import collections
import ipaddress
import logging
import math
import select
import socket
import time
from collections import OrderedDict
from typing import Any, Dict, Optional, Tuple

from lvs_hooks.config import Config
from lvs_hooks.control.message import (
    BadMessage,
    Clock,
    Message,
    ReplayGuard,
    decode,
    encode,
    load_key,
    new_message,
)
from lvs_hooks.errors import ControlError
from lvs_hooks.kernel import mcast

log = logging.getLogger(__name__)

_RECV_SIZE = 65535
_SENT_KEEP = 10_000  # nonces of our own messages remembered at most


class ControlChannel:
    """Send and receive control messages as `sender` (a name unique among the directors)."""

    def __init__(
        self,
        ifname: str,
        group: str,
        port: int,
        ttl: int,
        key: bytes,
        sender: str,
        max_skew: float,
        clock: Clock = time.time,
    ):
        where = f"control channel {group} port {port} on {ifname}"
        try:
            addr = ipaddress.ip_address(group)
        except ValueError:
            raise ControlError(f"{where}: {group!r} is not an IP address") from None
        if not addr.is_multicast:
            raise ControlError(f"{where}: {group} is not a multicast group")
        if not 1 <= port <= 65535:
            raise ControlError(f"{where}: port must be 1-65535")
        if not 0 <= ttl <= 255:
            raise ControlError(f"{where}: ttl must be 0-255")
        if not sender:
            raise ControlError(f"{where}: the sender name is empty")
        try:
            self.ifindex = socket.if_nametoindex(ifname)
        except OSError:
            raise ControlError(f"{where}: interface {ifname!r} does not exist") from None
        self.ifname, self.group, self.port, self.ttl = ifname, group, port, ttl
        self.ipv6 = addr.version == 6
        self.key = key
        self.sender = sender
        self.clock = clock
        self.max_skew = float(max_skew)
        self.guard = ReplayGuard(max_skew, clock)
        self.refused: collections.Counter[str] = collections.Counter()
        self._sent: OrderedDict[str, float] = OrderedDict()  # our nonces -> our send time
        self.sock = self._open(where)

    def _open(self, where: str) -> socket.socket:
        try:
            sock = mcast.udp_socket(self.ipv6)
        except OSError as e:
            raise ControlError(f"{where}: {e.strerror}") from None
        try:
            mcast.join(sock, self.ipv6, self.group, self.port, self.ifindex)
            # loop on: two directors in one host (or namespace) must hear each other
            mcast.set_sending(sock, self.ipv6, self.group, self.ifindex, self.ttl, loop=True)
        except OSError as e:
            sock.close()
            raise ControlError(f"{where}: {e.strerror}") from None
        return sock

    @classmethod
    def from_config(cls, cfg: Config, sender: str, clock: Clock = time.time) -> "ControlChannel":
        """The channel the configuration describes (a lvs_hooks.config.Config)."""
        if cfg.control.key_file is None:
            raise ControlError("control.key_file is not set: no control channel")
        if cfg.sync.interface is None:
            raise ControlError("sync.interface is not set: the control channel needs it")
        return cls(
            cfg.sync.interface,
            cfg.sync.group,
            cfg.control.port,
            cfg.sync.ttl,
            load_key(cfg.control.key_file),
            sender,
            cfg.control.max_skew,
            clock,
        )

    # ------------------------------------------------------------------------ sending

    def send(self, kind: str, body: Dict[str, Any]) -> Message:
        """Send one message of `kind` to the group; returns it as sent. ValueError for a bad
        kind or body, ControlError when the kernel refuses to send."""
        msg = new_message(kind, self.sender, body, self.clock)
        data = encode(msg, self.key)
        self._remember_sent(msg.nonce)
        dest: Tuple[Any, ...] = (self.group, self.port)
        if self.ipv6:
            dest = (self.group, self.port, 0, self.ifindex)
        try:
            self.sock.sendto(data, dest)
        except OSError as e:
            raise ControlError(
                f"control channel: cannot send {kind} to {self.group} port {self.port} "
                f"on {self.ifname}: {e.strerror or e}"
            ) from None
        return msg

    def _remember_sent(self, nonce: str) -> None:
        # Our looped copy arrives at once; keep a nonce as long as a copy of it could still be
        # fresh for the guard, so a copy sent back to us later is dropped as ours, not acted on.
        now = self.clock()
        horizon = now - 2 * self.max_skew
        sent = self._sent
        while sent:
            oldest = next(iter(sent))
            if sent[oldest] >= horizon and len(sent) < _SENT_KEEP:
                break
            del sent[oldest]
        sent[nonce] = now

    # ------------------------------------------------------------------------ receiving

    def recv(self, timeout: float) -> Optional[Tuple[Message, str]]:
        """The first good message from another director and its source address, waiting up to
        `timeout` seconds; None when none came by then. Refused datagrams are logged, counted
        in `refused` and skipped, within the same deadline. (poll, not select: a process with
        many files may have this socket above FD_SETSIZE.)"""
        deadline = time.monotonic() + max(0.0, timeout)
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        while True:
            remaining = deadline - time.monotonic()
            if poller.poll(max(0, math.ceil(remaining * 1000))):
                try:
                    data, src = self.sock.recvfrom(_RECV_SIZE, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    pass  # readable but gone (e.g. a bad UDP checksum): wait on
                else:
                    got = self._accept(data, src[0])
                    if got is not None:
                        return got, src[0]
            # Checked after a datagram, not before: recv(0) still takes one that is waiting,
            # and a flood of refused datagrams cannot hold the caller past its deadline.
            if time.monotonic() >= deadline:
                return None

    def _accept(self, data: bytes, src: str) -> Optional[Message]:
        try:
            msg = decode(data, self.key)
            if msg.sender == self.sender and msg.nonce in self._sent:
                return None  # our own, looped back
            self.guard.check(msg)
        except BadMessage as e:
            self.refused[e.category] += 1
            log.warning("control: message from %s refused: %s", src, e.reason)
            return None
        return msg

    # ------------------------------------------------------------------------ lifetime

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "ControlChannel":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
