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
import os
from typing import Any, Callable, Dict, List, Tuple

from lvs_hooks.config import RoleConfig, TransitionsConfig
from lvs_hooks.errors import LvsHooksError
from lvs_hooks.events.clock import now_ns
from lvs_hooks.events.keepalived import Event
from lvs_hooks.events.sequencer import Plan, Step, StepFailed, StepResult

log = logging.getLogger(__name__)

# How long a STOP waits for a running transition: keepalived kills it 1 s after the fork, and
# the snapshot needs the rest.
STOP_LOCK_TIMEOUT = 0.3

SYSCTL_DIR = "sys/net/ipv4/vs"


def lock_timeout_for(event: Event, settings: TransitionsConfig) -> float:
    return STOP_LOCK_TIMEOUT if event.state == "STOP" else settings.lock_timeout


def make_planner(app: Any) -> Callable[[Event], Plan]:
    """The planner for the sequencer: the steps for an event, from this director's config.

    `app` is the CLI's AppContext (core steps such as take_snapshot take it).
    """

    def plan(event: Event) -> Plan:
        return plan_transition(event, app)

    return plan


def plan_transition(event: Event, app: Any) -> Plan:
    cfg = app.config
    settings: TransitionsConfig = cfg.transitions
    if settings.instances and event.name not in settings.instances:
        return Plan(
            note=f"not one of the watched instances/groups ({', '.join(settings.instances)})",
            ignore=True,
        )
    state = event.state
    if state == "MASTER":
        role = cfg.master
        return Plan(
            [
                Step("firewall", lambda: firewall_step("master", app)),
                Step("sysctls", lambda: sysctl_step(role.sysctls, cfg.paths.proc_root)),
                Step("timeouts", lambda: timeouts_step(role, settings.keepalived_lvs_timeouts)),
                Step("reseed", lambda: reseed_step(app, event)),
            ]
        )
    if state in ("BACKUP", "FAULT"):
        role = cfg.backup
        return Plan(
            [
                Step("firewall", lambda: firewall_step("backup", app)),
                Step("sysctls", lambda: sysctl_step(role.sysctls, cfg.paths.proc_root)),
                Step("timeouts", lambda: timeouts_step(role, settings.keepalived_lvs_timeouts)),
                Step("snapshot", lambda: snapshot_step(app)),
            ]
        )
    if state == "STOP":
        return Plan([Step("snapshot", lambda: snapshot_step(app))])
    return Plan(note=f"keepalived reports {state}: nothing to do")


# -- the steps


def firewall_step(role: str, app: Any = None) -> StepResult:
    """The loop-protection rules of the role (lvs_hooks.rules): one atomic swap. Without
    `app`, the built-in defaults (no rules)."""
    from lvs_hooks.config import Config
    from lvs_hooks.rules.manager import transition_step

    return transition_step(app.config if app is not None else Config(), role)


def _read_sysctl(path: str) -> List[str]:
    with open(path) as f:
        return f.read().split()


def sysctl_step(assignments: Tuple[str, ...], proc_root: str) -> StepResult:
    """Set net.ipv4.vs sysctls (of the current network namespace) that differ from `name=value`.

    All are tried; if any fails, StepFailed names each failure and what was set.
    """
    changed: List[str] = []
    unchanged: List[str] = []
    failed: List[str] = []
    for assignment in assignments:
        name, _, value = assignment.partition("=")
        path = os.path.join(proc_root, SYSCTL_DIR, name)
        try:
            current = _read_sysctl(path)
            if current == value.split():
                unchanged.append(name)
                continue
            with open(path, "w") as f:
                f.write(value + "\n")
            changed.append(f"{name} {' '.join(current)}->{value}")
        except FileNotFoundError:
            failed.append(f"net.ipv4.vs.{name}: no such sysctl (is ip_vs loaded here?)")
        except OSError as e:
            failed.append(f"net.ipv4.vs.{name}={value}: {e.strerror or e}")
    figures: Dict[str, Any] = {"changed": changed, "unchanged": unchanged, "failed": failed}
    done = ", ".join(changed) if changed else "nothing changed"
    if failed:
        raise StepFailed(f"{'; '.join(failed)} ({done})", figures)
    if not assignments:
        return "no sysctls configured", figures
    return f"{done}; {len(unchanged)} already set", figures


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
    from lvs_hooks.kernel.netlink import IPVS

    with IPVS() as ipvs:
        before = ipvs.timeouts()
        old = {"tcp": before.tcp, "tcpfin": before.tcpfin, "udp": before.udp}
        diff = {k: v for k, v in wanted.items() if v and old[k] != v}
        if diff:
            ipvs.set_timeouts(**{k: diff.get(k, 0) for k in wanted})
    figures = {"before": old, "wanted": wanted, "applied": bool(diff)}
    if not diff:
        return f"already {_show_timeouts(old)}", figures
    changes = ", ".join(f"{k} {old[k]}->{v}" for k, v in diff.items())
    return f"set {changes}", figures


def _show_timeouts(t: Dict[str, int]) -> str:
    return f"tcp {t['tcp']} tcpfin {t['tcpfin']} udp {t['udp']}"


def reseed_step(app: Any, event: Event) -> StepResult:
    """Reseed the kernel from the newest good snapshot; log the time since keepalived's MASTER."""
    from lvs_hooks.commands.templates import reseed_from_snapshot

    try:
        report = reseed_from_snapshot(app, None, False, include_live=True)
        error = None
    except LvsHooksError as e:
        report, error = {}, e
    # From keepalived announcing MASTER (the fork of this process, or the FIFO line read) to
    # the end of the reseed, whatever its result: the figure a failover is judged by.
    latency_ms = round((now_ns() - event.order[0]) / 1e6, 1)
    log.info(
        "%s: reseed ended %.0f ms after keepalived announced MASTER", event.describe(), latency_ms
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


def snapshot_step(app: Any) -> StepResult:
    from lvs_hooks.commands.templates import take_snapshot

    report = take_snapshot(app)
    return (
        f"{report['templates']} templates of {report['services']} services to "
        f"{report['path']} in {report['ms']:.0f} ms",
        {k: report.get(k) for k in ("path", "templates", "services", "ms")},
    )
