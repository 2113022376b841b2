"""The reader of keepalived's notify FIFO (`vrrp_notify_fifo` + `vrrp_notify_fifo_script`).

keepalived creates the FIFO, starts the script with the FIFO's path as its last argument, then
opens the FIFO itself and writes one line per event, non-blocking: whatever does not fit in the
pipe is lost. So a reader thread does nothing but read, parse and note each event as the newest
of its instance or group (which also lets a transition under way see that it has been
superseded), and hands events to the main thread, which runs the transitions one at a time.

The FIFO is opened read-write: a reader that is also a writer never sees end-of-file, so
keepalived closing and reopening its end costs nothing.

SIGTERM comes when keepalived stops or reloads (it signals its scripts, then writes the STOP
lines, then SIGKILLs what still runs 1 s later; a reload starts a new reader) or when it died
(it has the kernel signal its scripts then). The reader then drains the pipe and keeps reading
until every instance and group it has heard of has sent STOP, or for DRAIN_WINDOW seconds at
most; the main thread runs what was read (the STOP snapshot, typically) and the process exits.
"""

import contextlib
import logging
import os
import select
import signal
import stat
import threading
import time
from typing import Callable, Dict, Optional

from lvs_hooks.errors import LvsHooksError, UsageError
from lvs_hooks.events.clock import fifo_order
from lvs_hooks.events.eventqueue import EventQueue
from lvs_hooks.events.handoff import AgentHandoff
from lvs_hooks.events.keepalived import (
    MAX_LINE,
    Event,
    Ignored,
    LineSplitter,
    parse_fifo_line,
)
from lvs_hooks.events.periodic import PeriodicThread
from lvs_hooks.events.role import read_role
from lvs_hooks.events.sequencer import DONE, FAILED, Outcome, Plan, Sequencer

log = logging.getLogger(__name__)

_CHUNK = 65536
# After SIGTERM, how long to keep reading for keepalived's STOP lines, which it writes only
# after signalling its scripts; it SIGKILLs them 1 s after the SIGTERM.
DRAIN_WINDOW = 0.7


