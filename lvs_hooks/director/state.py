"""What one director process keeps between two calls into the director layer."""

import logging
from typing import Optional

from lvs_hooks.config import Config
from lvs_hooks.director.fwmark_repair import RepairState
from lvs_hooks.director.live import LiveTable
from lvs_hooks.errors import ReadAbandoned
from lvs_hooks.kernel.conntable import ConnTable, read_conn_table
from lvs_hooks.snapshot import SnapshotStore

log = logging.getLogger(__name__)


class Director:
    """The configuration, and the fwmark templates under repair: the backup's periodic repair
    fills that state, and the MASTER transition's reseed, in the same process, finishes what it
    left (the table shows those templates with port 0 and the 1 s the repair gave them)."""

    def __init__(self, cfg: Config, live: Optional[LiveTable] = None):
        """`live`: the table in memory (the agent's); without it every read is of /proc."""
        self.cfg = cfg
        self.repair = RepairState()
        self.live = live
        # Set where a thread runs the periodic duties beside the events (the agent, the FIFO
        # reader): a transition may then leave its snapshot to them (snapshot_wanted).
        self.duties_beside = False
        self.snapshot_wanted = False

    def table(
        self,
        reason: str,
        client_counts: bool = False,
        below: Optional[float] = None,
    ) -> ConnTable:
        """The templates a duty plans from: the kernel's word (a whole read, logged with
        `reason` and its cost) whenever the kernel's counters say the read is within
        table.read_budget; above it, the table in memory once it is the table. `below`: the
        caller needs only the templates with fewer seconds left (the table in memory can say
        which without building the others).

        The table in memory replaces only the reads that are expensive: it can differ from the
        kernel's (a datagram the kernel's socket dropped and the listener heard, design.md
        3.5; a template the kernel re-armed for its connections, whose re-send is batched), and
        where the kernel's word is cheap, it is the one to plan from."""
        table = self._table(reason, client_counts, below, periodic=False)
        assert table is not None  # only a periodic read is ever skipped
        return table

    def duty_table(
        self,
        reason: str,
        client_counts: bool = False,
        below: Optional[float] = None,
    ) -> Optional[ConnTable]:
        """As `table`, for a periodic duty, which can wait for its next period: None (logged)
        where a whole read would be over table.read_budget while the table in memory is not
        the table yet, or where the table grew past twice the budget during a read judged
        within it. A backup whose table fills from the sync stream is not made to read a
        table the kernel serves in quadratic time (design.md 2.4; lab, under load: the
        keeper's read took 405 s, and the other periodic duties waited behind it)."""
        return self._table(reason, client_counts, below, periodic=True)

    def _table(
        self, reason: str, client_counts: bool, below: Optional[float], periodic: bool
    ) -> Optional[ConnTable]:
        live = self.live
        max_lines: Optional[int] = None
        if live is not None and (live.ready or periodic):
            within, entries = live.within_budget()
            budget = self.cfg.table.read_budget
            if not within and live.ready:
                view = live.view(client_counts=client_counts, below=below)
                log.debug("%s: %d templates from the table in memory (the kernel counts %d "
                          "entries, over table.read_budget)", reason, len(view.entries), entries)
                return view
            if not within:
                log.info("%s: skipped, the kernel counts %d entries, over table.read_budget "
                         "%d, and the table in memory is not the table yet; next period",
                         reason, entries, budget)
                return None
            if periodic:
                max_lines = 2 * budget + 1  # and the header
        try:
            return read_conn_table(
                self.cfg.paths.proc_root, templates_only=True, client_counts=client_counts,
                reason=reason, max_lines=max_lines,
            )
        except ReadAbandoned as e:
            if max_lines is None:
                raise
            log.info("%s: skipped, the table grew past twice table.read_budget during the "
                     "read (%s); next period", reason, e)
            return None

    def store(self) -> SnapshotStore:
        return snapshot_store(self.cfg)


def snapshot_store(cfg: Config) -> SnapshotStore:
    return SnapshotStore(cfg.paths.state_dir, keep=cfg.snapshot.keep)
