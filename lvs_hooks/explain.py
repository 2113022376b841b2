"""`lvs-hooks explain`: why each persistence template exists and when it ends.

The kernel facts behind every sentence (design.md section 2, net/netfilter/ipvs/ip_vs_conn.c):

- A template gets its timeout when it is made: the service's persistence_timeout when the kernel
  schedules a client's first connection (LOCAL), the timeout carried by the sync message when it
  comes from a master daemon (SYNC; protocol v1), 180 s for a version-0 message, or whatever
  value was injected (lvs-hooks reseed and keeper inject through the sync path: SYNC too).
- Every new connection scheduled through the template restarts its timer at that timeout.
  Packets of existing connections do not.
- When the timer fires while the template still controls connections, ip_vs_conn_expire re-arms
  it with a hard-coded 60 s and sets its timeout to 60 s for good (every kernel version).
- Otherwise it is removed, and the client's next connection is scheduled afresh. A template
  that is not ASSURED (the real server never answered through it) goes early only with a
  connection the kernel expires at once (timeout 0); one that ends normally leaves it to its
  timer (lab, 6.1: a NONE template outlived its UDP connection).
- Connections that came by sync are never linked to a template (ip_vs_proc_conn): a synced
  template controls only connections this director scheduled itself through it.

/proc/net/ip_vs_conn shows the time left in whole seconds, rounded down; which of these timeouts
a template holds is not shown and is inferred here, saying so where it cannot be told.

`explain` is pure (plain values in, a JSON-ready report out: `cli.emit` writes the one sequence
in it that is not a list, ControlledConnections, as a list); `build_explanation` reads the
kernel, or the agent's table in memory over table.read_budget (explain_table); `explanation_lines`
(or `render_explanation`, at once) writes it as text.
"""

import gc
import gzip
import logging
import math
import os
import re
import time
from dataclasses import dataclass
from typing import (
    Callable,
    Dict,
    Iterable,
    Iterator,
    List,
    Mapping,
    Optional,
    Sequence,
    Set,
    Tuple,
    Union,
)

from lvs_hooks.config import Config
from lvs_hooks.director import ledger
from lvs_hooks.director.ledger import Injection
from lvs_hooks.explain_table import TableInput
from lvs_hooks.kernel.conntable import gc_paused, read_conn_table
from lvs_hooks.kernel.model import (
    ConnEntry,
    Service,
    TemplateKey,
    canonical_addr_or_same,
    host_port,
    netmask_is_full,
    template_client,
    template_key,
    templates_of_client,
)
from lvs_hooks.kernel.netlink import IPVS

log = logging.getLogger(__name__)

REARM_SECONDS = 60  # ip_vs_conn_expire: cp->timeout = 60*HZ
SYNC_V0_TEMPLATE_SECONDS = 180  # ip_vs_proc_conn: a v0 message carries no timeout
SYNC_V1_SINCE = (2, 6, 38)  # protocol version 1 (timeouts, fwmark, IPv6 in sync messages)

# The kernel's fixed TCP state timeouts (ip_vs_proto_tcp.c tcp_timeouts); `ipvsadm --set`
# changes ESTABLISHED (tcp), FIN_WAIT (tcpfin) and UDP only.
TCP_STATE_TIMEOUTS = {
    "NONE": 2,
    "SYN_SENT": 120,
    "SYN_RECV": 60,
    "TIME_WAIT": 120,
    "CLOSE": 10,
    "CLOSE_WAIT": 60,
    "LAST_ACK": 30,
    "LISTEN": 120,
    "SYNACK": 120,
}

# The ledger of injected templates (director.ledger) tells them from synced ones.
load_injections = ledger.load


# ---- kernel versions --------------------------------------------------------------------------


def parse_release(release: Optional[str]) -> Optional[Tuple[int, ...]]:
    """(6, 1, 0) for "6.1.0-56-amd64", (2, 6, 32) for "2.6.32-71.el6.x86_64"."""
    if not release:
        return None
    m = re.match(r"^(\d+)\.(\d+)(?:\.(\d+))?", release)
    if not m:
        return None
    return tuple(int(x) for x in m.groups() if x is not None)


