"""A director's periodic duties, each on its own interval:

- while master: the template keeper (keeper.interval);
- while backup: the fwmark repair (keeper.fwmark_repair_interval) and a snapshot now and then
  (keeper.snapshot_interval).

They run beside keepalived's events, never in front of them: in the agent on a thread of their
own, in the fallback FIFO reader between events. A duty reads the table without the transition
lock (on a large table that read takes seconds) and takes the lock only to send, briefly and
only if it can at once; under it, it checks that the role is still the one it planned for and
that no event is waiting (`should_yield`), else it drops its plan and tries again next turn.

A periodic snapshot waits at least SNAPSHOT_COST_FACTOR times as long as the last one took
(keeper.snapshot_interval otherwise). A snapshot's cost grows with the table and with what else
the machine does: in the lab, a backup taking in 200,000 templates from the sync stream dumped
its table every 30 s and each dump took 4 to 23 s, more than half of one core taken from the
stream it was ingesting. A snapshot only has to be recent enough to restart from; the one a
transition to backup asks for is not stretched.

A duty that fails is a defect to see, not a line lost among the same line every period (issue
17: a keeper that raised on every period for an IPv6 service showed only in the log). Failures
are counted per duty, the traceback of a bug is logged once per streak (and when the error
changes), and `<run_dir>/duties.json` says, for the process that runs the duties, how many
times each one failed, how many times in a row up to now, and the last error: written when a
duty fails and when a streak ends, never every period; `read_duty_failures` reads it (for
`status` and the metrics).
"""

import json
import logging
import os
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from lvs_hooks import safeio
from lvs_hooks.atomicfile import write_atomic
from lvs_hooks.director.fwmark_repair import repair_once
from lvs_hooks.director.keeper import keep_once
from lvs_hooks.director.snapshot import take_snapshot
from lvs_hooks.director.state import Director
from lvs_hooks.errors import LvsHooksError

log = logging.getLogger(__name__)

Task = Tuple[str, str, float]  # name, the role it runs in, interval in seconds

DUTIES_FILE = "duties.json"
# This process's own code. keepalived's FIFO reader outlives a removal of the package (its
# modules are loaded; keepalived still runs it): its next periodic snapshot would create the
# state directory that `apt purge` had just removed, with client addresses in it (lab: the
# quick start's purge found /var/lib/lvs-hooks again). With the code gone, the duties stop.
_OWN_CODE = os.path.abspath(__file__)
# A periodic snapshot takes at most 1/SNAPSHOT_COST_FACTOR of the time (the module's docstring).
SNAPSHOT_COST_FACTOR = 10.0


def _installed() -> bool:
    return os.path.exists(_OWN_CODE)


