"""A FIFO read in this process hands over to an agent that starts later.

keepalived starts its vrrp_notify_fifo_script when it starts, and the agent may come up after
it (its unit is slower to import, or was restarted). The reader then finds no agent and runs
the transitions and the periodic duties itself (events.fifo). Left at that, the director would
have two brains once the agent is up: the reader's transitions without the agent's table in
memory, and two keepers reading the kernel's table (lab: a takeover on a table of 36,000
templates ran in the reader, and both processes read /proc every period).

So the reader asks, for each event, whether an agent answers on its socket, and if it does,
hands the event over as the door would (the agent notes it before it acknowledges); and its
duties stand down while an agent answers. The answer is cached for a few seconds: the duties
ask every period.

An agent that is there but slow is not gone. Its socket accepts and no answer comes within the
door's ACK_TIMEOUT while it is busy (lab, under load: a director's agent taking in a bulk of
200,000 synced templates missed two hellos in its first minute). Taking the duties back then
was worse than waiting: the reader's periodic snapshot started a whole read of
/proc/net/ip_vs_conn as the table grew, ran 373 s (the kernel serves that file in time
quadratic in its size) and held the reader's loop all along, while the agent did the same duty
from its table in memory. So a socket that is there and silent counts as the agent for
SLOW_GRACE seconds after its last answer; a socket that is gone or refused (the agent stopped
or died), an agent that answers no (another config), or silence past the grace (a hung agent)
gives the duties back.
"""

import logging
import time
from typing import Callable, Optional

from lvs_hooks.door import ACK_TIMEOUT, AgentConnection, NoAgent, event_message, hello_message
from lvs_hooks.events.keepalived import Event

log = logging.getLogger(__name__)

RECHECK = 2.0  # seconds an answer (agent or none) is trusted for
SLOW_GRACE = 60.0  # seconds after its last answer that a silent agent still counts as there


class AgentHandoff:
    def __init__(
        self,
        socket_path: str,
        config: str,
        clock: Callable[[], float] = time.monotonic,
        timeout: float = ACK_TIMEOUT,
    ):
        """`config`: the absolute path of this process's config file (the agent takes events
        only for its own). `timeout`: how long a hello waits for its answer."""
        self.path = socket_path
        self.config = config
        self.clock = clock
        self.timeout = timeout
        self._alive: Optional[bool] = None
        self._checked = float("-inf")
        self._answered = float("-inf")  # when the agent last answered a hello
        self._told: Optional[bool] = None  # the verdict last logged
        self._slow = False  # silent since the last answer, within the grace

    def alive(self) -> bool:
        """Whether an agent of this config answers now, or answered within SLOW_GRACE seconds
        and its socket is still there (cached RECHECK seconds)."""
        now = self.clock()
        if self._alive is not None and now - self._checked < RECHECK:
            return self._alive
        failure = self._hello()
        self._checked = now
        if failure is None:
            if self._slow:
                log.info("the agent on %s answers again (silent for up to %.0f s)", self.path,
                         now - self._answered)
            self._alive, self._answered, self._slow = True, now, False
        elif not failure.silent or now - self._answered >= SLOW_GRACE:
            # gone, refused, or an answer that makes no sense: not an agent to wait for
            self._alive, self._slow = False, False
        else:
            if not self._slow:
                # information, not a warning: under load an agent is silent for a second or
                # two at a time (lab, a bulk of 200,000 synced templates: every few seconds)
                log.info(
                    "the agent on %s did not answer (%s), %.0f s after its last answer: taken "
                    "as busy, not gone; it keeps the events and duties unless it stays silent "
                    "%.0f s", self.path, failure.reason, now - self._answered, SLOW_GRACE)
            self._alive, self._slow = True, True
        if self._alive and not self._told:
            log.info("an agent answers on %s: events go to it, and its duties replace this "
                     "process's", self.path)
        elif self._told and not self._alive:
            assert failure is not None
            log.warning("the agent on %s no longer answers (%s): events and duties run in this "
                        "process again", self.path, failure.reason)
        self._told = self._alive
        return self._alive

    def _hello(self) -> Optional[NoAgent]:
        """None when the agent answered a hello, else why not."""
        try:
            conn = AgentConnection(self.path, timeout=self.timeout)
        except NoAgent as e:
            return e
        try:
            conn.ask(hello_message(self.config, "handoff"))
            return None
        except NoAgent as e:
            return e
        finally:
            conn.close()

    def take(self, event: Event) -> bool:
        """Hand `event` to the agent; False (run it here) when none takes it."""
        if not self.alive():
            return False
        try:
            conn = AgentConnection(self.path, timeout=self.timeout)
        except NoAgent:
            self._alive = None
            return False
        try:
            conn.ask(event_message(self.config, event))
            return True
        except NoAgent as e:
            log.warning("%s: the agent did not take it (%s): running it here", event.describe(),
                        e.reason)
            self._alive = None
            return False
        finally:
            conn.close()