def kernel_notes(
    release: Optional[str],
    sysctls: Mapping[str, str],
    has_origin: bool,
    clock: Optional["Clock"] = None,
) -> List[str]:
    """What of the explanation depends on this kernel, said once per report."""
    notes = [
        f"re-arm at {REARM_SECONDS} s while a template controls connections: every kernel "
        "version (ip_vs_conn_expire)"
    ]
    version = parse_release(release)
    if version is not None and version < SYNC_V1_SINCE:
        notes.append(
            f"kernel {release} speaks sync protocol version 0 only (version 1 came with "
            f"Linux 2.6.38): a backup gives every synced template {SYNC_V0_TEMPLATE_SECONDS} s, "
            "and fwmark and IPv6 templates are not synced at all"
        )
    elif sysctls.get("sync_version", "").strip() == "0":
        notes.append(
            "net.ipv4.vs.sync_version is 0 here: as master this director sends version-0 "
            f"messages, which give templates {SYNC_V0_TEMPLATE_SECONDS} s on its backups"
        )
    elif release:
        notes.append(
            f"kernel {release}: sync protocol version 1, a synced template gets the timeout "
            "the master sends (its own timer value)"
        )
    if clock is not None and clock.wheel:
        notes.append(
            f"timer wheel (Linux 4.8+, HZ {clock.hz}): a timer runs at the end of its bucket, "
            f"late by up to {clock.late_up_to(60):.1f} s for a 60 s timer, "
            f"{clock.late_up_to(300):.1f} s for 300 s, {clock.late_up_to(1800):.1f} s for "
            "1800 s; /proc shows 0 s left meanwhile. The ends predicted here include that"
        )
    elif clock is None:
        notes.append(
            "HZ or jiffies not readable here: ends are predicted from /proc alone, without the "
            "timer wheel's lateness (up to an eighth of a long timeout)"
        )
    if not has_origin:
        notes.append(
            "no /proc/net/ip_vs_conn_sync on this kernel: whether a template was made here "
            "(LOCAL) or came by sync (SYNC) cannot be read"
        )
    return notes


# ---- when a timer really fires -------------------------------------------------------------------
# /proc shows when a template's timer is due (`timer.expires - jiffies`, in whole seconds, rounded
# down). The kernel's timer wheel (kernel/time/timer.c, non-cascading since Linux 4.8) files a
# timer in a level chosen by how far away it was when armed, and runs it at the end of its
# bucket: never early, late by up to the level's granularity. At HZ=250 a timer armed 16-129 s
# ahead fires up to 2 s late, 129-1032 s ahead up to 16.4 s late, further up to 131 s late
# (observed in the lab: 150 s templates all went at one 16 s boundary). /proc shows 0 meanwhile.

LVL_CLK_SHIFT = 3
LVL_SIZE = 64
WHEEL_LEVELS = 9
TIMER_WHEEL_SINCE = (4, 8)
COMMON_HZ = (100, 250, 300, 1000)


def wheel_level(delta: int) -> int:
    """calc_wheel_index(): the level of a timer armed `delta` jiffies ahead."""
    lvl = 0
    while lvl < WHEEL_LEVELS - 1 and delta >= (LVL_SIZE - 1) << (lvl * LVL_CLK_SHIFT):
        lvl += 1
    return lvl


def wheel_fire(expires: int, delta: int) -> int:
    """The jiffy at which a timer due at `expires`, armed `delta` jiffies ahead, runs."""
    shift = wheel_level(max(delta, 0)) * LVL_CLK_SHIFT
    return ((expires >> shift) + 1) << shift


@dataclass(frozen=True)
class Clock:
    """The kernel's clock at the table read: HZ, jiffies just before and just after it, and
    the wall time just after. `wheel`: the kernel has the non-cascading timer wheel."""

    hz: int
    jiffies_before: int
    jiffies_after: int
    at: float
    wheel: bool = True

    def window(self, expires_s: int, armed_s: Optional[float]) -> Tuple[float, float]:
        """Earliest and latest wall time a timer shown with `expires_s` left runs, armed
        `armed_s` seconds ahead (None: unknown, taken as `expires_s`, the least it can be)."""
        hz = self.hz
        lo = self.jiffies_before + expires_s * hz
        hi = self.jiffies_after + (expires_s + 1) * hz - 1
        if self.wheel:
            delta = int((armed_s if armed_s is not None else expires_s) * hz)
            lo, hi = wheel_fire(lo, delta), wheel_fire(hi, delta)
        else:
            lo, hi = lo + 1, hi + 1
        return (
            self.at + (lo - self.jiffies_after) / hz,
            self.at + (hi - self.jiffies_after) / hz,
        )

    def late_up_to(self, armed_s: float) -> float:
        """How late the wheel may run a timer armed `armed_s` seconds ahead, in seconds."""
        if not self.wheel:
            return 1 / self.hz
        return (1 << (wheel_level(int(armed_s * self.hz)) * LVL_CLK_SHIFT)) / self.hz


def _window(clock: Optional["Clock"], now: float, e: int, armed: Optional[float]):
    if clock is None:
        # no clock: /proc's rounding only (and the wheel's lateness unknown)
        return now + e, now + e + 1
    return clock.window(e, armed)


# ---- the explanation (pure) -------------------------------------------------------------------


def _masked(addr: str, svc: Optional[Service]) -> str:
    """A client address as the service's persistence netmask keys its templates."""
    return addr if svc is None else svc.template_client(addr)


def conn_timeout(c: ConnEntry, timeouts: Optional[Mapping[str, int]]) -> Tuple[Optional[int], str]:
    """The timeout a connection entry is restarted with by its packets, and its name."""
    t = timeouts or {}
    if c.protocol == "UDP":
        return t.get("udp"), "udp timeout"
    if c.protocol == "TCP":
        if c.state == "ESTABLISHED":
            return t.get("tcp"), "tcp timeout (ESTABLISHED)"
        if c.state == "FIN_WAIT":
            return t.get("tcpfin"), "tcpfin timeout (FIN_WAIT)"
        if c.state in TCP_STATE_TIMEOUTS:
            return TCP_STATE_TIMEOUTS[c.state], f"the kernel's fixed {c.state} timeout"
    return None, f"{c.protocol} {c.state}"


