"""Apply, verify, remove and show the loop-protection rules: the config and the kernel, joined.

Every change follows one recipe, under `<run_dir>/rules.lock` (the transitions, the boot unit
and a person at the command line may all apply at once):

    read what the kernel has -> plan (pure) -> one atomic batch per table -> read back
    -> check that the kernel now has exactly the plan -> record (state file) -> backup_only

The record is written only after the read-back agrees: a refused batch leaves both the kernel
and the record as they were.
"""

import logging
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from lvs_hooks.config import Config
from lvs_hooks.errors import FirewallError, KernelError, PeerMacUnknown, UsageError
from lvs_hooks.kernel import tunables
from lvs_hooks.lockfile import FileLock
from lvs_hooks.rules.model import (
    RuleSet,
    ServiceSpec,
    build_rule_set,
    needs_peer_macs,
    role_of,
    services_from_config,
)
from lvs_hooks.rules.peers import PeerMacs, resolve_peer_macs
from lvs_hooks.rules.select import AnyBackend, Backend, L, P, choose_backend
from lvs_hooks.rules.state import Applied, RulesState, StateFile

log = logging.getLogger(__name__)

LOCK_NAME = "rules.lock"
LOCK_TIMEOUT = 30.0
BACKUP_ONLY = "backup_only"  # net.ipv4.vs.backup_only
ALL_FAMILIES = (4, 6)


