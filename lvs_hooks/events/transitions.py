"""What this director does on each keepalived state, as a list of steps for the sequencer.

    MASTER          firewall, sysctls, timeouts, reseed          (then the journal record)
    BACKUP, FAULT   firewall, sysctls, timeouts, snapshot
    STOP            snapshot
    DELETED         nothing (journaled)

The firewall step comes first on MASTER so that there is no moment as master without loop
protection. Every step is idempotent (a second MASTER changes nothing that the first did not)
and returns its figures; a failing step does not stop the ones after it: each of them is still
worth doing on its own (a reseed without the sysctls keeps every template; timeouts without a
reseed still suit the role).

STOP runs under keepalived's one-second budget (it is SIGKILLed after that): only the snapshot,
which replaces its file atomically, so a kill leaves the previous generation whole.
"""

import logging
from typing import Any, Callable, Dict, Tuple

from lvs_hooks.config import Config, RoleConfig, TransitionsConfig
from lvs_hooks.director import Director
from lvs_hooks.director.reseed import reseed
from lvs_hooks.director.snapshot import take_snapshot
from lvs_hooks.errors import LvsHooksError
from lvs_hooks.events.clock import now_ns
from lvs_hooks.events.keepalived import Event
from lvs_hooks.events.sequencer import Plan, Step, StepFailed, StepResult
from lvs_hooks.kernel import tunables
from lvs_hooks.kernel.netlink import IPVS
from lvs_hooks.reseed.runner import daemon_options
from lvs_hooks.rules.manager import transition_step

log = logging.getLogger(__name__)

# How long a STOP waits for a running transition: keepalived kills it 1 s after the fork, and
# the snapshot needs the rest.
STOP_LOCK_TIMEOUT = 0.3


def lock_timeout_for(event: Event, settings: TransitionsConfig) -> float:
    return STOP_LOCK_TIMEOUT if event.state == "STOP" else settings.lock_timeout


def make_planner(director: Director) -> Callable[[Event], Plan]:
    """The planner for the sequencer: the steps for an event, from this director's config and
    state (the MASTER reseed finishes the fwmark repairs the same director began as backup)."""

    def plan(event: Event) -> Plan:
        return plan_transition(event, director)

    return plan


def plan_transition(event: Event, director: Director) -> Plan:
    cfg = director.cfg
    settings: TransitionsConfig = cfg.transitions
    if settings.instances and event.name not in settings.instances:
        return Plan(
            note=f"not one of the watched instances/groups ({', '.join(settings.instances)})",
            ignore=True,
        )
    state = event.state
    if state == "MASTER":
        master = cfg.master
        return Plan(
            [
                Step("firewall", lambda: firewall_step("master", cfg)),
                Step("sysctls", lambda: sysctl_step(master.sysctls, cfg.paths.proc_root)),
                Step("timeouts", lambda: timeouts_step(master, settings.keepalived_lvs_timeouts)),
                Step("reseed", lambda: reseed_step(director, event)),
            ]
        )
    if state in ("BACKUP", "FAULT"):
        role = cfg.backup
        steps = [
            Step("firewall", lambda: firewall_step("backup", cfg)),
            Step("sysctls", lambda: sysctl_step(role.sysctls, cfg.paths.proc_root)),
            Step("timeouts", lambda: timeouts_step(role, settings.keepalived_lvs_timeouts)),
        ]
        if state == "BACKUP":
            steps.append(Step("sync daemon", lambda: backup_daemon_step(cfg)))
        steps.append(Step("snapshot", lambda: snapshot_step(director, may_defer=True)))
        return Plan(steps)
    if state == "STOP":
        return Plan([Step("snapshot", lambda: snapshot_step(director))])
    return Plan(note=f"keepalived reports {state}: nothing to do")


# -- the steps


def firewall_step(role: str, cfg: Config) -> StepResult:
    """The loop-protection rules of the role (lvs_hooks.rules): one atomic swap."""
    return transition_step(cfg, role)


def sysctl_step(assignments: Tuple[str, ...], proc_root: str) -> StepResult:
    """Set net.ipv4.vs sysctls (of the current network namespace) that differ from `name=value`,
    each read back (kernel.tunables). If any fails, StepFailed names each failure and what was
    set."""
    report = tunables.apply_sysctls(assignments, proc_root)
    figures: Dict[str, Any] = dict(report.figures())
    done = ", ".join(report.changed) if report.changed else "nothing changed"
    if report.failed:
        raise StepFailed(f"{'; '.join(report.failed)} ({done})", figures)
    if not assignments:
        return "no sysctls configured", figures
    return f"{done}; {len(report.unchanged)} already set", figures


