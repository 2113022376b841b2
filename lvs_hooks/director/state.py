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
        exact: bool = False,
    ) -> ConnTable:
        """The templates a duty plans from: the table in memory once it is reconciled, else a
        whole read of the kernel's (logged with `reason` and its cost). `below`: the caller
        needs only the templates with fewer seconds left (the table in memory can say which
        without building the others). `exact`: the caller checks the kernel's table entry by
        entry (the push check, the reseed's "already there"): the kernel's word whenever its
        counters say a whole read is within table.read_budget, the table in memory above it.
        The table in memory may hold a template the kernel's socket dropped (docs/design.md
        3.5): the check exists to find exactly those."""
        live = self.live
        if live is not None and live.ready and exact:
            within, entries = live.within_budget()
            if not within:
                log.info("%s: %d entries by the kernel's counters, over table.read_budget: "
                         "checked against the table in memory", reason, entries)
                return live.view(client_counts=client_counts, below=below)
        elif live is not None and live.ready:
            view = live.view(client_counts=client_counts, below=below)
            log.debug("%s: %d templates from the table in memory", reason, len(view.entries))
            return view
        return read_conn_table(
            self.cfg.paths.proc_root, templates_only=True, client_counts=client_counts,
            reason=reason,
        )

    def store(self) -> SnapshotStore:
        return snapshot_store(self.cfg)


def snapshot_store(cfg: Config) -> SnapshotStore:
    return SnapshotStore(cfg.paths.state_dir, keep=cfg.snapshot.keep)
