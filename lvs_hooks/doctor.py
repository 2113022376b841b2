"""`lvs-hooks doctor`: what in keepalived.conf, the kernel and the lvs-hooks config will lose
clients their real server, or loop, or never run, each with its evidence and its fix.

Every check is a pure function of one `DoctorInput` (the parsed keepalived.conf, what the kernel
showed, the lvs-hooks config, what the script paths look like on disk) returning `Finding`s.
`gather` does the I/O and degrades: without IPVS (or without keepalived.conf) the checks that
need it are skipped and a note says so; nothing here may crash a doctor.

Exit code: 0 no finding above "info", 1 warnings, 2 errors, 3 nothing to check (no
keepalived.conf it could read and no IPVS service either, or the file it was named unreadable).

Offline, per persistent service, `lifetimes` says how long a template lives on the master and on
the backup (design.md sections 1.5 and 2.6): the output has it after the findings.
"""

import ipaddress
import os
import pwd
import re
import shutil
import stat
import subprocess
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from pyroute2 import IPRoute

from lvs_hooks.errors import KeepalivedConfError, KernelError
from lvs_hooks.explain import SYNC_V1_SINCE, parse_release, read_vs_sysctls
from lvs_hooks.keepalived_conf import (
    DEFAULT_PATH,
    DEFAULT_PERSISTENCE_TIMEOUT,
    FIFO_SCRIPT_KEYWORDS,
    NOTIFY_KEYWORDS,
    TOP_LEVEL_BLOCKS,
    Item,
    KeepalivedSetup,
    RealServer,
    VirtualServer,
    VrrpInstance,
    read_keepalived_conf,
)
from lvs_hooks.kernel.model import Service, host_port
from lvs_hooks.kernel.netlink import IPVS, SyncDaemon

SEVERITIES = ("error", "warning", "info")
KERNEL_DEFAULT_TIMEOUTS = {"tcp": 900, "tcpfin": 120, "udp": 300}  # ip_vs_proto_{tcp,udp}.c
SLOPPY_TCP_SINCE = (3, 11)
TCP_KEEPALIVE_DEFAULT = 7200  # net.ipv4.tcp_keepalive_time
REARM = 60  # ip_vs_conn_expire: a template with connections attached is re-armed for 60 s
SYNC_V0_TIMEOUT = 180  # a backup daemon's timeout for a template without one (version 0)
VRRP_PROTOCOL = 112
DOC_DIR = "/usr/share/doc/lvs-hooks"  # the packaged keepalived examples
UNKNOWN = 3


@dataclass(frozen=True)
class Finding:
    check: str  # stable id, e.g. "no-sync-daemon"
    severity: str  # error, warning or info
    title: str
    evidence: Tuple[str, ...]
    fix: str

    def to_dict(self) -> dict:
        return {
            "check": self.check,
            "severity": self.severity,
            "title": self.title,
            "evidence": list(self.evidence),
            "fix": self.fix,
        }


@dataclass(frozen=True)
class PathInfo:
    """What a script path looks like to keepalived's script security check."""

    path: str
    resolved: Optional[str] = None  # the real path; None when not found
    executable: bool = False
    insecure: Optional[str] = None  # the first component writable by non-root, and why

    @property
    def exists(self) -> bool:
        return self.resolved is not None


@dataclass
class KernelFacts:
    """What the kernel showed (IPVS over netlink, sysctls, addresses, firewall)."""

    ipvs: bool = False  # services, daemons and timeouts could be read
    note: str = ""  # why not
    release: Optional[str] = None
    services: tuple = ()
    daemons: tuple = ()
    timeouts: Optional[Dict[str, int]] = None
    sysctls: Dict[str, str] = field(default_factory=dict)  # net.ipv4.vs.*; empty: unknown
    local_addrs: Optional[Tuple[str, ...]] = None
    firewall: Optional[Tuple[str, ...]] = None  # iptables-save / nft lines; None: unreadable

    @classmethod
    def from_dict(cls, d: Mapping) -> "KernelFacts":
        """From plain data (test fixtures: what a user's write-up tells of its kernel)."""
        return cls(
            ipvs=bool(d.get("ipvs", "timeouts" in d)),
            note=d.get("note", ""),
            release=d.get("release"),
            services=tuple(Service.from_dict(s) for s in d.get("services", ())),
            daemons=tuple(SyncDaemon(**x) for x in d.get("daemons", ())),
            timeouts=dict(d["timeouts"]) if d.get("timeouts") else None,
            sysctls={k: str(v) for k, v in d.get("sysctls", {}).items()},
            local_addrs=tuple(d["local_addrs"]) if d.get("local_addrs") is not None else None,
            firewall=tuple(d["firewall"]) if d.get("firewall") is not None else None,
        )


@dataclass
class DoctorInput:
    setup: Optional[KeepalivedSetup]
    hooks: object  # lvs_hooks.config.Config
    kernel: KernelFacts = field(default_factory=KernelFacts)
    conf_path: str = DEFAULT_PATH
    conf_error: Optional[str] = None
    hooks_config_path: Optional[str] = None  # None: no file, built-in defaults
    paths: Mapping[str, PathInfo] = field(default_factory=dict)
    users: Mapping[str, int] = field(default_factory=dict)  # user name -> uid
    notes: List[str] = field(default_factory=list)
    # One line per path lvs-hooks would refuse to trust (lvs_hooks.trust): the command refuses
    # to run there, doctor lists them all.
    untrusted: List[str] = field(default_factory=list)
    # What doctor needed and could not read, one line each (exit 3 when nothing was left).
    unread: List[str] = field(default_factory=list)
    conf_named: bool = False  # the keepalived.conf was named on the command line
    # `keepalived -t -f FILE`: its exit code and its complaints; None: not run (not installed)
    keepalived_test: Optional[Tuple[int, Tuple[str, ...]]] = None

    # -- shared questions

    @property
    def virtual_servers(self) -> List[VirtualServer]:
        if self.setup is not None:
            return self.setup.virtual_servers
        return [_from_service(s) for s in self.kernel.services]

    @property
    def persistent(self) -> List[VirtualServer]:
        return [vs for vs in self.virtual_servers if vs.persistent]

    @property
    def hooks_wired(self) -> bool:
        """keepalived runs lvs-hooks on its VRRP transitions."""
        if self.setup is None:
            return False
        kinds = NOTIFY_KEYWORDS + FIFO_SCRIPT_KEYWORDS
        return any(s.kind in kinds for s in self.setup.hook_scripts())

    @property
    def hooks_in_use(self) -> bool:
        """lvs-hooks is (meant to be) used here: wired into keepalived, or configured."""
        return self.hooks_wired or self.hooks_config_path is not None

    def timeout(self, key: str) -> Tuple[int, str]:
        """The IPVS timeout `key` (tcp, tcpfin, udp) this director runs with, and whence."""
        s = self.setup
        if s is not None and key in s.lvs_timeouts and s.lvs_timeouts_item is not None:
            return s.lvs_timeouts[key], f"lvs_timeouts at {s.lvs_timeouts_item.where}"
        role = getattr(self.hooks, "master", None)
        owned = getattr(getattr(self.hooks, "transitions", None), "keepalived_lvs_timeouts", False)
        value = getattr(role, key, 0) if role is not None else 0
        if self.hooks_wired and value and not owned:
            return value, f"lvs-hooks master.{key} (set on MASTER)"
        if self.kernel.timeouts and key in self.kernel.timeouts:
            return self.kernel.timeouts[key], "the kernel now (ipvsadm -L --timeout)"
        return KERNEL_DEFAULT_TIMEOUTS[key], "the kernel's default (assumed: not read here)"


