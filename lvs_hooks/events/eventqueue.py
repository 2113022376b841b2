"""Events waiting for their transitions, run one at a time in the order they came: the FIFO
reader's and the agent inbox's, the same rules in one place.

`busy()` is what the periodic duties yield to: true from the moment an event is queued until
its transition has ended. A bug in one transition is logged with its traceback and the queue
goes on: keepalived does not restart its FIFO script, and an agent deaf to every later event
would leave the director in whatever role it had.
"""

import logging
import queue
import threading
from typing import Callable, Dict, Optional

from lvs_hooks.errors import LvsHooksError
from lvs_hooks.events.keepalived import Event
from lvs_hooks.events.sequencer import Outcome, Plan, Sequencer

log = logging.getLogger(__name__)


class EventQueue:
    def __init__(
        self,
        sequencer: Sequencer,
        planner: Callable[[Event], Plan],
        lock_timeout: Callable[[Event], float],
        counts: Optional[Dict[str, int]] = None,
    ):
        """`counts`: the owner's figures, where "failed" and "errors" are added up."""
        self.sequencer = sequencer
        self.planner = planner
        self.lock_timeout = lock_timeout
        self.counts = counts if counts is not None else {}
        self.counts.setdefault("failed", 0)
        self.counts.setdefault("errors", 0)
        self._queue: queue.Queue[Optional[Event]] = queue.Queue()
        self._pending = 0  # events queued or running
        self._lock = threading.Lock()

    def put(self, event: Event) -> None:
        with self._lock:
            self._pending += 1
        self._queue.put(event)

    def close(self) -> None:
        """run() returns once the events put before this have run."""
        self._queue.put(None)

    def busy(self) -> bool:
        with self._lock:
            return self._pending > 0

    def run(self, on_outcome: Optional[Callable[[Event, Outcome], None]] = None) -> None:
        """Run the events as they come until close()."""
        while True:
            event = self._queue.get()
            if event is None:
                return
            try:
                outcome = self.sequencer.handle(event, self.planner, self.lock_timeout(event))
                if outcome.failed:
                    self.counts["failed"] += 1
                if on_outcome is not None:
                    on_outcome(event, outcome)
            except LvsHooksError as e:
                self.counts["errors"] += 1
                log.error("%s", e.format_message())
            except Exception:
                self.counts["errors"] += 1
                log.exception("%s: transition crashed", event.describe())
            finally:
                with self._lock:
                    self._pending -= 1
