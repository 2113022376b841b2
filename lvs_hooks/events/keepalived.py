"""keepalived's VRRP notifications as Event values: pure parsing, no I/O.

Three forms reach us (keepalived `vrrp_notify.c`):

- the generic `notify` script gets `INSTANCE|GROUP NAME STATE PRIORITY` appended to its own
  arguments (STATE is MASTER, BACKUP, FAULT or STOP; keepalived 2.1+ also sends DELETED, and
  `{UNKNOWN}` for anything else; the priority of a GROUP is always 0);
- `notify_master`, `notify_backup`, `notify_fault` and `notify_stop` get no arguments: the state
  is in the script's own command line (`lvs-hooks master VI_1`);
- `vrrp_notify_fifo` (and the shared `notify_fifo`) carries lines `INSTANCE "VI_1" MASTER 100`,
  in the order keepalived wrote them, plus events that are not transitions
  (`MASTER_RX_LOWER_PRI`, `MASTER_PRIORITY`, `BACKUP_PRIORITY`) and, on a shared FIFO, the
  checker's lines. keepalived writes the name between double quotes without escaping anything.

An Event carries an `order`: a key that sorts events in the order keepalived emitted them
(see `sequencer`), supplied by the caller because finding it needs I/O.
"""

import re
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

KINDS = ("INSTANCE", "GROUP")
# States that are transitions of an instance or a sync group.
STATES = ("MASTER", "BACKUP", "FAULT", "STOP", "DELETED")
# FIFO events that report something but are no transition; logged, never acted on.
INFO_EVENTS = ("MASTER_RX_LOWER_PRI", "MASTER_PRIORITY", "BACKUP_PRIORITY")
# Commands named after the state they report (notify_master etc.).
ROLE_COMMANDS = {"master": "MASTER", "backup": "BACKUP", "fault": "FAULT", "stop": "STOP"}

# keepalived's FIFO line: `%s "%s" %s %d\n`. The name is greedy: keepalived does not escape a
# quote inside a name, so everything between the first and the last quote is the name.
_FIFO_LINE = re.compile(r'^(?P<kind>[A-Z]+) "(?P<name>.*)" (?P<state>[A-Z_{}]+) (?P<prio>-?\d+)$')
_CHECKER_PREFIXES = ("VS ", "RS ", "MONITOR ")
# Far longer than any keepalived line (names are at most a few hundred bytes); a longer line is
# not from keepalived.
MAX_LINE = 4096



class LineSplitter:
    """Whole lines of a byte stream (keepalived's FIFO), each at most MAX_LINE bytes.

    A line that grows past MAX_LINE without its newline is dropped, and so is the rest of it
    when it comes: what follows a dropped piece up to the next newline is the same line's
    tail, never a line of its own (a reader that forgot this parsed that tail as an event).
    """

    def __init__(self, skipping: bool = False):
        self.buf = b""
        self.skipping = skipping  # inside an overlong line: drop up to the next newline
        self.overlong = 0  # overlong lines dropped so far

    def feed(self, data: bytes) -> List[bytes]:
        """The lines completed by `data` (without their newline)."""
        lines = (self.buf + data).split(b"\n")
        self.buf = lines.pop()
        if self.skipping:
            if not lines:
                self.buf = b""  # still inside the overlong line
                return []
            lines.pop(0)  # its tail, up to its newline
            self.skipping = False
        if len(self.buf) > MAX_LINE:
            self.buf = b""
            self.skipping = True
            self.overlong += 1
        return lines


# (event time in ns on CLOCK_BOOTTIME, pid, sequence number): see sequencer.
Order = Tuple[int, int, int]


