"""The director's persistence templates in memory, and what it knows of its clients' connections.

Every decision used to start with a whole read of /proc/net/ip_vs_conn, which the kernel serves
in quadratic time (design.md 2.4). `TemplateTable` keeps instead, fed by the sync stream
(`ingest`), by lvs-hooks' own injections (`note_injected`) and by a /proc read when one is cheap
(`reconcile`):

- every template, by its identity in the kernel (protocol, client, virtual address or fwmark
  address, virtual port: design.md 2.2), with its real server, its state, forwarding
  method, origin and deadline;
- per client and service, the latest deadline of any connection heard of: not the connections
  one by one (there are many more of them), only what the keeper and the push check ask, "does
  this client still have a connection to this service" (design.md 2.7, 5.2).

It answers in the shapes the pure planners take (`templates`, `client_counts`), so that they run
on it unchanged, and dumps a snapshot (`dump`).

Compact on purpose (a million templates is a real table): no object per entry but two ints.

    template key    IPv4: vs << 32 | caddr;   IPv6: ~(vs << 128 | caddr)   (negative: the two
                    families never collide). `vs` indexes an interned virtual key (af, protocol,
                    vaddr, vport): a table has few. Templates with PE data (SIP) are keyed
                    (key, pe name, pe data) in a dict of their own: the kernel tells them apart
                    by their Call-ID (ip_vs_sip_ct_match).
    template value  bits 0-2 forwarding method, 3-4 state (NONE, ASSURED, other: "ERR!" in
                    /proc), 5-6 origin (unknown, SYNC, LOCAL), 7 reconcile generation,
                    8-49 deadline in ms since the table's epoch, 50- real server index (interned
                    address and port). Below 1024 real servers a value is a two-digit int.
    client key      as a template key, of the connection's protocol, vaddr, vport and client
                    (masked by the service's persistence netmask when `use_services` gave it).
    client value    the deadline in whole seconds since the epoch, rounded up, interned: clients
                    share a few thousand distinct values.

Expiry as the kernel's (design.md 2.6): an entry whose deadline has passed is gone for every
query at once; `expire` releases the memory. It is amortised: a wheel of buckets by deadline
second, lazy (an entry whose deadline moves later keeps its old bucket and is moved on when that
bucket comes due; one that moves earlier gets a second reference), so a busy template re-sent at
every packet costs no wheel work, and `expire` touches only what came due.

Simplifications, each on the side of the planners' safety:

- **A master's own templates follow its kernel's timer** (design.md 2.6). A master sends a
  template with every packet of a connection it controls, always with its whole timeout, but its
  kernel restarts the template's timer only when a new connection is scheduled under it
  (ip_vs_sched_persist) and when the timer fires while connections are still attached: then it
  re-arms for 60 s and sends the template once more, with timeout 60 (ip_vs_conn_expire). A
  backup's kernel restarts its copy with every message, and so does the table for what it hears
  (exact on a backup). For what it captures from its own kernel (origin LOCAL) it keeps, per
  template, until when the connection behind its last packet lives at least (the packet's time
  plus the longest a connection of that protocol lives idle: `use_timeouts`, which the agent
  calls every second, so a packet heard within a second of an `ipvsadm --set` is timed by the
  old timeouts until its client's next one); a message while
  that connection may still live leaves the deadline alone (a packet of a connection the kernel
  already had), one after it restarts the deadline (a new connection), and one with timeout 60
  within the sync thread's flush delay of the deadline is the re-arm. At its deadline such a
  template whose last packet's connection still lives is re-armed here too (`expire`): a
  director that was master re-arms its own templates without a word, and goes on doing so while
  the next master's messages about that connection restart it there: a connection heard for a
  template it keeps that for, while that connection still lives, moves the connection's end
  later too (lab, churn under a CPU hog: 285 templates of the former master kept their old real
  server in its kernel and took the new master's here); one heard after it ended is a new
  connection in the kernel, attached to no template (lab, churn: the next master synced a UDP
  connection every 50 packets, its old copy here had ended 20 s after the handover, and 5 to 20
  templates were re-armed here 60 s longer than in the kernel). Left: a client that opens
  a second connection while its first still lives restarts the kernel's timer and not the
  table's (the table ends early, and takes the template again with its next packet: the
  planners err by a renewal or a re-injection that the kernel takes as a timeout update,
  design.md 3.6); a TCP connection that closed lives here as long as its longest state, so its
  template may be re-armed here and not in the kernel (60 s longer: the safe side); a re-arm is
  seen at the next `expire` (the agent's upkeep: every second). Measured in the lab (churn, 5
  minutes, returning clients): before this, on the master 600 to 1,200 of 2,420 templates ended
  9 to 16 s later here than in the kernel; after it, none.
- **A client's connection deadline only grows.** Connections are not kept one by one, so a
  message that shortens one connection (TIME_WAIT, CLOSE) cannot shorten the client's deadline:
  another connection of the same client may still run. A client may count as connected for up to
  one connection timeout after its last connection really closed; keeping a template too long
  costs a little, dropping one costs a client (design.md 2.7). A reconcile with a full /proc
  read sets the exact figure. `client_counts` says 1 per client, not how many connections: the
  planners only ask whether there is one.
- **A master's own message is timed by its arrival, not by its packet.** The master's sync
  thread sends a buffer when the next message does not fit, or once its first message is
  IPVS_SYNC_FLUSH_TIME (2 s) old, looking every second: the last messages of a burst leave 2 to
  3 s after their packets, and the table restarts their templates that much later than the
  kernel did. Lab, churn under a CPU hog (the sync thread running late as well): 6 of 2,420
  templates of the master ended 3 s later here. Late is the keeper's unsafe side: it renews
  what the table says ends within keeper.refresh_below (12 s, more than twice its interval), so
  the error eats into that margin. A buffer that was not full was sent by the timer, and its
  messages could be dated back by it (not done yet: it needs the sync interface's MTU).
- **What cannot be seen is not guessed**: a template the kernel invalidated (design.md
  2.2), one a backup never bound (design.md 3.7), a datagram a backup's socket dropped
  (design.md 3.5) show only after a reconcile.

Not thread-safe: one thread feeds and queries it, or the caller holds a lock. `now` is a monotonic
clock in seconds and must not go backwards.
"""

import json
import socket
import struct
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from itertools import chain, compress, islice, repeat
from operator import and_, floordiv, gt, rshift, sub
from typing import (
    Any,
    Dict,
    Iterable,
    Iterator,
    List,
    NamedTuple,
    Optional,
    Sequence,
    Set,
    Tuple,
)

from lvs_hooks.kernel.conntable import ClientKey, gc_paused
from lvs_hooks.kernel.model import (
    FWD_METHODS,
    PROTO_NAMES,
    PROTO_NUMBERS,
    ConnEntry,
    Service,
    ipv6_text,
)
from lvs_hooks.kernel.syncproto import (
    IP_VS_CONN_F_FWD_MASK,
    IP_VS_CONN_F_TEMPLATE,
    IP_VS_CTPL_S_ASSURED,
    IP_VS_CTPL_S_NONE,
)
from lvs_hooks.reseed.planner import PlannedTemplate
from lvs_hooks.snapshot import Snapshot
from lvs_hooks.table import feed