def _from_service(s) -> VirtualServer:
    """A live IPVS service as a virtual_server without a file (doctor without keepalived.conf)."""
    vs = VirtualServer(item=None)  # type: ignore[arg-type]
    if s.fwmark:
        vs.fwmark = s.fwmark
    else:
        vs.addr, vs.port = s.addr, s.port
        vs.protocol = s.protocol or "TCP"
    fwd = {d.fwd_method for d in s.destinations}
    vs.lb_kind = "DR" if fwd == {"droute"} else "TUN" if fwd == {"tunnel"} else "NAT"
    vs.persistence_timeout = s.timeout if s.persistent else None
    vs.real_servers = [RealServer(d.addr, d.port, None) for d in s.destinations]  # type: ignore
    return vs


def _at(item: Optional[Item], text: Optional[str] = None) -> str:
    """Evidence: `file:line: statement`, or `kernel: ...` for what came from IPVS itself."""
    if item is None:
        return f"kernel: {text}" if text else "kernel"
    return f"{item.where}: {text or item.text}"


def _vs_where(vs: VirtualServer) -> str:
    return _at(vs.item, vs.describe()) if vs.item is not None else f"kernel: {vs.describe()}"


# ---- checks: keepalived.conf itself -------------------------------------------------------------


def check_conf_files(d: DoctorInput) -> List[Finding]:
    out: List[Finding] = []
    if d.conf_error:
        out.append(
            Finding(
                "keepalived-conf",
                "error",
                d.conf_error,
                (d.conf_path,),
                "Correct the line named: keepalived reads the file otherwise than it looks (it "
                "logs the problem and goes on with what it understood). `keepalived -t -f FILE` "
                "checks a file.",
            )
        )
    if d.setup is None:
        return out
    for path, why, where in d.setup.conf.skipped:
        out.append(
            Finding(
                "keepalived-conf-skipped",
                "error",
                f"keepalived skips {path}: {why}",
                (f"{where}: include", f"{path}: {why}"),
                f"chmod a-x {path} (keepalived reads only regular files that are not executable)"
                if "executable" in why
                else f"Make {path} a regular readable file, or drop it from the include.",
            )
        )
    for pattern, where in d.setup.conf.unmatched_includes:
        out.append(
            Finding(
                "keepalived-include-nothing",
                "warning",
                f"include {pattern} matches no file",
                (f"{where}: include {pattern}",),
                "keepalived goes on without it: check the path (relative paths are relative to "
                "the directory of the file that holds the include).",
            )
        )
    for item, parents in d.setup.conf.walk():
        if parents and item.keyword in TOP_LEVEL_BLOCKS:
            parent = parents[-1]
            out.append(
                Finding(
                    "keepalived-misplaced-block",
                    "error",
                    f"{item.keyword} {' '.join(item.args)} is inside {parent.keyword}: "
                    "keepalived ignores it there",
                    (
                        _at(item),
                        f"{parent.where}: {parent.text} {{ ... }}",
                        f"keepalived -t says: Unknown keyword '{item.keyword}'",
                    ),
                    f"Move the block out of {parent.keyword}, to the top level of the file: "
                    f"keepalived reads {item.keyword} only there.",
                )
            )
    return out


def check_keepalived_test(d: DoctorInput) -> List[Finding]:
    """What `keepalived -t -f FILE` complained of: one finding per line it printed."""
    if d.keepalived_test is None:
        return []
    rc, lines = d.keepalived_test
    severity = "error" if rc != 0 else "warning"
    return [
        Finding(
            "keepalived-test",
            severity,
            f"keepalived -t: {line}",
            (f"`keepalived -t -f {d.conf_path}` exits {rc}",),
            "keepalived reads the file otherwise than it looks: correct the line or the option "
            "named, then `keepalived -t -f FILE` again (it prints nothing when all is well).",
        )
        for line in lines
    ]


# ---- checks: sync ------------------------------------------------------------------------------


def check_sync_daemon(d: DoctorInput) -> List[Finding]:
    persistent = d.persistent
    if not persistent:
        return []
    s = d.setup
    kernel_daemons = ", ".join(
        f"{x.state} on {x.ifname} syncid {x.syncid}" for x in d.kernel.daemons
    )
    if s is not None and s.sync_daemon is not None:
        sd = s.sync_daemon
        out = []
        if sd.deprecated:
            out.append(
                Finding(
                    "sync-daemon-deprecated",
                    "warning",
                    "lvs_sync_daemon_interface inside a vrrp_instance is deprecated",
                    (_at(sd.item),),
                    f"Write it in global_defs as `lvs_sync_daemon {sd.interface} {sd.instance}` "
                    "(keepalived 1.2.20 and later; it warns and may drop the old form).",
                )
            )
        if sd.instance and s.instance(sd.instance) is None:
            out.append(
                Finding(
                    "sync-daemon-instance",
                    "error",
                    f"lvs_sync_daemon names the instance {sd.instance}, which does not exist",
                    (_at(sd.item),),
                    "Name the vrrp_instance that carries the virtual servers.",
                )
            )
        return out
    if s is None and d.kernel.daemons:
        return []
    evidence = []
    if s is not None:
        evidence.append(
            f"{d.conf_path}: no lvs_sync_daemon in global_defs ({len(s.conf.files)} files read)"
        )
    if d.kernel.ipvs:
        evidence.append(f"kernel: sync daemons: {kernel_daemons or 'none'}")
    if s is not None and d.kernel.daemons:
        return []  # something else runs one; nothing lost
    evidence.extend(
        _vs_where(vs) + f", persistence_timeout {vs.persistence_timeout}" for vs in persistent[:3]
    )
    return [
        Finding(
            "no-sync-daemon",
            "error",
            "no sync daemon: a takeover reschedules every client of the persistent services",
            tuple(evidence),
            "global_defs { lvs_sync_daemon IF INSTANCE id N }: the master's templates then reach "
            "the backup, which is where lvs-hooks' takeover starts from. With the instance named, "
            "keepalived runs the master daemon on the master and the backup daemon on the backup.",
        )
    ]


def check_sync_version(d: DoctorInput) -> List[Finding]:
    if not d.persistent:
        return []
    version = parse_release(d.kernel.release)
    sync_version = d.kernel.sysctls.get("sync_version")
    if version is not None and version < SYNC_V1_SINCE:
        return [
            Finding(
                "sync-version-0",
                "error",
                f"kernel {d.kernel.release} syncs with protocol version 0 only",
                (
                    f"kernel: {d.kernel.release} (sync protocol version 1 came with Linux 2.6.38)",
                    "a version-0 message carries no timeout: the backup gives every template "
                    "180 s (a 3-minute countdown on the backup, whatever the persistence), and "
                    "no fwmark or IPv6 template",
                ),
                "Run a kernel of 2.6.38 or later (any supported distribution has one): it syncs "
                "with version 1, which carries each template's timeout and fwmark. lvs-hooks "
                "injects version-1 messages, which an older backup daemon cannot take.",
            )
        ]
    if sync_version is not None and sync_version.strip() == "0":
        return [
            Finding(
                "sync-version-0",
                "warning",
                "net.ipv4.vs.sync_version is 0: this director sends version-0 sync messages",
                (
                    "kernel: net.ipv4.vs.sync_version = 0",
                    "a version-0 message carries no timeout (templates get 180 s on the backup) "
                    "and no fwmark",
                ),
                "sysctl -w net.ipv4.vs.sync_version=1 (the default), and the same in "
                "/etc/sysctl.d/ on every director.",
            )
        ]
    return []


