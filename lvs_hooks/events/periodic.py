"""What `lvs-hooks fifo` does between keepalived's events: the keeper while master, a snapshot
now and then while backup. Under the transition lock, so it never runs inside a transition; a
period that cannot get the lock at once is skipped."""

import logging
import time
from typing import Any, Callable, Optional

import filelock

from lvs_hooks.errors import LvsHooksError
from lvs_hooks.events.sequencer import LOCK_NAME

log = logging.getLogger(__name__)


def make_idle(app: Any) -> Callable[[Optional[str]], None]:
    cfg = app.config
    last_snapshot = [0.0]

    def idle(role: Optional[str]) -> None:
        if role not in ("MASTER", "BACKUP"):
            return
        want_snapshot = (
            role == "BACKUP"
            and cfg.keeper.snapshot_interval > 0
            and time.monotonic() - last_snapshot[0] >= cfg.keeper.snapshot_interval
        )
        if not (role == "MASTER" and cfg.keeper.enabled) and not want_snapshot:
            return
        lock = filelock.FileLock(f"{cfg.paths.run_dir}/{LOCK_NAME}", timeout=0.2, mode=0o600)
        try:
            with lock:
                if role == "MASTER":
                    _keep(cfg)
                else:
                    from lvs_hooks.commands.templates import take_snapshot

                    take_snapshot(app)
                    last_snapshot[0] = time.monotonic()
        except filelock.Timeout:
            log.debug("periodic work skipped: a transition holds the lock")
        except LvsHooksError as e:
            log.error("periodic work while %s: %s", role, e.format_message())

    return idle


def _keep(cfg: Any) -> None:
    from lvs_hooks.keeper import keep_once
    from lvs_hooks.kernel.netlink import IPVS

    with IPVS() as ipvs:
        keep_once(cfg, ipvs)