# --- the kernel's defaults, for entries whose message carries no timeout (v0, or a v1 timeout
# of 0): ip_vs_proc_conn gives a template 3 minutes and a connection its state's timeout from the
# protocol's table (ip_vs_proto_tcp.c tcp_timeouts, _udp.c, _sctp.c), 3 minutes when the protocol
# has none. These are the kernel's own defaults: an `ipvsadm --set` or keepalived's lvs_timeouts
# changes ESTABLISHED, FIN_WAIT and UDP on the director, which the table does not know.
TEMPLATE_DEFAULT_TIMEOUT = 180
CONN_DEFAULT_TIMEOUT = 180
CONN_STATE_TIMEOUTS: Dict[int, Tuple[int, ...]] = {
    # NONE ESTABLISHED SYN_SENT SYN_RECV FIN_WAIT TIME_WAIT CLOSE CLOSE_WAIT LAST_ACK LISTEN SYNACK
    6: (2, 900, 120, 60, 120, 120, 10, 60, 30, 120, 120),
    17: (300,),  # NORMAL
    # NONE INIT1 INIT C-SENT C-REPLIED C-WAIT COOKIE C-ECHOED ESTABLISHED S-SENT S-RECEIVED
    # S-ACK-SENT REJECTED CLOSED (IP_VS_SCTP_MAX_RTO is 61 s)
    132: (2, 4, 61, 61, 61, 61, 61, 61, 900, 61, 61, 61, 4, 61),
}
# The protocols a backup accepts connections of, and their number of states (ip_vs_proto_get,
# pp->num_states): a connection of another protocol, or in a state past these, is skipped.
CONN_NUM_STATES: Dict[int, int] = {6: 11, 17: 1, 132: 14, 50: 1, 51: 1}

# /proc's names of template states (ip_vs_state_name: beyond ASSURED it prints "ERR!").
_STATE_NAMES = ("NONE", "ASSURED", "ERR!", "ERR!")
_STATE_CODES = {"NONE": 0, "ASSURED": 1}
_ORIGINS: Tuple[Optional[str], ...] = (None, "SYNC", "LOCAL", None)
_ORIGIN_CODES = {None: 0, "SYNC": 1, "LOCAL": 2}

# Template value layout (see the module docstring).
_FWD = IP_VS_CONN_F_FWD_MASK  # bits 0-2
_STATE_SHIFT = 3
_STATE = 3 << _STATE_SHIFT
_ORIGIN_SHIFT = 5
_ORIGIN = 3 << _ORIGIN_SHIFT
_GEN = 1 << 7
_DL_SHIFT = 8
_DL_MAX = (1 << 42) - 1  # 139 years of ms: room for any u32 timeout
_DL = _DL_MAX << _DL_SHIFT
_DEST_SHIFT = 50
# An update changes deadline and state only; and marks the entry as heard in the current
# reconcile generation (a read in progress must not drop what the stream just brought).
_KEEP_ON_UPDATE = ~(_DL | _STATE | _GEN)
_ASSURED = IP_VS_CTPL_S_ASSURED << _STATE_SHIFT
_MAX_TIMEOUT_S = _DL_MAX // 1000

# The longest a connection lives without a packet, by protocol, in the kernel's own defaults
# (tcp_timeouts: ESTABLISHED 900 s, the other states up to 120 s; udp 300 s; SCTP 900 s):
# `use_timeouts` takes the director's (ipvsadm --set, keepalived's lvs_timeouts).
CONN_IDLE_DEFAULT = {6: 900, 17: 300, 132: 900}
# ip_vs_conn_expire re-arms a template that still controls connections for 60 s and sends it
# with that timeout; a master's sync thread sends a buffer at the latest 2 s after its first
# entry (IPVS_SYNC_FLUSH_TIME), so its message arrives up to about that late.
REARM_TIMEOUT = 60
REARM_WINDOW_MS = 3000

_M32 = (1 << 32) - 1
_M128 = (1 << 128) - 1
_U32 = struct.Struct("!I")
_CHUNK = 20000  # entries built at a time with the cyclic collector paused


@dataclass
class FeedStats:
    """What the feeds took and refused since the table was made."""

    datagrams: int = 0
    entries: int = 0  # rows applied: templates + connections
    templates_new: int = 0
    templates_updated: int = 0  # an existing key: timeout and state only (design.md 3.6)
    connections: int = 0
    malformed: int = 0  # datagrams the kernel would drop in whole or in part
    skipped: int = 0  # entries the kernel skips alone (protocol, state, options, PE)
    other_syncid: int = 0  # datagrams of another syncid (when the table has one)
    last_error: str = ""

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class Expired(NamedTuple):
    templates: int
    clients: int


@dataclass
class ReconcileReport:
    """How far the table was from a /proc read, before the read replaced it.

    Templates: `added` were in /proc only, `dropped` in the table only, `changed` in both with
    another real server or state, `retimed` in both, the same otherwise, with a deadline off by
    more than the tolerance; `same` the rest. Clients (with connections): keys only in /proc,
    only in the table. `examples` holds a few of each kind, for a log line.
    """

    templates: int = 0  # in /proc
    added: int = 0
    dropped: int = 0
    changed: int = 0
    retimed: int = 0
    same: int = 0
    clients: Optional[int] = None  # None: the read had no connections, clients left as they were
    clients_added: int = 0
    clients_dropped: int = 0
    unseen: int = 0  # templates neither shown nor heard of during the read: dropped if a second
    # read does not show them either (drop_unseen)
    examples: Dict[str, List[str]] = field(default_factory=dict)

    def figures(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k != "examples"}
        return out

    def _example(self, kind: str, text: str) -> None:
        ex = self.examples.setdefault(kind, [])
        if len(ex) < 3:
            ex.append(text)


# Building 10^5 to 10^6 objects none of which can be part of a cycle: as in kernel/conntable.
_gc_paused = gc_paused


def proto_name(proto: int) -> str:
    """The protocol as /proc prints it (ip_vs_proto_name)."""
    name = PROTO_NAMES.get(proto)
    if name is not None:
        return name
    return "ICMPv6" if proto == socket.IPPROTO_ICMPV6 else f"IP_{proto}"


def _addr_text(af: int, value: int) -> str:
    if af == 4:
        return socket.inet_ntoa(_U32.pack(value))
    return ipv6_text(value.to_bytes(16, "big"))


def _addr_int(text: str) -> Tuple[int, int]:
    """(family, address as an integer) of a canonical address text."""
    if ":" in text:
        return 6, int.from_bytes(socket.inet_pton(socket.AF_INET6, text), "big")
    return 4, int.from_bytes(socket.inet_aton(text), "big")


def _netmask_int(svc: Service) -> Optional[int]:
    if not svc.netmask:
        return None
    if svc.af == 4:
        return int.from_bytes(socket.inet_aton(svc.netmask), "big")
    plen = int(svc.netmask)
    return (_M128 >> (128 - plen)) << (128 - plen) if plen else 0


class _Wheel:
    """Keys by the second their deadline falls in; lazy (see the module docstring)."""

    __slots__ = ("buckets", "cursor")

    def __init__(self) -> None:
        self.buckets: Dict[int, List[Any]] = {}
        self.cursor = 0  # every bucket before it has been taken

    def add(self, second: int, key: Any) -> None:
        if second < self.cursor:
            second = self.cursor
        b = self.buckets.get(second)
        if b is None:
            self.buckets[second] = [key]
        else:
            b.append(key)

    def due(self, limit: int) -> Iterator[List[Any]]:
        """The buckets of the seconds before `limit`, in order, each taken out of the wheel; a
        key added back meanwhile to a second before `limit` comes in a later bucket."""
        while True:
            if limit - self.cursor <= 2 * len(self.buckets) + 64:
                for s in range(self.cursor, limit):
                    self.cursor = s + 1
                    b = self.buckets.pop(s, None)
                    if b:
                        yield b
                self.cursor = max(self.cursor, limit)
                return
            # A long gap (the first call, or a long pause): the buckets there are, not every
            # second of the gap.
            ready = sorted(s for s in self.buckets if s < limit)
            if not ready:
                self.cursor = limit
                return
            for s in ready:
                self.cursor = s + 1
                b = self.buckets.pop(s, None)
                if b:
                    yield b

    def scan(self, limit: int) -> Iterator[Any]:
        """Every key referenced in the buckets before `limit` (left in place)."""
        for s in sorted(s for s in self.buckets if s < limit):
            yield from self.buckets[s]

    def refs(self) -> int:
        return sum(map(len, self.buckets.values()))