class FifoReader:
    """Reads events from a FIFO and runs them through a sequencer until stopped."""

    def __init__(
        self,
        path: str,
        sequencer: Sequencer,
        planner: Callable[[Event], Plan],
        lock_timeout: Callable[[Event], float],
        duty: Optional[Callable[[Optional[str], Callable[[], bool]], None]] = None,
        duty_period: float = 5.0,
        handoff: Optional[AgentHandoff] = None,
    ):
        """`duty(role, should_yield)` runs every `duty_period` seconds on a thread beside the
        events (events.periodic), with the role of the last transition run ("MASTER", "BACKUP",
        ... or None before any); while an event is queued or running it waits."""
        self.path = path
        self._handed = False  # events went to an agent since the duties last ran here
        # An agent that starts after this reader takes the events and the duties (handoff).
        self.handoff = handoff
        self._own_duty = duty
        self.duty = self._duty_unless_agent if duty is not None and handoff is not None else duty
        self.duty_period = duty_period
        # The role the last transition left, whichever process ran it. After a reload
        # keepalived starts a new reader and, in most versions, writes no state lines: without
        # this, the new reader would know no role and never run the master's keeper.
        self.role: Optional[str] = read_role(str(sequencer.run_dir))
        if self.role is not None:
            log.info("FIFO %s: starting as %s, the role the last transition left", path, self.role)
        self.sequencer = sequencer
        self.planner = planner
        self.lock_timeout = lock_timeout
        self.fd = _open_fifo(path)
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._seq = 0
        self._last_state: Dict[str, str] = {}
        self._carried = b""
        self._carried_skipping = False
        self._lines = LineSplitter()
        self.drain_window = DRAIN_WINDOW
        self.counts = {"lines": 0, "events": 0, "ignored": 0, "failed": 0, "errors": 0}
        # the planner and lock timeout looked up at each event (tests swap them)
        self.events = EventQueue(
            sequencer, lambda e: self.planner(e), lambda e: self.lock_timeout(e), self.counts
        )

    def _duty_unless_agent(self, role: Optional[str], should_yield: Callable[[], bool]) -> None:
        assert self.handoff is not None and self._own_duty is not None
        if self.handoff.alive():
            self._handed = True
            return
        if self._handed:  # the agent ran the transitions meanwhile: the role it left holds
            self._handed = False
            self.role = role = read_role(str(self.sequencer.run_dir))
        self._own_duty(role, should_yield)

    def close(self) -> None:
        for fd in (self.fd, self._wake_r, self._wake_w):
            os.close(fd)

    def request_stop(self) -> None:
        """Stop reading once every instance seen has sent STOP or `drain_window` seconds have
        passed, run what was read, then return from run() (safe from a signal handler)."""
        with contextlib.suppress(BlockingIOError):  # a wake-up is pending already
            os.write(self._wake_w, b"x")

    def carry_over(
        self, data: bytes, last_state: Dict[str, str], lines_before: int, skipping: bool = False
    ) -> None:
        """Take over from another reader of this FIFO in this process (the door, when the agent
        went away): `data` it read and did not hand on (read first, as if just read), the last
        state it heard of each instance or group (for the drain), how many lines it read (line
        numbers go on), and whether it was inside an overlong line. Call before run()."""
        self._carried = data
        self._carried_skipping = skipping
        self._last_state.update(last_state)
        self._seq = lines_before

    # -- the reader thread

    def _read_loop(self) -> None:
        deadline = None  # set when asked to stop
        try:
            self._feed(self._carried)
            self._carried = b""
            # The door was inside an overlong line after what it carried over: what comes
            # next up to a newline is that line's tail.
            self._lines.skipping = self._lines.skipping or self._carried_skipping
            while True:
                timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
                ready, _, _ = select.select([self.fd, self._wake_r], [], [], timeout)
                if self.fd in ready:
                    self._read_available()
                if self._wake_r in ready and deadline is None:
                    os.read(self._wake_r, 64)
                    deadline = time.monotonic() + self.drain_window
                    self._read_available()
                if deadline is not None and (self._all_stopped() or time.monotonic() >= deadline):
                    if self._lines.buf:
                        log.warning(
                            "FIFO %s: incomplete line at exit ignored: %r",
                            self.path,
                            self._lines.buf[:200],
                        )
                    return
        except Exception:
            log.exception("FIFO %s: reader failed", self.path)
            self.counts["errors"] += 1
        finally:
            self.events.close()

    def _all_stopped(self) -> bool:
        # keepalived sends its scripts SIGTERM first and writes the STOP lines after: once every
        # instance and group heard of has stopped, nothing more is coming.
        return bool(self._last_state) and all(s == "STOP" for s in self._last_state.values())

    def _read_available(self) -> None:
        while True:
            try:
                chunk = os.read(self.fd, _CHUNK)
            except BlockingIOError:
                return
            if not chunk:  # no writer at all: cannot happen while we hold it open read-write
                return
            self._feed(chunk)

    def _feed(self, data: bytes) -> None:
        """Take the whole lines that `data` completes."""
        before = self._lines.overlong
        for line in self._lines.feed(data):
            self._line(line)
        if self._lines.overlong > before:
            log.warning(
                "FIFO %s: a line longer than %d bytes ignored, up to its newline",
                self.path,
                MAX_LINE,
            )
            self.counts["ignored"] += 1

    def _line(self, raw: bytes) -> None:
        self._seq += 1
        self.counts["lines"] += 1
        parsed = parse_fifo_line(raw, fifo_order(self._seq))
        if isinstance(parsed, Ignored):
            self.counts["ignored"] += 1
            log.log(
                logging.WARNING if parsed.unexpected else logging.DEBUG,
                "FIFO %s line %d ignored: %s: %r",
                self.path,
                self._seq,
                parsed.reason,
                raw[:200].decode("utf-8", errors="replace"),
            )
            return
        self.counts["events"] += 1
        self._last_state[parsed.key] = parsed.state
        if self.handoff is not None and self.handoff.take(parsed):
            self._handed = True
            log.info("FIFO line %d: %s: handed to the agent", self._seq, parsed.describe())
            return
        log.info("FIFO line %d: %s", self._seq, parsed.describe())
        try:
            self.sequencer.note(parsed)
        except (OSError, LvsHooksError) as e:
            # The reader must go on reading (keepalived does not restart it): the event is
            # still queued, and its turn says in one line why it cannot run.
            text = e.format_message() if isinstance(e, LvsHooksError) else (e.strerror or str(e))
            log.error("FIFO line %d: %s: not noted: %s", self._seq, parsed.describe(), text)
        self.events.put(parsed)

    # -- the main thread

    def run(self) -> None:
        """Run transitions for the events read until request_stop() and the drain are done."""
        reader = threading.Thread(target=self._read_loop, name="fifo-reader", daemon=True)
        reader.start()
        duties = None
        if self.duty is not None:
            duties = PeriodicThread(self.duty, self.duty_period, lambda: self.role, self.busy)
            duties.start()
        try:
            self._run_events()
        finally:
            if duties is not None:
                duties.stop()
        reader.join()

    def busy(self) -> bool:
        """True while an event is queued or its transition runs: the duties yield to it."""
        return self.events.busy()

    def _run_events(self) -> None:
        def took(event: Event, outcome: Outcome) -> None:
            if outcome.outcome in (DONE, FAILED):
                self.role = event.state

        self.events.run(took)


def _open_fifo(path: str) -> int:
    try:
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise UsageError(
            f"fifo: {path} does not exist (keepalived creates its vrrp_notify_fifo before "
            f"starting vrrp_notify_fifo_script)"
        ) from None
    except OSError as e:
        raise UsageError(f"fifo: cannot open {path}: {e.strerror or e}") from None
    if not stat.S_ISFIFO(os.fstat(fd).st_mode):
        os.close(fd)
        raise UsageError(f"fifo: {path} is not a FIFO")
    return fd


def serve(reader: FifoReader) -> dict:
    """Run a reader in the main thread until SIGTERM or SIGINT, then drain; the counts."""
    previous = {}

    def on_signal(signum, frame):
        log.info("FIFO %s: %s: draining, then exiting", reader.path, signal.Signals(signum).name)
        reader.request_stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        previous[sig] = signal.signal(sig, on_signal)
    log.info("reading keepalived events from FIFO %s", reader.path)
    try:
        reader.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        reader.close()
    log.info(
        "FIFO %s: exiting after %d lines, %d events, %d ignored, %d transitions failed, %d errors",
        reader.path,
        reader.counts["lines"],
        reader.counts["events"],
        reader.counts["ignored"],
        reader.counts["failed"],
        reader.counts["errors"],
    )
    return reader.counts
