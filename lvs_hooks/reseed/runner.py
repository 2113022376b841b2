"""Putting planned templates into the local kernel and proving they arrived.

The only way into the connection table is the sync protocol: a backup sync daemon must be
receiving. If none runs (keepalived with `lvs_sync_daemon IF INSTANCE` stops it the moment it
becomes master), one is started for the reseed and stopped afterwards; a running master daemon
is never touched. Datagrams go out with multicast loop on and TTL 0, so only this host's kernel
gets them, paced on the backup socket's queue. Then the table is read again; what is missing is
sent again, a bounded number of times. A template to replace is expired again before each of
its resends (IPVS never re-points one).
"""

import contextlib
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Set, Tuple

from lvs_hooks.errors import ConfigError, SyncDaemonError
from lvs_hooks.kernel import syncproto
from lvs_hooks.kernel.conntable import read_conn_table
from lvs_hooks.kernel.model import TemplateKey, addr_family, template_id, template_key
from lvs_hooks.kernel.netlink import IPVS, SyncDaemon
from lvs_hooks.kernel.syncsock import SyncQueueProbe, SyncSender, send_paced, settle
from lvs_hooks.reseed.planner import PlannedTemplate

log = logging.getLogger(__name__)



@dataclass
class ReseedResult:
    planned: int = 0
    sent: int = 0  # template entries sent, resends included
    verified: int = 0
    missing: int = 0
    rounds: int = 0
    datagrams: int = 0
    bytes: int = 0
    pacing_waits: int = 0
    receiver_drops: int = 0  # datagrams the backup socket dropped during the reseed
    daemon: str = ""
    daemon_started: bool = False
    replaced: int = 0  # unbound templates expired first, then sent anew
    abandoned: bool = False  # the plan no longer held once the lock was ours: nothing sent
    ms: float = 0.0
    missing_examples: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.missing == 0


def to_sync_conn(p: PlannedTemplate) -> "syncproto.SyncConn":
    return syncproto.template_conn(
        protocol=p.protocol,
        caddr=p.caddr,
        vaddr=p.vaddr,
        vport=p.vport,
        daddr=p.daddr,
        dport=p.dport,
        fwmark=p.fwmark,
        fwd_method=p.fwd_method,
        timeout=p.timeout,
        pe_name=p.pe_name,
        pe_data=p.pe_data,
    )


def daemon_options(group: str, port: int) -> Dict[str, Any]:
    """start_daemon's optional arguments for a sync group and port: the kernel's defaults are
    left out (kernels before 4.6 know no others)."""
    optional: Dict[str, Any] = {}
    if group != syncproto.IP_VS_SYNC_GROUP:
        optional["group"] = group
    if port != syncproto.IP_VS_SYNC_PORT:
        optional["port"] = port
    return optional


@contextlib.contextmanager
def receiving_backup_daemon(
    ipvs: IPVS, interface: Optional[str], syncid: int, group: str, port: int
) -> Iterator[Tuple[SyncDaemon, bool]]:
    """Yield (the backup daemon to inject into, whether we started it); stop it if we did."""
    daemons = ipvs.daemons()
    backup = next((d for d in daemons if d.state == "backup"), None)
    if backup is not None:
        yield backup, False
        return
    ifname = interface
    if not ifname:
        master = next((d for d in daemons if d.state == "master"), None)
        if master is None:
            raise ConfigError(
                "sync.interface is not set and no sync daemon runs to take it from"
            )
        ifname = master.ifname
    ipvs.start_daemon("backup", ifname, syncid, **daemon_options(group, port))
    try:
        started = next((d for d in ipvs.daemons() if d.state == "backup"), None)
        if started is None:
            raise SyncDaemonError("the backup sync daemon did not come up")
        yield started, True
    finally:
        ipvs.stop_daemon("backup")