def controlled_connections(
    t: ConnEntry,
    conns: Sequence[ConnEntry],
    svc: Optional[Service],
    address_service_keys: Iterable[Tuple],
) -> Tuple[List[ConnEntry], List[ConnEntry]]:
    """(connections this template controls, synced connections of the same client that it
    does not control).

    The table does not show the link; it is the connections of the template's client (masked
    by the persistence netmask) to its service and real server. Connections that came by sync
    are never linked; without an Origin column every match counts as linked.
    """
    addr_keys = set(address_service_keys)
    linked: List[ConnEntry] = []
    synced: List[ConnEntry] = []
    fwmark = t.fwmark
    for c in conns:
        if c.is_template or not _serves(t, fwmark, c, addr_keys):
            continue
        if _masked(c.caddr, svc) != t.caddr:
            continue
        (synced if c.origin == "SYNC" else linked).append(c)
    return linked, synced


def _serves(
    t: Union[ConnEntry, "_Controls"], fwmark: int, c: ConnEntry, addr_keys: Set[Tuple]
) -> bool:
    """Connection `c` goes to template `t`'s real server through `t`'s service (`fwmark`:
    t.fwmark; `addr_keys`: the keys of the services that have an address)."""
    if c.daddr != t.daddr:
        return False
    if fwmark:
        # a fwmark connection shows the packet's protocol, address and port, not the mark;
        # a port-zero service's shows the packet's port
        return not (
            c.af != t.af or c.service_key() in addr_keys or (c.protocol, c.vaddr, 0) in addr_keys
        )
    return c.protocol == t.protocol and c.vaddr == t.vaddr and not (t.vport and c.vport != t.vport)


def _conn_report(
    c: ConnEntry, timeouts: Optional[Mapping[str, int]], now: float, clock: Optional["Clock"]
) -> dict:
    """A connection a template controls as the report shows it."""
    tmo, name = conn_timeout(c, timeouts)
    return {
        "connection": f"{c.protocol} {host_port(c.caddr, c.cport)} -> "
        f"{host_port(c.vaddr, c.vport)}",
        "state": c.state,
        "expires_s": c.expires,
        "timeout_s": tmo,
        "timeout_source": name,
        "origin": c.origin,
        "predicted_end": round(_conn_end(c, tmo, now, clock), 2),
    }


def _conn_end(c: ConnEntry, tmo: Optional[int], now: float, clock: Optional["Clock"]) -> float:
    """When a connection ends if no packet comes: the middle of its timer's window."""
    c_lo, c_hi = _window(clock, now, c.expires, tmo)
    return (c_lo + c_hi) / 2


class ControlledConnections(Sequence[dict]):
    """The connections a template controls, as its report lists them: a sequence of dicts
    (`_conn_report`), each made when it is read, printed or serialised, from the table's own
    entry.

    Made all at once, a table of a million lines had some 900,000 of these dicts alive together
    until the report was printed: half a gigabyte more to fill, and the part of explain that
    grew faster than the table (the source tree's explain benchmark). The entries are in memory
    anyway; the dicts now live one template at a time. `cli.emit` serialises it as a list."""

    __slots__ = ("_conns", "_timeouts", "_now", "_clock")

    def __init__(
        self,
        conns: List[ConnEntry],
        timeouts: Optional[Mapping[str, int]],
        now: float,
        clock: Optional["Clock"],
    ) -> None:
        self._conns = conns
        self._timeouts, self._now, self._clock = timeouts, now, clock

    def __len__(self) -> int:
        return len(self._conns)

    def __getitem__(self, i):  # type: ignore[override]  # int or slice, as a list's
        if isinstance(i, slice):
            return [_conn_report(c, self._timeouts, self._now, self._clock) for c in self._conns[i]]
        return _conn_report(self._conns[i], self._timeouts, self._now, self._clock)

    def __iter__(self) -> Iterator[dict]:
        for c in self._conns:
            yield _conn_report(c, self._timeouts, self._now, self._clock)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (list, tuple, ControlledConnections)):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # compared by value, as a list

    def __repr__(self) -> str:
        return f"ControlledConnections({list(self)!r})"


class _Controls:
    """A template as the pass over the connections reads it, and what it gathers there: the
    connections it controls, when the last of them ends if idle, how many synced connections of
    its client it does not control.

    The fields of the template that tell its connections are copied here, and the next
    template of the same client hangs on `next`: a connection reads this one object, not the
    template's entry and a list of them too. At a million lines each is a read from memory,
    out of the CPU's caches, for every connection (measured by the source tree's explain
    benchmark).
    """

    __slots__ = (
        "daddr", "protocol", "vaddr", "vport", "af", "fwmark",
        "conns", "last_end", "synced", "next", "heard",
    )

    def __init__(self, t: ConnEntry) -> None:
        self.daddr, self.protocol, self.vaddr, self.vport = t.daddr, t.protocol, t.vaddr, t.vport
        self.af, self.fwmark = t.af, t.fwmark
        self.conns: List[ConnEntry] = []
        self.last_end: Optional[float] = None
        self.synced = 0
        self.next: Optional[_Controls] = None
        # From the table in memory, which keeps no connection one by one: when its client's
        # last connection heard of ends if idle (None: none heard of, or read from /proc).
        self.heard: Optional[float] = None

    def add(self, c: ConnEntry, timeouts: Optional[Mapping[str, int]], now: float,
            clock: Optional["Clock"]) -> None:
        if c.origin == "SYNC":
            self.synced += 1
            return
        end = _conn_end(c, conn_timeout(c, timeouts)[0], now, clock)
        self.conns.append(c)
        if self.last_end is None or end > self.last_end:
            self.last_end = end


