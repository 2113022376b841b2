"""A director's periodic duties, each on its own interval:

- while master: the template keeper (keeper.interval);
- while backup: the fwmark repair (keeper.fwmark_repair_interval) and a snapshot now and then
  (keeper.snapshot_interval).

They run beside keepalived's events, never in front of them: in the agent on a thread of their
own, in the fallback FIFO reader between events. A duty reads the table without the transition
lock (on a large table that read takes seconds) and takes the lock only to send, briefly and
only if it can at once; under it, it checks that the role is still the one it planned for and
that no event is waiting (`should_yield`), else it drops its plan and tries again next turn.
"""

import logging
import time
from typing import Callable, Dict, List, Optional, Tuple

from lvs_hooks.director.fwmark_repair import repair_once
from lvs_hooks.director.keeper import keep_once
from lvs_hooks.director.snapshot import take_snapshot
from lvs_hooks.director.state import Director
from lvs_hooks.errors import LvsHooksError

log = logging.getLogger(__name__)

Task = Tuple[str, str, float]  # name, the role it runs in, interval in seconds


class Duties:
    def __init__(
        self,
        director: Director,
        role_now: Callable[[], Optional[str]],
        clock: Callable[[], float] = time.monotonic,
    ):
        """`role_now()`: the director's role as the last transition left it (asked again under
        the lock before anything is sent)."""
        self.director = director
        self.role_now = role_now
        self.clock = clock
        self.tasks = _tasks(director)
        self.last: Dict[str, float] = {}
        self.failures: Dict[str, int] = {}
        director.duties_beside = True

    @property
    def period(self) -> float:
        """How often to call run_due: the shortest task interval."""
        return min((iv for _, _, iv in self.tasks), default=self.director.cfg.keeper.interval)

    def due(self, role: Optional[str]) -> List[str]:
        now = self.clock()
        # A task is due a little early rather than a whole period late.
        slack = 0.05 * self.period
        names = [
            name
            for name, task_role, interval in self.tasks
            if task_role == role and now - self.last.get(name, -1e9) >= interval - slack
        ]
        # the snapshot a transition to BACKUP or FAULT left to this thread (snapshot_step)
        if self.director.snapshot_wanted and role in ("BACKUP", "FAULT") and (
            "snapshot" not in names
        ):
            names.append("snapshot")
        return names

    def run_due(
        self, role: Optional[str], should_yield: Callable[[], bool] = lambda: False
    ) -> None:
        """Run the tasks due in `role`. A failing task is logged with its count of failures and
        does not keep the others from running."""
        if role != "BACKUP":
            # Repairs belong to one stretch as backup; the MASTER reseed took what it needed.
            self.director.repair.pending.clear()
        for name in self.due(role):
            if should_yield():
                return  # an event is waiting: it comes first; the rest next turn
            self.last[name] = self.clock()

            def proceed(role: Optional[str] = role) -> bool:
                return self.role_now() == role and not should_yield()

            try:
                self._run(name, proceed)
            except LvsHooksError as e:
                self._failed(name, role, e.format_message())
            except Exception:  # a bug: the traceback, once per failure, and the next duty
                log.exception("periodic %s while %s failed", name, role)
                self.failures[name] = self.failures.get(name, 0) + 1

    def _failed(self, name: str, role: Optional[str], message: str) -> None:
        n = self.failures[name] = self.failures.get(name, 0) + 1
        log.error("periodic %s while %s failed (%d so far): %s", name, role, n, message)

    def _run(self, name: str, proceed: Callable[[], bool]) -> None:
        cfg = self.director.cfg
        if name == "snapshot":
            wanted = self.director.snapshot_wanted
            self.director.snapshot_wanted = False
            reason = "snapshot of the transition to backup" if wanted else "periodic snapshot"
            take_snapshot(cfg, reason=reason, live=self.director.live)
        elif name == "keeper":
            keep_once(self.director, proceed)
        else:
            repair_once(self.director, proceed)


def _tasks(director: Director) -> List[Task]:
    keeper = director.cfg.keeper
    tasks = []
    if keeper.enabled:
        tasks.append(("keeper", "MASTER", keeper.interval))
    if keeper.fwmark_repair_interval > 0:
        tasks.append(("fwmark-repair", "BACKUP", keeper.fwmark_repair_interval))
    if keeper.snapshot_interval > 0:
        tasks.append(("snapshot", "BACKUP", keeper.snapshot_interval))
    return tasks