class RulesManager:
    """The rules of one director, from its config. `backend` (tests) skips the selection."""

    def __init__(
        self,
        cfg: Config,
        backend: Optional[AnyBackend] = None,
        peer_resolver=resolve_peer_macs,
        boot_id: Optional[str] = None,
    ):
        self.cfg = cfg
        self.rcfg = cfg.rules
        self.services: List[ServiceSpec] = services_from_config(self.rcfg)
        self._backend = backend
        self._backend_why = "given" if backend is not None else ""
        self._resolve = peer_resolver
        self.state_file = StateFile(cfg.paths.state_dir, cfg.paths.run_dir, boot_id)
        self.run_dir = Path(cfg.paths.run_dir)

    # -- the pieces

    @property
    def protected(self) -> List[ServiceSpec]:
        return [s for s in self.services if s.mode != "none"]

    @property
    def configured(self) -> bool:
        """Whether the config asks for anything (rules or backup_only)."""
        return bool(self.protected) or self.rcfg.backup_only

    @property
    def backend(self) -> AnyBackend:
        if self._backend is None:
            self._backend, self._backend_why = choose_backend(self.rcfg.backend)
        return self._backend

    def _lock(self):
        os.makedirs(self.run_dir, 0o700, exist_ok=True)
        return FileLock(str(self.run_dir / LOCK_NAME), timeout=LOCK_TIMEOUT, mode=0o600)

    def peer_macs(self, state: RulesState) -> PeerMacs:
        """fwmark rules cannot do without every peer's MAC (they would mark what a peer
        forwards); redirect rules can (only the MASTER chain's guard against a peer that still
        forwards is missing then), so there a peer not yet learned is left out, with a warning."""
        if not needs_peer_macs(self.services):
            return PeerMacs()
        required = any(s.mode == "fwmark" for s in self.services)
        return self._resolve(self.rcfg.peers, self.rcfg.peer_macs, state.learned, required=required)

    def ruleset(self, state: RulesState) -> RuleSet:
        return build_rule_set(self.services, self.peer_macs(state).macs)

    def _families(self, ruleset: RuleSet, state: RulesState) -> List[int]:
        fams = {r.family for r in ruleset.rules()}
        if state.applied is not None and state.applied.backend == self.backend.name:
            fams.update(state.applied.families)
        else:
            fams.update(ALL_FAMILIES)  # nothing known of this boot: look everywhere
        return sorted(fams)

    # -- apply

    def needs_kernel(self, state: RulesState) -> bool:
        """Whether a firewall call is needed at all: rules configured, or some applied earlier
        during this boot (the config may have dropped them)."""
        return bool(self.protected) or state.applied is not None

    def apply(self, state_name: str, dry_run: bool = False) -> Dict[str, Any]:
        """Make the kernel hold the rules of `state_name` (master, backup or fault)."""
        role = role_of(state_name)
        t0 = time.monotonic()
        with self._lock():
            state = self.state_file.load()
            report: Dict[str, Any] = {"role": role, "changes": [], "rules": 0}
            if self.needs_kernel(state):
                self._apply_rules(role, state, dry_run, report)
            if self.rcfg.backup_only and not dry_run:
                report["backup_only"] = self._set_backup_only(role)
            elif self.rcfg.backup_only:
                report["backup_only"] = f"would set {1 if role == 'backup' else 0}"
        report["ms"] = round((time.monotonic() - t0) * 1000, 1)
        return report

    def _apply_rules(self, role: str, state: RulesState, dry_run: bool, report: Dict) -> None:
        peers = self.peer_macs(state)
        ruleset = build_rule_set(self.services, peers.macs)
        self._converge(self.backend, role, ruleset, peers, state, dry_run, report)

    def _converge(
        self,
        backend: Backend[P, L],
        role: str,
        ruleset: RuleSet,
        peers: PeerMacs,
        state: RulesState,
        dry_run: bool,
        report: Dict,
    ) -> None:
        families = self._families(ruleset, state)
        recorded = state.recorded_text(backend.name)
        target = ruleset if not ruleset.empty else None
        report.update(
            backend=backend.name,
            rules=len(ruleset.rules()),
            peer_macs={m: peers.sources[m] for m in peers.macs},
        )
        if peers.missing:
            report["peers_unknown"] = peers.missing
        t_send = time.monotonic()
        live: Optional[L] = None
        if not dry_run and self._swap_only(role, ruleset, state):
            # The same rules as the last apply of this boot, another role: the batch is the
            # pointer alone, sent without reading first; the read-back below checks everything
            # and anything else found amiss is corrected by a second, planned batch.
            plans = backend.pointer_plans(role, ruleset.redirect_families)
            try:
                backend.send(plans)
                after = backend.read(families)
                if not backend.plan(target, role, after, recorded):
                    self._record(role, ruleset, peers, state, after, plans, t_send, report)
                    return
                live = after
                log.warning("rules %s: the kernel needed more than the swap; planning", role)
            except FirewallError as e:
                log.warning("rules %s: swap refused (%s); planning", role, e.format_message())
        if live is None:
            live = backend.read(families)
        plans = backend.plan(target, role, live, recorded)
        if dry_run:
            report["changes"] = [c for p in plans for c in p.changes]
            report["batch"] = backend.batch_text(plans)
            return
        if not plans:
            # Nothing to change: what was just read is the kernel's state (a transition into
            # a role whose rules are in place costs one read).
            self._record(role, ruleset, peers, state, live, plans, t_send, report)
            return
        backend.send(plans)
        after = backend.read(families)
        left = backend.plan(target, role, after, backend.record(after))
        if left:
            raise FirewallError(
                "the kernel accepted the rules but then showed otherwise (another tool changing "
                f"them?): {'; '.join(c for p in left for c in p.changes)}"
            )
        self._record(role, ruleset, peers, state, after, plans, t_send, report)

    def _swap_only(self, role: str, ruleset: RuleSet, state: RulesState) -> bool:
        a = state.applied
        return (
            a is not None
            and ruleset.has_redirect
            and a.backend == self.backend.name
            and a.digest == ruleset.digest
            and a.role != role
        )

    def _record(self, role, ruleset, peers, state, after, plans, t_send, report) -> None:
        """Book what the kernel accepted (after the read-back agreed)."""
        backend = self.backend
        report["changes"] = [c for p in plans for c in p.changes]
        report["ms_kernel"] = round((time.monotonic() - t_send) * 1000, 1)
        state.learned.update(peers.learned)
        # Only what the kernel shows otherwise than we render it needs remembering.
        rendered = backend.rendered(ruleset)
        kernel_text = {k: v for k, v in backend.record(after).items() if rendered.get(k) != v}
        state.applied = (
            Applied(
                role,
                backend.name,
                time.time(),
                sorted({r.family for r in ruleset.rules()}),
                ruleset.digest,
                kernel_text,
            )
            if not ruleset.empty
            else None
        )
        self.state_file.save(state)
        log.info(
            "rules %s: %s; %d rules (%s, %.0f ms in the kernel)",
            role,
            ", ".join(report["changes"]) or "already in place",
            report["rules"],
            backend.name,
            report["ms_kernel"],
        )

    # -- remove

    def remove(self, dry_run: bool = False) -> Dict[str, Any]:
        t0 = time.monotonic()
        with self._lock():
            state = self.state_file.load()
            report = self._remove(self.backend, state, dry_run)
        report["ms"] = round((time.monotonic() - t0) * 1000, 1)
        return report

    def _remove(self, backend: Backend[P, L], state: RulesState, dry_run: bool) -> Dict[str, Any]:
        live = backend.read(ALL_FAMILIES)
        plans = backend.plan(None, "backup", live, {})
        report: Dict[str, Any] = {
            "backend": backend.name,
            "changes": [c for p in plans for c in p.changes],
        }
        if dry_run:
            report["batch"] = backend.batch_text(plans)
        else:
            if plans:
                backend.send(plans)
            state.applied = None
            self.state_file.save(state)
            log.info("rules removed: %s", ", ".join(report["changes"]) or "none were there")
        return report

    # -- verify

    def verify(self, state_name: Optional[str] = None) -> Dict[str, Any]:
        """What differs between the kernel and what the role needs (empty `drift`: nothing).

        The role: the one given, else the one last applied during this boot."""
        state = self.state_file.load()
        if state_name is None:
            if state.applied is None:
                if not self.configured:
                    return {"role": None, "drift": [], "ok": True, "note": "nothing configured"}
                raise UsageError("rules verify: no role applied since boot; name one with --role")
            state_name = state.applied.role
        role = role_of(state_name)
        drift: List[str] = []
        report: Dict[str, Any] = {"role": role}
        if self.needs_kernel(state) or self.protected:
            ruleset = self.ruleset(state)
            backend = self.backend
            live = backend.read(ALL_FAMILIES)
            target = ruleset if not ruleset.empty else None
            plans = backend.plan(target, role, live, state.recorded_text(backend.name))
            drift.extend(c for p in plans for c in p.changes)
            report["backend"] = backend.name
            report["rules"] = len(ruleset.rules())
        if self.rcfg.backup_only:
            want = 1 if role == "backup" else 0
            have = self._read_backup_only()
            if have != want:
                drift.append(f"net.ipv4.vs.backup_only is {have}, role {role} needs {want}")
        report["drift"] = drift
        report["ok"] = not drift
        return report

    # -- show

    def show(self) -> Dict[str, Any]:
        state = self.state_file.load()
        report: Dict[str, Any] = {
            "services": [
                {"service": s.describe(), "mode": s.mode, "fwmark": s.fwmark or None}
                for s in self.services
            ],
            "applied": (
                {
                    "role": state.applied.role,
                    "backend": state.applied.backend,
                    "at": state.applied.at,
                }
                if state.applied
                else None
            ),
            "notes": self._notes(),
        }
        try:
            peers = self.peer_macs(state)
            report["peer_macs"] = [{"mac": m, "source": peers.sources[m]} for m in peers.macs]
            ruleset = build_rule_set(self.services, peers.macs)
        except PeerMacUnknown as e:
            report["peer_macs_error"] = e.format_message()
            ruleset = None
        try:
            self._show_kernel(self.backend, ruleset, state, report)
        except FirewallError as e:
            report["backend_error"] = e.format_message()
        report["backup_only"] = self.backup_only_advice()
        return report

    def _show_kernel(
        self,
        backend: Backend[P, L],
        ruleset: Optional[RuleSet],
        state: RulesState,
        report: Dict[str, Any],
    ) -> None:
        report["backend"] = backend.name
        report["backend_why"] = self._backend_why
        live = backend.read(ALL_FAMILIES)
        report["kernel_role"] = backend.active_role(live)
        report["kernel_rules"] = backend.rules_listing(live)
        if ruleset is not None and state.applied is not None:
            target = ruleset if not ruleset.empty else None
            plans = backend.plan(
                target, state.applied.role, live, state.recorded_text(backend.name)
            )
            report["drift"] = [c for p in plans for c in p.changes]

    def _notes(self) -> List[str]:
        notes = []
        redirect = [s for s in self.services if s.mode == "redirect"]
        if redirect and not (self.rcfg.peers or self.rcfg.peer_macs):
            notes.append(
                "redirect without peers: on MASTER nothing is redirected, so during a failback "
                "(this director preempts while the peer still forwards as master) packets can "
                "loop until the peer's BACKUP transition has run; set rules.peers"
            )
        if redirect:
            notes.append(
                "redirect: the real server must accept connections on the address of the "
                "interface the packets come in by (REDIRECT rewrites the VIP to it), e.g. listen "
                "on 0.0.0.0"
            )
        return notes

    # -- net.ipv4.vs.backup_only

    def _read_backup_only(self) -> Optional[int]:
        try:
            value = tunables.read_sysctl(self.cfg.paths.proc_root, BACKUP_ONLY)
            return None if value is None else int(value)
        except (OSError, ValueError):
            return None

    def _set_backup_only(self, role: str) -> str:
        want = 1 if role == "backup" else 0
        have = self._read_backup_only()
        if have == want:
            return f"already {want}"
        try:
            tunables.write_sysctl(self.cfg.paths.proc_root, BACKUP_ONLY, str(want))
        except FileNotFoundError:
            # No ip_vs yet (the boot unit runs before keepalived loads it): no IPVS and no sync
            # daemon either, so nothing to switch off; the next transition sets it.
            log.warning("net.ipv4.vs.backup_only: ip_vs not loaded; left to the next transition")
            return "not set: ip_vs not loaded"
        log.info("net.ipv4.vs.backup_only %s -> %d (%s)", have, want, role)
        return f"{have} -> {want}"

    def backup_only_advice(self) -> Dict[str, Any]:
        daemons: Optional[List[str]]
        try:
            # deferred: pyroute2's import costs the boot-time rules unit half a second, and
            # only this advice needs netlink (an ImportError is one more reason it cannot tell)
            from lvs_hooks.kernel.netlink import IPVS

            with IPVS() as ipvs:
                daemons = sorted(d.state for d in ipvs.daemons())
        except (KernelError, OSError, ImportError):
            daemons = None
        return advise_backup_only(self._read_backup_only(), daemons, self.rcfg.backup_only)