def _role(daemons: Sequence) -> str:
    states = {getattr(d, "state", "") for d in daemons}
    if "master" in states and "backup" in states:
        return "both"
    if "master" in states:
        return "master"
    if "backup" in states:
        return "backup"
    return "none"


def _timeout_source(
    t: ConnEntry,
    origin: str,
    svc: Optional[Service],
    injection: Optional[Injection],
    v0_only: bool,
) -> Tuple[str, Optional[int], str]:
    """(code, seconds or None, sentence): which timeout the template holds."""
    e = t.expires
    p = svc.timeout if svc is not None and svc.persistent else None
    if injection is not None:
        return (
            "injected",
            injection.timeout,
            f"injected by lvs-hooks ({injection.by}) with {injection.timeout} s: the injected "
            "value sticks, a new connection restarts it at that, not at persistence_timeout",
        )
    if origin == "SYNC" and v0_only:
        return (
            "sync_v0",
            SYNC_V0_TEMPLATE_SECONDS,
            f"{SYNC_V0_TEMPLATE_SECONDS} s: a version-0 sync message carries no timeout",
        )
    if p is None:
        if svc is None:
            return "unknown", None, "unknown: no virtual service of this template exists now"
        return "unknown", None, f"unknown: {svc.describe()} is not persistent now"
    there = " on the master" if origin == "SYNC" else ""
    if p < e <= REARM_SECONDS:
        return (
            "rearm",
            REARM_SECONDS,
            f"{REARM_SECONDS} s since a re-arm{there}: its {p} s persistence_timeout ran out "
            "while it still controlled connections",
        )
    if REARM_SECONDS < e <= p:
        if origin == "SYNC":
            return (
                "sync",
                p,
                f"the timeout the master sent: its persistence_timeout {p} s",
            )
        return "persistence_timeout", p, f"the service's persistence_timeout {p} s"
    if e <= min(p, REARM_SECONDS):
        # a re-armed template runs down from 60 s through the same values
        part = f"the last minute of its {p} s" if p > REARM_SECONDS else f"its {p} s"
        return (
            "persistence_or_rearm",
            None,
            f"either {part} persistence_timeout or a {REARM_SECONDS} s re-arm{there} (the kernel "
            "does not show which)",
        )
    if origin == "SYNC":
        if e <= SYNC_V0_TEMPLATE_SECONDS:
            return (
                "sync",
                None,
                f"{e} s left, more than this service's persistence_timeout {p} s: a version-0 "
                f"message ({SYNC_V0_TEMPLATE_SECONDS} s), a master with another "
                "persistence_timeout, or an injected value",
            )
        return (
            "sync",
            None,
            f"{e} s left, more than this service's persistence_timeout {p} s: a master with "
            "another persistence_timeout, or an injected value",
        )
    return (
        "unknown",
        None,
        f"{e} s left, more than the service's persistence_timeout {p} s: the service's "
        "timeout was lowered after the template was made",
    )


def _when(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts))


def explain_template(
    t: ConnEntry,
    conns: Sequence[ConnEntry],
    services_by_key: Mapping[Tuple, Service],
    address_service_keys: Sequence[Tuple],
    timeouts: Optional[Mapping[str, int]],
    now: float,
    role: str,
    injection: Optional[Injection] = None,
    v0_only: bool = False,
    clock: Optional[Clock] = None,
) -> dict:
    """One template: why it exists, which timeout it holds, when it ends and what then."""
    svc = services_by_key.get(t.service_key())
    linked, synced = controlled_connections(t, conns, svc, address_service_keys)
    controls = _Controls(t)
    for c in linked:
        controls.add(c, timeouts, now, clock)
    controls.synced = len(synced)
    return _template_report(t, svc, controls, timeouts, now, role, injection, v0_only, clock)


