"""The receiving side of a push, on a backup: did the whole push arrive?

The kernel's backup sync daemon takes the datagrams into the table, and tells nobody what it
got. lvs-hooks listens to the same group and port beside it (SyncGroupListener: the kernel's
socket allows a second one with SO_REUSEADDR, and both get every multicast datagram) and
collects what the pushing director sent between the begin and end announcements of its
control channel (PushCollector). At the end it compares count and digest with what the sender
announced: equal means this host received exactly the datagrams sent, in order, and with them
the keys of the templates, which the receiver can look for in its own table afterwards.

Sources. The pushing director's kernel master daemon sends its ordinary sync messages from
the same address as the push (both pick the sync interface's address), each from its own
socket, hence its own source port. So the collector keeps the datagrams of each source port
of the sender apart (a stream), and the push is the stream whose last `datagrams` datagrams
have the announced digest. Sources are written "addr:port" ("[addr]:port" for IPv6), as
SyncGroupListener.recv gives them; a bare address is accepted (then every datagram of that
address is one stream, and the kernel's own sync traffic during a push makes it incomplete).
Datagrams of the push's stream received before it (a backlog fed in by the caller, an earlier
push from the same socket) do not matter: only the last ones are compared.

The agent always passes the source an authenticated push-begin announced (address and port):
only that stream counts, so a datagram spoofed with the sender's address from any other port
cannot spoil the push. What else arrives is counted (`foreign`: another address; `other_ports`:
the sender's address, another port), for the agent to log and show (design.md section 6.1).

PushCollector is pure (no I/O, no clock). SyncGroupListener is a thin socket.
"""

import collections
import hashlib
import ipaddress
import select
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Deque, Dict, List, Optional, Tuple

from lvs_hooks.errors import KernelError
from lvs_hooks.kernel import mcast
from lvs_hooks.kernel.model import TemplateKey, wire_template_key
from lvs_hooks.kernel.syncproto import SyncDecodeError, decode_datagram
from lvs_hooks.push.sender import push_digest

__all__ = [
    "CollectResult",
    "PushCollector",
    "SyncGroupListener",
    "format_source",
    "parse_source",
    "template_key",
]


# Bounds on what a collector keeps whatever arrives: sockets of the sender (the push's, the
# kernel master daemon's, a few more), and source strings remembered parsed.
MAX_STREAMS = 16
MAX_SOURCES = 1024


def parse_source(src: str) -> Tuple[str, Optional[int]]:
    """("canonical address", port or None) of "addr", "addr:port" or "[v6addr]:port".

    An IPv6 zone ("%eth0") is dropped; an IPv4-mapped IPv6 address becomes the IPv4 one.
    Raises ValueError on anything else.
    """
    text = src.strip()
    port: Optional[int] = None
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"bad source {src!r}")
        if rest:
            port = int(rest[1:])
    elif text.count(":") == 1:
        host, _, p = text.partition(":")
        port = int(p)
    else:
        host = text
    if port is not None and not 0 <= port <= 0xFFFF:
        raise ValueError(f"bad port in source {src!r}")
    ip = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip), port


def format_source(addr: str, port: Optional[int]) -> str:
    if port is None:
        return addr
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


# A decoded template's key as /proc shows it (kernel.model has the one definition).
template_key = wire_template_key


@dataclass
class CollectResult:
    """What a receiver got of one push."""

    push_id: str
    complete: bool
    reason: str  # "" when complete; else one line saying what differs
    templates: int  # as announced at the end (entries: templates and connections)
    datagrams: int  # as announced
    digest: str  # as announced
    source: str = ""  # the stream taken for the push ("addr:port"); "" if none arrived
    received_datagrams: int = 0  # of that stream that belong to the push (the last ones)
    received_bytes: int = 0
    received_digest: str = ""
    earlier: int = 0  # datagrams of that stream received before the push's first one
    entries: int = 0  # decoded entries
    connections: int = 0  # decoded entries that are not templates
    keys: List[TemplateKey] = field(default_factory=list)  # decoded templates, in order
    ignored: int = 0  # datagrams of other sources and other streams of the sender
    foreign: int = 0  # of those, from another address than the sender's
    other_ports: int = 0  # of those, from the sender's address but not the announced port
    intruders: int = 0  # datagrams inside the push's stream that were not the push's (0 or 1)

    def summary(self) -> dict:
        """JSON-ready, without the keys (there may be a million)."""
        return {
            "push_id": self.push_id,
            "complete": self.complete,
            "reason": self.reason,
            "templates": self.templates,
            "datagrams": self.datagrams,
            "source": self.source,
            "received_datagrams": self.received_datagrams,
            "received_bytes": self.received_bytes,
            "earlier": self.earlier,
            "entries": self.entries,
            "connections": self.connections,
            "keys": len(self.keys),
            "ignored": self.ignored,
            "foreign": self.foreign,
            "other_ports": self.other_ports,
            "intruders": self.intruders,
        }