def advise_backup_only(
    value: Optional[int], daemons: Optional[Sequence[str]], configured: bool
) -> Dict[str, Any]:
    """Whether net.ipv4.vs.backup_only fits this director, in words (pure).

    The kernel ignores IPVS traffic while the sysctl is 1 AND a backup sync daemon runs. That
    protects a backup only when keepalived runs one daemon at a time (lvs_sync_daemon with a
    VRRP instance: backup daemon on BACKUP, master daemon on MASTER). With both daemons always
    running it would switch off the master too.
    """
    out: Dict[str, Any] = {
        "value": value,
        "daemons": list(daemons) if daemons is not None else None,
        "configured": configured,
    }
    if value is None:
        out["fits"] = None
        out["advice"] = "net.ipv4.vs.backup_only is not available here (ip_vs not loaded)"
        return out
    if daemons is None:
        out["fits"] = None
        out["advice"] = "the sync daemons cannot be read (IPVS netlink unavailable)"
        return out
    if "master" in daemons and "backup" in daemons:
        out["fits"] = False
        out["advice"] = (
            "both sync daemons run (keepalived's lvs_sync_daemon without a VRRP instance, or "
            "daemons started by hand): a fixed backup_only=1 would switch IPVS off on the MASTER "
            "too, so it does not fit. rules.backup_only: true still works as a role switch (1 on "
            "BACKUP and FAULT, 0 on MASTER, set by the firewall step), but then protects no more "
            "than redirect mode without peers: nothing during a failback until the old master's "
            "BACKUP step has run. The fwmark or redirect rules are the protection here."
        )
    elif daemons:
        out["fits"] = True
        out["advice"] = (
            f"one sync daemon at a time ({daemons[0]} now: keepalived's lvs_sync_daemon with a "
            "VRRP instance): backup_only=1 switches IPVS off while the backup daemon runs, a "
            "second guard beside the rules. Not as a fixed setting: lvs-hooks' MASTER reseed "
            "runs a backup daemon for a moment, and the master would then hand every packet, "
            "established connections too, to its own real server. Set rules.backup_only: true "
            "(the firewall step sets 1 on BACKUP and FAULT, 0 on MASTER; on BACKUP it acts from "
            "that step, a moment after keepalived started the backup daemon)."
        )
    else:
        out["fits"] = None
        out["advice"] = "no sync daemon runs: backup_only has no effect now"
    return out


def transition_step(cfg: Config, state_name: str) -> Tuple[str, Dict[str, Any]]:
    """The firewall step of a keepalived transition: (summary, figures)."""
    role = role_of(state_name)
    mgr = RulesManager(cfg)
    if not mgr.configured and not mgr.needs_kernel(mgr.state_file.load()):
        return "no firewall rules configured", {"role": role, "rules": 0}
    r = mgr.apply(role)
    figures = {k: r.get(k) for k in ("role", "backend", "changes", "rules", "ms", "ms_kernel")}
    if "backup_only" in r:
        figures["backup_only"] = r["backup_only"]
    done = ", ".join(r["changes"]) or "already in place"
    extra = f", backup_only {r['backup_only']}" if "backup_only" in r else ""
    if r.get("peers_unknown"):
        figures["peers_unknown"] = r["peers_unknown"]
        extra += f"; MAC of peer {', '.join(r['peers_unknown'])} unknown: not guarded"
    return (
        f"{role} rules: {done}; {r['rules']} rules ({r.get('backend', 'no backend')}), "
        f"{r['ms']:.0f} ms{extra}",
        figures,
    )
