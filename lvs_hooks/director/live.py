"""The director's table in memory as the agent's threads share it (lvs_hooks.table).

The agent's loop feeds it (sync datagrams heard as backup, captured as they leave as master),
the inject path tells it what lvs-hooks sent, the periodic duties and the transitions read it
instead of /proc/net/ip_vs_conn, whose whole read the kernel serves in time quadratic in the
table's size (design.md 2.4). It counts as the table only once a reconciliation has
filled it (at the agent's start, a read of /proc within table.read_budget); before that, and in
every process without an agent, the duties read the kernel's table as they always did.

A reconciliation replaces the contents with what one read showed: an entry the stream brought
during that read and the read did not show is dropped, and comes back with the next message
for it (a master re-sends a template with every packet of its client, design.md 3.8).
"""

import contextlib
import logging
import os
import threading
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import filelock

from lvs_hooks.config import Config
from lvs_hooks.director.lock import lock_path, transition_lock
from lvs_hooks.errors import KernelError, LockTimeout, ReadAbandoned
from lvs_hooks.kernel.conntable import ClientKey, ConnTable, read_conn_table
from lvs_hooks.kernel.model import ConnEntry, Service
from lvs_hooks.kernel.netlink import IPVS, Timeouts
from lvs_hooks.reseed.planner import PlannedTemplate
from lvs_hooks.singleflight import SingleFlight
from lvs_hooks.table import ReconcileReport, TemplateTable
from lvs_hooks.table.compare import compare

log = logging.getLogger(__name__)


def kernel_entries() -> int:
    """The entries of the kernel's table by its per-real-server counters: one netlink dump, no
    read of the table (design.md 2.5)."""
    with IPVS() as ipvs:
        return sum(c.active + c.inactive + c.persistent for c in ipvs.dest_counts())


def kernel_template_counts() -> Dict[Tuple[Tuple, str, int], int]:
    """Templates bound to each real server, by the kernel's counters (PERSIST_CONNS)."""
    with IPVS() as ipvs:
        return {(c.service_key, c.addr, c.port): c.persistent for c in ipvs.dest_counts()}


def kernel_timeouts() -> Timeouts:
    """The director's connection timeouts (one netlink message)."""
    with IPVS() as ipvs:
        return ipvs.timeouts()


def count_drift(
    table: Dict[Tuple[Tuple, str, int], int], kernel: Dict[Tuple[Tuple, str, int], int]
) -> Dict[Tuple[Tuple, str, int], Tuple[int, int]]:
    """(table, kernel) template counts of the real servers where the two differ. Only real
    servers the kernel knows: a template naming port 0 (a kernel master's fwmark template) or
    a gone real server is bound to none, and counted by none (design.md 2.5)."""
    return {k: (table.get(k, 0), n) for k, n in kernel.items() if table.get(k, 0) != n}


