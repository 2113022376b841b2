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
"""

import logging
import time
from typing import Callable, Optional

from lvs_hooks.door import AgentConnection, NoAgent, event_message, hello_message
from lvs_hooks.events.keepalived import Event

log = logging.getLogger(__name__)

RECHECK = 2.0  # seconds an answer (agent or none) is trusted for


class AgentHandoff:
    def __init__(
        self, socket_path: str, config: str, clock: Callable[[], float] = time.monotonic
    ):
        """`config`: the absolute path of this process's config file (the agent takes events
        only for its own)."""
        self.path = socket_path
        self.config = config
        self.clock = clock
        self._alive: Optional[bool] = None
        self._checked = float("-inf")

    def alive(self) -> bool:
        """Whether an agent of this config answers now (cached RECHECK seconds)."""
        now = self.clock()
        if self._alive is not None and now - self._checked < RECHECK:
            return self._alive
        was = self._alive
        try:
            conn = AgentConnection(self.path)
        except NoAgent:
            self._alive = False
        else:
            try:
                conn.ask(hello_message(self.config, "handoff"))
                self._alive = True
            except NoAgent:
                self._alive = False
            finally:
                conn.close()
        self._checked = now
        if self._alive and not was:
            log.info("an agent answers on %s: events go to it, and its duties replace this "
                     "process's", self.path)
        elif was and not self._alive:
            log.warning("the agent on %s no longer answers: events and duties run in this "
                        "process again", self.path)
        return self._alive

    def take(self, event: Event) -> bool:
        """Hand `event` to the agent; False (run it here) when none takes it."""
        if not self.alive():
            return False
        try:
            conn = AgentConnection(self.path)
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