def _template_report(
    t: ConnEntry,
    svc: Optional[Service],
    controls: "_Controls",
    timeouts: Optional[Mapping[str, int]],
    now: float,
    role: str,
    injection: Optional[Injection],
    v0_only: bool,
    clock: Optional[Clock],
    texts: Optional[Dict[str, str]] = None,
) -> dict:
    """explain_template's report from what `controls` gathered. `texts`: the sentences made so
    far, so that templates that say the same hold one string, not one each."""
    origin = t.origin or "?"
    e = t.expires
    code, seconds, timeout_text = _timeout_source(t, origin, svc, injection, v0_only)
    # How far ahead the timer was armed decides how late the wheel runs it: the template's
    # timeout; when that is either persistence_timeout or a re-arm, the widest of the two.
    p = svc.timeout if svc is not None and svc.persistent else None
    armed: List[Optional[int]] = (
        [seconds] if seconds is not None else ([p, REARM_SECONDS] if p else [None])
    )
    windows = [_window(clock, now, e, a) for a in armed]
    earliest, latest = min(w[0] for w in windows), max(w[1] for w in windows)
    end = (earliest + latest) / 2

    if injection is not None:
        origin_code = "injected"
        origin_text = (
            f"injected by lvs-hooks ({injection.by}) at {_when(injection.at)} through the "
            "local sync path (the kernel shows SYNC)"
        )
    elif origin == "LOCAL":
        origin_code = "LOCAL"
        origin_text = "made here when this director scheduled the client's first connection"
    elif origin == "SYNC":
        origin_code = "SYNC"
        origin_text = (
            "received by this director's backup sync daemon: sent by a master daemon, or "
            "injected (lvs-hooks reseed or keeper; the kernel does not tell them apart)"
        )
    else:
        origin_code = "unknown"
        origin_text = "made here or received by sync (this kernel does not say)"

    n_linked = len(controls.conns)
    n_synced = controls.synced
    last = controls.last_end
    heard = controls.heard
    if heard is not None:
        held_then = (
            "its client's last connection heard of still runs then and holds it (it ends in "
            f"{heard - now:.0f} s if idle)"
        )
    else:
        held_then = (
            f"it still controls {n_linked} connection{'s' if n_linked != 1 else ''} then (the "
            f"last one ends in {(last or now) - now:.0f} s if idle)"
        )
    sched = svc.scheduler if svc is not None and svc.scheduler else "the scheduler"

    if t.is_invalidated:
        then, then_text, final_end = (
            "removed",
            "removed: the kernel invalidated it (its real server is gone, or it never bound to "
            "one); it is never used again",
            end,
        )
    elif last is not None and last > end:
        # each re-arm is a 60 s timer, run late by the wheel like any other
        step = REARM_SECONDS + (clock.late_up_to(REARM_SECONDS) / 2 if clock else 0)
        rounds = math.ceil((last - end) / step)
        then = "re-armed"
        then_text = (
            f"re-armed with {REARM_SECONDS} s: {held_then}; from then on "
            f"it keeps {REARM_SECONDS} s, and a new connection of this client restarts it at "
            f"{REARM_SECONDS} s, not at persistence_timeout"
        )
        if abs(last - end) < (latest - earliest) + 1:
            then_text += " (a close call: they end at about the same time)"
        # if no packet refreshes the connections: removed at the first re-arm after the last ends
        final_end = end + rounds * step
    else:
        then = "removed"
        then_text = (
            "removed: it controls no connection then; the client's next connection is "
            f"scheduled afresh ({sched}) and may go to another real server"
        )
        if n_linked or last is not None:
            who = (
                "its client's last connection heard of ends"
                if heard is not None
                else f"its {n_linked} connection{'s' if n_linked != 1 else ''} end"
            )
            then_text += (
                f" ({who} first if no more packets come: a packet restarts a connection at its "
                "timeout, and one still alive when the template runs out re-arms it with "
                f"{REARM_SECONDS} s)"
            )
        final_end = end
    if t.state != "ASSURED" and not t.is_invalidated:
        then_text += (
            f"; it is {t.state}, not ASSURED (no answer from the real server through it yet): "
            "a connection of it that the kernel expires at once (timeout 0) takes it along"
        )
    if origin == "SYNC" and role in ("backup", "both"):
        then_text += (
            "; unless the master re-sends it first: a master sends the template with every "
            "packet of a connection it controls, which restarts it here"
        )
    if heard is not None and last is None:
        then_text += (
            "; the connections of its client heard of came by sync, and synced connections "
            "are never linked: they do not hold it"
        )
    if origin == "SYNC" and role == "master" and n_synced:
        then_text += (
            f"; the client's {n_synced} synced connection{'s' if n_synced != 1 else ''} "
            "do not hold it (synced connections are never linked): lvs-hooks' keeper renews "
            "it while they live"
        )

    svc_text = svc.describe() if svc is not None else _service_text(t)
    real_server = host_port(t.daddr, t.dport)
    if texts is not None:
        # Most of a million templates say what others said: one string for them all is less
        # memory to fill, and fewer objects for the collector to visit after the pause.
        svc_text = texts.setdefault(svc_text, svc_text)
        real_server = texts.setdefault(real_server, real_server)
        timeout_text = texts.setdefault(timeout_text, timeout_text)
        then_text = texts.setdefault(then_text, then_text)
    return {
        "client": t.caddr,
        "service": svc_text,
        "real_server": real_server,
        "protocol": t.protocol,
        "state": t.state,
        "origin": origin_code,
        "origin_text": origin_text,
        "expires_s": e,
        "timeout_source": code,
        "timeout_s": seconds,
        "timeout_text": timeout_text,
        "persistence_timeout": svc.timeout if svc is not None and svc.persistent else None,
        "predicted_end": round(end, 2),
        "predicted_end_in_s": round(end - now, 1),
        "end_window": [round(earliest, 2), round(latest, 2)],
        "then": then,
        "then_text": then_text,
        "end_if_idle": round(final_end, 1),
        "timer_late_up_to_s": (
            round(max(clock.late_up_to(a if a is not None else e) for a in armed), 2)
            if clock is not None
            else None
        ),
        "controls": ControlledConnections(controls.conns, timeouts, now, clock),
        "synced_connections_not_linked": n_synced,
        "client_connection_ends_in_s": round(heard - now, 1) if heard is not None else None,
        "key": list(template_key(t)),
    }