def run_reseed(
    planned: Sequence[PlannedTemplate],
    ipvs: IPVS,
    *,
    proc_root: str,
    interface: Optional[str],
    syncid: int,
    group: str,
    port: int,
    maxlen: int,
    queue_limit: int,
    verify_timeout: float,
    resend_rounds: int,
    verify: bool = True,
    by_counts: bool = False,
    clock: Callable[[], float] = time.monotonic,
) -> ReseedResult:
    """Send `planned` into the local kernel and verify it; see the module docstring.

    Without `verify` (the keeper's renewals of templates that are there already), the table is
    not read again: the send ends when the backup daemon has taken every datagram. With
    `by_counts` (a table too large to read whole, design.md 2.4), each real server's count
    of templates (netlink, design.md 2.5) must grow by what was sent to it: the planners
    send only templates the table lacks, so each arrival adds one there.
    """
    t0 = clock()
    res = ReseedResult(planned=len(planned))
    if not planned:
        return res
    with receiving_backup_daemon(ipvs, interface, syncid, group, port) as (daemon, started):
        res.daemon = f"backup on {daemon.ifname} syncid {daemon.syncid}"
        res.daemon_started = started
        d_group = daemon.group or group
        d_port = daemon.port or port
        # The receiver drops a datagram longer than its own maxlen: honour both limits.
        limits = [x for x in (maxlen, daemon.maxlen) if x]
        d_maxlen = min(limits) if limits else syncproto.SYNC_MAXLEN_DEFAULT
        # A backup daemon with syncid 0 takes any syncid; otherwise ours must match its own.
        msg_syncid = daemon.syncid if daemon.syncid else syncid
        probe = SyncQueueProbe(proc_root, d_port, ipv6=":" in d_group)
        drops0 = probe.drops()
        pending = list(planned)
        with SyncSender(daemon.ifname, d_group, d_port, ttl=0, loop=True) as sender:

            def taken(timeout: float) -> bool:
                """Until the daemon has taken all that was sent (or `timeout`)."""
                return settle(sender, probe, timeout)

            def send(conns: Sequence[PlannedTemplate]) -> None:
                dgrams = syncproto.encode_datagrams(
                    [to_sync_conn(p) for p in conns], syncid=msg_syncid, maxlen=d_maxlen
                )
                st = send_paced(sender, dgrams, probe, queue_limit)
                res.sent += len(conns)
                res.datagrams += st.datagrams
                res.bytes += st.bytes
                res.pacing_waits += st.waits

            def deliver(
                batch: List[PlannedTemplate], rounds: int = resend_rounds
            ) -> List[PlannedTemplate]:
                """Send `batch`; what is still missing after 1 + `rounds` verify rounds."""
                if not batch:  # (checking an empty batch would still read the table)
                    return []
                if not verify:
                    send(batch)
                    taken(verify_timeout)
                    return []
                before = _bound_counts(ipvs) if by_counts else None
                for round_no in range(rounds + 1):
                    res.rounds += 1
                    send(batch)
                    if before is not None:
                        batch = _wait_for_counts(batch, before, ipvs, taken, verify_timeout, clock)
                    else:
                        batch = _wait_for_arrival(batch, taken, proc_root, verify_timeout, clock)
                    if not batch or round_no == rounds:
                        break
                    log.warning(
                        "reseed round %d: %d of %d templates not in the table yet; resending",
                        round_no + 1,
                        len(batch),
                        len(planned),
                    )
                return batch

            # Templates that are simply missing first: a takeover's clients are arriving, and
            # replacing one means waiting for the old one to expire.
            pending = deliver([p for p in pending if not p.replace])
            replace = [p for p in planned if p.replace]
            if replace:
                left = _replace(
                    replace,
                    lambda batch: _expire_first(batch, send, taken, proc_root, clock, by_counts),
                    lambda batch: deliver(batch, 0),
                    resend_rounds if verify else 0,
                )
                res.replaced = len(replace) - len(left)
                pending += left
        res.receiver_drops = max(0, probe.drops() - drops0)
    res.missing = len(pending)
    res.verified = len(planned) - len(pending)
    res.missing_examples = [p.describe() for p in pending[:5]]
    res.ms = (clock() - t0) * 1000
    return res