def check_syncid(d: DoctorInput) -> List[Finding]:
    s = d.setup
    if not d.hooks_in_use:
        return []
    sync = getattr(d.hooks, "sync", None)
    if sync is None:
        return []
    out = []
    ours = f"lvs-hooks sync.syncid {sync.syncid}" + (
        f" ({d.hooks_config_path})" if d.hooks_config_path else " (built-in default)"
    )
    if s is not None and s.sync_daemon is not None:
        sd = s.sync_daemon
        theirs, why = s.effective_syncid()
        if theirs is not None and theirs != 0 and theirs != sync.syncid:
            out.append(
                Finding(
                    "syncid-mismatch",
                    "error",
                    f"sync id mismatch: keepalived's daemons use {theirs}, lvs-hooks sends "
                    f"{sync.syncid}",
                    (f"keepalived: sync id {theirs} from {why}", ours),
                    "A backup daemon drops every message whose sync id is not its own (unless "
                    f"its own is 0): set sync.syncid: {theirs} in the lvs-hooks config, or "
                    "`lvs-hooks init --from-keepalived` to derive it.",
                )
            )
        if sync.interface and sd.interface != sync.interface:
            out.append(
                Finding(
                    "sync-interface-mismatch",
                    "error",
                    f"sync interface mismatch: keepalived's daemons use {sd.interface}, "
                    f"lvs-hooks {sync.interface}",
                    (_at(sd.item), f"lvs-hooks sync.interface {sync.interface}"),
                    "The backup daemon takes only messages that arrive on its interface: set "
                    f"sync.interface: {sd.interface} (or null: the running daemon's).",
                )
            )
        for name, theirs_v, ours_v in (
            ("port", sd.port, sync.port),
            ("group", sd.group, sync.group),
        ):
            if theirs_v is not None and str(theirs_v) != str(ours_v):
                out.append(
                    Finding(
                        f"sync-{name}-mismatch",
                        "error",
                        f"sync {name} mismatch: keepalived {theirs_v}, lvs-hooks {ours_v}",
                        (_at(sd.item), f"lvs-hooks sync.{name} {ours_v}"),
                        f"Set sync.{name}: {theirs_v} in the lvs-hooks config.",
                    )
                )
    for x in d.kernel.daemons:
        if x.state == "backup" and x.syncid not in (0, sync.syncid) and not out:
            out.append(
                Finding(
                    "syncid-mismatch",
                    "error",
                    f"the running backup sync daemon has sync id {x.syncid}, lvs-hooks sends "
                    f"{sync.syncid}",
                    (f"kernel: backup daemon on {x.ifname} syncid {x.syncid}", ours),
                    f"Set sync.syncid: {x.syncid} in the lvs-hooks config.",
                )
            )
    return out


# ---- checks: timeouts and persistence ----------------------------------------------------------


def _proto_key(vs: VirtualServer) -> Optional[str]:
    return {"TCP": "tcp", "UDP": "udp"}.get(vs.protocol)


def check_persistence_vs_timeouts(d: DoctorInput) -> List[Finding]:
    out = []
    for vs in d.persistent:
        if vs.persistence_item is not None and not vs.persistence_item.args:
            out.append(
                Finding(
                    "persistence-timeout-default",
                    "info",
                    f"{vs.describe()}: persistence_timeout has no value: keepalived uses "
                    f"{DEFAULT_PERSISTENCE_TIMEOUT} s",
                    (_at(vs.persistence_item),),
                    f"Write the number you mean (persistence_timeout {DEFAULT_PERSISTENCE_TIMEOUT}"
                    " if that is it).",
                )
            )
        key = _proto_key(vs)
        if key is None:
            continue
        p = vs.persistence_timeout or 0
        t, source = d.timeout(key)
        if p >= t:
            continue
        pt = (
            _at(vs.persistence_item, f"persistence_timeout {p}")
            if vs.persistence_item is not None
            else f"kernel: {vs.describe()} persistent {p}"
        )
        out.append(
            Finding(
                "persistence-shorter-than-timeout",
                "warning",
                f"{vs.describe()}: persistence_timeout {p} s is shorter than the {key} timeout "
                f"{t} s, so it decides little",
                (pt, f"{key} timeout {t} s: {source}"),
                "A template whose timer runs out while its client still has a connection is "
                "re-armed with 60 s (every kernel): a client stays on its real server as long "
                "as any of its connections lives, plus up to a minute, and persistence_timeout "
                "matters only once they are all gone. If you want persistence_timeout "
                f"to decide, make it at least {t} s, or lower the {key} timeout (lvs_timeouts "
                f"{key} N); if stickiness while connected is what you want, nothing to change.",
            )
        )
    return out


def check_tcp_timeout(d: DoctorInput) -> List[Finding]:
    tcp_services = [vs for vs in d.virtual_servers if vs.protocol == "TCP" and vs.fwmark is None]
    if not tcp_services:
        return []
    t, source = d.timeout("tcp")
    if t >= KERNEL_DEFAULT_TIMEOUTS["tcp"]:
        return []
    return [
        Finding(
            "tcp-timeout-short",
            "warning",
            f"the tcp timeout is {t} s: an idle TCP connection loses its IPVS entry after "
            f"{t} s and its next packet is answered with a reset",
            (f"tcp timeout {t} s: {source}", _vs_where(tcp_services[0])),
            "Clients that keep connections idle (database connection pools, say) get "
            f"'connection lost'. Raise the tcp timeout above their idle time (default "
            f"{KERNEL_DEFAULT_TIMEOUTS['tcp']} s), or have the real servers probe idle "
            f"connections more often: net.ipv4.tcp_keepalive_time below {t} on them (for "
            "sockets with SO_KEEPALIVE), so the probes keep the IPVS entry alive.",
        )
    ]


def check_tcp_sloppy(d: DoctorInput) -> List[Finding]:
    tcp = [vs for vs in d.persistent if vs.protocol == "TCP"]
    if not tcp:
        return []
    kernel_value = d.kernel.sysctls.get("sloppy_tcp")
    master = getattr(d.hooks, "master", None)
    hooks_sets = d.hooks_wired and master is not None and "sloppy_tcp=1" in master.sysctls
    if (kernel_value or "").strip() == "1" or hooks_sets:
        return []
    evidence = [_vs_where(tcp[0]) + f", persistence_timeout {tcp[0].persistence_timeout}"]
    if kernel_value is not None:
        evidence.append(f"kernel: net.ipv4.vs.sloppy_tcp = {kernel_value}")
    elif d.kernel.sysctls:
        evidence.append(
            f"kernel {d.kernel.release or ''}: no net.ipv4.vs.sloppy_tcp (it came with Linux 3.11)"
        )
    else:
        evidence.append("kernel: net.ipv4.vs.sloppy_tcp not read here (default 0)")
    if not d.hooks_wired:
        evidence.append("keepalived does not run lvs-hooks, which sets it on MASTER")
    elif master is not None:
        evidence.append(f"lvs-hooks master.sysctls: {list(master.sysctls)}")
    return [
        Finding(
            "tcp-no-sloppy",
            "warning",
            "TCP connections die on takeover: sloppy_tcp is not 1 on the new master",
            tuple(evidence),
            "With net.ipv4.vs.sloppy_tcp=0, IPVS takes up a TCP connection it never saw only "
            "from a SYN: after a takeover the client's next packet is answered with a reset "
            "and the client sees 'connection lost'. Set sloppy_tcp=1 on every director, or let "
            "lvs-hooks set it on MASTER (master.sysctls, default sloppy_tcp=1, once keepalived "
            "runs lvs-hooks); the synced or reseeded template then sends the connection to its "
            "real server. The connections already reset stay ESTABLISHED on the real servers "
            "until TCP "
            f"keepalive finds them dead ({TCP_KEEPALIVE_DEFAULT} s by default: a pool that "
            "reconnects doubles its connection count meanwhile): lower "
            "net.ipv4.tcp_keepalive_time (and tcp_keepalive_intvl, tcp_keepalive_probes) on the "
            "real servers.",
        )
    ]