class LiveTable:
    def __init__(
        self,
        cfg: Config,
        table: Optional[TemplateTable] = None,
        clock: Callable[[], float] = time.monotonic,
        counts: Callable[[], int] = kernel_entries,
    ):
        """`counts()`: how many entries the kernel holds (kernel_entries; tests pass theirs)."""
        self.cfg = cfg
        self.counts = counts
        self.table = table if table is not None else TemplateTable(syncid=cfg.sync.syncid)
        self.clock = clock
        self.lock = threading.Lock()  # the table itself is not thread-safe
        self.ready = False  # reconciled with the kernel's table at least once
        self.reconciled_at: Optional[float] = None
        self.lost_at: Optional[float] = None  # a feed last dropped datagrams (note_loss)
        self.losses = 0  # datagrams the feeds dropped, all told
        # snapshots dumped from the table: one at a time (director.snapshot)
        self.dumps: SingleFlight[Dict[str, Any]] = SingleFlight()

    # -- feeds

    def ingest(self, datagram: bytes, origin: Optional[str]) -> int:
        with self.lock:
            return self.table.ingest(datagram, self.clock(), origin)

    def note_injected(self, planned: Iterable[PlannedTemplate]) -> int:
        with self.lock:
            return self.table.note_injected(planned, self.clock())

    def note_loss(self, feed: str, datagrams: int) -> None:
        """A feed dropped `datagrams` (its receive buffer was full): the entries they carried
        are missing here and nothing says which, so the table is not the table until a
        reconciliation, or the longest persistence without another loss (TableUpkeep), has
        made it whole again; meanwhile the duties read the kernel's table."""
        with self.lock:
            self.losses += datagrams
            self.lost_at = self.clock()
            was, self.ready = self.ready, False
        log.warning(
            "table in memory: the %s dropped %d datagrams (its receive buffer was full); %s",
            feed, datagrams,
            "the duties read the kernel's table until it is whole again" if was
            else "it is not the table yet",
        )

    def tick(
        self, services: Optional[Sequence[Service]] = None, timeouts: Optional[Timeouts] = None
    ) -> None:
        """Let go of what ended; with `services`, key clients as their netmasks do; with
        `timeouts`, tell a master's new connections from its old ones by them."""
        with self.lock:
            if services is not None:
                self.table.use_services(services)
            if timeouts is not None:
                self.table.use_timeouts(timeouts.tcp, timeouts.tcpfin, timeouts.udp)
            self.table.expire(self.clock())

    def reconcile(self, reason: str, max_lines: Optional[int] = None) -> ReconcileReport:
        """Read the kernel's table (logged with `reason`) and make this one what it showed.

        What the stream brings during the read stays (TemplateTable.begin_reconcile). A
        template the table holds and the read did not show is dropped only if a second read
        does not show it either: a read of a changing table can skip entries
        (design.md 2.4), and a template dropped here while its client's connection lives
        on is one the keeper would not renew.

        `max_lines`: each read stops past that many lines (ReadAbandoned, a KernelError): the
        caller judged it cheap by the kernel's counters, and the table may grow during it. A
        read that fails or stops changes nothing here (the table keeps what it holds, and is
        the table no more than before)."""
        t0 = time.monotonic()
        with self.lock:
            self.table.begin_reconcile()
            lost_before = self.lost_at
        read = self._read(reason, max_lines)
        with self.lock:
            report = self.table.reconcile(read.entries, self.clock(), begun=True, drop=False)
        del read
        if report.unseen:
            again = self._read(
                f"{reason}; again, for {report.unseen} templates the first did not show",
                max_lines,
            )
            with self.lock:
                second = self.table.drop_unseen(again.entries, self.clock())
            report.dropped = second.dropped
            report.examples["dropped"] = second.examples.get("dropped", [])
        with self.lock:
            size = len(self.table)
            # a loss during the reads is not made good by them: the upkeep reads again
            if self.lost_at == lost_before:
                self.ready = True
                self.lost_at = None
        self.reconciled_at = self.clock()
        log.info(
            "table in memory reconciled (%s): %d templates; %d added, %d dropped (of %d the "
            "read did not show), %d changed, %d retimed against what it held; %.0f ms",
            reason, size, report.added, report.dropped, report.unseen, report.changed,
            report.retimed, (time.monotonic() - t0) * 1000,
        )
        return report

    def _read(self, reason: str, max_lines: Optional[int]) -> ConnTable:
        """One read of a reconciliation; one that fails or stops ends it with nothing dropped
        (after the second, the unseen stay until their end or the next reconciliation)."""
        try:
            return read_conn_table(self.cfg.paths.proc_root, reason=reason, max_lines=max_lines)
        except KernelError:
            with self.lock:
                self.table.abandon_reconcile()
            raise

    def check(self, tolerance: float = 2.0, lock_timeout: Optional[float] = None) -> dict:
        """The table against a whole read of the kernel's table, asked for by hand (`lvs-hooks
        table-check`): every template that differs (table.compare). The read's own duration is
        added to the tolerance: the kernel's lines are taken one page at a time.

        Under the transition lock (`lock_timeout`, default transitions.lock_timeout; LockTimeout
        past it): the inject path tells the table what it sent once the kernel has taken it, so
        a read in the middle of an injection is older than the table (lab, churn: the keeper's
        104 renewals during a check showed as 29 templates ending 22 s apart)."""
        timeout = self.cfg.transitions.lock_timeout if lock_timeout is None else lock_timeout
        lock = transition_lock(self.cfg.paths.run_dir)
        try:
            lock.acquire(timeout=timeout)
        except filelock.Timeout:
            raise LockTimeout(
                f"table check: {lock_path(self.cfg.paths.run_dir)} held for more than "
                f"{timeout:g} s; try again"
            ) from None
        try:
            t0 = time.monotonic()
            read = read_conn_table(self.cfg.paths.proc_root, templates_only=True,
                                   reason="table check, asked for by hand")
            read_s = time.monotonic() - t0
            with self.lock:
                now = self.clock()
                self.table.expire(now)  # a re-arm due shows now, not at the next tick
                mine = list(self.table.templates(now))
        finally:
            lock.release()
        result = compare(mine, read.entries, tolerance + read_s).to_dict()
        result.update(ready=self.ready, read_ms=round(read_s * 1000, 1),
                      losses=self.losses)
        log.info("table check: %d templates differ of %d in the table and %d in the kernel "
                 "(read in %.0f ms)", result["mismatches"], result["table"], result["kernel"],
                 read_s * 1000)
        return result

    # -- what the duties read

    def view(self, client_counts: bool = False, below: Optional[float] = None) -> ConnTable:
        """The templates (and with `client_counts`, which clients still have a connection) in
        the shape a read of /proc gives them to the planners; `below`: only the templates with
        fewer seconds left (the keeper's question)."""
        with self.lock:
            now = self.clock()
            self.table.expire(now)  # a re-arm due shows now, not at the next tick
            entries = tuple(self.table.templates(now, below=below))
            counts = self.table.client_counts(now) if client_counts else None
        return ConnTable(
            entries=entries, total_lines=None, templates_only=True, client_counts=counts
        )

    def explain_input(
        self,
    ) -> Tuple[Tuple[List[Tuple[int, int]], List[Tuple[Any, int]]], Dict[ClientKey, float],
               float, float]:
        """What `lvs-hooks explain` reads instead of the kernel's table, as of one moment: a
        copy of the templates (TemplateTable.entries, for its json_rows or
        templates_of_clients, which read a copy without the lock), when each client's last
        connection heard of ends (TemplateTable.client_ends), the moment on the table's clock
        and as a wall time."""
        with self.lock:
            now = self.clock()
            self.table.expire(now)
            copy = self.table.entries()
            ends = self.table.client_ends(now)
            at = time.time()
        return copy, ends, now, at

    def template_counts(self) -> Dict[Tuple[Tuple, str, int, str], int]:
        """Live templates per (service key, real server, port, origin): for `status`."""
        with self.lock:
            return self.table.counts_by_dest_origin(self.clock())

    def templates_of(self, protocol: str) -> List[ConnEntry]:
        """The templates of the services of one protocol ("IP": fwmark services)."""
        with self.lock:
            return list(self.table.templates_of(self.clock(), protocol))

    def __len__(self) -> int:
        with self.lock:
            return len(self.table)

    def within_budget(self) -> Tuple[bool, int]:
        """(a whole read of the kernel's table is within table.read_budget, its entries)."""
        n = self.counts()
        return n <= self.cfg.table.read_budget, n