def run_reseed_configured(
    planned: Sequence[PlannedTemplate], ipvs: IPVS, cfg, **overrides
) -> ReseedResult:
    """run_reseed with the sync and reseed settings of the configuration (`overrides` win)."""
    settings = dict(
        proc_root=cfg.paths.proc_root,
        interface=cfg.sync.interface,
        syncid=cfg.sync.syncid,
        group=cfg.sync.group,
        port=cfg.sync.port,
        maxlen=cfg.sync.maxlen,
        queue_limit=cfg.reseed.rx_queue_limit,
        verify_timeout=cfg.reseed.verify_timeout,
        resend_rounds=cfg.reseed.resend_rounds,
    )
    settings.update(overrides)
    return run_reseed(planned, ipvs, **settings)


def _replace(
    replace: List[PlannedTemplate],
    expire: Callable[[List[PlannedTemplate]], int],
    deliver: Callable[[List[PlannedTemplate]], List[PlannedTemplate]],
    resend_rounds: int,
) -> List[PlannedTemplate]:
    """Replace templates: expire them, then send them anew; what is still not replaced after
    1 + `resend_rounds` rounds.

    A replacement that reaches the old template (its expiry lost, or its timer later than the
    wait) only re-arms it with the old real server, and sending the replacement again cannot
    change that: every round expires what is left first. In the lab under a CPU hog, a second
    push filled the backup daemon's receive queue while the expiry of 5 templates was sent: 3 of
    them never took it, and resending only their replacements left them stale through every
    round. A template already gone is harmless to expire again: the message makes it for 1 s
    with the new real server, and the replacement follows.
    """
    total = len(replace)
    for round_no in range(resend_rounds + 1):
        if round_no:
            log.warning(
                "replacement round %d: %d of %d templates still stale or missing; expiring "
                "them again", round_no, len(replace), total,
            )
        expire(replace)
        replace = deliver(replace)
        if not replace:
            break
    return replace


# How long to wait for templates given 1 s to expire: the timer fires within a few tens of
# milliseconds of 1 s, or never, if the template has meanwhile come to control a connection
# (the kernel then re-arms it for 60 s; a takeover's first packet can do that).
EXPIRE_WAIT = 2.5
# A template that still shows the 1 s it was given (0 or 1 s left in /proc) has taken the expiry
# and waits for its timer: a loaded kernel runs timers late, so the wait goes on up to this long
# for those. One that shows more has not taken it (re-armed for a connection): no use waiting.
# Lab, one host core kept busy beside the VM: 2 of 5 templates were still there after 2.5 s, and
# the replacements then re-armed them with their old real server.
EXPIRE_WAIT_LATE = 15.0
# How late after its time the kernel's timer wheel fires a 1 s timer (a few jiffies at HZ 100).
TIMER_SLACK = 0.1