class _Stream:
    """The datagrams of one source (address and port), the last `keep` of them."""

    def __init__(self, source: str, keep: int):
        self.source = source
        self.kept: Deque[bytes] = collections.deque(maxlen=keep)
        self.count = 0

    def last(self, n: int) -> List[bytes]:
        if n <= 0:
            return []
        return list(self.kept)[-n:]


class PushCollector:
    """Collects the datagrams of one push, announced by its sender's control channel.

    Started at push-begin with the push id, the sender's address (as the control channel
    knows it: "addr" or "addr:port") and the number of entries announced. Keeps, per source
    port of that address, the last `templates` datagrams in arrival order (a push never has
    more datagrams than entries), so that memory stays bounded whatever else that host sends
    (and at most MAX_STREAMS source ports of it).
    """

    def __init__(self, push_id: str, sender_addr: str, templates: int):
        self.push_id = push_id
        self.sender, self.sender_port = parse_source(sender_addr)
        self.templates = max(int(templates), 0)
        self.ignored = 0
        self.foreign = 0  # datagrams from another address than the sender's
        self.other_ports = 0  # from the sender's address, not the announced port
        self._streams: Dict[Optional[int], _Stream] = {}
        self._sources: Dict[str, Optional[Tuple[str, Optional[int]]]] = {}

    def _parse(self, src: str) -> Optional[Tuple[str, Optional[int]]]:
        parsed = self._sources.get(src)
        if parsed is None and src not in self._sources:
            try:
                parsed = parse_source(src)
            except ValueError:
                parsed = None
            if len(self._sources) >= MAX_SOURCES:
                self._sources.clear()
            self._sources[src] = parsed
        return parsed

    def from_sender_address(self, src: str) -> bool:
        """Whether `src` has the sender's address (whatever its port)."""
        parsed = self._parse(src)
        return parsed is not None and parsed[0] == self.sender

    def add(self, datagram: bytes, src: str) -> bool:
        """Take a datagram received from `src`; False if it is not from the announced source
        (ignored, and counted: `foreign` another address, `other_ports` the sender's address
        from another port, such as its kernel master daemon or someone spoofing it)."""
        parsed = self._parse(src)
        if parsed is None:
            self.ignored += 1
            self.foreign += 1
            return False
        addr, port = parsed
        if addr != self.sender:
            self.ignored += 1
            self.foreign += 1
            return False
        if self.sender_port is not None and port != self.sender_port:
            self.ignored += 1
            self.other_ports += 1
            return False
        stream = self._streams.get(port)
        if stream is None:
            if len(self._streams) >= MAX_STREAMS:
                self.ignored += 1
                return False
            stream = self._streams[port] = _Stream(format_source(addr, port), self.templates)
        stream.kept.append(bytes(datagram))
        stream.count += 1
        return True

    def finish(self, templates: int, datagrams: int, digest: str) -> CollectResult:
        """Compare what arrived with what the sender announced at the end of the push.

        Complete: one stream of the sender whose last `datagrams` datagrams have `digest`,
        decode as sync messages and hold `templates` entries. Otherwise the result says why,
        and gives what the closest stream's last datagrams decode to, for diagnosis.
        """
        digest = digest.lower()
        res = CollectResult(self.push_id, False, "", templates, datagrams, digest)
        res.foreign, res.other_ports = self.foreign, self.other_ports
        streams = list(self._streams.values())
        if datagrams <= 0:
            # An empty push: nothing arrives; only the digest of nothing can be compared.
            res.received_digest = push_digest([])
            res.ignored = self.ignored + sum(s.count for s in streams)
            if res.received_digest == digest and templates == 0:
                res.complete = True
            else:
                res.reason = "an announced empty push with entries or another digest"
            return res
        match = None
        window: List[bytes] = []
        for s in streams:
            if len(s.kept) >= datagrams and push_digest(s.last(datagrams)) == digest:
                match, window = s, s.last(datagrams)
                break
        if match is None:
            for s in streams:
                found = _without_one(s, datagrams, digest)
                if found is not None:
                    match, window = s, found
                    res.intruders = 1
                    break
        chosen = match
        if chosen is None and streams:
            chosen = min(streams, key=lambda s: abs(s.count - datagrams))
        res.ignored = self.ignored + sum(s.count for s in streams if s is not chosen)
        if chosen is None:
            res.reason = f"no datagram arrived from {self.sender}"
            if self.ignored:
                res.reason += f" ({self.ignored} from other sources)"
            return res
        if match is None:
            window = chosen.last(min(chosen.count, datagrams))
        res.source = chosen.source
        res.received_datagrams = len(window)
        res.received_bytes = sum(map(len, window))
        res.received_digest = push_digest(window)
        res.earlier = chosen.count - len(window) - res.intruders
        bad = self._decode(window, res)
        if match is None:
            if chosen.count < datagrams:
                res.reason = f"{chosen.count} of {datagrams} datagrams arrived from {res.source}"
            elif len(chosen.kept) < datagrams:
                res.reason = f"more datagrams than the {self.templates} entries announced"
            else:
                res.reason = (
                    f"the digest of the last {datagrams} datagrams from {res.source} differs: "
                    "a datagram was lost, reordered or altered"
                )
        elif bad:
            res.reason = bad
        elif res.entries != templates:
            res.reason = f"{res.entries} entries decoded, {templates} announced"
        else:
            res.complete = True
        return res

    @staticmethod
    def _decode(window: List[bytes], res: CollectResult) -> str:
        """Fill entries, connections and keys; the first decoding error, or ""."""
        bad = ""
        for i, d in enumerate(window):
            try:
                msg = decode_datagram(d)
            except SyncDecodeError as e:
                bad = bad or f"datagram {i + 1} of {len(window)} does not decode: {e}"
                continue
            for c in msg.conns:
                res.entries += 1
                if c.is_template:
                    res.keys.append(template_key(c))
                else:
                    res.connections += 1
        return bad


