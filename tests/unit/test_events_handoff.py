"""events.handoff: a FIFO reader that started without an agent hands events, and leaves its
duties, to an agent that comes up later (the lab: keepalived starts its FIFO script before the
agent's socket exists), and takes them back when the agent goes. A real inbox on its socket, a
real FIFO; the clock of the handoff's cache is the one seam."""

import os
import threading

from test_events_fifo import wait_for
from test_inbox import Harness as InboxHarness
from test_inbox import short_dir  # noqa: F401  (fixture)

from lvs_hooks.door import SOCKET_NAME
from lvs_hooks.events.fifo import FifoReader
from lvs_hooks.events.handoff import AgentHandoff
from lvs_hooks.events.sequencer import Plan, Step


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_events_and_duties_go_to_an_agent_that_starts_later(short_dir):  # noqa: F811
    agent = InboxHarness(short_dir)  # not started yet: no socket
    fifo = os.path.join(short_dir, "vrrp.fifo")
    os.mkfifo(fifo, 0o600)
    ran_here, duties = [], []

    def planner(event):
        return Plan([Step("record", lambda: (ran_here.append(event.state), ("ok", {}))[1])])

    clock = Clock()
    handoff = AgentHandoff(os.path.join(agent.run_dir, SOCKET_NAME), agent.config, clock=clock)
    reader = FifoReader(fifo, agent.sequencer, planner, lambda e: 10.0,
                        duty=lambda role, y: duties.append(role), duty_period=0.01,
                        handoff=handoff)
    reader.drain_window = 0.05
    wfd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    t = threading.Thread(target=reader.run)
    t.start()
    try:
        os.write(wfd, b'INSTANCE "VI_1" BACKUP 100\n')
        wait_for(lambda: ran_here == ["BACKUP"] and duties)  # no agent: all here
        agent.inbox.start()
        clock.t += 10  # past the cached "no agent"
        os.write(wfd, b'INSTANCE "VI_1" MASTER 100\n')
        wait_for(lambda: ("MASTER", "VI_1", "second") in agent.ran)
        assert ran_here == ["BACKUP"]  # the agent ran it, not this process
        n = len(duties)
        clock.t += 10
        wait_for(lambda: reader._handed)
        assert len(duties) <= n + 1  # and the duties stood down
        agent.inbox.stop()
        clock.t += 10  # the agent is gone: events and duties run here again
        os.write(wfd, b'INSTANCE "VI_1" BACKUP 100\n')
        wait_for(lambda: ran_here == ["BACKUP", "BACKUP"])
        wait_for(lambda: len(duties) > n + 1)
        assert reader.role == "BACKUP"
    finally:
        reader.request_stop()
        t.join(10)
        os.close(wfd)
        reader.close()