def _expire_first(
    replace: List[PlannedTemplate],
    send: Callable[[Sequence[PlannedTemplate]], None],
    taken: Callable[[float], bool],
    proc_root: str,
    clock: Callable[[], float],
    blind: bool = False,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Expire templates that must be replaced (timeout 1 s), and wait until they are gone.

    IPVS never re-points an existing template: a message for its key only updates timeout,
    state and a few flags. Only unbound ones are replaced (the planner decides), so no
    connection loses its template here. `blind` (a table too large to read): unbound templates
    are in no real server's count, so nothing shows them go; the wait is then the kernel's own
    timer, 1 s from the drain and its firing slack, and the replacements' verification says
    whether it was enough.

    The wait counts from when the daemon has taken the messages, not from the send: the 1 s
    starts there. Counted from the send, a slow drain (a loaded director) left one read before
    the timers fired; the replacements then reached the old templates, which the kernel only
    re-armed with the old real server. In the lab under a CPU hog, 2 of 5 re-pointed templates
    stayed stale that way through every resend round. Past EXPIRE_WAIT it waits on, up to
    EXPIRE_WAIT_LATE, while every template left shows that it took the 1 s: a late timer.
    """
    send([dataclasses.replace(p, timeout=1) for p in replace])
    keys = {template_id(p) for p in replace}
    taken(EXPIRE_WAIT)
    start = clock()
    deadline, late_deadline = start + EXPIRE_WAIT, start + EXPIRE_WAIT_LATE
    if blind:
        gone_at = clock() + 1.0 + TIMER_SLACK
        while clock() < gone_at:
            sleep(max(0.0, gone_at - clock()))
        return len(replace)
    delay = 0.2
    while True:
        table = read_conn_table(proc_root, templates_only=True, reason="reseed: expiry wait")
        left = [t.expires for t in table.templates if template_id(t) in keys]
        now = clock()
        if not left:
            return len(replace)
        if now > deadline and (now > late_deadline or max(left) > 1):
            log.warning(
                "%d templates to replace did not expire in %.1f s after the daemon took the "
                "expiry (seconds left: %s)", len(left), now - start,
                ", ".join(str(x) for x in sorted(left)[:10]),
            )
            return len(replace) - len(left)
        sleep(delay)


def _wait_for_arrival(
    pending: List[PlannedTemplate],
    taken: Callable[[float], bool],
    proc_root: str,
    timeout: float,
    clock: Callable[[], float],
) -> List[PlannedTemplate]:
    """Templates of `pending` not (yet) in the table, waiting up to `timeout` for them.

    Reading the table is expensive (the kernel walks all of it), so read only once the backup
    daemon has drained its queue, then again with growing pauses while entries are missing.
    """
    deadline = clock() + timeout
    taken(timeout)
    delay = 0.05
    while True:
        present = _present_keys(proc_root)
        pending = [p for p in pending if template_key(p) not in present]
        if not pending or clock() + delay > deadline:
            return pending
        time.sleep(delay)
        delay = min(delay * 2, 1.0)


def _present_keys(proc_root: str) -> Set[TemplateKey]:
    table = read_conn_table(proc_root, templates_only=True, reason="reseed: verification")
    return {template_key(t) for t in table.templates}


CountKey = Tuple[Tuple, str, int]  # (Service.key(), real server address, port)


def _count_key(p: PlannedTemplate) -> CountKey:
    svc = ("fwmark", addr_family(p.caddr), p.fwmark) if p.fwmark else (p.protocol, p.vaddr, p.vport)
    return (svc, p.daddr, p.dport)


def _bound_counts(ipvs: IPVS) -> Dict[CountKey, int]:
    return {(c.service_key, c.addr, c.port): c.persistent for c in ipvs.dest_counts()}


def _wait_for_counts(
    pending: List[PlannedTemplate],
    before: Dict[CountKey, int],
    ipvs: IPVS,
    taken: Callable[[float], bool],
    timeout: float,
    clock: Callable[[], float],
) -> List[PlannedTemplate]:
    """The templates of `pending` sent to a real server whose count has not yet grown by as
    many since `before`, waiting up to `timeout` for the counts.

    A count says how many, not which: a template of another client that expired meanwhile
    hides an arrival (the caller resends that real server's, which costs only an update of
    those that arrived), and one the traffic created counts as one of ours (a client that
    came meanwhile has its template, which is what the reseed is for).
    """
    want: Dict[CountKey, int] = {}
    for p in pending:
        k = _count_key(p)
        want[k] = want.get(k, 0) + 1
    deadline = clock() + timeout
    taken(timeout)
    delay = 0.05
    while True:
        now = _bound_counts(ipvs)
        short = {k for k, n in want.items() if now.get(k, 0) - before.get(k, 0) < n}
        if not short or clock() + delay > deadline:
            return [p for p in pending if _count_key(p) in short]
        time.sleep(delay)
        delay = min(delay * 2, 1.0)