def _timeouts_text(t: Timeouts) -> str:
    return f"{t.tcp} {t.tcpfin} {t.udp}"


class TableUpkeep:
    """The table's upkeep, on a thread of its own at the lowest CPU priority: every second it
    lets ended entries go and takes the director's connection timeouts, every 10 s the services'
    netmasks, and it reconciles the table with
    the kernel's at start (before the agent's other parts start) and every
    table.reconcile_interval, but only while the kernel's per-real-server counters (one netlink
    message) say a whole read is within table.read_budget, and it stops a read once the table
    has grown past twice the budget during it.

    Above the budget (or after a read that stopped) the table fills from the stream: it counts
    as the table
    once it has listened for the longest persistence_timeout (and the kernel's 60 s re-arm),
    since a template that no message refreshed for that long has ended in the kernel too.
    """

    REARM = 60  # ip_vs_conn_expire re-arms a template that still controls connections

    def __init__(
        self,
        live: LiveTable,
        services: Callable[[], Sequence[Service]],
        clock: Callable[[], float] = time.monotonic,
        kernel_counts: Callable[[], Dict[Tuple[Tuple, str, int], int]] = kernel_template_counts,
        timeouts: Optional[Callable[[], Timeouts]] = kernel_timeouts,
    ):
        """`services()`: the live services; `kernel_counts()`: templates per real server by the
        kernel's counters; `timeouts()`: the connection timeouts (all three over netlink; None:
        the kernel's defaults)."""
        self.live = live
        self.kernel_counts = kernel_counts
        self.timeouts = timeouts
        self.services = services
        self.clock = clock
        self.started = clock()
        self.next_reconcile = self.started
        self.seen_loss: Optional[float] = None  # the live table's lost_at already acted on
        self.since = self.started  # listening without a loss since
        self.next_services = self.started
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.longest = self.REARM
        self.known_timeouts: Optional[Timeouts] = None

    def start(self) -> None:
        # The first look before anything else of the agent starts: within the budget, the
        # reconciliation reads the table while it is small, before this director asks for a
        # push and its peers fill it (lab, a 200,000-template table filling by the sync
        # stream: a first read begun at 5,520 entries took 523 s and found 200,000).
        try:
            self.once()
        except Exception:
            log.exception("table in memory: upkeep failed")
        self._thread = threading.Thread(target=self._loop, name="table", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _loop(self) -> None:
        # this thread only (Linux nices threads one by one): the reads of /proc must not take
        # CPU from the event thread
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        while not self._stop.wait(1.0):
            try:
                self.once()
            except Exception:  # the upkeep must go on; the duties fall back to /proc meanwhile
                log.exception("table in memory: upkeep failed")

    def check_drift(self) -> int:
        """Compare the table's templates per real server with the kernel's counters and log
        where they differ (the check that stands in for a whole read above the budget); the
        number of real servers that differ."""
        with self.live.lock:
            table = self.live.table.counts_by_dest(self.live.clock())
        drift = count_drift(table, self.kernel_counts())
        if drift:
            worst = sorted(drift.items(), key=lambda kv: -abs(kv[1][0] - kv[1][1]))[:3]
            log.warning(
                "table in memory: template counts differ from the kernel's at %d real servers, "
                "e.g. %s", len(drift),
                "; ".join(f"{a}:{p} of {s}: table {t}, kernel {k}" for (s, a, p), (t, k) in worst),
            )
        return len(drift)

    def once(self) -> None:
        now = self.clock()
        services = timeouts = None
        if now >= self.next_services:
            services = self.services()
            self.longest = max([self.REARM] + [s.timeout for s in services if s.persistent])
            self.next_services = now + 10.0
        if self.timeouts is not None:
            # every second (one small netlink message): a master's own templates are timed by
            # how long their connections live idle, and each one captured under a stale
            # timeout keeps that estimate until its client's next packet (lab, churn: UDP set
            # to 20 s while the table still counted 300 s; 150 templates the kernel let go
            # 30 s later were re-armed here for 300 s)
            timeouts = self.timeouts()
            if timeouts != self.known_timeouts:
                if self.known_timeouts is not None:
                    log.info("table in memory: the director's connection timeouts changed from "
                             "%s to %s (tcp tcpfin udp, s); connections heard from now on are "
                             "timed by them", _timeouts_text(self.known_timeouts),
                             _timeouts_text(timeouts))
                self.known_timeouts = timeouts
        self.live.tick(services, timeouts)
        lost = self.live.lost_at
        if lost is not None and lost != self.seen_loss:
            # the feeds dropped datagrams: listen afresh, and within the budget read at once
            self.seen_loss = lost
            self.since = lost
            self.next_reconcile = now
        if now < self.next_reconcile:
            return
        cfg = self.live.cfg.table
        interval = cfg.reconcile_interval
        self.next_reconcile = now + interval if interval > 0 else float("inf")
        within, entries = self.live.within_budget()
        if within:
            try:
                # and stop once the table has grown past twice the budget during the read (the
                # kernel serves it in quadratic time: design.md 2.4)
                self.live.reconcile(f"table in memory: reconciliation, {entries} entries by "
                                    f"the kernel's counters", max_lines=2 * cfg.read_budget + 1)
                return
            except ReadAbandoned as e:
                log.info("table in memory: reconciliation abandoned, the table grew past twice "
                         "table.read_budget %d during the read (%s); the table fills from the "
                         "sync stream", cfg.read_budget, e)
        else:
            log.info(
                "table in memory: the kernel counts %d entries, over table.read_budget %d: no "
                "whole read; the table fills from the sync stream", entries, cfg.read_budget,
            )
        self.check_drift()
        if not self.live.ready:
            # look again when it may count as the table (and at the counters now and then)
            self.next_reconcile = min(self.next_reconcile, now + 10.0)
            if now - self.since >= self.longest:
                self.live.ready = True
                self.live.lost_at = None
                log.info(
                    "table in memory: %d templates after %.0f s of the sync stream without a "
                    "loss (the longest persistence_timeout): it is the table now",
                    len(self.live), now - self.since,
                )
        elif interval <= 0:
            self.next_reconcile = now + 60.0  # look at the counters again now and then