def check_fwmark_ports(d: DoctorInput) -> List[Finding]:
    out = []
    for vs in d.persistent:
        if vs.fwmark is None:
            continue
        # keepalived clears the port of fwmark real servers unless they are NAT (check_data.c);
        # a live service (no item) shows the port IPVS really has
        ported = [rs for rs in vs.real_servers if rs.port]
        if vs.item is not None and vs.lb_kind != "NAT":
            ported = []
        if not ported or d.hooks_wired:
            continue
        out.append(
            Finding(
                "fwmark-real-server-port",
                "warning",
                f"{vs.describe()}: persistent with real servers on a port: the kernel's sync "
                "loses these clients on failover",
                tuple(
                    [_vs_where(vs)]
                    + [
                        _at(rs.item, f"real_server {rs.addr} {rs.port}")
                        if rs.item is not None
                        else f"kernel: real server {host_port(rs.addr, rs.port)}"
                        for rs in ported[:3]
                    ]
                ),
                "A kernel master syncs fwmark templates with port 0; on the backup they never "
                "match a real server that has a port, so after a takeover the client is "
                "scheduled afresh. lvs-hooks' MASTER reseed replaces them with the real "
                "server's port: run lvs-hooks from keepalived (vrrp_notify_fifo_script).",
            )
        )
    return out


# ---- checks: loops (co-located directors) --------------------------------------------------------


def _mark_value(text: str) -> Optional[int]:
    m = re.search(r"--set-x?mark (0x[0-9a-fA-F]+|\d+)", text) or re.search(
        r"mark set (0x[0-9a-fA-F]+|\d+)", text
    )
    return int(m.group(1), 0) if m else None


def _hooks_rule(d: DoctorInput, vs: VirtualServer):
    """The lvs-hooks loop-protection rule (rules.services) that covers `vs`, if any."""
    rules = getattr(d.hooks, "rules", None)
    for r in getattr(rules, "services", ()):
        if r.mode == "none":
            continue
        if vs.fwmark is not None:
            if r.mode == "fwmark" and r.fwmark == vs.fwmark:
                return r
        elif (
            r.mode == "redirect"
            and r.vip == vs.addr
            and (not r.port or r.port == vs.port)
            and r.protocol == vs.protocol.lower()
        ):
            return r
    return None


def _loop_protection(d: DoctorInput, vs: VirtualServer, vips: Sequence[str]) -> Tuple[bool, str]:
    """Whether something keeps the backup from balancing what the master forwarded to it."""
    fw = d.kernel.firewall
    s = d.setup
    rule = _hooks_rule(d, vs) if d.hooks_in_use else None
    if rule is not None:
        how = f"lvs-hooks rules: {rule.mode} for {rule.vip}" + (
            f" mark {rule.fwmark}" if rule.mode == "fwmark" else ""
        )
        if rule.mode == "redirect" and not d.hooks_wired:
            return False, how + ", but keepalived does not run lvs-hooks to swap them"
        return True, how + " (`lvs-hooks rules verify` checks they are in place)"
    if vs.fwmark is not None:
        if fw is None:
            return True, (
                f"fwmark {vs.fwmark} service (firewall not readable here: make sure the MARK "
                "rule skips packets from the peer director's MAC)"
            )
        marking = [ln for ln in fw if _mark_value(ln) == vs.fwmark]
        if any("! --mac-source" in ln or "ether saddr !=" in ln for ln in marking):
            return True, f"fwmark {vs.fwmark} service, MARK rule skips the peer's MAC"
        if marking:
            return False, f"the MARK rule for {vs.fwmark} does not exclude the peer's MAC"
        return False, f"no firewall rule sets mark {vs.fwmark}"
    if fw is not None:
        for ln in fw:
            if ("REDIRECT" in ln or "redirect" in ln) and any(v in ln for v in vips):
                return (
                    True,
                    f"a REDIRECT rule for the VIP ({ln.strip()}); it must be on the "
                    "backup only and swapped on every transition",
                )
    backup_only = d.kernel.sysctls.get("backup_only", "").strip() == "1" or (
        d.hooks_wired and getattr(getattr(d.hooks, "rules", None), "backup_only", False)
    )
    if backup_only and s is not None and s.sync_daemon is not None and s.sync_daemon.instance:
        return True, "net.ipv4.vs.backup_only=1 with the backup daemon on the backup only"
    return False, "no fwmark service, no REDIRECT rule, no backup_only"


def check_colocated(d: DoctorInput) -> List[Finding]:
    s = d.setup
    own = set(d.kernel.local_addrs or ())
    peers: set = set()
    vips: List[str] = []
    if s is not None:
        for inst in s.instances:
            own.update(inst.own_addrs)
            peers.update(inst.peer_addrs)
            vips.extend(inst.virtual_addrs)
    for vs in d.virtual_servers:
        if vs.addr:
            vips.append(vs.addr)
    own -= {"127.0.0.1", "::1"}
    out = []
    for vs in d.virtual_servers:
        if vs.lb_kind != "DR":
            continue
        here = [rs for rs in vs.real_servers if rs.addr in own or rs.addr in peers]
        if not here:
            continue
        ok, how = _loop_protection(d, vs, vips)
        if ok:
            if vs.fwmark is not None and d.kernel.firewall is None:
                d.notes.append(f"{vs.describe()}: {how}")
            continue
        rs = here[0]
        role = "this director" if rs.addr in own else "the peer director"
        out.append(
            Finding(
                "colocated-no-loop-protection",
                "error",
                f"{vs.describe()}: DR with the directors as real servers and nothing against "
                "the ping-pong loop",
                (
                    _vs_where(vs) + ", lb_kind DR",
                    (
                        _at(rs.item, f"real_server {rs.addr}")
                        if rs.item is not None
                        else f"kernel: real server {rs.addr}"
                    )
                    + f" is {role}",
                    how,
                ),
                "The backup has the virtual server loaded and the VIP on lo, so it balances "
                "again what the master forwarded to it, back to the master: a loop. Let "
                "lvs-hooks keep the rules: in the lvs-hooks config, rules: {peers: [PEER "
                "DIRECTOR], services: [" + _rule_example(vs) + "]} (`lvs-hooks init "
                "--from-keepalived` writes it), keepalived running lvs-hooks (it swaps the rules "
                "on every transition), and `systemctl enable lvs-hooks-rules.service` (the "
                "backup's rules at boot, before keepalived); `lvs-hooks rules verify` checks them.",
            )
        )
    return out


def _rule_example(vs: VirtualServer) -> str:
    """The lvs-hooks rules.services entry that protects `vs`, as YAML flow text."""
    if vs.fwmark is not None:
        return f"{{vip: VIP, mode: fwmark, fwmark: {vs.fwmark}}}"
    return (
        f"{{vip: {vs.addr}, port: {vs.port or 0}, protocol: {vs.protocol.lower()}, "
        "mode: redirect}"
    )


def check_backup_only(d: DoctorInput) -> List[Finding]:
    if d.kernel.sysctls.get("backup_only", "").strip() != "1":
        return []
    if d.hooks_wired and getattr(getattr(d.hooks, "rules", None), "backup_only", False):
        return []  # lvs-hooks sets it per role: 1 on BACKUP and FAULT, 0 on MASTER
    spec = d.setup.sync_daemon if d.setup is not None else None
    out = []
    states = {x.state for x in d.kernel.daemons}
    # a sync daemon line without an instance: keepalived runs both daemons all the time
    both_always = spec if spec is not None and not spec.instance else None
    if both_always is not None or {"master", "backup"} <= states:
        evidence = ["kernel: net.ipv4.vs.backup_only = 1"]
        if both_always is not None:
            evidence.append(_at(both_always.item) + " (no instance: both daemons always run)")
        if {"master", "backup"} <= states:
            evidence.append("kernel: a master and a backup sync daemon run now")
        out.append(
            Finding(
                "backup-only-both-daemons",
                "error",
                "backup_only=1 while both sync daemons run: the master stops balancing too",
                tuple(evidence),
                "backup_only turns the director off whenever a backup daemon runs. Name the "
                "instance on lvs_sync_daemon (IF INSTANCE) so each director runs one daemon, "
                "or protect against loops with a fwmark or REDIRECT rule instead.",
            )
        )
    if d.hooks_wired:
        out.append(
            Finding(
                "backup-only-reseed",
                "warning",
                "backup_only=1: the director stops balancing while lvs-hooks injects templates",
                (
                    "kernel: net.ipv4.vs.backup_only = 1",
                    "lvs-hooks injects through a backup daemon, which it starts on the master for "
                    "the reseed and for each keeper renewal",
                ),
                "Prefer a fwmark or REDIRECT rule for loop protection; with backup_only, packets "
                "to the VIP reach the local stack during every injection.",
            )
        )
    return out


