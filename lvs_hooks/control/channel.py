"""The control channel's socket: control messages to and from the sync group, on the sync
interface, on the control port.

One UDP socket does both. It is bound to (group, port), so it gets only datagrams sent to the
group on that port, and joined to the group on the sync interface only (IP_MULTICAST_ALL off:
not on another interface some other socket joined). It sends out of that interface with the
sync TTL and with multicast loop on, so two directors on one host (or in one network namespace)
hear each other; a director therefore also hears itself, and drops its own messages silently
(its sender name and a nonce it sent).

Everything received goes through decode (length and magic, then HMAC, then JSON) and the replay
guard. What they refuse is counted in `refused` by category, never returned, and logged at most
once per category per 10 s with the count since the last line (ratelog): a flood of forged
datagrams costs a few lines, not one each. Messages addressed to another director are dropped
silently (counted in `not_for_us`); one that claims this director's own name (not one of its own
looped back) is refused as "own-name".

The receive buffer is large (SO_RCVBUFFORCE as root, else SO_RCVBUF up to net.core.rmem_max) and
`recv` takes every datagram queued before it waits, so that a genuine message queued behind a
flood is read, not dropped for lack of room (design.md section 5.8).
"""

import collections
import ipaddress
import logging
import math
import os
import select
import socket
import time
from typing import Any, Dict, Optional, Tuple

from lvs_hooks.config import Config
from lvs_hooks.control.message import (
    EVERYONE,
    MAX_SIZE,
    BadMessage,
    Clock,
    Message,
    ReplayGuard,
    decode,
    encode,
    load_key,
    new_epoch,
    new_message,
)
from lvs_hooks.errors import ControlError
from lvs_hooks.kernel import mcast
from lvs_hooks.ratelog import RateLimitedLog

log = logging.getLogger(__name__)

# Room for 20,000 forged datagrams of the largest size (a queued datagram costs its size plus
# about 900 bytes of kernel bookkeeping): the kernel doubles what is asked. Memory is charged
# only for what is queued.
RCVBUF = 32 << 20
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
REPLAY_FILE = "control-replay.json"
DRAIN_MAX = 100_000  # datagrams taken in one recv() at most before its deadline is looked at