# Bytes (datagrams x their size) that a search for one datagram that is not the push's may
# hash (_without_one; about half of it in fact): up to about 430 full datagrams, 17,000
# templates, in well under a second on the agent's loop; a larger push is not searched.
INTRUDER_SEARCH_BYTES = 256 << 20


def _without_one(stream: "_Stream", datagrams: int, digest: str) -> Optional[List[bytes]]:
    """The push's datagrams if the last `datagrams` + 1 of `stream` hold them and one more.

    The kernel's backup daemon takes any datagram from anywhere, and so does the group; one
    forged with the pusher's own address and port lands inside the push's stream, where the
    digest cannot tell it from the push's own. Leaving out each one in turn finds it (the
    digest is over the push's datagrams in order). Quadratic in the push's size, so only
    within INTRUDER_SEARCH_BYTES; two or more such datagrams leave the push incomplete."""
    if datagrams <= 0 or len(stream.kept) < datagrams + 1:
        return None
    window = stream.last(datagrams + 1)
    size = sum(map(len, window))
    if size * (datagrams + 1) > INTRUDER_SEARCH_BYTES:
        return None
    # The hash of what comes before the left-out datagram is built once, in order.
    prefix = hashlib.sha256()
    for j in range(len(window)):
        h = prefix.copy()
        for d in window[j + 1:]:
            h.update(len(d).to_bytes(2, "big"))
            h.update(d)
        if h.hexdigest() == digest:
            return window[:j] + window[j + 1:]
        prefix.update(len(window[j]).to_bytes(2, "big"))
        prefix.update(window[j])
    return None


# ---------------------------------------------------------------------------- the socket

# Linux values, not all exposed by Python's socket module.
_IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
_IPV6_RECVPKTINFO = getattr(socket, "IPV6_RECVPKTINFO", 49)
_IPV6_PKTINFO = getattr(socket, "IPV6_PKTINFO", 50)
_IN_PKTINFO = struct.Struct("=i4s4s")  # ipi_ifindex, ipi_spec_dst, ipi_addr
_IN6_PKTINFO = struct.Struct("=16si")  # ipi6_addr, ipi6_ifindex
RCVBUF = 16 << 20  # asked for; SO_RCVBUFFORCE (root) passes net.core.rmem_max, else capped by it
# include/uapi/asm-generic/socket.h: SO_RXQ_OVFL puts the socket's drop counter (sk_drops, a
# u32: datagrams dropped because the receive buffer was full) beside each datagram received.
SO_RXQ_OVFL = getattr(socket, "SO_RXQ_OVFL", 40)
SO_RCVBUFFORCE = 33
_U32 = struct.Struct("=I")