def timeouts_step(role: RoleConfig, keepalived_lvs_timeouts: bool) -> StepResult:
    """Set the role's IPVS timeouts (0: leave that one), unless keepalived owns them."""
    wanted = {"tcp": role.tcp, "tcpfin": role.tcpfin, "udp": role.udp}
    if keepalived_lvs_timeouts:
        if any(wanted.values()):
            log.warning(
                "timeouts %s in the config are not applied: keepalived's lvs_timeouts is in use "
                "(transitions.keepalived_lvs_timeouts)",
                wanted,
            )
        return "left to keepalived's lvs_timeouts", {"wanted": wanted, "applied": False}
    if not any(wanted.values()):
        return "no timeouts configured", {"applied": False}
    with IPVS() as ipvs:
        report = tunables.apply_timeouts(ipvs, **wanted)
    old = report.before
    figures = {"before": old, "wanted": wanted, "applied": bool(report.changed)}
    if not report.changed:
        return f"already {_show_timeouts(old)}", figures
    changes = ", ".join(f"{k} {old[k]}->{v}" for k, v in report.changed.items())
    return f"set {changes}", figures


def backup_daemon_step(cfg: Config) -> StepResult:
    """A backup runs a backup sync daemon, or it takes no sync and loses every template at its
    timer. keepalived starts its own on entering BACKUP, but the kernel refuses it (EEXIST)
    while an injection of this director runs the temporary one it starts to receive (the
    keeper's, as master a moment before: lab, churn, a handover at the keeper's round), and
    the injection stops that one when it ends. This step runs under the transition lock, so
    after any injection: it starts one when none runs, as the injections do (sync.interface,
    syncid, group, port)."""
    sync = cfg.sync
    with IPVS() as ipvs:
        if any(d.state == "backup" for d in ipvs.daemons()):
            return "a backup sync daemon runs", {"started": False}
        if not sync.interface:
            log.warning("no backup sync daemon runs, and sync.interface is not set to start "
                        "one: this director takes no sync")
            return "none runs, and sync.interface is not set to start one", {"started": False}
        ipvs.start_daemon("backup", sync.interface, sync.syncid,
                          **daemon_options(sync.group, sync.port))
    log.warning("no backup sync daemon ran on entering BACKUP (keepalived's start refused while "
                "an injection ran its own?): started one on %s syncid %d",
                sync.interface, sync.syncid)
    return (f"started on {sync.interface} syncid {sync.syncid}: none ran",
            {"started": True, "interface": sync.interface, "syncid": sync.syncid})


def _show_timeouts(t: Dict[str, int]) -> str:
    return f"tcp {t['tcp']} tcpfin {t['tcpfin']} udp {t['udp']}"


def reseed_step(director: Director, event: Event) -> StepResult:
    """Reseed the kernel from the newest good snapshot; log the time since keepalived's MASTER."""
    try:
        report = reseed(director, include_live=True, by="takeover reseed")
        error = None
    except LvsHooksError as e:
        report, error = {}, e
    # From keepalived announcing MASTER (the fork of this process, or the FIFO line read) to
    # the end of the reseed, whatever its result: the figure a failover is judged by.
    latency_ms = round((now_ns() - event.order[0]) / 1e6, 1)
    log.info(
        "%s: reseed ended %.0f ms after keepalived announced MASTER", event.describe(), latency_ms,
        extra={"fields": {"instance": event.name, "latency_ms": latency_ms,
                          **{k: report.get(k) for k in ("seen", "planned", "sent", "verified",
                                                        "missing")}}},
    )
    if error is not None:
        raise StepFailed(error.format_message(), {"latency_ms": latency_ms}) from error
    figures = {
        k: report.get(k)
        for k in ("snapshot", "snapshot_age_s", "seen", "planned", "sent", "verified", "missing")
    }
    figures["latency_ms"] = latency_ms
    summary = (
        f"{report['planned']} of {report['seen']} templates planned, {report['verified']} "
        f"verified, {report['missing']} missing, {report.get('ms', 0):.0f} ms; "
        f"{latency_ms:.0f} ms after MASTER"
    )
    if report["missing"]:
        raise StepFailed(summary, figures)
    return summary, figures


def snapshot_step(director: Director, may_defer: bool = False) -> StepResult:
    """A snapshot. With `may_defer` (BACKUP, FAULT) and a thread that runs the duties beside the
    events, that thread's next turn: a whole read of a large table takes seconds, and a MASTER
    line coming meanwhile must not wait for it. Else here (a dump of the table in memory where
    a read would be expensive). STOP never defers: keepalived kills its script 1 s later."""
    if may_defer and director.duties_beside:
        director.snapshot_wanted = True
        return "left to the periodic duties (beside the events)", {"deferred": True}
    report = take_snapshot(director.cfg, reason="transition snapshot", live=director.live)
    return (
        f"{report['templates']} templates of {report['services']} services to "
        f"{report['path']} in {report['ms']:.0f} ms",
        {k: report.get(k) for k in ("path", "templates", "services", "ms")},
    )