class Duties:
    def __init__(
        self,
        director: Director,
        role_now: Callable[[], Optional[str]],
        clock: Callable[[], float] = time.monotonic,
        installed: Callable[[], bool] = _installed,
    ):
        """`role_now()`: the director's role as the last transition left it (asked again under
        the lock before anything is sent). `installed()`: lvs-hooks' code is still on disk."""
        self.director = director
        self.role_now = role_now
        self.clock = clock
        self.installed = installed
        self.removed = False  # found removed: no more duties in this process
        self.tasks = _tasks(director)
        self.last: Dict[str, float] = {}
        self.took: Dict[str, float] = {}  # how long each task's last run took, in seconds
        self.failures: Dict[str, int] = {}  # since this process started
        self.in_a_row: Dict[str, int] = {}  # up to the last run: 0 once a run succeeded
        self.last_error: Dict[str, str] = {}
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
            if task_role == role
            and now - self.last.get(name, -1e9) >= self.interval(name, interval) - slack
        ]
        # the snapshot a transition to BACKUP or FAULT left to this thread (snapshot_step)
        if self.director.snapshot_wanted and role in ("BACKUP", "FAULT") and (
            "snapshot" not in names
        ):
            names.append("snapshot")
        return names

    def interval(self, name: str, configured: float) -> float:
        """A task's interval now: the configured one, or for the snapshot SNAPSHOT_COST_FACTOR
        times its last run's length when that is longer."""
        if name == "snapshot":
            return max(configured, SNAPSHOT_COST_FACTOR * self.took.get(name, 0.0))
        return configured

    def run_due(
        self, role: Optional[str], should_yield: Callable[[], bool] = lambda: False
    ) -> None:
        """Run the tasks due in `role`. A failing task is counted, logged with its count of
        failures (a bug's traceback once per streak) and does not keep the others from running.
        None at all once lvs-hooks has been removed from the machine (`installed`)."""
        if self.removed or not self.installed():
            if not self.removed:
                self.removed = True
                log.warning("lvs-hooks has been removed from this machine (%s is gone): this "
                            "process runs no more periodic duties", _OWN_CODE)
            return
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
                self._run_timed(name, proceed)
            except LvsHooksError as e:
                self._failed(name, role, e.format_message())
            except Exception as e:  # a bug: counted, its traceback once per streak
                self._failed(name, role, f"{type(e).__name__}: {e}", bug=True)
            else:
                if self.in_a_row.get(name):
                    log.info("periodic %s while %s ran again after %d failures in a row", name,
                             role, self.in_a_row[name])
                    self.in_a_row[name] = 0
                    self._record()

    def _failed(self, name: str, role: Optional[str], message: str, bug: bool = False) -> None:
        n = self.failures[name] = self.failures.get(name, 0) + 1
        row = self.in_a_row[name] = self.in_a_row.get(name, 0) + 1
        again = row > 1 and self.last_error.get(name) == message
        self.last_error[name] = message
        streak = f", {row} in a row" if row > 1 else ""
        text = f"periodic {name} while {role} failed ({n} so far{streak}): {message}"
        if bug and not again:
            log.exception(text)
        else:
            log.error(text)
        self._record()

    def _record(self) -> None:
        """`<run_dir>/duties.json` (see the module's docstring); a failure to write it is
        logged and changes nothing else."""
        tasks = {
            name: {
                "failures": n,
                "in_a_row": self.in_a_row.get(name, 0),
                "last_error": self.last_error.get(name, ""),
            }
            for name, n in self.failures.items()
        }
        data = {"pid": os.getpid(), "at": time.time(), "tasks": tasks}
        run_dir = self.director.cfg.paths.run_dir
        try:
            os.makedirs(run_dir, mode=0o700, exist_ok=True)
            write_atomic(os.path.join(run_dir, DUTIES_FILE), json.dumps(data).encode(), 0o644)
        except OSError as e:
            log.warning("cannot record the periodic duties' failures in %s: %s", run_dir, e)

    def _run_timed(self, name: str, proceed: Callable[[], bool]) -> None:
        try:
            self._run(name, proceed)
        finally:
            self.took[name] = self.clock() - self.last[name]

    def _run(self, name: str, proceed: Callable[[], bool]) -> None:
        cfg = self.director.cfg
        if name == "snapshot":
            wanted = self.director.snapshot_wanted
            self.director.snapshot_wanted = False
            reason = "snapshot of the transition to backup" if wanted else "periodic snapshot"
            take_snapshot(cfg, reason=reason, live=self.director.live, within_budget_only=True)
        elif name == "keeper":
            keep_once(self.director, proceed)
        else:
            repair_once(self.director, proceed)


def read_duty_failures(run_dir: str) -> Optional[Dict[str, Any]]:
    """What `<run_dir>/duties.json` holds: {"pid", "at", "tasks": {name: {"failures",
    "in_a_row", "last_error"}}}, or None when no duty has failed since boot (or the file is
    unreadable)."""
    try:
        data = json.loads(safeio.read_file(os.path.join(run_dir, DUTIES_FILE), 1 << 16))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("tasks"), dict) else None


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
