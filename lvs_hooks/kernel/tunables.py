"""The director's kernel tunables: net.ipv4.vs sysctls and IPVS connection timeouts.

The one place that changes them, and each change is read back: a sysctl write can be accepted
and clamped or ignored (a value out of range, a namespace where the knob is read-only), and the
timeouts set over netlink are the ones `ipvsadm -l --timeout` shows only if the kernel took
them. Each apply returns what it found, what it changed and what did not hold.
"""

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence

from lvs_hooks import safeio
from lvs_hooks.errors import KernelError

if TYPE_CHECKING:  # the sysctl half serves the rules unit, which needs no netlink
    from lvs_hooks.kernel.netlink import IPVS

SYSCTL_DIR = os.path.join("sys", "net", "ipv4", "vs")
TIMEOUT_NAMES = ("tcp", "tcpfin", "udp")


def sysctl_path(proc_root: str, name: str) -> str:
    """The file of net.ipv4.vs.`name` under `proc_root` (the current network namespace's)."""
    if not name or "/" in name or name.startswith("."):
        raise KernelError(f"net.ipv4.vs.{name}: not a sysctl name")
    return os.path.join(proc_root, SYSCTL_DIR, name)


def read_sysctl(proc_root: str, name: str) -> Optional[str]:
    """The value as the kernel prints it (words joined by one space); None if there is no such
    sysctl here (ip_vs not loaded)."""
    try:
        data = safeio.read_proc(sysctl_path(proc_root, name))
    except FileNotFoundError:
        return None
    return " ".join(data.decode("utf-8", errors="replace").split())


def write_sysctl(proc_root: str, name: str, value: str) -> str:
    """Write net.ipv4.vs.`name` and read it back: the value the kernel now shows.
    FileNotFoundError when ip_vs is not loaded; KernelError when the write is refused or the
    kernel shows another value afterwards."""
    want = " ".join(value.split())
    try:
        # Never through a link, never creating a file: a proc_root pointed elsewhere must not
        # make root write into whatever a link there names.
        fd = safeio.open_existing(sysctl_path(proc_root, name))
        try:
            os.write(fd, (value + "\n").encode())
        finally:
            os.close(fd)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise KernelError(f"net.ipv4.vs.{name}={value}: {e.strerror or e}") from None
    after = read_sysctl(proc_root, name)
    if after != want:
        raise KernelError(f"net.ipv4.vs.{name}={value}: written, but the kernel shows {after}")
    return after


@dataclass
class SysctlReport:
    changed: List[str] = field(default_factory=list)  # "name old->new"
    unchanged: List[str] = field(default_factory=list)
    failed: List[str] = field(default_factory=list)  # one line each, naming the sysctl

    def figures(self) -> Dict[str, List[str]]:
        return {"changed": self.changed, "unchanged": self.unchanged, "failed": self.failed}


def apply_sysctls(assignments: Sequence[str], proc_root: str) -> SysctlReport:
    """Set each `name=value` that differs, then read it back. All are tried."""
    report = SysctlReport()
    for assignment in assignments:
        name, _, value = assignment.partition("=")
        want = " ".join(value.split())
        try:
            current = read_sysctl(proc_root, name)
            if current is None:
                report.failed.append(f"net.ipv4.vs.{name}: no such sysctl (is ip_vs loaded here?)")
                continue
            if current == want:
                report.unchanged.append(name)
                continue
            write_sysctl(proc_root, name, value)
            report.changed.append(f"{name} {current}->{want}")
        except KernelError as e:
            report.failed.append(e.format_message())
        except OSError as e:
            report.failed.append(f"net.ipv4.vs.{name}={value}: {e.strerror or e}")
    return report


@dataclass
class TimeoutsReport:
    before: Dict[str, int]
    wanted: Dict[str, int]
    changed: Dict[str, int]  # what was set (the others were right already or not wanted)
    after: Dict[str, int]

    @property
    def held(self) -> bool:
        return all(self.after[k] == v for k, v in self.wanted.items() if v)


def apply_timeouts(ipvs: "IPVS", tcp: int = 0, tcpfin: int = 0, udp: int = 0) -> TimeoutsReport:
    """Set the IPVS timeouts that differ (0: leave that one) and read them back; KernelError
    when the kernel shows another value afterwards."""
    wanted = {"tcp": tcp, "tcpfin": tcpfin, "udp": udp}
    t = ipvs.timeouts()
    before = {"tcp": t.tcp, "tcpfin": t.tcpfin, "udp": t.udp}
    diff = {k: v for k, v in wanted.items() if v and before[k] != v}
    after = before
    if diff:
        ipvs.set_timeouts(**{k: diff.get(k, 0) for k in TIMEOUT_NAMES})
        t = ipvs.timeouts()
        after = {"tcp": t.tcp, "tcpfin": t.tcpfin, "udp": t.udp}
    report = TimeoutsReport(before, wanted, diff, after)
    if not report.held:
        wrong = ", ".join(f"{k} {after[k]} (wanted {v})" for k, v in wanted.items()
                          if v and after[k] != v)
        raise KernelError(f"IPVS timeouts set but the kernel shows {wrong}")
    return report