# ---- checks: scripts --------------------------------------------------------------------------


def _script_uid(d: DoctorInput, user: Optional[str]) -> Optional[int]:
    s = d.setup
    name = user or (s.script_user if s is not None else None)
    if name is None:
        # keepalived's default: the user keepalived_script if it exists, else its own (root)
        return d.users.get("keepalived_script", 0)
    return d.users.get(name)


def check_scripts(d: DoctorInput) -> List[Finding]:
    s = d.setup
    if s is None:
        return []
    out = []
    seen = set()
    for sc in s.scripts:
        info = d.paths.get(sc.path)
        if info is None or (sc.path, sc.kind) in seen:
            continue
        seen.add((sc.path, sc.kind))
        where = _at(sc.item, f'{sc.kind} "{sc.command}"')
        uid = _script_uid(d, sc.user)
        if not info.exists:
            out.append(
                Finding(
                    "script-missing",
                    "error",
                    f"{sc.kind}: {sc.path} does not exist: keepalived disables it",
                    (where,),
                    "Install it, or correct the path (keepalived searches PATH only for a bare "
                    "name).",
                )
            )
            continue
        if not info.executable:
            out.append(
                Finding(
                    "script-not-executable",
                    "error",
                    f"{sc.kind}: {info.resolved} is not executable: keepalived disables it",
                    (where,),
                    f"chmod 755 {info.resolved}",
                )
            )
        if sc.is_lvs_hooks and uid not in (0, None):
            out.append(
                Finding(
                    "script-user",
                    "error",
                    f"{sc.kind}: lvs-hooks would run as uid {uid}; it needs root",
                    (where, f"script user: {sc.user or s.script_user or 'keepalived_script'}"),
                    "global_defs { script_user root } (lvs-hooks needs root for IPVS netlink, "
                    "sysctls and the sync socket).",
                )
            )
        if info.insecure and uid == 0:
            severity = "error" if s.enable_script_security else "warning"
            state = (
                "enable_script_security is on: keepalived refuses to run it"
                if s.enable_script_security
                else "keepalived runs it as root now, and refuses it once enable_script_security"
                " is on"
            )
            out.append(
                Finding(
                    "script-security",
                    severity,
                    f"{sc.kind}: {info.resolved} can be changed by non-root users ({state})",
                    (where, info.insecure),
                    "Put the script where only root can write, every directory up to / included "
                    "(e.g. /usr/libexec/keepalived/, which also has the SELinux label notify "
                    "scripts need on RHEL), owned by root, mode 755.",
                )
            )
    return out


# ---- checks: lvs-hooks and keepalived together ------------------------------------------------


def check_hooks_wired(d: DoctorInput) -> List[Finding]:
    s = d.setup
    if s is None or not d.persistent or d.hooks_wired:
        return []
    return [
        Finding(
            "hooks-not-wired",
            "warning",
            "keepalived does not run lvs-hooks: persistence is lost on takeover and failback",
            (
                f"{d.conf_path}: no notify, notify_master or vrrp_notify_fifo_script runs "
                "lvs-hooks",
                _vs_where(d.persistent[0]) + f", persistence_timeout "
                f"{d.persistent[0].persistence_timeout}",
            ),
            "On the new master, synced templates are never linked to the synced connections "
            "and expire while the clients' flows go on; a rebooted master preempts with an empty "
            "table. In global_defs: vrrp_notify_fifo "
            "/run/lvs-hooks/vrrp.fifo and vrrp_notify_fifo_script "
            '"/usr/libexec/keepalived/lvs-hooks fifo" '
            f"({DOC_DIR}/lvs-hooks-fifo.conf).",
        )
    ]


def check_hooks_instances(d: DoctorInput) -> List[Finding]:
    s = d.setup
    transitions = getattr(d.hooks, "transitions", None)
    if s is None or transitions is None or not d.hooks_in_use:
        return []
    known = {i.name for i in s.instances} | set(s.sync_groups)
    unknown = [n for n in transitions.instances if n not in known]
    if not unknown:
        return []
    return [
        Finding(
            "hooks-instances-unknown",
            "warning",
            f"lvs-hooks watches {', '.join(unknown)}, which keepalived.conf does not define",
            (
                f"lvs-hooks transitions.instances: {list(transitions.instances)}",
                f"keepalived: instances {sorted(i.name for i in s.instances)}, sync groups "
                f"{sorted(s.sync_groups)}",
            ),
            "Events of any other instance are journaled and ignored: name the instance or sync "
            "group that carries the virtual servers.",
        )
    ]


def check_timeouts_owner(d: DoctorInput) -> List[Finding]:
    s = d.setup
    if s is None or not d.hooks_in_use:
        return []
    transitions = getattr(d.hooks, "transitions", None)
    owned = bool(getattr(transitions, "keepalived_lvs_timeouts", False))
    roles = []
    for name in ("master", "backup"):
        role = getattr(d.hooks, name, None)
        if role is None:
            continue
        set_ = {k: getattr(role, k) for k in ("tcp", "tcpfin", "udp") if getattr(role, k)}
        if set_:
            roles.append(f"lvs-hooks {name}: {set_}")
    if s.lvs_timeouts_item is not None and roles and not owned:
        return [
            Finding(
                "timeouts-two-owners",
                "warning",
                "keepalived's lvs_timeouts and lvs-hooks both set the IPVS timeouts",
                tuple([_at(s.lvs_timeouts_item)] + roles),
                "keepalived applies lvs_timeouts at start and reload and restores the old values "
                "at stop; lvs-hooks sets its own on each transition: which wins depends on the "
                "order. Keep one: drop lvs_timeouts, or set transitions.keepalived_lvs_timeouts: "
                "true (lvs-hooks then leaves them alone).",
            )
        ]
    if owned and s.lvs_timeouts_item is None and roles:
        return [
            Finding(
                "timeouts-nobody",
                "warning",
                "lvs-hooks leaves the timeouts to keepalived, which sets none",
                tuple(
                    [
                        "lvs-hooks transitions.keepalived_lvs_timeouts: true",
                        f"{d.conf_path}: no lvs_timeouts",
                    ]
                    + roles
                ),
                "Set transitions.keepalived_lvs_timeouts: false, or add lvs_timeouts to "
                "global_defs.",
            )
        ]
    return []


def _gated(s: KeepalivedSetup, inst: VrrpInstance) -> bool:
    """The instance waits for lvs-hooks to have a warm table before it may become master."""
    for name in inst.track_scripts:
        item = s.vrrp_scripts.get(name)
        cmd = item.value("script") if item is not None else None
        if cmd and "lvs-hooks" in cmd and "ready" in cmd.split():
            return True
    for name in inst.track_files:
        item = s.track_files.get(name)
        path = item.value("file") if item is not None else None
        if path and "lvs-hooks" in path:
            return True
    return False


def _gate_weight(s: KeepalivedSetup, inst: VrrpInstance, name: str) -> Tuple[Optional[int], str]:
    """The weight keepalived applies to track file `name` in `inst`, and where it is written."""
    over = inst.track_file_weights.get(name)
    if over is not None:
        return _int_or_none(over.args[1]), _at(over)
    item = s.track_files.get(name)
    w = item.child("weight") if item is not None else None
    if w is not None and w.args:
        return _int_or_none(w.args[0]), _at(w)
    return 1, _at(item, f"track_file {name}: no weight (keepalived's default, 1)")


def _int_or_none(text: str) -> Optional[int]:
    try:
        return int(text)
    except ValueError:
        return None