def _service_text(t: ConnEntry) -> str:
    if t.fwmark:
        return f"FWM {t.fwmark}" + (" IPv6" if t.af == 6 else "")
    return f"{t.protocol} {host_port(t.vaddr, t.vport)}"


# Templates per part of the pass over the connections (see _gather): a part's dict of clients
# and its templates' _Controls, some 200 KB, stay in the CPU's caches while its connections
# are read.
TEMPLATES_PER_PART = 1024


def _parts_for(n_templates: int) -> int:
    """How many parts _gather splits a table of `n_templates` into: a power of two, 1 (no
    split) for a table whose templates fit in the caches anyway."""
    parts = 1
    while parts * TEMPLATES_PER_PART < n_templates:
        parts <<= 1
    return parts


def _gather(
    templates: Sequence[ConnEntry],
    conns: Sequence[ConnEntry],
    by_key: Mapping[Tuple, Service],
    addr_keys: Set[Tuple],
    timeouts: Optional[Mapping[str, int]],
    now: float,
    clock: Optional[Clock],
) -> List[_Controls]:
    """What each template controls (controlled_connections for all at once), in the order of
    `templates`.

    Each connection finds its templates by its client, masked as their service masks: one
    lookup per connection and netmask, linear in the table. At a million lines the lookups
    themselves were the cost that grew: a dict of 100,000 clients and the templates it leads to
    lie far out of the CPU's caches, and every connection read them at random (the dict lookup
    alone 36x slower for 10x the lines; the source tree's explain benchmark). So the pass is a
    partitioned join: templates and connections are first split by the hash of the client
    (the same part for a client and its connections), then each part's templates are made and
    looked up together, small enough to stay in the caches. Within a part the connections keep
    the table's order, so each template lists its connections in that order, as before.
    """
    masks = {k: "" if netmask_is_full(s.netmask) else s.netmask for k, s in by_key.items()}
    by_mask: Dict[str, List[int]] = {}
    for i, t in enumerate(templates):
        by_mask.setdefault(masks.get(t.service_key(), ""), []).append(i)
    controls: List[Optional[_Controls]] = [None] * len(templates)
    for mask, chosen in by_mask.items():
        parts = _parts_for(len(chosen))
        low = parts - 1
        t_parts: List[List[int]] = [[] for _ in range(parts)]
        for i in chosen:
            t_parts[hash(templates[i].caddr) & low].append(i)
        masked: Dict[str, str] = {}  # the client as this mask masks it (parsed once each)
        if mask:
            for c in conns:
                if c.caddr not in masked:
                    masked[c.caddr] = template_client(c.caddr, mask)
        c_parts: List[Sequence[ConnEntry]] = [conns]
        if parts > 1:
            c_parts = [[] for _ in range(parts)]
            appends = [p.append for p in c_parts]  # type: ignore[attr-defined]
            if mask:
                for c in conns:
                    appends[hash(masked[c.caddr]) & low](c)
            else:
                for c in conns:
                    appends[hash(c.caddr) & low](c)
        for t_part, c_part in zip(t_parts, c_parts):
            by_client: Dict[str, _Controls] = {}
            for i in t_part:
                t = templates[i]
                x = controls[i] = _Controls(t)
                x.next = by_client.get(t.caddr)
                by_client[t.caddr] = x
            get = by_client.get
            for c in c_part:
                y = get(masked[c.caddr] if mask else c.caddr)
                while y is not None:
                    if _serves(y, y.fwmark, c, addr_keys):
                        y.add(c, timeouts, now, clock)
                    y = y.next
    return controls  # type: ignore[return-value]  # every index was filled above


