"""What `lvs-hooks fifo` does between keepalived's events, each task on its own interval:

- while master: the template keeper (keeper.interval);
- while backup: the fwmark repair (keeper.fwmark_repair_interval) and a snapshot now and then
  (keeper.snapshot_interval).

Under the transition lock, so it never runs inside a transition; a task that cannot get the
lock at once is skipped until its next turn."""

import logging
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import filelock

from lvs_hooks.errors import LvsHooksError
from lvs_hooks.events.sequencer import LOCK_NAME

log = logging.getLogger(__name__)


def _tasks(cfg: Any) -> List[Tuple[str, str, float]]:
    """(name, role, interval) of the enabled tasks."""
    tasks = []
    if cfg.keeper.enabled:
        tasks.append(("keeper", "MASTER", cfg.keeper.interval))
    if cfg.keeper.fwmark_repair_interval > 0:
        tasks.append(("fwmark-repair", "BACKUP", cfg.keeper.fwmark_repair_interval))
    if cfg.keeper.snapshot_interval > 0:
        tasks.append(("snapshot", "BACKUP", cfg.keeper.snapshot_interval))
    return tasks


def idle_period(cfg: Any) -> float:
    """How often the FIFO reader should call the idle function: the shortest task interval."""
    return min((iv for _, _, iv in _tasks(cfg)), default=cfg.keeper.interval)


def make_idle(app: Any, clock: Callable[[], float] = time.monotonic):
    cfg = app.config
    tasks = _tasks(cfg)
    last: Dict[str, float] = {}
    from lvs_hooks.fwmark_repair import state_for

    repair_state = state_for(app)

    def due(role: Optional[str]) -> List[str]:
        now = clock()
        # A task is due a little early rather than a whole idle period late.
        slack = 0.05 * idle_period(cfg)
        return [
            name
            for name, task_role, interval in tasks
            if task_role == role and now - last.get(name, -1e9) >= interval - slack
        ]

    def idle(role: Optional[str]) -> None:
        if role != "BACKUP":
            # Repairs belong to one stretch as backup; the MASTER reseed took what it needed.
            repair_state.pending.clear()
        names = due(role)
        if not names:
            return
        lock = filelock.FileLock(f"{cfg.paths.run_dir}/{LOCK_NAME}", timeout=0.2, mode=0o600)
        try:
            with lock:
                for name in names:
                    last[name] = clock()
                    _run(name, app, repair_state)
        except filelock.Timeout:
            log.debug("periodic %s skipped: a transition holds the lock", ", ".join(names))
        except LvsHooksError as e:
            log.error("periodic work while %s: %s", role, e.format_message())

    return idle


def _run(name: str, app: Any, repair_state: Any) -> None:
    if name == "snapshot":
        from lvs_hooks.commands.templates import take_snapshot

        take_snapshot(app)
        return
    from lvs_hooks.kernel.netlink import IPVS

    with IPVS() as ipvs:
        if name == "keeper":
            from lvs_hooks.keeper import keep_once

            keep_once(app.config, ipvs)
        else:
            from lvs_hooks.fwmark_repair import repair_once

            repair_once(app.config, ipvs, repair_state)