class SyncGroupListener:
    """A UDP socket on the sync group and port beside the kernel's backup daemon.

    SO_REUSEADDR (the kernel's socket has it too), bound to (group, port), joined on the sync
    interface. Datagrams that arrived by another interface are dropped (IP_PKTINFO), and only
    groups joined on this socket are delivered (IP_MULTICAST_ALL off). recv() gives
    (datagram, "addr:port") or None on timeout.
    """

    def __init__(self, ifname: str, group: str, port: int, rcvbuf: int = RCVBUF):
        try:
            self.ifindex = socket.if_nametoindex(ifname)
        except OSError as e:
            raise KernelError(f"sync interface {ifname!r} does not exist") from e
        self.ifname, self.group, self.port = ifname, group, port
        self.ipv6 = ipaddress.ip_address(group).version == 6
        try:
            self.sock = mcast.udp_socket(self.ipv6)
        except OSError as e:
            raise KernelError(f"cannot listen to the sync group: {e.strerror}") from e
        try:
            # A push of the whole table arrives at push.rate while the agent may be busy: the
            # default buffer (net.core.rmem_default, about 90 datagrams) would drop most of it.
            if not _try_setsockopt(self.sock, socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf):
                _try_setsockopt(self.sock, socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            _try_setsockopt(self.sock, socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
            if self.ipv6:
                self.sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_RECVPKTINFO, 1)
            else:
                self.sock.setsockopt(socket.IPPROTO_IP, _IP_PKTINFO, 1)
            mcast.join(self.sock, self.ipv6, group, port, self.ifindex)
        except OSError as e:
            self.sock.close()
            raise KernelError(
                f"cannot listen to the sync group {group} port {port} on {ifname}: "
                f"{e.strerror or e}"
            ) from e
        self.sock.setblocking(False)
        self._cmsg_space = socket.CMSG_SPACE(
            max(_IN_PKTINFO.size, _IN6_PKTINFO.size)
        ) + socket.CMSG_SPACE(_U32.size)
        self.drops = 0  # the kernel's count of datagrams dropped here, as last seen

    def dropped(self) -> int:
        """Datagrams the kernel dropped because this socket's receive buffer was full, since it
        was opened, as of the last datagram received (SO_RXQ_OVFL: the kernel stamps its drop
        count on each datagram it queues, so drops are learned with the next one that gets in;
        the sync stream never stops for long while a master has clients)."""
        return self.drops

    def fileno(self) -> int:
        return self.sock.fileno()

    def recv(self, timeout: Optional[float]) -> Optional[Tuple[bytes, str]]:
        """The next datagram that arrived by the sync interface and its source, or None when
        `timeout` seconds pass first (None: wait for ever; 0: only what is queued)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            ready, _, _ = select.select([self.sock], [], [], wait)
            if not ready:
                return None
            try:
                data, anc, _flags, addr = self.sock.recvmsg(0xFFFF, self._cmsg_space)
            except BlockingIOError:
                continue  # select saw a datagram the kernel then dropped (bad checksum)
            ifindex = self._ifindex(anc)
            if ifindex is not None and ifindex != self.ifindex:
                continue
            return data, format_source(parse_source(addr[0])[0], addr[1])

    def _ifindex(self, anc) -> Optional[int]:
        """The arrival interface (and, on the way, the drop counter)."""
        found = None
        for level, ctype, cdata in anc:
            if level == socket.IPPROTO_IP and ctype == _IP_PKTINFO:
                found = _IN_PKTINFO.unpack_from(cdata)[0]
            elif level == socket.IPPROTO_IPV6 and ctype == _IPV6_PKTINFO:
                found = _IN6_PKTINFO.unpack_from(cdata)[1]
            elif level == socket.SOL_SOCKET and ctype == SO_RXQ_OVFL and len(cdata) >= 4:
                self.drops = _U32.unpack_from(cdata)[0]
        return found

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "SyncGroupListener":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _try_setsockopt(sock: socket.socket, level: int, option: int, value: int) -> bool:
    # Best effort: an older kernel lacks the option (the filter on the arrival interface
    # still applies), rmem_max caps the buffer without CAP_NET_ADMIN.
    try:
        sock.setsockopt(level, option, value)
    except OSError:
        return False
    return True
