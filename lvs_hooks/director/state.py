"""What one director process keeps between two calls into the director layer."""

import logging
from typing import Optional

from lvs_hooks.config import Config
from lvs_hooks.director.fwmark_repair import RepairState
from lvs_hooks.director.live import LiveTable
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
        live = self.live
        if live is not None and live.ready:
            within, entries = live.within_budget()
            if not within:
                view = live.view(client_counts=client_counts, below=below)
                log.debug("%s: %d templates from the table in memory (the kernel counts %d "
                          "entries, over table.read_budget)", reason, len(view.entries), entries)
                return view
        return read_conn_table(
            self.cfg.paths.proc_root, templates_only=True, client_counts=client_counts,
            reason=reason,
        )

    def store(self) -> SnapshotStore:
        return snapshot_store(self.cfg)


def snapshot_store(cfg: Config) -> SnapshotStore:
    return SnapshotStore(cfg.paths.state_dir, keep=cfg.snapshot.keep)