@dataclass(frozen=True)
class Event:
    """One VRRP state change of an instance or sync group, as keepalived reported it."""

    kind: str  # INSTANCE or GROUP
    name: str
    state: str  # one of STATES
    priority: Optional[int]  # None when keepalived did not say (notify_master etc.)
    source: str  # "notify", "notify_master", ..., "fifo"
    order: Order

    @property
    def key(self) -> str:
        """What "the same instance or group" means for the latest-event-wins rule."""
        return f"{self.kind} {self.name}"

    def describe(self) -> str:
        prio = "" if self.priority is None else f" prio {self.priority}"
        return f"{self.state} {self.kind.lower()} {self.name or '(unnamed)'}{prio}"

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "name": self.name,
            "state": self.state,
            "priority": self.priority,
            "source": self.source,
            "order": list(self.order),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Event":
        return cls(
            kind=d["kind"],
            name=d["name"],
            state=d["state"],
            priority=d.get("priority"),
            source=d.get("source", "?"),
            order=tuple(d.get("order", (0, 0, 0))),  # type: ignore[arg-type]
        )


@dataclass(frozen=True)
class Ignored:
    """A FIFO line that is not acted on, and why. `unexpected` lines are worth a warning; the
    others (priority changes, checker lines on a shared FIFO, blank lines) are routine."""

    reason: str
    unexpected: bool


class ArgumentError(ValueError):
    """keepalived's arguments do not make an event; the message says which one is wrong."""


def parse_notify_args(args: Sequence[str], order: Order) -> Event:
    """The arguments keepalived appends to a generic `notify` script."""
    if len(args) != 4:
        shown = " ".join(args) if args else "nothing"
        raise ArgumentError(
            f"expected the 4 arguments keepalived's notify appends "
            f"(INSTANCE|GROUP NAME STATE PRIORITY), got {len(args)}: {shown}"
        )
    kind, name, state, prio = args
    if kind not in KINDS:
        raise ArgumentError(f"first argument must be INSTANCE or GROUP, got {kind!r}")
    if state not in STATES:
        raise ArgumentError(f"state must be one of {', '.join(STATES)}, got {state!r}")
    if not name:
        raise ArgumentError("the instance or group name is empty")
    try:
        priority = int(prio)
    except ValueError:
        raise ArgumentError(f"priority must be an integer, got {prio!r}") from None
    if not 0 <= priority <= 255:
        raise ArgumentError(f"priority must be 0-255, got {priority}")
    return Event(kind, name, state, priority, "notify", order)


def role_event(command: str, name: Optional[str], group: bool, order: Order) -> Event:
    """The event of a `notify_master`-style call: the state is the command's own name."""
    state = ROLE_COMMANDS[command]
    if name is not None and not name.strip():
        raise ArgumentError("the instance or group name is empty")
    return Event(
        "GROUP" if group else "INSTANCE", name or "", state, None, f"notify_{command}", order
    )


def parse_fifo_line(line: Union[str, bytes], order: Order) -> Union[Event, Ignored]:
    """One line read from keepalived's notify FIFO (with or without its newline)."""
    if isinstance(line, bytes):
        line = line.decode("utf-8", errors="replace")
    line = line.rstrip("\n")
    if not line.strip():
        return Ignored("empty line", unexpected=False)
    if len(line) > MAX_LINE:
        return Ignored(f"line of {len(line)} characters is not from keepalived", unexpected=True)
    m = _FIFO_LINE.match(line)
    if m is None:
        if line.startswith(_CHECKER_PREFIXES):
            return Ignored("a checker line (shared notify_fifo), not a VRRP event", False)
        return Ignored("not a keepalived VRRP event line", unexpected=True)
    kind, name, state, prio = m.group("kind", "name", "state", "prio")
    if kind not in KINDS:
        return Ignored(f"unknown object {kind!r} (not INSTANCE or GROUP)", unexpected=True)
    if state in INFO_EVENTS:
        return Ignored(f"{state} is not a transition", unexpected=False)
    if state not in STATES:
        return Ignored(f"unknown state {state!r}", unexpected=True)
    if not name:
        return Ignored("empty instance or group name", unexpected=True)
    # A run of digits no priority has: not converted at all (int() of thousands of digits is
    # slow, and refused past 4,300 on Python 3.11).
    priority = int(prio) if len(prio) <= 4 else 10**4
    if not 0 <= priority <= 255:
        return Ignored(f"priority {priority} out of range", unexpected=True)
    return Event(kind, name, state, priority, "fifo", order)
