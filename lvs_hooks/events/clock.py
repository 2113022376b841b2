"""When keepalived emitted an event: the key that orders events (`keepalived.Order`).

keepalived forks one process per notify script and does not wait for it, so the processes of a
quick MASTER, BACKUP, MASTER race each other. The order in which they were forked is the order
keepalived emitted the events, and the kernel records it: a process's start time
(`/proc/PID/stat` field 22, clock ticks on the boot clock) is set at fork and kept across exec.
Ties within one tick (10 ms) are broken by the pid, which the kernel hands out in increasing
order (a pid wrap inside one tick is the one case this gets wrong).

FIFO lines are already ordered; a reader stamps each with the boot clock when it reads it.
Both use CLOCK_BOOTTIME, so the figures are comparable and a latency can be computed from them.
Mixing the FIFO and the notify form on one director is not supported: their times are taken at
different moments of an event's life.
"""

import os
import time
from typing import Optional, Tuple

from lvs_hooks import safeio
from lvs_hooks.events.keepalived import Order

_TICK_NS = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
# A wrapper shell between keepalived and us is common (`notify "/bin/sh /etc/x.sh"`); deeper
# chains are not looked for.
_MAX_DEPTH = 3


def now_ns() -> int:
    """Nanoseconds on the boot clock (counts suspend too, like a process start time)."""
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


def _stat(pid: int, proc_root: str) -> Optional[Tuple[str, int, int]]:
    """(comm, ppid, start time in ticks) of a process, None if it is gone."""
    try:
        data = safeio.read_proc(f"{proc_root}/{pid}/stat").decode("utf-8", errors="replace")
    except OSError:
        return None
    # comm may hold spaces and parentheses: it ends at the last ')'.
    head, _, rest = data.rpartition(")")
    comm = head.partition("(")[2]
    fields = rest.split()
    # fields[0] is field 3 (state); ppid is field 4, starttime field 22.
    return comm, int(fields[1]), int(fields[19])


def notify_order(pid: Optional[int] = None, proc_root: str = "/proc") -> Order:
    """The order key of an event delivered by starting this process (the notify forms).

    The process keepalived forked is the one whose parent is keepalived: ourselves, or a wrapper
    script above us. Without a keepalived ancestor (a person or a test ran us) our own start
    time is used.
    """
    pid = os.getpid() if pid is None else pid
    own = _stat(pid, proc_root)
    if own is None:
        return (now_ns(), pid, 0)
    current_pid, (_, ppid, start) = pid, own
    for _ in range(_MAX_DEPTH):
        if ppid <= 1:
            break
        parent = _stat(ppid, proc_root)
        if parent is None:
            break
        if parent[0] == "keepalived":
            return (start * _TICK_NS, current_pid, 0)
        current_pid, (_, ppid, start) = ppid, parent
    return (own[2] * _TICK_NS, pid, 0)


def fifo_order(seq: int) -> Order:
    """The order key of the seq-th line read from the FIFO by this reader."""
    return (now_ns(), os.getpid(), seq)
