"""The one path by which lvs-hooks puts templates into this director's kernel.

Every use case (the reseed at takeover and at start, the keeper's renewals, the fwmark repair
on a backup, the check of a received push) is a pure planner that yields PlannedTemplates, and
hands them here. This path owns what they must not each get right on their own:

- the transition lock (director.lock), so no injection interleaves with a keepalived
  transition or another injection; re-entrant for the MASTER transition that holds it;
- a last look, under the lock, whether the plan still holds (`proceed`): a periodic duty
  planned from a table read without the lock, and a transition may have changed the role since;
- the IPVS session, the receiving backup daemon, the paced local sender and the verification
  (reseed.runner, design.md sections 3.4 to 3.6);
- the ledger of injected templates (director.ledger), written only here.
"""

import logging
import time
from typing import Any, Callable, Dict, Optional, Sequence

import filelock

from lvs_hooks.config import Config
from lvs_hooks.director import ledger
from lvs_hooks.director.live import LiveTable
from lvs_hooks.director.lock import lock_path, transition_lock
from lvs_hooks.errors import LockTimeout
from lvs_hooks.kernel.model import template_key
from lvs_hooks.kernel.netlink import IPVS
from lvs_hooks.reseed.planner import PlannedTemplate
from lvs_hooks.reseed.runner import ReseedResult, run_reseed_configured

log = logging.getLogger(__name__)


def inject(
    cfg: Config,
    planned: Sequence[PlannedTemplate],
    by: str,
    *,
    verify: bool = True,
    resend_rounds: Optional[int] = None,
    ipvs: Optional[IPVS] = None,
    lock_timeout: Optional[float] = None,
    proceed: Optional[Callable[[], bool]] = None,
    live: Optional[LiveTable] = None,
) -> ReseedResult:
    """Send `planned` into the local kernel on behalf of `by`, verify (unless not `verify`),
    and record what was sent to live in the ledger.

    `ipvs`: the caller's open session (it read the services the plan rests on), else one is
    opened. `proceed`: asked once the lock is held; False abandons the plan (nothing is sent,
    `abandoned` is set). `live`: the table in memory, told what was sent. LockTimeout when
    the lock is held longer than `lock_timeout` (default transitions.lock_timeout).
    """
    if not planned:
        return ReseedResult()
    timeout = cfg.transitions.lock_timeout if lock_timeout is None else lock_timeout
    lock = transition_lock(cfg.paths.run_dir)
    try:
        lock.acquire(timeout=timeout)
    except filelock.Timeout:
        raise LockTimeout(
            f"{by}: {lock_path(cfg.paths.run_dir)} held for more than {timeout:g} s; "
            f"{len(planned)} templates not sent"
        ) from None
    try:
        if proceed is not None and not proceed():
            log.info("%s: %d templates planned, not sent: the director changed meanwhile",
                     by, len(planned))
            return ReseedResult(planned=len(planned), abandoned=True)
        overrides: Dict[str, Any] = {"verify": verify}
        if verify and live is not None and live.ready:
            within, entries = live.within_budget()
            if not within:
                # a whole read per verification round would cost minutes (design.md 2.4)
                overrides["by_counts"] = True
                log.info("%s: %d entries by the kernel's counters, over table.read_budget: "
                         "verified by the per-real-server counts", by, entries)
        if resend_rounds is not None:
            overrides["resend_rounds"] = resend_rounds
        t0 = time.monotonic()
        if ipvs is None:
            with IPVS() as own:
                res = run_reseed_configured(planned, own, cfg, **overrides)
        else:
            res = run_reseed_configured(planned, ipvs, cfg, **overrides)
        if live is not None:
            live.note_injected(planned)
        # A template sent with 1 s is being made to expire, not injected to live.
        ledger.record(
            cfg.paths.run_dir,
            [(template_key(p), p.timeout) for p in planned if p.timeout > 1],
            by,
        )
        log.debug("%s: %d templates injected in %.0f ms", by, res.sent,
                  (time.monotonic() - t0) * 1000)
        return res
    finally:
        lock.release()