def check_warmup_gate(d: DoctorInput) -> List[Finding]:
    """The lvs-hooks track file lowers a cold director's priority: only a negative weight does
    that. Weight 0 turns a non-zero value into FAULT: a cold director would not even take over
    when it is alone."""
    s = d.setup
    if s is None:
        return []
    out = []
    for inst in s.lvs_instances():
        for name in inst.track_files:
            item = s.track_files.get(name)
            path = item.value("file") if item is not None else None
            if not path or "lvs-hooks" not in path:
                continue
            weight, where = _gate_weight(s, inst, name)
            if weight is not None and weight < 0:
                continue
            out.append(
                Finding(
                    "warmup-gate-weight",
                    "error" if weight == 0 else "warning",
                    f"{inst.name}: the lvs-hooks warm-up track file {name} has weight {weight}: "
                    + (
                        "a cold director goes to FAULT and will not take over even alone"
                        if weight == 0
                        else "it does not lower a cold director's priority"
                    ),
                    (where,),
                    "Give it a negative weight larger than the priority gap between the "
                    "directors (e.g. weight -60 for priorities 150 and 100): a cold director "
                    "then stays below its peer but still takes over when it is alone. See "
                    f"{DOC_DIR}/lvs-hooks-warmup.conf.",
                )
            )
    return out


def check_preemption(d: DoctorInput) -> List[Finding]:
    s = d.setup
    if s is None or not d.persistent:
        return []
    out = []
    for inst in s.lvs_instances():
        if inst.nopreempt:
            if (inst.state or "").upper() == "MASTER":
                out.append(
                    Finding(
                        "nopreempt-state-master",
                        "warning",
                        f"{inst.name}: nopreempt with state MASTER: keepalived ignores nopreempt",
                        (_at(inst.item.child("nopreempt")), _at(inst.item.child("state"))),
                        "Use state BACKUP on every director with nopreempt.",
                    )
                )
            continue
        if _gated(s, inst):
            continue
        evidence = [_at(inst.item, f"vrrp_instance {inst.name}: no nopreempt")]
        if inst.state:
            evidence.append(_at(inst.item.child("state")))
        if inst.priority is not None:
            evidence.append(_at(inst.item.child("priority")))
        if inst.preempt_delay:
            evidence.append(
                _at(inst.item.child("preempt_delay")) + " (a delay does not fill the table)"
            )
        out.append(
            Finding(
                "preempt-without-warmup",
                "warning",
                f"{inst.name} preempts without waiting for a warm table: clients move on failback",
                tuple(evidence),
                "A director that comes back preempts with an empty IPVS table: sync flows only "
                "master to backup and only for connections that see traffic, so its clients are "
                "scheduled afresh. Use nopreempt with state BACKUP on "
                "every director, or gate preemption on lvs-hooks' warm-up gate: run "
                "lvs-hooks-agent.service and add its track file (track_file, negative weight; "
                f"{DOC_DIR}/lvs-hooks-warmup.conf), or a vrrp_script running `lvs-hooks "
                "ready` in track_script.",
            )
        )
    return out


def _control_port(d: DoctorInput) -> int:
    return int(getattr(getattr(d.hooks, "control", None), "port", 8849))


def _sync_port(d: DoctorInput) -> int:
    s = d.setup
    if s is not None and s.sync_daemon is not None and s.sync_daemon.port:
        return int(s.sync_daemon.port)
    return int(getattr(getattr(d.hooks, "sync", None), "port", 8848))


def ports_line(d: DoctorInput) -> str:
    """The ports to open between the directors (a note: doctor cannot see the peer's firewall)."""
    return (
        f"open between the directors: VRRP (IP protocol {VRRP_PROTOCOL}) on keepalived's "
        f"interface; {_sync_port(d)}/udp (the sync daemon and lvs-hooks' pushes) and "
        f"{_control_port(d)}/udp (lvs-hooks' control channel) on the sync interface"
    )


def check_warmup_control_key(d: DoctorInput) -> List[Finding]:
    """A warm-up gate turns warm on a complete push, which needs the control channel."""
    s = d.setup
    if s is None:
        return []
    control = getattr(d.hooks, "control", None)
    if control is None or getattr(control, "key_file", None):
        return []
    gated = [inst for inst in s.lvs_instances() if _gated(s, inst)]
    if not gated:
        return []
    inst = gated[0]
    return [
        Finding(
            "warmup-gate-no-control-key",
            "warning",
            f"{inst.name}: the lvs-hooks warm-up gate waits for a push, but lvs-hooks has no "
            "control key: no push is ever confirmed",
            (
                _at(inst.item, f"vrrp_instance {inst.name}: the lvs-hooks warm-up gate"),
                "lvs-hooks control.key_file: null"
                + (f" ({d.hooks_config_path})" if d.hooks_config_path else " (built-in default)"),
            ),
            "Without the control channel a director turns warm only from its own snapshot's "
            "reseed or after warmup.max_wait, and `handover` refuses to run. Write a key (head "
            "-c 32 /dev/urandom | base64 > /etc/lvs-hooks/control.key, mode 0600), copy it to "
            "every director, set control.key_file: /etc/lvs-hooks/control.key and open "
            f"{_control_port(d)}/udp between the directors.",
        )
    ]


def check_trust(d: DoctorInput) -> List[Finding]:
    """The paths every lvs-hooks command refuses to trust (lvs_hooks.trust)."""
    return [
        Finding(
            "untrusted-path",
            "error",
            "lvs-hooks refuses to run: a path it trusts may be changed by someone other than root",
            (line,),
            "make the path and every directory above it owned by root and not writable by group "
            "or others",
        )
        for line in d.untrusted
    ]


CHECKS: Tuple[Callable[[DoctorInput], List[Finding]], ...] = (
    check_trust,
    check_conf_files,
    check_keepalived_test,
    check_sync_daemon,
    check_sync_version,
    check_syncid,
    check_persistence_vs_timeouts,
    check_tcp_timeout,
    check_tcp_sloppy,
    check_fwmark_ports,
    check_colocated,
    check_backup_only,
    check_scripts,
    check_hooks_wired,
    check_hooks_instances,
    check_timeouts_owner,
    check_preemption,
    check_warmup_gate,
    check_warmup_control_key,
)


def exit_code(findings: Sequence[Finding], unknown: bool = False) -> int:
    """2 errors; 3 nothing could be checked (`unknown`); 1 warnings; 0 none."""
    severities = {f.severity for f in findings}
    if "error" in severities:
        return 2
    if unknown:
        return UNKNOWN
    if "warning" in severities:
        return 1
    return 0


def nothing_to_check(d: DoctorInput) -> bool:
    """Doctor could not read what it needs: the keepalived.conf it was named, or neither a
    keepalived.conf nor a live IPVS service."""
    if d.setup is not None or d.conf_error:
        return False
    return d.conf_named or not d.kernel.services


# ---- offline answers: how long a template lives ------------------------------------------------


def _sync_version(d: DoctorInput) -> Tuple[int, str]:
    version = parse_release(d.kernel.release)
    if version is not None and version < SYNC_V1_SINCE:
        return 0, f"kernel {d.kernel.release}: version 0 only"
    value = (d.kernel.sysctls.get("sync_version") or "").strip()
    if value == "0":
        return 0, "net.ipv4.vs.sync_version = 0"
    if value:
        return 1, f"net.ipv4.vs.sync_version = {value}"
    return 1, "sync_version 1, the default (not read here)"