def explain(
    entries: Iterable[ConnEntry],
    services: Sequence[Service],
    timeouts: Optional[Mapping[str, int]],
    now: float,
    release: Optional[str] = None,
    sysctls: Optional[Mapping[str, str]] = None,
    daemons: Sequence = (),
    injections: Optional[Mapping[TemplateKey, Injection]] = None,
    client: Optional[str] = None,
    has_origin: bool = True,
    clock: Optional[Clock] = None,
    frozen: bool = False,
    held: Optional[Mapping[Tuple[str, Tuple], float]] = None,
) -> dict:
    """The report for every template (or the templates of `client`), JSON-ready (as above).
    `now` is when the table was read; `clock`, if known, places each timer in the kernel's
    wheel.

    `frozen`, for a process that prints the report and exits (the explain command): what the
    report is made of is frozen out of the cyclic collector's sight (gc.freeze) at the end of
    the pause. Otherwise the collector's first pass after the pause walks every object of it:
    at a million lines some 500,000 of them, 0.3 s that grew faster than the table. Frozen
    objects are still freed when nothing refers to them; a long-lived process does not freeze.

    `held`, for templates from the agent's table in memory (which keeps no connection one by
    one; `entries` are then templates only): when the last connection heard of of each
    (template client, service key) ends, as a wall time (keeper.connection_ends' rule). It
    holds the template as a controlled connection would, except on a backup for a synced
    template (synced connections are never linked)."""
    sysctls = sysctls or {}
    injections = injections or {}
    by_key = {s.key(): s for s in services}
    addr_keys = {s.key() for s in services if not s.fwmark}
    templates: List[ConnEntry] = []
    conns: List[ConnEntry] = []
    for e in entries:
        (templates if e.is_template else conns).append(e)
    n_conns = len(conns)
    version = parse_release(release)
    v0_only = version is not None and version < SYNC_V1_SINCE
    role = _role(daemons)
    chosen = templates
    if client:
        client = canonical_addr_or_same(client)
        chosen = templates_of_client(templates, by_key, client)
    # Reports of a million connections and templates, none part of a cycle: the cyclic
    # collector, set off again and again by them, would make explain superlinear in the table.
    with gc_paused():
        controls = _gather(chosen, conns, by_key, addr_keys, timeouts, now, clock)
        if held is not None:
            unlinked = role in ("backup", "both")
            for t, x in zip(chosen, controls):
                x.heard = held.get((t.caddr, t.service_key()))
                if x.heard is not None and not (unlinked and t.origin == "SYNC"):
                    x.last_end = x.heard
        reports = []
        texts: Dict[str, str] = {}
        # In the table's order, then sorted: the entries lie in memory in the order they were
        # read, and a walk in address order touches them at random.
        for t, c_of_t in zip(chosen, controls):
            inj = injections.get(template_key(t)) if t.origin != "LOCAL" else None
            if inj is not None and t.expires > inj.timeout:
                inj = None  # more time left than was injected: a master's message replaced it since
            svc = by_key.get(t.service_key())
            reports.append(
                _template_report(t, svc, c_of_t, timeouts, now, role, inj, v0_only, clock, texts)
            )
        # Freed here, not traversed by the collection that follows the pause.
        del controls, texts
        # The clients' addresses as bytes made here, in a row: the entries' own strings lie
        # scattered over the whole table, and comparing them in a sort reads them at random.
        # UTF-8 (surrogates passed) keeps the order of the text.
        keys = [
            (t.caddr.encode("utf-8", "surrogatepass"), t.vaddr, t.vport, t.daddr) for t in chosen
        ]
        reports = [reports[i] for i in sorted(range(len(chosen)), key=keys.__getitem__)]
        del keys
        if frozen:
            gc.freeze()
    return {
        "now": round(now, 1),
        "client": client,
        "templates": reports,
        "templates_total": len(templates),
        "connections_total": n_conns,
        "source": "kernel" if held is None else "in memory",
        "timeouts": dict(timeouts) if timeouts else None,
        "sync_daemons": [getattr(d, "state", "?") for d in daemons],
        "role": role,
        "kernel": release,
        "kernel_notes": kernel_notes(release, sysctls, has_origin, clock),
        "hz": clock.hz if clock is not None else None,
    }


# ---- I/O ----------------------------------------------------------------------------------------


def read_vs_sysctls(proc_root: str = "/proc") -> Dict[str, str]:
    """net.ipv4.vs.* of this network namespace (empty when IPVS is not loaded)."""
    out: Dict[str, str] = {}
    d = os.path.join(proc_root, "sys", "net", "ipv4", "vs")
    try:
        names = os.listdir(d)
    except OSError:
        return out
    for name in sorted(names):
        try:
            with open(os.path.join(d, name)) as f:
                out[name] = " ".join(f.read().split())
        except OSError:
            continue
    return out


def read_jiffies(proc_root: str = "/proc") -> Optional[int]:
    """The kernel's jiffies now: /proc/schedstat's timestamp, or /proc/timer_list's."""
    for name, prefix in (("schedstat", "timestamp "), ("timer_list", "jiffies: ")):
        try:
            with open(os.path.join(proc_root, name)) as f:
                for line in f:
                    if line.startswith(prefix):
                        return int(line.split()[-1])
        except (OSError, ValueError):
            continue
    return None


def kernel_hz(release: str, proc_root: str = "/proc") -> Optional[int]:
    """CONFIG_HZ: from /boot/config-RELEASE or /proc/config.gz, else measured from jiffies
    over a fifth of a second and rounded to the nearest usual value."""
    for path, opener in (
        (f"/boot/config-{release}", open),
        (os.path.join(proc_root, "config.gz"), gzip.open),
    ):
        try:
            with opener(path, "rt") as f:
                for line in f:
                    if line.startswith("CONFIG_HZ="):
                        return int(line.split("=", 1)[1])
        except (OSError, ValueError):
            continue
    j0, t0 = read_jiffies(proc_root), time.monotonic()
    if j0 is None:
        return None
    time.sleep(0.2)
    j1, t1 = read_jiffies(proc_root), time.monotonic()
    if j1 is None or t1 <= t0:
        return None
    rate = (j1 - j0) / (t1 - t0)
    return min(COMMON_HZ, key=lambda hz: abs(hz - rate))