class TemplateTable:
    """Templates and client connection deadlines of one director (see the module docstring)."""

    def __init__(self, syncid: int = 0) -> None:
        # Like a backup daemon: 0 takes every syncid (design.md 3.3).
        self.syncid = syncid
        self.stats = FeedStats()
        self._epoch: Optional[int] = None  # ms of the first `now` seen
        self._tpl: Dict[int, int] = {}
        self._pe: Dict[Tuple[int, str, str], int] = {}
        self._clients: Dict[int, int] = {}
        # Templates captured from this director's own kernel (origin LOCAL): the whole second
        # until which the connection behind their last packet lives at least (interned).
        self._inbound: Dict[int, int] = {}
        self._idle_ms: Dict[int, int] = {p: s * 1000 for p, s in CONN_IDLE_DEFAULT.items()}
        self._twheel = _Wheel()
        self._cwheel = _Wheel()
        self._seconds: Dict[int, int] = {}  # interned client deadlines
        self._gen = 0  # the reconcile generation bit new entries get
        # Clients the stream updated since begin_reconcile (None: no read in progress).
        self._touched: Optional[Set[int]] = None
        # Interned virtual keys (af, protocol, vaddr, vport) and real servers (af, addr, port).
        self._virtuals: List[Tuple[str, str, int, int, int]] = []  # name, vaddr, vport, af, proto
        self._virtual_ids: Dict[Tuple[int, int, int, int], int] = {}
        self._dests: List[Tuple[str, int]] = []
        self._dest_ids: Dict[Tuple[int, int, int], int] = {}
        # Memos of the feeds, to the index already shifted into place.
        self._v4: Dict[int, int] = {}  # proto << 48 | vaddr << 16 | vport -> index << 32
        self._v6: Dict[Tuple[int, int, int], int] = {}  # -> index << 128
        self._d4: Dict[int, int] = {}  # daddr << 16 | dport -> index << 50
        self._d6: Dict[Tuple[int, int], int] = {}
        self._vtext: Dict[Tuple[str, str, int], Tuple[int, int]] = {}  # -> (af, shifted index)
        self._dtext: Dict[Tuple[str, int], int] = {}
        # Persistence netmasks of address services, by shifted virtual index (use_services).
        self._masks: Dict[int, int] = {}

    # ------------------------------------------------------------------ interning and clock

    def _ms(self, now: float) -> int:
        ms = int(now * 1000)
        if self._epoch is None:
            self._epoch = ms
        ms -= self._epoch
        return ms if ms > 0 else 0

    def _virtual(self, af: int, proto: int, vaddr: int, vport: int) -> int:
        """The shifted index of a virtual key (interned once, for the life of the table)."""
        ident = (af, proto, vaddr, vport)
        i = self._virtual_ids.get(ident)
        if i is None:
            i = self._virtual_ids[ident] = len(self._virtuals)
            self._virtuals.append((proto_name(proto), _addr_text(af, vaddr), vport, af, proto))
        return i << (32 if af == 4 else 128)

    def _dest(self, af: int, daddr: int, dport: int) -> int:
        ident = (af, daddr, dport)
        i = self._dest_ids.get(ident)
        if i is None:
            i = self._dest_ids[ident] = len(self._dests)
            self._dests.append((_addr_text(af, daddr), dport))
        return i << _DEST_SHIFT

    def _virtual_text(self, protocol: str, vaddr: str, vport: int) -> Tuple[int, int]:
        memo = (protocol, vaddr, vport)
        found = self._vtext.get(memo)
        if found is None:
            af, value = _addr_int(vaddr)
            proto = PROTO_NUMBERS.get(protocol)
            if proto is None:
                proto = _proto_number(protocol)
            found = self._vtext[memo] = (af, self._virtual(af, proto, value, vport))
        return found

    def _dest_text(self, daddr: str, dport: int) -> int:
        memo = (daddr, dport)
        found = self._dtext.get(memo)
        if found is None:
            af, value = _addr_int(daddr)
            found = self._dtext[memo] = self._dest(af, value, dport)
        return found

    def _key_text(self, protocol: str, caddr: str, vaddr: str, vport: int, client: bool) -> int:
        af, vs = self._virtual_text(protocol, vaddr, vport)
        caf, c = _addr_int(caddr)
        if caf != af:
            raise ValueError(f"client {caddr} and virtual address {vaddr} of different families")
        if client and self._masks:
            m = self._masks.get(vs)
            if m is not None:
                c &= m
        return vs | c if af == 4 else ~(vs | c)

    def _decode_key(self, key: int) -> Tuple[Tuple[str, str, int, int, int], str]:
        """(virtual key, client address text) of a template or client key."""
        if key >= 0:
            return self._virtuals[key >> 32], socket.inet_ntoa(_U32.pack(key & _M32))
        k = ~key
        return self._virtuals[k >> 128], ipv6_text((k & _M128).to_bytes(16, "big"))

    def _second(self, s: int) -> int:
        found = self._seconds.get(s)
        if found is None:
            found = self._seconds[s] = s
        return found

    def use_services(self, services: Sequence[Service]) -> None:
        """Key the clients of address services with a persistence netmask as their templates are
        keyed: masked (less memory when many clients share a network).

        Only address services: a connection of a fwmark service shows its packet's protocol,
        address and port, and `keeper.clients_in_use` counts it for every fwmark service of its
        family, each with its own netmask; masking it with one would hide it from the others.
        Clients heard before a netmask changed keep their old key until their deadline passes or
        a reconcile.
        """
        masks: Dict[int, int] = {}
        for svc in services:
            if svc.fwmark or not svc.addr or not svc.protocol:
                continue
            m = _netmask_int(svc)
            if m is not None:
                masks[self._virtual_text(svc.protocol, svc.addr, svc.port)[1]] = m
        self._masks = masks

    def use_timeouts(self, tcp: int = 0, tcpfin: int = 0, udp: int = 0) -> None:
        """The director's connection timeouts (netlink's, as `ipvsadm -l --timeout` shows
        them; 0: leave that one): how long a connection lives without a packet, for telling a
        master's new connections from its old ones (see the module docstring)."""
        if tcp or tcpfin:
            # ESTABLISHED and FIN_WAIT are settable; TIME_WAIT and the rest are 120 s or less
            cur = self._idle_ms[6] // 1000
            self._idle_ms[6] = max(tcp or cur, tcpfin, 120) * 1000
        if udp:
            self._idle_ms[17] = udp * 1000

    # ------------------------------------------------------------------ feeds

    def ingest(self, datagram: bytes, now: float, origin: Optional[str] = None) -> int:
        """Apply one sync datagram as a backup kernel would (design.md 3.3, 3.6): the number
        of entries applied. Never raises on bad bytes: counted in `stats`.

        `origin` is what /proc/net/ip_vs_conn_sync would show for an entry this datagram creates:
        "SYNC" for what a backup hears from the master, "LOCAL" for a master's own datagrams
        captured as they leave (its scheduler made those templates), None if unknown. An entry
        that exists keeps its origin, as the kernel keeps the flags of an entry it updates.
        """
        st = self.stats
        st.datagrams += 1
        if self.syncid and len(datagram) >= 2 and datagram[1] != self.syncid:
            st.other_syncid += 1
            return 0
        dec = feed.decode(datagram)
        if dec.error is not None:
            st.malformed += 1
            st.last_error = dec.error
        st.skipped += dec.skipped
        if not dec.rows:
            return 0
        obits = _ORIGIN_CODES.get(origin, 0) << _ORIGIN_SHIFT
        return self._apply(dec.rows, self._ms(now), obits)

    def _apply(self, rows: Iterable[Any], now_ms: int, obits: int) -> int:
        """The hot path: rows of feed.decode into the dicts. Written out, with locals, because
        it runs for every entry of the sync stream (measured by the source tree's
        bench_table.py)."""
        tpl, clients, seconds = self._tpl, self._clients, self._seconds
        v4, v6, d4, d6, masks = self._v4, self._v6, self._d4, self._d6, self._masks
        tw, cw = self._twheel, self._cwheel
        tbuckets, cbuckets = tw.buckets, cw.buckets
        num_states, state_timeouts = CONN_NUM_STATES, CONN_STATE_TIMEOUTS
        newbits = obits | (_GEN if self._gen else 0)
        genbit = newbits & _GEN
        touched = self._touched
        # What this director's own kernel sent as master: its timers run as its kernel's do
        captured = obits == _ORIGIN_CODES["LOCAL"] << _ORIGIN_SHIFT
        inbound, idle_ms = self._inbound, self._idle_ms
        new = updated = conns = skipped = 0
        for row in rows:
            if type(row) is not tuple:
                self._apply_pe(row, now_ms, newbits)
                continue
            et, proto, _, flags, state, cport, vport, dport, _, timeout, caddr, vaddr, daddr = row
            template = flags & IP_VS_CONN_F_TEMPLATE
            if template:
                if cport:
                    # Not what any kernel sends (a template has client port 0): kept out, it
                    # would show in /proc as a connection.
                    skipped += 1
                    continue
            else:
                ns = num_states.get(proto)
                if ns is None or state >= ns:
                    skipped += 1  # the kernel skips it: a protocol or state it does not know
                    continue
            # Checked first: what the kernel skips interns nothing.
            if et:
                vs = v6.get((proto, vaddr, vport))
                if vs is None:
                    vs = v6[(proto, vaddr, vport)] = self._virtual(6, proto, vaddr, vport)
            else:
                vk = (proto << 48) | (vaddr << 16) | vport
                vs = v4.get(vk)
                if vs is None:
                    vs = v4[vk] = self._virtual(4, proto, vaddr, vport)
            if template:
                key = ~(vs | caddr) if et else vs | caddr
                if timeout > _MAX_TIMEOUT_S:
                    timeout = _MAX_TIMEOUT_S
                dl = now_ms + (timeout or TEMPLATE_DEFAULT_TIMEOUT) * 1000
                st = _ASSURED if state == IP_VS_CTPL_S_ASSURED else (
                    0 if state == IP_VS_CTPL_S_NONE else 2 << _STATE_SHIFT
                )
                old = tpl.get(key)
                a = None
                if captured:
                    a = inbound.get(key)
                    ds = (now_ms + idle_ms.get(proto, 300000) + 999) // 1000
                    inbound[key] = seconds.get(ds) or self._second(ds)
                if old is not None:
                    odl = (old >> _DL_SHIFT) & _DL_MAX
                    if odl > now_ms:
                        if (captured and a is not None and a * 1000 > now_ms
                                and not (timeout == REARM_TIMEOUT
                                         and odl - now_ms <= REARM_WINDOW_MS)):
                            # a packet of a connection its kernel already had: the timer
                            # runs on (the module docstring)
                            dl = odl
                        # design.md 3.6: timeout and state, never the real server.
                        tpl[key] = (old & _KEEP_ON_UPDATE) | (dl << _DL_SHIFT) | st | genbit
                        if dl // 1000 < odl // 1000:
                            tw.add(dl // 1000, key)
                        updated += 1
                        continue
                    # Its deadline passed: the kernel has let it go; this one is new.
                if et:
                    d = d6.get((daddr, dport))
                    if d is None:
                        d = d6[(daddr, dport)] = self._dest(6, daddr, dport)
                else:
                    dk = (daddr << 16) | dport
                    d = d4.get(dk)
                    if d is None:
                        d = d4[dk] = self._dest(4, daddr, dport)
                tpl[key] = d | (dl << _DL_SHIFT) | newbits | st | (flags & _FWD)
                s = dl // 1000
                b = tbuckets.get(s)
                if b is None or s < tw.cursor:
                    tw.add(s, key)
                else:
                    b.append(key)
                new += 1
            else:
                if masks:
                    m = masks.get(vs)
                    if m is not None:
                        caddr &= m
                key = ~(vs | caddr) if et else vs | caddr
                if not timeout:
                    table = state_timeouts.get(proto)
                    timeout = table[state] if table and state < len(table) else CONN_DEFAULT_TIMEOUT
                elif timeout > _MAX_TIMEOUT_S:
                    timeout = _MAX_TIMEOUT_S
                ds = (now_ms + timeout * 1000 + 999) // 1000
                if touched is not None:
                    touched.add(key)
                if inbound:
                    a = inbound.get(key)
                    if a is not None and ds > a and a * 1000 > now_ms:
                        # The connection behind a template this director made as master, heard
                        # from the next master while it still lives: its kernel restarts that
                        # (linked) connection, so it goes on re-arming the template (the module
                        # docstring). Once that connection has ended, a message makes a new
                        # one, which no template controls (design.md 2.7): it re-arms nothing.
                        inbound[key] = seconds.get(ds) or self._second(ds)
                old = clients.get(key)
                if old is None or old * 1000 <= now_ms:
                    clients[key] = seconds.get(ds) or self._second(ds)
                    b = cbuckets.get(ds)
                    if b is None or ds < cw.cursor:
                        cw.add(ds, key)
                    else:
                        b.append(key)
                elif ds > old:
                    # Only ever later: see "A client's connection deadline only grows".
                    clients[key] = seconds.get(ds) or self._second(ds)
                conns += 1
        stats = self.stats
        stats.templates_new += new
        stats.templates_updated += updated
        stats.connections += conns
        stats.skipped += skipped
        stats.entries += new + updated + conns
        return new + updated + conns

    def _apply_pe(self, pe: feed.PeRow, now_ms: int, newbits: int) -> None:
        """An entry with PE data: rare (SIP), so the general path."""
        et, proto, _, flags, state, cport, vport, dport, _, timeout, caddr, vaddr, daddr = pe.row
        if not flags & IP_VS_CONN_F_TEMPLATE:
            # A connection: the client key ignores PE data, as conntable's counts do.
            self._apply([pe.row], now_ms, newbits & _ORIGIN)
            return
        if cport:
            self.stats.skipped += 1
            return
        af = 6 if et else 4
        vs = self._virtual(af, proto, vaddr, vport)
        key = (~(vs | caddr) if et else vs | caddr, pe.pe_name, pe.pe_data)
        timeout = min(timeout or TEMPLATE_DEFAULT_TIMEOUT, _MAX_TIMEOUT_S)
        st = min(state, 2) << _STATE_SHIFT
        dest = self._dest(af, daddr, dport)
        self._put(self._pe, key, now_ms + timeout * 1000, st, now_ms, dest,
                  (flags & _FWD) | newbits, False)
        self.stats.entries += 1

    def _put(
        self, d: Dict[Any, int], key: Any, dl: int, st: int, now_ms: int, dest: int, bits: int,
        repoint: bool,
    ) -> bool:
        """Create or update one template; True if it was new (or re-pointed)."""
        old = d.get(key)
        if old is not None and not repoint:
            odl = (old >> _DL_SHIFT) & _DL_MAX
            if odl > now_ms:
                d[key] = (old & _KEEP_ON_UPDATE) | (dl << _DL_SHIFT) | st | (bits & _GEN)
                if dl // 1000 < odl // 1000:
                    self._twheel.add(dl // 1000, key)
                self.stats.templates_updated += 1
                return False
        d[key] = dest | (dl << _DL_SHIFT) | bits | st
        self._twheel.add(dl // 1000, key)
        self.stats.templates_new += 1
        return True

    def note_injected(self, planned: Iterable[PlannedTemplate], now: float) -> int:
        """What lvs-hooks sent into this kernel (the inject path, design.md 5.3): the number
        of templates taken.

        The kernel takes them as any sync message (design.md 3.6): a template that exists
        keeps its real server and gets the new timeout and state ASSURED (what lvs-hooks sends).
        A template planned with `replace` is re-pointed: the inject path expired the old one first
        (a 1 s send, then a wait until it is gone, design.md 5.3 step 5). A template sent with
        timeout 1 to make it expire (the fwmark repair, the first half of a replace) is noted like
        any other: it then ends within a second here as in the kernel. New templates show as SYNC:
        the kernel cannot tell an injected entry from a synced one (design.md 2.3).
        """
        now_ms = self._ms(now)
        gen = _GEN if self._gen else 0
        sync = _ORIGIN_CODES["SYNC"] << _ORIGIN_SHIFT
        n = 0
        for p in planned:
            try:
                key = self._key_text(p.protocol, p.caddr, p.vaddr, p.vport, client=False)
            except (ValueError, OSError, KeyError):
                self.stats.skipped += 1
                continue
            timeout = min(p.timeout or TEMPLATE_DEFAULT_TIMEOUT, _MAX_TIMEOUT_S)
            fwd = FWD_METHODS.get(p.fwd_method, 0)
            try:
                dest = self._dest_text(p.daddr, p.dport)
            except (ValueError, OSError):
                self.stats.skipped += 1
                continue
            d: Dict[Any, int] = self._tpl
            k: Any = key
            if p.pe_data:
                d, k = self._pe, (key, p.pe_name, p.pe_data)
            self._put(d, k, now_ms + timeout * 1000, _ASSURED, now_ms, dest, fwd | sync | gen,
                      p.replace)
            n += 1
        return n

    def begin_reconcile(self) -> None:
        """Call before the read of /proc that `reconcile` will take: from now on what the stream
        brings is marked as heard, and a read that started before it came (or that the kernel's
        position-based walk skipped, design.md 2.4) cannot drop it."""
        self._gen ^= 1
        self._touched = set()

    def abandon_reconcile(self) -> None:
        """After begin_reconcile, when a read did not come (abandoned past its caller's budget,
        or failed), or after reconcile(drop=False) when the second read did not: every template
        counts as of the current generation, as between two reconciliations. Without this, what
        the stream did not mark meanwhile would carry the older bit, which the next
        begin_reconcile makes the current one again, and that reconciliation could not drop it.
        One pass over the templates, on a path taken only when a read fails."""
        self._touched = None
        gen_bit = _GEN if self._gen else 0
        tables: Tuple[Dict[Any, int], ...] = (self._tpl, self._pe)
        for d in tables:
            for k, v in d.items():
                if (v & _GEN) != gen_bit:
                    d[k] = v ^ _GEN

    def reconcile(
        self, entries: Iterable[ConnEntry], now: float, *, with_connections: bool = True,
        tolerance: float = 2.0, begun: bool = False, drop: bool = True,
    ) -> ReconcileReport:
        """Replace what the table holds with a read of /proc (ConnTable.entries): the figures
        of how far it was.

        `begun`: begin_reconcile() was called before the read (else the read is taken as of
        now). A template neither shown by the read nor heard of since the read began is
        `unseen`: with `drop` it is dropped at once, else it waits for `drop_unseen` and a
        second read (a read of a changing table can skip entries: each read() walks the hash
        table to its position again, so an entry that left before the position moves the
        rest back by one). Clients the stream updated during the read keep their deadline.

        Templates are what /proc shows (ConnEntry.is_template, as the planners take them), with
        `expires` as their time left: a deadline already within that second is kept, else set to
        its start (the early side); one the stream restarted since the read began keeps the
        later of the two (the kernel may have taken that message after the read passed it).
        The forwarding method, which /proc does not show, is kept for a template that stays,
        else 0 (MASQ); the origin is /proc's (ip_vs_conn_sync), else kept. With
        `with_connections` the client deadlines are rebuilt from the connections of the read,
        each client getting its longest; without (a templates-only read), they are left as they
        are.
        """
        if not begun:
            self.begin_reconcile()
        touched, self._touched = self._touched or set(), None
        now_ms = self._ms(now)
        tol_ms = int(tolerance * 1000)
        rep = ReconcileReport()
        gen_bit = _GEN if self._gen else 0
        fresh: Optional[Dict[int, int]] = {} if with_connections else None
        with _gc_paused():
            for e in entries:
                if not e.is_template:
                    if fresh is not None:
                        self._reconcile_client(fresh, e, now_ms)
                    continue
                rep.templates += 1
                slot = self._slot(e)
                if slot is None:
                    continue
                d, k = slot
                try:
                    dest = self._dest_text(e.daddr, e.dport)
                except (ValueError, OSError, KeyError):
                    continue
                st = _STATE_CODES.get(e.state, 2) << _STATE_SHIFT
                lo = now_ms + max(0, int(e.expires)) * 1000
                old = d.get(k)
                if old is not None and ((old >> _DL_SHIFT) & _DL_MAX) <= now_ms:
                    old = None  # ended here; /proc says it lives on
                origin = _ORIGIN_CODES.get(e.origin, 0) << _ORIGIN_SHIFT
                if old is None:
                    rep.added += 1
                    rep._example("added", _describe(e))
                    d[k] = dest | (lo << _DL_SHIFT) | origin | gen_bit | st
                    self._twheel.add(lo // 1000, k)
                    continue
                odl = (old >> _DL_SHIFT) & _DL_MAX
                if (old & _GEN) == gen_bit and odl > lo:
                    # the stream brought it during the read, after the read passed it: a
                    # message only ever restarts a timer, so the later end is the kernel's now
                    dl = odl
                else:
                    dl = odl if lo <= odl < lo + 1000 else lo
                if (old & ~((1 << _DEST_SHIFT) - 1)) != dest or (old & _STATE) != st:
                    rep.changed += 1
                    rep._example("changed", _describe(e))
                elif abs(odl - lo) > tol_ms:
                    rep.retimed += 1
                    rep._example("retimed", f"{_describe(e)}: table {(odl - now_ms) // 1000} s")
                else:
                    rep.same += 1
                if not origin:
                    origin = old & _ORIGIN
                d[k] = dest | (dl << _DL_SHIFT) | origin | gen_bit | st | (old & _FWD)
                if dl // 1000 < odl // 1000:
                    self._twheel.add(dl // 1000, k)
            if drop:
                rep.dropped = self._sweep(now_ms, rep)
            else:
                rep.unseen = sum(
                    1 for d in (self._tpl, self._pe) for v in d.values()
                    if (v & _GEN) != gen_bit and ((v >> _DL_SHIFT) & _DL_MAX) > now_ms
                )
        if fresh is not None:
            old_clients = self._clients
            alive = {k for k, v in old_clients.items() if v * 1000 > now_ms}
            for k in touched:  # heard during the read: the later of the two deadlines
                v = old_clients.get(k)
                if v is not None and v * 1000 > now_ms and v > fresh.get(k, 0):
                    fresh[k] = v
            rep.clients = len(fresh)
            rep.clients_added = sum(1 for k in fresh if k not in alive)
            rep.clients_dropped = sum(1 for k in alive if k not in fresh)
            self._clients = fresh
            self._cwheel = _Wheel()
            self._cwheel.cursor = now_ms // 1000
            for k, v in fresh.items():
                self._cwheel.add(v, k)
        return rep

    def drop_unseen(self, entries: Iterable[ConnEntry], now: float) -> ReconcileReport:
        """After `reconcile(drop=False)`: drop the unseen templates that this second read does
        not show either, and that the stream has not brought since; the figures (`dropped`)."""
        now_ms = self._ms(now)
        gen_bit = _GEN if self._gen else 0
        rep = ReconcileReport()
        for e in entries:
            slot = self._slot(e) if e.is_template else None
            if slot is None:
                continue
            d, k = slot
            v = d.get(k)
            if v is not None:
                d[k] = v | _GEN if gen_bit else v & ~_GEN
        rep.dropped = self._sweep(now_ms, rep)
        return rep

    def _slot(self, e: ConnEntry) -> Optional[Tuple[Dict[Any, int], Any]]:
        """Where a template read from /proc lives here: its dict and key (None: one that no
        key can be made of)."""
        try:
            key = self._key_text(e.protocol, e.caddr, e.vaddr, e.vport, client=False)
        except (ValueError, OSError, KeyError):
            return None
        if e.pe_name or e.pe_data:
            return self._pe, (key, e.pe_name, e.pe_data)
        return self._tpl, key

    def _sweep(self, now_ms: int, rep: ReconcileReport) -> int:
        """Delete the templates not marked in the current generation: the number that had
        not ended yet (the others were gone for every query already)."""
        gen_bit = _GEN if self._gen else 0
        n = 0
        tables: Tuple[Dict[Any, int], ...] = (self._tpl, self._pe)
        for d in tables:
            gone = [k for k, v in d.items() if (v & _GEN) != gen_bit]
            for k in gone:
                if ((d[k] >> _DL_SHIFT) & _DL_MAX) > now_ms:
                    n += 1
                    rep._example("dropped", self._describe_key(k, d[k]))
                del d[k]
                self._inbound.pop(k, None)
        return n

    def _reconcile_client(self, fresh: Dict[int, int], e: ConnEntry, now_ms: int) -> None:
        try:
            key = self._key_text(e.protocol, e.caddr, e.vaddr, e.vport, client=True)
        except (ValueError, OSError, KeyError):
            return
        # /proc's whole seconds left, rounded down: the connection lives at least that long.
        ds = (now_ms + max(0, int(e.expires)) * 1000 + 999) // 1000
        old = fresh.get(key)
        if old is None or ds > old:
            fresh[key] = self._second(ds)

    def expire(self, now: float) -> Expired:
        """Let go of what has ended (the queries already leave it out). Amortised: only the wheel
        buckets that came due since the last call are looked at, and the current second's."""
        now_ms = self._ms(now)
        limit = now_ms // 1000  # the buckets before it hold deadlines all <= now
        tw = self._twheel
        gone_t = 0
        for keys in tw.due(limit):
            gone_t += self._expire_templates(keys, now_ms, None)
        current = tw.buckets.get(limit)
        if current:
            # This second's bucket holds both: keep the rest where they are.
            keep: List[Any] = []
            gone_t += self._expire_templates(current, now_ms, keep)
            tw.buckets[limit] = keep
        clients, cw = self._clients, self._cwheel
        gone_c = 0
        # A client deadline is a whole second: the bucket of this second is due in full.
        for keys in cw.due(limit + 1):
            for k in keys:
                v = clients.get(k)
                if v is None:
                    continue  # gone already, or a second reference
                if v * 1000 <= now_ms:
                    del clients[k]
                    gone_c += 1
                else:
                    cw.add(v, k)  # moved later since it was filed
        if len(self._seconds) > 4096:
            self._seconds = {s: s for s in self._seconds.values() if s * 1000 > now_ms}
        return Expired(gone_t, gone_c)

    def _expire_templates(self, keys: List[Any], now_ms: int, keep: Optional[List[Any]]) -> int:
        """Drop the ended templates among `keys`; file the others again (or in `keep`, those
        that still end in this bucket's second)."""
        tpl, pe, tw, inbound = self._tpl, self._pe, self._twheel, self._inbound
        gone = 0
        for k in keys:
            d = pe if type(k) is tuple else tpl
            v = d.get(k)
            if v is None:
                continue  # gone already, or a second reference
            dl = (v >> _DL_SHIFT) & _DL_MAX
            if dl <= now_ms:
                a = inbound.get(k)
                if a is not None and a * 1000 > dl:
                    # ip_vs_conn_expire: the connection behind its last packet was still
                    # attached when its timer fired: re-armed for 60 s, again while it lives
                    # (a master sends it then; a director that is master no longer does not)
                    while a * 1000 > dl:
                        dl += REARM_TIMEOUT * 1000
                    if dl > now_ms:
                        d[k] = (v & ~_DL) | (dl << _DL_SHIFT)
                        tw.add(dl // 1000, k)
                        continue
                del d[k]
                inbound.pop(k, None)
                gone += 1
            elif keep is not None and dl // 1000 == now_ms // 1000:
                keep.append(k)
            else:
                tw.add(dl // 1000, k)  # moved later since it was filed
        return gone

    # ------------------------------------------------------------------ queries

    def __len__(self) -> int:
        """Templates held, those past their deadline included until `expire` lets them go."""
        return len(self._tpl) + len(self._pe)

    @property
    def client_keys(self) -> int:
        """Client keys held (same caveat as len())."""
        return len(self._clients)

    def templates(self, now: float, below: Optional[float] = None) -> Iterator[ConnEntry]:
        """The live templates as conntable parses them from /proc: `expires` the whole seconds
        left (rounded down), `origin` "SYNC" or "LOCAL" when known, else None. Templates without
        PE data first, in the order they came, then those with.

        `below`: only those with less than `below` seconds left (what the keeper acts on), found
        through the wheel without a scan of the whole table. The table must not change while the
        iterator runs.
        """
        now_ms = self._ms(now)
        if below is None:
            main: Tuple[Iterable[int], Iterable[int]] = (self._tpl.keys(), self._tpl.values())
            pes: Iterable[Tuple[Tuple[int, str, str], int]] = self._pe.items()
        else:
            found, pes = self._expiring(now_ms, int(below * 1000))
            main = ([k for k, _ in found], [v for _, v in found])
        # Lists a chunk at a time, chained in C: no generator frame per entry.
        return chain(
            chain.from_iterable(self._entry_chunks(main[0], main[1], now_ms)),
            self._pe_entries(pes, now_ms),
        )

    def templates_of_clients(
        self, now: float, addrs: Iterable[str],
        entries: Optional[Tuple[List[Tuple[int, int]], List[Tuple[Any, int]]]] = None,
    ) -> List[ConnEntry]:
        """The live templates whose client is one of `addrs` (canonical address texts; a
        template of a service with a persistence netmask holds the masked one): one pass over
        the keys, the entries built for those only. `entries`: as templates'."""
        now_ms = self._ms(now)
        v4: Set[int] = set()
        v6: Set[int] = set()
        for a in addrs:
            af, value = _addr_int(a)
            (v4 if af == 4 else v6).add(value)
        tpl_items, pe_items = entries if entries is not None else (
            list(self._tpl.items()), list(self._pe.items())
        )

        def wanted(k: int) -> bool:
            return (k & _M32) in v4 if k >= 0 else ((~k) & _M128) in v6

        found = [(k, v) for k, v in tpl_items if wanted(k)]
        pes = [(k, v) for k, v in pe_items if wanted(k[0])]
        return list(chain(
            chain.from_iterable(
                self._entry_chunks([k for k, _ in found], [v for _, v in found], now_ms)
            ),
            self._pe_entries(pes, now_ms),
        ))

    def templates_of(self, now: float, protocol: str) -> Iterator[ConnEntry]:
        """The live templates of virtual services of one protocol as /proc names it ("IP":
        those of fwmark services, which the kernel's own sync leaves unbound): nothing to scan
        when the table has no such service, else one pass over the keys without building the
        other entries."""
        now_ms = self._ms(now)
        wanted = {i for i, v in enumerate(self._virtuals) if v[0] == protocol}
        if not wanted:
            return iter(())
        keys: List[int] = []
        values: List[int] = []
        for k, v in self._tpl.items():
            i = (~k) >> 128 if k < 0 else k >> 32
            if i in wanted:
                keys.append(k)
                values.append(v)
        pes = [(k, v) for k, v in self._pe.items()
               if ((~k[0]) >> 128 if k[0] < 0 else k[0] >> 32) in wanted]
        return chain(
            chain.from_iterable(self._entry_chunks(keys, values, now_ms)),
            self._pe_entries(pes, now_ms),
        )

    def _expiring(self, now_ms: int, below_ms: int) -> Tuple[List[Tuple[int, int]], List[Any]]:
        """The live templates with less than `below_ms` left, from the wheel: each has a
        reference in a bucket no later than its deadline's."""
        seen = set()
        main: List[Tuple[int, int]] = []
        pes: List[Tuple[Tuple[int, str, str], int]] = []
        for k in self._twheel.scan((now_ms + below_ms) // 1000 + 1):
            if k in seen:
                continue
            seen.add(k)
            d = self._pe if type(k) is tuple else self._tpl
            v = d.get(k)
            if v is not None and now_ms < ((v >> _DL_SHIFT) & _DL_MAX) < now_ms + below_ms:
                (pes if d is self._pe else main).append((k, v))
        return main, pes

    def _entry_chunks(
        self, keys: Iterable[int], values: Iterable[int], now_ms: int
    ) -> Iterator[List[ConnEntry]]:
        """ConnEntry lists of the live templates among (keys, values), a chunk at a time."""
        ks, vs = iter(keys), iter(values)
        while True:
            k = list(islice(ks, _CHUNK))
            if not k:
                return
            v = list(islice(vs, _CHUNK))
            with _gc_paused():
                if k[0] >= 0 and min(k) >= 0:
                    out = self._ipv4_entries(k, v, now_ms)
                else:
                    out = self._any_entries(k, v, now_ms)
            yield out

    def _ipv4_entries(self, keys: List[int], values: List[int], now_ms: int) -> List[ConnEntry]:
        """A chunk of IPv4 templates, a column at a time (map over C functions, as conntable
        converts its lines): the usual table, a third faster than an entry at a time."""
        dls = list(map(and_, map(rshift, values, repeat(_DL_SHIFT)), repeat(_DL_MAX)))
        live = list(map(gt, dls, repeat(now_ms)))
        if not all(live):
            keys, values, dls = (list(compress(c, live)) for c in (keys, values, dls))
        names, vaddrs, vports = self._virtual_columns()
        daddrs = [d for d, _ in self._dests]
        dports = [p for _, p in self._dests]
        vi = list(map(rshift, keys, repeat(32)))
        di = list(map(rshift, values, repeat(_DEST_SHIFT)))
        rows = zip(
            map(names.__getitem__, vi),
            map(socket.inet_ntoa, map(_U32.pack, map(and_, keys, repeat(_M32)))),
            repeat(0),
            map(vaddrs.__getitem__, vi),
            map(vports.__getitem__, vi),
            map(daddrs.__getitem__, di),
            map(dports.__getitem__, di),
            map(_STATE_NAMES.__getitem__, map(rshift, map(and_, values, repeat(_STATE)),
                                               repeat(_STATE_SHIFT))),
            map(floordiv, map(sub, dls, repeat(now_ms)), repeat(1000)),
            repeat(""),
            repeat(""),
            map(_ORIGINS.__getitem__, map(rshift, map(and_, values, repeat(_ORIGIN)),
                                          repeat(_ORIGIN_SHIFT))),
        )
        return list(map(partial(tuple.__new__, ConnEntry), rows))

    def _virtual_columns(self) -> Tuple[List[str], List[str], List[int]]:
        v = self._virtuals
        return [x[0] for x in v], [x[1] for x in v], [x[2] for x in v]

    def _any_entries(self, keys: List[int], values: List[int], now_ms: int) -> List[ConnEntry]:
        """A chunk with IPv6 templates: an entry at a time."""
        virtuals, dests = self._virtuals, self._dests
        new = tuple.__new__
        ntoa, pack, v6text = socket.inet_ntoa, _U32.pack, ipv6_text
        out = []
        for key, v in zip(keys, values):
            dl = (v >> _DL_SHIFT) & _DL_MAX
            if dl <= now_ms:
                continue
            if key >= 0:
                vs = virtuals[key >> 32]
                caddr = ntoa(pack(key & _M32))
            else:
                k = ~key
                vs = virtuals[k >> 128]
                caddr = v6text((k & _M128).to_bytes(16, "big"))
            daddr, dport = dests[v >> _DEST_SHIFT]
            out.append(new(ConnEntry, (
                vs[0], caddr, 0, vs[1], vs[2], daddr, dport,
                _STATE_NAMES[(v & _STATE) >> _STATE_SHIFT], (dl - now_ms) // 1000,
                "", "", _ORIGINS[(v & _ORIGIN) >> _ORIGIN_SHIFT],
            )))
        return out

    def _pe_entries(
        self, items: Iterable[Tuple[Tuple[int, str, str], int]], now_ms: int
    ) -> Iterator[ConnEntry]:
        for (key, pe_name, pe_data), v in items:
            for e in self._any_entries([key], [v], now_ms):
                yield e._replace(pe_name=pe_name, pe_data=pe_data)

    def entries(self) -> Tuple[List[Tuple[int, int]], List[Tuple[Any, int]]]:
        """A copy of what the table holds, for `json_rows` to render without the caller's lock:
        the copy is quick, the rendering is not (seconds for a million templates), and the
        feeds must not wait for it."""
        return list(self._tpl.items()), list(self._pe.items())

    def json_rows(
        self, now: float,
        entries: Optional[Tuple[List[Tuple[int, int]], List[Tuple[Any, int]]]] = None,
    ) -> Iterator[Tuple[int, str]]:
        """The live templates as the rows of a snapshot body (snapshot.TEMPLATE_COLUMNS, compact
        JSON), in the order of templates(): (rows, the rows comma-joined) a chunk at a time.
        `entries`: a copy taken by `entries()` (then the table may change meanwhile: the
        interned virtual keys and real servers only grow), else the table itself.

        What snapshot.encode writes for the entries templates() gives, without building them:
        the parts of a row that come from the interned virtual keys, real servers, states and
        origins are rendered once by json.dumps, and an address is plain ASCII that JSON quotes
        as is. Rows with PE data (free text) go through json.dumps whole.
        """
        now_ms = self._ms(now)
        dumps = json.dumps
        heads = [("[" + dumps(v[0]) + ',"', '",' + dumps(v[1]) + "," + str(v[2]) + ",")
                 for v in self._virtuals]
        dests = [dumps(d) + "," + str(p) + "," for d, p in self._dests]
        states = [dumps(n) + "," for n in _STATE_NAMES]
        tails = [',"","",' + dumps(o) + "]" for o in _ORIGINS]
        ntoa, pack, v6text = socket.inet_ntoa, _U32.pack, ipv6_text
        tpl_items, pe_items = entries if entries is not None else (self._tpl.items(),
                                                                   self._pe.items())
        it = iter(tpl_items)
        while True:
            chunk = list(islice(it, _CHUNK))
            if not chunk:
                break
            rows = []
            for key, v in chunk:
                dl = (v >> _DL_SHIFT) & _DL_MAX
                if dl <= now_ms:
                    continue
                if key >= 0:
                    a, b = heads[key >> 32]
                    caddr = ntoa(pack(key & _M32))
                else:
                    k = ~key
                    a, b = heads[k >> 128]
                    caddr = v6text((k & _M128).to_bytes(16, "big"))
                rows.append(
                    f"{a}{caddr}{b}{dests[v >> _DEST_SHIFT]}"
                    f"{states[(v & _STATE) >> _STATE_SHIFT]}{(dl - now_ms) // 1000}"
                    f"{tails[(v & _ORIGIN) >> _ORIGIN_SHIFT]}"
                )
            if rows:
                yield len(rows), ",".join(rows)
        pe_rows = [
            dumps(list(e[:2]) + list(e[3:]), separators=(",", ":"), allow_nan=False)
            for e in self._pe_entries(pe_items, now_ms)
        ]
        if pe_rows:
            yield len(pe_rows), ",".join(pe_rows)

    def client_counts(self, now: float) -> Dict[ClientKey, int]:
        """Clients with a connection still alive, as conntable.count_connections_by_client keys
        them: (client address, (protocol, vaddr, vport)) of the connection, 1 each (the table
        knows that there is one, not how many). The client address is masked for address
        services with a persistence netmask (use_services); `keeper.clients_in_use` masks it
        again, to the same value."""
        return self._live_clients(now, ends=False)

    def client_ends(self, now: float) -> Dict[ClientKey, float]:
        """client_counts' clients, each with the seconds until the last of its connections heard
        of ends if idle (whole seconds of the deadline, so up to 1 s late)."""
        return self._live_clients(now, ends=True)

    def _live_clients(self, now: float, ends: bool) -> Dict[ClientKey, Any]:
        """The one loop of client_counts (1 each) and client_ends (seconds left). The keeper asks
        client_counts every interval: made from client_ends' dict it took half as long again
        (200,000 clients: 189 ms against 126); through this flag, 125 ms."""
        now_ms = self._ms(now)
        now_s = now_ms / 1000
        out: Dict[ClientKey, Any] = {}
        # The service part of each key once per virtual key, shared by its clients.
        services = [(name, vaddr, vport) for name, vaddr, vport, _, _ in self._virtuals]
        ntoa, pack, v6text = socket.inet_ntoa, _U32.pack, ipv6_text
        with _gc_paused():
            for key, ds in self._clients.items():
                if ds * 1000 <= now_ms:
                    continue
                if key >= 0:
                    k = (ntoa(pack(key & _M32)), services[key >> 32])
                else:
                    k6 = ~key
                    k = (v6text((k6 & _M128).to_bytes(16, "big")), services[k6 >> 128])
                out[k] = ds - now_s if ends else 1
        return out

    def counts_by_dest(self, now: Optional[float] = None) -> Dict[Tuple[Tuple, str, int], int]:
        """Templates per (service key as Service.key(), real server address, port), for a
        comparison with netlink's per-real-server PERSIST_CONNS (kernel/netlink.DestCounts).
        The real server is the one the template names: a fwmark template from a kernel master
        names port 0 (design.md 3.7), and the kernel counts only bound templates. With `now`,
        only live ones."""
        now_ms = None if now is None else self._ms(now)
        pairs: Counter = Counter()
        for key, v in self._tpl.items():
            if now_ms is not None and ((v >> _DL_SHIFT) & _DL_MAX) <= now_ms:
                continue
            vi = key >> 32 if key >= 0 else ~key >> 128
            pairs[(vi, v >> _DEST_SHIFT)] += 1
        for (key, _, _), v in self._pe.items():
            if now_ms is not None and ((v >> _DL_SHIFT) & _DL_MAX) <= now_ms:
                continue
            vi = key >> 32 if key >= 0 else ~key >> 128
            pairs[(vi, v >> _DEST_SHIFT)] += 1
        out: Dict[Tuple[Tuple, str, int], int] = {}
        for (vi, di), n in pairs.items():
            skey = self.service_key(vi)
            daddr, dport = self._dests[di]
            out[(skey, daddr, dport)] = out.get((skey, daddr, dport), 0) + n
        return out

    def counts_by_dest_origin(self, now: float) -> Dict[Tuple[Tuple, str, int, str], int]:
        """Live templates per (service key, real server address, port, origin as /proc's
        ip_vs_conn_sync shows it, "?" when unknown): what `status` reports, without building
        an entry per template."""
        now_ms = self._ms(now)
        counts: Counter = Counter()
        for items in (self._tpl.items(), ((k[0], v) for k, v in self._pe.items())):
            for key, v in items:
                if ((v >> _DL_SHIFT) & _DL_MAX) <= now_ms:
                    continue
                vi = key >> 32 if key >= 0 else ~key >> 128
                counts[(vi, v >> _DEST_SHIFT, (v & _ORIGIN) >> _ORIGIN_SHIFT)] += 1
        names = {code: name or "?" for name, code in _ORIGIN_CODES.items()}
        out: Dict[Tuple[Tuple, str, int, str], int] = {}
        for (vi, di, oi), n in counts.items():
            daddr, dport = self._dests[di]
            k = (self.service_key(vi), daddr, dport, names.get(oi, "?"))
            out[k] = out.get(k, 0) + n
        return out

    def service_key(self, virtual_index: int) -> Tuple:
        """ConnEntry.service_key() of an interned virtual key."""
        name, vaddr, vport, af, proto = self._virtuals[virtual_index]
        if proto == 0:
            value = _addr_int(vaddr)[1]
            return ("fwmark", af, value if af == 4 else value >> 96)
        return (name, vaddr, vport)

    def dump(
        self,
        services: Iterable[Service],
        now: float,
        host: Optional[str] = None,
        captured_at: Optional[float] = None,
    ) -> Snapshot:
        """A snapshot generation of the live templates, for SnapshotStore.save (the periodic
        snapshot without a read of /proc). `captured_at` is wall-clock time (Snapshot.capture
        takes time.time() if None); `now` the table's monotonic clock."""
        return Snapshot.capture(services, self.templates(now), host=host, captured_at=captured_at)

    # ------------------------------------------------------------------ for reports

    def _describe_key(self, k: Any, v: int) -> str:
        key = k[0] if type(k) is tuple else k
        vs, caddr = self._decode_key(key)
        daddr, dport = self._dests[v >> _DEST_SHIFT]
        return f"{vs[0]} {caddr} -> {vs[1]}:{vs[2]} -> {daddr}:{dport}"

    def footprint(self) -> dict:
        """Sizes of the parts, for a status line and the bench."""
        return {
            "templates": len(self._tpl),
            "pe_templates": len(self._pe),
            "client_keys": len(self._clients),
            "inbound": len(self._inbound),  # a master's own templates' connection ends
            "virtual_keys": len(self._virtuals),
            "real_servers": len(self._dests),
            "wheel_refs": self._twheel.refs() + self._cwheel.refs(),
        }


def _describe(e: ConnEntry) -> str:
    return f"{e.protocol} {e.caddr} -> {e.vaddr}:{e.vport} -> {e.daddr}:{e.dport}"


def _proto_number(name: str) -> int:
    """The inverse of proto_name for the names /proc prints beyond PROTO_NUMBERS."""
    if name == "ICMPv6":
        return socket.IPPROTO_ICMPV6
    if name.startswith("IP_") and name[3:].isdigit():
        return int(name[3:])
    raise KeyError(name)


__all__ = [
    "CONN_NUM_STATES",
    "CONN_STATE_TIMEOUTS",
    "Expired",
    "FeedStats",
    "ReconcileReport",
    "TEMPLATE_DEFAULT_TIMEOUT",
    "TemplateTable",
    "proto_name",
]