def lifetimes(d: DoctorInput) -> List[dict]:
    """Per persistent service, how long a template lives on the master and on the backup
    (design.md 1.5, 2.6): pure, from the configuration and what the kernel showed."""
    out = []
    version, vwhy = _sync_version(d)
    for vs in d.persistent:
        p = vs.persistence_timeout or DEFAULT_PERSISTENCE_TIMEOUT
        key = _proto_key(vs)
        master = (
            f"{p} s after the client's last new connection; if a connection of the client "
            f"still lives then, the kernel re-arms it for {REARM} s, every {REARM} s until none "
            "is left"
        )
        if key is not None:
            t, source = d.timeout(key)
            if key == "udp" and p > t:
                master += (
                    f". Persistence {p} s > udp {t} s ({source}): a UDP flow silent for {t} s "
                    f"ends before its template; a steady flow outlives it, and from {p} s the "
                    f"master re-arms the template every {REARM} s"
                )
            elif p < t:
                master += (
                    f". Persistence {p} s < {key} {t} s ({source}): a connection may outlive the "
                    f"persistence; from {p} s its template lives in {REARM} s steps"
                )
        if version == 0:
            backup = (
                f"{SYNC_V0_TIMEOUT} s whatever the master's timeout ({vwhy}: sync messages carry "
                "no timeout), restarted by each of the master's re-sends"
            )
        else:
            backup = (
                f"the master's timeout: {p} s, {REARM} s once the master re-armed it ({vwhy}), "
                "restarted by each of the master's re-sends; after a takeover only lvs-hooks' "
                "keeper renews it while the client's connections go on"
            )
        out.append(
            {
                "service": vs.describe(),
                "persistence_timeout": p,
                "master": master,
                "backup": backup,
            }
        )
    return out


def run_checks(d: DoctorInput) -> dict:
    """Every check on one input: the report as plain data (JSON-ready), with its exit code."""
    findings: List[Finding] = []
    for check in CHECKS:
        findings.extend(check(d))
    unknown = nothing_to_check(d)
    order = {s: i for i, s in enumerate(SEVERITIES)}
    findings.sort(key=lambda f: order[f.severity])
    counts = {s: sum(1 for f in findings if f.severity == s) for s in SEVERITIES}
    s = d.setup
    return {
        "keepalived_conf": d.conf_path,
        "keepalived_files": list(s.conf.files) if s is not None else [],
        "lvs_hooks_config": d.hooks_config_path,
        "kernel": {
            "ipvs": d.kernel.ipvs,
            "release": d.kernel.release,
            "note": d.kernel.note,
        },
        "findings": [f.to_dict() for f in findings],
        "counts": counts,
        "lifetimes": lifetimes(d),
        "unread": list(d.unread),
        "notes": list(d.notes) + ([ports_line(d)] if s is not None and s.instances else []),
        "exit_code": exit_code(findings, unknown),
    }


def render_report(r: dict) -> str:
    c = r["counts"]
    files = r["keepalived_files"]
    head = (
        f"lvs-hooks doctor: {c['error']} errors, {c['warning']} warnings, {c['info']} info"
        f"  (keepalived.conf: {r['keepalived_conf']}"
        + (f", {len(files)} files" if len(files) > 1 else "")
        + f"; lvs-hooks config: {r['lvs_hooks_config'] or 'built-in defaults'}; kernel: "
        + ("IPVS read" if r["kernel"]["ipvs"] else "IPVS not read")
        + ")"
    )
    lines = [head]
    for f in r["findings"]:
        lines.append("")
        lines.append(f"{f['severity'].upper():7} {f['check']}: {f['title']}")
        for e in f["evidence"]:
            lines.append(f"        evidence: {e}")
        lines.append(f"        fix: {f['fix']}")
    if r["lifetimes"]:
        lines.append("")
        lines.append("how long a template lives (offline):")
        for x in r["lifetimes"]:
            lines.append(f"  {x['service']}, persistence_timeout {x['persistence_timeout']}:")
            lines.append(f"    master: {x['master']}")
            lines.append(f"    backup: {x['backup']}")
    for n in r["notes"]:
        lines.append(f"note: {n}")
    for u in r["unread"]:
        lines.append(f"UNKNOWN: {u}")
    if r["exit_code"] == UNKNOWN:
        lines.append("UNKNOWN: nothing to check (--keepalived-conf FILE names keepalived's file)")
    elif not r["findings"]:
        lines.append(
            "nothing found" + (" (in what could be read: see the notes)" if r["notes"] else "")
        )
    return "\n".join(lines)


# ---- I/O ----------------------------------------------------------------------------------------


def inspect_path(path: str) -> PathInfo:
    """keepalived's view of a script path: found (PATH searched for a bare name), executable
    by root, and every component of its real path owned by root and not writable by others
    (notify.c check_security; a sticky directory may be writable)."""
    found = path if "/" in path else shutil.which(path)
    if not found:
        return PathInfo(path)
    real = os.path.realpath(found)
    try:
        st = os.stat(real)
    except OSError:
        return PathInfo(path)
    parts = real.split("/")
    insecure = None
    for i in range(1, len(parts) + 1):
        comp = "/".join(parts[:i]) or "/"
        try:
            cst = os.lstat(comp)
        except OSError:
            continue
        is_dir = stat.S_ISDIR(cst.st_mode)
        writable = (cst.st_gid != 0 and cst.st_mode & stat.S_IWGRP) or (cst.st_mode & stat.S_IWOTH)
        if cst.st_uid != 0:
            insecure = f"{comp} is owned by uid {cst.st_uid}, not root"
        elif writable and (not is_dir or not cst.st_mode & stat.S_ISVTX):
            insecure = (
                f"{comp} is writable by group {cst.st_gid} or by others (mode "
                f"{stat.filemode(cst.st_mode)})"
            )
        if insecure:
            break
    return PathInfo(path, real, bool(st.st_mode & 0o111) and stat.S_ISREG(st.st_mode), insecure)


def local_addrs() -> Optional[Tuple[str, ...]]:
    try:
        with IPRoute() as ipr:
            return tuple(a.get_attr("IFA_ADDRESS") for a in ipr.get_addr())
    except Exception:  # noqa: BLE001 - any netlink trouble only costs this one fact
        return None


def _firewall_lines() -> Optional[Tuple[str, ...]]:
    lines: List[str] = []
    read_any = False
    for cmd in (
        ["iptables-save", "-t", "mangle"],
        ["iptables-save", "-t", "nat"],
        ["nft", "list", "ruleset"],
    ):
        if shutil.which(cmd[0]) is None:
            continue
        try:
            proc = subprocess.run(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, timeout=10
            )
        except (OSError, subprocess.SubprocessError):
            continue
        if proc.returncode == 0:
            read_any = True
            lines.extend(ln for ln in proc.stdout.splitlines() if ln.strip())
    return tuple(lines) if read_any else None


def gather_kernel(proc_root: str = "/proc") -> KernelFacts:
    """Everything doctor reads from the kernel; what cannot be read is left out, with a note."""
    facts = KernelFacts(release=os.uname().release, sysctls=read_vs_sysctls(proc_root))
    try:
        with IPVS() as ipvs:
            facts.services = tuple(ipvs.services())
            facts.daemons = tuple(ipvs.daemons())
            t = ipvs.timeouts()
            facts.timeouts = {"tcp": t.tcp, "tcpfin": t.tcpfin, "udp": t.udp}
        facts.ipvs = True
    except KernelError as e:
        facts.note = e.format_message()
    except OSError as e:
        facts.note = f"IPVS netlink: {e.strerror or e}"
    facts.local_addrs = local_addrs()
    facts.firewall = _firewall_lines()
    return facts