def build_explanation(
    cfg: Config,
    client: Optional[str] = None,
    frozen: bool = False,
    ask: Optional[Callable[[], Optional[dict]]] = None,
) -> dict:
    """Read the kernel (services, daemons, timeouts, the table with origins) and explain
    (`frozen`: as explain's).

    `ask`: the agent's answer to an `explain` request (commands.agent), asked between the two
    reads of the kernel's clock: its table in memory in place of a whole read of /proc
    (`templates`, `held`: explain_input's), or `read_kernel` with the reason to read /proc
    after all, or None (no agent)."""
    proc_root = cfg.paths.proc_root
    with IPVS() as ipvs:
        services = ipvs.services()
        daemons = ipvs.daemons()
        timeouts = ipvs.timeouts()
    has_origin = os.path.exists(os.path.join(proc_root, "net", "ip_vs_conn_sync"))
    release = os.uname().release
    hz = kernel_hz(release, proc_root)
    j_before = read_jiffies(proc_root)
    answer = ask() if ask is not None else None
    table = TableInput.from_answer(answer) if answer is not None else None
    if table is None:
        if answer is not None:
            log.info("explain: the agent says read the kernel's table: %s",
                     answer.get("read_kernel") or "no reason given")
        entries: Sequence[ConnEntry] = read_conn_table(
            proc_root, sync=has_origin, reason="explain"
        ).entries
    else:
        entries = table.templates
    j_after = read_jiffies(proc_root)
    now = time.time()  # Expires are counted from the moment the table was read
    clock = None
    if hz and j_before is not None and j_after is not None:
        version = parse_release(release)
        wheel = version is None or version >= TIMER_WHEEL_SINCE
        clock = Clock(hz, j_before, j_after, now, wheel)
    report = explain(
        entries,
        services,
        {"tcp": timeouts.tcp, "tcpfin": timeouts.tcpfin, "udp": timeouts.udp},
        now,
        release=release,
        sysctls=read_vs_sysctls(proc_root),
        daemons=daemons,
        injections=load_injections(cfg.paths.run_dir),
        client=client,
        has_origin=has_origin if table is None else True,
        clock=clock,
        frozen=frozen,
        held=table.held if table is not None else None,
    )
    if table is not None:
        # what the table does not hold, as the agent counted it
        report["templates_total"] = table.templates_total
        report["connections_total"] = table.connections_total
    return report


def explanation_lines(r: dict) -> Iterator[str]:
    """The report as text, a line at a time (a million lines' report is written as it is
    made, not held whole as one string)."""
    t = r.get("timeouts")
    tm = f"tcp {t['tcp']} tcpfin {t['tcpfin']} udp {t['udp']}" if t else "unknown"
    yield (
        f"{len(r['templates'])} of {r['templates_total']} templates"
        + (f" of client {r['client']}" if r.get("client") else "")
        + f"; {r['connections_total']} connections; timeouts {tm}; "
        f"sync daemons: {', '.join(r['sync_daemons']) or 'none'}"
        + ("; from the table in memory" if r.get("source") == "in memory" else "")
    )
    for x in r["templates"]:
        yield ""
        yield (
            f"{x['client']} -> {x['service']} -> {x['real_server']}  {x['state']}  {x['origin']}"
        )
        yield f"  origin:  {x['origin_text']}"
        yield f"  timeout: {x['timeout_text']}"
        lo, hi = x["end_window"]
        at = (
            f"between {_when(lo)} and {_when(hi)}"
            if hi - lo >= 1
            else f"at {_when(x['predicted_end'])}"
        )
        yield f"  ends in {x['predicted_end_in_s']:.0f} s ({at}): {x['then_text']}"
        if x.get("timer_late_up_to_s") and x["timer_late_up_to_s"] >= 1:
            yield (
                f"  (the kernel's timer wheel runs this timer up to {x['timer_late_up_to_s']:.1f}"
                f" s after its due time; /proc shows 0 s left meanwhile)"
            )
        if x["then"] == "re-armed":
            yield (
                f"  if no packet refreshes its connections: gone at {_when(x['end_if_idle'])}"
            )
        if r.get("source") == "in memory":
            ends = x.get("client_connection_ends_in_s")
            yield (
                f"  its client's last connection heard of ends in {ends:.0f} s if idle"
                if ends is not None
                else "  no connection of its client heard of"
            ) + " (the table in memory keeps no connection one by one)"
            continue
        n = len(x["controls"])
        yield f"  controls {n} connection{'s' if n != 1 else ''}" + (":" if n else "")
        for c in x["controls"]:
            tmo = f"{c['timeout_s']} s" if c["timeout_s"] is not None else "?"
            yield (
                f"    {c['connection']} {c['state']}, {c['expires_s']} s left "
                f"({c['timeout_source']} {tmo})"
            )
    if not r["templates"]:
        yield "no templates" + (f" of client {r['client']}" if r.get("client") else "")
    yield ""
    yield from (f"kernel: {n}" for n in r["kernel_notes"])


def render_explanation(r: dict) -> str:
    return "\n".join(explanation_lines(r))