class Acceptor:
    """What the channel does with a datagram it received, without the socket: the message, if
    it is one for this director to act on; else None, and the refusal counted in `refused`
    (by category) and logged per interval (`ratelog`)."""

    def __init__(self, key: bytes, name: str, epoch: str, guard: ReplayGuard,
                 ratelog: RateLimitedLog):
        self.key, self.name, self.epoch = key, name, epoch
        self.guard = guard
        self.ratelog = ratelog
        self.refused: collections.Counter[str] = collections.Counter()
        self.not_for_us = 0  # good messages addressed to another director

    def accept(self, data: bytes, src: str) -> Optional[Message]:
        try:
            # length and magic, then the HMAC, and only then the JSON (decode)
            msg = decode(data, self.key)
            if msg.sender == self.name:
                if msg.epoch == self.epoch:
                    return None  # our own (this start's epoch), looped back
                raise BadMessage(f"claims this director's own name {msg.sender!r}", "own-name")
            if msg.to != EVERYONE and msg.to != self.name:
                self.not_for_us += 1  # e.g. another director's status reply: not ours
                return None
            self.guard.check(msg)
        except BadMessage as e:
            self.refused[e.category] += 1
            self.ratelog.note(f"control: messages refused ({e.category})",
                              f"from {src}: {e.reason}")
            return None
        if self.guard.save_error:
            self.ratelog.note("control: replay window not kept", self.guard.save_error)
        return msg


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
        replay_file: Optional[str] = None,
        monotonic: Clock = time.monotonic,
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
        self.monotonic = monotonic
        # This start's epoch and the number of the last message sent in it (message.py)
        self.epoch = new_epoch()
        self.seq = 0
        self.acceptor = Acceptor(key, sender, self.epoch,
                                 ReplayGuard(max_skew, clock, path=replay_file),
                                 RateLimitedLog(log, clock=monotonic))
        self.guard = self.acceptor.guard
        self.refused = self.acceptor.refused
        self.ratelog = self.acceptor.ratelog
        self._buf = bytearray(MAX_SIZE + 1)  # one more: a longer datagram shows as too long
        if self.guard.load_error:
            log.error("control: replay window %s; every message refused for %.0f s",
                      self.guard.load_error, 2 * self.max_skew)
        self.sock = self._open(where)

    def _open(self, where: str) -> socket.socket:
        try:
            sock = mcast.udp_socket(self.ipv6)
        except OSError as e:
            raise ControlError(f"{where}: {e.strerror}") from None
        # Best effort: without CAP_NET_ADMIN, SO_RCVBUF is capped by net.core.rmem_max.
        for opt in (SO_RCVBUFFORCE, socket.SO_RCVBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, RCVBUF)
                break
            except OSError:
                continue
        try:
            mcast.join(sock, self.ipv6, self.group, self.port, self.ifindex)
            # loop on: two directors in one host (or namespace) must hear each other
            mcast.set_sending(sock, self.ipv6, self.group, self.ifindex, self.ttl, loop=True)
        except OSError as e:
            sock.close()
            raise ControlError(f"{where}: {e.strerror}") from None
        return sock

    @classmethod
    def from_config(
        cls, cfg: Config, sender: str, clock: Clock = time.time, persist: bool = False
    ) -> "ControlChannel":
        """The channel the configuration describes (a lvs_hooks.config.Config). `persist`:
        keep the replay window in <state_dir>/control-replay.json (the agent: the one
        long-lived receiver per host; a short-lived command's channel keeps it in memory)."""
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
            replay_file=os.path.join(cfg.paths.state_dir, REPLAY_FILE) if persist else None,
        )

    # ------------------------------------------------------------------------ sending

    def send(self, kind: str, body: Dict[str, Any], to: str = EVERYONE) -> Message:
        """Send one message of `kind` to the group, addressed to `to` (a director's sender
        name, or "*" for all); returns it as sent. ValueError for a bad kind or body,
        ControlError when the kernel refuses to send."""
        msg = new_message(kind, self.sender, body, self.clock, to=to, epoch=self.epoch,
                          seq=self.seq + 1)
        data = encode(msg, self.key)
        self.seq += 1
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

    # ------------------------------------------------------------------------ receiving

    def recv(self, timeout: float) -> Optional[Tuple[Message, str]]:
        """The first good message from another director and its source address, waiting up to
        `timeout` seconds; None when none came by then. Every datagram already queued is taken
        before waiting (recv(0) drains the socket): refused ones are counted in `refused`,
        logged per interval, and skipped, within the same deadline. (poll, not select: a
        process with many files may have this socket above FD_SETSIZE.)"""
        deadline = self.monotonic() + max(0.0, timeout)
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        buf, view = self._buf, memoryview(self._buf)
        try:
            while True:
                for _ in range(DRAIN_MAX):
                    try:
                        n, src = self.sock.recvfrom_into(buf, len(buf), socket.MSG_DONTWAIT)
                    except BlockingIOError:
                        break  # drained
                    got = self._accept(bytes(view[:n]), src[0])
                    if got is not None:
                        return got, src[0]
                # Checked after the queue, not before: recv(0) still drains it, and a flood of
                # refused datagrams cannot hold the caller much past its deadline.
                remaining = deadline - self.monotonic()
                if remaining <= 0:
                    return None
                poller.poll(max(1, math.ceil(remaining * 1000)))
        finally:
            view.release()
            self.ratelog.flush()

    def _accept(self, data: bytes, src: str) -> Optional[Message]:
        return self.acceptor.accept(data, src)

    def flush_log(self) -> None:
        """Log the refusals counted since the last line once their interval is over (the
        agent calls it every tick: a flood that stopped still gets its count said)."""
        self.ratelog.flush()

    # ------------------------------------------------------------------------ lifetime

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "ControlChannel":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