def keepalived_test(path: str) -> Optional[Tuple[int, Tuple[str, ...]]]:
    """`keepalived -t -f path`: its exit code and the lines it printed (at most 20); None when
    keepalived is not installed or could not be run."""
    exe = shutil.which("keepalived") or next(
        (p for p in ("/usr/sbin/keepalived", "/sbin/keepalived") if os.access(p, os.X_OK)), None
    )
    if exe is None:
        return None
    try:
        proc = subprocess.run(
            [exe, "-t", "-f", path],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines: List[str] = []
    for ln in proc.stdout.splitlines():
        ln = " ".join(ln.split())
        if ln and ln not in lines:
            lines.append(ln[:200])
    if proc.returncode != 0 and not lines:
        lines.append(f"exit {proc.returncode} without a message")
    return proc.returncode, tuple(lines[:20])


def _users(names) -> Dict[str, int]:
    out = {}
    for n in names:
        if not n:
            continue
        try:
            out[n] = pwd.getpwnam(n).pw_uid
        except KeyError:
            continue
    return out


def gather(
    hooks_cfg,
    conf_path: Optional[str],
    hooks_config_path: Optional[str],
    proc_root: str = "/proc",
    kernel: Optional[KernelFacts] = None,
) -> DoctorInput:
    """Read keepalived.conf, the kernel, the script paths: a DoctorInput. Never raises for
    what it cannot read; it says so in the notes or as a finding."""
    path = conf_path or DEFAULT_PATH
    d = DoctorInput(
        setup=None,
        hooks=hooks_cfg,
        conf_path=path,
        hooks_config_path=hooks_config_path,
        conf_named=conf_path is not None,
    )
    if not os.path.isfile(path) or not os.access(path, os.R_OK):
        why = "no such file" if not os.path.lexists(path) else "not a readable file"
        d.unread.append(f"keepalived.conf {path}: {why}; keepalived checks skipped")
    else:
        try:
            d.setup = KeepalivedSetup.from_conf(read_keepalived_conf(path))
        except KeepalivedConfError as e:
            d.conf_error = e.format_message()
        if d.setup is not None:
            d.keepalived_test = keepalived_test(path)
    d.kernel = kernel if kernel is not None else gather_kernel(proc_root)
    if not d.kernel.ipvs:
        d.notes.append(
            f"IPVS not read ({d.kernel.note or 'unavailable'}): kernel checks skipped, "
            "findings from the configuration only"
        )
    if d.setup is not None:
        d.paths = {sc.path: inspect_path(sc.path) for sc in d.setup.scripts if sc.path}
        names = {sc.user for sc in d.setup.scripts} | {d.setup.script_user, "keepalived_script"}
        d.users = _users(names)
    return d


# ---- a starter lvs-hooks config from keepalived.conf (pure) -------------------------------------


def _ip_ok(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def starter_config(setup: KeepalivedSetup, local_addrs: Sequence[str] = ()) -> str:
    """lvs-hooks YAML derived from keepalived.conf, every value commented with where it came
    from; what cannot be derived is left to the defaults and said. `local_addrs`: this host's
    addresses (with keepalived's own and peer addresses, they tell a co-located setup)."""
    lines = [
        "# lvs-hooks configuration derived from " + setup.conf.path + " by",
        "# `lvs-hooks init --from-keepalived`. Every other key keeps its default",
        "# (man 5 lvs-hooks.yaml lists them all). Check it with `lvs-hooks doctor`.",
        "",
    ]
    sd = setup.sync_daemon
    lines.append("sync:")
    if sd is None:
        lines.append("  # keepalived.conf has no lvs_sync_daemon: without a sync daemon the backup")
        lines.append("  # has no templates to take over (doctor: no-sync-daemon). Set these to the")
        lines.append("  # daemon you start.")
        lines.append("  interface: null")
        lines.append("  syncid: 0")
    else:
        lines.append(f"  # lvs_sync_daemon at {sd.item.where if sd.item else '?'}")
        lines.append(f"  interface: {sd.interface}")
        syncid, why = setup.effective_syncid()
        lines.append(f"  # {why}")
        lines.append(f"  syncid: {syncid if syncid is not None else 0}")
        if sd.group and _ip_ok(sd.group):
            lines.append(f"  group: {sd.group}")
        if sd.port:
            lines.append(f"  port: {sd.port}")
        if sd.ttl:
            lines.append(f"  ttl: {sd.ttl}")
        if sd.maxlen:
            lines.append(f"  maxlen: {sd.maxlen}")
    lines.append("")
    lines.append("transitions:")
    watched = _watched(setup)
    if watched:
        name, why = watched
        lines.append(f"  # {why}")
        lines.append(f"  instances: [{name}]")
    else:
        lines.append("  # no vrrp_instance found: every event counts")
        lines.append("  instances: []")
    if setup.lvs_timeouts_item is not None:
        lines.append(f"  # lvs_timeouts at {setup.lvs_timeouts_item.where}: keepalived owns them")
        lines.append("  keepalived_lvs_timeouts: true")
    tcp = [vs for vs in setup.virtual_servers if vs.persistent and vs.protocol == "TCP"]
    lines.append("")
    lines.append("master:")
    if tcp:
        lines.append(
            f"  # {len(tcp)} persistent TCP virtual server(s), e.g. {tcp[0].describe()} at "
            f"{tcp[0].item.where}:"
        )
        lines.append("  # sloppy_tcp=1 lets their connections go on after a takeover")
        lines.append('  sysctls: ["sloppy_tcp=1"]')
    else:
        lines.append("  # no persistent TCP virtual server: no sysctl to set on MASTER")
        lines.append("  sysctls: []")
    lines.extend(_starter_rules(setup, local_addrs))
    return "\n".join(lines) + "\n"


def _starter_rules(setup: KeepalivedSetup, local_addrs: Sequence[str]) -> List[str]:
    """The rules: section for directors that are also DR real servers (co-located)."""
    own = set(local_addrs)
    peers: List[str] = []
    vips: List[str] = []
    for inst in setup.instances:
        own.update(inst.own_addrs)
        peers.extend(a for a in inst.peer_addrs if a not in peers)
        vips.extend(inst.virtual_addrs)
    own -= {"127.0.0.1", "::1"}
    services: List[Tuple[VirtualServer, List[str]]] = []
    for vs in setup.virtual_servers:
        here = [rs.addr for rs in vs.real_servers if rs.addr in own or rs.addr in peers]
        if vs.lb_kind == "DR" and here:
            services.append((vs, here))
    if not services:
        return []
    rs_peers = sorted({a for _, here in services for a in here if a not in own})
    out = [
        "",
        "# The directors are also the real servers (DR): lvs-hooks keeps the backup's IPVS",
        "# away from what the master forwarded (no ping-pong loop). keepalived must run",
        "# lvs-hooks (it swaps the rules on each transition); enable lvs-hooks-rules.service",
        "# (the backup's rules at boot, before keepalived). `lvs-hooks rules show` lists them.",
        "rules:",
    ]
    if rs_peers:
        out.append("  # the other director(s) among the real servers")
        out.append(f"  peers: [{', '.join(rs_peers)}]")
    else:
        out.append("  # the other director(s): their addresses among the real servers")
        out.append("  peers: []")
    out.append("  services:")
    for vs, _ in services:
        out.append(f"    # {vs.describe()} at {vs.item.where}")
        if vs.fwmark is not None:
            if not vips:
                out.append("    # no virtual_ipaddress in keepalived.conf: write the VIP here")
            vip = vips[0] if vips else "0.0.0.0"
            out.append(f"    - {{vip: {vip}, mode: fwmark, fwmark: {vs.fwmark}}}")
        else:
            out.append(
                f"    - {{vip: {vs.addr}, port: {vs.port or 0}, protocol: "
                f"{vs.protocol.lower()}, mode: redirect}}"
            )
    return out


def _watched(setup: KeepalivedSetup) -> Optional[Tuple[str, str]]:
    """The one instance or sync group whose state decides this director's role."""
    sd = setup.sync_daemon
    inst = setup.instance(sd.instance) if sd is not None and sd.instance else None
    if inst is None and len(setup.instances) == 1:
        inst = setup.instances[0]
    if inst is None:
        if setup.instances:
            first = setup.instances[0]
            return first.name, (
                f"{len(setup.instances)} instances and none named by lvs_sync_daemon: the first, "
                f"{first.name} ({first.item.where}); name the one that carries the virtual servers"
            )
        return None
    for group, (members, item) in setup.sync_groups.items():
        if inst.name in members:
            return group, (
                f"vrrp_sync_group {group} ({item.where}) holds {inst.name}: its members fail "
                "over together"
            )
    why = f"vrrp_instance {inst.name} ({inst.item.where})"
    if sd is not None and sd.instance == inst.name:
        why += ", named by lvs_sync_daemon"
    return inst.name, why
