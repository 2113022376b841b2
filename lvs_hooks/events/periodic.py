"""The periodic duties on a thread of their own, beside the thread that runs keepalived's
events: in the agent (beside events.inbox) and in the FIFO reader that runs without one
(events.fifo). An event never waits for a duty: while one is queued or running the duties wait,
and a duty under way is told to stop early (`should_yield`)."""

import logging
import sys
import threading
import time
from typing import Any, Callable, Optional

log = logging.getLogger(__name__)

SWITCH_INTERVAL = 0.001  # seconds a thread may hold the interpreter's lock while others wait


class PeriodicThread:
    """Runs `duty(role, should_yield)` every `period` seconds with the role the last transition
    left (`read_role()`), beside the event thread and never in front of it: while `busy()` (an
    event queued or running) it waits, and `should_yield()` tells a long duty to stop early."""

    # While an event is queued or running, look again this often.
    BUSY_POLL = 0.05

    def __init__(
        self,
        duty: Callable[[Optional[str], Callable[[], bool]], Any],
        period: float,
        read_role: Callable[[], Optional[str]],
        busy: Callable[[], bool],
    ):
        self.duty = duty
        self.period = period
        self.read_role = read_role
        self.busy = busy
        self.runs = 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        # A duty parsing a large table keeps the interpreter's lock; the event thread, whose
        # transition is many short system calls, must win it back after each one. At Python's
        # default 5 ms a MASTER transition started 150-200 ms late behind a keeper's parse of
        # 50,000 templates in the lab; 1 ms gives it the lock five times sooner.
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL))
        self._thread = threading.Thread(target=self._loop, name="periodic", daemon=True)
        self._thread.start()
        log.info("periodic duties every %g s, beside the events", self.period)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def should_yield(self) -> bool:
        return self.busy() or self._stop.is_set()

    def _loop(self) -> None:
        next_run = time.monotonic() + self.period
        while not self._stop.wait(max(0.0, next_run - time.monotonic())):
            if self.busy():
                next_run = time.monotonic() + self.BUSY_POLL
                continue
            role = self.read_role()
            try:
                self.duty(role, self.should_yield)
            except Exception:
                # The periodic work must never stop; the traceback goes to the log.
                log.exception("periodic work while %s failed", role or "no role yet")
            self.runs += 1
            next_run = time.monotonic() + self.period

